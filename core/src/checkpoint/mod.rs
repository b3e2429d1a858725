//! Aligned checkpoint barriers (issue "checkpoints"): the pure parts of the protocol.
//!
//! 1. The coordinator (on the job's thread, [`crate::runtime`]) triggers checkpoint `n` by
//!    raising [`CheckpointControl::trigger`]; every source stage injects barrier `n` between two
//!    batches, noting its splits' read positions.
//! 2. A stage with several inputs aligns ([`BarrierAligner`]); then its operators snapshot and
//!    the barrier goes on. Once its snapshot is durable the stage instance acknowledges `n`
//!    ([`Ack`]).
//! 3. When every stage instance of every worker has acknowledged ([`CheckpointTracker`]), the
//!    coordinator writes the checkpoint's metadata atomically ([`metadata`]); `n` is complete.
//! 4. Then sinks commit what they wrote before barrier `n` (two-phase commit).
//!
//! Every acknowledgement, commit and abort names its checkpoint id; a stale one is ignored.

mod align;
pub mod coordinator;
pub mod metadata;

pub use align::{Alignment, BarrierAligner};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::{FastMap, FastSet};

/// How checkpoints are taken.
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    /// Where checkpoints (and the state of the workers) are written.
    pub dir: std::path::PathBuf,
    /// Time between the start of two checkpoints.
    pub interval: Duration,
    /// A checkpoint not complete after this long is aborted.
    pub timeout: Duration,
    /// Least time between the end of one checkpoint and the start of the next.
    pub min_pause: Duration,
    /// Complete checkpoints kept (older ones are deleted).
    pub retain: usize,
}

impl CheckpointConfig {
    /// Checkpoints in `dir` every `interval`, with a timeout of 10 minutes, no pause, and the
    /// newest 3 retained.
    pub fn new(dir: impl Into<std::path::PathBuf>, interval: Duration) -> Self {
        CheckpointConfig {
            dir: dir.into(),
            interval,
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            retain: 3,
        }
    }
}

/// Where a source's split was when the barrier passed it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitState {
    /// The split, as the source encodes it (hex in the metadata).
    #[serde(with = "hex_bytes")]
    pub split: Vec<u8>,
    /// The read position to resume at; `None` if the split was not started.
    pub position: Option<u64>,
    /// Whether the split was read to its end.
    pub done: bool,
}

/// A stage instance's acknowledgement of a checkpoint: its snapshot is durable.
#[derive(Clone, Debug)]
pub struct Ack {
    /// The checkpoint.
    pub checkpoint_id: u64,
    /// The stage's index in the job graph.
    pub stage: usize,
    /// The worker.
    pub worker: usize,
    /// For a source stage: its splits' states.
    pub splits: Vec<SplitState>,
    /// Where the stage's operator state went (opaque to the coordinator), if it has any.
    pub state: Option<String>,
    /// The pause in the record flow at the barrier, wall time: the chain's barrier hooks (a
    /// pre-aggregation sends on what it holds, sinks pre-commit) and the state's freeze.
    pub sync_us: u64,
    /// Of `sync_us`, the freeze of the dirty state (Flink's synchronous snapshot part; 0 for
    /// a stage without keyed state).
    pub freeze_us: u64,
    /// The CPU time the worker's thread spent in the pause: `sync_us` less the time the
    /// thread was descheduled (or, on a VM, lost to the host), within the clock's precision.
    pub sync_cpu_us: u64,
    /// From the barrier's arrival to the acknowledgement.
    pub duration_us: u64,
    /// How long the stage's inputs were aligning: from the first input's barrier to the last
    /// one's (0 for a source stage or a stage with one input).
    pub align_us: u64,
}

/// What a stage instance tells the coordinator.
#[derive(Clone, Debug)]
pub enum ToCoordinator {
    /// It is running: its state is restored and it processes records. No checkpoint is
    /// triggered before every instance is (Flink's rule: not while a task initializes), so
    /// that no checkpoint waits for a restore.
    Running {
        /// The stage.
        stage: usize,
        /// The worker.
        worker: usize,
    },
    /// Its snapshot of a checkpoint is durable.
    Ack(Ack),
    /// It finished (its inputs ended): it will acknowledge no more checkpoints, so count it
    /// as done for this and every later one, with these final split states.
    Finished {
        /// The stage.
        stage: usize,
        /// The worker.
        worker: usize,
        /// Its sources' splits, all read.
        splits: Vec<SplitState>,
    },
    /// Its snapshot of a checkpoint failed (its state could not be written): the checkpoint
    /// cannot complete, and the instance cannot go on (its store failed closed).
    Declined {
        /// The checkpoint.
        checkpoint_id: u64,
        /// The stage.
        stage: usize,
        /// The worker.
        worker: usize,
        /// Why, as one line.
        reason: String,
    },
}

/// What flows between the coordinator and the workers: the trigger and the completion
/// (atomics the workers read), and the acknowledgements (a channel to the coordinator).
#[derive(Debug)]
pub struct CheckpointControl {
    /// The newest checkpoint triggered: sources inject its barrier when they see it raised.
    pub trigger: AtomicU64,
    /// When the newest trigger happened (ms since the epoch), for the barriers.
    pub trigger_ms: AtomicU64,
    /// The newest complete checkpoint.
    pub completed: AtomicU64,
    /// A savepoint was asked for that stops the job: sources stop after injecting its
    /// barrier.
    pub stop_after: AtomicU64,
    /// The checkpoint that is a savepoint (stopping or not), written to `savepoint_dir`.
    pub savepoint_at: AtomicU64,
    /// The directory of that savepoint, where the stages write their state.
    pub savepoint_dir: Mutex<Option<std::path::PathBuf>>,
    to_coordinator: Mutex<mpsc::Sender<ToCoordinator>>,
    /// Called after each message, so that a coordinator waiting for something else (the
    /// runtime's thread waits for worker events) handles it at once rather than at its next
    /// periodic tick.
    waker: WakerCell,
}

/// Wakes the coordinator's thread.
pub type Waker = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct WakerCell(Mutex<Option<Waker>>);

impl std::fmt::Debug for WakerCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.lock().map_or(true, |w| w.is_some());
        f.write_str(if set {
            "WakerCell(set)"
        } else {
            "WakerCell(none)"
        })
    }
}

impl CheckpointControl {
    /// Control whose messages go to `to_coordinator`; checkpoint ids continue after `last`
    /// (the checkpoint a job was restored from).
    pub fn new(to_coordinator: mpsc::Sender<ToCoordinator>, last: u64) -> Arc<CheckpointControl> {
        Arc::new(CheckpointControl {
            trigger: AtomicU64::new(last),
            trigger_ms: AtomicU64::new(0),
            completed: AtomicU64::new(last),
            stop_after: AtomicU64::new(0),
            savepoint_at: AtomicU64::new(0),
            savepoint_dir: Mutex::new(None),
            to_coordinator: Mutex::new(to_coordinator),
            waker: WakerCell::default(),
        })
    }
    /// The checkpoint sources should inject, if newer than `injected`.
    pub fn pending_trigger(&self, injected: u64) -> Option<(u64, u64)> {
        let id = self.trigger.load(Ordering::Acquire);
        (id > injected).then(|| (id, self.trigger_ms.load(Ordering::Relaxed)))
    }
    /// Sends a message to the coordinator (dropped if it is gone: the job ends), and wakes it.
    pub fn send(&self, message: ToCoordinator) {
        let _ = self
            .to_coordinator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(message);
        if let Some(wake) = self
            .waker
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            wake();
        }
    }
    /// Sets (or, with `None`, removes) what [`send`](Self::send) calls to wake the coordinator.
    pub fn set_waker(&self, waker: Option<Waker>) {
        *self.waker.0.lock().unwrap_or_else(|e| e.into_inner()) = waker;
    }
    /// Whether checkpoint `id` was taken to stop the job (a savepoint).
    pub fn stops_at(&self, id: u64) -> bool {
        self.stop_after.load(Ordering::Acquire) == id && id != 0
    }
    /// Marks checkpoint `id` as a savepoint into `dir` (and, with `stop`, as the one that
    /// stops the job). Set before `id` is triggered.
    pub fn set_savepoint(&self, id: u64, dir: std::path::PathBuf, stop: bool) {
        *self.savepoint_dir.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir);
        self.savepoint_at.store(id, Ordering::Release);
        if stop {
            self.stop_after.store(id, Ordering::Release);
        }
    }
    /// The directory of the savepoint `id`, if checkpoint `id` is a savepoint.
    pub fn savepoint_dir(&self, id: u64) -> Option<std::path::PathBuf> {
        if id == 0 || self.savepoint_at.load(Ordering::Acquire) != id {
            return None;
        }
        self.savepoint_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What an acknowledgement did.
#[derive(Debug, PartialEq)]
pub enum AckOutcome {
    /// It belongs to no pending checkpoint (an aborted or older one).
    Stale,
    /// Counted; more are expected.
    Pending,
    /// The last one: the checkpoint can be completed with these acknowledgements.
    Complete(u64, Vec<Ack>),
}

impl PartialEq for Ack {
    fn eq(&self, other: &Ack) -> bool {
        (self.checkpoint_id, self.stage, self.worker)
            == (other.checkpoint_id, other.stage, other.worker)
    }
}

struct Pending {
    id: u64,
    started_ms: u64,
    acks: FastMap<(usize, usize), Ack>,
}

/// The coordinator's bookkeeping: when to trigger, which acknowledgements are in, when a
/// checkpoint is complete or timed out. A plain struct, driven by the caller's clock.
///
/// ```
/// use std::time::Duration;
/// use sluice_core::checkpoint::{Ack, AckOutcome, CheckpointTracker};
/// let ack = |id, stage, worker| Ack {
///     checkpoint_id: id, stage, worker, splits: vec![], state: None, sync_us: 0,
///     freeze_us: 0, sync_cpu_us: 0, duration_us: 0, align_us: 0,
/// };
/// let mut t = CheckpointTracker::new(2, 0, Duration::from_millis(100), Duration::ZERO,
///     Duration::from_secs(10));
/// t.on_running(0, 0);
/// assert_eq!(t.due(0), None); // an instance is still restoring
/// t.on_running(1, 0);
/// assert_eq!(t.due(10), None); // every instance runs: the interval starts
/// assert_eq!(t.due(50), None);
/// assert_eq!(t.due(110), Some(1));
/// assert_eq!(t.on_ack(ack(1, 0, 0)), AckOutcome::Pending);
/// assert_eq!(t.on_ack(ack(1, 0, 0)), AckOutcome::Stale); // a duplicate
/// assert!(matches!(t.on_ack(ack(1, 1, 0)), AckOutcome::Complete(1, _)));
/// assert_eq!(t.on_ack(ack(1, 1, 0)), AckOutcome::Stale);
/// ```
pub struct CheckpointTracker {
    expected: usize,
    /// Instances that run (restored) or finished: none is triggered before all do.
    started: FastSet<(usize, usize)>,
    /// Instances that finished, and their final split states.
    finished: FastMap<(usize, usize), Vec<SplitState>>,
    interval_ms: u64,
    min_pause_ms: u64,
    timeout_ms: u64,
    pending: Option<Pending>,
    next_id: u64,
    last_start_ms: Option<u64>,
    last_end_ms: u64,
}

impl CheckpointTracker {
    /// A tracker expecting `expected` acknowledgements per checkpoint, whose ids continue
    /// after `last`.
    pub fn new(
        expected: usize,
        last: u64,
        interval: Duration,
        min_pause: Duration,
        timeout: Duration,
    ) -> Self {
        CheckpointTracker {
            expected,
            started: FastSet::default(),
            finished: FastMap::default(),
            interval_ms: interval.as_millis() as u64,
            min_pause_ms: min_pause.as_millis() as u64,
            timeout_ms: timeout.as_millis() as u64,
            pending: None,
            next_id: last + 1,
            last_start_ms: None,
            last_end_ms: 0,
        }
    }

    /// The checkpoint to trigger at `now_ms`, if one is due: every instance runs, none is
    /// pending, an interval has passed since the last start (at first, since the first call
    /// that found every instance running), and the minimum pause since the last end.
    pub fn due(&mut self, now_ms: u64) -> Option<u64> {
        if !self.all_running() {
            return None;
        }
        let start = *self.last_start_ms.get_or_insert(now_ms);
        let due = self.pending.is_none()
            && now_ms >= start + self.interval_ms
            && now_ms >= self.last_end_ms + self.min_pause_ms;
        due.then(|| self.start(now_ms))
    }

    /// Starts a checkpoint now, whatever the interval (a savepoint); `None` if one is pending
    /// or an instance is still restoring.
    pub fn start_now(&mut self, now_ms: u64) -> Option<u64> {
        (self.pending.is_none() && self.all_running()).then(|| self.start(now_ms))
    }

    /// A stage instance runs: its state is restored.
    pub fn on_running(&mut self, stage: usize, worker: usize) {
        self.started.insert((stage, worker));
    }

    /// Whether every instance runs (or finished): checkpoints may be triggered.
    pub fn all_running(&self) -> bool {
        self.started.len() >= self.expected
    }

    fn start(&mut self, now_ms: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.last_start_ms = Some(now_ms);
        let mut acks = FastMap::default();
        for (&(stage, worker), splits) in &self.finished {
            acks.insert((stage, worker), finished_ack(id, stage, worker, splits));
        }
        self.pending = Some(Pending {
            id,
            started_ms: now_ms,
            acks,
        });
        id
    }

    /// Whether every instance has finished (nothing more to checkpoint).
    pub fn all_finished(&self) -> bool {
        self.finished.len() >= self.expected
    }

    /// A stage instance finished: it counts as acknowledged from now on. May complete the
    /// pending checkpoint.
    pub fn on_finished(
        &mut self,
        stage: usize,
        worker: usize,
        splits: Vec<SplitState>,
    ) -> AckOutcome {
        self.finished.insert((stage, worker), splits.clone());
        self.started.insert((stage, worker));
        let Some(id) = self.pending.as_ref().map(|p| p.id) else {
            return AckOutcome::Stale;
        };
        let already = self
            .pending
            .as_ref()
            .is_some_and(|p| p.acks.contains_key(&(stage, worker)));
        if already {
            return AckOutcome::Pending;
        }
        self.on_ack(finished_ack(id, stage, worker, &splits))
    }

    /// The pending checkpoint, if any.
    pub fn pending(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.id)
    }

    /// Counts an acknowledgement.
    pub fn on_ack(&mut self, ack: Ack) -> AckOutcome {
        let Some(pending) = self.pending.as_mut() else {
            return AckOutcome::Stale;
        };
        let from = (ack.stage, ack.worker);
        if ack.checkpoint_id != pending.id || pending.acks.contains_key(&from) {
            return AckOutcome::Stale;
        }
        pending.acks.insert(from, ack);
        if pending.acks.len() < self.expected {
            return AckOutcome::Pending;
        }
        let done = self.pending.take().map(|p| (p.id, p.acks));
        match done {
            Some((id, acks)) => {
                let mut acks: Vec<Ack> = acks.into_values().collect();
                acks.sort_by_key(|a| (a.stage, a.worker));
                AckOutcome::Complete(id, acks)
            }
            None => AckOutcome::Stale,
        }
    }

    /// The final checkpoint of a job whose instances have all finished: it completes at once,
    /// every instance acknowledging with its final split states, so that a restore after the
    /// job's end resumes past its last record (Flink's final checkpoint). `None` if an
    /// instance is still running or a checkpoint is pending.
    pub fn final_checkpoint(&mut self, now_ms: u64) -> Option<(u64, Vec<Ack>)> {
        if !self.all_finished() || self.pending.is_some() {
            return None;
        }
        let id = self.start(now_ms);
        let pending = self.pending.take()?;
        let mut acks: Vec<Ack> = pending.acks.into_values().collect();
        acks.sort_by_key(|a| (a.stage, a.worker));
        Some((id, acks))
    }

    /// Ends the pending checkpoint (completed, or failed while writing its metadata) at
    /// `now_ms`, for the minimum pause.
    pub fn ended(&mut self, now_ms: u64) {
        self.pending = None;
        self.last_end_ms = now_ms;
    }

    /// Aborts the pending checkpoint if it is older than the timeout; returns its id.
    pub fn timed_out(&mut self, now_ms: u64) -> Option<u64> {
        let p = self.pending.as_ref()?;
        if now_ms < p.started_ms + self.timeout_ms {
            return None;
        }
        let id = p.id;
        self.ended(now_ms);
        Some(id)
    }
}

fn finished_ack(id: u64, stage: usize, worker: usize, splits: &[SplitState]) -> Ack {
    Ack {
        checkpoint_id: id,
        stage,
        worker,
        splits: splits.to_vec(),
        state: None,
        sync_us: 0,
        freeze_us: 0,
        sync_cpu_us: 0,
        duration_us: 0,
        align_us: 0,
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&hex)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let hex = String::deserialize(d)?;
        if hex.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd-length hex"));
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&hex[i..i + 2], 16)
                    .map_err(|_| serde::de::Error::custom("bad hex"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: u64, stage: usize, worker: usize) -> Ack {
        Ack {
            checkpoint_id: id,
            stage,
            worker,
            splits: vec![],
            state: None,
            sync_us: 0,
            freeze_us: 0,
            sync_cpu_us: 0,
            duration_us: 0,
            align_us: 0,
        }
    }

    /// Marks `n` instances of stage 0 running.
    fn running(t: &mut CheckpointTracker, n: usize) {
        for w in 0..n {
            t.on_running(0, w);
        }
    }

    #[test]
    fn every_message_wakes_the_coordinator_while_a_waker_is_set() {
        let (tx, rx) = mpsc::channel();
        let control = CheckpointControl::new(tx, 0);
        let wakes = Arc::new(AtomicU64::new(0));
        let w = wakes.clone();
        control.set_waker(Some(Box::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        })));
        control.send(ToCoordinator::Running {
            stage: 0,
            worker: 0,
        });
        control.send(ToCoordinator::Ack(ack(1, 0, 0)));
        assert_eq!(wakes.load(Ordering::Relaxed), 2);
        assert_eq!(rx.try_iter().count(), 2, "woken after the message is in");
        control.set_waker(None);
        control.send(ToCoordinator::Ack(ack(2, 0, 0)));
        assert_eq!(wakes.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn nothing_is_triggered_while_an_instance_restores() {
        let mut t = CheckpointTracker::new(
            3,
            7,
            Duration::from_millis(10),
            Duration::ZERO,
            Duration::from_secs(1),
        );
        t.on_running(0, 0);
        t.on_running(0, 0);
        t.on_running(1, 0);
        assert_eq!(t.due(0), None);
        assert_eq!(t.due(500), None, "one instance still restores");
        assert_eq!(t.start_now(500), None, "nor a savepoint");
        // A finished instance counts as running; the interval starts once all are.
        assert_eq!(t.on_finished(1, 1, vec![]), AckOutcome::Stale);
        assert_eq!(t.due(600), None);
        assert_eq!(t.due(609), None);
        assert_eq!(t.due(610), Some(8));
    }

    #[test]
    fn finished_instances_count_as_acknowledged() {
        let mut t = CheckpointTracker::new(
            2,
            0,
            Duration::from_millis(10),
            Duration::ZERO,
            Duration::from_secs(1),
        );
        running(&mut t, 2);
        t.due(0);
        assert_eq!(t.due(10), Some(1));
        assert_eq!(t.on_ack(ack(1, 0, 0)), AckOutcome::Pending);
        assert!(matches!(
            t.on_finished(0, 1, vec![]),
            AckOutcome::Complete(1, _)
        ));
        t.ended(10);
        assert_eq!(t.due(20), Some(2));
        assert!(matches!(t.on_ack(ack(2, 0, 0)), AckOutcome::Complete(2, _)));
    }

    #[test]
    fn a_timed_out_checkpoint_is_aborted_and_the_next_proceeds() {
        let mut t = CheckpointTracker::new(
            1,
            4,
            Duration::from_millis(10),
            Duration::from_millis(5),
            Duration::from_millis(100),
        );
        running(&mut t, 1);
        assert_eq!(t.due(0), None);
        assert_eq!(t.due(10), Some(5));
        assert_eq!(t.timed_out(50), None);
        assert_eq!(t.timed_out(110), Some(5));
        assert_eq!(
            t.on_ack(ack(5, 0, 0)),
            AckOutcome::Stale,
            "late ack of an aborted one"
        );
        assert_eq!(t.due(112), None, "minimum pause");
        assert_eq!(t.due(115), Some(6));
        assert!(matches!(t.on_ack(ack(6, 0, 0)), AckOutcome::Complete(6, _)));
    }
}
