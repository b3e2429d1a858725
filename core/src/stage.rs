//! The drivers that run one stage on one worker: [`SourceStage`] (splits of a source → chain
//! → outputs) and [`GateStage`] (input channels → chain → outputs).
//!
//! A driver owns its chain and moves everything else around it: it reads batches from the
//! source or the input gate and pushes them through the chain, keeps the stage's combined
//! watermark and status ([`WatermarkTracker`]), tells the chain the watermark of the input each
//! batch came from (for lateness), calls the chain back when a processing-time deadline that an
//! operator asked for has passed, passes control elements to the side outputs after the chain
//! saw them, and drains the stage's outbox into channels or a sink, awaiting capacity
//! (backpressure). Processing-time deadlines also interrupt a wait for input, so a processing
//! time window fires on a quiet stream.

use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::future::{or, poll_once};

use crate::chain::{Collector, Outbox, OutboxRef, Pipe};
use crate::context::{ContextBuilder, OperatorContext};
use crate::element::{
    BATCH_RECORDS_MAX, Batch, CheckpointBarrier, StreamElement, Watermark, WatermarkStatus,
};
use crate::error::{Error, Result};
use crate::exchange::{Edge, InputGate, OutputDrain, WatermarkTracker, unless_cancelled};
use crate::graph::{
    OutputSpec, SideOutputSpec, SidePort, StageFactory, StageFuture, WorkerContext,
};
use crate::metrics::JobMetrics;
use crate::source::{ReadStatus, Source, SourceContext, SourceReader};

/// A stage's running parts on one worker: the chain, where its output goes, its side outputs.
struct Running<In, T, C, D> {
    _in: std::marker::PhantomData<fn(In)>,
    chain: C,
    drain: D,
    outbox: OutboxRef<T>,
    sides: Vec<Box<dyn SidePort>>,
    ctx: OperatorContext,
}

/// Opens a stage's outputs on one worker and attaches its chain in front of them.
async fn open_stage<In, P, O>(
    ctx: &WorkerContext,
    pipe: P,
    out: &O,
    sides: &[Box<dyn SideOutputSpec>],
    name: &str,
    periodic_watermarks: bool,
) -> Result<Running<In, P::Out, P::Op<O::Tail>, O::Drain>>
where
    P: Pipe<In>,
    O: OutputSpec<P::Out>,
{
    let outbox = Outbox::new_ref();
    let (tail, drain) = out.open(ctx, outbox.clone(), name).await?;
    let mut builder = ContextBuilder::new(ctx.worker, ctx.key_groups, name, ctx.metrics.clone());
    builder.periodic_watermarks = periodic_watermarks;
    let mut ports = Vec::with_capacity(sides.len());
    for side in sides {
        ports.push(side.open(ctx, &mut builder, name).await?);
    }
    let op_ctx = builder.build();
    let chain = pipe.attach(tail, &op_ctx);
    Ok(Running {
        _in: std::marker::PhantomData,
        chain,
        drain,
        outbox,
        sides: ports,
        ctx: op_ctx,
    })
}

impl<In, T, C: Collector<In>, D: OutputDrain<T>> Running<In, T, C, D> {
    fn watermark(&mut self, w: Watermark) -> Result<()> {
        self.chain.on_watermark(w)?;
        self.sides.iter_mut().try_for_each(|s| s.on_watermark(w))
    }

    fn status(&mut self, status: WatermarkStatus) -> Result<()> {
        self.chain.on_status(status)?;
        self.sides.iter_mut().try_for_each(|s| s.on_status(status))
    }

    fn barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.chain.on_barrier(barrier)?;
        self.sides
            .iter_mut()
            .try_for_each(|s| s.on_barrier(barrier))
    }

    fn flush(&mut self) -> Result<()> {
        self.chain.flush()?;
        self.sides.iter_mut().try_for_each(|s| s.flush())
    }

    fn end(&mut self) -> Result<()> {
        self.chain.on_end()?;
        self.sides.iter_mut().try_for_each(|s| s.on_end())
    }

    /// Calls the chain back if a processing-time deadline has passed.
    fn fire_due(&mut self) -> Result<()> {
        if self.ctx.next_deadline().is_none() {
            return Ok(());
        }
        let now = self.ctx.processing_time_ms();
        if self.ctx.take_due(now) {
            self.chain.on_processing_time(now)?;
        }
        Ok(())
    }

    /// How long until the next processing-time deadline, if any.
    fn time_to_deadline(&self) -> Option<Duration> {
        let deadline = self.ctx.next_deadline()?;
        let wait = deadline
            .saturating_sub(self.ctx.processing_time_ms())
            .max(0);
        Some(Duration::from_millis(wait as u64))
    }

    /// Sends what the chain emitted, awaiting channel capacity or sink I/O.
    async fn drain(&mut self) -> Result<()> {
        self.drain.drain(&self.outbox).await?;
        for side in &mut self.sides {
            if side.has_output() {
                side.drain().await?;
            }
        }
        Ok(())
    }
}

fn stage_name(
    head: String,
    names: &[String],
    out: String,
    sides: &[Box<dyn SideOutputSpec>],
) -> String {
    let mut parts = vec![head];
    parts.extend(names.iter().cloned());
    parts.push(out);
    let mut name = parts.join(" -> ");
    for side in sides {
        name.push_str(&format!(" (+ {})", side.describe()));
    }
    name
}

/// A stage that reads a source.
pub struct SourceStage<S: Source, P, O> {
    inner: Arc<SourceInner<S, P, O>>,
}

struct SourceInner<S: Source, P, O> {
    source: S,
    pipe: P,
    out: O,
    sides: Vec<Box<dyn SideOutputSpec>>,
    name: String,
    splits: Mutex<Vec<S::Split>>,
}

impl<S, P, O> SourceStage<S, P, O>
where
    S: Source,
    P: Pipe<S::Item>,
    O: OutputSpec<P::Out>,
{
    /// `source` → `pipe` → `out`, with side outputs `sides`.
    pub fn new(source: S, pipe: P, out: O, sides: Vec<Box<dyn SideOutputSpec>>) -> Self {
        let mut names = Vec::new();
        pipe.names(&mut names);
        let head = format!("Source: {}", source.name());
        let name = stage_name(head, &names, out.describe(), &sides);
        SourceStage {
            inner: Arc::new(SourceInner {
                source,
                pipe,
                out,
                sides,
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
        let periodic = !self.source.is_bounded();
        let mut st = open_stage(
            &ctx,
            self.pipe.clone(),
            &self.out,
            &self.sides,
            &self.name,
            periodic,
        )
        .await?;
        let sctx = SourceContext::new(ctx.worker, ctx.workers, ctx.metrics.clone());
        let counters = ctx.metrics.worker(ctx.worker);
        let cancelled = ctx.cancel_flag();
        let mut buf = Batch::with_capacity();
        // Watermarks the source's readers emit themselves, kept monotonic across splits.
        let mut source_watermark = Watermark::MIN;
        for split in splits {
            let mut reader = self.source.open(split, None, &sctx).await?;
            loop {
                let status = read_batch(&mut reader, &mut buf, &mut st, &cancelled).await?;
                let n = buf.len();
                debug_assert!(n <= BATCH_RECORDS_MAX, "n={n}");
                counters.add_records(n as u64);
                buf.drain_into(&mut st.chain)?;
                if n < BATCH_RECORDS_MAX {
                    // The source is not saturated: do not hold partial batches back.
                    st.flush()?;
                }
                if let Some(w) = reader.watermark().filter(|w| *w > source_watermark) {
                    source_watermark = w;
                    st.watermark(w)?;
                }
                st.fire_due()?;
                st.drain().await?;
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
        st.watermark(Watermark::MAX)?;
        st.end()?;
        st.drain().await
    }
}

/// Reads one batch from `reader`, calling the chain back at processing-time deadlines while the
/// read waits, and giving up when the job is cancelled (a quiet socket must not keep a failed
/// job from ending).
async fn read_batch<R, T, C, D>(
    reader: &mut R,
    buf: &mut Batch<R::Item>,
    st: &mut Running<R::Item, T, C, D>,
    cancelled: &std::sync::atomic::AtomicBool,
) -> Result<ReadStatus>
where
    R: SourceReader,
    C: Collector<R::Item>,
    D: OutputDrain<T>,
{
    let mut read = pin!(reader.read_batch(buf, BATCH_RECORDS_MAX));
    if let Some(out) = poll_once(read.as_mut()).await {
        return out;
    }
    loop {
        let Some(wait) = st.time_to_deadline() else {
            return unless_cancelled(read.as_mut(), cancelled).await;
        };
        let woke = or(
            async { Some(unless_cancelled(read.as_mut(), cancelled).await) },
            async {
                glommio::timer::sleep(wait).await;
                None
            },
        )
        .await;
        match woke {
            Some(out) => return out,
            None => {
                st.fire_due()?;
                st.flush()?;
                st.drain().await?;
            }
        }
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
    sides: Vec<Box<dyn SideOutputSpec>>,
    name: String,
}

impl<In, P, O> GateStage<In, P, O>
where
    In: Send + 'static,
    P: Pipe<In>,
    O: OutputSpec<P::Out>,
{
    /// `inputs` → `pipe` → `out`, with side outputs `sides`.
    pub fn new(
        inputs: Vec<Arc<Edge<In>>>,
        pipe: P,
        out: O,
        sides: Vec<Box<dyn SideOutputSpec>>,
    ) -> Self {
        let mut names = Vec::new();
        pipe.names(&mut names);
        let head = match inputs.len() {
            1 => "Exchange".to_owned(),
            n => format!("Union of {n}"),
        };
        let name = stage_name(head, &names, out.describe(), &sides);
        GateStage {
            inner: Arc::new(GateInner {
                inputs,
                pipe,
                out,
                sides,
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
        let mut st = open_stage(
            &ctx,
            self.pipe.clone(),
            &self.out,
            &self.sides,
            &self.name,
            false,
        )
        .await?;
        let mut tracker = WatermarkTracker::new(gate.inputs());
        loop {
            let next = match poll_once(gate.recv()).await {
                Some(next) => next?,
                None => {
                    // Nothing is ready: hand partial batches on before waiting.
                    st.flush()?;
                    st.drain().await?;
                    wait_for_input(&mut gate, &mut st).await?
                }
            };
            let Some((input, element)) = next else { break };
            handle_element(&mut st, &mut tracker, input, element)?;
            st.fire_due()?;
            st.drain().await?;
            if ctx.is_cancelled() {
                return Err(Error::Cancelled);
            }
        }
        st.end()?;
        st.drain().await
    }
}

/// Waits for the gate's next element, calling the chain back at processing-time deadlines
/// meanwhile.
async fn wait_for_input<In, T, C, D>(
    gate: &mut InputGate<In>,
    st: &mut Running<In, T, C, D>,
) -> Result<Option<(usize, StreamElement<In>)>>
where
    In: Send + 'static,
    C: Collector<In>,
    D: OutputDrain<T>,
{
    loop {
        let Some(wait) = st.time_to_deadline() else {
            return gate.recv().await;
        };
        // Dropping a pending `recv` loses nothing: it takes an element only when one is ready.
        let woke = or(async { Some(gate.recv().await) }, async {
            glommio::timer::sleep(wait).await;
            None
        })
        .await;
        match woke {
            Some(next) => return next,
            None => {
                st.fire_due()?;
                st.flush()?;
                st.drain().await?;
            }
        }
    }
}

/// Pushes one element from input `input` through the chain, keeping the stage's watermark.
fn handle_element<In, T, C, D>(
    st: &mut Running<In, T, C, D>,
    tracker: &mut WatermarkTracker,
    input: usize,
    element: StreamElement<In>,
) -> Result<()>
where
    C: Collector<In>,
    D: OutputDrain<T>,
{
    match element {
        StreamElement::Records(mut batch) => {
            st.ctx
                .set_input_watermark(tracker.lateness_watermark(input));
            batch.drain_into(&mut st.chain)
        }
        StreamElement::Watermark(w) => match tracker.update(input, w) {
            Some(w) => st.watermark(w),
            None => Ok(()),
        },
        StreamElement::Status(status) => {
            let advanced = tracker.set_status(input, status);
            let change = tracker.take_status_change();
            // A stage that becomes active says so before its watermark moves; one that
            // becomes idle, after.
            if change == Some(WatermarkStatus::Active) {
                st.status(WatermarkStatus::Active)?;
            }
            if let Some(w) = advanced {
                st.watermark(w)?;
            }
            match change {
                Some(WatermarkStatus::Idle) => st.status(WatermarkStatus::Idle),
                _ => Ok(()),
            }
        }
        // Alignment across inputs comes with checkpoints.
        StreamElement::Barrier(b) => st.barrier(b),
        StreamElement::EndOfInput => {
            if let Some(w) = tracker.end(input) {
                st.watermark(w)?;
            }
            match tracker.take_status_change() {
                Some(status) => st.status(status),
                None => Ok(()),
            }
        }
    }
}
