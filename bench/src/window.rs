//! The windowed-aggregation benchmark: a deterministic event generator — as a Sluice source
//! and as a plain function of the event number — the hand-written single-threaded
//! tumbling-window loop that the engine is measured against, and a sink that checks the
//! engine's results against the loop's without writing them anywhere.
//!
//! Event `i` is a pure function of `i` (a splitmix64 hash): its key is uniform over `keys`,
//! its value small, and its timestamp `base + i / rate_per_ms`, moved back by up to
//! `disorder_ms` for one event in eight. So a run can be split across workers, replayed from
//! any position, and compared with the loop event for event.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;
use sluice::{
    AggregateFunction, Batch, ReadPosition, ReadStatus, Sink, SinkContext, SinkWriter, Source,
    SourceContext, SourceReader, WindowOutput,
};

/// The event-time origin of generated events.
pub const BASE_TIME_MS: i64 = 1_700_000_000_000;
/// Events between two watermarks, on both sides of the comparison.
pub const WATERMARK_INTERVAL: u64 = 1024;

/// The generated events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventGen {
    /// How many.
    pub events: u64,
    /// Distinct keys.
    pub keys: u64,
    /// Events per millisecond of event time.
    pub rate_per_ms: u64,
    /// How far back (in ms) one event in eight is moved.
    pub disorder_ms: i64,
    /// The hash seed.
    pub seed: u64,
}

/// The splitmix64 finalizer: the generators' hash of an event number.
#[inline]
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl EventGen {
    /// Event `i`: `(key, value, timestamp)`.
    #[inline]
    pub fn event(&self, i: u64) -> (u64, i64, i64) {
        let h = splitmix64(self.seed ^ i);
        let key = ((u128::from(h) * u128::from(self.keys)) >> 64) as u64;
        let value = ((h >> 8) & 0xFFFF) as i64 - 0x8000;
        let mut ts = BASE_TIME_MS + (i / self.rate_per_ms.max(1)) as i64;
        if self.disorder_ms > 0 && (h >> 40) & 7 == 0 {
            ts -= ((h >> 44) % (self.disorder_ms as u64 + 1)) as i64;
        }
        (key, value, ts)
    }
}

/// The events as a Sluice source, split into `workers` interleaved shares — split `k` of `n`
/// reads events `k, k + n, k + 2n, …` — so that every worker moves through event time at the
/// same pace (contiguous ranges would put one worker's data far ahead of the others' and hold
/// its windows back until the end). The read position is the next event number.
#[derive(Clone, Copy, Debug)]
pub struct EventSource {
    events_gen: EventGen,
}

impl EventSource {
    /// A source of `events_gen`'s events.
    pub fn new(events_gen: EventGen) -> Self {
        EventSource { events_gen }
    }
}

/// Reads one share of an [`EventSource`].
pub struct EventReader {
    events_gen: EventGen,
    next: u64,
    stride: u64,
}

/// One share of the events: `first, first + stride, …`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSplit {
    /// The first event number.
    pub first: u64,
    /// The distance between two event numbers of the share.
    pub stride: u64,
}

impl EventSplit {
    /// The split as a checkpoint records it: `first` and `stride`, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.first.to_le_bytes().to_vec();
        bytes.extend_from_slice(&self.stride.to_le_bytes());
        bytes
    }
    /// A split written by [`encode`](Self::encode), as a source's `decode_split` returns it.
    pub fn decode_split(bytes: &[u8]) -> sluice::Result<EventSplit> {
        EventSplit::decode(bytes)
            .ok_or_else(|| sluice::Error::Config("a checkpointed event split is malformed".into()))
    }
    /// A split written by [`encode`](Self::encode); `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<EventSplit> {
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        match (word(0), word(1)) {
            (Some(first), Some(stride)) if stride > 0 => Some(EventSplit { first, stride }),
            _ => None,
        }
    }
    /// Splits `k` of `workers`: events `k, k + workers, …`.
    pub fn interleaved(workers: usize) -> Vec<EventSplit> {
        let stride = workers.max(1) as u64;
        (0..stride)
            .map(|first| EventSplit { first, stride })
            .collect()
    }
}

impl Source for EventSource {
    type Item = (u64, i64);
    type Split = EventSplit;
    type Reader = EventReader;

    fn name(&self) -> String {
        format!("generated events({})", self.events_gen.events)
    }
    fn is_bounded(&self) -> bool {
        true
    }
    fn splits(&self, workers: usize) -> sluice::Result<Vec<EventSplit>> {
        Ok(EventSplit::interleaved(workers))
    }
    fn encode_split(&self, split: &EventSplit) -> Option<Vec<u8>> {
        Some(split.encode())
    }
    fn decode_split(&self, bytes: &[u8]) -> sluice::Result<EventSplit> {
        EventSplit::decode_split(bytes)
    }
    async fn open(
        &self,
        split: EventSplit,
        start: Option<ReadPosition>,
        _ctx: &SourceContext,
    ) -> sluice::Result<EventReader> {
        Ok(EventReader {
            events_gen: self.events_gen,
            next: start.map_or(split.first, |p| p.0.max(split.first)),
            stride: split.stride,
        })
    }
}

impl SourceReader for EventReader {
    type Item = (u64, i64);
    #[inline]
    async fn read_batch(
        &mut self,
        out: &mut Batch<(u64, i64)>,
        records_max: usize,
    ) -> sluice::Result<ReadStatus> {
        let total = self.events_gen.events;
        let mut i = self.next;
        while i < total && out.len() < records_max {
            let (key, value, ts) = self.events_gen.event(i);
            out.push((key, value), ts);
            i += self.stride;
        }
        self.next = i;
        Ok(if self.next >= total {
            ReadStatus::End
        } else {
            ReadStatus::More
        })
    }
    fn position(&self) -> ReadPosition {
        ReadPosition(self.next)
    }
}

/// `(count, sum)` of a window's values.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountSum;

impl AggregateFunction<i64> for CountSum {
    type Acc = (u64, i64);
    type Out = (u64, i64);
    fn create_accumulator(&self) -> (u64, i64) {
        (0, 0)
    }
    #[inline]
    fn add(&self, acc: &mut (u64, i64), value: i64) {
        acc.0 += 1;
        acc.1 = acc.1.wrapping_add(value);
    }
    fn merge(&self, acc: &mut (u64, i64), other: (u64, i64)) {
        acc.0 += other.0;
        acc.1 = acc.1.wrapping_add(other.1);
    }
    fn get_result(&self, acc: &(u64, i64)) -> (u64, i64) {
        *acc
    }
}

/// What a run computed, in a form that does not depend on the order of its results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowDigest {
    /// Windows emitted (per key).
    pub windows: u64,
    /// Records counted over all windows.
    pub records: u64,
    /// An order-independent hash of every `(key, start, end, count, sum)`.
    pub checksum: u64,
}

impl WindowDigest {
    /// Adds one window result.
    #[inline]
    pub fn add(&mut self, key: u64, start: i64, end: i64, count: u64, sum: i64) {
        self.windows += 1;
        self.records += count;
        let h = splitmix64(key ^ splitmix64(start as u64 ^ splitmix64(end as u64)));
        self.checksum = self
            .checksum
            .wrapping_add(splitmix64(h ^ count ^ (sum as u64).rotate_left(32)));
    }
    /// Adds another digest.
    pub fn merge(&mut self, other: &WindowDigest) {
        self.windows += other.windows;
        self.records += other.records;
        self.checksum = self.checksum.wrapping_add(other.checksum);
    }
}

/// The hand-written loop: tumbling windows of `size_ms` over `events_gen`'s events with watermarks
/// `max − out_of_orderness − 1` every [`WATERMARK_INTERVAL`] events, one map per open window;
/// returns the digest and the number of late events. What a careful programmer writes for
/// this one job, with nothing of an engine: the machine's limit for it.
pub fn tumbling_loop(
    events_gen: &EventGen,
    size_ms: i64,
    out_of_orderness: i64,
) -> (WindowDigest, u64) {
    // The open windows, by start, each with its `(count, sum)` per key.
    type Open = VecDeque<(i64, FxHashMap<u64, (u64, i64)>)>;
    let mut open: Open = VecDeque::new();
    let mut digest = WindowDigest::default();
    let (mut max_ts, mut watermark, mut late) = (i64::MIN, i64::MIN, 0u64);
    let fire = |digest: &mut WindowDigest, start: i64, map: FxHashMap<u64, (u64, i64)>| {
        for (key, (count, sum)) in map {
            digest.add(key, start, start + size_ms, count, sum);
        }
    };
    for i in 0..events_gen.events {
        let (key, value, ts) = events_gen.event(i);
        let start = ts - ts.rem_euclid(size_ms);
        if start + size_ms - 1 <= watermark {
            late += 1;
        } else {
            let at = match open.iter().rposition(|(s, _)| *s <= start) {
                Some(at) if open[at].0 == start => at,
                found => {
                    let at = found.map_or(0, |a| a + 1);
                    open.insert(at, (start, FxHashMap::default()));
                    at
                }
            };
            let acc = open[at].1.entry(key).or_insert((0, 0));
            acc.0 += 1;
            acc.1 = acc.1.wrapping_add(value);
        }
        max_ts = max_ts.max(ts);
        if (i + 1) % WATERMARK_INTERVAL == 0 {
            watermark = watermark.max(max_ts - out_of_orderness - 1);
            while open
                .front()
                .is_some_and(|(s, _)| s + size_ms - 1 <= watermark)
            {
                if let Some((start, map)) = open.pop_front() {
                    fire(&mut digest, start, map);
                }
            }
        }
    }
    for (start, map) in open {
        fire(&mut digest, start, map);
    }
    (digest, late)
}

/// A sink that digests window results instead of writing them; the job's digest is the sum of
/// the workers', in a [`DigestHandle`].
#[derive(Clone, Debug, Default)]
pub struct DigestSink {
    handle: DigestHandle,
}

/// The combined digest of a [`DigestSink`]'s workers.
#[derive(Clone, Debug, Default)]
pub struct DigestHandle {
    windows: Arc<AtomicU64>,
    records: Arc<AtomicU64>,
    checksum: Arc<AtomicU64>,
}

impl DigestHandle {
    /// The digest so far (complete after the job ran).
    pub fn digest(&self) -> WindowDigest {
        WindowDigest {
            windows: self.windows.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            checksum: self.checksum.load(Ordering::Relaxed),
        }
    }
}

impl DigestSink {
    /// A new sink.
    pub fn new() -> Self {
        DigestSink::default()
    }
    /// Its digest.
    pub fn handle(&self) -> DigestHandle {
        self.handle.clone()
    }
}

/// One worker's [`DigestSink`] writer.
pub struct DigestWriter {
    digest: WindowDigest,
    handle: DigestHandle,
}

impl Sink<WindowOutput<u64, (u64, i64)>> for DigestSink {
    type Writer = DigestWriter;
    fn name(&self) -> String {
        "digest".into()
    }
    async fn open(&self, _ctx: &SinkContext) -> sluice::Result<DigestWriter> {
        Ok(DigestWriter {
            digest: WindowDigest::default(),
            handle: self.handle.clone(),
        })
    }
}

impl SinkWriter<WindowOutput<u64, (u64, i64)>> for DigestWriter {
    async fn write_batch(
        &mut self,
        batch: &mut Vec<WindowOutput<u64, (u64, i64)>>,
    ) -> sluice::Result<()> {
        for w in batch.drain(..) {
            let (count, sum) = w.value;
            self.digest
                .add(w.key, w.window.start, w.window.end, count, sum);
        }
        Ok(())
    }
    async fn finish(&mut self) -> sluice::Result<()> {
        let d = std::mem::take(&mut self.digest);
        self.handle.windows.fetch_add(d.windows, Ordering::Relaxed);
        self.handle.records.fetch_add(d.records, Ordering::Relaxed);
        self.handle
            .checksum
            .fetch_add(d.checksum, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_a_function_of_their_number() {
        let events_gen = EventGen {
            events: 10,
            keys: 7,
            rate_per_ms: 2,
            disorder_ms: 5,
            seed: 1,
        };
        assert_eq!(events_gen.event(3), events_gen.event(3));
        for i in 0..1000 {
            let (key, value, ts) = events_gen.event(i);
            assert!(key < 7 && value.abs() <= 0x8000);
            let t = BASE_TIME_MS + (i / 2) as i64;
            assert!((t - 5..=t).contains(&ts), "i={i} ts={ts}");
        }
    }

    #[test]
    fn the_loop_counts_every_event_once_without_lateness() {
        let events_gen = EventGen {
            events: 20_000,
            keys: 100,
            rate_per_ms: 10,
            disorder_ms: 30,
            seed: 9,
        };
        let (digest, late) = tumbling_loop(&events_gen, 100, 50);
        assert_eq!(late, 0);
        assert_eq!(digest.records, 20_000);
    }
}
