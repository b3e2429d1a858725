//! A job at the coordinator, and its runs.
//!
//! A *run* is one deployment of the job on some worker slots: it is prepared on every node
//! of its placement (`Deploy` → `Prepared`), started (`Start`), checkpointed (the
//! coordinator-side [`checkpoint::Coordinator`] of `sluice-core`, fed with the nodes'
//! acknowledgements; its triggers and completions are forwarded to the nodes), and ends in
//! one of three ways:
//!
//! - every part ended well → `Commit` everywhere → the job finished (a node lost before it
//!   committed: restarted like a failure, from the final checkpoint, whose settlement
//!   publishes what that node had not);
//! - a part failed, or a node was lost → `Cancel` to the other parts, wait until each has
//!   ended (or a deadline passed) → restart from the newest complete checkpoint on the
//!   workers then available, if the failure is restartable, the job takes checkpoints and
//!   restarts are left; else the job failed (and its uncommitted output is removed);
//! - the user cancelled it.
//!
//! Run ids are never reused, and checkpoint ids keep increasing across runs (a new run's ids
//! continue after the highest ever triggered), so a late message of an old run can never be
//! taken for one of the new run. Both hold across coordinator restarts: the job's record in
//! the job store ([`super::store`]) is written before a run is deployed, before checkpoint
//! ids beyond its reservation are triggered, before a completion is announced, and when the
//! job ends; a restarted coordinator resumes an unfinished job from there ([`Job::recover`]).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_core::checkpoint::coordinator::{self as checkpoint, JobInfo, Tick};
use sluice_core::checkpoint::metadata::{self, CheckpointMetadata};
use sluice_core::checkpoint::{Ack, SplitState, ToCoordinator};
use sluice_core::clock::Clock;
use sluice_core::graph::{JobGraph, Prepare};
use sluice_core::metrics::JobMetrics;
use sluice_core::runtime::{RestoreFrom, RuntimeConfig, default_key_groups};
use sluice_net::Connection;

use super::Coord;
use super::store::JobRecord;
use crate::protocol::{self, Deploy, JobRow, Msg, RunOutcome, WireSplit};

/// How long the parts of a failed run have to confirm they stopped.
const CANCEL_DEADLINE: Duration = Duration::from_secs(15);
/// Checkpoint ids reserved in the job store at a time.
const RESERVE_CHECKPOINTS: u64 = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for worker slots, or for the restart delay.
    Waiting,
    /// Deployed; waiting for every part to be prepared.
    Preparing,
    /// Started.
    Running,
    /// Every part ended well; waiting for every part's commit.
    Committing,
    /// A run is being stopped.
    Cancelling,
    Finished,
    Failed(String),
    Cancelled,
}

/// A node's part of a run.
/// Why the current run is being cancelled.
struct Failure {
    cause: String,
    /// Whether a restart may follow.
    restartable: bool,
    /// Whether the cause is only a consequence (a part cancelled because a peer went away):
    /// a primary cause learnt while the run is being cancelled (the loss of the node that
    /// went away) replaces it.
    secondary: bool,
}

struct RunPart {
    node: u64,
    count: u32,
    addrs: Option<Vec<String>>,
    ended: Option<RunOutcome>,
    committed: bool,
    lost: bool,
}

/// A deployment of the job.
struct Run {
    id: u64,
    parts: Vec<RunPart>,
    workers: u32,
    /// The coordinator's own build of the job: stage names, and sinks whose checkpoint
    /// commits are no-ops here (the nodes own the files).
    graph: JobGraph,
    checkpoints: checkpoint::Coordinator,
    sent_trigger: u64,
    sent_complete: u64,
    started_ms: u64,
    cancel_deadline_ms: u64,
}

/// A submitted job.
pub(crate) struct Job {
    id: String,
    name: String,
    args: Vec<String>,
    workers_wanted: Option<u32>,
    config: RuntimeConfig,
    clients: Vec<Connection>,
    state: State,
    run: Option<Run>,
    restarts: u32,
    /// The highest checkpoint id ever triggered for the job.
    last_triggered: u64,
    /// Its newest complete checkpoint's directory, where a restart resumes.
    last_complete: Option<(u64, PathBuf)>,
    /// Where the first run resumes (the job's `--restore`).
    initial_restore: Option<RestoreFrom>,
    restart_at_ms: u64,
    /// Why the current run is being cancelled.
    failure: Option<Failure>,
    cancel_requested: bool,
    savepoint_waiters: Vec<Connection>,
    workers_last: u32,
    waiting_said: bool,
    /// The runs it was deployed as.
    runs: Vec<u64>,
    /// The newest checkpoint announced complete to the nodes.
    announced: u64,
    /// Checkpoint ids reserved in the job store.
    reserved: u64,
    /// How it ended, for a client that watches it afterwards.
    end_message: Option<(bool, String)>,
    /// Recovered after a coordinator restart: until this time, wait for as many free slots
    /// as its last run had.
    recovering_until_ms: Option<u64>,
    /// Stale parts (node, run) that ended, to drop once a later run settled the output.
    fenced: Vec<(u64, u64)>,
}

impl Job {
    pub(crate) fn new(
        id: String,
        name: String,
        args: Vec<String>,
        workers_wanted: Option<u32>,
        config: RuntimeConfig,
        client: Connection,
    ) -> Job {
        Job::fresh(id, name, args, workers_wanted, config, vec![client])
    }

    /// A job that has not run yet, watched by `clients`.
    fn fresh(
        id: String,
        name: String,
        args: Vec<String>,
        workers_wanted: Option<u32>,
        config: RuntimeConfig,
        clients: Vec<Connection>,
    ) -> Job {
        let initial_restore = config.restore.clone();
        Job {
            id,
            name,
            args,
            workers_wanted,
            config,
            clients,
            state: State::Waiting,
            run: None,
            restarts: 0,
            last_triggered: 0,
            last_complete: None,
            initial_restore,
            restart_at_ms: 0,
            failure: None,
            cancel_requested: false,
            savepoint_waiters: Vec::new(),
            workers_last: 0,
            waiting_said: false,
            runs: Vec::new(),
            announced: 0,
            reserved: 0,
            end_message: None,
            recovering_until_ms: None,
            fenced: Vec::new(),
        }
    }

    /// A job of the job store, reloaded by a restarted coordinator: over, as it ended; or
    /// waiting to restart from its newest complete checkpoint.
    pub(crate) fn recover(c: &mut Coord, r: JobRecord) -> Job {
        let (config, build_error) = match c.catalog.build(&r.name, &r.args) {
            Ok(built) => (built.config, None),
            Err(e) => (RuntimeConfig::default(), Some(e)),
        };
        let mut job = Job::fresh(
            r.id.clone(),
            r.name.clone(),
            r.args.clone(),
            r.workers_wanted,
            config,
            Vec::new(),
        );
        job.restarts = r.restarts;
        job.last_triggered = r.reserved.max(r.checkpoint);
        job.workers_last = r.workers_last;
        job.runs = r.runs.clone();
        job.announced = r.checkpoint;
        job.reserved = r.reserved;
        if let Some((state, message)) = r.end {
            job.state = match state.as_str() {
                "finished" => State::Finished,
                "cancelled" => State::Cancelled,
                _ => State::Failed(message.clone()),
            };
            job.end_message = Some((job.state == State::Finished, message));
            return job;
        }
        let resumable = match (build_error, &job.config.checkpoints) {
            (Some(e), _) => Err(format!("cannot build the job again: {e}")),
            (None, None) => Err("the job takes no checkpoints to resume from".to_owned()),
            (None, Some(cp)) => newest_complete(&cp.dir, r.checkpoint),
        };
        match resumable {
            Ok(found) => {
                if let Some((id, _)) = &found {
                    job.last_triggered = job.last_triggered.max(*id);
                }
                job.last_complete = found;
                let grace = c.opts.cluster.heartbeat_timeout.as_millis() as u64;
                job.recovering_until_ms = Some(c.clock.now_ms() + grace);
                let from = match &job.last_complete {
                    Some((id, _)) => format!("checkpoint {id}"),
                    None => "its start".to_owned(),
                };
                tracing::warn!(job = %job.id, "recovered after a coordinator restart: \
                    resuming from {from}");
            }
            Err(why) => {
                let message = format!("{} lost at a coordinator restart: {why}", job.id);
                job.end(c, State::Failed(message.clone()), false, message);
            }
        }
        job
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The job as the job store keeps it.
    pub(crate) fn record(&self) -> JobRecord {
        let end = match &self.state {
            State::Finished => Some("finished"),
            State::Cancelled => Some("cancelled"),
            State::Failed(_) => Some("failed"),
            _ => None,
        };
        JobRecord {
            id: self.id.clone(),
            name: self.name.clone(),
            args: self.args.clone(),
            workers_wanted: self.workers_wanted,
            runs: self.runs.clone(),
            restarts: self.restarts,
            workers_last: self.workers_last,
            checkpoint: self.announced,
            reserved: self.reserved,
            end: end.map(|e| {
                let message = self.end_message.as_ref().map_or("", |(_, m)| m.as_str());
                (e.to_owned(), message.to_owned())
            }),
        }
    }

    /// A client asks for the job's progress and end on `client` (it reconnected).
    pub(crate) fn watch(&mut self, client: Connection) {
        let _ = protocol::send(
            &client,
            &Msg::Submitted {
                job_id: self.id.clone(),
            },
        );
        if let Some((ok, message)) = &self.end_message {
            let end = Msg::JobEnded {
                job_id: self.id.clone(),
                ok: *ok,
                message: message.clone(),
            };
            let _ = protocol::send(&client, &end);
            client.close();
            return;
        }
        let _ = protocol::send(
            &client,
            &Msg::Status {
                line: format!("watching {} ({})", self.id, self.row().state),
            },
        );
        self.clients.push(client);
    }

    /// A part of the job's old run `run` on node `node` ended (a stale part): once a later run
    /// has settled the output (or the job finished), the node drops it and deletes what it
    /// left uncommitted — a zombie's files; until then it waits.
    pub(crate) fn fence(&mut self, c: &mut Coord, node: u64, run: u64) {
        // A run recorded after `run` has settled the output (it is recorded after settling).
        let settled_since = self.runs.iter().any(|&r| r > run);
        let abort = match &self.state {
            State::Finished => Some(true),
            State::Failed(_) | State::Cancelled => Some(false),
            _ if settled_since => Some(true),
            _ => None,
        };
        match abort {
            Some(abort) => {
                if let Some(n) = c.nodes.get(&node) {
                    let _ = protocol::send(&n.conn, &Msg::Cancel { run, abort });
                }
            }
            None => self.fenced.push((node, run)),
        }
    }

    /// Answers the stale parts waiting in [`Job::fence`].
    fn release_fenced(&mut self, c: &mut Coord, abort: bool) {
        for (node, run) in self.fenced.drain(..) {
            if let Some(n) = c.nodes.get(&node) {
                let _ = protocol::send(&n.conn, &Msg::Cancel { run, abort });
            }
        }
    }

    pub(crate) fn run_id(&self) -> Option<u64> {
        self.run.as_ref().map(|r| r.id)
    }

    fn is_over(&self) -> bool {
        matches!(
            self.state,
            State::Finished | State::Failed(_) | State::Cancelled
        )
    }

    fn status(&self, line: &str) {
        tracing::info!(job = %self.id, "{line}");
        for c in &self.clients {
            let _ = protocol::send(
                c,
                &Msg::Status {
                    line: line.to_owned(),
                },
            );
        }
    }

    pub(crate) fn row(&self) -> JobRow {
        let state = match &self.state {
            State::Waiting if self.restarts > 0 => "restarting".to_owned(),
            State::Waiting => "waiting for workers".to_owned(),
            State::Preparing => "deploying".to_owned(),
            State::Running => "running".to_owned(),
            State::Committing => "committing".to_owned(),
            State::Cancelling => "cancelling".to_owned(),
            State::Finished => "finished".to_owned(),
            State::Failed(why) => format!("failed: {why}"),
            State::Cancelled => "cancelled".to_owned(),
        };
        JobRow {
            id: self.id.clone(),
            name: self.name.clone(),
            state,
            workers: self.workers_last,
            restarts: self.restarts,
            last_checkpoint: self.last_complete.as_ref().map_or(0, |(id, _)| *id),
        }
    }

    /// Ends the job: tells its clients, frees its slots.
    fn end(&mut self, c: &mut Coord, state: State, ok: bool, message: String) {
        self.release(c);
        tracing::info!(job = %self.id, ok, "job ended: {message}");
        self.release_fenced(c, state == State::Finished);
        self.end_message = Some((ok, message.clone()));
        self.state = state.clone();
        if let Err(e) = c.persist(self) {
            tracing::warn!(job = %self.id, "{e}");
        }
        for client in self.clients.drain(..) {
            let end = Msg::JobEnded {
                job_id: self.id.clone(),
                ok,
                message: message.clone(),
            };
            let _ = protocol::send(&client, &end);
            client.close();
        }
        for w in self.savepoint_waiters.drain(..) {
            let _ = protocol::send(
                &w,
                &Msg::Failed {
                    message: format!("{} ended before its savepoint completed", self.id),
                },
            );
            w.close();
        }
        self.state = state;
    }

    /// Gives the run's slots back.
    fn release(&mut self, c: &mut Coord) {
        if let Some(run) = self.run.take() {
            for p in &run.parts {
                if let Some(n) = c.nodes.get_mut(&p.node) {
                    n.used = n.used.saturating_sub(p.count);
                }
            }
        }
    }

    pub(crate) fn tick(&mut self, c: &mut Coord) {
        match self.state {
            State::Waiting => self.try_deploy(c),
            State::Preparing => self.check_prepared(c),
            State::Running => self.drive_checkpoints(c),
            State::Committing => self.check_committed(c),
            State::Cancelling => self.check_cancelled(c),
            State::Finished | State::Failed(_) | State::Cancelled => {}
        }
    }

    fn try_deploy(&mut self, c: &mut Coord) {
        if c.clock.now_ms() < self.restart_at_ms {
            return;
        }
        let free = c.free_slots();
        if free.is_empty() {
            if !self.waiting_said {
                self.waiting_said = true;
                self.status("waiting for worker nodes with free slots");
            }
            return;
        }
        if let Some(until) = self.recovering_until_ms {
            let total: u32 = free.iter().map(|(_, n)| n).sum();
            let wanted = self.workers_wanted.unwrap_or(self.workers_last);
            if total < wanted && c.clock.now_ms() < until {
                return;
            }
            self.recovering_until_ms = None;
        }
        self.waiting_said = false;
        let placement = place(&free, self.workers_wanted);
        if let Err(message) = self.deploy(c, &placement) {
            self.release(c);
            self.end(c, State::Failed(message.clone()), false, message);
        }
    }

    /// Where a run resumes: after a failure, the newest checkpoint the job completed; else
    /// the job's `--restore`.
    fn restore_point(&self) -> Result<Option<metadata::Complete>, String> {
        if let Some((_, dir)) = &self.last_complete {
            let meta = CheckpointMetadata::read(dir).map_err(|e| e.to_string())?;
            return Ok(Some((dir.clone(), meta)));
        }
        let root = match &self.initial_restore {
            None => return Ok(None),
            Some(RestoreFrom::Latest) => match &self.config.checkpoints {
                Some(cp) => cp.dir.clone(),
                None => return Err("--restore latest needs --checkpoint-dir".into()),
            },
            Some(RestoreFrom::Path(p)) => p.clone(),
        };
        let (latest, skipped) = metadata::latest(&root).map_err(|e| e.to_string())?;
        for s in skipped {
            tracing::warn!("skipping an incomplete checkpoint: {s}");
        }
        match (latest, &self.initial_restore) {
            (Some(found), _) => Ok(Some(found)),
            (None, Some(RestoreFrom::Latest)) => Ok(None),
            (None, _) => Err(format!(
                "no complete checkpoint or savepoint at {}",
                root.display()
            )),
        }
    }

    /// Builds the job here, settles its outputs, and deploys a run on `placement`.
    fn deploy(&mut self, c: &mut Coord, placement: &[(u64, u32)]) -> Result<(), String> {
        let workers: u32 = placement.iter().map(|(_, n)| n).sum();
        let built = c.catalog.build(&self.name, &self.args)?;
        let graph = built.graph;
        let restore = self.restore_point()?;
        if let Some((dir, meta)) = &restore {
            sluice_core::runtime::check_same_job(dir, meta, &graph).map_err(|e| e.to_string())?;
        }
        let restored_id = restore.as_ref().map_or(0, |(_, m)| m.checkpoint_id);
        let key_groups_max = match (&restore, self.config.key_groups_max) {
            (Some((_, m)), _) => m.key_groups_max,
            (None, Some(k)) => k,
            (None, None) => default_key_groups(workers as usize),
        };
        // Settle the outputs once, here, before any node starts: commit what the restored
        // checkpoint covers, remove what came after it.
        let metrics = JobMetrics::new(workers as usize);
        for (i, stage) in graph.stages.iter().enumerate() {
            stage
                .prepare(&Prepare {
                    workers: workers as usize,
                    metrics: &metrics,
                    restored_id,
                    restored_run: restore.as_ref().map_or(0, |(_, m)| m.run),
                    restore: restore.as_ref().and_then(|(_, m)| m.stages.get(i)),
                    settle_output: true,
                })
                .map_err(|e| e.to_string())?;
        }
        // Durable before any node hears of the run (and after the settlement: a run in the
        // record has settled the output).
        let run_id = c.take_run_id(&self.id)?;
        self.runs.push(run_id);
        self.workers_last = workers;
        self.announced = self.announced.max(restored_id);
        c.persist(self)?;
        // The output is settled for this run: stale parts of earlier ones may go.
        self.release_fenced(c, true);
        let info = JobInfo {
            job: self.name.clone(),
            workers: workers as usize,
            key_groups_max,
            stage_names: graph.stages.iter().map(|s| s.name()).collect(),
            run: run_id,
        };
        let last = self.last_triggered.max(restored_id);
        let checkpoints = checkpoint::Coordinator::new(self.config.checkpoints.clone(), info, last);
        let mut parts = Vec::new();
        let mut first = 0u32;
        for &(node, count) in placement {
            let Some(n) = c.nodes.get_mut(&node) else {
                continue;
            };
            n.used += count;
            let deploy = Deploy {
                run: run_id,
                job_id: self.id.clone(),
                job: self.name.clone(),
                args: self.args.clone(),
                workers,
                first_worker: first,
                local_workers: count,
                key_groups_max,
                restore: restore.as_ref().map(|(d, _)| d.display().to_string()),
                checkpoint_dir: self
                    .config
                    .checkpoints
                    .as_ref()
                    .map(|cp| cp.dir.display().to_string()),
            };
            let _ = protocol::send(&n.conn, &Msg::Deploy(deploy));
            parts.push(RunPart {
                node,
                count,
                addrs: None,
                ended: None,
                committed: false,
                lost: false,
            });
            first += count;
        }
        let nodes = parts.len();
        self.run = Some(Run {
            id: run_id,
            parts,
            workers,
            graph,
            checkpoints,
            sent_trigger: last,
            sent_complete: restored_id,
            started_ms: c.clock.now_ms(),
            cancel_deadline_ms: 0,
        });
        self.workers_last = workers;
        self.state = State::Preparing;
        let from = match restored_id {
            0 => String::new(),
            id => format!(" from checkpoint {id}"),
        };
        self.status(&format!(
            "run {run_id}: deploying on {workers} workers of {nodes} nodes{from}"
        ));
        Ok(())
    }

    fn check_prepared(&mut self, c: &mut Coord) {
        let Some(run) = &mut self.run else { return };
        if run.parts.iter().any(|p| p.addrs.is_none()) {
            return;
        }
        let mut endpoints = Vec::with_capacity(run.workers as usize);
        for p in &run.parts {
            endpoints.extend(p.addrs.iter().flatten().cloned());
        }
        if endpoints.len() != run.workers as usize {
            self.fail_run(
                c,
                "a node reported the wrong number of workers".into(),
                false,
            );
            return;
        }
        for p in &run.parts {
            if let Some(n) = c.nodes.get(&p.node) {
                let start = Msg::Start {
                    run: run.id,
                    endpoints: endpoints.clone(),
                };
                let _ = protocol::send(&n.conn, &start);
            }
        }
        run.started_ms = c.clock.now_ms();
        self.state = State::Running;
    }

    /// Ticks the checkpoint coordinator and forwards its triggers and completions; ends the
    /// run once every part has ended.
    fn drive_checkpoints(&mut self, c: &mut Coord) {
        let tick = {
            let Some(run) = &mut self.run else { return };
            run.checkpoints.tick(&run.graph.stages)
        };
        match tick {
            Ok(Tick::Continue | Tick::Stopped(_)) => {}
            Ok(Tick::Savepoint(dir)) => self.answer_savepoint(Ok(dir)),
            Ok(Tick::SavepointFailed(why)) => self.answer_savepoint(Err(why)),
            Err(e) => {
                self.fail_run(c, e.to_string(), e.is_restartable());
                return;
            }
        }
        self.forward_checkpoints(c);
        let Some(run) = &self.run else { return };
        if run.parts.iter().any(|p| p.ended.is_none()) {
            return;
        }
        if let Some(cause) = root_cause(&run.parts) {
            self.fail_run(c, cause.message.clone(), cause.restartable);
            return;
        }
        // Every instance finished: the final checkpoint (sources all read) completes before
        // the output is committed, so that a restore after this point writes nothing twice;
        // its `Complete` reaches the nodes before `Commit`.
        let finished = match &mut self.run {
            Some(run) => run.checkpoints.finish(&run.graph.stages),
            None => return,
        };
        if let Err(e) = finished {
            self.fail_run(c, e.to_string(), false);
            return;
        }
        self.forward_checkpoints(c);
        let Some(run) = &self.run else { return };
        for p in &run.parts {
            if let Some(n) = c.nodes.get(&p.node) {
                let _ = protocol::send(&n.conn, &Msg::Commit { run: run.id });
            }
        }
        self.state = State::Committing;
    }

    fn forward_checkpoints(&mut self, c: &mut Coord) {
        let Some(run) = &self.run else { return };
        let trigger = run.checkpoints.control().trigger.load(Ordering::Acquire);
        let new_trigger = trigger > run.sent_trigger;
        let completed = run.checkpoints.last_completed();
        let new_complete = completed > run.sent_complete;
        // Durable before the nodes hear of them: checkpoint ids beyond the reservation, and a
        // completion (a restarted coordinator resumes from it or a newer one, never from an
        // older one whose later output a node may have published).
        let reserve = new_trigger && trigger > self.reserved;
        if c.store.is_some() && (reserve || new_complete) {
            if reserve {
                self.reserved = trigger + RESERVE_CHECKPOINTS;
            }
            if new_complete {
                self.announced = completed;
                self.reserved = self.reserved.max(completed);
            }
            if let Err(e) = c.persist(self) {
                self.fail_run(c, e, false);
                return;
            }
        }
        let Some(run) = &mut self.run else { return };
        if new_trigger {
            let control = run.checkpoints.control();
            run.sent_trigger = trigger;
            self.last_triggered = self.last_triggered.max(trigger);
            let msg = Msg::Trigger {
                run: run.id,
                checkpoint_id: trigger,
                timestamp_ms: control.trigger_ms.load(Ordering::Relaxed),
                savepoint_dir: control
                    .savepoint_dir(trigger)
                    .map(|d| d.display().to_string()),
            };
            for p in &run.parts {
                if let Some(n) = c.nodes.get(&p.node) {
                    let _ = protocol::send(&n.conn, &msg);
                }
            }
        }
        if new_complete {
            run.sent_complete = completed;
            // A final checkpoint takes an id without a trigger.
            self.last_triggered = self.last_triggered.max(completed);
            if let Some(cp) = &self.config.checkpoints {
                let dir = metadata::checkpoint_dir(&cp.dir, completed);
                if dir.join(metadata::METADATA_FILE).exists() {
                    self.last_complete = Some((completed, dir));
                }
            }
            let msg = Msg::Complete {
                run: run.id,
                checkpoint_id: completed,
            };
            for p in &run.parts {
                if let Some(n) = c.nodes.get(&p.node) {
                    let _ = protocol::send(&n.conn, &msg);
                }
            }
        }
    }

    fn check_committed(&mut self, c: &mut Coord) {
        let Some(run) = &self.run else { return };
        if run.parts.iter().any(|p| p.lost && !p.committed) {
            // Restartable: a run restored from the final checkpoint (its sources all read)
            // settles the output — it commits what the lost node had not — and ends at once.
            let message = "a worker node was lost while the output was being committed".into();
            self.fail_run(c, message, true);
            return;
        }
        if !run.parts.iter().all(|p| p.committed) {
            return;
        }
        let records: u64 = run
            .parts
            .iter()
            .filter_map(|p| p.ended.as_ref())
            .map(|o| o.records_in)
            .sum();
        let secs = c.clock.now_ms().saturating_sub(run.started_ms) as f64 / 1000.0;
        let message = format!(
            "{} '{}' finished: {records} records in {secs:.2}s on {} workers of {} nodes, \
             {} restarts",
            self.id,
            self.name,
            run.workers,
            run.parts.len(),
            self.restarts
        );
        self.end(c, State::Finished, true, message);
    }

    /// Stops the current run everywhere: `cause` is why, `restartable` whether a restart may
    /// get past it.
    fn fail_run(&mut self, c: &mut Coord, cause: String, restartable: bool) {
        self.fail_run_with(c, cause, restartable, false);
    }

    /// [`fail_run`](Self::fail_run) with a cause that is `secondary` (a consequence of
    /// another failure, which may still be reported).
    fn fail_run_with(&mut self, c: &mut Coord, cause: String, restartable: bool, secondary: bool) {
        let Some(run) = &mut self.run else { return };
        tracing::warn!(job = %self.id, run = run.id, "run failed: {cause}");
        let abort = self.config.checkpoints.is_none();
        for p in run.parts.iter().filter(|p| p.ended.is_none() && !p.lost) {
            if let Some(n) = c.nodes.get(&p.node) {
                let _ = protocol::send(&n.conn, &Msg::Cancel { run: run.id, abort });
            }
        }
        run.cancel_deadline_ms = c.clock.now_ms() + CANCEL_DEADLINE.as_millis() as u64;
        self.failure.get_or_insert(Failure {
            cause,
            restartable,
            secondary,
        });
        self.state = State::Cancelling;
    }

    fn check_cancelled(&mut self, c: &mut Coord) {
        let Some(run) = &self.run else { return };
        let now = c.clock.now_ms();
        let waiting = run.parts.iter().any(|p| p.ended.is_none() && !p.lost);
        if waiting && now < run.cancel_deadline_ms {
            return;
        }
        if waiting {
            tracing::warn!(job = %self.id, "parts of a failed run did not confirm they stopped");
        }
        let Failure {
            cause, restartable, ..
        } = self.failure.take().unwrap_or_else(|| Failure {
            cause: "the run failed".into(),
            restartable: false,
            secondary: false,
        });
        self.release(c);
        if self.cancel_requested {
            self.end(c, State::Cancelled, false, format!("{} cancelled", self.id));
            return;
        }
        let can_restart = restartable
            && self.config.checkpoints.is_some()
            && self.restarts < self.config.restart_attempts;
        if !can_restart {
            self.end(c, State::Failed(cause.clone()), false, cause);
            return;
        }
        self.restarts += 1;
        self.restart_at_ms = now + self.config.restart_delay.as_millis() as u64;
        self.state = State::Waiting;
        let from = match &self.last_complete {
            Some((id, _)) => format!("checkpoint {id}"),
            None => "the start".to_owned(),
        };
        self.status(&format!(
            "restarting from {from} (restart {} of {}): {cause}",
            self.restarts, self.config.restart_attempts
        ));
    }

    pub(crate) fn node_lost(&mut self, c: &mut Coord, node: u64, what: &str) {
        let Some(run) = &mut self.run else { return };
        let mut hit = false;
        for p in run.parts.iter_mut().filter(|p| p.node == node) {
            p.lost = true;
            hit = true;
        }
        if !hit {
            return;
        }
        match self.state {
            State::Preparing | State::Running => self.fail_run(c, what.to_owned(), true),
            // A surviving part reported first that it was cancelled (its peer went away):
            // the loss is the cause.
            State::Cancelling => self.upgrade_failure(what.to_owned(), true),
            _ => {}
        }
    }

    /// Records a primary cause of the run's failure in place of a secondary one.
    fn upgrade_failure(&mut self, cause: String, restartable: bool) {
        if self.failure.as_ref().is_some_and(|f| f.secondary) {
            self.failure = Some(Failure {
                cause,
                restartable,
                secondary: false,
            });
        }
    }

    /// A message of the job's current run from node `node`; given back when the node has
    /// no part in the run (a node that joined again after it was lost: a stale message).
    pub(crate) fn node_message(&mut self, c: &mut Coord, node: u64, msg: Msg) -> Option<Msg> {
        let Some(run) = &mut self.run else {
            return Some(msg);
        };
        let Some(part) = run.parts.iter_mut().find(|p| p.node == node) else {
            return Some(msg);
        };
        match msg {
            Msg::Prepared { addrs, .. } if addrs.len() == part.count as usize => {
                part.addrs = Some(addrs);
            }
            Msg::Prepared { .. } => {
                part.ended = Some(RunOutcome {
                    ok: false,
                    message: "a node prepared the wrong number of workers".into(),
                    secondary: false,
                    restartable: false,
                    records_in: 0,
                    bytes_in: 0,
                    elapsed_ms: 0,
                });
                if self.state == State::Preparing {
                    self.fail_run(
                        c,
                        "a node prepared the wrong number of workers".into(),
                        false,
                    );
                }
            }
            Msg::Ack {
                checkpoint_id,
                stage,
                worker,
                splits,
                state,
                sync_us,
                freeze_us,
                sync_cpu_us,
                duration_us,
                align_us,
                ..
            } => {
                let ack = Ack {
                    checkpoint_id,
                    stage: stage as usize,
                    worker: worker as usize,
                    splits: from_wire(splits),
                    state,
                    sync_us,
                    freeze_us,
                    sync_cpu_us,
                    duration_us,
                    align_us,
                };
                run.checkpoints.control().send(ToCoordinator::Ack(ack));
            }
            Msg::Running { stage, worker, .. } => {
                run.checkpoints.control().send(ToCoordinator::Running {
                    stage: stage as usize,
                    worker: worker as usize,
                });
            }
            Msg::Declined {
                checkpoint_id,
                stage,
                worker,
                reason,
                ..
            } => {
                run.checkpoints.control().send(ToCoordinator::Declined {
                    checkpoint_id,
                    stage: stage as usize,
                    worker: worker as usize,
                    reason,
                });
            }
            Msg::Finished {
                stage,
                worker,
                splits,
                ..
            } => {
                run.checkpoints.control().send(ToCoordinator::Finished {
                    stage: stage as usize,
                    worker: worker as usize,
                    splits: from_wire(splits),
                });
            }
            Msg::RunEnded { outcome, .. } => {
                let failed = !outcome.ok;
                let (message, restartable, secondary) = (
                    outcome.message.clone(),
                    outcome.restartable,
                    outcome.secondary,
                );
                part.ended = Some(outcome);
                if failed {
                    let (message, restartable, secondary) = root_cause(&run.parts)
                        .map_or((message, restartable, secondary), |o| {
                            (o.message.clone(), o.restartable, o.secondary)
                        });
                    match self.state {
                        State::Preparing | State::Running => {
                            self.fail_run_with(c, message, restartable, secondary);
                        }
                        State::Cancelling if !secondary => {
                            self.upgrade_failure(message, restartable);
                        }
                        _ => {}
                    }
                }
            }
            Msg::Committed { error, .. } => match error {
                None => part.committed = true,
                Some(e) => {
                    let message = format!("committing the output failed: {e}");
                    self.end(c, State::Failed(message.clone()), false, message);
                }
            },
            _ => {}
        }
        None
    }

    /// The user asked to cancel.
    pub(crate) fn cancel(&mut self, c: &mut Coord) -> Msg {
        if self.is_over() {
            return Msg::Failed {
                message: format!("{} is not running ({})", self.id, self.row().state),
            };
        }
        self.cancel_requested = true;
        match self.state {
            State::Waiting => {
                self.end(c, State::Cancelled, false, format!("{} cancelled", self.id))
            }
            State::Cancelling | State::Committing => {}
            _ => self.fail_run(c, "cancelled by the user".into(), false),
        }
        Msg::Done {
            message: format!("cancelling {}", self.id),
        }
    }

    /// The user asked for a savepoint into `dir` (or `default_root`): `Some(answer)` at
    /// once when it cannot be taken, `None` when the answer comes once it completes.
    pub(crate) fn savepoint(
        &mut self,
        client: Connection,
        dir: Option<PathBuf>,
        default_root: Option<PathBuf>,
    ) -> Option<Msg> {
        let fail = |message: String| Some(Msg::Failed { message });
        if self.state != State::Running {
            return fail(format!("{} is not running ({})", self.id, self.row().state));
        }
        let job_root = self
            .config
            .checkpoints
            .as_ref()
            .map(|cp| cp.dir.join("savepoints"));
        let Some(root) = dir.or(default_root).or(job_root) else {
            return fail(
                "give a directory: the job has no checkpoint directory and the coordinator \
                 no --checkpoint-dir"
                    .into(),
            );
        };
        let run = self.run.as_mut()?;
        if !run.checkpoints.request_savepoint_and_continue(&root) {
            return fail(format!("a savepoint of {} is already under way", self.id));
        }
        self.savepoint_waiters.push(client);
        None
    }

    fn answer_savepoint(&mut self, result: Result<PathBuf, String>) {
        let msg = match result {
            Ok(dir) => Msg::Done {
                message: format!("savepoint: {}", dir.display()),
            },
            Err(message) => Msg::Failed { message },
        };
        for w in self.savepoint_waiters.drain(..) {
            let _ = protocol::send(&w, &msg);
            w.close();
        }
    }
}

/// Where a recovered job resumes: the newest complete checkpoint under `root` — at least
/// `announced`, the newest one the nodes may have published output of (0: none yet, the job
/// starts over).
fn newest_complete(
    root: &std::path::Path,
    announced: u64,
) -> Result<Option<(u64, PathBuf)>, String> {
    if announced == 0 {
        return Ok(None);
    }
    let (latest, skipped) = metadata::latest(root).map_err(|e| e.to_string())?;
    for s in skipped {
        tracing::warn!("skipping an incomplete checkpoint: {s}");
    }
    match latest {
        Some((dir, meta)) if meta.checkpoint_id >= announced => Ok(Some((meta.checkpoint_id, dir))),
        _ => Err(format!(
            "its checkpoint {announced} is no longer under {}",
            root.display()
        )),
    }
}

/// The error that explains a failed run: the first that is not a mere consequence of
/// another.
fn root_cause(parts: &[RunPart]) -> Option<&RunOutcome> {
    let failed = || {
        parts
            .iter()
            .filter_map(|p| p.ended.as_ref())
            .filter(|o| !o.ok)
    };
    failed().find(|o| !o.secondary).or_else(|| failed().next())
}

fn from_wire(splits: Vec<WireSplit>) -> Vec<SplitState> {
    splits
        .into_iter()
        .map(|s| SplitState {
            split: s.split,
            position: s.position,
            done: s.done,
        })
        .collect()
}

/// Spreads `wanted` workers (default: every free slot) over the free slots, node by node in
/// turn, so a run uses every node it can.
fn place(free: &[(u64, u32)], wanted: Option<u32>) -> Vec<(u64, u32)> {
    let total: u32 = free.iter().map(|(_, n)| n).sum();
    let mut left = wanted.unwrap_or(total).min(total);
    let mut given: Vec<(u64, u32)> = free.iter().map(|&(id, _)| (id, 0)).collect();
    while left > 0 {
        for (i, &(_, cap)) in free.iter().enumerate() {
            if left > 0 && given[i].1 < cap {
                given[i].1 += 1;
                left -= 1;
            }
        }
    }
    given.retain(|(_, n)| *n > 0);
    given
}

#[cfg(test)]
mod tests {
    use super::place;

    #[test]
    fn placement_spreads_over_nodes() {
        assert_eq!(place(&[(1, 2), (2, 2)], None), vec![(1, 2), (2, 2)]);
        assert_eq!(place(&[(1, 2), (2, 2)], Some(2)), vec![(1, 1), (2, 1)]);
        assert_eq!(place(&[(1, 4), (2, 1)], Some(4)), vec![(1, 3), (2, 1)]);
        assert_eq!(place(&[(1, 1)], Some(8)), vec![(1, 1)]);
    }
}
