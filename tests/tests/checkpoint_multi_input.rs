//! Checkpoint barriers through stages with several inputs whose speeds differ: a union of a
//! fast and a slow source, and a window join and an interval join of a fast and a slow input.
//! The slow input reads a batch every 20 ms, so its barriers come late and the stage aligns
//! (it blocks the fast input meanwhile). Each job fails once, in the middle, and restarts
//! from its latest checkpoint. Checked: checkpoints complete, alignment happened (the
//! coordinator's alignment histogram), and the committed output equals the reference of an
//! uninterrupted run exactly.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice::{CheckpointConfig, Env, JobReport, WatermarkStrategy, WindowAssigner};
use sluice_bench::paced::PacedSource;
use sluice_core::checkpoint::metadata;
use sluice_tests::faults::{assert_same_lines, stage_has_state};
use sluice_tests::{hidden_dot_entries, visible_entries, within};

const WORKERS: usize = 2;

/// A fast input: 10 numbers per millisecond per worker, well below what the stages can take
/// (a backpressured input's barriers would wait behind its queued batches instead).
fn fast(first: u64, count: u64) -> PacedSource {
    PacedSource {
        first,
        count,
        batch: 10,
        pause: Duration::from_millis(1),
    }
}

/// A slow input: a batch of 100 numbers every 50 ms per worker; its barriers come up to 50 ms
/// after the fast input's.
fn slow(first: u64, count: u64) -> PacedSource {
    PacedSource {
        first,
        count,
        batch: 100,
        pause: Duration::from_millis(50),
    }
}

fn env(chk: &Path) -> Env {
    let env = Env::new();
    env.set_workers(WORKERS);
    // Shorter than the slow input's pause, and not a divisor of it: with the interval equal to
    // the pause, triggers would fall just before the slow input's reads end (the checkpoint
    // completes right after one), and the stage would hardly ever wait.
    let mut config = CheckpointConfig::new(chk, Duration::from_millis(20));
    config.retain = 3;
    env.set_checkpoint_config(config);
    env.set_restart_strategy(3, Duration::from_millis(10));
    env
}

/// A `try_map` step that fails once, at the `at`-th record it sees over all workers.
fn fail_once_at(at: u64) -> impl FnMut(String) -> Result<String, String> + Clone + Send + Sync {
    let seen = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    move |line: String| {
        if seen.fetch_add(1, Ordering::Relaxed) == at && failed.fetch_add(1, Ordering::Relaxed) == 0
        {
            return Err(format!("injected failure at {line}"));
        }
        Ok(line)
    }
}

/// Every committed line of `dir`, sorted.
fn committed(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = visible_entries(dir)
        .unwrap_or_default()
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{f:?}: {e}"));
            text.lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

/// What every run here must show: one restart from a checkpoint, checkpoints completed
/// after it, and alignment that waited on the slow input.
fn check_report(report: &JobReport, what: &str) {
    assert_eq!(report.restarts, 1, "{what}: restarts");
    assert!(report.restored_from.is_some(), "{what}: restored");
    let c = &report.checkpoints;
    eprintln!(
        "{what}: {} checkpoints, {} alignments, p50 {} max {}",
        c.completed,
        c.align_us.len(),
        c.align_us.value_at_quantile(0.5),
        c.align_us.max()
    );
    // The final checkpoint and at least one periodic one while both inputs ran. (Not more: a
    // checkpoint's fsyncs take hundreds of ms on a loaded machine, so the restarted run's ~1 s
    // may hold only one periodic checkpoint.)
    assert!(
        c.completed >= 2,
        "{what}: {} checkpoints completed",
        c.completed
    );
    assert!(!c.align_us.is_empty(), "{what}: no alignment measured");
    // Every stage's pauses, each with its freeze and CPU time.
    assert!(
        c.by_stage.len() >= 2,
        "{what}: pauses of {} stages",
        c.by_stage.len()
    );
    for p in &c.by_stage {
        assert_eq!(p.freeze_us.len(), p.sync_us.len(), "{what}: {}", p.name);
        assert_eq!(p.sync_cpu_us.len(), p.sync_us.len(), "{what}: {}", p.name);
    }
    // The slow input's barrier comes up to 50 ms after the fast one's.
    assert!(
        c.align_us.max() >= 5_000,
        "{what}: longest alignment {} µs: the stage never waited for the slow input",
        c.align_us.max()
    );
    eprintln!(
        "{what}: {} checkpoints, alignment p50 {} µs, max {} µs; sync pause p99 {} µs",
        c.completed,
        c.align_us.value_at_quantile(0.5),
        c.align_us.max(),
        c.sync_us.value_at_quantile(0.99)
    );
}

/// Each measured instance's pause parts fit in its pause: the freeze is a part of it, and its
/// thread cannot have spent more CPU time in it than it lasted (2 µs: each clock is read to
/// the µs at both ends).
fn check_pauses(m: &metadata::CheckpointMetadata) {
    for (stage, i) in m
        .stages
        .iter()
        .flat_map(|s| s.instances.iter().map(move |i| (&s.name, i)))
        .filter(|(_, i)| i.duration_us > 0)
    {
        let at = format!(
            "checkpoint {}, {stage}, worker {}",
            m.checkpoint_id, i.worker
        );
        assert!(
            i.freeze_us <= i.sync_us,
            "{at}: freeze {} µs of {}",
            i.freeze_us,
            i.sync_us
        );
        assert!(
            i.sync_cpu_us <= i.sync_us + 2,
            "{at}: CPU {} µs of {}",
            i.sync_cpu_us,
            i.sync_us
        );
    }
}

/// A union of a fast and a slow source, then per key (97 keys) the final count and sum
/// (keyed state in the store). Fails once, restarts from the latest checkpoint.
#[test]
fn a_union_of_a_fast_and_a_slow_source_aligns_and_restores_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    // 30,000 fast numbers and 6,000 slow ones: about 1.5 s each on 2 workers.
    let (n_fast, n_slow) = (30_000u64, 6_000u64);
    let out2 = out.clone();
    let report = within(Duration::from_secs(120), "union", move || {
        let env = env(&chk);
        let a = env.from_source(fast(0, n_fast));
        let b = env.from_source(slow(n_fast, n_slow));
        a.union(b)
            .map(|x: u64| x.to_string())
            // Early, so that the restarted run (the report's) still has both inputs running.
            .try_map("flaky", fail_once_at((n_fast + n_slow) / 5))
            .map(|line: String| {
                let x: u64 = line.parse().unwrap_or(u64::MAX);
                (x % 97, (1u64, x))
            })
            .into_keyed()
            .emit_final()
            .reduce(|a: (u64, u64), b: (u64, u64)| (a.0 + b.0, a.1 + b.1))
            .map(|(k, (count, sum))| format!("{k},{count},{sum}"))
            .write_text(&out2);
        env.execute("union").unwrap()
    });
    check_report(&report, "union");
    let mut expected: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for x in 0..n_fast + n_slow {
        let e = expected.entry(x % 97).or_default();
        e.0 += 1;
        e.1 += x;
    }
    let mut expected: Vec<String> = expected
        .iter()
        .map(|(k, (c, s))| format!("{k},{c},{s}"))
        .collect();
    expected.sort();
    assert_same_lines(&expected, &committed(&out), "per-key counts and sums");
    assert!(hidden_dot_entries(&out).is_empty());
}

/// A window join (tumbling 20 ms windows, key = number mod 10) of a fast and a slow input over
/// the same numbers, each stamped with itself as its event time. Fails once, restarts from
/// the latest checkpoint (the windows' state in the store).
#[test]
fn a_window_join_of_a_fast_and_a_slow_input_aligns_and_restores_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    // About 1.5 s for the fast input, 7.5 s for the slow one.
    let n = 30_000u64;
    let out2 = out.clone();
    let strategy =
        || WatermarkStrategy::for_bounded_out_of_orderness(0).with_watermark_interval_records(100);
    let report = within(Duration::from_secs(120), "window join", move || {
        let env = env(&chk);
        let left = env
            .from_source(fast(0, n))
            .assign_timestamps_and_watermarks(strategy());
        let right = env
            .from_source(slow(0, n))
            .assign_timestamps_and_watermarks(strategy());
        left.join(right)
            .where_key(|x: &u64| x % 10)
            .equal_to(|x: &u64| x % 10)
            .window(WindowAssigner::tumbling(20), |a: &u64, b: &u64| {
                format!("{a},{b}")
            })
            // Early (pairs come as the slow input's windows close), so that the restarted
            // run (the report's) still has both inputs running.
            .try_map("flaky", fail_once_at(n / 4))
            .write_text(&out2);
        env.execute("window join").unwrap()
    });
    check_report(&report, "window join");
    // Pairs with equal keys in the same 20 ms window: 2 numbers of each key per window and
    // side, so 4 pairs per key and window.
    let mut expected = Vec::new();
    for a in 0..n {
        let window = a / 20 * 20;
        for b in (window..window + 20).filter(|b| b % 10 == a % 10 && *b < n) {
            expected.push(format!("{a},{b}"));
        }
    }
    expected.sort();
    assert_same_lines(&expected, &committed(&out), "joined pairs");
    assert!(hidden_dot_entries(&out).is_empty());
}

/// An interval join (`[-20, 20]` ms, key = number mod 10) of a fast and a slow input over the
/// same numbers, each stamped with itself as its event time. Fails once, restarts from the
/// latest checkpoint: the join's buffers are in its checkpoints.
#[test]
fn an_interval_join_of_a_fast_and_a_slow_input_aligns_and_restores_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    // About 1.5 s for the fast input, 7.5 s for the slow one.
    let n = 30_000u64;
    let (out2, chk2) = (out.clone(), chk.clone());
    let strategy =
        || WatermarkStrategy::for_bounded_out_of_orderness(0).with_watermark_interval_records(100);
    let report = within(Duration::from_secs(120), "interval join", move || {
        let env = env(&chk2);
        let left = env
            .from_source(fast(0, n))
            .assign_timestamps_and_watermarks(strategy());
        let right = env
            .from_source(slow(0, n))
            .assign_timestamps_and_watermarks(strategy());
        left.join(right)
            .where_key(|x: &u64| x % 10)
            .equal_to(|x: &u64| x % 10)
            .interval(-20, 20, |a: &u64, b: &u64| format!("{a},{b}"))
            .unwrap_or_else(|e| panic!("{e}"))
            // Early (pairs come at the slow input's pace), so that the restarted run (the
            // report's) still has both inputs running.
            .try_map("flaky", fail_once_at(n / 4))
            .write_text(&out2);
        env.execute("interval join").unwrap()
    });
    check_report(&report, "interval join");
    let retained: Vec<_> = metadata::list(&chk)
        .unwrap()
        .into_iter()
        .filter_map(|f| f.metadata.ok())
        .collect();
    for m in &retained {
        check_pauses(m);
    }
    let stateful = retained
        .iter()
        .any(|m| stage_has_state(m, "interval_join["));
    assert!(
        stateful,
        "no checkpoint names state of the interval join stage"
    );
    // Pairs with equal keys (so b − a is a multiple of 10) within 20 ms: b − a ∈ {−20, …, 20}.
    let mut expected = Vec::new();
    for a in 0..n {
        for d in [-20i64, -10, 0, 10, 20] {
            let b = a as i64 + d;
            if (0..n as i64).contains(&b) {
                expected.push(format!("{a},{b}"));
            }
        }
    }
    expected.sort();
    assert_same_lines(&expected, &committed(&out), "joined pairs");
    assert!(hidden_dot_entries(&out).is_empty());
}
