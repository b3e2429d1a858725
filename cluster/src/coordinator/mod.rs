//! The coordinator node (`sluice node coordinator`): accepts worker nodes and clients on one
//! authenticated listener, keeps the registry of nodes and their worker slots, and runs the
//! jobs ([`job`]).
//!
//! Everything runs on one executor thread: a task per connection reads messages and hands
//! them to the shared state ([`Coord`]), and a ticker moves jobs along every few
//! milliseconds — deploys, checkpoint triggers and completions, failovers — and checks the
//! nodes' heartbeats. The state is a plain struct behind a `RefCell`, never borrowed across
//! an await.
//!
//! **What survives a coordinator restart.** With `--checkpoint-dir DIR`, the coordinator keeps
//! the jobs it accepted in a job store, `DIR/jobs` ([`store`]): each job's name, options,
//! runs, restarts, the newest checkpoint it announced complete, the checkpoint ids it
//! reserved, and its end. A coordinator started again on the same `DIR` reloads them: an
//! unfinished job restarts from its newest complete checkpoint (as after a failover, waiting a
//! heartbeat timeout for the nodes to come back) as a run whose id is above every id its
//! predecessor used, with checkpoint ids above every id it may have triggered. The worker
//! nodes stopped their parts when they lost the coordinator, and reconnect; a client waiting
//! for a job reconnects and watches it by id. What does not survive: the node registry (the
//! nodes register again), a savepoint under way (its request fails), and jobs of a
//! coordinator without `--checkpoint-dir`; a job that takes no checkpoints fails at the
//! restart (it has nothing to resume from).
//!
//! **Fencing.** Every node message names its run; a message of a run that is not a job's
//! current run (a late acknowledgement of a run that was failed over, a node that was paused
//! past its heartbeat timeout, a part of the coordinator's predecessor) is rejected, logged
//! (`rejected a stale message of run N from node X (K so far)`) and counted. When a stale
//! part reports it has ended, the coordinator tells the node to drop it — and to delete its
//! uncommitted files (`Cancel` with `abort`) once a later run of the job has settled the
//! output, since anything such a part wrote after that settlement is a zombie's.

mod job;
mod store;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use sluice_core::clock::{Clock, SystemClock};
use sluice_net::{Connection, Listener};

use crate::JobCatalog;
use crate::config::ClusterConfig;
use crate::protocol::{self, HEARTBEAT_INTERVAL, Incoming, Msg, NodeRow};
use job::Job;
use store::JobStore;

/// How a coordinator runs.
#[derive(Clone, Debug)]
pub struct CoordinatorOptions {
    /// Where it listens for nodes and clients.
    pub listen: SocketAddr,
    /// The default root for checkpoints (`DIR/<job id>`, for jobs with an interval but no
    /// directory of their own) and savepoints (`DIR/savepoints`). It must be reachable by
    /// every node at the same path (shared storage).
    pub checkpoint_dir: Option<PathBuf>,
    /// Secret, name, heartbeat timeout.
    pub cluster: ClusterConfig,
}

/// How often the coordinator moves its jobs along.
const TICK: Duration = Duration::from_millis(5);
/// Time a connection has to say who it is.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an address in use is tried again.
const BIND_RETRY: Duration = Duration::from_secs(10);

/// Runs a coordinator on this thread, forever (or until it cannot listen). `ready` gets its
/// address once it listens.
pub fn run(
    opts: CoordinatorOptions,
    catalog: Arc<dyn JobCatalog>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    opts.cluster.check_listen(opts.listen, "--listen")?;
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name("sluice-coordinator")
        .io_memory(64 << 10)
        .make()
        .map_err(|e| format!("cannot start the coordinator's executor: {e}"))?;
    executor.run(serve(opts, catalog, ready))
}

async fn serve(
    opts: CoordinatorOptions,
    catalog: Arc<dyn JobCatalog>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let listener = bind(&opts).await?;
    let coord = Rc::new(RefCell::new(Coord::new(opts, catalog)?));
    ready(listener.local_addr());
    let ticker = coord.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(TICK).await;
            ticker.borrow_mut().tick();
        }
    })
    .detach();
    loop {
        let conn = listener
            .accept()
            .await
            .map_err(|e| format!("accept on {}: {e}", listener.local_addr()))?;
        glommio::spawn_local(session(conn, coord.clone())).detach();
    }
}

/// Binds the listener. An address in use is tried again for up to [`BIND_RETRY`]: the
/// sockets of a predecessor killed on this address close only once the kernel has torn its
/// io_uring down, which may take a moment.
async fn bind(opts: &CoordinatorOptions) -> Result<Listener, String> {
    let clock = SystemClock::new();
    let give_up = clock.now_ms() + BIND_RETRY.as_millis() as u64;
    let mut said = false;
    loop {
        match Listener::bind(opts.listen, &opts.cluster.net()) {
            Ok(listener) => return Ok(listener),
            Err(sluice_net::NetError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && clock.now_ms() < give_up =>
            {
                if !said {
                    said = true;
                    tracing::warn!(
                        "{} is in use; trying again for up to {} s",
                        opts.listen,
                        BIND_RETRY.as_secs()
                    );
                }
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("cannot listen on {}: {e}", opts.listen)),
        }
    }
}

/// A connection's first message says what it is: a worker node registering, or a client's
/// request.
async fn session(conn: Connection, coord: Rc<RefCell<Coord>>) {
    let first = async { protocol::recv_msg(&conn).await.map_err(|e| e.to_string()) };
    let timeout = async {
        glommio::timer::sleep(FIRST_MESSAGE_TIMEOUT).await;
        Err("it said nothing".to_owned())
    };
    let first = match futures_lite::future::or(first, timeout).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(peer = %conn.peer_addr(), "closing a connection: {e}");
            conn.close();
            return;
        }
    };
    match first {
        Msg::Register { node, slots } => node_session(conn, coord, node, slots).await,
        request => coord.borrow_mut().client_request(conn, request),
    }
}

async fn node_session(conn: Connection, coord: Rc<RefCell<Coord>>, name: String, slots: u32) {
    let Some(id) = coord.borrow_mut().add_node(conn.clone(), name, slots) else {
        return;
    };
    loop {
        let incoming = protocol::recv(&conn).await;
        let mut c = coord.borrow_mut();
        match incoming {
            Ok(Incoming::Heartbeat) => c.heard(id),
            Ok(Incoming::Msg(m)) => {
                c.heard(id);
                c.node_message(id, m);
            }
            Err(e) => {
                c.node_lost(id, &e.to_string());
                return;
            }
        }
    }
}

/// A registered worker node.
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) conn: Connection,
    pub(crate) slots: u32,
    /// Slots given to runs.
    pub(crate) used: u32,
    last_heard_ms: u64,
}

/// The coordinator's state.
pub(crate) struct Coord {
    pub(crate) opts: CoordinatorOptions,
    pub(crate) catalog: Arc<dyn JobCatalog>,
    pub(crate) nodes: BTreeMap<u64, Node>,
    pub(crate) jobs: BTreeMap<String, Job>,
    pub(crate) clock: SystemClock,
    next_node: u64,
    next_job: u64,
    pub(crate) next_run: u64,
    last_heartbeat_ms: u64,
    sequence: u64,
    /// The job store (with `--checkpoint-dir`).
    pub(crate) store: Option<JobStore>,
    /// Which job each run (this coordinator's or a predecessor's) belonged to.
    pub(crate) run_owner: BTreeMap<u64, String>,
    /// Stale messages rejected so far.
    stale_rejected: u64,
}

impl Coord {
    /// The coordinator's state, with the jobs of its job store reloaded.
    fn new(opts: CoordinatorOptions, catalog: Arc<dyn JobCatalog>) -> Result<Coord, String> {
        let store = opts
            .checkpoint_dir
            .as_deref()
            .map(JobStore::open)
            .transpose()?;
        let mut c = Coord {
            opts,
            catalog,
            nodes: BTreeMap::new(),
            jobs: BTreeMap::new(),
            clock: SystemClock::new(),
            next_node: 1,
            next_job: 1,
            next_run: 1,
            last_heartbeat_ms: 0,
            sequence: 0,
            store,
            run_owner: BTreeMap::new(),
            stale_rejected: 0,
        };
        let Some(store) = &c.store else {
            return Ok(c);
        };
        let ((next_job, next_run), records) = store.load()?;
        c.next_job = next_job;
        c.next_run = next_run;
        for record in records {
            let number = record.id[4..].parse::<u64>().unwrap_or(0);
            c.next_job = c.next_job.max(number + 1);
            for &run in &record.runs {
                c.next_run = c.next_run.max(run + 1);
                c.run_owner.insert(run, record.id.clone());
            }
            let job = Job::recover(&mut c, record);
            c.jobs.insert(job.id().to_owned(), job);
        }
        Ok(c)
    }

    fn add_node(&mut self, conn: Connection, name: String, slots: u32) -> Option<u64> {
        if slots == 0 || slots > 4096 {
            let reason = format!("{slots} worker slots");
            let _ = protocol::send(&conn, &Msg::Refused { reason });
            conn.close();
            return None;
        }
        let id = self.next_node;
        self.next_node += 1;
        let addr = conn.peer_addr();
        tracing::info!(node = %name, %addr, slots, "worker node registered");
        if protocol::send(&conn, &Msg::Registered { node_id: id }).is_err() {
            return None;
        }
        let node = Node {
            name,
            addr,
            conn,
            slots,
            used: 0,
            last_heard_ms: self.clock.now_ms(),
        };
        self.nodes.insert(id, node);
        Some(id)
    }

    fn heard(&mut self, id: u64) {
        let now = self.clock.now_ms();
        if let Some(n) = self.nodes.get_mut(&id) {
            n.last_heard_ms = now;
        }
    }

    /// A node's connection ended or went silent: its runs fail over.
    pub(crate) fn node_lost(&mut self, id: u64, why: &str) {
        let Some(node) = self.nodes.remove(&id) else {
            return;
        };
        node.conn.close();
        tracing::warn!(node = %node.name, addr = %node.addr, "worker node lost: {why}");
        let what = format!("worker node '{}' ({}) lost: {why}", node.name, node.addr);
        let ids: Vec<String> = self.jobs.keys().cloned().collect();
        for job_id in ids {
            self.with_job(&job_id, |job, c| job.node_lost(c, id, &what));
        }
    }

    fn node_message(&mut self, node: u64, msg: Msg) {
        let run = match &msg {
            Msg::Prepared { run, .. }
            | Msg::Running { run, .. }
            | Msg::Ack { run, .. }
            | Msg::Declined { run, .. }
            | Msg::Finished { run, .. }
            | Msg::RunEnded { run, .. }
            | Msg::Committed { run, .. } => *run,
            other => {
                tracing::warn!(node, "unexpected message from a worker node: {other:?}");
                return;
            }
        };
        let owner = self
            .jobs
            .iter()
            .find(|(_, j)| j.run_id() == Some(run))
            .map(|(id, _)| id.clone());
        // An acknowledgement may complete a checkpoint: the job is ticked at once, not at
        // its next periodic tick.
        let ack = matches!(msg, Msg::Ack { .. });
        match owner {
            Some(job_id) => {
                let mut given_back = None;
                self.with_job(&job_id, |job, c| {
                    given_back = job.node_message(c, node, msg);
                });
                match given_back {
                    Some(msg) => self.reject_stale(node, run, &msg),
                    None if ack => self.with_job(&job_id, |job, c| job.tick(c)),
                    None => {}
                }
            }
            None => self.reject_stale(node, run, &msg),
        }
    }

    /// A message of run `run`, which is no job's current run or not one `node` has a part
    /// in: rejected and counted. When the stale part says it ended, its job decides what the
    /// node does with it.
    fn reject_stale(&mut self, node: u64, run: u64, msg: &Msg) {
        self.stale_rejected += 1;
        let name = self.nodes.get(&node).map_or("?", |n| n.name.as_str());
        tracing::warn!(
            "rejected a stale message of run {run} from node {name} ({} so far)",
            self.stale_rejected
        );
        if !matches!(msg, Msg::RunEnded { .. }) {
            return;
        }
        match self.run_owner.get(&run).cloned() {
            Some(job_id) if self.jobs.contains_key(&job_id) => {
                self.with_job(&job_id, |job, c| job.fence(c, node, run));
            }
            _ => {
                if let Some(n) = self.nodes.get(&node) {
                    let _ = protocol::send(&n.conn, &Msg::Cancel { run, abort: false });
                }
            }
        }
    }

    /// Runs `f` on job `id` with the rest of the state beside it.
    fn with_job(&mut self, id: &str, f: impl FnOnce(&mut Job, &mut Coord)) {
        if let Some(mut job) = self.jobs.remove(id) {
            f(&mut job, self);
            self.jobs.insert(id.to_owned(), job);
        }
    }

    fn tick(&mut self) {
        let now = self.clock.now_ms();
        if now.saturating_sub(self.last_heartbeat_ms) >= HEARTBEAT_INTERVAL.as_millis() as u64 {
            self.last_heartbeat_ms = now;
            self.sequence += 1;
            let timeout = self.opts.cluster.heartbeat_timeout.as_millis() as u64;
            let mut silent = Vec::new();
            for (&id, node) in &self.nodes {
                let _ = protocol::heartbeat(&node.conn, self.sequence);
                if now.saturating_sub(node.last_heard_ms) > timeout {
                    silent.push(id);
                }
            }
            for id in silent {
                self.node_lost(id, &format!("no heartbeat for {timeout} ms"));
            }
        }
        let ids: Vec<String> = self.jobs.keys().cloned().collect();
        for id in ids {
            self.with_job(&id, |job, c| job.tick(c));
        }
    }

    /// Free worker slots, per node in id order.
    pub(crate) fn free_slots(&self) -> Vec<(u64, u32)> {
        self.nodes
            .iter()
            .map(|(&id, n)| (id, n.slots.saturating_sub(n.used)))
            .filter(|(_, free)| *free > 0)
            .collect()
    }

    fn client_request(&mut self, conn: Connection, request: Msg) {
        let reply = match request {
            Msg::Submit { job, args, workers } => {
                self.submit(conn, job, args, workers);
                return;
            }
            Msg::List => Msg::Jobs {
                jobs: self.jobs.values().map(Job::row).collect(),
                nodes: self
                    .nodes
                    .values()
                    .map(|n| NodeRow {
                        name: n.name.clone(),
                        addr: n.addr.to_string(),
                        slots: n.slots,
                        used: n.used,
                    })
                    .collect(),
            },
            Msg::Watch { job_id } => {
                let mut known = false;
                self.with_job(&job_id, |job, _| {
                    known = true;
                    job.watch(conn.clone());
                });
                if known {
                    return;
                }
                no_such_job(&job_id)
            }
            Msg::CancelJob { job_id } => {
                let mut reply = None;
                self.with_job(&job_id, |job, c| reply = Some(job.cancel(c)));
                reply.unwrap_or_else(|| no_such_job(&job_id))
            }
            Msg::Savepoint { job_id, dir } => {
                let default_root = self
                    .opts
                    .checkpoint_dir
                    .as_ref()
                    .map(|d| d.join("savepoints"));
                let mut reply: Option<Option<Msg>> = None;
                self.with_job(&job_id, |job, _| {
                    reply = Some(job.savepoint(conn.clone(), dir.map(PathBuf::from), default_root))
                });
                match reply {
                    // The answer comes when the savepoint is complete.
                    Some(None) => return,
                    Some(Some(r)) => r,
                    None => no_such_job(&job_id),
                }
            }
            other => Msg::Refused {
                reason: format!("not a request: {other:?}"),
            },
        };
        let _ = protocol::send(&conn, &reply);
        conn.close();
    }

    fn submit(&mut self, conn: Connection, name: String, args: Vec<String>, workers: Option<u32>) {
        let id = format!("job-{:04}", self.next_job);
        let args = self.with_default_checkpoint_dir(&id, args);
        // Built and checked once now (inputs exist, outputs are directories), so that an
        // unknown job, bad options or a missing input fail the request itself.
        let built = match self
            .catalog
            .build(&name, &args)
            .and_then(|b| self.dry_run(b))
        {
            Ok(built) => built,
            Err(message) => {
                let _ = protocol::send(&conn, &Msg::Failed { message });
                conn.close();
                return;
            }
        };
        let job = Job::new(
            id.clone(),
            name.clone(),
            args,
            workers,
            built.config,
            conn.clone(),
        );
        // Durable before the client hears of it.
        let stored = match &self.store {
            Some(store) => store
                .save_counters(self.next_job + 1, self.next_run)
                .and_then(|()| store.save(&job.record())),
            None => Ok(()),
        };
        if let Err(message) = stored {
            let _ = protocol::send(&conn, &Msg::Failed { message });
            conn.close();
            return;
        }
        self.next_job += 1;
        let _ = protocol::send(&conn, &Msg::Submitted { job_id: id.clone() });
        tracing::info!(job = %id, name = %name, "job submitted");
        self.jobs.insert(id, job);
    }

    /// Writes job `job`'s record to the store (if any).
    pub(crate) fn persist(&self, job: &Job) -> Result<(), String> {
        match &self.store {
            Some(store) => store.save(&job.record()),
            None => Ok(()),
        }
    }

    /// Takes the next run id, durably (a restarted coordinator never reuses it).
    pub(crate) fn take_run_id(&mut self, job_id: &str) -> Result<u64, String> {
        let run = self.next_run;
        if let Some(store) = &self.store {
            store.save_counters(self.next_job, run + 1)?;
        }
        self.next_run += 1;
        self.run_owner.insert(run, job_id.to_owned());
        Ok(run)
    }

    /// Prepares the stages of a job built for checking, as a run would (without settling
    /// outputs).
    fn dry_run(&self, built: crate::BuiltJob) -> Result<crate::BuiltJob, String> {
        let workers = self
            .nodes
            .values()
            .map(|n| n.slots as usize)
            .sum::<usize>()
            .max(1);
        let metrics = sluice_core::metrics::JobMetrics::new(workers);
        for stage in &built.graph.stages {
            stage
                .prepare(&sluice_core::graph::Prepare {
                    workers,
                    metrics: &metrics,
                    restored_id: 0,
                    restored_run: 0,
                    restore: None,
                    settle_output: false,
                })
                .map_err(|e| e.to_string())?;
        }
        Ok(built)
    }

    /// A job with a checkpoint interval but no directory checkpoints under the coordinator's
    /// root, `DIR/<job id>`.
    fn with_default_checkpoint_dir(&self, id: &str, mut args: Vec<String>) -> Vec<String> {
        let has = |flag: &str| {
            args.iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        if let Some(root) = &self.opts.checkpoint_dir
            && has("--checkpoint-interval-ms")
            && !has("--checkpoint-dir")
        {
            args.push("--checkpoint-dir".into());
            args.push(root.join(id).display().to_string());
        }
        args
    }
}

fn no_such_job(id: &str) -> Msg {
    Msg::Failed {
        message: format!("no job '{id}' (see `sluice list`)"),
    }
}
