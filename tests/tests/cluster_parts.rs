//! Remote exchanges without the cluster around them: a job split into two parts of one
//! process, each with its own workers, joined by authenticated loopback connections. Word
//! count across the two parts must equal the reference; rebalance and broadcast across them
//! deliver every record exactly once (to one worker, or to every worker), each sender's
//! records in order; a record type without a wire codec fails the start with an error
//! naming the type.
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
            cpus: Vec::new(),
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

/// The lines of every part file in `dir`, by the worker that wrote them (from the file's
/// name, `part-<worker>-…`), in file order.
fn lines_by_worker(dir: &Path, workers: usize) -> Vec<Vec<u64>> {
    let mut by_worker = vec![Vec::new(); workers];
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let Some(rest) = name.strip_prefix("part-") else {
            continue;
        };
        let worker: usize = rest
            .split('-')
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no worker in {name}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        for line in text.lines() {
            let n = line
                .parse()
                .unwrap_or_else(|e| panic!("{name}: line {line:?}: {e}"));
            by_worker[worker].push(n);
        }
    }
    by_worker
}

/// Whether the records of each source worker's range (`from_iter` gives worker `w` the
/// `w`-th contiguous quarter) arrived in their order: one channel per pair keeps order.
fn in_order_per_source(lines: &[u64], records: u64, sources: u64) -> bool {
    let range = |n: u64| n * sources / records;
    (0..sources).all(|s| {
        let of_s: Vec<u64> = lines.iter().copied().filter(|&n| range(n) == s).collect();
        of_s.windows(2).all(|w| w[0] < w[1])
    })
}

#[test]
fn rebalance_and_broadcast_across_two_parts_deliver_like_in_one_process() {
    const RECORDS: u64 = 20_000;
    const WORKERS: usize = 4;
    // A plain record type moved by rebalance or broadcast is registered by the job.
    sluice::register_wire_type::<u64>();
    let dir = tempdir();
    let rebalanced = dir.path().join("rebalance");
    let broadcast = dir.path().join("broadcast");
    run_parts(2, 2, |env| {
        env.from_iter(0..RECORDS)
            .rebalance()
            .write_text(rebalanced.clone());
    })
    .unwrap_or_else(|e| panic!("rebalance on two parts failed: {e}"));
    run_parts(2, 2, |env| {
        env.from_iter(0..RECORDS)
            .broadcast()
            .write_text(broadcast.clone());
    })
    .unwrap_or_else(|e| panic!("broadcast on two parts failed: {e}"));

    // Rebalance: every record exactly once; every worker received records of every source
    // worker (round robin per sender, as in one process, so half of them crossed nodes), each
    // source's records in order.
    let by_worker = lines_by_worker(&rebalanced, WORKERS);
    for (w, lines) in by_worker.iter().enumerate() {
        for source in 0..WORKERS as u64 {
            assert!(
                lines
                    .iter()
                    .any(|&n| n * WORKERS as u64 / RECORDS == source),
                "rebalance: worker {w} received nothing from worker {source}"
            );
        }
        assert!(
            in_order_per_source(lines, RECORDS, WORKERS as u64),
            "rebalance: worker {w} received a source's records out of order"
        );
    }
    let mut all: Vec<u64> = by_worker.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..RECORDS).collect::<Vec<_>>(),
        "rebalance: not exactly once"
    );

    // Broadcast: every worker received every record once, each source's in order.
    for (w, lines) in lines_by_worker(&broadcast, WORKERS).iter().enumerate() {
        assert!(
            in_order_per_source(lines, RECORDS, WORKERS as u64),
            "broadcast: worker {w} received a source's records out of order"
        );
        let mut sorted = lines.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..RECORDS).collect::<Vec<_>>(),
            "broadcast: worker {w} did not receive every record exactly once"
        );
    }
}
