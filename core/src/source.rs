//! Sources as the runtime sees them, designed after Flink's FLIP-27: a [`Source`] enumerates
//! *splits* once, before the workers start; each worker opens a [`SourceReader`] per split it
//! is assigned (split `i` goes to worker `i % workers`) and reads batches from it. A reader
//! reports its [`ReadPosition`], and can be opened at one, so a checkpoint can record where
//! each split was and a restore can resume there.
#![allow(async_fn_in_trait)]

use std::sync::Arc;

use crate::element::{Batch, Watermark};
use crate::error::Result;
use crate::metrics::{JobMetrics, WorkerCounters};

/// Where a reader is in its split: a byte offset, a record index, a generator's sequence
/// number. Opaque to the runtime, meaningful to the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ReadPosition(pub u64);

/// What a read returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// More may follow.
    More,
    /// The split is exhausted (a bounded source).
    End,
}

/// What a reader may know about the worker it runs on.
#[derive(Clone)]
pub struct SourceContext {
    /// This worker's index.
    pub worker: usize,
    /// Number of workers.
    pub workers: usize,
    metrics: Arc<JobMetrics>,
}

impl SourceContext {
    /// A context for worker `worker` of `workers`.
    pub fn new(worker: usize, workers: usize, metrics: Arc<JobMetrics>) -> SourceContext {
        SourceContext {
            worker,
            workers,
            metrics,
        }
    }
    /// This worker's counters; readers add the input bytes they consume.
    pub fn counters(&self) -> &WorkerCounters {
        self.metrics.worker(self.worker)
    }
}

/// A source of records.
pub trait Source: Send + Sync + 'static {
    /// The records it produces.
    type Item: Send + 'static;
    /// A unit of work: a byte range of a file, a slice of a collection.
    type Split: Clone + Send + Sync + std::fmt::Debug + 'static;
    /// Reads one split on a worker.
    type Reader: SourceReader<Item = Self::Item>;

    /// A short name for plans and errors.
    fn name(&self) -> String;
    /// Whether the source ends by itself.
    fn is_bounded(&self) -> bool;
    /// The splits for a job of `workers` workers. Called once, before the workers start, so a
    /// missing input fails the job before anything runs.
    fn splits(&self, workers: usize) -> Result<Vec<Self::Split>>;
    /// Size of a split in bytes, when known, for progress reporting.
    fn split_bytes(&self, _split: &Self::Split) -> Option<u64> {
        None
    }
    /// Encodes a split for a checkpoint, so that a restore — with any number of workers — can
    /// reopen it. `None` (the default): the source cannot replay what it read (a socket), so
    /// a restore opens fresh splits and the source is at most once.
    fn encode_split(&self, _split: &Self::Split) -> Option<Vec<u8>> {
        None
    }
    /// Decodes a split written by [`encode_split`](Self::encode_split).
    fn decode_split(&self, _bytes: &[u8]) -> Result<Self::Split> {
        Err(crate::Error::Config(format!(
            "source {} cannot resume from a checkpoint",
            self.name()
        )))
    }
    /// Opens a reader for `split` on the current worker, at `start` or at the split's start.
    async fn open(
        &self,
        split: Self::Split,
        start: Option<ReadPosition>,
        ctx: &SourceContext,
    ) -> Result<Self::Reader>;
}

/// Reads the records of one split.
pub trait SourceReader: 'static {
    /// The records it produces.
    type Item;
    /// Appends at most `records_max` records to `out`, each with its event time if the source
    /// knows it ([`NO_TIMESTAMP`](crate::element::NO_TIMESTAMP) otherwise).
    async fn read_batch(
        &mut self,
        out: &mut Batch<Self::Item>,
        records_max: usize,
    ) -> Result<ReadStatus>;
    /// The position after the last record returned.
    fn position(&self) -> ReadPosition;
    /// The watermark after the records returned so far, for a source that tracks event time
    /// itself (Flink's sources may emit watermarks). The driver emits it after the batch when
    /// it advanced. `None`: the source emits none (use a `WatermarkStrategy`).
    fn watermark(&self) -> Option<Watermark> {
        None
    }
}
