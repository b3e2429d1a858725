//! The checkpoint coordinator of an embedded job: runs on the job's thread beside the runtime,
//! triggers checkpoints, collects acknowledgements, completes a checkpoint by writing its
//! metadata, tells the sinks to commit, and takes the savepoint that stops a job.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};

#[cfg(test)]
use crate::checkpoint::SplitState;
use crate::checkpoint::metadata::{
    self, CheckpointMetadata, InstanceMetadata, METADATA_FORMAT, StageMetadata,
};
use crate::checkpoint::{
    Ack, AckOutcome, CheckpointConfig, CheckpointControl, CheckpointTracker, ToCoordinator,
};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::graph::StageFactory;
use hdrhistogram::Histogram;

/// What the coordinator knows of the job.
#[derive(Clone, Debug)]
pub struct JobInfo {
    /// The job's name.
    pub job: String,
    /// Its workers.
    pub workers: usize,
    /// Its key groups.
    pub key_groups_max: u32,
    /// Its stages' names, in graph order.
    pub stage_names: Vec<String>,
    /// The run (a cluster's deployment of the job) taking the checkpoints; 0 in one process.
    pub run: u64,
}

/// The largest value the histograms of [`CheckpointStats`] tell apart: an hour, in µs.
pub const HISTOGRAM_US_MAX: u64 = 3_600_000_000;

/// Figures about the checkpoints a run took. The distributions are HDR histograms in µs
/// (3 significant digits), so a job of any length keeps them in bounded memory.
#[derive(Clone, Debug)]
pub struct CheckpointStats {
    /// Checkpoints completed.
    pub completed: u64,
    /// Checkpoints aborted (timed out, declined, or their metadata could not be written).
    pub aborted: u64,
    /// The newest completed one.
    pub last_completed: u64,
    /// From trigger to completion (metadata written), per completed checkpoint.
    pub duration_us: Histogram<u64>,
    /// The synchronous pause of every stage instance, per instance and completed checkpoint:
    /// from taking the (aligned) barrier to its state frozen, i.e. the chain's barrier hooks
    /// (a pre-aggregation sends what it holds on, sinks pre-commit) and the freeze.
    pub sync_us: Histogram<u64>,
    /// The alignment time of every stage instance with several inputs, per instance and
    /// completed checkpoint.
    pub align_us: Histogram<u64>,
    /// The longest synchronous pause of any instance, per completed checkpoint.
    pub sync_max_us: Histogram<u64>,
    /// The pauses per stage, in stage order: a source stage's pause includes sending on what
    /// its chain holds before the barrier (a pre-aggregation's partial results); a stage after
    /// an exchange mostly freezes state.
    pub by_stage: Vec<StagePauses>,
}

/// One stage's pauses, per instance and completed checkpoint (see [`crate::checkpoint::Ack`]).
#[derive(Clone, Debug)]
pub struct StagePauses {
    /// The stage's name.
    pub name: String,
    /// The whole pause, wall time.
    pub sync_us: Histogram<u64>,
    /// Its freeze of the dirty state.
    pub freeze_us: Histogram<u64>,
    /// The CPU time the instance's thread spent in the pause.
    pub sync_cpu_us: Histogram<u64>,
}

impl CheckpointStats {
    /// Adds `other`'s counts and histograms (another run's, of the same job), stage by stage
    /// name; `last_completed` stays.
    pub fn add(&mut self, other: &CheckpointStats) {
        self.completed += other.completed;
        self.aborted += other.aborted;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.duration_us.add(&other.duration_us);
        let _ = self.sync_us.add(&other.sync_us);
        let _ = self.align_us.add(&other.align_us);
        let _ = self.sync_max_us.add(&other.sync_max_us);
        for stage in &other.by_stage {
            match self.by_stage.iter_mut().find(|s| s.name == stage.name) {
                Some(mine) => mine.add(stage),
                None => self.by_stage.push(stage.clone()),
            }
        }
    }
}

impl StagePauses {
    /// Adds `other`'s figures (a stage of the same name, from another run).
    pub fn add(&mut self, other: &StagePauses) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.sync_us.add(&other.sync_us);
        let _ = self.freeze_us.add(&other.freeze_us);
        let _ = self.sync_cpu_us.add(&other.sync_cpu_us);
    }
}

impl Default for CheckpointStats {
    fn default() -> Self {
        // Up to an hour, 3 significant digits; longer values are recorded as an hour. (An
        // auto-resizing histogram would clamp `saturating_record` to its first range.)
        let histogram = || {
            Histogram::new_with_bounds(1, HISTOGRAM_US_MAX, 3)
                .unwrap_or_else(|e| unreachable!("valid bounds: {e}"))
        };
        CheckpointStats {
            completed: 0,
            aborted: 0,
            last_completed: 0,
            duration_us: histogram(),
            sync_us: histogram(),
            align_us: histogram(),
            sync_max_us: histogram(),
            by_stage: Vec::new(),
        }
    }
}

/// What a tick of the coordinator found.
#[derive(Debug)]
pub enum Tick {
    /// Carry on.
    Continue,
    /// The savepoint that stops the job is complete, in this directory: stop the job.
    Stopped(PathBuf),
    /// A savepoint taken while the job goes on is complete, in this directory.
    Savepoint(PathBuf),
    /// A savepoint taken while the job goes on failed (it timed out, or its metadata could
    /// not be written); the job goes on.
    SavepointFailed(String),
}

/// The coordinator.
pub struct Coordinator {
    config: Option<CheckpointConfig>,
    tracker: CheckpointTracker,
    control: Arc<CheckpointControl>,
    messages: mpsc::Receiver<ToCoordinator>,
    info: JobInfo,
    clock: SystemClock,
    started_ms: FastStart,
    savepoint_dir: Option<PathBuf>,
    savepoint_id: Option<u64>,
    /// Whether the requested savepoint stops the job.
    savepoint_stops: bool,
    stats: CheckpointStats,
}

/// When each pending checkpoint started, for its duration.
#[derive(Default)]
struct FastStart {
    id: u64,
    us: u64,
}

impl Coordinator {
    /// A coordinator for a job of `info` resumed after checkpoint `last` (0: fresh), taking
    /// checkpoints per `config` (none: only a savepoint on request).
    pub fn new(config: Option<CheckpointConfig>, info: JobInfo, last: u64) -> Coordinator {
        let (tx, rx) = mpsc::channel();
        let control = CheckpointControl::new(tx, last);
        let expected = info.stage_names.len() * info.workers;
        let (interval, min_pause, timeout) = match &config {
            Some(c) => (c.interval, c.min_pause, c.timeout),
            None => (
                std::time::Duration::MAX / 4,
                std::time::Duration::ZERO,
                std::time::Duration::from_secs(600),
            ),
        };
        Coordinator {
            config,
            tracker: CheckpointTracker::new(expected, last, interval, min_pause, timeout),
            control,
            messages: rx,
            info,
            clock: SystemClock::new(),
            started_ms: FastStart::default(),
            savepoint_dir: None,
            savepoint_id: None,
            savepoint_stops: true,
            stats: CheckpointStats {
                last_completed: last,
                ..CheckpointStats::default()
            },
        }
    }

    /// The control the workers share.
    pub fn control(&self) -> Arc<CheckpointControl> {
        self.control.clone()
    }

    /// Figures so far.
    pub fn stats(&self) -> &CheckpointStats {
        &self.stats
    }

    /// Asks for a savepoint into a new directory under `dir`, after which the job stops.
    pub fn request_savepoint(&mut self, dir: &Path) {
        if self.savepoint_dir.is_none() {
            self.savepoint_dir = Some(dir.to_owned());
            self.savepoint_stops = true;
        }
    }

    /// Asks for a savepoint into a new directory under `dir` while the job goes on (Flink's
    /// `savepoint`); [`take_savepoint`](Self::take_savepoint) reports it once complete.
    /// `false` if a savepoint is already under way.
    pub fn request_savepoint_and_continue(&mut self, dir: &Path) -> bool {
        if self.savepoint_dir.is_some() {
            return false;
        }
        self.savepoint_dir = Some(dir.to_owned());
        self.savepoint_stops = false;
        true
    }

    /// The savepoint under way, if any: its id once triggered.
    pub fn savepoint_pending(&self) -> Option<Option<u64>> {
        self.savepoint_dir.as_ref().map(|_| self.savepoint_id)
    }

    /// The newest complete checkpoint.
    pub fn last_completed(&self) -> u64 {
        self.stats.last_completed
    }

    /// Handles what arrived, completes, aborts and triggers checkpoints.
    pub fn tick(&mut self, stages: &[Box<dyn StageFactory>]) -> Result<Tick> {
        while let Ok(message) = self.messages.try_recv() {
            let outcome = match message {
                ToCoordinator::Running { stage, worker } => {
                    self.tracker.on_running(stage, worker);
                    continue;
                }
                ToCoordinator::Ack(ack) => self.tracker.on_ack(ack),
                ToCoordinator::Finished {
                    stage,
                    worker,
                    splits,
                } => self.tracker.on_finished(stage, worker, splits),
                ToCoordinator::Declined {
                    checkpoint_id,
                    stage,
                    worker,
                    reason,
                } => return Err(self.declined(checkpoint_id, stage, worker, reason)),
            };
            let AckOutcome::Complete(id, acks) = outcome else {
                continue;
            };
            let savepoint = self.savepoint_id == Some(id);
            match self.complete(id, acks, stages) {
                Ok(Some(dir)) if self.savepoint_stops => return Ok(Tick::Stopped(dir)),
                Ok(Some(dir)) => {
                    self.end_savepoint();
                    return Ok(Tick::Savepoint(dir));
                }
                Ok(None) => {}
                Err(e) if savepoint && !self.savepoint_stops => {
                    self.end_savepoint();
                    return Ok(Tick::SavepointFailed(e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        let now = self.clock.now_ms();
        if let Some(id) = self.tracker.timed_out(now) {
            tracing::warn!(checkpoint = id, "checkpoint timed out: aborted");
            self.stats.aborted += 1;
            if self.savepoint_id == Some(id) {
                let message = format!("savepoint {id} timed out: the job keeps running");
                if !self.savepoint_stops {
                    self.end_savepoint();
                    return Ok(Tick::SavepointFailed(message));
                }
                return Err(Error::Config(message));
            }
        }
        if self.tracker.all_finished() {
            return Ok(Tick::Continue);
        }
        let id = match (&self.savepoint_dir, self.savepoint_id) {
            (Some(root), None) => {
                let id = self.tracker.start_now(now);
                if let Some(id) = id {
                    self.savepoint_id = Some(id);
                    let dir = root.join(format!("savepoint-{id}-{now}"));
                    self.control.set_savepoint(id, dir, self.savepoint_stops);
                }
                id
            }
            _ if self.config.is_some() => self.tracker.due(now),
            _ => None,
        };
        if let Some(id) = id {
            self.started_ms = FastStart {
                id,
                us: self.elapsed_us(),
            };
            self.control.trigger_ms.store(now, Ordering::Relaxed);
            self.control.trigger.store(id, Ordering::Release);
            tracing::debug!(checkpoint = id, "checkpoint triggered");
        }
        Ok(Tick::Continue)
    }

    fn end_savepoint(&mut self) {
        self.savepoint_dir = None;
        self.savepoint_id = None;
    }

    /// A stage instance could not write its snapshot of checkpoint `checkpoint_id`: the
    /// checkpoint is aborted (if still pending) and the job fails, to restart from the latest
    /// complete checkpoint. The error names the checkpoint, the instance and the cause.
    fn declined(
        &mut self,
        checkpoint_id: u64,
        stage: usize,
        worker: usize,
        reason: String,
    ) -> Error {
        if self.tracker.pending() == Some(checkpoint_id) {
            self.tracker.ended(self.clock.now_ms());
            self.stats.aborted += 1;
        }
        let name = self.info.stage_names.get(stage).map_or("?", String::as_str);
        Error::State {
            op: "checkpoint",
            message: format!(
                "checkpoint {checkpoint_id} failed in stage '{name}' on worker {worker}: {reason}"
            ),
        }
    }

    /// Takes the final checkpoint of a job whose stage instances have all finished, and lets
    /// the sinks commit everything: a restore after this point (a crash on the way out, or a
    /// rerun with `--restore latest`) resumes past the last record and writes nothing twice.
    /// Does nothing without checkpoints, or if an instance did not finish.
    pub fn finish(&mut self, stages: &[Box<dyn StageFactory>]) -> Result<()> {
        // What arrived last (the final acknowledgements) first; a savepoint that completes
        // or fails on the way ends a tick early, so tick until nothing is left.
        loop {
            match self.tick(stages)? {
                Tick::Stopped(_) => return Ok(()),
                Tick::Continue => break,
                Tick::Savepoint(_) | Tick::SavepointFailed(_) => {}
            }
        }
        if self.config.is_none() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let Some((id, acks)) = self.tracker.final_checkpoint(now) else {
            return Ok(());
        };
        // Not a measured checkpoint: every instance had acknowledged already.
        self.control.trigger_ms.store(now, Ordering::Relaxed);
        self.complete(id, acks, stages)?;
        if self.stats.last_completed != id {
            return Err(Error::Config(format!(
                "the final checkpoint {id} could not be written (see the warning above)"
            )));
        }
        Ok(())
    }

    /// Completes checkpoint `id`: writes its metadata, then lets the sinks commit. Returns the
    /// savepoint's directory if it was a savepoint.
    fn complete(
        &mut self,
        id: u64,
        acks: Vec<Ack>,
        stages: &[Box<dyn StageFactory>],
    ) -> Result<Option<PathBuf>> {
        let now = self.clock.now_ms();
        let savepoint = self.savepoint_id == Some(id);
        let savepoint_dir = self.control.savepoint_dir(id);
        let dir = match (savepoint_dir, &self.config) {
            (Some(dir), _) if savepoint => dir,
            (_, Some(config)) => metadata::checkpoint_dir(&config.dir, id),
            (_, None) => return Ok(None),
        };
        let meta = self.metadata(id, savepoint, acks);
        if let Err(e) = meta.write(&dir) {
            // A checkpoint whose metadata cannot be written is aborted; the next proceeds.
            tracing::warn!(checkpoint = id, error = %e, "checkpoint aborted");
            self.stats.aborted += 1;
            self.tracker.ended(now);
            return if savepoint { Err(e) } else { Ok(None) };
        }
        self.tracker.ended(now);
        self.control.completed.store(id, Ordering::Release);
        for stage in stages {
            stage.commit_checkpoint(id)?;
        }
        self.stats.completed += 1;
        self.stats.last_completed = id;
        self.record_stats(id, &meta);
        if let Some(config) = &self.config
            && !savepoint
            && let Err(e) = metadata::retain(&config.dir, config.retain)
        {
            tracing::warn!(error = %e, "could not delete old checkpoints");
        }
        tracing::debug!(checkpoint = id, dir = %dir.display(), "checkpoint complete");
        Ok(savepoint.then_some(dir))
    }

    fn elapsed_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    /// Adds a completed checkpoint's figures to the histograms.
    fn record_stats(&mut self, id: u64, meta: &CheckpointMetadata) {
        let now_us = self.elapsed_us();
        let stats = &mut self.stats;
        if self.started_ms.id == id {
            let us = now_us.saturating_sub(self.started_ms.us);
            stats.duration_us.saturating_record(us);
        }
        let mut sync_max = 0;
        // `meta.stages` lists every stage of the job, in stage order, each time.
        for (i, stage) in meta.stages.iter().enumerate() {
            if i == stats.by_stage.len() {
                let h = || Histogram::new_from(&stats.sync_us);
                stats.by_stage.push(StagePauses {
                    name: stage.name.clone(),
                    sync_us: h(),
                    freeze_us: h(),
                    sync_cpu_us: h(),
                });
            }
            let pauses = &mut stats.by_stage[i];
            // Finished instances acknowledge implicitly, with nothing measured.
            for instance in stage.instances.iter().filter(|i| i.duration_us > 0) {
                stats.sync_us.saturating_record(instance.sync_us);
                pauses.sync_us.saturating_record(instance.sync_us);
                pauses.freeze_us.saturating_record(instance.freeze_us);
                pauses.sync_cpu_us.saturating_record(instance.sync_cpu_us);
                sync_max = sync_max.max(instance.sync_us);
            }
        }
        // Every stage fed by channels aligns (an exchange has a channel per upstream worker);
        // a source stage does not.
        for stage in meta
            .stages
            .iter()
            .filter(|s| !s.name.starts_with("Source: "))
        {
            for instance in stage.instances.iter().filter(|i| i.duration_us > 0) {
                stats.align_us.saturating_record(instance.align_us);
            }
        }
        stats.sync_max_us.saturating_record(sync_max);
    }

    fn metadata(&self, id: u64, savepoint: bool, acks: Vec<Ack>) -> CheckpointMetadata {
        let mut stages: Vec<StageMetadata> = self
            .info
            .stage_names
            .iter()
            .enumerate()
            .map(|(stage, name)| StageMetadata {
                stage,
                name: name.clone(),
                instances: Vec::new(),
            })
            .collect();
        for ack in acks {
            if let Some(stage) = stages.get_mut(ack.stage) {
                stage.instances.push(InstanceMetadata {
                    worker: ack.worker,
                    splits: ack.splits,
                    state: ack.state,
                    sync_us: ack.sync_us,
                    freeze_us: ack.freeze_us,
                    sync_cpu_us: ack.sync_cpu_us,
                    duration_us: ack.duration_us,
                    align_us: ack.align_us,
                });
            }
        }
        CheckpointMetadata {
            format: METADATA_FORMAT,
            checkpoint_id: id,
            job: self.info.job.clone(),
            savepoint,
            timestamp_ms: self.control.trigger_ms.load(Ordering::Relaxed),
            workers: self.info.workers,
            key_groups_max: self.info.key_groups_max,
            run: self.info.run,
            stages,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The coordinator's handling of late, duplicate and stale messages: every acknowledgement,
    //! decline and commit names its checkpoint, and one that names a checkpoint no longer
    //! pending changes nothing.

    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::graph::{Prepare, StageFuture, WorkerContext};

    /// A stage that records the checkpoints it was told to commit.
    #[derive(Default)]
    struct Recorder {
        name: String,
        commits: Arc<Mutex<Vec<u64>>>,
    }

    impl StageFactory for Recorder {
        fn name(&self) -> String {
            self.name.clone()
        }
        fn prepare(&self, _p: &Prepare<'_>) -> Result<()> {
            Ok(())
        }
        fn instantiate(&self, _ctx: WorkerContext) -> StageFuture {
            Box::pin(async { Ok(()) })
        }
        fn commit_checkpoint(&self, id: u64) -> Result<()> {
            self.commits.lock().unwrap().push(id);
            Ok(())
        }
        fn commit(&self) -> Result<()> {
            Ok(())
        }
        fn abort(&self) {}
    }

    fn ack(id: u64, stage: usize, worker: usize) -> ToCoordinator {
        ToCoordinator::Ack(Ack {
            checkpoint_id: id,
            stage,
            worker,
            splits: vec![],
            state: None,
            sync_us: 5,
            freeze_us: 2,
            sync_cpu_us: 4,
            duration_us: 10,
            align_us: 0,
        })
    }

    type Setup = (
        Coordinator,
        Vec<Box<dyn StageFactory>>,
        Arc<Mutex<Vec<u64>>>,
    );

    /// A coordinator of 2 stages on 1 worker checkpointing into `dir` at every tick, with the
    /// recorder stages and their commits.
    fn setup(dir: &Path, timeout: Duration) -> Setup {
        let mut config = CheckpointConfig::new(dir, Duration::ZERO);
        config.timeout = timeout;
        let info = JobInfo {
            job: "stale".into(),
            workers: 1,
            key_groups_max: 128,
            stage_names: vec!["Source: a".into(), "Exchange -> b".into()],
            run: 0,
        };
        let commits = Arc::new(Mutex::new(Vec::new()));
        let stages: Vec<Box<dyn StageFactory>> = info
            .stage_names
            .iter()
            .map(|name| {
                Box::new(Recorder {
                    name: name.clone(),
                    commits: commits.clone(),
                }) as Box<dyn StageFactory>
            })
            .collect();
        let c = Coordinator::new(Some(config), info, 0);
        for stage in 0..2 {
            c.control()
                .send(ToCoordinator::Running { stage, worker: 0 });
        }
        (c, stages, commits)
    }

    fn tick(c: &mut Coordinator, stages: &[Box<dyn StageFactory>]) {
        assert!(matches!(c.tick(stages), Ok(Tick::Continue)));
    }

    #[test]
    fn no_checkpoint_or_savepoint_starts_before_every_instance_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = CheckpointConfig::new(dir.path(), Duration::ZERO);
        config.timeout = Duration::from_secs(60);
        let info = JobInfo {
            job: "restoring".into(),
            workers: 2,
            key_groups_max: 128,
            stage_names: vec!["Source: a".into()],
            run: 0,
        };
        let mut c = Coordinator::new(Some(config), info, 4);
        let control = c.control();
        c.request_savepoint_and_continue(&dir.path().join("sp"));
        control.send(ToCoordinator::Running {
            stage: 0,
            worker: 1,
        });
        for _ in 0..3 {
            tick(&mut c, &[]);
        }
        assert_eq!(control.pending_trigger(4), None, "worker 0 still restores");
        assert_eq!(c.savepoint_pending(), Some(None));
        control.send(ToCoordinator::Running {
            stage: 0,
            worker: 0,
        });
        tick(&mut c, &[]);
        assert_eq!(control.pending_trigger(4).map(|t| t.0), Some(5));
        assert_eq!(c.savepoint_pending(), Some(Some(5)));
    }

    #[test]
    fn duplicate_late_and_unknown_acknowledgements_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, stages, commits) = setup(dir.path(), Duration::from_secs(60));
        let control = c.control();
        tick(&mut c, &stages); // triggers 1
        assert_eq!(control.pending_trigger(0).map(|t| t.0), Some(1));
        control.send(ack(1, 0, 0));
        control.send(ack(1, 0, 0)); // a duplicate
        control.send(ack(7, 1, 0)); // a checkpoint never triggered
        control.send(ack(0, 1, 0)); // an older one
        tick(&mut c, &stages);
        assert_eq!(
            c.stats().completed,
            0,
            "one instance has not acknowledged 1"
        );
        control.send(ack(1, 1, 0));
        tick(&mut c, &stages); // completes 1, triggers 2
        assert_eq!(c.stats().completed, 1);
        assert_eq!(
            *commits.lock().unwrap(),
            vec![1, 1],
            "each stage commits 1 once"
        );
        // Acknowledgements of 1 arriving again after its completion change nothing.
        control.send(ack(1, 0, 0));
        control.send(ack(1, 1, 0));
        tick(&mut c, &stages);
        assert_eq!(c.stats().completed, 1);
        assert_eq!(commits.lock().unwrap().len(), 2);
        assert_eq!(
            metadata::latest(dir.path())
                .unwrap()
                .0
                .unwrap()
                .1
                .checkpoint_id,
            1
        );
    }

    #[test]
    fn acknowledgements_of_an_aborted_checkpoint_commit_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, stages, commits) = setup(dir.path(), Duration::ZERO);
        let control = c.control();
        tick(&mut c, &stages); // triggers 1
        tick(&mut c, &stages); // 1 times out (timeout 0) and is aborted; 2 is triggered
        assert_eq!(control.pending_trigger(0).map(|t| t.0), Some(2));
        control.send(ack(1, 0, 0));
        control.send(ack(1, 1, 0));
        tick(&mut c, &stages); // the acknowledgements of 1 are stale
        assert_eq!(c.stats().completed, 0);
        assert!(c.stats().aborted >= 1);
        assert!(
            commits.lock().unwrap().is_empty(),
            "nothing of 1 is committed"
        );
        assert!(metadata::latest(dir.path()).unwrap().0.is_none());
    }

    #[test]
    fn a_decline_fails_the_job_and_aborts_only_its_own_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, stages, commits) = setup(dir.path(), Duration::from_secs(60));
        let control = c.control();
        tick(&mut c, &stages); // triggers 1
        control.send(ack(1, 0, 0));
        control.send(ack(1, 1, 0));
        tick(&mut c, &stages); // completes 1, triggers 2
        let decline = |id| ToCoordinator::Declined {
            checkpoint_id: id,
            stage: 1,
            worker: 0,
            reason: "disk full".into(),
        };
        // A decline of the completed checkpoint 1 (stale) leaves 2 pending, but the job
        // fails: the instance's store refuses further work.
        control.send(decline(1));
        let err = c.tick(&stages).unwrap_err().to_string();
        assert!(
            err.contains("checkpoint 1 failed in stage 'Exchange -> b'"),
            "{err}"
        );
        assert!(err.contains("disk full"), "{err}");
        assert_eq!(c.stats().aborted, 0, "2 is still pending");
        control.send(decline(2));
        assert!(c.tick(&stages).is_err());
        assert_eq!(c.stats().aborted, 1, "2 is aborted");
        control.send(ack(2, 0, 0));
        control.send(ack(2, 1, 0));
        let _ = c.tick(&stages);
        assert_eq!(
            c.stats().last_completed,
            1,
            "late acknowledgements of 2 are stale"
        );
        assert_eq!(*commits.lock().unwrap(), vec![1, 1]);
    }

    #[test]
    fn a_finished_job_takes_a_final_checkpoint_with_every_split_done() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, stages, commits) = setup(dir.path(), Duration::from_secs(60));
        let control = c.control();
        tick(&mut c, &stages); // triggers 1
        let split = SplitState {
            split: vec![1],
            position: None,
            done: true,
        };
        control.send(ToCoordinator::Finished {
            stage: 0,
            worker: 0,
            splits: vec![split.clone()],
        });
        control.send(ack(1, 1, 0));
        control.send(ToCoordinator::Finished {
            stage: 1,
            worker: 0,
            splits: vec![],
        });
        c.finish(&stages).unwrap();
        assert_eq!(c.stats().last_completed, 2, "1 completed, then the final 2");
        assert_eq!(*commits.lock().unwrap(), vec![1, 1, 2, 2]);
        let (_, meta) = metadata::latest(dir.path()).unwrap().0.unwrap();
        assert_eq!(meta.checkpoint_id, 2);
        assert_eq!(meta.stages[0].instances[0].splits, vec![split]);
    }

    #[test]
    fn the_histograms_keep_long_pauses_and_alignments() {
        let mut stats = CheckpointStats::default();
        for v in [3, 40_000, 7_000_000] {
            stats.align_us.saturating_record(v);
        }
        assert!(
            stats.align_us.max() >= 6_990_000,
            "{}",
            stats.align_us.max()
        );
        assert!(stats.align_us.value_at_quantile(0.5) >= 39_900);
        stats.sync_us.saturating_record(HISTOGRAM_US_MAX * 10);
        assert!(stats.sync_us.max() >= HISTOGRAM_US_MAX);
    }
}
