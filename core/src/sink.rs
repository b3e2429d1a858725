//! Sinks as the runtime sees them: a [`Sink`] is prepared once before the workers start (so a
//! bad output path fails before anything runs), then opens one [`SinkWriter`] per worker.
#![allow(async_fn_in_trait)]

use crate::chain::OutboxRef;
use crate::element::StreamElement;
use crate::error::Result;
use crate::exchange::OutputDrain;

/// Where a sink writer runs.
#[derive(Clone, Copy, Debug)]
pub struct SinkContext {
    /// This worker's index.
    pub worker: usize,
    /// Number of workers.
    pub workers: usize,
    /// The checkpoint the job resumed from (0: a fresh start).
    pub restored_id: u64,
    /// The run (a cluster's deployment of the job) the writer belongs to; 0 in one process.
    pub run: u64,
}

/// A destination for records.
pub trait Sink<T>: Send + Sync + 'static {
    /// The per-worker writer.
    type Writer: SinkWriter<T>;
    /// A short name for plans and errors.
    fn name(&self) -> String;
    /// Checks and prepares the destination, once, before the workers start.
    fn prepare(&self, _workers: usize) -> Result<()> {
        Ok(())
    }
    /// Opens this worker's writer.
    async fn open(&self, ctx: &SinkContext) -> Result<Self::Writer>;
    /// Before the workers start after a restore from checkpoint `restored_id` (0: a fresh
    /// start), taken by run `restored_run` (0: in one process): make what earlier runs wrote
    /// consistent with it — commit what belongs to checkpoints up to it, remove what came
    /// later. On a cluster, only what run `restored_run` wrote can belong to the checkpoint:
    /// a run that was failed over may still write (a paused node, a zombie) after a later
    /// run settled the output.
    fn recover(&self, _restored_id: u64, _restored_run: u64) -> Result<()> {
        Ok(())
    }
    /// Checkpoint `id` is complete: make visible what the writers pre-committed for it and for
    /// earlier checkpoints (two-phase commit). Called on the job's thread; a duplicate or
    /// stale call must be harmless.
    fn commit_checkpoint(&self, _id: u64) -> Result<()> {
        Ok(())
    }
    /// Makes the job's output visible, once, on the thread that ran the job, after every
    /// worker's writer finished and the job succeeded.
    fn commit(&self) -> Result<()> {
        Ok(())
    }
    /// Removes what the writers left uncommitted, once, after the job failed.
    fn abort(&self) {}
}

/// Writes one worker's records.
pub trait SinkWriter<T>: 'static {
    /// Writes (and empties) a batch.
    async fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<()>;
    /// The input ended: make everything written durable, ready for [`Sink::commit`].
    async fn finish(&mut self) -> Result<()>;
    /// Checkpoint barrier `checkpoint_id` passed: make everything written since the previous
    /// one durable, so [`Sink::commit_checkpoint`] can publish it once the checkpoint
    /// completes (the first phase of the two-phase commit).
    async fn pre_commit(&mut self, _checkpoint_id: u64) -> Result<()> {
        Ok(())
    }
}

/// Drains a stage's outbox into a sink writer.
pub struct SinkDrain<W> {
    writer: W,
}

impl<W> SinkDrain<W> {
    /// Drains into `writer`.
    pub fn new(writer: W) -> Self {
        SinkDrain { writer }
    }
}

impl<T, W: SinkWriter<T>> OutputDrain<T> for SinkDrain<W> {
    async fn drain(&mut self, outbox: &OutboxRef<T>) -> Result<()> {
        loop {
            let Some((_, element)) = outbox.borrow_mut().pop() else {
                return Ok(());
            };
            match element {
                StreamElement::Records(mut batch) => {
                    self.writer.write_batch(batch.records_mut()).await?;
                }
                StreamElement::EndOfInput => self.writer.finish().await?,
                StreamElement::Barrier(b) => self.writer.pre_commit(b.checkpoint_id).await?,
                StreamElement::Watermark(_) | StreamElement::Status(_) => {}
            }
        }
    }
}
