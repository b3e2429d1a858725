//! The source stage driver: reads its worker's splits batch by batch through the chain,
//! injects checkpoint barriers between batches (noting each split's read position), throttles
//! to `--rate`, and resumes from a checkpoint's split positions.

use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::future::{or, poll_once};

use super::{Running, open_stage, report_finished, stage_name};
use crate::chain::{Collector, Pipe};
use crate::checkpoint::SplitState;
use crate::element::{BATCH_RECORDS_MAX, Batch, CheckpointBarrier, Watermark};
use crate::error::{Error, Result};
use crate::exchange::{OutputDrain, unless_cancelled};
use crate::graph::{OutputSpec, Prepare, SideOutputSpec, StageFactory, StageFuture, WorkerContext};
use crate::source::{ReadPosition, ReadStatus, Source, SourceContext, SourceReader};

/// A split and where to read it from.
#[derive(Clone, Debug)]
struct SplitPlan<S> {
    split: S,
    start: Option<ReadPosition>,
    done: bool,
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
    plans: Mutex<Vec<SplitPlan<S::Split>>>,
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
                plans: Mutex::new(Vec::new()),
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
    fn prepare(&self, p: &Prepare<'_>) -> Result<()> {
        let inner = &self.inner;
        let fresh = inner.source.splits(p.workers)?;
        let replayable = fresh
            .first()
            .is_none_or(|s| inner.source.encode_split(s).is_some());
        let plans = match p.restore {
            Some(meta) if replayable => {
                let mut plans = Vec::new();
                for instance in &meta.instances {
                    for state in &instance.splits {
                        plans.push(SplitPlan {
                            split: inner.source.decode_split(&state.split)?,
                            start: state.position.map(ReadPosition),
                            done: state.done,
                        });
                    }
                }
                plans
            }
            _ => fresh
                .into_iter()
                .map(|split| SplitPlan {
                    split,
                    start: None,
                    done: false,
                })
                .collect(),
        };
        for plan in plans.iter().filter(|p| !p.done) {
            let bytes = inner.source.split_bytes(&plan.split).unwrap_or(0);
            p.metrics.add_input_bytes_total(bytes);
        }
        inner
            .out
            .prepare(p.workers, p.settle_id(), p.restored_run)?;
        *inner.plans.lock().unwrap_or_else(|e| e.into_inner()) = plans;
        Ok(())
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

/// Keeps a source instance at its share of `--rate`.
struct Throttle {
    per_sec: f64,
    emitted: u64,
}

impl Throttle {
    /// How many records may be read now, `elapsed_us` after the start; 0 means wait.
    fn allowed(&self, elapsed_us: u64) -> usize {
        let due = (self.per_sec * elapsed_us as f64 / 1e6) as u64;
        due.saturating_sub(self.emitted)
            .min(BATCH_RECORDS_MAX as u64) as usize
    }
}

impl<S, P, O> SourceInner<S, P, O>
where
    S: Source,
    P: Pipe<S::Item>,
    O: OutputSpec<P::Out>,
{
    /// The states of `plans` for a checkpoint: `current` is being read at `position`.
    fn split_states(
        &self,
        plans: &[SplitPlan<S::Split>],
        current: usize,
        position: ReadPosition,
    ) -> Vec<SplitState> {
        let mut states = Vec::with_capacity(plans.len());
        for (j, plan) in plans.iter().enumerate() {
            let Some(split) = self.source.encode_split(&plan.split) else {
                continue;
            };
            let (position, done) = match j.cmp(&current) {
                std::cmp::Ordering::Less => (None, true),
                std::cmp::Ordering::Equal => (Some(position.0), false),
                std::cmp::Ordering::Greater => (plan.start.map(|p| p.0), plan.done),
            };
            states.push(SplitState {
                split,
                position,
                done,
            });
        }
        states
    }

    async fn run(&self, ctx: WorkerContext) -> Result<()> {
        let (plans, readers) = {
            let all = self.plans.lock().unwrap_or_else(|e| e.into_inner());
            let mine: Vec<_> = all
                .iter()
                .skip(ctx.worker)
                .step_by(ctx.workers)
                .cloned()
                .collect();
            (mine, all.len().min(ctx.workers).max(1))
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
        let mut throttle = ctx.source_rate.map(|rate| Throttle {
            per_sec: rate / readers as f64,
            emitted: 0,
        });
        let sctx = SourceContext::new(ctx.worker, ctx.workers, ctx.metrics.clone());
        let counters = ctx.metrics.worker(ctx.worker);
        let cancelled = ctx.cancel_flag();
        let mut injected = ctx.checkpoints.as_ref().map_or(0, |c| {
            c.completed.load(std::sync::atomic::Ordering::Acquire)
        });
        let mut buf = Batch::with_capacity();
        // Watermarks the source's readers emit themselves, kept monotonic across splits.
        let mut source_watermark = Watermark::MIN;
        for (index, plan) in plans.iter().enumerate() {
            if plan.done {
                continue;
            }
            let mut reader = self
                .source
                .open(plan.split.clone(), plan.start, &sctx)
                .await?;
            loop {
                if let Some(control) = &ctx.checkpoints
                    && let Some((id, ms)) = control.pending_trigger(injected)
                {
                    injected = id;
                    let barrier = CheckpointBarrier {
                        checkpoint_id: id,
                        timestamp_ms: ms,
                    };
                    let states = self.split_states(&plans, index, reader.position());
                    st.checkpoint(&ctx, barrier, states, 0).await?;
                    if control.stops_at(id) {
                        return stopped(&ctx).await;
                    }
                }
                let records_max = match &throttle {
                    Some(t) => match t.allowed(st.ctx.monotonic_us()) {
                        0 => {
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                            st.fire_due()?;
                            st.drain().await?;
                            if ctx.is_cancelled() {
                                return Err(Error::Cancelled);
                            }
                            continue;
                        }
                        n => n,
                    },
                    None => BATCH_RECORDS_MAX,
                };
                let status =
                    read_batch(&mut reader, &mut buf, records_max, &mut st, &cancelled).await?;
                let n = buf.len();
                debug_assert!(n <= BATCH_RECORDS_MAX, "n={n}");
                counters.add_records(n as u64);
                if let Some(t) = &mut throttle {
                    t.emitted += n as u64;
                }
                buf.drain_into(&mut st.chain)?;
                if n < records_max {
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
        st.drain().await?;
        st.settle_writes().await?;
        report_finished(
            &ctx,
            self.split_states(&plans, plans.len(), ReadPosition(0)),
        );
        Ok(())
    }
}

/// After a savepoint barrier: read nothing more, and wait for the job to be stopped.
async fn stopped(ctx: &WorkerContext) -> Result<()> {
    while !ctx.is_cancelled() {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    Err(Error::Cancelled)
}

/// Reads one batch of at most `records_max` records from `reader`, calling the chain back at
/// processing-time deadlines while the read waits, and giving up when the job is cancelled (a
/// quiet socket must not keep a failed job from ending).
async fn read_batch<R, T, C, D>(
    reader: &mut R,
    buf: &mut Batch<R::Item>,
    records_max: usize,
    st: &mut Running<R::Item, T, C, D>,
    cancelled: &std::sync::atomic::AtomicBool,
) -> Result<ReadStatus>
where
    R: SourceReader,
    C: Collector<R::Item>,
    D: OutputDrain<T>,
{
    let mut read = pin!(reader.read_batch(buf, records_max));
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
