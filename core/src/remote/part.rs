//! One node's part of a distributed job: the workers of a contiguous range of global worker
//! indices, run in this process, connected to the workers of the other parts.
//!
//! A part starts in two steps, so that no worker sends anything before every node is ready:
//!
//! 1. [`Part::prepare`] (blocking, a few milliseconds to a few seconds): prepares the stages
//!    (sources enumerate their splits; outputs are *not* settled — the coordinator does that
//!    once, before any node prepares), creates the in-process channels and the remote ends,
//!    starts one executor thread per local worker, and has each bind its data listener;
//!    returns once every worker is up, with their addresses.
//! 2. [`Part::start`], once the coordinator has every part's addresses: each worker connects
//!    to the workers of the other parts ([`super::links`]) and runs its stages.
//!
//! Meanwhile the node drives the part without blocking: it forwards the checkpoint messages
//! of [`Part::take_messages`] to the coordinator, applies triggers and completions through
//! [`Part::control`] and [`Part::commit_checkpoint`], and polls [`Part::poll_finished`].
//! [`Part::cancel`] tears it down (a failure elsewhere, or the coordinator asked).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::time::Duration;

use glommio::Placement;
use sluice_net::{Listener, NetConfig};

use crate::checkpoint::metadata;
use crate::checkpoint::{CheckpointControl, ToCoordinator};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::exchange::PartLayout;
use crate::graph::{JobGraph, Prepare, WorkerContext};
use crate::key::KeyGroups;
use crate::metrics::{JobMetrics, Progress};
use crate::remote::links;
use crate::runtime::{self, RuntimeConfig};

/// What one node runs of a job.
#[derive(Clone, Debug)]
pub struct PartSpec {
    /// The job run (deployment) this part belongs to: peers of another run are refused.
    pub run: u64,
    /// The job's workers, and which of them run here.
    pub layout: PartLayout,
    /// The job's key groups.
    pub key_groups_max: u32,
    /// The checkpoint the job resumes from.
    pub restore: Option<metadata::Complete>,
    /// Checkpoint directory (for the state), source rate, state budget and directory.
    pub config: RuntimeConfig,
    /// The address the workers' data listeners bind to.
    pub data_ip: IpAddr,
    /// The first worker's data port; worker `i` of the part listens on `data_port + i`
    /// (0: ports the system picks).
    pub data_port: u16,
    /// Authentication and limits of the data connections.
    pub net: NetConfig,
    /// The CPU each local worker is pinned to, in order (and spins on for a moment before it
    /// parks, as an embedded run's pinned workers do); empty: the workers are not pinned.
    /// A node shares its machine with nothing else only when told so, so this is opt-in.
    pub cpus: Vec<usize>,
}

/// What a finished part reports.
#[derive(Clone, Debug)]
pub struct PartReport {
    /// From the start to the last local worker's end.
    pub elapsed: Duration,
    /// Counters of the local workers.
    pub progress: Progress,
}

/// What the node tells a waiting worker.
enum Go {
    /// Connect to these endpoints (every global worker's data address) and run.
    Run(Arc<Vec<SocketAddr>>),
    /// Do not run.
    Stop,
}

enum Event {
    Bound(usize, SocketAddr),
    StartFailed(usize, String),
    Finished(usize, Result<()>),
}

/// A node's part of a job, prepared or running.
pub struct Part {
    graph: Arc<JobGraph>,
    layout: PartLayout,
    control: Arc<CheckpointControl>,
    messages: mpsc::Receiver<ToCoordinator>,
    addrs: Vec<SocketAddr>,
    go: Vec<mpsc::Sender<Go>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    events: mpsc::Receiver<Event>,
    cancelled: Arc<AtomicBool>,
    /// Set by [`Part::cancel`] (unlike `cancelled`, which a local failure sets too): the
    /// workers then fail their connections to other nodes rather than close them gracefully.
    stopped: Arc<AtomicBool>,
    metrics: Arc<JobMetrics>,
    finished: usize,
    errors: Vec<Error>,
    scratch: Option<PathBuf>,
    clock: SystemClock,
    started_ms: Option<u64>,
    done: bool,
}

impl Part {
    /// Prepares the stages and starts this part's workers, each with its data listener bound
    /// (blocks until they are up). Outputs are not settled here: see the module's notes.
    pub fn prepare(graph: Arc<JobGraph>, spec: PartSpec) -> Result<Part> {
        let layout = spec.layout.clone();
        if layout.local.is_empty() || layout.local.end > layout.workers {
            return Err(Error::Config(format!(
                "internal: workers {:?} of {}",
                layout.local, layout.workers
            )));
        }
        let restored_id = spec.restore.as_ref().map_or(0, |(_, m)| m.checkpoint_id);
        if let Some((dir, meta)) = &spec.restore {
            runtime::check_same_job(dir, meta, &graph)?;
        }
        let key_groups = KeyGroups::new(spec.key_groups_max, layout.workers as u32)?;
        let metrics = Arc::new(JobMetrics::new(layout.workers));
        for (i, stage) in graph.stages.iter().enumerate() {
            stage.prepare(&Prepare {
                workers: layout.workers,
                metrics: &metrics,
                restored_id,
                restored_run: spec.restore.as_ref().map_or(0, |(_, m)| m.run),
                restore: spec.restore.as_ref().and_then(|(_, m)| m.stages.get(i)),
                settle_output: false,
            })?;
        }
        runtime::preflight()?;
        for (i, edge) in graph.edges.iter().enumerate() {
            edge.materialize_part(i, &layout)?;
        }
        runtime::install_panic_hook();
        let (to_node, messages) = mpsc::channel();
        let control = CheckpointControl::new(to_node, restored_id);
        let (state, scratch) = runtime::state_settings(&spec.config)?;
        let state_restore = Arc::new(runtime::state_restores(&graph, spec.restore.as_ref()));
        let cancelled = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(AtomicBool::new(false));
        let (events_tx, events) = mpsc::channel();
        let mut part = Part {
            graph: graph.clone(),
            layout: layout.clone(),
            control: control.clone(),
            messages,
            addrs: Vec::new(),
            go: Vec::new(),
            threads: Vec::new(),
            events,
            cancelled: cancelled.clone(),
            stopped: stopped.clone(),
            metrics: metrics.clone(),
            finished: 0,
            errors: Vec::new(),
            scratch,
            clock: SystemClock::new(),
            started_ms: None,
            done: false,
        };
        let remote: Arc<Vec<usize>> = Arc::new(
            (0..layout.workers)
                .filter(|w| !layout.is_local(*w))
                .collect(),
        );
        for (slot, w) in layout.local.clone().enumerate() {
            let (go_tx, go_rx) = mpsc::channel();
            part.go.push(go_tx);
            let mut ctx = WorkerContext::new(w, key_groups, metrics.clone(), cancelled.clone());
            ctx.checkpoints = Some(control.clone());
            ctx.source_rate = spec.config.source_rate;
            ctx.restored_id = restored_id;
            ctx.run = spec.run;
            ctx.state = Some(state.clone());
            ctx.state_restore = state_restore.clone();
            let port = match spec.data_port {
                0 => 0,
                p => p.checked_add(slot as u16).ok_or_else(|| {
                    Error::Config(format!("data port {p} + {slot} is past 65535"))
                })?,
            };
            let worker = PartWorker {
                placement: spec
                    .cpus
                    .get(slot)
                    .map_or(Placement::Unbound, |&c| Placement::Fixed(c)),
                ctx,
                graph: graph.clone(),
                run: spec.run,
                listen: SocketAddr::new(spec.data_ip, port),
                net: spec.net.clone(),
                peers: remote.clone(),
                events: events_tx.clone(),
                stopped: stopped.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("{}{w}", runtime::WORKER_THREAD_PREFIX))
                .spawn(move || worker.main(go_rx));
            match spawned {
                Ok(handle) => part.threads.push(handle),
                Err(e) => {
                    return Err(Error::Startup {
                        worker: w,
                        reason: format!("spawn thread: {e}"),
                    });
                }
            }
        }
        drop(events_tx);
        part.await_bound()?;
        Ok(part)
    }

    fn await_bound(&mut self) -> Result<()> {
        let n = self.layout.local.len();
        let mut addrs: Vec<Option<SocketAddr>> = vec![None; n];
        let mut bound = 0;
        while bound < n {
            match self.events.recv_timeout(runtime::STARTUP_TIMEOUT) {
                Ok(Event::Bound(w, addr)) => {
                    addrs[w - self.layout.local.start] = Some(addr);
                    bound += 1;
                }
                Ok(Event::StartFailed(worker, reason)) => {
                    return Err(Error::Startup { worker, reason });
                }
                Ok(Event::Finished(worker, _)) => {
                    return Err(Error::Startup {
                        worker,
                        reason: "exited during start-up".into(),
                    });
                }
                Err(_) => {
                    return Err(Error::Startup {
                        worker: self.layout.local.start + bound,
                        reason: format!(
                            "only {bound} of {n} workers started within {}s",
                            runtime::STARTUP_TIMEOUT.as_secs()
                        ),
                    });
                }
            }
        }
        self.addrs = addrs.into_iter().flatten().collect();
        Ok(())
    }

    /// The local workers' data addresses, in worker order.
    pub fn data_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The workers and which of them run here.
    pub fn layout(&self) -> &PartLayout {
        &self.layout
    }

    /// The checkpoint control the local workers read: the node raises triggers (and marks
    /// savepoints) on it for the coordinator.
    pub fn control(&self) -> &Arc<CheckpointControl> {
        &self.control
    }

    /// The acknowledgements and finish reports of the local stage instances since the last
    /// call, for the coordinator.
    pub fn take_messages(&self) -> Vec<ToCoordinator> {
        let mut out = Vec::new();
        while let Ok(m) = self.messages.try_recv() {
            out.push(m);
        }
        out
    }

    /// Lets the workers connect to `endpoints` (every global worker's data address, in
    /// worker order) and run.
    pub fn start(&mut self, endpoints: Vec<SocketAddr>) {
        let endpoints = Arc::new(endpoints);
        self.started_ms = Some(self.clock.now_ms());
        for go in &self.go {
            let _ = go.send(Go::Run(endpoints.clone()));
        }
    }

    /// Tears the part down: every local worker stops as soon as it notices.
    pub fn cancel(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.cancelled.store(true, Ordering::Relaxed);
        for go in &self.go {
            let _ = go.send(Go::Stop);
        }
    }

    /// Counters of the local workers so far.
    pub fn progress(&self) -> Progress {
        self.metrics.snapshot()
    }

    /// Without blocking: once every local worker has ended, the part's outcome (the first
    /// root-cause error, if any); `None` while some still run.
    pub fn poll_finished(&mut self) -> Option<Result<PartReport>> {
        if self.done {
            return None;
        }
        loop {
            match self.events.try_recv() {
                Ok(Event::Finished(_, result)) => {
                    self.finished += 1;
                    if let Err(e) = result {
                        self.errors.push(e);
                    }
                }
                Ok(Event::StartFailed(worker, reason)) => {
                    self.errors.push(Error::Startup { worker, reason });
                    self.finished += 1;
                }
                Ok(Event::Bound(..)) => {}
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => break,
            }
            if self.finished >= self.layout.local.len() {
                break;
            }
        }
        self.done = true;
        for handle in self.threads.drain(..) {
            if let Err(payload) = handle.join() {
                self.errors
                    .push(runtime::panic_error("runtime", 0, payload.as_ref()));
            }
        }
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let elapsed_ms = self
            .started_ms
            .map_or(0, |s| self.clock.now_ms().saturating_sub(s));
        let errors = std::mem::take(&mut self.errors);
        Some(match runtime::root_cause(errors) {
            Some(e) => Err(e),
            None => Ok(PartReport {
                elapsed: Duration::from_millis(elapsed_ms),
                progress: self.metrics.snapshot(),
            }),
        })
    }

    /// Checkpoint `id` completed: the local sinks publish what they pre-committed for it.
    pub fn commit_checkpoint(&self, id: u64) -> Result<()> {
        self.control.completed.fetch_max(id, Ordering::AcqRel);
        for stage in &self.graph.stages {
            stage.commit_checkpoint(id)?;
        }
        Ok(())
    }

    /// The whole job succeeded: the local sinks publish their output.
    pub fn commit(&self) -> Result<()> {
        for stage in &self.graph.stages {
            stage.commit()?;
        }
        Ok(())
    }

    /// The job failed for good: the local sinks remove their uncommitted output.
    pub fn abort(&self) {
        for stage in &self.graph.stages {
            stage.abort();
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        // The threads end on their own once cancelled; nobody waits for them here.
        if !self.done {
            self.cancel();
        }
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One local worker of a part, on its own thread.
struct PartWorker {
    placement: Placement,
    ctx: WorkerContext,
    graph: Arc<JobGraph>,
    run: u64,
    listen: SocketAddr,
    net: NetConfig,
    peers: Arc<Vec<usize>>,
    events: mpsc::Sender<Event>,
    stopped: Arc<AtomicBool>,
}

/// How often a worker waiting for the go checks for it.
const GO_POLL: Duration = Duration::from_millis(2);
/// How often a running worker checks whether its part was stopped.
const STOP_POLL: Duration = Duration::from_millis(10);

impl PartWorker {
    fn main(self, go: mpsc::Receiver<Go>) {
        let w = self.ctx.worker;
        let executor = match runtime::worker_executor(self.placement.clone(), w).make() {
            Ok(ex) => ex,
            Err(e) => {
                let reason = runtime::explain_start_error(&e.to_string());
                let _ = self.events.send(Event::StartFailed(w, reason));
                return;
            }
        };
        let events = self.events.clone();
        let run = async {
            // glommio can park the executor with tasks ready to run: another thread wakes it.
            let _nudged = crate::nudge::nudged().await;
            self.run_part(&go).await
        };
        if let Some(result) = executor.run(run) {
            let _ = events.send(Event::Finished(w, result));
        }
    }

    /// Binds, waits for the go, connects, runs the stages; `None` if told not to run.
    async fn run_part(self, go: &mpsc::Receiver<Go>) -> Option<Result<()>> {
        let w = self.ctx.worker;
        let listener = match Listener::bind(self.listen, &self.net) {
            Ok(l) => l,
            Err(e) => {
                let reason = format!("bind the data listener: {e}");
                let _ = self.events.send(Event::StartFailed(w, reason));
                return None;
            }
        };
        let _ = self.events.send(Event::Bound(w, listener.local_addr()));
        let endpoints = loop {
            match go.try_recv() {
                Ok(Go::Run(endpoints)) => break endpoints,
                Ok(Go::Stop) | Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {
                    if self.ctx.is_cancelled() {
                        return None;
                    }
                    glommio::timer::sleep(GO_POLL).await;
                }
            }
        };
        let cancel = self.ctx.cancel_flag();
        let connected = links::connect_peers(
            w,
            self.run,
            &self.peers,
            &endpoints,
            &listener,
            &self.net,
            &cancel,
        )
        .await;
        drop(listener);
        let links = match connected {
            Ok(links) => links,
            Err(e) => {
                self.ctx.cancel();
                return Some(Err(e));
            }
        };
        links::install(links);
        // Stopped from outside (the run is cancelled): a stage blocked on a peer that does
        // not read — paused, say — would not notice, so the connections fail at once.
        let stopped = self.stopped.clone();
        glommio::spawn_local(async move {
            while !stopped.load(Ordering::Relaxed) {
                glommio::timer::sleep(STOP_POLL).await;
            }
            links::abort_installed();
        })
        .detach();
        let result = runtime::run_stages(self.ctx.clone(), self.graph.clone()).await;
        if result.is_err() {
            self.ctx.cancel();
        }
        if let Some(links) = links::uninstall() {
            if self.stopped.load(Ordering::Relaxed) {
                links.abort();
            } else {
                // The last frames (end of input, a final barrier) must leave before the
                // executor stops; a peer that is gone ends the wait.
                let flush = links.close_and_flush();
                let limit = glommio::timer::sleep(Duration::from_secs(10));
                futures_lite::future::or(flush, limit).await;
            }
        }
        Some(result)
    }
}
