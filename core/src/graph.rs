//! The job graph: stages (chains of operators between exchanges) joined by edges, and the
//! drivers that run one stage on one worker.
//!
//! A stage is either a *source stage* (splits of a [`Source`] → chain → output) or a *gate
//! stage* (the receiving ends of one or more edges → chain → output). The output of a stage is
//! an edge to the next stage or a sink ([`OutputSpec`]). Every stage runs on every worker, as a
//! glommio task on that worker's executor.
#![allow(async_fn_in_trait)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_lite::future::poll_once;

use crate::chain::{Collector, Outbox, OutboxRef, Pipe};
use crate::element::{BATCH_RECORDS_MAX, StreamElement, Watermark};
use crate::error::{Error, Result};
use crate::exchange::{
    AnyEdge, BroadcastTail, Edge, ExchangeSender, ExchangeTail, ForwardPartitioner,
    HashPartitioner, InputGate, OutputDrain, Partitioner, RebalancePartitioner, WatermarkTracker,
    unless_cancelled,
};
use crate::key::{Key, KeyGroups};
use crate::metrics::JobMetrics;
use crate::sink::{Sink, SinkContext, SinkDrain};
use crate::source::{ReadStatus, Source, SourceContext, SourceReader};

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

/// A stage of the job graph, instantiated once per worker.
pub trait StageFactory: Send + Sync {
    /// The stage's name: its head, its operators and its output, joined by `->`.
    fn name(&self) -> String;
    /// Checks inputs and outputs, once, before any worker starts.
    fn prepare(&self, workers: usize, metrics: &JobMetrics) -> Result<()>;
    /// The stage's task on one worker (called on that worker's thread).
    fn instantiate(&self, ctx: WorkerContext) -> StageFuture;
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
    /// Checks the destination before the job starts.
    fn prepare(&self, _workers: usize) -> Result<()> {
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
        .await;
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
        .await;
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
    fn prepare(&self, workers: usize) -> Result<()> {
        self.sink.prepare(workers)
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
        };
        let writer = self.sink.open(&sctx).await?;
        Ok((crate::chain::SinkTail::new(outbox), SinkDrain::new(writer)))
    }
}

fn stage_name(head: String, names: &[String], out: String) -> String {
    let mut parts = vec![head];
    parts.extend(names.iter().cloned());
    parts.push(out);
    parts.join(" -> ")
}

/// A stage that reads a source.
pub struct SourceStage<S: Source, P, O> {
    inner: Arc<SourceInner<S, P, O>>,
}

struct SourceInner<S: Source, P, O> {
    source: S,
    pipe: P,
    out: O,
    name: String,
    splits: Mutex<Vec<S::Split>>,
}

impl<S, P, O> SourceStage<S, P, O>
where
    S: Source,
    P: Pipe<S::Item>,
    O: OutputSpec<P::Out>,
{
    /// `source` → `pipe` → `out`.
    pub fn new(source: S, pipe: P, out: O) -> Self {
        let mut names = Vec::new();
        pipe.names(&mut names);
        let name = stage_name(format!("Source: {}", source.name()), &names, out.describe());
        SourceStage {
            inner: Arc::new(SourceInner {
                source,
                pipe,
                out,
                name,
                splits: Mutex::new(Vec::new()),
            }),
        }
    }
}

impl<S, P, O> StageFactory for SourceStage<S, P, O>
where
    S: Source,
    P: Pipe<S::Item>,
    O: OutputSpec<P::Out>,
{
    fn name(&self) -> String {
        self.inner.name.clone()
    }
    fn prepare(&self, workers: usize, metrics: &JobMetrics) -> Result<()> {
        let splits = self.inner.source.splits(workers)?;
        for split in &splits {
            metrics.add_input_bytes_total(self.inner.source.split_bytes(split).unwrap_or(0));
        }
        self.inner.out.prepare(workers)?;
        *self.inner.splits.lock().unwrap_or_else(|e| e.into_inner()) = splits;
        Ok(())
    }
    fn instantiate(&self, ctx: WorkerContext) -> StageFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.run(ctx).await })
    }
    fn commit(&self) -> Result<()> {
        self.inner.out.commit()
    }
    fn abort(&self) {
        self.inner.out.abort();
    }
}

impl<S, P, O> SourceInner<S, P, O>
where
    S: Source,
    P: Pipe<S::Item>,
    O: OutputSpec<P::Out>,
{
    async fn run(&self, ctx: WorkerContext) -> Result<()> {
        let splits: Vec<S::Split> = {
            let all = self.splits.lock().unwrap_or_else(|e| e.into_inner());
            all.iter()
                .skip(ctx.worker)
                .step_by(ctx.workers)
                .cloned()
                .collect()
        };
        let outbox = Outbox::new_ref();
        let (tail, mut drain) = self.out.open(&ctx, outbox.clone(), &self.name).await?;
        let mut chain = self.pipe.clone().attach(tail);
        let sctx = SourceContext::new(ctx.worker, ctx.workers, ctx.metrics.clone());
        let counters = ctx.metrics.worker(ctx.worker);
        let mut buf = Vec::with_capacity(BATCH_RECORDS_MAX);
        for split in splits {
            let mut reader = self.source.open(split, None, &sctx).await?;
            let cancelled = ctx.cancel_flag();
            loop {
                // A read may wait indefinitely (a quiet socket): it must not keep a failed job
                // from ending.
                let read = reader.read_batch(&mut buf, BATCH_RECORDS_MAX);
                let status = unless_cancelled(read, &cancelled).await?;
                let n = buf.len();
                debug_assert!(n <= BATCH_RECORDS_MAX, "n={n}");
                counters.add_records(n as u64);
                for record in buf.drain(..) {
                    chain.collect(record)?;
                }
                if n < BATCH_RECORDS_MAX {
                    // The source is not saturated: do not hold partial batches back.
                    chain.flush()?;
                }
                drain.drain(&outbox).await?;
                if ctx.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                if status == ReadStatus::End {
                    break;
                }
                // A reader that never waits must not starve the worker's other stages.
                glommio::yield_if_needed().await;
            }
        }
        chain.on_watermark(Watermark::MAX)?;
        chain.on_end()?;
        drain.drain(&outbox).await
    }
}

/// A stage fed by edges.
pub struct GateStage<In: Send, P, O> {
    inner: Arc<GateInner<In, P, O>>,
}

struct GateInner<In: Send, P, O> {
    inputs: Vec<Arc<Edge<In>>>,
    pipe: P,
    out: O,
    name: String,
}

impl<In, P, O> GateStage<In, P, O>
where
    In: Send + 'static,
    P: Pipe<In>,
    O: OutputSpec<P::Out>,
{
    /// `inputs` → `pipe` → `out`.
    pub fn new(inputs: Vec<Arc<Edge<In>>>, pipe: P, out: O) -> Self {
        let mut names = Vec::new();
        pipe.names(&mut names);
        let head = match inputs.len() {
            1 => "Exchange".to_owned(),
            n => format!("Union of {n}"),
        };
        let name = stage_name(head, &names, out.describe());
        GateStage {
            inner: Arc::new(GateInner {
                inputs,
                pipe,
                out,
                name,
            }),
        }
    }
}

impl<In, P, O> StageFactory for GateStage<In, P, O>
where
    In: Send + 'static,
    P: Pipe<In>,
    O: OutputSpec<P::Out>,
{
    fn name(&self) -> String {
        self.inner.name.clone()
    }
    fn prepare(&self, workers: usize, _metrics: &JobMetrics) -> Result<()> {
        self.inner.out.prepare(workers)
    }
    fn instantiate(&self, ctx: WorkerContext) -> StageFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.run(ctx).await })
    }
    fn commit(&self) -> Result<()> {
        self.inner.out.commit()
    }
    fn abort(&self) {
        self.inner.out.abort();
    }
}

impl<In, P, O> GateInner<In, P, O>
where
    In: Send + 'static,
    P: Pipe<In>,
    O: OutputSpec<P::Out>,
{
    async fn run(&self, ctx: WorkerContext) -> Result<()> {
        let mut receivers = Vec::new();
        for edge in &self.inputs {
            receivers.extend(edge.take_receivers(ctx.worker)?);
        }
        let mut gate = InputGate::connect(receivers, &self.name).await;
        let outbox = Outbox::new_ref();
        let (tail, mut drain) = self.out.open(&ctx, outbox.clone(), &self.name).await?;
        let mut chain = self.pipe.clone().attach(tail);
        let mut watermarks = WatermarkTracker::new(gate.inputs());
        loop {
            let next = match poll_once(gate.recv()).await {
                Some(next) => next?,
                None => {
                    // Nothing is ready: hand partial batches on before waiting.
                    chain.flush()?;
                    drain.drain(&outbox).await?;
                    gate.recv().await?
                }
            };
            let Some((input, element)) = next else { break };
            match element {
                StreamElement::Records(mut batch) => {
                    for record in batch.drain(..) {
                        chain.collect(record)?;
                    }
                }
                StreamElement::Watermark(w) => {
                    if let Some(w) = watermarks.update(input, w) {
                        chain.on_watermark(w)?;
                    }
                }
                // Alignment across inputs comes with checkpoints.
                StreamElement::Barrier(b) => chain.on_barrier(b)?,
                StreamElement::EndOfInput => {
                    if let Some(w) = watermarks.end(input) {
                        chain.on_watermark(w)?;
                    }
                }
            }
            drain.drain(&outbox).await?;
            if ctx.is_cancelled() {
                return Err(Error::Cancelled);
            }
        }
        chain.on_end()?;
        drain.drain(&outbox).await
    }
}
