//! The elements that flow on a channel between operators: record batches, watermarks,
//! watermark status changes, checkpoint barriers and the end of input.
//!
//! Order on one channel is preserved, so a watermark or barrier sent after a batch is seen after
//! it. Every record carries an event-time timestamp beside it (Flink's `StreamRecord`): a batch
//! keeps the timestamps in a parallel vector, which stays empty — and unallocated — for batches
//! whose records have none, so jobs without event time pay nothing for it.

/// Most records in one batch. Batches amortise the cost of a channel hop and of dynamic
/// dispatch at stage boundaries; ~1024 records keeps a batch of small records in L2.
pub const BATCH_RECORDS_MAX: usize = 1024;

/// A record's event time in milliseconds since the Unix epoch.
pub type Timestamp = i64;

/// The timestamp of a record that has none (no timestamp assigner ran). Event-time operators
/// reject such records with an error; `i64::MIN` is therefore not a valid event time.
pub const NO_TIMESTAMP: Timestamp = i64::MIN;

/// Whether `ts` is an event time: anything strictly between `i64::MIN` (no timestamp) and
/// `i64::MAX` (the final watermark's instant, after every record).
#[inline]
pub fn is_event_time(ts: Timestamp) -> bool {
    ts != i64::MIN && ts != i64::MAX
}

/// An event-time watermark: no record with a timestamp `<=` this value will follow on the
/// channel it was sent on (records that do are *late*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Watermark(pub i64);

impl Watermark {
    /// The watermark that fires everything: sent when a bounded input ends.
    pub const MAX: Watermark = Watermark(i64::MAX);
    /// The initial watermark of every channel.
    pub const MIN: Watermark = Watermark(i64::MIN);
}

/// Whether a channel's watermark is currently meaningful (Flink's `WatermarkStatus`). An idle
/// input — a source split with no data for a while — stops holding back the watermark of the
/// operators it feeds until it becomes active again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatermarkStatus {
    /// The sender emits records and watermarks.
    Active,
    /// The sender has no data for now; ignore its watermark.
    Idle,
}

/// A checkpoint barrier, injected by sources between records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CheckpointBarrier {
    /// Strictly increasing id of the checkpoint this barrier belongs to.
    pub checkpoint_id: u64,
    /// When the coordinator triggered it, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Up to [`BATCH_RECORDS_MAX`] records and their timestamps.
///
/// `timestamps` is either empty (no record of the batch has a timestamp) or exactly as long as
/// `records`.
#[derive(Debug)]
pub struct Batch<T> {
    records: Vec<T>,
    timestamps: Vec<Timestamp>,
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Batch {
            records: Vec::new(),
            timestamps: Vec::new(),
        }
    }
}

impl<T> Batch<T> {
    /// An empty batch with room for a full batch of records: one allocation per batch, never
    /// per record. Room for timestamps is allocated only when the first one arrives.
    #[inline]
    pub fn with_capacity() -> Batch<T> {
        Batch {
            records: Vec::with_capacity(BATCH_RECORDS_MAX),
            timestamps: Vec::new(),
        }
    }

    /// A batch of records without timestamps.
    pub fn from_records(records: Vec<T>) -> Batch<T> {
        Batch {
            records,
            timestamps: Vec::new(),
        }
    }

    /// Appends a record and its timestamp ([`NO_TIMESTAMP`] for none).
    #[inline]
    pub fn push(&mut self, record: T, ts: Timestamp) {
        if ts != NO_TIMESTAMP || !self.timestamps.is_empty() {
            self.push_timestamp(ts);
        }
        self.records.push(record);
    }

    /// A batch of `records` and their `timestamps` (empty, or one per record); `None` if the
    /// lengths do not match.
    pub fn from_parts(records: Vec<T>, timestamps: Vec<Timestamp>) -> Option<Batch<T>> {
        let ok = timestamps.is_empty() || timestamps.len() == records.len();
        ok.then_some(Batch {
            records,
            timestamps,
        })
    }

    /// The records and their timestamps (empty, or one per record).
    pub fn into_parts(self) -> (Vec<T>, Vec<Timestamp>) {
        (self.records, self.timestamps)
    }

    /// Appends records without timestamps.
    pub fn extend_untimed(&mut self, records: impl IntoIterator<Item = T>) {
        if self.timestamps.is_empty() {
            self.records.extend(records);
        } else {
            for record in records {
                self.push(record, NO_TIMESTAMP);
            }
        }
    }

    #[inline]
    fn push_timestamp(&mut self, ts: Timestamp) {
        if self.timestamps.len() < self.records.len() {
            // The first timestamp after records without one: those get none.
            self.timestamps.reserve(BATCH_RECORDS_MAX);
            self.timestamps.resize(self.records.len(), NO_TIMESTAMP);
        }
        self.timestamps.push(ts);
    }

    /// Number of records.
    #[inline]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch holds no record.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records, for sinks that do not need timestamps.
    pub fn records_mut(&mut self) -> &mut Vec<T> {
        &mut self.records
    }

    /// The records.
    pub fn records(&self) -> &[T] {
        &self.records
    }

    /// The timestamps: empty, or one per record.
    pub fn timestamps(&self) -> &[Timestamp] {
        &self.timestamps
    }

    /// Pushes every record, in order, into `collector`, emptying the batch (its buffers stay
    /// allocated). The loop is written out here, not through a closure, so the collector's
    /// chain inlines into it.
    #[inline]
    pub fn drain_into<C: crate::chain::Collector<T>>(
        &mut self,
        collector: &mut C,
    ) -> crate::error::Result<()> {
        if self.timestamps.is_empty() {
            for record in self.records.drain(..) {
                collector.collect(record, NO_TIMESTAMP)?;
            }
        } else {
            debug_assert_eq!(self.timestamps.len(), self.records.len());
            for (record, ts) in self.records.drain(..).zip(self.timestamps.drain(..)) {
                collector.collect(record, ts)?;
            }
        }
        Ok(())
    }

    /// Calls `f(record, timestamp)` for every record in order, emptying the batch (its
    /// buffers stay allocated).
    #[inline]
    pub fn drain_each<E>(
        &mut self,
        mut f: impl FnMut(T, Timestamp) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.timestamps.is_empty() {
            for record in self.records.drain(..) {
                f(record, NO_TIMESTAMP)?;
            }
        } else {
            debug_assert_eq!(self.timestamps.len(), self.records.len());
            for (record, ts) in self.records.drain(..).zip(self.timestamps.drain(..)) {
                f(record, ts)?;
            }
        }
        Ok(())
    }
}

impl<T: Clone> Clone for Batch<T> {
    fn clone(&self) -> Self {
        Batch {
            records: self.records.clone(),
            timestamps: self.timestamps.clone(),
        }
    }
}

/// One element on a channel.
#[derive(Debug)]
pub enum StreamElement<T> {
    /// Up to [`BATCH_RECORDS_MAX`] records, moved by ownership.
    Records(Batch<T>),
    /// The sender's event-time watermark advanced.
    Watermark(Watermark),
    /// The sender became idle or active again.
    Status(WatermarkStatus),
    /// A checkpoint barrier.
    Barrier(CheckpointBarrier),
    /// The sender will send nothing more: its bounded input is exhausted.
    EndOfInput,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_stay_unallocated_without_event_time() {
        let mut b = Batch::with_capacity();
        b.push(1u32, NO_TIMESTAMP);
        b.push(2, NO_TIMESTAMP);
        assert!(b.timestamps().is_empty());
        assert_eq!(b.timestamps.capacity(), 0);
    }

    #[test]
    fn a_late_first_timestamp_backfills_the_earlier_records() {
        let mut b = Batch::with_capacity();
        b.push(1u32, NO_TIMESTAMP);
        b.push(2, 20);
        b.push(3, NO_TIMESTAMP);
        assert_eq!(b.timestamps(), &[NO_TIMESTAMP, 20, NO_TIMESTAMP]);
        let mut seen = Vec::new();
        b.drain_each(|r, ts| {
            seen.push((r, ts));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(seen, vec![(1, NO_TIMESTAMP), (2, 20), (3, NO_TIMESTAMP)]);
        assert!(b.is_empty());
    }
}
