//! What `sluice bench nexmark` runs a query with: a source throttled to the wall clock (rate
//! mode), sinks that count rows, measure end-to-end latency or write the rows, and the
//! [`BenchOutput`] that picks them.
//!
//! # Generation time and latency
//!
//! In rate mode event time *is* wall time, shifted: the run's event-time rate equals its wall
//! rate, and the [`ThrottledSource`] releases the events of event-time millisecond `t` when
//! the wall clock reaches `start + (t − base_time)`. That instant is an event's **generation
//! time**: the wall-clock instant the throttled source emitted it — or, when the job falls
//! behind and the source cannot keep up, the instant it should have (so time spent queued
//! behind a slow job counts, as it would for events waiting in a message queue: no coordinated
//! omission).
//!
//! Generation time is therefore a function of event time, and the engine already carries every
//! record's event time beside it through every operator — a window's result carries its
//! window's last instant, a join's result the later of its inputs'. So nothing extra travels
//! with a record: the throughput mode pays nothing, and the latency mode adds one `i64` per
//! result row (its timestamp, taken by a `map_with_timestamp` before the sink) and no
//! allocation. The sink computes each row's latency as `now − due`, where the row's *due*
//! instant is the generation time of the event that made it producible (see [`Due`]): the row's
//! timestamp for a row computed from records alone, the timestamp plus the watermark's 4 s
//! delay for a row fired by the watermark, the window's end for processing-time windows. Rows
//! that only the end of the input produces (final values; windows the last event leaves open)
//! are counted but not measured: an unbounded stream would produce them later.
//!
//! Latencies go into an HDR histogram per worker (1 µs to 1 h, 3 significant digits), merged
//! at the end. They are recorded with `record`, not `record_correct`: `record_correct` fills in
//! the samples that a client measuring from the *actual* send time misses while it is stalled,
//! and every row here is measured, from its *intended* generation time, so correcting again
//! would count the stall twice.

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use sluice::ops::Pipe;
use sluice::{
    Batch, DataStream, Error, Head, ReadPosition, ReadStatus, Result, Sink, SinkContext,
    SinkWriter, Source, SourceContext, SourceReader, TextFileSink,
};

use super::generator::{Generator, NexmarkConfig};
use super::model::Event;
use super::queries::{Due, RowOutput, WATERMARK_DELAY_MS};
use super::source::{NexmarkSource, NexmarkSplit};

/// How long after the first reader opens the first events are due: every worker is running
/// by then, so the first events are not late for start-up.
const START_LEAD: Duration = Duration::from_millis(50);

/// Highest latency the histograms hold, in µs (an hour); higher values are recorded as it.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// The wall clock of a rate-mode run: when event time `base_time_ms` is due, and how event
/// times and processing times map to it. Shared by the source's readers and the sinks.
#[derive(Clone, Debug)]
pub struct LatencyClock {
    inner: Arc<ClockInner>,
}

#[derive(Debug)]
struct ClockInner {
    /// The instant the first event is due, and the wall-clock epoch milliseconds then.
    start: OnceLock<(Instant, i64)>,
    base_time_ms: i64,
    /// The last event's time: rows due later are produced when the input ends.
    last_event_ms: i64,
}

impl LatencyClock {
    /// A clock for the events `cfg` describes (its base time and last event's time).
    pub fn new(cfg: &NexmarkConfig) -> Result<LatencyClock> {
        let generator = Generator::new(cfg)?;
        let last = cfg.events.unwrap_or(u64::MAX).saturating_sub(1);
        Ok(LatencyClock {
            inner: Arc::new(ClockInner {
                start: OnceLock::new(),
                base_time_ms: cfg.base_time_ms,
                last_event_ms: generator.timestamp_ms(last),
            }),
        })
    }

    /// The instant the first event is due: fixed by the first caller.
    pub fn start(&self) -> Instant {
        self.start_and_epoch().0
    }

    fn start_and_epoch(&self) -> (Instant, i64) {
        *self.inner.start.get_or_init(|| {
            let epoch_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let lead = START_LEAD.as_millis() as i64;
            (Instant::now() + START_LEAD, epoch_ms + lead)
        })
    }

    /// Microseconds since the start (negative before it).
    pub fn now_us(&self) -> i64 {
        let start = self.start();
        let now = Instant::now();
        match now.checked_duration_since(start) {
            Some(d) => d.as_micros() as i64,
            None => -(start.duration_since(now).as_micros() as i64),
        }
    }

    /// When event time `ts` is generated, in µs since the start.
    pub fn generated_us(&self, ts: i64) -> i64 {
        ts.saturating_sub(self.inner.base_time_ms)
            .saturating_mul(1000)
    }

    /// When a row of timestamp `ts` becomes due, in µs since the start; `None` for a row that
    /// only the end of the input produces (a final value, or a window the last event leaves
    /// open): an unbounded stream would produce it later, so its latency says nothing.
    pub fn due_us(&self, due: Due, ts: i64) -> Option<i64> {
        let at = match due {
            Due::OnRecord => self.generated_us(ts),
            Due::OnWatermark => self.generated_us(ts.saturating_add(WATERMARK_DELAY_MS)),
            Due::OnProcessingTime => {
                let epoch_ms = self.start_and_epoch().1;
                ts.saturating_add(1)
                    .saturating_sub(epoch_ms)
                    .saturating_mul(1000)
            }
            Due::AtEnd => return None,
        };
        (at <= self.generated_us(self.inner.last_event_ms)).then_some(at)
    }
}

/// Nexmark events released by the wall clock: event time `t` is due `t − base_time` after the
/// clock's start (see the module docs). The event-time rate is the wall rate. Splits as
/// [`NexmarkSource`]'s.
pub struct ThrottledSource {
    inner: NexmarkSource,
    clock: LatencyClock,
}

impl ThrottledSource {
    /// The events of `cfg`, released on `clock`.
    pub fn new(cfg: NexmarkConfig, clock: LatencyClock) -> ThrottledSource {
        ThrottledSource {
            inner: NexmarkSource::new(cfg),
            clock,
        }
    }
}

/// Reads one split of a [`ThrottledSource`].
pub struct ThrottledReader {
    generator: Generator,
    split: NexmarkSplit,
    next: u64,
    clock: LatencyClock,
}

impl Source for ThrottledSource {
    type Item = Event;
    type Split = NexmarkSplit;
    type Reader = ThrottledReader;
    fn name(&self) -> String {
        format!("throttled {}", self.inner.name())
    }
    fn is_bounded(&self) -> bool {
        self.inner.is_bounded()
    }
    fn splits(&self, workers: usize) -> Result<Vec<NexmarkSplit>> {
        self.inner.splits(workers)
    }
    async fn open(
        &self,
        split: NexmarkSplit,
        start: Option<ReadPosition>,
        _ctx: &SourceContext,
    ) -> Result<ThrottledReader> {
        self.clock.start();
        Ok(ThrottledReader {
            generator: Generator::new(self.inner.config())?,
            next: split.align(start.map_or(split.first, |p| p.0)),
            split,
            clock: self.clock.clone(),
        })
    }
}

impl SourceReader for ThrottledReader {
    type Item = Event;
    async fn read_batch(
        &mut self,
        out: &mut Batch<Event>,
        records_max: usize,
    ) -> Result<ReadStatus> {
        let base = self.clock.inner.base_time_ms;
        loop {
            if self.next >= self.split.end {
                return Ok(ReadStatus::End);
            }
            let now_us = self.clock.now_us();
            let due_us = self
                .clock
                .generated_us(self.generator.timestamp_ms(self.next));
            if due_us > now_us {
                glommio::timer::sleep(Duration::from_micros((due_us - now_us) as u64)).await;
                continue;
            }
            // Every event of the milliseconds that have begun.
            let released_ms = base.saturating_add(now_us.div_euclid(1000));
            let mut n = 0;
            while n < records_max && self.next < self.split.end {
                let ts = self.generator.timestamp_ms(self.next);
                if ts > released_ms {
                    break;
                }
                out.push(self.generator.event(self.next), ts);
                self.next = self.next.saturating_add(self.split.step);
                n += 1;
            }
            let done = self.next >= self.split.end;
            return Ok(if done {
                ReadStatus::End
            } else {
                ReadStatus::More
            });
        }
    }
    fn position(&self) -> ReadPosition {
        ReadPosition(self.next.min(self.split.end))
    }
}

/// A sink that drops its records (the suite's `blackhole` connector).
#[derive(Clone, Copy, Debug, Default)]
pub struct Discard;

/// The writer of [`Discard`].
pub struct DiscardWriter;

impl<T: 'static> Sink<T> for Discard {
    type Writer = DiscardWriter;
    fn name(&self) -> String {
        "blackhole".into()
    }
    async fn open(&self, _ctx: &SinkContext) -> Result<DiscardWriter> {
        Ok(DiscardWriter)
    }
}

impl<T: 'static> SinkWriter<T> for DiscardWriter {
    async fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<()> {
        batch.clear();
        Ok(())
    }
    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Counts the rows that pass into another sink (and passes every call of the sink protocol,
/// checkpoints' two phases included, on to it).
pub struct Counted<S> {
    inner: S,
    rows: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    /// Counts into `rows`, then writes to `inner`.
    pub fn new(inner: S, rows: Arc<AtomicU64>) -> Counted<S> {
        Counted { inner, rows }
    }
}

/// The writer of [`Counted`].
pub struct CountedWriter<W> {
    inner: W,
    rows: u64,
    total: Arc<AtomicU64>,
}

impl<T: 'static, S: Sink<T>> Sink<T> for Counted<S> {
    type Writer = CountedWriter<S::Writer>;
    fn name(&self) -> String {
        format!("counted {}", self.inner.name())
    }
    fn prepare(&self, workers: usize) -> Result<()> {
        self.inner.prepare(workers)
    }
    async fn open(&self, ctx: &SinkContext) -> Result<Self::Writer> {
        Ok(CountedWriter {
            inner: self.inner.open(ctx).await?,
            rows: 0,
            total: self.rows.clone(),
        })
    }
    fn recover(&self, restored_id: u64, restored_run: u64) -> Result<()> {
        self.inner.recover(restored_id, restored_run)
    }
    fn commit_checkpoint(&self, id: u64) -> Result<()> {
        self.inner.commit_checkpoint(id)
    }
    fn commit(&self) -> Result<()> {
        self.inner.commit()
    }
    fn abort(&self) {
        self.inner.abort();
    }
}

impl<T: 'static, W: SinkWriter<T>> SinkWriter<T> for CountedWriter<W> {
    async fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<()> {
        self.rows += batch.len() as u64;
        self.inner.write_batch(batch).await
    }
    async fn finish(&mut self) -> Result<()> {
        self.total
            .fetch_add(std::mem::take(&mut self.rows), Ordering::Relaxed);
        self.inner.finish().await
    }
    async fn pre_commit(&mut self, checkpoint_id: u64) -> Result<()> {
        self.inner.pre_commit(checkpoint_id).await
    }
}

/// An empty latency histogram: 1 µs to [`LATENCY_US_MAX`], 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
        .unwrap_or_else(|e| unreachable!("constant bounds are valid: {e}"))
}

/// Records each row's end-to-end latency (see the module docs), then writes the rows to
/// another sink. Its records are `(row, timestamp)`.
pub struct LatencySink<S> {
    inner: S,
    clock: LatencyClock,
    due: Due,
    merged: Arc<Mutex<Histogram<u64>>>,
}

impl<S> LatencySink<S> {
    /// Latencies of rows due per `due` on `clock`, merged into `merged` at the end.
    pub fn new(
        inner: S,
        clock: LatencyClock,
        due: Due,
        merged: Arc<Mutex<Histogram<u64>>>,
    ) -> Self {
        LatencySink {
            inner,
            clock,
            due,
            merged,
        }
    }
}

/// The writer of [`LatencySink`].
pub struct LatencyWriter<T, W> {
    inner: W,
    rows: Vec<T>,
    clock: LatencyClock,
    due: Due,
    histogram: Histogram<u64>,
    merged: Arc<Mutex<Histogram<u64>>>,
}

impl<T: 'static, S: Sink<T>> Sink<(T, i64)> for LatencySink<S> {
    type Writer = LatencyWriter<T, S::Writer>;
    fn name(&self) -> String {
        format!("latency {}", self.inner.name())
    }
    fn prepare(&self, workers: usize) -> Result<()> {
        self.inner.prepare(workers)
    }
    async fn open(&self, ctx: &SinkContext) -> Result<Self::Writer> {
        Ok(LatencyWriter {
            inner: self.inner.open(ctx).await?,
            rows: Vec::new(),
            clock: self.clock.clone(),
            due: self.due,
            histogram: latency_histogram(),
            merged: self.merged.clone(),
        })
    }
    fn recover(&self, restored_id: u64, restored_run: u64) -> Result<()> {
        self.inner.recover(restored_id, restored_run)
    }
    fn commit_checkpoint(&self, id: u64) -> Result<()> {
        self.inner.commit_checkpoint(id)
    }
    fn commit(&self) -> Result<()> {
        self.inner.commit()
    }
    fn abort(&self) {
        self.inner.abort();
    }
}

impl<T: 'static, W: SinkWriter<T>> SinkWriter<(T, i64)> for LatencyWriter<T, W> {
    async fn write_batch(&mut self, batch: &mut Vec<(T, i64)>) -> Result<()> {
        // One clock read per batch: its rows reached the sink together.
        let now_us = self.clock.now_us();
        for (row, ts) in batch.drain(..) {
            if let Some(due_us) = self.clock.due_us(self.due, ts) {
                let latency = now_us.saturating_sub(due_us).max(0) as u64;
                self.histogram.saturating_record(latency);
            }
            self.rows.push(row);
        }
        self.inner.write_batch(&mut self.rows).await
    }
    async fn pre_commit(&mut self, checkpoint_id: u64) -> Result<()> {
        self.inner.pre_commit(checkpoint_id).await
    }
    async fn finish(&mut self) -> Result<()> {
        self.inner.finish().await?;
        let mut merged = self.merged.lock().unwrap_or_else(|e| e.into_inner());
        merged.add(&self.histogram).map_err(|e| Error::Operator {
            operator: "latency sink".into(),
            message: format!("merge histograms: {e}"),
        })
    }
}

/// The benchmark's [`RowOutput`]: counts rows and, as configured, writes them as text into a
/// directory and measures their latency.
pub struct BenchOutput {
    /// Write the rows as lines into part files here.
    pub text_dir: Option<PathBuf>,
    /// Measure latency on this clock (rate mode).
    pub latency: Option<LatencyClock>,
    /// Rows written.
    pub rows: Arc<AtomicU64>,
    /// Latencies, in µs, once the job ended (empty when none were measured).
    pub histogram: Arc<Mutex<Histogram<u64>>>,
}

impl BenchOutput {
    /// Counts rows only.
    pub fn new(text_dir: Option<PathBuf>, latency: Option<LatencyClock>) -> BenchOutput {
        BenchOutput {
            text_dir,
            latency,
            rows: Arc::new(AtomicU64::new(0)),
            histogram: Arc::new(Mutex::new(latency_histogram())),
        }
    }

    fn sink<H, P, S>(&self, rows: DataStream<H, P>, due: Due, inner: S)
    where
        H: Head,
        P: Pipe<H::Item>,
        P::Out: Send + 'static,
        S: Sink<P::Out>,
    {
        let counted = Counted::new(inner, self.rows.clone());
        match (&self.latency, due) {
            (None, _) | (Some(_), Due::AtEnd) => rows.sink(counted),
            (Some(clock), _) => {
                let merged = self.histogram.clone();
                rows.map_with_timestamp(|row, ts| (row, ts))
                    .sink(LatencySink::new(counted, clock.clone(), due, merged));
            }
        }
    }
}

impl RowOutput for BenchOutput {
    fn rows<H, P>(&self, rows: DataStream<H, P>, due: Due)
    where
        H: Head,
        P: Pipe<H::Item>,
        P::Out: Display + Send + 'static,
    {
        match &self.text_dir {
            Some(dir) => self.sink(rows, due, TextFileSink::new(dir.clone())),
            None => self.sink(rows, due, Discard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_due_when_their_event_is_generated_or_the_watermark_passes() {
        let cfg = NexmarkConfig {
            events: Some(10_000),
            first_event_rate: 1_000,
            next_event_rate: 1_000,
            ..NexmarkConfig::default()
        };
        let clock = LatencyClock::new(&cfg).unwrap();
        let base = cfg.base_time_ms;
        // 10,000 events at 1,000 events/s: the last one at 9,999 ms.
        assert_eq!(clock.due_us(Due::OnRecord, base + 1_500), Some(1_500_000));
        assert_eq!(
            clock.due_us(Due::OnWatermark, base + 1_999),
            Some(5_999_000)
        );
        // Fired only by the end of the input: not measured.
        assert_eq!(clock.due_us(Due::OnWatermark, base + 6_000), None);
        assert_eq!(clock.due_us(Due::AtEnd, base), None);
        assert!(
            clock.now_us() < 0,
            "the first event is due {START_LEAD:?} after the start"
        );
    }
}
