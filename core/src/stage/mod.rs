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
//!
//! With checkpoints, a source stage injects barriers between batches when the coordinator
//! triggers one, noting where its splits are; a gate stage aligns barriers over its inputs
//! ([`BarrierAligner`](crate::checkpoint::BarrierAligner)), blocking the inputs whose barrier
//! came first. Either way, the barrier goes through the chain (operators snapshot), on to the
//! outputs (sinks pre-commit), and the instance acknowledges it to the coordinator.

mod gate;
mod source;

pub use gate::GateStage;
pub use source::SourceStage;

use std::rc::Rc;
use std::time::Duration;

use crate::chain::{Collector, Outbox, OutboxRef, Pipe};
use crate::checkpoint::{Ack, SplitState, ToCoordinator};
use crate::context::{ContextBuilder, OperatorContext};
use crate::element::{CheckpointBarrier, Watermark, WatermarkStatus};
use crate::error::{Error, Result};
use crate::exchange::OutputDrain;
use crate::graph::{OutputSpec, SideOutputSpec, SidePort, WorkerContext};
use crate::state::StageState;

/// A stage's running parts on one worker: the chain, where its output goes, its side outputs.
struct Running<In, T, C, D> {
    _in: std::marker::PhantomData<fn(In)>,
    chain: C,
    drain: D,
    outbox: OutboxRef<T>,
    sides: Vec<Box<dyn SidePort>>,
    ctx: OperatorContext,
    state: Option<Rc<StageState>>,
    /// The task writing the last checkpoint's frozen state, until it is awaited.
    writing: Option<glommio::task::JoinHandle<()>>,
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
    let state = match (&ctx.state, pipe.uses_state()) {
        (Some(settings), true) => {
            let restore = ctx.state_restore.get(ctx.stage).and_then(Option::as_ref);
            let opened = StageState::open(settings, ctx.stage, ctx.worker, ctx.key_groups, restore)
                .await
                .map_err(|e| match restore {
                    // The restore's checkpoint is unusable: the runtime may fall back to an
                    // older one.
                    Some(r) => Error::Restore {
                        checkpoint_id: r.checkpoint_id,
                        reason: e.to_string(),
                    },
                    None => e,
                })?;
            Some(Rc::new(opened))
        }
        _ => None,
    };
    let mut builder = ContextBuilder::new(ctx.worker, ctx.key_groups, name, ctx.metrics.clone());
    builder.periodic_watermarks = periodic_watermarks;
    builder.state = state.clone();
    let mut ports = Vec::with_capacity(sides.len());
    for side in sides {
        ports.push(side.open(ctx, &mut builder, name).await?);
    }
    let op_ctx = builder.build();
    let chain = pipe.attach(tail, &op_ctx);
    if let Some(control) = &ctx.checkpoints {
        control.send(ToCoordinator::Running {
            stage: ctx.stage,
            worker: ctx.worker,
        });
    }
    Ok(Running {
        _in: std::marker::PhantomData,
        chain,
        drain,
        outbox,
        sides: ports,
        ctx: op_ctx,
        state,
        writing: None,
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

    /// Takes checkpoint `barrier`: the chain snapshots and passes it on, the outputs send it
    /// (sinks pre-commit), then the instance acknowledges it with `splits` (and how long its
    /// inputs took to align, `align_us`).
    async fn checkpoint(
        &mut self,
        wctx: &WorkerContext,
        barrier: CheckpointBarrier,
        splits: Vec<SplitState>,
        align_us: u64,
    ) -> Result<()> {
        let id = barrier.checkpoint_id;
        let started = self.ctx.monotonic_us();
        let cpu_started = thread_cpu_us();
        let savepoint = wctx.checkpoints.as_ref().and_then(|c| c.savepoint_dir(id));
        self.barrier(barrier)?;
        let hooked = self.ctx.monotonic_us();
        // The synchronous part: freeze the dirty state (a savepoint copies it whole below).
        let frozen = match (&self.state, &savepoint) {
            (Some(state), None) => Some(
                state
                    .store()
                    .freeze(id)
                    .map_err(|e| state_err("freeze state", e))?,
            ),
            _ => None,
        };
        let frozen_at = self.ctx.monotonic_us();
        let sync_cpu_us = thread_cpu_us().saturating_sub(cpu_started);
        let sync_us = frozen_at - started;
        self.drain().await?;
        let ack = Ack {
            checkpoint_id: id,
            stage: wctx.stage,
            worker: wctx.worker,
            splits,
            state: None,
            sync_us,
            freeze_us: frozen_at - hooked,
            sync_cpu_us,
            duration_us: 0,
            align_us,
        };
        let Some(state) = self.state.clone() else {
            send_ack(wctx, ack, self.ctx.monotonic_us() - started);
            return Ok(());
        };
        if let Some(dir) = savepoint {
            // A savepoint: a self-contained copy, key-group ordered, inside its directory.
            let rel = format!("state/stage-{}/worker-{}", wctx.stage, wctx.worker);
            state
                .store()
                .savepoint(id, &dir.join(&rel))
                .await
                .map_err(|e| state_err("write savepoint state", e))?;
            let ack = Ack {
                state: Some(rel),
                ..ack
            };
            send_ack(wctx, ack, self.ctx.monotonic_us() - started);
            return Ok(());
        }
        let Some(frozen) = frozen else {
            return Ok(());
        };
        // The frozen entries are written in a task of their own while records keep flowing;
        // the acknowledgement goes out once they are durable.
        let (wctx, ctx) = (wctx.clone(), self.ctx.clone());
        let rel = checkpoint_relative(&state, &wctx);
        let writing = glommio::spawn_local(async move {
            match state.store().write(frozen).await {
                Ok(_) => {
                    let ack = Ack {
                        state: Some(rel),
                        ..ack
                    };
                    send_ack(&wctx, ack, ctx.monotonic_us() - started);
                }
                Err(e) => {
                    let e = state_err("write checkpoint state", e);
                    // The coordinator hears why before the job is torn down, so the failure
                    // is reported as the cause rather than as a cancellation.
                    if let Some(control) = &wctx.checkpoints {
                        control.send(ToCoordinator::Declined {
                            checkpoint_id: id,
                            stage: wctx.stage,
                            worker: wctx.worker,
                            reason: e.to_string(),
                        });
                    }
                    state.fail(e);
                    wctx.cancel();
                }
            }
        })
        .detach();
        self.writing = Some(writing);
        Ok(())
    }

    /// Waits until the last checkpoint's state is written (and acknowledged). A finishing
    /// instance does this before it reports that it finished: the coordinator would otherwise
    /// count the finish as its acknowledgement of that checkpoint, without its state. The
    /// store's compactor stops too, after its running merge.
    async fn settle_writes(&mut self) -> Result<()> {
        if let Some(writing) = self.writing.take() {
            writing.await;
        }
        match &self.state {
            Some(state) => state.stop_compactor().await,
            None => Ok(()),
        }
    }

    /// Sends what the chain emitted, awaiting channel capacity or sink I/O, and writes out
    /// state evicted meanwhile.
    async fn drain(&mut self) -> Result<()> {
        self.drain.drain(&self.outbox).await?;
        if let Some(state) = &self.state {
            state.check()?;
            state.flush().await?;
        }
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

fn state_err(op: &'static str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::State {
        op,
        message: crate::runtime::one_line(&e.to_string()),
    }
}

/// The CPU time of the calling thread, in µs (0 where the clock cannot be read).
fn thread_cpu_us() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
    })
}

fn send_ack(wctx: &WorkerContext, ack: Ack, duration_us: u64) {
    if let Some(control) = &wctx.checkpoints {
        control.send(ToCoordinator::Ack(Ack { duration_us, ..ack }));
    }
}

/// A checkpoint's state directory as its metadata names it: relative to the metadata's own
/// directory (`<checkpoint dir>/chk-<id>`).
fn checkpoint_relative(state: &StageState, wctx: &WorkerContext) -> String {
    let root = wctx.state.as_ref().map(|s| s.root.as_path());
    let checkpoint_dir = root.and_then(std::path::Path::parent);
    match checkpoint_dir.and_then(|d| state.dir().strip_prefix(d).ok()) {
        Some(rel) => format!("../{}", rel.display()),
        None => state.dir().display().to_string(),
    }
}

/// Tells the coordinator that this instance finished: no more acknowledgements from it.
fn report_finished(wctx: &WorkerContext, splits: Vec<SplitState>) {
    if let Some(control) = &wctx.checkpoints {
        control.send(ToCoordinator::Finished {
            stage: wctx.stage,
            worker: wctx.worker,
            splits,
        });
    }
}
