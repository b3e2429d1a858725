//! The `window-agg` job against the brute-force reference in `sluice_tests::windows`: random
//! CSV streams with random disorder (beyond the out-of-orderness bound too), worker counts and
//! window kinds, and the edge cases — empty input, one record per key, sessions bridged by a
//! late-arriving record, negative timestamps and ones near the `i64` limits, a key that
//! appears only after a long idle stretch, malformed lines, late output.

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use sluice::Env;
use sluice_tests::windows::{Spec, read_lines, reference_window_agg};
use sluice_tests::{run_sluice, stderr_text, within};
use sluice_tools::window_agg::{WindowAggConfig, parse_window_spec, window_agg};

/// Runs the job in this process; returns its output and late lines, sorted.
fn run_job(
    csv: &str,
    workers: usize,
    spec: Spec,
    out_of_orderness: i64,
) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, csv).unwrap();
    let cfg = WindowAggConfig {
        input,
        output: dir.path().join("out"),
        window: parse_window_spec(&spec.arg()).unwrap(),
        out_of_orderness_ms: out_of_orderness,
        late_output: Some(dir.path().join("late")),
        skip_bad_lines: false,
    };
    let (out_dir, late_dir) = (cfg.output.clone(), dir.path().join("late"));
    within(Duration::from_secs(60), "window-agg", move || {
        let env = Env::new();
        env.set_workers(workers);
        window_agg(&env, &cfg);
        env.execute("window-agg").map(|_| ())
    })
    .unwrap_or_else(|e| panic!("job failed: {e}"));
    (read_lines(&out_dir), read_lines(&late_dir))
}

fn check(csv: &str, workers: usize, spec: Spec, out_of_orderness: i64) {
    let expected = reference_window_agg(csv, workers, spec, out_of_orderness);
    let got = run_job(csv, workers, spec, out_of_orderness);
    assert_eq!(got.0, expected.0, "windows, {workers} workers, {spec:?}");
    assert_eq!(got.1, expected.1, "late lines, {workers} workers, {spec:?}");
}

/// Events with timestamps that advance by up to `step` and, now and then, jump back by up to
/// `back` (beyond the out-of-orderness bound when `back` is large).
fn events(n: usize, keys: u32, seed: u64, base: i64, step: i64, back: i64) -> String {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut t = base;
    let mut csv = String::new();
    for _ in 0..n {
        t += (next() % (step as u64 + 1)) as i64;
        let ts = if next() % 8 == 0 {
            t - (next() % (back as u64 + 1)) as i64
        } else {
            t
        };
        let key = next() % u64::from(keys);
        let value = (next() % 2001) as i64 - 1000;
        csv.push_str(&format!("{ts},k{key},{value}\n"));
    }
    csv
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    prop_oneof![
        (1i64..400).prop_map(Spec::Tumbling),
        (1i64..100, 1i64..5).prop_map(|(slide, k)| Spec::Sliding(slide * k, slide)),
        (20i64..400, 7i64..300).prop_map(|(size, slide)| Spec::Sliding(size, slide.min(size))),
        (1i64..200).prop_map(Spec::Session),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(sluice_tests::proptest_cases(12)))]

    #[test]
    fn random_streams_match_the_reference(
        n in 0usize..6000,
        keys in 1u32..40,
        seed in any::<u64>(),
        base in -100_000i64..100_000,
        step in 0i64..6,
        back in 0i64..400,
        out_of_orderness in 0i64..100,
        workers in 1usize..=4,
        spec in spec_strategy(),
    ) {
        let csv = events(n, keys, seed, base, step, back);
        check(&csv, workers, spec, out_of_orderness);
    }
}

#[test]
fn every_window_kind_on_one_to_four_workers_with_late_records() {
    let csv = events(5000, 25, 7, -20_000, 4, 300);
    let (_, late) = reference_window_agg(&csv, 2, Spec::Tumbling(50), 20);
    assert!(!late.is_empty(), "the input should have late records");
    for workers in 1..=4 {
        for spec in [
            Spec::Tumbling(50),
            Spec::Sliding(100, 25),
            Spec::Sliding(90, 40),
            Spec::Session(30),
        ] {
            check(&csv, workers, spec, 20);
        }
    }
}

#[test]
fn empty_input_and_one_record_per_key() {
    check("", 2, Spec::Tumbling(10), 0);
    let csv = "5,a,1\n17,b,2\n-3,c,3\n1000000,d,4\n";
    for spec in [Spec::Tumbling(10), Spec::Sliding(10, 5), Spec::Session(3)] {
        check(csv, 1, spec, 0);
        check(csv, 3, spec, 0);
    }
}

#[test]
fn a_late_record_bridges_two_sessions() {
    // Sessions of key a: [0, 10) and [13, 23); 6 arrives late but within the bound and joins
    // them: one session [0, 23).
    let csv = "0,a,1\n13,a,2\n6,a,4\n40,b,8\n";
    let (out, late) = run_job(csv, 1, Spec::Session(10), 100);
    assert_eq!(out, vec!["a,0,23,3,7", "b,40,50,1,8"]);
    assert!(late.is_empty());
    check(csv, 2, Spec::Session(10), 100);
}

#[test]
fn timestamps_negative_and_near_the_limits() {
    let csv = format!(
        "{},a,1\n{},a,2\n-1,b,3\n0,b,4\n{},c,5\n{},c,6\n",
        i64::MIN + 1,
        i64::MIN + 700,
        i64::MAX - 3,
        i64::MAX - 1
    );
    for spec in [
        Spec::Tumbling(1000),
        Spec::Sliding(1000, 250),
        Spec::Session(1000),
    ] {
        for workers in [1, 2] {
            check(&csv, workers, spec, 0);
        }
    }
    let (out, _) = run_job(&csv, 1, Spec::Tumbling(1000), 0);
    assert!(
        out.contains(&format!("c,{},{},2,11", i64::MAX - 807, i64::MAX)),
        "{out:?}"
    );
}

#[test]
fn a_key_that_appears_after_a_long_idle_stretch() {
    // Key a for a while, then nothing for a long time, then only key z: a's windows fire as
    // soon as z's records move the watermark; z's at the end.
    let mut csv = String::new();
    for i in 0..3000 {
        csv.push_str(&format!("{},a,{}\n", i * 3, i % 7));
    }
    for i in 0..2000 {
        csv.push_str(&format!("{},z,1\n", 50_000_000 + i));
    }
    for workers in [1, 2, 3] {
        check(&csv, workers, Spec::Tumbling(1000), 5);
        check(&csv, workers, Spec::Session(100), 5);
    }
}

fn write_input(dir: &Path, csv: &str) -> std::path::PathBuf {
    let input = dir.join("in.csv");
    std::fs::write(&input, csv).unwrap();
    input
}

fn cli(dir: &Path, input: &Path, extra: &[&str]) -> std::process::Output {
    let out = dir.join("out");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "run".as_ref(),
        "window-agg".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--quiet".as_ref(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    run_sluice(args)
}

#[test]
fn a_malformed_line_fails_with_its_number_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "1,a,2\n2,b,x\n3,c,4\n");
    let out = cli(
        dir.path(),
        &input,
        &[
            "--window",
            "tumbling:10",
            "--out-of-orderness-ms",
            "0",
            "--workers",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_text(&out));
    let err = stderr_text(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("line 2") && err.contains("'2,b,x'"), "{err}");
    assert!(
        read_lines(&dir.path().join("out")).is_empty(),
        "a failed job leaves no output"
    );
}

#[test]
fn skip_bad_lines_counts_reports_and_skips() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "1,a,2\nnonsense\n2,b,x\n3,a,4\n\n");
    let out = cli(
        dir.path(),
        &input,
        &[
            "--window",
            "tumbling:10",
            "--out-of-orderness-ms",
            "0",
            "--skip-bad-lines",
        ],
    );
    let err = stderr_text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("skipped 3 malformed lines"), "{err}");
    assert!(err.contains("line 2: malformed record 'nonsense'"), "{err}");
    assert!(err.contains("line 5: malformed record ''"), "{err}");
    assert_eq!(read_lines(&dir.path().join("out")), vec!["a,0,10,2,6"]);
}

#[test]
fn late_records_go_to_the_late_output_as_their_lines_or_are_counted() {
    // 1100 records keep the watermark moving (one every 1024 records), then two stragglers.
    let mut csv = String::new();
    for i in 0..1100 {
        csv.push_str(&format!("{},a,1\n", 10_000 + i));
    }
    csv.push_str("+5,b,007\n6,b,1\n");
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), &csv);
    let late = dir.path().join("late");
    let late_arg = late.to_str().unwrap();
    let args = [
        "--window",
        "tumbling:100",
        "--out-of-orderness-ms",
        "0",
        "--workers",
        "1",
    ];
    let mut with_late = args.to_vec();
    with_late.extend(["--late-output", late_arg]);
    let out = cli(dir.path(), &input, &with_late);
    assert!(out.status.success(), "{}", stderr_text(&out));
    assert_eq!(
        read_lines(&late),
        vec!["+5,b,007", "6,b,1"],
        "lines as they were"
    );
    assert!(stderr_text(&out).contains("late records: 2 (written to"));

    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), &csv);
    let out = cli(dir.path(), &input, &args);
    assert!(out.status.success(), "{}", stderr_text(&out));
    assert!(
        stderr_text(&out).contains("late records: 2 (dropped)"),
        "{}",
        stderr_text(&out)
    );
}

#[test]
fn bad_options_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "1,a,2\n");
    for (args, code, needle) in [
        (
            vec!["--window", "tumbling:0", "--out-of-orderness-ms", "0"],
            2,
            "size must be positive",
        ),
        (
            vec!["--window", "sliding:5:10", "--out-of-orderness-ms", "0"],
            2,
            "longer than the size",
        ),
        (
            vec!["--window", "hopping:5", "--out-of-orderness-ms", "0"],
            2,
            "expected tumbling",
        ),
        (vec!["--window", "tumbling:5"], 2, "--out-of-orderness-ms"),
        (
            vec!["--window", "tumbling:5", "--out-of-orderness-ms", "-1"],
            2,
            "-1",
        ),
    ] {
        let out = cli(dir.path(), &input, &args);
        let err = stderr_text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = cli(
        dir.path(),
        &dir.path().join("missing.csv"),
        &["--window", "tumbling:5", "--out-of-orderness-ms", "0"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_text(&out).contains("missing.csv"),
        "{}",
        stderr_text(&out)
    );
}

#[test]
fn a_sum_that_overflows_is_an_error_not_a_wrong_number() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), &format!("1,a,{}\n2,a,{}\n", i64::MAX, i64::MAX));
    let out = cli(
        dir.path(),
        &input,
        &["--window", "tumbling:10", "--out-of-orderness-ms", "0"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_text(&out).contains("overflows i64"),
        "{}",
        stderr_text(&out)
    );
}

#[test]
fn the_window_benchmark_checks_its_results_and_prints_json() {
    for window in ["tumbling:100", "sliding:100:25", "session:5"] {
        let out = run_sluice([
            "bench",
            "window",
            "--events",
            "200000",
            "--keys",
            "500",
            "--window",
            window,
            "--runs",
            "1",
            "--workers",
            "2",
            "--json",
        ]);
        assert!(out.status.success(), "{window}: {}", stderr_text(&out));
        let json = String::from_utf8_lossy(&out.stdout);
        assert!(json.contains("\"bench\":\"window\""), "{json}");
        assert!(json.contains("\"ratio_n_workers_vs_1_worker\""), "{json}");
    }
    let out = run_sluice([
        "bench",
        "window",
        "--events",
        "1000",
        "--disorder-ms",
        "50",
        "--out-of-orderness-ms",
        "10",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_text(&out).contains("--disorder-ms 50 exceeds"),
        "{}",
        stderr_text(&out)
    );
}
