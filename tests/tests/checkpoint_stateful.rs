//! Checkpoints of stateful pipelines: keyed aggregations and every kind of window operator
//! keep their state in the state store, and a job that fails, is resumed at another worker
//! count, or is stopped with a savepoint and resumed, commits exactly the output of an
//! uninterrupted run (Flink's oracle).
//!
//! The inputs have no late records, so an uninterrupted run's output does not depend on when
//! watermarks happen to be emitted, and a restored run must reproduce it line for line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sluice::{
    AggregateFunction, CheckpointConfig, CountTrigger, Env, RestoreFrom, WatermarkStrategy,
    WindowAssigner,
};
use sluice_tests::{hidden_dot_entries, visible_entries, within};

/// Events: (timestamp, key, value), timestamps rising with a little disorder (never more than
/// the watermark's bound), 64 keys.
fn events(n: u64) -> Vec<(i64, u32, i64)> {
    events_with(n, 64, |i| (i as i64) * 3)
}

/// `n` events over `keys` keys, event `i` at about `ts(i)`.
fn events_with(n: u64, keys: u64, ts: impl Fn(u64) -> i64) -> Vec<(i64, u32, i64)> {
    (0..n)
        .map(|i| {
            let jitter = (i.wrapping_mul(0x9E37_79B9) % 7) as i64;
            let key = (i.wrapping_mul(2_654_435_761) % keys) as u32;
            (ts(i) + jitter, key, (i % 1_000) as i64)
        })
        .collect()
}

/// Count and sum of a window.
#[derive(Clone)]
struct CountSum;

impl AggregateFunction<(i64, u32, i64)> for CountSum {
    type Acc = (u64, i64);
    type Out = (u64, i64);
    fn create_accumulator(&self) -> (u64, i64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, i64), e: (i64, u32, i64)) {
        acc.0 += 1;
        acc.1 += e.2;
    }
    fn merge(&self, acc: &mut (u64, i64), other: (u64, i64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn get_result(&self, acc: &(u64, i64)) -> (u64, i64) {
        *acc
    }
}

/// The stateful jobs under test.
#[derive(Clone, Copy, Debug)]
enum Job {
    Tumbling,
    Sliding,
    Session,
    /// Global windows fired by a count trigger: the general window operator.
    CountTriggered,
    /// A running keyed reduce.
    Reduce,
}

const JOBS: [Job; 5] = [
    Job::Tumbling,
    Job::Sliding,
    Job::Session,
    Job::CountTriggered,
    Job::Reduce,
];

/// Builds `job` over `events` into `out`, with `hook` applied to every event first (where
/// failures are injected).
fn build(
    env: &Env,
    job: Job,
    events: Vec<(i64, u32, i64)>,
    out: &Path,
    hook: impl Fn(u64) -> Result<(), String> + Clone + Send + Sync + 'static,
) {
    let seen = Arc::new(AtomicU64::new(0));
    let stream = env
        .from_iter(events)
        .try_map("hook", move |e: (i64, u32, i64)| {
            hook(seen.fetch_add(1, Ordering::Relaxed))?;
            Ok::<_, String>(e)
        })
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(10)
                .with_timestamp_assigner(|e: &(i64, u32, i64)| e.0),
        );
    let key = |e: &(i64, u32, i64)| e.1;
    let fmt = |w: sluice::WindowOutput<u32, (u64, i64)>| {
        format!(
            "{},{},{},{},{}",
            w.key, w.window.start, w.window.end, w.value.0, w.value.1
        )
    };
    match job {
        Job::Tumbling => stream
            .key_by(key)
            .window(WindowAssigner::tumbling(500))
            .aggregate(CountSum)
            .map(fmt)
            .write_text(out),
        Job::Sliding => stream
            .key_by(key)
            .window(WindowAssigner::sliding(600, 200))
            .aggregate(CountSum)
            .map(fmt)
            .write_text(out),
        Job::Session => stream
            .key_by(key)
            .window(WindowAssigner::session(40))
            .aggregate(CountSum)
            .map(fmt)
            .write_text(out),
        // What a count window holds depends on the order its key's records arrive in, which
        // several source workers do not fix: values that depend on the key alone make the
        // results independent of it.
        Job::CountTriggered => stream
            .map(|e: (i64, u32, i64)| (e.0, e.1, i64::from(e.1)))
            .key_by(key)
            .window(WindowAssigner::Global)
            .trigger(CountTrigger::of(25))
            .aggregate(CountSum)
            .map(fmt)
            .write_text(out),
        // A running count: each key's lines are 1..=n whatever the arrival order.
        Job::Reduce => stream
            .map(|e: (i64, u32, i64)| (e.1, 1u64))
            .into_keyed()
            .sum()
            .map(|(key, count)| format!("{key},{count}"))
            .write_text(out),
    }
}

/// Every committed line of `dir`, sorted.
fn committed(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for f in visible_entries(dir).unwrap_or_default() {
        let text = std::fs::read_to_string(&f).unwrap();
        out.extend(text.lines().map(str::to_owned));
    }
    out.sort_unstable();
    out
}

fn checkpointed_env(workers: usize, chk: &Path, interval_ms: u64) -> Env {
    let env = Env::new();
    env.set_workers(workers);
    let mut config = CheckpointConfig::new(chk, Duration::from_millis(interval_ms));
    config.retain = 2;
    env.set_checkpoint_config(config);
    env.set_restart_strategy(5, Duration::from_millis(10));
    env
}

/// The output of an uninterrupted run without checkpoints (the same on any number of
/// workers).
fn reference(job: Job, events: &[(i64, u32, i64)], dir: &Path) -> Vec<String> {
    let out = dir.join(format!("reference-{job:?}"));
    let (events, out2) = (events.to_vec(), out.clone());
    within(Duration::from_secs(60), "reference run", move || {
        let env = Env::new();
        env.set_workers(2);
        build(&env, job, events, &out2, |_| Ok(()));
        env.execute("stateful").unwrap();
    });
    committed(&out)
}

/// Whether a checkpoint under `chk` is complete (its metadata written).
fn has_complete_checkpoint(chk: &Path) -> bool {
    std::fs::read_dir(chk)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name().to_string_lossy().starts_with("chk-")
                && e.path().join("_metadata").exists()
        })
}

/// A hook that fails once, at the first event from `at` on that comes after a checkpoint
/// completed (so the failure always has a checkpoint to restart from). It never blocks: a
/// hook that slept while waiting for the first checkpoint held the worker's thread, and with
/// it the very checkpoint writes it waited for (a first checkpoint took 16 s under load).
/// The input runs on long enough after `at` (about a second at the tests' rates) for a
/// checkpoint every 10–15 ms to complete on a slow machine.
fn fail_once_after_a_checkpoint(
    chk: &Path,
    at: u64,
    failures: Arc<AtomicU64>,
) -> impl Fn(u64) -> Result<(), String> + Clone + Send + Sync + 'static {
    let chk = chk.to_path_buf();
    move |seen| {
        // The directory is looked at every 64th event, not at every one.
        if seen >= at
            && seen % 64 == 0
            && failures.load(Ordering::Relaxed) == 0
            && has_complete_checkpoint(&chk)
            && failures
                .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Err(format!("injected failure at event {seen}"));
        }
        Ok(())
    }
}

fn scratch(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}-out")),
        dir.join(format!("{name}-chk")),
    )
}

#[test]
fn stateful_jobs_restart_after_a_failure_with_exactly_once_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = events(30_000);
    for job in JOBS {
        let expected = reference(job, &input, dir.path());
        assert!(!expected.is_empty());
        for workers in [1, 2] {
            let (out, chk) = scratch(dir.path(), &format!("restart-{job:?}-{workers}"));
            let failures = Arc::new(AtomicU64::new(0));
            let hook = fail_once_after_a_checkpoint(&chk, 2_000, failures.clone());
            let (events, out2) = (input.clone(), out.clone());
            let report = within(Duration::from_secs(90), "failing run", move || {
                let env = checkpointed_env(workers, &chk, 15);
                env.set_source_rate(30_000.0);
                build(&env, job, events, &out2, hook);
                env.execute("stateful").unwrap()
            });
            assert_eq!(failures.load(Ordering::Relaxed), 1, "{job:?}");
            assert_eq!(report.restarts, 1, "{job:?} on {workers}");
            assert!(report.restored_from.is_some(), "{job:?}: from a checkpoint");
            assert_eq!(committed(&out), expected, "{job:?} on {workers} workers");
            assert!(hidden_dot_entries(&out).is_empty(), "no pending files left");
        }
    }
}

/// Tables past the size from which the keyed operators and windows touch a run of records'
/// entries before updating them (`Collector::prefetch`; 32k entries of a namespace per
/// worker) and the checkpoint writer touches frozen entries ahead: about 40k keys per window
/// and 100k per running reduce on each worker. A run that fails after a checkpoint commits
/// exactly the output of an uninterrupted one.
#[test]
fn large_keyed_tables_restart_with_exactly_once_output() {
    let dir = tempfile::tempdir().unwrap();
    // 100k events per 500 ms window over 200k keys: about 79k distinct keys per window.
    let input = events_with(400_000, 200_000, |i| (i / 200) as i64);
    for job in [Job::Tumbling, Job::Reduce] {
        let expected = reference(job, &input, dir.path());
        assert!(expected.len() > 300_000, "{job:?}: {}", expected.len());
        let (out, chk) = scratch(dir.path(), &format!("large-{job:?}"));
        let failures = Arc::new(AtomicU64::new(0));
        let hook = fail_once_after_a_checkpoint(&chk, 150_000, failures.clone());
        let (events, out2) = (input.clone(), out.clone());
        let report = within(Duration::from_secs(120), "failing run", move || {
            let env = checkpointed_env(2, &chk, 15);
            env.set_source_rate(250_000.0);
            build(&env, job, events, &out2, hook);
            env.execute("stateful").unwrap()
        });
        assert_eq!(failures.load(Ordering::Relaxed), 1, "{job:?}");
        assert_eq!(report.restarts, 1, "{job:?}");
        assert_eq!(committed(&out), expected, "{job:?}");
        assert!(hidden_dot_entries(&out).is_empty(), "no pending files left");
    }
}

#[test]
fn stateful_jobs_resume_at_another_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let input = events(24_000);
    for job in JOBS {
        let expected = reference(job, &input, dir.path());
        for (from, to) in [(2, 1), (2, 3)] {
            let (out, chk) = scratch(dir.path(), &format!("rescale-{job:?}-{from}-{to}"));
            let hook = fail_once_after_a_checkpoint(&chk, 2_000, Arc::default());
            let (events, out2, chk2) = (input.clone(), out.clone(), chk.clone());
            let first = within(Duration::from_secs(90), "first run", move || {
                let env = checkpointed_env(from, &chk2, 10);
                env.set_restart_strategy(0, Duration::ZERO);
                env.set_source_rate(30_000.0);
                build(&env, job, events, &out2, hook);
                env.execute("stateful").unwrap_err().to_string()
            });
            assert!(first.contains("injected failure"), "{first}");
            let (events, out2) = (input.clone(), out.clone());
            let report = within(Duration::from_secs(90), "resumed run", move || {
                let env = checkpointed_env(to, &chk, 10);
                env.restore_from(RestoreFrom::Latest);
                build(&env, job, events, &out2, |_| Ok(()));
                env.execute("stateful").unwrap()
            });
            assert!(report.restored_from.is_some(), "{job:?}");
            assert_eq!(committed(&out), expected, "{job:?} rescaled {from} → {to}");
        }
    }
}

#[test]
fn stateful_jobs_stopped_with_a_savepoint_resume_at_another_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let input = events(30_000);
    for (job, to) in [
        (Job::Tumbling, 1),
        (Job::Sliding, 3),
        (Job::Session, 1),
        (Job::CountTriggered, 3),
        (Job::Reduce, 1),
    ] {
        let expected = reference(job, &input, dir.path());
        let (out, chk) = scratch(dir.path(), &format!("savepoint-{job:?}-{to}"));
        let sp = dir.path().join(format!("savepoints-{job:?}"));
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            stopper.store(true, Ordering::Relaxed);
        });
        let (events, out2, sp2) = (input.clone(), out.clone(), sp.clone());
        let report = within(Duration::from_secs(90), "stopped run", move || {
            let env = checkpointed_env(2, &chk, 1_000);
            env.set_source_rate(60_000.0);
            env.stop_with_savepoint_on(stop, &sp2);
            build(&env, job, events, &out2, |_| Ok(()));
            env.execute("stateful").unwrap()
        });
        let savepoint = report.savepoint.expect("stopped with a savepoint");
        let (events, out2) = (input.clone(), out.clone());
        within(Duration::from_secs(90), "resumed run", move || {
            let env = Env::new();
            env.set_workers(to);
            env.restore_from(RestoreFrom::Path(savepoint));
            build(&env, job, events, &out2, |_| Ok(()));
            env.execute("stateful").unwrap();
        });
        assert_eq!(
            committed(&out),
            expected,
            "{job:?}: savepoint at 2, resumed at {to}"
        );
    }
}
