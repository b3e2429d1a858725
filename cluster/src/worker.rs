//! The worker node (`sluice node worker`): registers its worker slots with the coordinator,
//! heartbeats, and runs the parts of job runs it is given — each a [`Part`] of
//! `sluice-core`, whose executors are this node's workers for the run.
//!
//! The node's own executor (one thread, unpinned) holds the coordinator connection; nothing of
//! the data path runs on it. A part is prepared on a helper thread (it builds the job and
//! starts executors, which blocks), then driven from here without blocking: its checkpoint
//! acknowledgements go to the coordinator, the coordinator's triggers and completions go to
//! it. A node that loses its coordinator (the connection closes, or no heartbeat for the
//! timeout) cancels every part at once — it fences itself, since the coordinator will run
//! them elsewhere — and reconnects, forever, with a backoff (a coordinator that restarts on
//! its address finds the node again). A node that was itself silent past the timeout (paused,
//! say) acts on nothing the coordinator sent meanwhile: the first message it reads after the
//! silence ends the session instead, so a late trigger or completion of a run that was failed
//! over never reaches a part.
//!
//! The parts it stopped stay until the coordinator decides about them: once reconnected, the
//! node reports each as ended (`RunEnded` of its old run, which the coordinator rejects as
//! stale) and the coordinator answers `Cancel` — with `abort` once a later run of the job has
//! settled the output, so that whatever a zombie part wrote after that is deleted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, atomic::Ordering};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use sluice_core::checkpoint::metadata::CheckpointMetadata;
use sluice_core::checkpoint::{CheckpointConfig, ToCoordinator};
use sluice_core::clock::{Clock, SystemClock};
use sluice_core::exchange::PartLayout;
use sluice_core::remote::part::{Part, PartSpec};
use sluice_net::Connection;

use crate::config::ClusterConfig;
use crate::protocol::{
    self, Deploy, HEARTBEAT_INTERVAL, Incoming, Msg, ProtocolError, RunOutcome, WireSplit,
};
use crate::{BuiltJob, JobCatalog};

/// How a worker node runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The coordinator's address.
    pub coordinator: SocketAddr,
    /// Where the node's workers listen for their peers: the address's IP, and the first
    /// worker's port (0: ports the system picks; worker `i` gets port + `i` otherwise).
    pub listen: SocketAddr,
    /// Workers the node runs at most.
    pub slots: u32,
    /// Secret, name, heartbeat timeout.
    pub cluster: ClusterConfig,
    /// How long to keep trying to reach the coordinator at start-up.
    pub connect_timeout: Duration,
    /// The CPUs the node's workers are pinned to: worker `i` of a part to the `i`-th (as
    /// its data port is `listen`'s + `i`); empty: unpinned.
    pub cpus: Vec<usize>,
}

/// Runs a worker node on this thread until its coordinator cannot be reached at start-up
/// (an error), or forever.
pub fn run(opts: WorkerOptions, catalog: Arc<dyn JobCatalog>) -> Result<(), String> {
    opts.cluster.check_listen(opts.listen, "--listen")?;
    if opts.slots == 0 {
        return Err("--workers must be at least 1".into());
    }
    if !opts.cpus.is_empty() && opts.cpus.len() < opts.slots as usize {
        let n = opts.cpus.len();
        return Err(format!(
            "--cpus lists {n} CPU{} for {} workers: each worker needs a CPU of its own",
            if n == 1 { "" } else { "s" },
            opts.slots
        ));
    }
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name("sluice-node")
        .io_memory(64 << 10)
        .make()
        .map_err(|e| format!("cannot start the node's executor: {e}"))?;
    executor.run(agent(opts, catalog))
}

/// The first and the longest wait between two attempts to reach a lost coordinator.
const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(2));

async fn agent(opts: WorkerOptions, catalog: Arc<dyn JobCatalog>) -> Result<(), String> {
    let mut registered_once = false;
    let mut parts = BTreeMap::new();
    let mut stale = 0u64;
    let mut backoff = RECONNECT_BACKOFF.0;
    loop {
        let conn = match register(&opts, registered_once).await {
            Ok(conn) => conn,
            Err(e) if !registered_once => return Err(e),
            Err(e) => {
                tracing::warn!("{e}; trying again in {} ms", backoff.as_millis());
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
                continue;
            }
        };
        registered_once = true;
        backoff = RECONNECT_BACKOFF.0;
        let (end, left, rejected) = session(conn, &opts, &catalog, parts, stale).await;
        parts = left;
        stale = rejected;
        tracing::warn!(
            "lost the coordinator at {} ({end}): stopped every part ({} kept until the \
             coordinator decides about them); reconnecting",
            opts.coordinator,
            parts.len()
        );
        glommio::timer::sleep(backoff).await;
    }
}

/// Connects to the coordinator (retrying until `connect_timeout`, or once when `again`) and
/// registers.
async fn register(opts: &WorkerOptions, again: bool) -> Result<Connection, String> {
    let net = opts.cluster.net();
    let clock = SystemClock::new();
    let give_up = clock.now_ms() + opts.connect_timeout.as_millis() as u64;
    let conn = loop {
        match sluice_net::connect(opts.coordinator, &net).await {
            Ok(conn) => break conn,
            Err(e) if again || e.is_peer_fault() || clock.now_ms() >= give_up => {
                return Err(format!(
                    "cannot reach the coordinator at {}: {e}",
                    opts.coordinator
                ));
            }
            Err(_) => glommio::timer::sleep(Duration::from_millis(200)).await,
        }
    };
    let hello = Msg::Register {
        node: opts.cluster.node.clone(),
        slots: opts.slots,
    };
    let failed = |e: ProtocolError| format!("register with the coordinator: {e}");
    protocol::send(&conn, &hello).map_err(failed)?;
    match protocol::recv_msg(&conn).await.map_err(failed)? {
        Msg::Registered { node_id } => {
            // The line scripts and tests wait for.
            eprintln!(
                "worker node {} registered with the coordinator at {} ({} slots, id {node_id})",
                opts.cluster.node, opts.coordinator, opts.slots
            );
            Ok(conn)
        }
        Msg::Refused { reason } => Err(format!("the coordinator refused this node: {reason}")),
        other => Err(format!(
            "register with the coordinator: unexpected {other:?}"
        )),
    }
}

/// A part of a run on this node.
enum Slot {
    /// Being prepared on a helper thread.
    Preparing {
        result: mpsc::Receiver<Result<Part, RunOutcome>>,
        cancelled: bool,
    },
    /// Prepared or running.
    Running {
        part: Box<Part>,
        cancel: Option<bool>,
        /// Stopped because the node lost its coordinator.
        fenced: bool,
    },
    /// Its workers ended; waiting for the coordinator's commit or cancel.
    Ended(Box<Part>),
    /// A part stopped because the node lost its coordinator, ended: reported to the
    /// coordinator (its run is stale there), waiting for its `Cancel`.
    Fenced(Box<Part>),
}

struct Agent {
    conn: Connection,
    opts: WorkerOptions,
    catalog: Arc<dyn JobCatalog>,
    parts: BTreeMap<u64, Slot>,
    clock: SystemClock,
    last_heard_ms: u64,
    last_sent_ms: u64,
    sequence: u64,
    /// Stale coordinator messages ignored so far.
    stale: u64,
}

/// One registration: runs the coordinator's parts until the connection is lost; the end's
/// reason, the parts left (stopped, fenced) and the stale-message count.
async fn session(
    conn: Connection,
    opts: &WorkerOptions,
    catalog: &Arc<dyn JobCatalog>,
    parts: BTreeMap<u64, Slot>,
    stale: u64,
) -> (String, BTreeMap<u64, Slot>, u64) {
    let clock = SystemClock::new();
    let agent = std::rc::Rc::new(std::cell::RefCell::new(Agent {
        conn: conn.clone(),
        opts: opts.clone(),
        catalog: catalog.clone(),
        parts,
        last_heard_ms: clock.now_ms(),
        last_sent_ms: 0,
        sequence: 0,
        stale,
        clock,
    }));
    agent.borrow().report_fenced();
    let timeout = opts.cluster.heartbeat_timeout.as_millis() as u64;
    let receiving = async {
        loop {
            let incoming = protocol::recv(&conn).await;
            let mut a = agent.borrow_mut();
            let now = a.clock.now_ms();
            if now.saturating_sub(a.last_heard_ms) > timeout {
                // Silent past the timeout (this node was paused): whatever was queued
                // meanwhile is stale, and the coordinator has failed this node's runs over.
                return format!(
                    "no word from the coordinator for {} ms",
                    now.saturating_sub(a.last_heard_ms)
                );
            }
            a.last_heard_ms = now;
            match incoming {
                Ok(Incoming::Heartbeat) => {}
                Ok(Incoming::Msg(m)) => a.handle(m),
                Err(e) => return e.to_string(),
            }
        }
    };
    let ticking = async {
        loop {
            glommio::timer::sleep(Duration::from_millis(2)).await;
            if let Err(e) = agent.borrow_mut().tick() {
                return e;
            }
        }
    };
    let end = futures_lite::future::or(receiving, ticking).await;
    conn.close();
    let mut a = agent.borrow_mut();
    let mut left = BTreeMap::new();
    for (run, slot) in std::mem::take(&mut a.parts) {
        let fenced = match slot {
            Slot::Running { part, .. } => {
                part.cancel();
                Slot::Running {
                    part,
                    cancel: Some(false),
                    fenced: true,
                }
            }
            Slot::Ended(part) | Slot::Fenced(part) => Slot::Fenced(part),
            Slot::Preparing { result, .. } => Slot::Preparing {
                result,
                cancelled: true,
            },
        };
        left.insert(run, fenced);
    }
    (end, left, a.stale)
}

impl Agent {
    fn send(&self, msg: &Msg) {
        if let Err(e) = protocol::send(&self.conn, msg) {
            tracing::debug!("send to the coordinator: {e}");
        }
    }

    /// Tells the coordinator about the stopped parts of an earlier session that ended.
    fn report_fenced(&self) {
        for (&run, slot) in &self.parts {
            if let Slot::Fenced(_) = slot {
                let outcome = RunOutcome {
                    secondary: true,
                    ..failed("stopped: the node lost its coordinator".into(), true)
                };
                self.send(&Msg::RunEnded { run, outcome });
            }
        }
    }

    /// A coordinator message about run `run`, which has no live part here: ignored, counted.
    fn ignore_stale(&mut self, what: &str, run: u64) {
        self.stale += 1;
        tracing::warn!(
            "ignored a stale {what} of run {run} from the coordinator ({} so far)",
            self.stale
        );
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Deploy(d) => self.deploy(d),
            Msg::Start { run, endpoints } => self.start(run, &endpoints),
            Msg::Trigger {
                run,
                checkpoint_id,
                timestamp_ms,
                savepoint_dir,
            } => match self.parts.get(&run) {
                Some(Slot::Running {
                    part,
                    fenced: false,
                    ..
                }) => {
                    let control = part.control();
                    if let Some(dir) = savepoint_dir {
                        control.set_savepoint(checkpoint_id, PathBuf::from(dir), false);
                    }
                    control.trigger_ms.store(timestamp_ms, Ordering::Relaxed);
                    control.trigger.fetch_max(checkpoint_id, Ordering::AcqRel);
                }
                Some(Slot::Running { .. } | Slot::Fenced(_)) | None => {
                    self.ignore_stale("checkpoint trigger", run);
                }
                Some(_) => {}
            },
            Msg::Complete { run, checkpoint_id } => self.complete(run, checkpoint_id),
            Msg::Commit { run } => self.commit(run),
            Msg::Cancel { run, abort } => self.cancel(run, abort),
            other => tracing::warn!("unexpected message from the coordinator: {other:?}"),
        }
    }

    fn deploy(&mut self, d: Deploy) {
        let (tx, rx) = mpsc::channel();
        let catalog = self.catalog.clone();
        let opts = self.opts.clone();
        let run = d.run;
        let spawned = std::thread::Builder::new()
            .name(format!("sluice-prepare-{run}"))
            .spawn(move || {
                let _ = tx.send(prepare(&*catalog, &opts, &d));
            });
        match spawned {
            Ok(_) => {
                let slot = Slot::Preparing {
                    result: rx,
                    cancelled: false,
                };
                self.parts.insert(run, slot);
            }
            Err(e) => self.send(&Msg::RunEnded {
                run,
                outcome: failed(format!("spawn a thread: {e}"), true),
            }),
        }
    }

    fn start(&mut self, run: u64, endpoints: &[String]) {
        let Some(Slot::Running {
            part,
            fenced: false,
            ..
        }) = self.parts.get_mut(&run)
        else {
            self.ignore_stale("start", run);
            return;
        };
        let parsed: Result<Vec<SocketAddr>, _> = endpoints.iter().map(|e| e.parse()).collect();
        match parsed {
            Ok(endpoints) if endpoints.len() == part.layout().workers => part.start(endpoints),
            _ => {
                tracing::warn!(
                    run,
                    "bad endpoints from the coordinator: cancelling the part"
                );
                part.cancel();
            }
        }
    }

    fn complete(&mut self, run: u64, id: u64) {
        // Only a live part publishes output: a completion for a part this node stopped
        // (fenced) is refused — a later run of the job owns the output now.
        let part = match self.parts.get(&run) {
            Some(
                Slot::Running {
                    part,
                    fenced: false,
                    ..
                }
                | Slot::Ended(part),
            ) => part,
            _ => {
                self.ignore_stale("checkpoint completion", run);
                return;
            }
        };
        if let Err(e) = part.commit_checkpoint(id) {
            tracing::warn!(
                run,
                checkpoint = id,
                "commit failed: {e}; cancelling the part"
            );
            part.cancel();
        }
    }

    fn commit(&mut self, run: u64) {
        let error = match self.parts.remove(&run) {
            Some(Slot::Ended(part)) => part.commit().err().map(|e| e.to_string()),
            Some(other) => {
                self.parts.insert(run, other);
                Some("the part has not ended".into())
            }
            None => Some("no such run on this node".into()),
        };
        self.send(&Msg::Committed { run, error });
    }

    fn cancel(&mut self, run: u64, abort: bool) {
        match self.parts.remove(&run) {
            Some(Slot::Running { part, fenced, .. }) => {
                part.cancel();
                let slot = Slot::Running {
                    part,
                    cancel: Some(abort),
                    fenced,
                };
                self.parts.insert(run, slot);
            }
            Some(Slot::Preparing { result, .. }) => {
                let slot = Slot::Preparing {
                    result,
                    cancelled: true,
                };
                self.parts.insert(run, slot);
            }
            Some(Slot::Ended(part) | Slot::Fenced(part)) if abort => part.abort(),
            Some(Slot::Ended(_) | Slot::Fenced(_)) => {}
            None => {}
        }
    }

    /// Moves the parts along and keeps the connection alive; an error ends the session.
    fn tick(&mut self) -> Result<(), String> {
        let now = self.clock.now_ms();
        let timeout = self.opts.cluster.heartbeat_timeout.as_millis() as u64;
        if now.saturating_sub(self.last_heard_ms) > timeout {
            return Err(format!("no word from the coordinator for {timeout} ms"));
        }
        if now.saturating_sub(self.last_sent_ms) >= HEARTBEAT_INTERVAL.as_millis() as u64 {
            self.last_sent_ms = now;
            self.sequence += 1;
            protocol::heartbeat(&self.conn, self.sequence).map_err(|e| e.to_string())?;
        }
        if self.conn.is_closed() {
            return Err("the connection closed".into());
        }
        let runs: Vec<u64> = self.parts.keys().copied().collect();
        for run in runs {
            if let Some(slot) = self.parts.remove(&run)
                && let Some(slot) = self.advance(run, slot)
            {
                self.parts.insert(run, slot);
            }
        }
        Ok(())
    }

    /// One step of a part; `None` once it is gone.
    fn advance(&mut self, run: u64, slot: Slot) -> Option<Slot> {
        match slot {
            Slot::Preparing { result, cancelled } => match result.try_recv() {
                Err(mpsc::TryRecvError::Empty) => Some(Slot::Preparing { result, cancelled }),
                Err(mpsc::TryRecvError::Disconnected) => {
                    let outcome = failed("the part's preparation died".into(), true);
                    self.send(&Msg::RunEnded { run, outcome });
                    None
                }
                Ok(Err(outcome)) => {
                    self.send(&Msg::RunEnded { run, outcome });
                    None
                }
                Ok(Ok(part)) if cancelled => {
                    part.cancel();
                    let outcome = RunOutcome {
                        secondary: true,
                        ..failed("cancelled before it started".into(), true)
                    };
                    self.send(&Msg::RunEnded { run, outcome });
                    None
                }
                Ok(Ok(part)) => {
                    let addrs = part.data_addrs().iter().map(|a| a.to_string()).collect();
                    self.send(&Msg::Prepared { run, addrs });
                    Some(Slot::Running {
                        part: Box::new(part),
                        cancel: None,
                        fenced: false,
                    })
                }
            },
            Slot::Running {
                mut part,
                cancel,
                fenced,
            } => {
                for m in part.take_messages() {
                    self.send(&to_coordinator(run, m));
                }
                let Some(result) = part.poll_finished() else {
                    return Some(Slot::Running {
                        part,
                        cancel,
                        fenced,
                    });
                };
                let outcome = match result {
                    Ok(report) => RunOutcome {
                        ok: true,
                        message: String::new(),
                        secondary: false,
                        restartable: false,
                        records_in: report.progress.records_in,
                        bytes_in: report.progress.bytes_in,
                        elapsed_ms: report.elapsed.as_millis() as u64,
                    },
                    Err(e) => RunOutcome {
                        records_in: part.progress().records_in,
                        bytes_in: part.progress().bytes_in,
                        ..failed_with(&e)
                    },
                };
                // Acknowledgements the last workers sent before ending go first.
                for m in part.take_messages() {
                    self.send(&to_coordinator(run, m));
                }
                self.send(&Msg::RunEnded { run, outcome });
                match cancel {
                    // The coordinator decides (its `Cancel` answers the stale `RunEnded`).
                    _ if fenced => Some(Slot::Fenced(part)),
                    Some(true) => {
                        part.abort();
                        None
                    }
                    Some(false) => None,
                    None => Some(Slot::Ended(part)),
                }
            }
            Slot::Ended(part) => Some(Slot::Ended(part)),
            Slot::Fenced(part) => Some(Slot::Fenced(part)),
        }
    }
}

fn failed(message: String, restartable: bool) -> RunOutcome {
    RunOutcome {
        ok: false,
        message,
        secondary: false,
        restartable,
        records_in: 0,
        bytes_in: 0,
        elapsed_ms: 0,
    }
}

fn failed_with(e: &sluice_core::Error) -> RunOutcome {
    RunOutcome {
        secondary: e.is_secondary(),
        ..failed(e.to_string(), e.is_restartable())
    }
}

fn to_coordinator(run: u64, m: ToCoordinator) -> Msg {
    let splits = |s: Vec<sluice_core::checkpoint::SplitState>| {
        s.into_iter()
            .map(|s| WireSplit {
                split: s.split,
                position: s.position,
                done: s.done,
            })
            .collect()
    };
    match m {
        ToCoordinator::Running { stage, worker } => Msg::Running {
            run,
            stage: stage as u32,
            worker: worker as u32,
        },
        ToCoordinator::Ack(a) => Msg::Ack {
            run,
            checkpoint_id: a.checkpoint_id,
            stage: a.stage as u32,
            worker: a.worker as u32,
            splits: splits(a.splits),
            state: a.state,
            sync_us: a.sync_us,
            freeze_us: a.freeze_us,
            sync_cpu_us: a.sync_cpu_us,
            duration_us: a.duration_us,
            align_us: a.align_us,
        },
        ToCoordinator::Declined {
            checkpoint_id,
            stage,
            worker,
            reason,
        } => Msg::Declined {
            run,
            checkpoint_id,
            stage: stage as u32,
            worker: worker as u32,
            reason,
        },
        ToCoordinator::Finished {
            stage,
            worker,
            splits: s,
        } => Msg::Finished {
            run,
            stage: stage as u32,
            worker: worker as u32,
            splits: splits(s),
        },
    }
}

/// Builds the job and prepares this node's part of the run (on a helper thread).
fn prepare(catalog: &dyn JobCatalog, opts: &WorkerOptions, d: &Deploy) -> Result<Part, RunOutcome> {
    let BuiltJob { graph, mut config } = catalog
        .build(&d.job, &d.args)
        .map_err(|e| failed(format!("build job '{}': {e}", d.job), false))?;
    if let Some(dir) = &d.checkpoint_dir {
        let interval = config
            .checkpoints
            .as_ref()
            .map_or(Duration::from_secs(1), |c| c.interval);
        let mut c = CheckpointConfig::new(dir, interval);
        if let Some(old) = &config.checkpoints {
            c.retain = old.retain;
        }
        config.checkpoints = Some(c);
    }
    let restore = match &d.restore {
        None => None,
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let meta = CheckpointMetadata::read(&dir).map_err(|e| failed_with(&e))?;
            Some((dir, meta))
        }
    };
    let first = d.first_worker as usize;
    let spec = PartSpec {
        run: d.run,
        layout: PartLayout {
            workers: d.workers as usize,
            local: first..first + d.local_workers as usize,
        },
        key_groups_max: d.key_groups_max,
        restore,
        config,
        data_ip: opts.listen.ip(),
        data_port: opts.listen.port(),
        net: opts.cluster.net(),
        cpus: opts.cpus.clone(),
    };
    Part::prepare(Arc::new(graph), spec).map_err(|e| failed_with(&e))
}
