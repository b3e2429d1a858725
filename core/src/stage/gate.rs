//! The gate stage driver: merges its input channels, keeps the stage's watermark, aligns
//! checkpoint barriers over its inputs, and pushes everything through the chain.

use std::sync::Arc;

use futures_lite::future::{or, poll_once};

use super::{Running, open_stage, report_finished, stage_name};
use crate::chain::{Collector, Pipe};
use crate::checkpoint::{Alignment, BarrierAligner};
use crate::element::{CheckpointBarrier, StreamElement, WatermarkStatus};
use crate::error::{Error, Result};
use crate::exchange::{Edge, InputGate, OutputDrain, WatermarkTracker};
use crate::graph::{OutputSpec, Prepare, SideOutputSpec, StageFactory, StageFuture, WorkerContext};

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
    fn prepare(&self, p: &Prepare<'_>) -> Result<()> {
        self.inner
            .out
            .prepare(p.workers, p.settle_id(), p.restored_run)
    }
    fn instantiate(&self, ctx: WorkerContext) -> StageFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.run(ctx).await })
    }
    fn commit_checkpoint(&self, id: u64) -> Result<()> {
        self.inner.out.commit_checkpoint(id)
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
        let mut gate = InputGate::connect(receivers, &self.name).await?;
        let mut st = open_stage(
            &ctx,
            self.pipe.clone(),
            &self.out,
            &self.sides,
            &self.name,
            false,
        )
        .await?;
        let mut time = Time {
            watermarks: WatermarkTracker::new(gate.inputs()),
            barriers: BarrierAligner::new(gate.inputs()),
            align_started_us: None,
        };
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
            if let Some(barrier) = handle_element(&mut st, &mut time, &mut gate, input, element)? {
                let align_us = time
                    .align_started_us
                    .take()
                    .map_or(0, |t| st.ctx.monotonic_us().saturating_sub(t));
                st.checkpoint(&ctx, barrier, Vec::new(), align_us).await?;
            }
            st.fire_due()?;
            st.drain().await?;
            if ctx.is_cancelled() {
                return Err(Error::Cancelled);
            }
        }
        st.end()?;
        st.drain().await?;
        st.settle_writes().await?;
        report_finished(&ctx, Vec::new());
        Ok(())
    }
}

/// A gate stage's view of time: its inputs' watermarks and checkpoint barriers.
struct Time {
    watermarks: WatermarkTracker,
    barriers: BarrierAligner,
    /// When the first barrier of the alignment in progress arrived.
    align_started_us: Option<u64>,
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

/// Pushes one element from input `input` through the chain, keeping the stage's watermark and
/// barrier alignment. Returns a barrier that completed its alignment: the caller takes the
/// checkpoint.
fn handle_element<In, T, C, D>(
    st: &mut Running<In, T, C, D>,
    time: &mut Time,
    gate: &mut InputGate<In>,
    input: usize,
    element: StreamElement<In>,
) -> Result<Option<CheckpointBarrier>>
where
    In: Send + 'static,
    C: Collector<In>,
    D: OutputDrain<T>,
{
    match element {
        StreamElement::Records(mut batch) => {
            st.ctx
                .set_input_watermark(time.watermarks.lateness_watermark(input));
            batch.drain_into(&mut st.chain)?;
        }
        StreamElement::Watermark(w) => {
            if let Some(w) = time.watermarks.update(input, w) {
                st.watermark(w)?;
            }
        }
        StreamElement::Status(status) => {
            let advanced = time.watermarks.set_status(input, status);
            let change = time.watermarks.take_status_change();
            // A stage that becomes active says so before its watermark moves; one that
            // becomes idle, after.
            if change == Some(WatermarkStatus::Active) {
                st.status(WatermarkStatus::Active)?;
            }
            if let Some(w) = advanced {
                st.watermark(w)?;
            }
            if change == Some(WatermarkStatus::Idle) {
                st.status(WatermarkStatus::Idle)?;
            }
        }
        StreamElement::Barrier(b) => match time.barriers.on_barrier(input, b) {
            Alignment::Wait => {
                gate.set_blocked(input, true);
                time.align_started_us
                    .get_or_insert_with(|| st.ctx.monotonic_us());
            }
            Alignment::Aligned(b) => {
                gate.unblock_all();
                return Ok(Some(b));
            }
            Alignment::Stale => {}
        },
        StreamElement::EndOfInput => {
            if let Some(w) = time.watermarks.end(input) {
                st.watermark(w)?;
            }
            if let Some(status) = time.watermarks.take_status_change() {
                st.status(status)?;
            }
            if let Some(b) = time.barriers.on_end(input) {
                gate.unblock_all();
                return Ok(Some(b));
            }
        }
    }
    Ok(None)
}
