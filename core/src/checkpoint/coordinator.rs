//! The checkpoint coordinator of an embedded job: runs on the job's thread beside the runtime,
//! triggers checkpoints, collects acknowledgements, completes a checkpoint by writing its
//! metadata, tells the sinks to commit, and takes the savepoint that stops a job.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};

use crate::checkpoint::metadata::{
    self, CheckpointMetadata, InstanceMetadata, METADATA_FORMAT, StageMetadata,
};
use crate::checkpoint::{
    Ack, AckOutcome, CheckpointConfig, CheckpointControl, CheckpointTracker, ToCoordinator,
};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::graph::StageFactory;

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
}

/// Figures about the checkpoints a run took.
#[derive(Clone, Debug, Default)]
pub struct CheckpointStats {
    /// Checkpoints completed.
    pub completed: u64,
    /// Checkpoints aborted (timed out, or their metadata could not be written).
    pub aborted: u64,
    /// The newest completed one.
    pub last_completed: u64,
    /// From trigger to completion, per completed checkpoint, in ms.
    pub durations_ms: Vec<u64>,
    /// The longest synchronous pause of any instance, per completed checkpoint, in µs.
    pub sync_max_us: Vec<u64>,
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
    ms: u64,
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
                ToCoordinator::Ack(ack) => self.tracker.on_ack(ack),
                ToCoordinator::Finished {
                    stage,
                    worker,
                    splits,
                } => self.tracker.on_finished(stage, worker, splits),
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
            self.started_ms = FastStart { id, ms: now };
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
        if self.started_ms.id == id {
            self.stats
                .durations_ms
                .push(now.saturating_sub(self.started_ms.ms));
        }
        let sync_max = meta
            .stages
            .iter()
            .flat_map(|s| s.instances.iter().map(|i| i.sync_us))
            .max()
            .unwrap_or(0);
        self.stats.sync_max_us.push(sync_max);
        if let Some(config) = &self.config
            && !savepoint
            && let Err(e) = metadata::retain(&config.dir, config.retain)
        {
            tracing::warn!(error = %e, "could not delete old checkpoints");
        }
        tracing::debug!(checkpoint = id, dir = %dir.display(), "checkpoint complete");
        Ok(savepoint.then_some(dir))
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
                    duration_us: ack.duration_us,
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
            stages,
        }
    }
}
