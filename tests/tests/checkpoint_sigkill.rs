//! R1 (RELIABILITY.md): exactly once under SIGKILL. The real `sluice` binary runs a
//! checkpointed, throttled job; the test kills it with SIGKILL at a random instant after each
//! *new* checkpoint completed (Flink's watchdog rule: otherwise a kill tests nothing), restarts
//! it with `--restore latest`, and repeats until the job finishes. Then Flink's oracles on the
//! committed output only (files whose names start with neither `.` nor `_`):
//!
//! - exact totals: every word's count, every key's record count and value sum, equal an
//!   independent reference computed here (lost = 0, duplicated = 0);
//! - a per-key sequence check (window-agg): each key's values are its sequence numbers
//!   1, 2, …, so its windows, in time order, must hold consecutive runs of them — a lost or
//!   replayed record shows as a gap or an overlap;
//! - the sorted output equals the reference byte for byte;
//! - no pending files are left, and checkpoint ids only increase across the restarts;
//! - running the finished job again with `--restore latest` writes nothing more.
//!
//! CI runs 6 kills per job; `SLUICE_KILLS=N` or `SLUICE_RELIABILITY=extended` (40) run more,
//! and `SLUICE_FAULT_SEED` replays a schedule of kill instants. Each job prints one JSON line
//! of figures (`{"suite":"R1",…}`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sluice_tests::faults::{
    Rng, Sluice, WAIT_LIMIT, Waited, assert_same_lines, iterations, latest_checkpoint, percentile,
    stage_has_state, wait_for_checkpoint,
};
use sluice_tests::windows::{Spec, reference_window_agg};
use sluice_tests::{hidden_dot_entries, read_output_dir, reference_word_count, sluice_bin};

/// Milliseconds between two checkpoints (RELIABILITY R1).
const INTERVAL_MS: u64 = 200;

/// What a kill loop did.
struct KillReport {
    kills: u32,
    runs: u32,
    /// Every checkpoint seen complete, in the order seen.
    checkpoints: Vec<u64>,
    /// Per restart: from the start of the process to its first new checkpoint.
    recovery_ms: Vec<u64>,
    /// The last run's stderr.
    stderr: String,
}

/// How a kill loop kills.
struct Schedule {
    /// Kills before the job may finish.
    kills: u32,
    /// After a new checkpoint completed, the kill comes at a random instant within this many
    /// milliseconds: about the uninterrupted run's length over the kills, so that the kills
    /// spread over the whole job.
    spread_ms: u64,
}

/// Runs `sluice` with `args` (which name `chk` as the checkpoint directory), killing it with
/// SIGKILL as `schedule` says, each time after a new checkpoint completed, and restarting it
/// with `--restore latest`, until it finishes. `first` checks the first checkpoint.
fn kill_loop(
    args: &[String],
    chk: &Path,
    logs: &Path,
    schedule: &Schedule,
    rng: &mut Rng,
    first: impl Fn(&sluice_core::checkpoint::metadata::CheckpointMetadata),
) -> KillReport {
    let mut report = KillReport {
        kills: 0,
        runs: 0,
        checkpoints: Vec::new(),
        recovery_ms: Vec::new(),
        stderr: String::new(),
    };
    let mut last = 0;
    loop {
        let mut run_args = args.to_vec();
        if report.runs > 0 {
            run_args.extend(["--restore".into(), "latest".into()]);
        }
        let mut job = Sluice::start(
            sluice_bin(),
            &run_args,
            logs,
            &format!("run-{}", report.runs),
        );
        report.runs += 1;
        let finished = |job: &mut Sluice, report: &mut KillReport| {
            let status = job.wait(WAIT_LIMIT);
            report.stderr = job.stderr();
            eprintln!(
                "run {}: finished after {} ms",
                report.runs,
                job.elapsed().as_millis()
            );
            assert!(
                status.success(),
                "run {} failed: {}",
                report.runs,
                report.stderr
            );
        };
        if report.kills >= schedule.kills {
            finished(&mut job, &mut report);
            return report;
        }
        let meta = match wait_for_checkpoint(&mut job, chk, last) {
            Waited::Exited(_) => {
                finished(&mut job, &mut report);
                return report;
            }
            Waited::Checkpoint(meta) => meta,
        };
        if report.runs > 1 {
            report.recovery_ms.push(job.elapsed().as_millis() as u64);
        }
        assert!(
            meta.checkpoint_id > last,
            "ids go back: {last} then {}",
            meta.checkpoint_id
        );
        last = meta.checkpoint_id;
        report.checkpoints.push(last);
        if report.runs == 1 {
            first(&meta);
        }
        std::thread::sleep(Duration::from_millis(rng.below(schedule.spread_ms + 1)));
        if !job.kill9() {
            finished(&mut job, &mut report);
            return report;
        }
        report.kills += 1;
        eprintln!(
            "run {}: killed after {} ms, checkpoint {last} seen",
            report.runs,
            job.elapsed().as_millis()
        );
        // The checkpoints the killed run completed after the one seen.
        if let Some(m) = latest_checkpoint(chk).filter(|m| m.checkpoint_id > last) {
            last = m.checkpoint_id;
            report.checkpoints.push(last);
        }
    }
}

/// Checks what every job's output directory must satisfy afterwards, and prints the suite's
/// JSON line.
fn finish_report(job: &str, seed_note: &str, report: &KillReport, records: u64, wanted: u32) {
    assert_eq!(
        report.kills, wanted,
        "the job finished before all {wanted} kills: make it run longer"
    );
    let ids = &report.checkpoints;
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "checkpoint ids: {ids:?}"
    );
    eprintln!(
        "{{\"suite\":\"R1\",\"job\":\"{job}\",{seed_note}\"records\":{records},\"kills\":{},\
         \"runs\":{},\"checkpoints_seen\":{},\"lost\":0,\"duplicated\":0,\
         \"recovery_ms_p50\":{},\"recovery_ms_p99\":{},\"recovery_ms_max\":{}}}",
        report.kills,
        report.runs,
        ids.len(),
        percentile(&report.recovery_ms, 50),
        percentile(&report.recovery_ms, 99),
        percentile(&report.recovery_ms, 100),
    );
}

/// Reruns the finished job with `--restore latest`: it must succeed and add nothing.
fn rerun_adds_nothing(args: &[String], out: &Path, logs: &Path) {
    let before = sorted_output(out);
    let mut run_args = args.to_vec();
    run_args.extend(["--restore".into(), "latest".into()]);
    let mut job = Sluice::start(sluice_bin(), &run_args, logs, "rerun");
    let status = job.wait(WAIT_LIMIT);
    assert!(status.success(), "rerun failed: {}", job.stderr());
    let after = sorted_output(out);
    assert!(
        after == before,
        "a rerun after the end wrote output again: {} lines before, {} after",
        before.len(),
        after.len()
    );
}

/// Every line of the committed files of `dir`, sorted.
fn sorted_output(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = sluice_tests::visible_entries(dir)
        .unwrap_or_default()
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("read {f:?}: {e}"));
            text.lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

fn common_args(workers: usize, chk: &Path, rate: u64) -> Vec<String> {
    [
        "--workers",
        &workers.to_string(),
        "--quiet",
        "--checkpoint-dir",
        &chk.display().to_string(),
        "--checkpoint-interval-ms",
        &INTERVAL_MS.to_string(),
        "--rate",
        &rate.to_string(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// Word count (a keyed final sum, its state in the store) killed and restarted: the counts
/// must equal the reference exactly.
#[test]
fn wordcount_killed_and_restored_repeatedly_counts_every_word_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, chk) = (
        dir.path().join("in.txt"),
        dir.path().join("out"),
        dir.path().join("chk"),
    );
    let mut rng = Rng::from_env("wordcount SIGKILL");
    let seed = rng.seed();
    // 24,000 lines of 10 words over 2,000 distinct words; at 2,000 lines/s an uninterrupted
    // run takes about 12 s.
    let mut text = String::new();
    let mut words = Rng::new(7);
    for _ in 0..24_000 {
        let line: Vec<String> = (0..10)
            .map(|_| format!("w{}", words.below(2_000)))
            .collect();
        text.push_str(&line.join(" "));
        text.push('\n');
    }
    std::fs::write(&input, &text).unwrap();
    let mut args: Vec<String> = ["run", "wordcount", "--input"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.push(input.display().to_string());
    args.extend(["--output".into(), out.display().to_string()]);
    args.extend(common_args(4, &chk, 2_000));
    let kills = iterations(6, 40);
    let schedule = Schedule {
        kills,
        spread_ms: 12_000 / u64::from(kills + 1),
    };
    let logs = dir.path().join("logs");
    let report = kill_loop(&args, &chk, &logs, &schedule, &mut rng, |_| ());
    let expected = reference_word_count(&text);
    let got = read_output_dir(&out).unwrap_or_else(|e| panic!("output: {e}"));
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for (word, &n) in &expected {
        let g = got.get(word).copied().unwrap_or(0);
        lost += n.saturating_sub(g);
        duplicated += g.saturating_sub(n);
    }
    assert_eq!((lost, duplicated), (0, 0), "words lost, duplicated");
    sluice_tests::assert_counts_eq(&expected, &got, "word count after kills");
    assert!(
        hidden_dot_entries(&out).is_empty(),
        "{:?}",
        hidden_dot_entries(&out)
    );
    finish_report(
        "wordcount",
        &format!("\"seed\":{seed},"),
        &report,
        240_000,
        kills,
    );
    rerun_adds_nothing(&args, &out, &logs);
}

/// The window-agg input: `files` equal files, file `f` holding records `i ≡ f (mod files)`
/// (so each worker's split moves through event time with the others), record `i` at time
/// `BASE + i` of key `k(i mod keys)` with value = its sequence number within its key. Returns
/// the whole input as one CSV in time order, for the reference.
fn window_input(dir: &Path, records: u64, keys: u64, files: u64) -> String {
    const BASE: i64 = 1_000_000_000;
    std::fs::create_dir_all(dir).unwrap();
    let mut all = String::new();
    let mut parts = vec![String::new(); files as usize];
    for i in 0..records {
        let key = i % keys;
        let seq = i / keys + 1;
        // Fixed width (a value with leading zeros parses the same), so that the files are
        // equal in size and each is one split.
        let line = format!("{},k{key:03},{seq:06}\n", BASE + i as i64);
        all.push_str(&line);
        parts[(i % files) as usize].push_str(&line);
    }
    for (f, text) in parts.iter().enumerate() {
        std::fs::write(dir.join(format!("part-{f}.csv")), text).unwrap();
    }
    all
}

/// The per-key sequence oracle: per key, the windows in time order must hold the values
/// 1, 2, … in consecutive runs (count c and sum of the run next..next+c). Returns the records
/// lost and duplicated at the end of each key's sequence, or the first gap or overlap.
fn sequence_check(lines: &[String], expected_per_key: u64) -> Result<(u64, u64), String> {
    let mut by_key: BTreeMap<String, Vec<(i64, u64, i64)>> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 5, "bad output line {line:?}");
        let parse = |s: &str| s.parse::<i64>().unwrap_or_else(|_| panic!("{line:?}"));
        by_key.entry(f[0].to_owned()).or_default().push((
            parse(f[1]),
            parse(f[3]) as u64,
            parse(f[4]),
        ));
    }
    let (mut lost, mut duplicated) = (0, 0);
    for (key, mut windows) in by_key {
        windows.sort_unstable();
        let mut next: i64 = 1;
        for (start, count, sum) in windows {
            let c = count as i64;
            let run_sum = c * (2 * next + c - 1) / 2;
            if sum != run_sum {
                return Err(format!(
                    "key {key}, window at {start}: {count} records summing to {sum}, not the \
                     run {next}..{} (a gap or an overlap)",
                    next + c - 1
                ));
            }
            next += c;
        }
        let seen = (next - 1) as u64;
        lost += expected_per_key.saturating_sub(seen);
        duplicated += seen.saturating_sub(expected_per_key);
    }
    Ok((lost, duplicated))
}

/// window-agg (tumbling event-time windows, committed as checkpoints complete) killed and
/// restarted: the committed windows must equal the reference exactly, and pass the sequence
/// check.
#[test]
fn window_agg_killed_and_restored_repeatedly_commits_every_window_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, chk) = (
        dir.path().join("in"),
        dir.path().join("out"),
        dir.path().join("chk"),
    );
    let mut rng = Rng::from_env("window-agg SIGKILL");
    let seed = rng.seed();
    let (records, keys, workers) = (30_000u64, 50u64, 4u64);
    let csv = window_input(&input, records, keys, workers);
    let spec = Spec::Tumbling(200);
    let mut args: Vec<String> = ["run", "window-agg", "--input"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.push(input.display().to_string());
    args.extend(["--output".into(), out.display().to_string()]);
    args.extend(["--window".into(), spec.arg()]);
    args.extend(["--out-of-orderness-ms".into(), "0".into()]);
    // 30,000 records at 2,500/s: about 12 s uninterrupted.
    args.extend(common_args(workers as usize, &chk, 2_500));
    let kills = iterations(6, 40);
    let schedule = Schedule {
        kills,
        spread_ms: 12_000 / u64::from(kills + 1),
    };
    let logs = dir.path().join("logs");
    let stateful = |meta: &sluice_core::checkpoint::metadata::CheckpointMetadata| {
        assert!(
            stage_has_state(meta, "window("),
            "no window state in {meta:?}"
        );
    };
    let report = kill_loop(&args, &chk, &logs, &schedule, &mut rng, stateful);
    let (expected, late) = reference_window_agg(&csv, 1, spec, 0);
    assert!(
        late.is_empty(),
        "the input is in time order: nothing is late"
    );
    let got = sorted_output(&out);
    let (lost, duplicated) =
        sequence_check(&got, records / keys).unwrap_or_else(|e| panic!("sequence check: {e}"));
    assert_eq!((lost, duplicated), (0, 0), "records lost, duplicated");
    assert_same_lines(&expected, &got, "committed windows after kills");
    assert!(
        hidden_dot_entries(&out).is_empty(),
        "{:?}",
        hidden_dot_entries(&out)
    );
    assert!(
        report.stderr.contains("late records: 0"),
        "{}",
        report.stderr
    );
    finish_report(
        "window-agg",
        &format!("\"seed\":{seed},"),
        &report,
        records,
        kills,
    );
    rerun_adds_nothing(&args, &out, &logs);
}

#[test]
fn the_sequence_check_finds_gaps_and_overlaps() {
    let ok: Vec<String> = ["a,0,10,2,3", "a,10,20,1,3", "b,0,10,3,6"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(sequence_check(&ok, 3), Ok((0, 0)));
    let lost: Vec<String> = ["a,0,10,2,3", "b,0,10,3,6"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(sequence_check(&lost, 3), Ok((1, 0)));
    let overlap = vec!["a,0,10,2,3".to_owned(), "a,10,20,2,5".to_owned()];
    let err = sequence_check(&overlap, 3).unwrap_err();
    assert!(
        err.contains("not the run 3..4"),
        "values 2,3 after 1,2 are a replay: {err}"
    );
}
