//! The job graph: stages (chains of operators between exchanges) joined by edges.
//!
//! A stage is either a *source stage* (splits of a source → chain → output) or a *gate
//! stage* (the receiving ends of one or more edges → chain → output); their drivers are in
//! [`crate::stage`]. The output of a stage is an edge to the next stage or a sink
//! ([`OutputSpec`]), plus any side outputs ([`SideOutputSpec`]). Every stage runs on every
//! worker, as a glommio task on that worker's executor.
#![allow(async_fn_in_trait)]

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::chain::{Collector, Outbox, OutboxRef};
use crate::checkpoint::CheckpointControl;
use crate::checkpoint::metadata::StageMetadata;
use crate::context::ContextBuilder;
use crate::element::{CheckpointBarrier, Watermark, WatermarkStatus};
use crate::error::Result;
use crate::exchange::{
    AnyEdge, BroadcastTail, Edge, ExchangeSender, ExchangeTail, ForwardPartitioner,
    HashPartitioner, OutputDrain, Partitioner, RebalancePartitioner,
};
use crate::key::{Key, KeyGroups};
use crate::metrics::JobMetrics;
use crate::sink::{Sink, SinkContext, SinkDrain};
use crate::state::{StateRestore, StateSettings};

/// What a stage instance knows about where it runs.
#[derive(Clone)]
pub struct WorkerContext {
    /// This worker's index.
    pub worker: usize,
    /// Number of workers.
    pub workers: usize,
    /// The job's key groups over its workers.
    pub key_groups: KeyGroups,
    /// The job's counters.
    pub metrics: Arc<JobMetrics>,
    /// The stage's index in the job graph (set per stage instance).
    pub stage: usize,
    /// Checkpoint triggers and acknowledgements, when the job takes checkpoints.
    pub checkpoints: Option<Arc<CheckpointControl>>,
    /// Records per second each source stage may emit over all its workers (`--rate`).
    pub source_rate: Option<f64>,
    /// The checkpoint the job resumed from (0: a fresh start).
    pub restored_id: u64,
    /// The run (a cluster's deployment of the job) this worker belongs to; 0 in one process.
    pub run: u64,
    /// Where stateful stages keep their stores.
    pub state: Option<Arc<StateSettings>>,
    /// Per stage, where its state comes from on a restore.
    pub state_restore: Arc<Vec<Option<StateRestore>>>,
    cancelled: Arc<AtomicBool>,
}

impl WorkerContext {
    /// A context for worker `worker`.
    pub fn new(
        worker: usize,
        key_groups: KeyGroups,
        metrics: Arc<JobMetrics>,
        cancelled: Arc<AtomicBool>,
    ) -> WorkerContext {
        let workers = key_groups.workers() as usize;
        WorkerContext {
            worker,
            workers,
            key_groups,
            metrics,
            stage: 0,
            checkpoints: None,
            source_rate: None,
            restored_id: 0,
            run: 0,
            state: None,
            state_restore: Arc::new(Vec::new()),
            cancelled,
        }
    }
    /// Whether the job is being torn down because something failed.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
    /// The job's cancellation flag, for waits that must give up when the job is torn down.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancelled.clone()
    }
    /// Tears the job down.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// A stage running on one worker.
pub type StageFuture = Pin<Box<dyn Future<Output = Result<()>>>>;

/// What a stage learns before its workers start.
pub struct Prepare<'a> {
    /// Number of workers.
    pub workers: usize,
    /// The job's counters.
    pub metrics: &'a JobMetrics,
    /// The checkpoint the job resumes from (0: none).
    pub restored_id: u64,
    /// The run that took that checkpoint (its metadata's `run`; 0: in one process).
    pub restored_run: u64,
    /// This stage's part of that checkpoint.
    pub restore: Option<&'a StageMetadata>,
    /// Whether to settle what earlier runs left in the outputs (commit what the restored
    /// checkpoint covers, remove the rest): once per run, by one process. The nodes of a
    /// cluster leave it to the coordinator, which does it before any of them starts.
    pub settle_output: bool,
}

impl Prepare<'_> {
    /// The checkpoint an output settles against: the restored one, or 0 (nothing to settle)
    /// when this process must not settle outputs.
    pub fn settle_id(&self) -> u64 {
        if self.settle_output {
            self.restored_id
        } else {
            0
        }
    }
}

/// A stage of the job graph, instantiated once per worker.
pub trait StageFactory: Send + Sync {
    /// The stage's name: its head, its operators and its output, joined by `->`.
    fn name(&self) -> String;
    /// Checks inputs and outputs and takes in what a restore hands it, once, before any worker
    /// starts (and again before each restart).
    fn prepare(&self, p: &Prepare<'_>) -> Result<()>;
    /// Whether the stage can resume from a checkpoint without loss: its sources can replay.
    fn replayable(&self) -> bool {
        true
    }
    /// The stage's task on one worker (called on that worker's thread).
    fn instantiate(&self, ctx: WorkerContext) -> StageFuture;
    /// Checkpoint `id` is complete: commit what the stage's sink wrote before its barrier.
    fn commit_checkpoint(&self, _id: u64) -> Result<()> {
        Ok(())
    }
    /// Commits the stage's output after the job succeeded (see [`Sink::commit`]).
    fn commit(&self) -> Result<()>;
    /// Discards the stage's uncommitted output after the job failed.
    fn abort(&self);
}

/// A whole job: its stages and the edges between them.
#[derive(Default)]
pub struct JobGraph {
    /// The stages, sources first.
    pub stages: Vec<Box<dyn StageFactory>>,
    /// The edges, materialized when the job starts.
    pub edges: Vec<Arc<dyn AnyEdge>>,
}

impl JobGraph {
    /// The physical plan as text, one stage per line.
    pub fn describe(&self) -> String {
        describe_stages(&self.stages)
    }
}

/// The physical plan of `stages` as text, one stage per line.
pub fn describe_stages(stages: &[Box<dyn StageFactory>]) -> String {
    stages
        .iter()
        .enumerate()
        .map(|(i, s)| format!("stage {i}: {}\n", s.name()))
        .collect()
}

/// Where a stage's chain ends.
pub trait OutputSpec<T>: Send + Sync + 'static {
    /// The chain's last collector.
    type Tail: Collector<T>;
    /// What drains the stage's outbox.
    type Drain: OutputDrain<T>;
    /// A short description for the plan.
    fn describe(&self) -> String;
    /// Checks the destination before the job starts; after a restore from checkpoint
    /// `restored_id` (0: none) taken by run `restored_run`, settles what earlier runs left.
    fn prepare(&self, _workers: usize, _restored_id: u64, _restored_run: u64) -> Result<()> {
        Ok(())
    }
    /// Checkpoint `id` is complete: commit what was written before its barrier.
    fn commit_checkpoint(&self, _id: u64) -> Result<()> {
        Ok(())
    }
    /// Commits the output after the job succeeded.
    fn commit(&self) -> Result<()> {
        Ok(())
    }
    /// Discards uncommitted output after the job failed.
    fn abort(&self) {}
    /// Opens the output on one worker.
    async fn open(
        &self,
        ctx: &WorkerContext,
        outbox: OutboxRef<T>,
        stage: &str,
    ) -> Result<(Self::Tail, Self::Drain)>;
}

/// Makes a worker's [`Partitioner`] for an edge.
pub trait PartitionerFactory<T>: Send + Sync + 'static {
    /// The partitioner.
    type P: Partitioner<T>;
    /// One for worker `ctx.worker`, over `targets` targets.
    fn make(&self, ctx: &WorkerContext, targets: usize) -> Self::P;
    /// The exchange's name in plans.
    fn name(&self) -> &'static str;
}

/// Forward partitioning.
#[derive(Clone, Copy, Debug)]
pub struct Forward;
/// Round-robin partitioning.
#[derive(Clone, Copy, Debug)]
pub struct Rebalance;
/// Key-group partitioning of `(key, value)` records.
#[derive(Clone, Copy, Debug)]
pub struct HashByKey;

impl<T: 'static> PartitionerFactory<T> for Forward {
    type P = ForwardPartitioner;
    fn make(&self, _ctx: &WorkerContext, _targets: usize) -> ForwardPartitioner {
        ForwardPartitioner
    }
    fn name(&self) -> &'static str {
        "forward"
    }
}

impl<T: 'static> PartitionerFactory<T> for Rebalance {
    type P = RebalancePartitioner;
    fn make(&self, ctx: &WorkerContext, targets: usize) -> RebalancePartitioner {
        RebalancePartitioner::new(ctx.worker, targets)
    }
    fn name(&self) -> &'static str {
        "rebalance"
    }
}

impl<K: Key, V: 'static> PartitionerFactory<(K, V)> for HashByKey {
    type P = HashPartitioner;
    fn make(&self, ctx: &WorkerContext, _targets: usize) -> HashPartitioner {
        HashPartitioner::new(ctx.key_groups)
    }
    fn name(&self) -> &'static str {
        "hash"
    }
}

/// A stage output into an edge, routed by `PF`.
pub struct ToEdge<T: Send, PF> {
    edge: Arc<Edge<T>>,
    partitioner: PF,
}

impl<T: Send + 'static, PF> ToEdge<T, PF> {
    /// Output into `edge`.
    pub fn new(edge: Arc<Edge<T>>, partitioner: PF) -> Self {
        ToEdge { edge, partitioner }
    }
}

impl<T: Send + 'static, PF: PartitionerFactory<T>> OutputSpec<T> for ToEdge<T, PF> {
    type Tail = ExchangeTail<T, PF::P>;
    type Drain = ExchangeSender<T>;
    fn describe(&self) -> String {
        self.partitioner.name().to_owned()
    }
    async fn open(
        &self,
        ctx: &WorkerContext,
        outbox: OutboxRef<T>,
        stage: &str,
    ) -> Result<(Self::Tail, Self::Drain)> {
        let sender = ExchangeSender::connect(
            self.edge.take_senders(ctx.worker)?,
            stage,
            ctx.cancel_flag(),
        )
        .await?;
        let targets = sender.targets();
        let tail = ExchangeTail::new(self.partitioner.make(ctx, targets), targets, outbox);
        Ok((tail, sender))
    }
}

/// A stage output copied to every worker.
pub struct ToBroadcast<T: Send> {
    edge: Arc<Edge<T>>,
}

impl<T: Send + 'static> ToBroadcast<T> {
    /// Output into `edge`.
    pub fn new(edge: Arc<Edge<T>>) -> Self {
        ToBroadcast { edge }
    }
}

impl<T: Clone + Send + 'static> OutputSpec<T> for ToBroadcast<T> {
    type Tail = BroadcastTail<T>;
    type Drain = ExchangeSender<T>;
    fn describe(&self) -> String {
        "broadcast".to_owned()
    }
    async fn open(
        &self,
        ctx: &WorkerContext,
        outbox: OutboxRef<T>,
        stage: &str,
    ) -> Result<(Self::Tail, Self::Drain)> {
        let sender = ExchangeSender::connect(
            self.edge.take_senders(ctx.worker)?,
            stage,
            ctx.cancel_flag(),
        )
        .await?;
        Ok((BroadcastTail::new(sender.targets(), outbox), sender))
    }
}

/// A stage output into a sink.
pub struct ToSink<S> {
    sink: S,
}

impl<S> ToSink<S> {
    /// Output into `sink`.
    pub fn new(sink: S) -> Self {
        ToSink { sink }
    }
}

impl<T: 'static, S: Sink<T>> OutputSpec<T> for ToSink<S> {
    type Tail = crate::chain::SinkTail<T>;
    type Drain = SinkDrain<S::Writer>;
    fn describe(&self) -> String {
        format!("Sink: {}", self.sink.name())
    }
    fn prepare(&self, workers: usize, restored_id: u64, restored_run: u64) -> Result<()> {
        self.sink.prepare(workers)?;
        self.sink.recover(restored_id, restored_run)
    }
    fn commit_checkpoint(&self, id: u64) -> Result<()> {
        self.sink.commit_checkpoint(id)
    }
    fn commit(&self) -> Result<()> {
        self.sink.commit()
    }
    fn abort(&self) {
        self.sink.abort();
    }
    async fn open(
        &self,
        ctx: &WorkerContext,
        outbox: OutboxRef<T>,
        _stage: &str,
    ) -> Result<(Self::Tail, Self::Drain)> {
        let sctx = SinkContext {
            worker: ctx.worker,
            workers: ctx.workers,
            restored_id: ctx.restored_id,
            run: ctx.run,
        };
        let writer = self.sink.open(&sctx).await?;
        Ok((crate::chain::SinkTail::new(outbox), SinkDrain::new(writer)))
    }
}

/// The future that opens a side output on one worker.
pub type OpenSide<'a> = Pin<Box<dyn Future<Output = Result<Box<dyn SidePort>>> + 'a>>;

/// A side output of a stage, type-erased so a stage can have any number of them: the edge
/// that carries the records emitted to one [`OutputTag`](crate::context::OutputTag) to the
/// stage that reads them.
pub trait SideOutputSpec: Send + Sync + 'static {
    /// The tag's id.
    fn tag_id(&self) -> u64;
    /// A short description for the plan.
    fn describe(&self) -> String;
    /// Opens the side output on one worker: connects the edge and registers the port that
    /// operators emit into with `builder`. Returns the driver's end.
    fn open<'a>(
        &'a self,
        ctx: &'a WorkerContext,
        builder: &'a mut ContextBuilder,
        stage: &'a str,
    ) -> OpenSide<'a>;
}

/// The driver's end of an open side output: control elements go to it in stream order, and
/// the driver drains what operators emitted into its channel.
pub trait SidePort {
    /// The stage's watermark advanced (after the chain saw it).
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()>;
    /// The stage became idle or active.
    fn on_status(&mut self, status: WatermarkStatus) -> Result<()>;
    /// A checkpoint barrier passes.
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()>;
    /// Hand partial batches on.
    fn flush(&mut self) -> Result<()>;
    /// The stage ended.
    fn on_end(&mut self) -> Result<()>;
    /// Whether anything waits to be sent.
    fn has_output(&self) -> bool;
    /// Sends what waits, awaiting channel capacity.
    fn drain(&mut self) -> Pin<Box<dyn Future<Output = Result<()>> + '_>>;
}

/// A side output carried to the same worker by a forward edge.
pub struct ToSide<T: Send> {
    tag_id: u64,
    name: String,
    edge: Arc<Edge<T>>,
}

impl<T: Send + 'static> ToSide<T> {
    /// Side output `tag_id` (named `name` in plans) into `edge`.
    pub fn new(tag_id: u64, name: &str, edge: Arc<Edge<T>>) -> Self {
        ToSide {
            tag_id,
            name: name.to_owned(),
            edge,
        }
    }
}

type SideTail<T> = ExchangeTail<T, ForwardPartitioner>;

struct ForwardSidePort<T: Send> {
    tail: Rc<RefCell<SideTail<T>>>,
    outbox: OutboxRef<T>,
    sender: ExchangeSender<T>,
}

impl<T: Send + 'static> SideOutputSpec for ToSide<T> {
    fn tag_id(&self) -> u64 {
        self.tag_id
    }
    fn describe(&self) -> String {
        format!("side output '{}'", self.name)
    }
    fn open<'a>(
        &'a self,
        ctx: &'a WorkerContext,
        builder: &'a mut ContextBuilder,
        stage: &'a str,
    ) -> OpenSide<'a> {
        Box::pin(async move {
            let senders = self.edge.take_senders(ctx.worker)?;
            let sender = ExchangeSender::connect(senders, stage, ctx.cancel_flag()).await?;
            let outbox = Outbox::new_ref();
            let tail = Rc::new(RefCell::new(ExchangeTail::new(
                ForwardPartitioner,
                1,
                outbox.clone(),
            )));
            let port: Rc<RefCell<dyn Collector<T>>> = tail.clone();
            builder.side_output(self.tag_id, port);
            let side: Box<dyn SidePort> = Box::new(ForwardSidePort {
                tail,
                outbox,
                sender,
            });
            Ok(side)
        })
    }
}

impl<T: Send + 'static> SidePort for ForwardSidePort<T> {
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        self.tail.borrow_mut().on_watermark(watermark)
    }
    fn on_status(&mut self, status: WatermarkStatus) -> Result<()> {
        self.tail.borrow_mut().on_status(status)
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.tail.borrow_mut().on_barrier(barrier)
    }
    fn flush(&mut self) -> Result<()> {
        self.tail.borrow_mut().flush()
    }
    fn on_end(&mut self) -> Result<()> {
        self.tail.borrow_mut().on_end()
    }
    fn has_output(&self) -> bool {
        !self.outbox.borrow().is_empty()
    }
    fn drain(&mut self) -> Pin<Box<dyn Future<Output = Result<()>> + '_>> {
        Box::pin(self.sender.drain(&self.outbox))
    }
}
