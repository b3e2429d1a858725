//! Keyed state across failures, restores and rescaling, through the API: a keyed process
//! function with value, list and map state and event-time timers, an interval join and a
//! bounded full outer join, each run (1) with an injected failure mid-stream, restarted from
//! its last checkpoint on the same workers (the stores are reopened), and (2) stopped with a
//! savepoint mid-stream and resumed from it on another number of workers (the stores are
//! rebuilt from the key groups each worker now owns). The oracle: the committed output of the
//! interrupted runs equals, line for line, that of an uninterrupted run.
//!
//! The inputs have bounded disorder within the watermarks' bound, so no record is ever late
//! and an uninterrupted run's output does not depend on timing or on the number of workers:
//! any difference is lost, duplicated or misplaced state (or timers).
//!
//! Two of them run with a state budget of 256 KiB per store, so that entries are evicted to
//! disk while the job runs, and restore lazily (nothing loaded into memory at the restore:
//! every entry is read back from the segments when first used).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sluice::{
    BoundedOutOfOrderness, CheckpointConfig, Env, JobReport, JoinType, KeyedProcessFunction,
    KeyedState, ListState, MapState, ProcessContext, RestoreFrom, Result, StateLoading, TimeDomain,
    Timestamp, TimestampAssigner, ValueState, WatermarkStrategy,
};
use sluice_tests::event_time::{Ev, events};
use sluice_tests::faults::{assert_same_lines, latest_checkpoint};
use sluice_tests::{hidden_dot_entries, visible_entries, within};

/// The watermarks' out-of-orderness bound; the inputs' disorder stays below it.
const DELAY: i64 = 40;

fn input(n: usize, keys: u8, seed: u64) -> Vec<Ev> {
    events(n, keys, seed, 0, 2, DELAY - 10)
}

fn strategy() -> WatermarkStrategy<impl TimestampAssigner<Ev>, BoundedOutOfOrderness> {
    WatermarkStrategy::for_bounded_out_of_orderness(DELAY)
        .with_timestamp_assigner(|e: &Ev| e.ts)
        .with_watermark_interval_records(64)
}

/// What interrupts a run when its source has handed over `at` records.
#[derive(Clone)]
enum Interrupt {
    /// Nothing: the reference run.
    Never,
    /// The operator fails once, at a record from `at` on, once a checkpoint in `chk` is
    /// complete (the job restarts from it).
    Fail {
        at: u64,
        chk: PathBuf,
        failed: Arc<AtomicU64>,
    },
    /// The job is asked to stop with a savepoint.
    Stop { at: u64, stop: Arc<AtomicBool> },
}

impl Interrupt {
    /// The `try_map` that interrupts the stream it is put on.
    fn hook(self) -> impl FnMut(Ev) -> std::result::Result<Ev, String> + Clone + Send + Sync {
        let seen = Arc::new(AtomicU64::new(0));
        move |e: Ev| {
            let n = seen.fetch_add(1, Ordering::Relaxed);
            match &self {
                Interrupt::Never => {}
                Interrupt::Fail { at, chk, failed } => {
                    if n >= *at && failed.load(Ordering::Relaxed) == 0 {
                        if latest_checkpoint(chk).is_none() {
                            // Records wait here until one has: on a slow machine a slow
                            // first checkpoint still completes before the input runs out.
                            std::thread::sleep(Duration::from_millis(1));
                        } else if failed
                            .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                        {
                            return Err(format!("injected failure at record {}", e.id));
                        }
                    }
                }
                Interrupt::Stop { at, stop } => {
                    if n == *at {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            Ok(e)
        }
    }
}

/// The jobs under test: each builds its pipeline, ending in a text sink at `out`.
#[derive(Clone, Copy, Debug)]
enum Job {
    Process,
    IntervalJoin,
    BoundedJoin,
}

/// Records of each input of the process function and the interval join (the bounded join
/// takes a sixth: its output is a cross product per key).
const RECORDS: usize = 24_000;

impl Job {
    /// Where the interruption comes: well before the end (a failure also waits for a
    /// complete checkpoint).
    fn interrupt_at(self) -> u64 {
        match self {
            Job::Process | Job::IntervalJoin => 9_000,
            Job::BoundedJoin => 1_500,
        }
    }

    /// Each source's rate in records per second (over its workers): slow enough that
    /// checkpoints usually complete before the interruption.
    fn rate(self) -> f64 {
        match self {
            Job::Process | Job::IntervalJoin => 40_000.0,
            Job::BoundedJoin => 10_000.0,
        }
    }

    fn build(self, env: &Env, out: &Path, interrupt: Interrupt) {
        let hook = interrupt.hook();
        match self {
            Job::Process => env
                .from_iter(input(RECORDS, 60, 1))
                .try_map("interrupt", hook)
                .assign_timestamps_and_watermarks(strategy())
                .key_by(|e: &Ev| e.key)
                .process(Buckets::default())
                .write_text(out),
            Job::IntervalJoin => {
                let left = env
                    .from_iter(input(RECORDS, 60, 2))
                    .try_map("interrupt", hook)
                    .assign_timestamps_and_watermarks(strategy());
                let right = env
                    .from_iter(input(RECORDS, 60, 3))
                    .assign_timestamps_and_watermarks(strategy());
                left.join(right)
                    .where_key(|e: &Ev| e.key)
                    .equal_to(|e: &Ev| e.key)
                    .interval(-15, 10, |a: &Ev, b: &Ev| (a.key, a.id, b.id))
                    .unwrap_or_else(|e| panic!("interval join: {e}"))
                    .map_with_timestamp(|(k, a, b), ts| format!("{k} {a} {b} {ts}"))
                    .write_text(out)
            }
            Job::BoundedJoin => {
                // Left keys 0..200, right keys 100..300: a hundred keys on each side alone.
                let n = RECORDS / 6;
                let left = env.from_iter(input(n, 200, 4)).try_map("interrupt", hook);
                let right = env.from_iter(input(n, 200, 5));
                left.join(right)
                    .where_key(|e: &Ev| u32::from(e.key))
                    .equal_to(|e: &Ev| u32::from(e.key) + 100)
                    .bounded(JoinType::FullOuter, |k, a, b| {
                        format!("{k} {:?} {:?}", a.map(|a| a.id), b.map(|b| b.id))
                    })
                    .write_text(out)
            }
        }
    }
}

/// Per key: the ids of each bucket of `SIZE` ms (map state), emitted sorted when the event-time
/// timer at the bucket's last millisecond fires; the (time, id) of the records of the last two
/// buckets' span (list state, trimmed at each timer); and the number of timers fired so far
/// (value state). Every emitted field depends only on records at or before the timer, all of
/// which have arrived when it fires (none is late), so the output is a function of the input.
#[derive(Clone, Default)]
struct Buckets {
    ids: MapState<i64, Vec<u32>>,
    recent: ListState<(i64, u32)>,
    fired: ValueState<u64>,
}

const SIZE: i64 = 50;

impl KeyedProcessFunction<u8, Ev, String> for Buckets {
    fn open(&mut self, state: &mut KeyedState<u8>) -> Result<()> {
        self.ids = state.map_state("ids by bucket");
        self.recent = state.list_state("recent");
        self.fired = state.value_state("timers fired");
        Ok(())
    }

    fn process_element(&mut self, e: Ev, ctx: &mut ProcessContext<'_, u8, String>) -> Result<()> {
        let bucket = e.ts.div_euclid(SIZE) * SIZE;
        let state = ctx.state();
        if self
            .ids
            .value_mut(state, &bucket, |ids| ids.push(e.id))?
            .is_none()
        {
            self.ids.put(state, bucket, vec![e.id])?;
        }
        self.recent.add(state, (e.ts, e.id))?;
        ctx.register_event_time_timer(bucket + SIZE - 1)
    }

    fn on_timer(
        &mut self,
        at: Timestamp,
        domain: TimeDomain,
        ctx: &mut ProcessContext<'_, u8, String>,
    ) -> Result<()> {
        assert_eq!(domain, TimeDomain::EventTime);
        let key = *ctx.key();
        let state = ctx.state();
        let mut ids = self.ids.take(state, &(at + 1 - SIZE))?.unwrap_or_default();
        ids.sort_unstable();
        let fired = self.fired.value(state)?.unwrap_or(0) + 1;
        self.fired.update(state, fired)?;
        self.recent.retain(state, |&(t, _)| t > at - 2 * SIZE)?;
        let (n, sum) = self.recent.with_list(state, |recent| {
            recent
                .iter()
                .filter(|&&(t, _)| t <= at)
                .fold((0u64, 0u64), |(n, s), &(_, id)| (n + 1, s + u64::from(id)))
        })?;
        ctx.output(format!("{key} {at} {fired} {n} {sum} {ids:?}"));
        Ok(())
    }
}

/// Every line of the committed output files of `dir`, sorted.
fn committed(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for f in visible_entries(dir).unwrap_or_default() {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        out.extend(text.lines().map(str::to_owned));
    }
    out.sort_unstable();
    out
}

/// How one run is set up.
struct Run {
    workers: usize,
    interrupt: Interrupt,
    restore: Option<PathBuf>,
    checkpoints: PathBuf,
    savepoints: PathBuf,
    state: StateMode,
}

/// How the interrupted runs keep their state.
#[derive(Clone, Copy, Debug)]
enum StateMode {
    /// The defaults: everything in memory, loaded in the background on a restore (the job
    /// resumes at once, reading from disk what is not loaded yet).
    Default,
    /// Everything in memory, loaded before the job resumes.
    Eager,
    /// A 256 KiB budget per store (entries evicted while the job runs) and lazy restores.
    EvictedLazy,
}

fn run(job: Job, out: &Path, r: Run) -> sluice::Result<JobReport> {
    let out = out.to_owned();
    let what = format!("{job:?} on {} workers", r.workers);
    within(Duration::from_secs(120), &what, move || {
        let env = Env::new();
        env.set_workers(r.workers);
        let mut config = CheckpointConfig::new(&r.checkpoints, Duration::from_millis(15));
        config.retain = 2;
        env.set_checkpoint_config(config);
        env.set_restart_strategy(3, Duration::from_millis(10));
        env.set_source_rate(job.rate());
        match r.state {
            StateMode::Default => {}
            StateMode::Eager => {
                env.set_state_loading(StateLoading::Eager);
            }
            StateMode::EvictedLazy => {
                env.set_state_budget_bytes(256 << 10);
                env.set_state_loading(StateLoading::Lazy);
            }
        }
        if let Interrupt::Stop { stop, .. } = &r.interrupt {
            env.stop_with_savepoint_on(stop.clone(), &r.savepoints);
        }
        if let Some(from) = r.restore {
            env.restore_from(RestoreFrom::Path(from));
        }
        job.build(&env, &out, r.interrupt);
        env.execute(&format!("{job:?}"))
    })
}

/// The output of an uninterrupted run on one worker.
fn reference(job: Job) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let run_cfg = Run {
        workers: 1,
        interrupt: Interrupt::Never,
        restore: None,
        checkpoints: dir.path().join("chk"),
        savepoints: dir.path().join("sp"),
        state: StateMode::Default,
    };
    let out = dir.path().join("out");
    let report = run(job, &out, run_cfg).unwrap_or_else(|e| panic!("{job:?} reference: {e}"));
    assert_eq!(report.restarts, 0);
    let lines = committed(&out);
    assert!(lines.len() > 1_000, "{job:?}: {} lines", lines.len());
    lines
}

/// Fails once mid-stream on `workers` workers: the job restarts from its last checkpoint
/// (reopening each worker's store) and its output equals the uninterrupted run's.
fn check_failure(job: Job, workers: usize, state: StateMode) {
    let expected = reference(job);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let failed = Arc::new(AtomicU64::new(0));
    let run_cfg = Run {
        workers,
        interrupt: Interrupt::Fail {
            at: job.interrupt_at(),
            chk: dir.path().join("chk"),
            failed: failed.clone(),
        },
        restore: None,
        checkpoints: dir.path().join("chk"),
        savepoints: dir.path().join("sp"),
        state,
    };
    let report = run(job, &out, run_cfg).unwrap_or_else(|e| panic!("{job:?}: {e}"));
    assert_eq!(failed.load(Ordering::Relaxed), 1, "{job:?}: one failure");
    assert_eq!(report.restarts, 1, "{job:?}");
    assert!(
        report.restored_from.is_some(),
        "{job:?}: restarted from a checkpoint"
    );
    let got = committed(&out);
    assert_same_lines(
        &expected,
        &got,
        &format!("{job:?}, failure on {workers} workers, {state:?}"),
    );
    assert!(hidden_dot_entries(&out).is_empty(), "no pending files left");
}

/// Stops with a savepoint mid-stream on `from` workers and resumes from it on `to`: the
/// stores are rebuilt by key group, and the two runs' output equals the uninterrupted run's.
fn check_savepoint_rescale(job: Job, from: usize, to: usize, state: StateMode) {
    let expected = reference(job);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (chk, sp) = (dir.path().join("chk"), dir.path().join("sp"));
    let stop = Arc::new(AtomicBool::new(false));
    let first = Run {
        workers: from,
        interrupt: Interrupt::Stop {
            at: job.interrupt_at(),
            stop: stop.clone(),
        },
        restore: None,
        checkpoints: chk.clone(),
        savepoints: sp.clone(),
        state,
    };
    let report = run(job, &out, first).unwrap_or_else(|e| panic!("{job:?}, stopped run: {e}"));
    let savepoint = report
        .savepoint
        .unwrap_or_else(|| panic!("{job:?}: stopped without a savepoint"));
    assert!(stop.load(Ordering::Relaxed));
    let before = committed(&out);
    assert!(before.len() < expected.len(), "{job:?}: stopped mid-stream");
    let second = Run {
        workers: to,
        interrupt: Interrupt::Never,
        restore: Some(savepoint),
        checkpoints: chk,
        savepoints: sp,
        state,
    };
    let report = run(job, &out, second).unwrap_or_else(|e| panic!("{job:?}, resumed run: {e}"));
    assert!(report.restored_from.is_some(), "{job:?}: resumed");
    let got = committed(&out);
    let what = format!("{job:?}, savepoint on {from} workers, resumed on {to}, {state:?}");
    assert_same_lines(&expected, &got, &what);
}

#[test]
fn process_function_state_and_timers_survive_a_failure_on_2_workers() {
    check_failure(Job::Process, 2, StateMode::Default);
}

#[test]
fn process_function_resumes_from_a_savepoint_rescaled_2_to_3() {
    check_savepoint_rescale(Job::Process, 2, 3, StateMode::Default);
}

#[test]
fn interval_join_buffers_survive_a_failure_on_3_workers() {
    check_failure(Job::IntervalJoin, 3, StateMode::Default);
}

#[test]
fn interval_join_resumes_from_a_savepoint_rescaled_3_to_2() {
    check_savepoint_rescale(Job::IntervalJoin, 3, 2, StateMode::Default);
}

#[test]
fn bounded_outer_join_survives_a_failure_on_2_workers() {
    check_failure(Job::BoundedJoin, 2, StateMode::Default);
}

#[test]
fn bounded_outer_join_resumes_from_a_savepoint_rescaled_2_to_1() {
    check_savepoint_rescale(Job::BoundedJoin, 2, 1, StateMode::Default);
}

#[test]
fn process_function_state_and_timers_survive_a_failure_restored_eagerly() {
    check_failure(Job::Process, 2, StateMode::Eager);
}

#[test]
fn process_function_state_and_timers_survive_a_failure_evicted_and_restored_lazily() {
    check_failure(Job::Process, 2, StateMode::EvictedLazy);
}

#[test]
fn interval_join_resumes_from_a_savepoint_rescaled_2_to_3_evicted_and_restored_lazily() {
    check_savepoint_rescale(Job::IntervalJoin, 2, 3, StateMode::EvictedLazy);
}
