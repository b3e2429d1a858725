//! The thread-per-core runtime: one glommio executor per worker, each on its own thread,
//! pinned one per allowed CPU by default.
//!
//! Start-up is all or nothing. The main thread checks the environment first (io_uring
//! available, memlock limit), then starts one thread per worker, each of which builds its
//! executor and reports `Started` or `StartFailed`; only when every worker has started does the
//! main thread let them run the job. A worker that cannot start (memlock too low, io_uring
//! blocked, a CPU outside the allowed set) fails the whole start with a one-line error naming
//! the cause; no half-started job ever runs (glommio pitfalls 1, 11 and 12 in RELIABILITY.md).
//!
//! While the job runs, every stage of the graph is a task on every worker. A stage that fails
//! or panics cancels the job; its dropped channels unblock its neighbours, who stop with
//! secondary errors, and the runtime reports the root cause.

use std::any::Any;
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Once};
use std::time::Duration;

use futures_lite::FutureExt;
use glommio::{LocalExecutorBuilder, Placement};

use std::path::PathBuf;

use crate::checkpoint::CheckpointConfig;
use crate::checkpoint::coordinator::{CheckpointStats, Coordinator, JobInfo, Tick};
use crate::checkpoint::metadata::{self, CheckpointMetadata};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::graph::Prepare;
use crate::graph::{JobGraph, WorkerContext};
use crate::key::{KEY_GROUPS_DEFAULT, KeyGroups};
use crate::metrics::{JobMetrics, Progress};
use crate::state::{StateRestore, StateSettings};

/// glommio refuses to start below this locked-memory limit.
const MEMLOCK_MIN_BYTES: u64 = 512 * 1024;
/// Memory each executor registers with io_uring for DMA I/O: glommio's minimum. Sluice's file
/// I/O is buffered (page cache) today, so registered buffers would go unused, and every
/// executor's registration counts against the user's locked-memory limit.
pub(crate) const IO_MEMORY_BYTES: usize = 64 * 1024;
/// How long a pinned worker with nothing to do polls before it parks in io_uring. Workers hand
/// each other batches and watermarks every few hundred microseconds; parking and being woken
/// (an eventfd write, an IPI, two context switches) at each hand-off cost more than the wait.
/// Measured with `sluice bench window` on the idle 2-core machine: 2 workers over 1 went from
/// 1.71× to 1.78× (tumbling), 1.43× to 1.60× (sliding) and 1.80× to 2.16× (session), and
/// events per CPU-second rose too; 200 µs was no better than 50. Unpinned workers (more than
/// the cores) park at once: spinning would take the core from another worker.
const SPIN_BEFORE_PARK: std::time::Duration = std::time::Duration::from_micros(50);
/// How long workers have to report that they started.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Worker threads are named this and their index (in `top -H`, `perf` and the panic hook).
pub const WORKER_THREAD_PREFIX: &str = "sluice-worker-";

/// How to run a job.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Number of workers (executors).
    pub workers: usize,
    /// Pin worker `i` to the `i`-th allowed CPU. Ignored (unpinned) when there are more
    /// workers than allowed CPUs.
    pub pin: bool,
    /// Number of key groups; `None` derives it from the worker count as Flink derives its
    /// default max parallelism: 1.5 × workers rounded up to a power of two, within
    /// 128..=32768.
    pub key_groups_max: Option<u32>,
    /// How often the progress callback runs.
    pub progress_interval: Duration,
    /// The job's name, in checkpoints and logs.
    pub job_name: String,
    /// Take checkpoints (exactly-once output, restarts from the latest one).
    pub checkpoints: Option<CheckpointConfig>,
    /// Resume from a checkpoint or savepoint.
    pub restore: Option<RestoreFrom>,
    /// Restarts after a failure (with checkpoints), each after `restart_delay`.
    pub restart_attempts: u32,
    /// The fixed delay before a restart.
    pub restart_delay: Duration,
    /// Records per second each source may emit, over all its workers.
    pub source_rate: Option<f64>,
    /// Where the savepoint that stops the job goes.
    pub savepoint_dir: Option<PathBuf>,
    /// Raised (by a signal handler) to stop the job with a savepoint in `savepoint_dir`.
    pub stop: Option<Arc<AtomicBool>>,
    /// Resident bytes of keyed state per stateful stage and worker before the store evicts to
    /// disk.
    pub state_budget_bytes: usize,
    /// What a restore loads into memory: every table's entries when it is registered
    /// (`Eager`, the default), or nothing until an entry is accessed (`Lazy`).
    pub state_loading: crate::state::StateLoading,
    /// Where keyed state lives without checkpoints (default: a scratch directory under the
    /// system's temporary directory, removed when the job ends).
    pub state_dir: Option<PathBuf>,
}

/// Where a job resumes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreFrom {
    /// The newest complete checkpoint in the checkpoint directory, or a fresh start if none.
    Latest,
    /// The checkpoint or savepoint at this path, or the newest complete one under it.
    Path(PathBuf),
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: available_cpus().len().max(1),
            pin: true,
            key_groups_max: None,
            progress_interval: Duration::from_millis(250),
            job_name: "job".into(),
            checkpoints: None,
            restore: None,
            restart_attempts: 3,
            restart_delay: Duration::from_millis(500),
            source_rate: None,
            savepoint_dir: None,
            stop: None,
            state_budget_bytes: crate::state::STATE_BUDGET_BYTES_DEFAULT,
            state_loading: crate::state::StateLoading::Background,
            state_dir: None,
        }
    }
}

/// What a finished job reports.
#[derive(Clone, Debug)]
pub struct JobReport {
    /// Wall time from the workers' start to the last worker's end (of the last run).
    pub elapsed: Duration,
    /// Final counters (of the last run).
    pub progress: Progress,
    /// Workers used.
    pub workers: usize,
    /// Whether the workers were pinned to CPUs.
    pub pinned: bool,
    /// The checkpoint the job resumed from, if any.
    pub restored_from: Option<u64>,
    /// Restarts after failures.
    pub restarts: u32,
    /// The job stopped with this savepoint.
    pub savepoint: Option<PathBuf>,
    /// Checkpoints of the last run.
    pub checkpoints: CheckpointStats,
}

/// The CPUs this process may run on.
pub fn available_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

enum WorkerEvent {
    Started,
    /// A message for the checkpoint coordinator arrived.
    Wake,
    StartFailed(usize, String),
    Finished(usize, Result<()>),
}

/// Runs `graph` to completion on this machine and reports progress to `on_progress` while it
/// runs. With checkpoints, a failure restarts the job from its newest complete checkpoint (up
/// to `restart_attempts` times, after `restart_delay`); with a stop request, the job ends with
/// a savepoint.
pub fn execute(
    graph: JobGraph,
    config: &RuntimeConfig,
    mut on_progress: impl FnMut(Progress, Duration),
) -> Result<JobReport> {
    if config.workers == 0 {
        return Err(Error::Config("--workers must be at least 1".into()));
    }
    let graph = Arc::new(graph);
    let (mut restore, mut fallback_root) = resolve_restore(config, &graph)?;
    let mut restarts = 0;
    loop {
        match run_once(&graph, config, restore.as_ref(), &mut on_progress) {
            Ok(mut report) => {
                report.restarts = restarts;
                return Ok(report);
            }
            Err(Error::Restore {
                checkpoint_id,
                reason,
            }) if fallback_root.is_some() => {
                let root = fallback_root
                    .as_deref()
                    .unwrap_or(std::path::Path::new("."));
                restore = fall_back(root, checkpoint_id, &reason, &graph)?;
            }
            Err(e) => {
                let restartable = config.checkpoints.is_some() && e.is_restartable();
                if !restartable || restarts >= config.restart_attempts {
                    if config.checkpoints.is_none() {
                        // Without checkpoints nothing will resume: the output goes.
                        graph.stages.iter().for_each(|s| s.abort());
                    }
                    return Err(e);
                }
                restarts += 1;
                tracing::warn!(
                    error = %e,
                    attempt = restarts,
                    "job failed: restarting from the latest checkpoint"
                );
                std::thread::sleep(config.restart_delay);
                if let Some(latest) = latest_checkpoint(config)? {
                    restore = Some(latest);
                    fallback_root = config.checkpoints.as_ref().map(|c| c.dir.clone());
                }
            }
        }
    }
}

/// After checkpoint `bad` of `root` could not be restored (`reason`): the newest complete
/// checkpoint older than it, or an error if none is left. Restoring no checkpoint at all would
/// write again what the checkpoints committed.
fn fall_back(
    root: &std::path::Path,
    bad: u64,
    reason: &str,
    graph: &JobGraph,
) -> Result<Option<metadata::Complete>> {
    let (older, skipped) = metadata::latest_before(root, bad)?;
    for s in skipped {
        tracing::warn!("skipping an incomplete or corrupt checkpoint: {s}");
    }
    let Some((dir, meta)) = older else {
        return Err(Error::Config(format!(
            "no usable checkpoint in {}: checkpoint {bad} cannot be restored ({reason}) and no \
             older complete one is left",
            root.display()
        )));
    };
    tracing::warn!(
        "checkpoint {bad} cannot be restored ({reason}): falling back to checkpoint {} ({})",
        meta.checkpoint_id,
        dir.display()
    );
    check_same_job(&dir, &meta, graph)?;
    Ok(Some((dir, meta)))
}

/// The newest complete checkpoint of the job's checkpoint directory, warning about newer ones
/// that are incomplete or corrupt.
fn latest_checkpoint(config: &RuntimeConfig) -> Result<Option<metadata::Complete>> {
    let Some(c) = &config.checkpoints else {
        return Ok(None);
    };
    let (latest, skipped) = metadata::latest(&c.dir)?;
    for s in skipped {
        tracing::warn!("skipping an incomplete or corrupt checkpoint: {s}");
    }
    Ok(latest)
}

/// The checkpoint the job starts from, checked against the job, and the directory to fall
/// back in if its state turns out to be unusable: the checkpoint directory with `--restore
/// latest`, the directory named with `--restore PATH` when it holds checkpoints; none when
/// PATH names the checkpoint itself (the user asked for that one).
fn resolve_restore(
    config: &RuntimeConfig,
    graph: &JobGraph,
) -> Result<(Option<metadata::Complete>, Option<PathBuf>)> {
    let (found, fallback_root) = match &config.restore {
        None => return Ok((None, None)),
        Some(RestoreFrom::Latest) => {
            let Some(c) = &config.checkpoints else {
                return Err(Error::Config(
                    "--restore latest needs --checkpoint-dir (where to look)".into(),
                ));
            };
            (latest_checkpoint(config)?, Some(c.dir.clone()))
        }
        Some(RestoreFrom::Path(path)) => {
            let (latest, skipped) = metadata::latest(path)?;
            for s in &skipped {
                tracing::warn!("skipping an incomplete or corrupt checkpoint: {s}");
            }
            let found = latest.ok_or_else(|| {
                Error::Config(format!(
                    "no complete checkpoint or savepoint at {}{}",
                    path.display(),
                    skipped.first().map_or(String::new(), |s| format!(" ({s})"))
                ))
            })?;
            let root = (!metadata::is_checkpoint(path)).then(|| path.clone());
            (Some(found), root)
        }
    };
    if let Some((dir, meta)) = &found {
        check_same_job(dir, meta, graph)?;
    }
    Ok((found, fallback_root))
}

/// Fails unless the checkpoint `meta` (in `dir`) was taken by a job with `graph`'s stages.
pub fn check_same_job(
    dir: &std::path::Path,
    meta: &CheckpointMetadata,
    graph: &JobGraph,
) -> Result<()> {
    let names: Vec<String> = graph.stages.iter().map(|s| s.name()).collect();
    let theirs: Vec<&str> = meta.stages.iter().map(|s| s.name.as_str()).collect();
    if names.len() != theirs.len() {
        return Err(Error::Config(format!(
            "{} was taken by another job: it has {} stages, this job {}",
            dir.display(),
            theirs.len(),
            names.len()
        )));
    }
    for (i, (ours, theirs)) in names.iter().zip(theirs).enumerate() {
        if ours != theirs {
            return Err(Error::Config(format!(
                "{} was taken by another job: its stage {i} is '{theirs}', this job's '{ours}'",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// One run of the job: start the workers, supervise them (progress, checkpoints, a stop
/// request), and collect the outcome.
fn run_once(
    graph: &Arc<JobGraph>,
    config: &RuntimeConfig,
    restore: Option<&metadata::Complete>,
    on_progress: &mut impl FnMut(Progress, Duration),
) -> Result<JobReport> {
    let workers = config.workers;
    let restored_id = restore.map_or(0, |(_, m)| m.checkpoint_id);
    let key_groups_max = match (restore, config.key_groups_max) {
        (Some((_, m)), Some(k)) if m.key_groups_max != k => {
            return Err(Error::Config(format!(
                "the checkpoint has {} key groups, the job asks for {k}",
                m.key_groups_max
            )));
        }
        (Some((_, m)), _) => m.key_groups_max,
        (None, k) => k.unwrap_or_else(|| default_key_groups(workers)),
    };
    let key_groups = KeyGroups::new(key_groups_max, workers as u32)?;
    let metrics = Arc::new(JobMetrics::new(workers));
    for (i, stage) in graph.stages.iter().enumerate() {
        stage.prepare(&Prepare {
            workers,
            metrics: &metrics,
            restored_id,
            restored_run: restore.map_or(0, |(_, m)| m.run),
            restore: restore.and_then(|(_, m)| m.stages.get(i)),
            settle_output: true,
        })?;
    }
    preflight()?;
    for edge in &graph.edges {
        edge.materialize(workers);
    }
    install_panic_hook();
    let checkpointing = config.checkpoints.is_some() || config.savepoint_dir.is_some();
    let mut coordinator = checkpointing.then(|| {
        let info = JobInfo {
            job: config.job_name.clone(),
            workers,
            key_groups_max,
            stage_names: graph.stages.iter().map(|s| s.name()).collect(),
            run: 0,
        };
        Coordinator::new(config.checkpoints.clone(), info, restored_id)
    });

    let (state, scratch) = state_settings(config)?;
    let state_restore = Arc::new(state_restores(graph, restore));

    let cpus = available_cpus();
    let pinned = config.pin && workers <= cpus.len();
    let cancelled = Arc::new(AtomicBool::new(false));
    let (events_tx, events) = mpsc::channel();
    let mut go_senders = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    let placements = (0..workers).map(|w| match cpus.get(w) {
        Some(&cpu) if pinned => Placement::Fixed(cpu),
        _ => Placement::Unbound,
    });
    for (w, placement) in placements.enumerate() {
        let (go_tx, go_rx) = mpsc::channel::<bool>();
        go_senders.push(go_tx);
        let mut ctx = WorkerContext::new(w, key_groups, metrics.clone(), cancelled.clone());
        ctx.checkpoints = coordinator.as_ref().map(Coordinator::control);
        ctx.source_rate = config.source_rate;
        ctx.restored_id = restored_id;
        ctx.state = Some(state.clone());
        ctx.state_restore = state_restore.clone();
        let (graph, events_tx) = (graph.clone(), events_tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("{WORKER_THREAD_PREFIX}{w}"))
            .spawn(move || worker_main(placement, ctx, graph, go_rx, events_tx));
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                abort_start(go_senders, threads);
                return Err(Error::Startup {
                    worker: w,
                    reason: format!("spawn thread: {e}"),
                });
            }
        }
    }
    // The coordinator's messages wake this thread, so that it completes a checkpoint as soon
    // as its last acknowledgement arrives (set once every worker started: while the waker
    // holds a sender, the channel cannot report that every worker thread is gone).
    let wake_tx = events_tx.clone();
    drop(events_tx);

    if let Err(e) = await_startup(&events, workers) {
        abort_start(go_senders, threads);
        return Err(e);
    }
    if let Some(c) = &coordinator {
        c.control().set_waker(Some(Box::new(move || {
            let _ = wake_tx.send(WorkerEvent::Wake);
        })));
    } else {
        drop(wake_tx);
    }
    let clock = SystemClock::new();
    for go in &go_senders {
        let _ = go.send(true);
    }

    let mut errors: Vec<Error> = Vec::new();
    let mut finished = 0;
    let mut savepoint: Option<PathBuf> = None;
    // With a coordinator, wake often enough to trigger and complete checkpoints promptly.
    let tick = match &coordinator {
        Some(_) => config.progress_interval.min(Duration::from_millis(5)),
        None => config.progress_interval,
    };
    let mut last_progress = clock.elapsed();
    while finished < workers {
        match events.recv_timeout(tick) {
            Ok(WorkerEvent::Finished(_, result)) => {
                finished += 1;
                if let Err(e) = result {
                    errors.push(e);
                }
            }
            Ok(_) => {}
            // A worker thread that died without reporting (a panic outside its stages) is
            // seen here: with the waker's sender alive, the channel never disconnects.
            Err(RecvTimeoutError::Timeout) if threads.iter().all(|t| t.is_finished()) => {
                while let Ok(event) = events.try_recv() {
                    if let WorkerEvent::Finished(_, Err(e)) = event {
                        errors.push(e);
                    }
                }
                break;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if clock.elapsed() >= last_progress + config.progress_interval {
            last_progress = clock.elapsed();
            on_progress(metrics.snapshot(), last_progress);
        }
        if let Some(c) = coordinator.as_mut() {
            if let (Some(stop), Some(dir)) = (&config.stop, &config.savepoint_dir)
                && stop.load(Ordering::Relaxed)
            {
                c.request_savepoint(dir);
            }
            match c.tick(&graph.stages) {
                Ok(Tick::Continue | Tick::Savepoint(_) | Tick::SavepointFailed(_)) => {}
                Ok(Tick::Stopped(dir)) => {
                    savepoint = Some(dir);
                    cancelled.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    errors.push(e);
                    cancelled.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    if let Some(c) = &coordinator {
        c.control().set_waker(None);
    }
    for (w, handle) in threads.into_iter().enumerate() {
        if let Err(payload) = handle.join() {
            errors.push(panic_error("runtime", w, payload.as_ref()));
        }
    }
    // A bounded job that ended takes a final checkpoint (its sources all read) before its
    // output is committed, so that a restore after this point writes nothing twice.
    if let Some(c) = coordinator.as_mut()
        && savepoint.is_none()
        && errors.is_empty()
        && let Err(e) = c.finish(&graph.stages)
    {
        errors.push(e);
    }
    let elapsed = clock.elapsed();
    let progress = metrics.snapshot();
    on_progress(progress, elapsed);
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    let stats = coordinator.map(|c| c.stats().clone()).unwrap_or_default();
    if savepoint.is_some() {
        // Stopped with a savepoint: the cancellations it caused are the way it stops.
        errors.retain(|e| !e.is_secondary());
    }
    // Output becomes visible only when every worker succeeded.
    if let Some(e) = root_cause(errors) {
        return Err(e);
    }
    if savepoint.is_none() {
        for stage in graph.stages.iter() {
            stage.commit()?;
        }
    }
    Ok(JobReport {
        elapsed,
        progress,
        workers,
        pinned,
        restored_from: (restored_id > 0).then_some(restored_id),
        restarts: 0,
        savepoint,
        checkpoints: stats,
    })
}

/// Where this run's stores go: under the checkpoint directory with checkpoints, else in a
/// scratch directory (returned, to be removed when the run ends).
pub(crate) fn state_settings(
    config: &RuntimeConfig,
) -> Result<(Arc<StateSettings>, Option<PathBuf>)> {
    // Unique among the runs of this process (tests run jobs concurrently) and across processes.
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let clock = SystemClock::new();
    let run = format!(
        "run-{:x}-{:x}-{}",
        clock.now_ms(),
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let (root, scratch) = match (&config.checkpoints, &config.state_dir) {
        (Some(c), _) => (absolute(&c.dir.join("state")), None),
        (None, Some(dir)) => (absolute(dir), Some(absolute(&dir.join(&run)))),
        (None, None) => {
            // Its own directory, not a shared parent another user may own.
            let dir = std::env::temp_dir().join(format!("sluice-state-{run}"));
            (dir.clone(), Some(dir))
        }
    };
    let retained = config.checkpoints.as_ref().map_or(1, |c| c.retain.max(1));
    let settings = StateSettings {
        root,
        run,
        budget_bytes: config.state_budget_bytes,
        retained,
        loading: config.state_loading,
    };
    Ok((Arc::new(settings), scratch))
}

/// Per stage of the graph, where its state comes from on this restore: the stores its
/// instances acknowledged, resolved against the checkpoint's directory.
pub(crate) fn state_restores(
    graph: &JobGraph,
    restore: Option<&metadata::Complete>,
) -> Vec<Option<StateRestore>> {
    let Some((dir, meta)) = restore else {
        return Vec::new();
    };
    (0..graph.stages.len())
        .map(|i| {
            let stage = meta.stages.get(i)?;
            let mut instances: Vec<_> = stage.instances.iter().collect();
            instances.sort_by_key(|inst| inst.worker);
            let dirs: Option<Vec<PathBuf>> = instances
                .iter()
                .map(|inst| inst.state.as_ref().map(|rel| absolute(&dir.join(rel))))
                .collect();
            let dirs = dirs.filter(|d| !d.is_empty())?;
            Some(StateRestore {
                checkpoint_id: meta.checkpoint_id,
                workers: meta.workers,
                dirs,
                savepoint: meta.savepoint,
            })
        })
        .collect()
}

/// `path` made absolute, without `..` and `.` components (a checkpoint's state paths are
/// relative to it). The state store's directory syncs go through io_uring, which does not
/// resolve a relative path against the working directory.
fn absolute(path: &std::path::Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The error to report: the first that is not a mere consequence of another.
pub(crate) fn root_cause(errors: Vec<Error>) -> Option<Error> {
    let primary = errors.iter().position(|e| !e.is_secondary());
    let mut errors = errors;
    match primary {
        Some(i) => Some(errors.swap_remove(i)),
        None => errors.into_iter().next(),
    }
}

fn await_startup(events: &mpsc::Receiver<WorkerEvent>, workers: usize) -> Result<()> {
    let mut started = 0;
    while started < workers {
        match events.recv_timeout(STARTUP_TIMEOUT) {
            Ok(WorkerEvent::Started) => started += 1,
            Ok(WorkerEvent::Wake) => {}
            Ok(WorkerEvent::StartFailed(worker, reason)) => {
                return Err(Error::Startup { worker, reason });
            }
            Ok(WorkerEvent::Finished(worker, _)) => {
                return Err(Error::Startup {
                    worker,
                    reason: "exited during start-up".into(),
                });
            }
            Err(_) => {
                // Which worker is stuck is unknown here; report the first not yet started.
                return Err(Error::Startup {
                    worker: started,
                    reason: format!(
                        "only {started} of {workers} workers started within {}s",
                        STARTUP_TIMEOUT.as_secs()
                    ),
                });
            }
        }
    }
    Ok(())
}

fn abort_start(go_senders: Vec<mpsc::Sender<bool>>, threads: Vec<std::thread::JoinHandle<()>>) {
    for go in &go_senders {
        let _ = go.send(false);
    }
    drop(go_senders);
    for t in threads {
        let _ = t.join();
    }
}

/// The executor of worker `w`: named, with its I/O memory, and, when pinned, spinning
/// [`SPIN_BEFORE_PARK`] before it parks (an embedded run's workers and a cluster part's).
pub(crate) fn worker_executor(placement: Placement, w: usize) -> LocalExecutorBuilder {
    let pinned = matches!(placement, Placement::Fixed(_));
    let builder = LocalExecutorBuilder::new(placement)
        .name(&format!("{WORKER_THREAD_PREFIX}{w}"))
        .io_memory(IO_MEMORY_BYTES);
    if pinned {
        builder.spin_before_park(SPIN_BEFORE_PARK)
    } else {
        builder
    }
}

fn worker_main(
    placement: Placement,
    ctx: WorkerContext,
    graph: Arc<JobGraph>,
    go: mpsc::Receiver<bool>,
    events: mpsc::Sender<WorkerEvent>,
) {
    let w = ctx.worker;
    let executor = match worker_executor(placement, w).make() {
        Ok(ex) => ex,
        Err(e) => {
            let _ = events.send(WorkerEvent::StartFailed(
                w,
                explain_start_error(&e.to_string()),
            ));
            return;
        }
    };
    let _ = events.send(WorkerEvent::Started);
    if !go.recv().unwrap_or(false) {
        return;
    }
    let result = executor.run(async move {
        // glommio can park the executor with tasks ready to run: another thread wakes it.
        let _nudged = crate::nudge::nudged().await;
        run_stages(ctx, graph).await
    });
    let _ = events.send(WorkerEvent::Finished(w, result));
}

/// Runs every stage of the graph on this worker; returns the first root-cause error.
pub(crate) async fn run_stages(ctx: WorkerContext, graph: Arc<JobGraph>) -> Result<()> {
    let mut tasks = Vec::with_capacity(graph.stages.len());
    for (i, stage) in graph.stages.iter().enumerate() {
        let name = stage.name();
        let mut stage_ctx = ctx.clone();
        stage_ctx.stage = i;
        let fut = stage.instantiate(stage_ctx);
        let ctx = ctx.clone();
        tasks.push(glommio::spawn_local(async move {
            let result = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(result) => result,
                Err(payload) => Err(panic_error(&name, ctx.worker, payload.as_ref())),
            };
            if result.is_err() {
                ctx.cancel();
            }
            result
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        if let Err(e) = task.await {
            errors.push(e);
        }
    }
    root_cause(errors).map_or(Ok(()), Err)
}

/// Checks, before any worker starts, what would otherwise fail inside an executor.
pub(crate) fn preflight() -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let mut memlock_kib = None;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK) {
        if soft < MEMLOCK_MIN_BYTES {
            // Raising the soft limit up to the hard one needs no privilege.
            let _ = setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard);
        }
        let soft = getrlimit(Resource::RLIMIT_MEMLOCK).map_or(soft, |(s, _)| s);
        if soft < MEMLOCK_MIN_BYTES {
            return Err(memlock_error(
                soft / 1024,
                "io_uring needs at least 512 KiB",
            ));
        }
        memlock_kib = Some(soft / 1024);
    }
    if let Err(e) = io_uring::IoUring::new(2) {
        let reason = match e.raw_os_error() {
            Some(1) => format!(
                "io_uring is blocked ({e}): kernel.io_uring_disabled is set, or a seccomp \
                 filter (a container runtime's default profile) denies io_uring_setup"
            ),
            Some(12) => {
                let limit = memlock_kib.map_or("unknown".to_owned(), |k| format!("{k} KiB"));
                return Err(memlock_error_text(format!(
                    "io_uring_setup failed with ENOMEM; the locked-memory limit (ulimit -l) is \
                     {limit}"
                )));
            }
            Some(38) => format!("this kernel has no io_uring ({e}); Linux 5.8 or newer is needed"),
            _ => format!("io_uring_setup failed: {e}"),
        };
        return Err(Error::Startup { worker: 0, reason });
    }
    Ok(())
}

fn memlock_error(kib: u64, why: &str) -> Error {
    memlock_error_text(format!(
        "the locked-memory limit (ulimit -l) is {kib} KiB; {why}"
    ))
}

fn memlock_error_text(what: String) -> Error {
    Error::Startup {
        worker: 0,
        reason: format!("{what}: raise it, e.g. `ulimit -l 8192`"),
    }
}

/// Turns an executor start error into a message that names the likely cause.
pub(crate) fn explain_start_error(err: &str) -> String {
    if err.contains("memlock") {
        format!("{err}: raise the locked-memory limit, e.g. `ulimit -l 8192`")
    } else if err.contains("CPU") || err.contains("cpu") {
        format!("{err}: the CPU is not in this process's allowed set (see `taskset -p $$`)")
    } else {
        format!("cannot create the io_uring executor: {err}")
    }
}

thread_local! {
    static LAST_PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that keeps worker panics off stderr: the runtime reports them
/// as one-line job errors instead. Panics on other threads go to the previous hook.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_worker = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with(WORKER_THREAD_PREFIX));
            if on_worker {
                let location = info.location().map(|l| format!(" at {l}"));
                LAST_PANIC_LOCATION.with(|slot| *slot.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

pub(crate) fn panic_error(stage: &str, worker: usize, payload: &(dyn Any + Send)) -> Error {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    };
    let location = LAST_PANIC_LOCATION
        .with(|slot| slot.borrow_mut().take())
        .unwrap_or_default();
    // Errors are one line; `assert_eq!` messages are not.
    let message = one_line(&message);
    Error::Panic {
        stage: stage.to_owned(),
        worker,
        location,
        message,
    }
}

/// `text` with its lines joined by single spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The default number of key groups for `workers` workers (Flink's rule for max parallelism).
pub fn default_key_groups(workers: usize) -> u32 {
    let wanted = (workers + workers / 2).next_power_of_two();
    (wanted as u32).clamp(KEY_GROUPS_DEFAULT, crate::key::KEY_GROUPS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_key_groups_follow_flinks_rule() {
        assert_eq!(default_key_groups(1), 128);
        assert_eq!(default_key_groups(2), 128);
        assert_eq!(default_key_groups(100), 256);
        assert_eq!(default_key_groups(200), 512);
        assert_eq!(default_key_groups(1024), 2048);
        assert!(KeyGroups::new(default_key_groups(1024), 1024).is_ok());
    }

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(one_line("a\n  b\n\nc"), "a b c");
        assert_eq!(one_line("plain"), "plain");
    }
}
