//! The elements that flow on a channel between operators: record batches, watermarks,
//! checkpoint barriers and the end of input.
//!
//! Order on one channel is preserved, so a watermark or barrier sent after a batch is seen after
//! it. Later issues give watermarks and barriers their full behaviour; the runtime already
//! carries them so that those issues add to it instead of rewriting it.

/// Most records in one batch. Batches amortise the cost of a channel hop and of dynamic
/// dispatch at stage boundaries; ~1024 records keeps a batch of small records in L2.
pub const BATCH_RECORDS_MAX: usize = 1024;

/// An event-time watermark: no record with a timestamp `<=` this value will follow on the
/// channel it was sent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Watermark(pub i64);

impl Watermark {
    /// The watermark that fires everything: sent when a bounded input ends.
    pub const MAX: Watermark = Watermark(i64::MAX);
    /// The initial watermark of every channel.
    pub const MIN: Watermark = Watermark(i64::MIN);
}

/// A checkpoint barrier, injected by sources between records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CheckpointBarrier {
    /// Strictly increasing id of the checkpoint this barrier belongs to.
    pub checkpoint_id: u64,
    /// When the coordinator triggered it, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// One element on a channel.
#[derive(Debug)]
pub enum StreamElement<T> {
    /// Up to [`BATCH_RECORDS_MAX`] records, moved by ownership.
    Records(Vec<T>),
    /// The sender's event-time watermark advanced.
    Watermark(Watermark),
    /// A checkpoint barrier.
    Barrier(CheckpointBarrier),
    /// The sender will send nothing more: its bounded input is exhausted.
    EndOfInput,
}
