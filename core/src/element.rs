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

/// Records announced to a collector at a time before they are collected
/// ([`Batch::drain_into`]): enough for their cache misses to overlap, few enough that what
/// they touch is still cached when they are collected.
pub const PREFETCH_RUN: usize = 16;

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

    /// Appends a record and its timestamp ([`NO_TIMESTAMP`] for none). Always inlined, with
    /// the rare backfill out of line: it is every source's per-record step, and the compiler
    /// left it out of line in a source (~17 more instructions per record, callgrind) when
    /// unrelated code changed.
    #[inline(always)]
    pub fn push(&mut self, record: T, ts: Timestamp) {
        if ts != NO_TIMESTAMP || !self.timestamps.is_empty() {
            if self.timestamps.len() < self.records.len() {
                self.backfill_timestamps();
            }
            self.timestamps.push(ts);
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

    /// The first timestamp after records without one: those get none.
    #[cold]
    #[inline(never)]
    fn backfill_timestamps(&mut self) {
        self.timestamps.reserve(BATCH_RECORDS_MAX);
        self.timestamps.resize(self.records.len(), NO_TIMESTAMP);
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
    /// allocated), announcing each run of [`PREFETCH_RUN`] records to a collector that
    /// [`prefetches`](crate::chain::Collector::prefetches) first. The loops are written out
    /// here, not through a closure, so the collector's chain inlines into them.
    #[inline]
    pub fn drain_into<C: crate::chain::Collector<T>>(
        &mut self,
        collector: &mut C,
    ) -> crate::error::Result<()> {
        if !collector.prefetches() {
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
            return Ok(());
        }
        let mut records = self.records.drain(..);
        if self.timestamps.is_empty() {
            loop {
                let ahead = records.as_slice();
                let run = ahead.len().min(PREFETCH_RUN);
                if run == 0 {
                    break;
                }
                collector.prefetch(&ahead[..run], &[]);
                for record in records.by_ref().take(run) {
                    collector.collect(record, NO_TIMESTAMP)?;
                }
            }
        } else {
            debug_assert_eq!(self.timestamps.len(), records.len());
            let mut timestamps = self.timestamps.drain(..);
            loop {
                let (ahead, ts_ahead) = (records.as_slice(), timestamps.as_slice());
                let run = ahead.len().min(ts_ahead.len()).min(PREFETCH_RUN);
                if run == 0 {
                    break;
                }
                collector.prefetch(&ahead[..run], &ts_ahead[..run]);
                for (record, ts) in records.by_ref().zip(timestamps.by_ref()).take(run) {
                    collector.collect(record, ts)?;
                }
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

    /// Records what a collector is told: every prefetch hint, then every record.
    #[derive(Default)]
    struct Log {
        events: Vec<(bool, Vec<(u32, Timestamp)>)>,
        fail_at: Option<u32>,
        /// Says it does not prefetch.
        plain: bool,
    }

    impl crate::chain::Collector<u32> for Log {
        fn collect(&mut self, record: u32, ts: Timestamp) -> crate::error::Result<()> {
            if self.fail_at == Some(record) {
                return Err(crate::error::Error::Config(format!("record {record}")));
            }
            self.events.push((false, vec![(record, ts)]));
            Ok(())
        }
        fn prefetches(&self) -> bool {
            !self.plain
        }
        fn prefetch(&mut self, records: &[u32], timestamps: &[Timestamp]) {
            let ts = |i: usize| timestamps.get(i).copied().unwrap_or(NO_TIMESTAMP);
            let run = records
                .iter()
                .enumerate()
                .map(|(i, &r)| (r, ts(i)))
                .collect();
            self.events.push((true, run));
        }
        fn on_watermark(&mut self, _: Watermark) -> crate::error::Result<()> {
            Ok(())
        }
        fn on_status(&mut self, _: WatermarkStatus) -> crate::error::Result<()> {
            Ok(())
        }
        fn on_processing_time(&mut self, _: i64) -> crate::error::Result<()> {
            Ok(())
        }
        fn on_barrier(&mut self, _: CheckpointBarrier) -> crate::error::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> crate::error::Result<()> {
            Ok(())
        }
        fn on_end(&mut self) -> crate::error::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_run_of_records_is_announced_exactly_before_it_is_collected() {
        for (n, timed) in [
            (0, false),
            (1, true),
            (16, false),
            (37, true),
            (1024, false),
        ] {
            let mut b = Batch::with_capacity();
            let expected: Vec<(u32, Timestamp)> = (0..n)
                .map(|i| (i, if timed { 1000 + i as i64 } else { NO_TIMESTAMP }))
                .collect();
            for &(r, ts) in &expected {
                b.push(r, ts);
            }
            let mut log = Log::default();
            b.drain_into(&mut log).unwrap();
            assert!(b.is_empty());
            // Collected: every record once, in order, with its timestamp.
            let collected: Vec<_> = log
                .events
                .iter()
                .filter(|(hint, _)| !hint)
                .flat_map(|(_, r)| r.clone())
                .collect();
            assert_eq!(collected, expected, "n={n}");
            // Announced: runs of at most PREFETCH_RUN, each the very records collected next.
            let mut at = 0;
            for (i, (hint, run)) in log.events.iter().enumerate() {
                if !hint {
                    continue;
                }
                assert!(!run.is_empty() && run.len() <= PREFETCH_RUN, "n={n}");
                let next: Vec<_> = log.events[i + 1..]
                    .iter()
                    .take(run.len())
                    .map(|(hint, r)| {
                        assert!(!hint, "a run is collected before the next is announced");
                        r[0]
                    })
                    .collect();
                assert_eq!(&next, run, "n={n}");
                at += run.len();
            }
            assert_eq!(at, n as usize, "n={n}: every record announced once");
        }
    }

    /// Records `0..n`, all at `ts`.
    fn batch_at(n: u32, ts: Timestamp) -> Batch<u32> {
        let mut b = Batch::with_capacity();
        for i in 0..n {
            b.push(i, ts);
        }
        b
    }

    #[test]
    fn a_collector_that_does_not_prefetch_gets_only_its_records() {
        let mut b = batch_at(40, 7);
        let mut log = Log {
            plain: true,
            ..Log::default()
        };
        b.drain_into(&mut log).unwrap();
        assert!(log.events.iter().all(|(hint, _)| !hint));
        let collected: Vec<u32> = log.events.iter().map(|(_, r)| r[0].0).collect();
        assert_eq!(collected, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn a_failing_record_stops_the_drain_and_empties_the_batch() {
        let mut b = batch_at(40, 5);
        let mut log = Log {
            fail_at: Some(20),
            ..Log::default()
        };
        let err = b.drain_into(&mut log).unwrap_err();
        assert!(err.to_string().contains("record 20"), "{err}");
        let collected = log.events.iter().filter(|(hint, _)| !hint).count();
        assert_eq!(collected, 20);
        assert!(b.is_empty());
    }
}
