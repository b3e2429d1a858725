//! Remote exchanges without the cluster around them: a job split into two parts of one
//! process, each with its own workers, joined by authenticated loopback connections. Word
//! count across the two parts must equal the reference, and so must a job whose keyed
//! exchange carries window partials; a record type without a wire codec fails the start
//! with an error naming the type.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::Env;
use sluice_core::exchange::PartLayout;
use sluice_core::remote::part::{Part, PartSpec};
use sluice_core::runtime::default_key_groups;
use sluice_net::{ClusterSecret, NetConfig};
use sluice_tests::{assert_counts_eq, read_output_dir, reference_word_count};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("create a temporary directory: {e}"))
}

/// A text of `lines` lines with a few thousand distinct words, some repeated often.
fn text(lines: usize) -> String {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = String::new();
    for _ in 0..lines {
        for _ in 0..12 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let word = match x % 10 {
                0..=5 => format!("w{}", x % 40),
                _ => format!("rare{}", x % 5000),
            };
            out.push_str(&word);
            out.push(' ');
        }
        out.push('\n');
    }
    out
}

/// Runs the job that `build` makes on `parts` parts of `per_part` workers each, in this
/// process, and returns the error of the first part that failed, if any.
fn run_parts(parts: usize, per_part: usize, build: impl Fn(&Env)) -> Result<(), String> {
    let workers = parts * per_part;
    let secret = ClusterSecret::random().map_err(|e| e.to_string())?;
    let mut running = Vec::new();
    for p in 0..parts {
        let env = Env::new();
        build(&env);
        let (graph, config) = env.take_job("parts").map_err(|e| e.to_string())?;
        let spec = PartSpec {
            run: 7,
            layout: PartLayout {
                workers,
                local: p * per_part..(p + 1) * per_part,
            },
            key_groups_max: default_key_groups(workers),
            restore: None,
            config,
            data_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            data_port: 0,
            net: NetConfig::new(secret.clone(), "parts-test", &format!("part{p}")),
        };
        running.push(Part::prepare(Arc::new(graph), spec).map_err(|e| e.to_string())?);
    }
    let endpoints: Vec<_> = running
        .iter()
        .flat_map(|p| p.data_addrs().to_vec())
        .collect();
    for part in &mut running {
        part.start(endpoints.clone());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut outcomes: Vec<Option<Result<(), String>>> = vec![None; parts];
    while outcomes.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "the parts did not finish in time"
        );
        for (i, part) in running.iter_mut().enumerate() {
            if let Some(done) = part.poll_finished() {
                outcomes[i] = Some(done.map(|_| ()).map_err(|e| e.to_string()));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let failed = outcomes.into_iter().flatten().find_map(Result::err);
    match failed {
        Some(e) => {
            running.iter().for_each(Part::abort);
            Err(e)
        }
        None => {
            for part in &running {
                part.commit().map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

fn wordcount_in_parts(input: &Path, output: &Path, parts: usize, per_part: usize) {
    run_parts(parts, per_part, |env| {
        sluice_tools::wordcount(env, input, output)
    })
    .unwrap_or_else(|e| panic!("word count on {parts} parts failed: {e}"));
}

#[test]
fn wordcount_across_two_parts_equals_the_reference() {
    let dir = tempdir();
    let input = dir.path().join("input.txt");
    let text = text(3000);
    std::fs::write(&input, &text).unwrap();
    for (parts, per_part) in [(2, 1), (2, 2)] {
        let output = dir.path().join(format!("out-{parts}x{per_part}"));
        wordcount_in_parts(&input, &output, parts, per_part);
        let got = read_output_dir(&output).unwrap_or_else(|e| panic!("{e}"));
        assert_counts_eq(&reference_word_count(&text), &got, "two parts");
    }
}

#[test]
fn a_record_type_without_a_wire_codec_fails_the_start_naming_it() {
    #[derive(Clone, Debug)]
    struct Opaque(u64);
    let err = run_parts(2, 1, |env| {
        env.from_iter((0..100u64).map(Opaque))
            .rebalance()
            .map(|o: Opaque| o.0)
            .collect();
    })
    .expect_err("an opaque record type cannot cross nodes");
    assert!(err.contains("Opaque"), "{err}");
    assert!(err.contains("register_wire_type"), "{err}");
}
