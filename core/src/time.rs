//! Event time: timestamp assigners, watermark generators and the [`WatermarkStrategy`] that
//! combines them, applied to a stream by the [`AssignTimestamps`] operator.
//!
//! **Watermarks follow the data.** A generator's watermark is emitted after every
//! `interval_records` records (1024 by default) counted on the record stream itself, never
//! only on a wall-clock timer, so where watermarks fall in the stream — and therefore which
//! records are late — does not depend on how fast the machine is. Stages fed by an unbounded
//! source, whose records may trickle, also emit on a wall-clock period (200 ms), as Flink's
//! periodic generators do; and a strategy `with_idleness` marks its stream idle after that long
//! without records, so that it stops holding back the watermark downstream.
//!
//! With bounded out-of-orderness `d`, the watermark is `max timestamp seen − d − 1`: a record
//! `d` ms older than the newest one is still on time.

use std::marker::PhantomData;

use crate::chain::{Collector, Pipe};
use crate::context::OperatorContext;
use crate::element::{CheckpointBarrier, Timestamp, Watermark, WatermarkStatus};
use crate::error::Result;

/// Records between two watermark emissions by default (the issue's "at least once per 1024
/// records").
pub const WATERMARK_INTERVAL_RECORDS_DEFAULT: u32 = 1024;
/// Wall-clock period of watermark emission on stages fed by an unbounded source.
pub const WATERMARK_PERIOD_MS: i64 = 200;

/// Decides the watermark from the records seen (Flink's `WatermarkGenerator`).
pub trait WatermarkGenerator<T>: Clone + Send + Sync + 'static {
    /// Sees every record after its timestamp was assigned. A generator that derives
    /// watermarks from special records (punctuation) returns one to emit right after it.
    fn on_event(&mut self, record: &T, ts: Timestamp) -> Option<Watermark>;
    /// The watermark to emit periodically.
    fn current_watermark(&self) -> Watermark;
}

/// Watermarks `max timestamp seen − delay − 1` (Flink's `BoundedOutOfOrdernessWatermarks`).
#[derive(Clone, Copy, Debug)]
pub struct BoundedOutOfOrderness {
    delay_ms: i64,
    max_ts: Option<i64>,
}

impl BoundedOutOfOrderness {
    /// Records up to `delay_ms` older than the newest seen are on time.
    pub fn new(delay_ms: i64) -> Self {
        assert!(delay_ms >= 0, "delay_ms={delay_ms}");
        BoundedOutOfOrderness {
            delay_ms,
            max_ts: None,
        }
    }
}

impl<T> WatermarkGenerator<T> for BoundedOutOfOrderness {
    #[inline]
    fn on_event(&mut self, _record: &T, ts: Timestamp) -> Option<Watermark> {
        self.max_ts = Some(self.max_ts.map_or(ts, |m| m.max(ts)));
        None
    }
    fn current_watermark(&self) -> Watermark {
        match self.max_ts {
            // Saturating: timestamps near i64::MIN must not wrap around to the far future.
            Some(max) => Watermark(max.saturating_sub(self.delay_ms).saturating_sub(1)),
            None => Watermark::MIN,
        }
    }
}

/// A generator that never emits a watermark (only the final one at the end of input).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoWatermarks;

impl<T> WatermarkGenerator<T> for NoWatermarks {
    fn on_event(&mut self, _record: &T, _ts: Timestamp) -> Option<Watermark> {
        None
    }
    fn current_watermark(&self) -> Watermark {
        Watermark::MIN
    }
}

/// The timestamp assigner that keeps the timestamp a record already has (one its source
/// attached).
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordTimestamp;

/// Gives a record its event time (Flink's `TimestampAssigner`): from the record, and the
/// timestamp it already carries.
pub trait TimestampAssigner<T>: Clone + Send + Sync + 'static {
    /// The record's event time.
    fn extract(&mut self, record: &T, previous: Timestamp) -> Timestamp;
}

impl<T> TimestampAssigner<T> for RecordTimestamp {
    #[inline]
    fn extract(&mut self, _record: &T, previous: Timestamp) -> Timestamp {
        previous
    }
}

impl<T, F> TimestampAssigner<T> for F
where
    F: FnMut(&T) -> Timestamp + Clone + Send + Sync + 'static,
{
    #[inline]
    fn extract(&mut self, record: &T, _previous: Timestamp) -> Timestamp {
        self(record)
    }
}

/// How a stream gets timestamps and watermarks (Flink's `WatermarkStrategy`).
///
/// ```
/// use sluice_core::time::WatermarkStrategy;
/// #[derive(Clone)]
/// struct Event { ts: i64 }
/// let strategy = WatermarkStrategy::for_bounded_out_of_orderness(500)
///     .with_timestamp_assigner(|e: &Event| e.ts)
///     .with_idleness(60_000);
/// # let _ = strategy;
/// ```
#[derive(Clone, Debug)]
pub struct WatermarkStrategy<A, G> {
    assigner: A,
    generator: G,
    idleness_ms: Option<i64>,
    interval_records: u32,
}

impl WatermarkStrategy<RecordTimestamp, BoundedOutOfOrderness> {
    /// Watermarks that trail the largest timestamp seen by `delay_ms` (plus one).
    pub fn for_bounded_out_of_orderness(delay_ms: i64) -> Self {
        WatermarkStrategy::for_generator(BoundedOutOfOrderness::new(delay_ms))
    }
    /// Watermarks for timestamps that never go backwards: `max seen − 1`.
    pub fn for_monotonous_timestamps() -> Self {
        WatermarkStrategy::for_bounded_out_of_orderness(0)
    }
}

impl WatermarkStrategy<RecordTimestamp, NoWatermarks> {
    /// Timestamps without watermarks: event-time windows then fire only at the end of input.
    pub fn no_watermarks() -> Self {
        WatermarkStrategy::for_generator(NoWatermarks)
    }
}

impl<G> WatermarkStrategy<RecordTimestamp, G> {
    /// A strategy around a custom generator.
    pub fn for_generator(generator: G) -> Self {
        WatermarkStrategy {
            assigner: RecordTimestamp,
            generator,
            idleness_ms: None,
            interval_records: WATERMARK_INTERVAL_RECORDS_DEFAULT,
        }
    }
}

impl<A, G> WatermarkStrategy<A, G> {
    /// Takes each record's timestamp from `assigner` (a closure `|&T| -> i64` works).
    pub fn with_timestamp_assigner<A2>(self, assigner: A2) -> WatermarkStrategy<A2, G> {
        WatermarkStrategy {
            assigner,
            generator: self.generator,
            idleness_ms: self.idleness_ms,
            interval_records: self.interval_records,
        }
    }
    /// Marks the stream idle after `ms` of processing time without records.
    pub fn with_idleness(mut self, ms: i64) -> Self {
        assert!(ms > 0, "idleness ms={ms}");
        self.idleness_ms = Some(ms);
        self
    }
    /// Emits the watermark after every `records` records (at most 1024).
    pub fn with_watermark_interval_records(mut self, records: u32) -> Self {
        assert!(
            (1..=WATERMARK_INTERVAL_RECORDS_DEFAULT).contains(&records),
            "interval records={records}"
        );
        self.interval_records = records;
        self
    }
}

/// How often idleness is checked: twice per idleness period.
fn half(idleness_ms: i64) -> i64 {
    (idleness_ms / 2).max(1)
}

/// The operator that applies a [`WatermarkStrategy`]: assigns timestamps, emits watermarks.
pub struct AssignTimestamps<A, G, T> {
    strategy: WatermarkStrategy<A, G>,
    _t: PhantomData<fn(T)>,
}

impl<A: Clone, G: Clone, T> Clone for AssignTimestamps<A, G, T> {
    fn clone(&self) -> Self {
        AssignTimestamps {
            strategy: self.strategy.clone(),
            _t: PhantomData,
        }
    }
}

impl<A, G, T> AssignTimestamps<A, G, T> {
    /// The operator for `strategy`.
    pub fn new(strategy: WatermarkStrategy<A, G>) -> Self {
        AssignTimestamps {
            strategy,
            _t: PhantomData,
        }
    }
}

/// The instantiated [`AssignTimestamps`].
pub struct AssignTimestampsOp<A, G, T, C> {
    _t: PhantomData<fn(T)>,
    assigner: A,
    generator: G,
    next: C,
    ctx: OperatorContext,
    emitted: Watermark,
    interval_records: u32,
    since_emit: u32,
    idleness_ms: Option<i64>,
    idle: bool,
    records_since_check: u64,
    last_activity_ms: i64,
}

impl<A, G, T, C> AssignTimestampsOp<A, G, T, C>
where
    G: WatermarkGenerator<T>,
    C: Collector<T>,
{
    fn emit(&mut self, w: Watermark) -> Result<()> {
        if w > self.emitted {
            self.emitted = w;
            self.next.on_watermark(w)?;
        }
        Ok(())
    }

    /// Idleness: no record for `idleness_ms` of processing time makes the stream idle.
    fn check_idleness(&mut self, now_ms: i64) -> Result<()> {
        let Some(idleness) = self.idleness_ms else {
            return Ok(());
        };
        if std::mem::take(&mut self.records_since_check) > 0 {
            self.last_activity_ms = now_ms;
        } else if !self.idle && now_ms - self.last_activity_ms >= idleness {
            self.idle = true;
            self.next.on_status(WatermarkStatus::Idle)?;
        }
        self.ctx.request_processing_time(now_ms + half(idleness));
        Ok(())
    }
}

impl<A, G, T, C> Collector<T> for AssignTimestampsOp<A, G, T, C>
where
    A: TimestampAssigner<T>,
    G: WatermarkGenerator<T>,
    C: Collector<T>,
{
    #[inline]
    fn collect(&mut self, record: T, ts: Timestamp) -> Result<()> {
        let ts = self.assigner.extract(&record, ts);
        if self.idle {
            self.idle = false;
            self.next.on_status(WatermarkStatus::Active)?;
        }
        self.records_since_check += 1;
        let punctuation = self.generator.on_event(&record, ts);
        // The record goes first: a watermark derived from it must not make it late.
        self.next.collect(record, ts)?;
        if let Some(w) = punctuation {
            self.emit(w)?;
        }
        self.since_emit += 1;
        if self.since_emit >= self.interval_records {
            self.since_emit = 0;
            let w = self.generator.current_watermark();
            self.emit(w)?;
        }
        Ok(())
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        // Upstream watermarks are replaced by this strategy's; only the end of input passes.
        if watermark == Watermark::MAX {
            self.emit(Watermark::MAX)?;
        }
        Ok(())
    }
    fn on_status(&mut self, status: WatermarkStatus) -> Result<()> {
        self.next.on_status(status)
    }
    fn on_processing_time(&mut self, now_ms: i64) -> Result<()> {
        if self.ctx.periodic_watermarks() && self.emitted < Watermark::MAX {
            let w = self.generator.current_watermark();
            self.emit(w)?;
            self.ctx
                .request_processing_time(now_ms + WATERMARK_PERIOD_MS);
        }
        self.check_idleness(now_ms)?;
        self.next.on_processing_time(now_ms)
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.next.on_barrier(barrier)
    }
    fn flush(&mut self) -> Result<()> {
        self.next.flush()
    }
    fn on_end(&mut self) -> Result<()> {
        self.next.on_end()
    }
}

impl<A, G, T> Pipe<T> for AssignTimestamps<A, G, T>
where
    A: TimestampAssigner<T>,
    G: WatermarkGenerator<T>,
    T: 'static,
{
    type Out = T;
    type Op<C: Collector<T>> = AssignTimestampsOp<A, G, T, C>;
    fn attach<C: Collector<T>>(self, next: C, ctx: &OperatorContext) -> Self::Op<C> {
        let now = ctx.processing_time_ms();
        if ctx.periodic_watermarks() {
            ctx.request_processing_time(now + WATERMARK_PERIOD_MS);
        }
        if let Some(idleness) = self.strategy.idleness_ms {
            ctx.request_processing_time(now + half(idleness));
        }
        AssignTimestampsOp {
            _t: PhantomData,
            assigner: self.strategy.assigner,
            generator: self.strategy.generator,
            next,
            ctx: ctx.clone(),
            emitted: Watermark::MIN,
            interval_records: self.strategy.interval_records,
            since_emit: 0,
            idleness_ms: self.strategy.idleness_ms,
            idle: false,
            records_since_check: 0,
            last_activity_ms: now,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push("assign_timestamps_and_watermarks".to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::StreamElement;
    use crate::testkit::Harness;

    #[derive(Clone, Debug, PartialEq)]
    struct Ev(i64);

    fn watermarks_after_each_record(records: &[i64], delay: i64, interval: u32) -> Vec<i64> {
        let strategy = WatermarkStrategy::for_bounded_out_of_orderness(delay)
            .with_timestamp_assigner(|e: &Ev| e.0)
            .with_watermark_interval_records(interval);
        let mut h = Harness::new(AssignTimestamps::new(strategy));
        let mut out = Vec::new();
        for &ts in records {
            h.record(Ev(ts), crate::element::NO_TIMESTAMP).unwrap();
            let mut w = i64::MIN;
            for e in h.take_elements() {
                if let StreamElement::Watermark(x) = e {
                    w = x.0;
                }
            }
            out.push(w);
        }
        out
    }

    #[test]
    fn bounded_out_of_orderness_is_max_minus_delay_minus_one() {
        let got = watermarks_after_each_record(&[10, 30, 20, 50], 5, 1);
        assert_eq!(got, vec![4, 24, i64::MIN, 44]);
    }

    #[test]
    fn watermarks_follow_the_record_count() {
        let got = watermarks_after_each_record(&[10, 30, 20, 50, 60], 0, 2);
        assert_eq!(got, vec![i64::MIN, 29, i64::MIN, 49, i64::MIN]);
    }

    #[test]
    fn timestamps_near_the_limits_saturate() {
        let got = watermarks_after_each_record(&[i64::MIN + 1, i64::MAX], 10, 1);
        assert_eq!(got, vec![i64::MIN, i64::MAX - 11]);
    }

    #[test]
    fn upstream_watermarks_are_replaced_but_the_end_passes() {
        let strategy = WatermarkStrategy::for_monotonous_timestamps();
        let mut h = Harness::new(AssignTimestamps::<_, _, u32>::new(strategy));
        h.watermark(100).unwrap();
        assert!(h.take_elements().is_empty());
        h.end().unwrap();
        assert!(
            h.take_elements()
                .iter()
                .any(|e| matches!(e, StreamElement::Watermark(Watermark::MAX)))
        );
    }

    #[test]
    fn idleness_after_a_quiet_period_and_activity_again() {
        let strategy = WatermarkStrategy::for_monotonous_timestamps().with_idleness(100);
        let mut h = Harness::new(AssignTimestamps::<_, _, u32>::new(strategy));
        let t0 = h.context().processing_time_ms();
        h.processing_time(t0 + 50).unwrap();
        h.processing_time(t0 + 150).unwrap();
        let idle =
            |e: &StreamElement<u32>| matches!(e, StreamElement::Status(WatermarkStatus::Idle));
        assert!(h.take_elements().iter().any(idle));
        h.record(1, 5).unwrap();
        let elements = h.take_elements();
        assert!(matches!(
            elements[0],
            StreamElement::Status(WatermarkStatus::Active)
        ));
    }
}
