//! The checkpoint benchmark's workload (`sluice bench checkpoint`): a keyed window aggregate
//! whose state holds every one of `keys` keys while only a few of them — the *hot* keys —
//! change between two checkpoints, so that each incremental checkpoint writes about
//! `hot_keys / keys` of the state (1% of 1M keys by default: the target condition).
//!
//! Event `i` is a pure function of `i`, as in [`crate::window`]: events `0 .. keys` are the
//! warm-up, key `i` each, so that after them every key has a window accumulator; every later
//! event draws its key uniformly from the `hot_keys` hot keys (spread evenly over the key
//! space). Event time advances at `rate_per_ms` events per millisecond from
//! [`BASE_TIME_MS`](crate::window::BASE_TIME_MS), so with windows far longer than the run
//! nothing fires until the input ends and the state keeps its size.
//!
//! A [`Probe`] tells the benchmark when the job's window operators (or, with pre-aggregation,
//! the combiners in front of them) first process a record on every worker — the job is
//! *running* — and when the source has read its last event; a recovery run stops itself
//! through the probe as soon as it is running.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use sluice::{
    AggregateFunction, Batch, ReadPosition, ReadStatus, Source, SourceContext, SourceReader,
};

use crate::window::{BASE_TIME_MS, EventSplit, splitmix64};

/// The message of the error with which a recovery run's source stops the job once running.
pub const STOPPED_RUNNING: &str = "stopped by the benchmark once running";

/// The generated events: a warm-up over every key, then hot keys only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotKeyGen {
    /// Distinct keys (the state's size, in windows).
    pub keys: u64,
    /// Keys that events after the warm-up draw from (at most `keys`).
    pub hot_keys: u64,
    /// Events per millisecond of event time.
    pub rate_per_ms: u64,
    /// The hash seed.
    pub seed: u64,
}

impl HotKeyGen {
    /// Event `i`: `(key, value, timestamp)`.
    #[inline]
    pub fn event(&self, i: u64) -> (u64, i64, i64) {
        let h = splitmix64(self.seed ^ i);
        let key = if i < self.keys {
            i
        } else {
            let hot = self.hot_keys.clamp(1, self.keys.max(1));
            let slot = ((u128::from(h) * u128::from(hot)) >> 64) as u64;
            slot * (self.keys.max(1) / hot)
        };
        let value = ((h >> 8) & 0xFFFF) as i64 - 0x8000;
        let ts = BASE_TIME_MS + (i / self.rate_per_ms.max(1)) as i64;
        (key, value, ts)
    }
}

/// Records when a job is running and when its source ended; stops a recovery run.
#[derive(Debug)]
pub struct Probe {
    id: u64,
    workers: usize,
    stop_when_running: bool,
    threads: Mutex<Vec<ThreadId>>,
    first: OnceLock<Instant>,
    running: OnceLock<Instant>,
    source_end: Mutex<Option<Instant>>,
    stop: AtomicBool,
}

static PROBES: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The probe this thread has reported its first record to.
    static REPORTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Probe {
    /// A probe for a job on `workers` workers; with `stop_when_running`, its source fails the
    /// job with [`STOPPED_RUNNING`] once every worker has processed a record.
    pub fn new(workers: usize, stop_when_running: bool) -> Arc<Probe> {
        Arc::new(Probe {
            id: PROBES.fetch_add(1, Ordering::Relaxed),
            workers: workers.max(1),
            stop_when_running,
            threads: Mutex::new(Vec::new()),
            first: OnceLock::new(),
            running: OnceLock::new(),
            source_end: Mutex::new(None),
            stop: AtomicBool::new(false),
        })
    }

    /// A record was processed on this thread.
    #[inline]
    pub fn on_record(&self) {
        if REPORTED.with(|r| r.get()) != self.id {
            self.first_on_thread();
        }
    }

    #[cold]
    fn first_on_thread(&self) {
        REPORTED.with(|r| r.set(self.id));
        let now = Instant::now();
        self.first.get_or_init(|| now);
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let me = std::thread::current().id();
        if !threads.contains(&me) {
            threads.push(me);
        }
        if threads.len() >= self.workers {
            self.running.get_or_init(|| now);
            if self.stop_when_running {
                self.stop.store(true, Ordering::Release);
            }
        }
    }

    /// When every worker had processed a record, after `origin`.
    pub fn running_after(&self, origin: Instant) -> Option<Duration> {
        self.running
            .get()
            .map(|t| t.saturating_duration_since(origin))
    }

    /// When the first worker processed a record, after `origin`.
    pub fn first_after(&self, origin: Instant) -> Option<Duration> {
        self.first
            .get()
            .map(|t| t.saturating_duration_since(origin))
    }

    /// When the last split of the source ended, after `origin`.
    pub fn source_end_after(&self, origin: Instant) -> Option<Duration> {
        let end = *self.source_end.lock().unwrap_or_else(|e| e.into_inner());
        end.map(|t| t.saturating_duration_since(origin))
    }

    fn split_ended(&self) {
        let now = Instant::now();
        let mut end = self.source_end.lock().unwrap_or_else(|e| e.into_inner());
        *end = Some(end.map_or(now, |t| t.max(now)));
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// The events of a [`HotKeyGen`] as a replayable source: interleaved splits, the read
/// position is the next event number. Its name is the same whatever its settings, so that a
/// job restored from another run's checkpoint has the same stages.
#[derive(Clone, Debug)]
pub struct HotKeySource {
    /// The events.
    pub events_gen: HotKeyGen,
    /// The number after the last event (`u64::MAX`: never ends).
    pub end: u64,
    /// Reads no event at or past this number, and waits there (a prepared state: the job
    /// is stopped with a savepoint).
    pub hold_at: Option<u64>,
    /// The probe the readers report their end to, and whose stop request they obey.
    pub probe: Arc<Probe>,
}

impl Source for HotKeySource {
    type Item = (u64, i64);
    type Split = EventSplit;
    type Reader = HotKeyReader;

    fn name(&self) -> String {
        "hot-key events".into()
    }
    fn is_bounded(&self) -> bool {
        self.end != u64::MAX
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
    ) -> sluice::Result<HotKeyReader> {
        Ok(HotKeyReader {
            source: self.clone(),
            next: start.map_or(split.first, |p| p.0.max(split.first)),
            stride: split.stride,
        })
    }
}

/// Reads one share of a [`HotKeySource`].
pub struct HotKeyReader {
    source: HotKeySource,
    next: u64,
    stride: u64,
}

impl SourceReader for HotKeyReader {
    type Item = (u64, i64);
    #[inline]
    async fn read_batch(
        &mut self,
        out: &mut Batch<(u64, i64)>,
        records_max: usize,
    ) -> sluice::Result<ReadStatus> {
        if self.source.probe.stop_requested() {
            return Err(sluice::Error::Config(STOPPED_RUNNING.into()));
        }
        let limit = self.source.hold_at.unwrap_or(u64::MAX).min(self.source.end);
        if self.next >= limit && self.next < self.source.end {
            // Holding: the state is prepared, the job waits for its savepoint.
            glommio::timer::sleep(Duration::from_millis(1)).await;
            return Ok(ReadStatus::More);
        }
        let g = self.source.events_gen;
        let mut i = self.next;
        while i < limit && out.len() < records_max {
            let (key, value, ts) = g.event(i);
            out.push((key, value), ts);
            i += self.stride;
        }
        self.next = i;
        if self.next >= self.source.end {
            self.source.probe.split_ended();
            return Ok(ReadStatus::End);
        }
        Ok(ReadStatus::More)
    }
    fn position(&self) -> ReadPosition {
        ReadPosition(self.next)
    }
}

/// `(count, sum)` of a window's values, reporting every record it adds or merges to a
/// [`Probe`]. (With pre-aggregation the combiners add and the window operators merge.)
#[derive(Clone, Debug)]
pub struct ProbedCountSum {
    /// Where records are reported.
    pub probe: Arc<Probe>,
}

impl AggregateFunction<i64> for ProbedCountSum {
    type Acc = (u64, i64);
    type Out = (u64, i64);
    fn create_accumulator(&self) -> (u64, i64) {
        (0, 0)
    }
    #[inline]
    fn add(&self, acc: &mut (u64, i64), value: i64) {
        self.probe.on_record();
        acc.0 += 1;
        acc.1 = acc.1.wrapping_add(value);
    }
    fn merge(&self, acc: &mut (u64, i64), other: (u64, i64)) {
        self.probe.on_record();
        acc.0 += other.0;
        acc.1 = acc.1.wrapping_add(other.1);
    }
    fn get_result(&self, acc: &(u64, i64)) -> (u64, i64) {
        *acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warm_up_covers_every_key_and_then_only_hot_keys_follow() {
        let g = HotKeyGen {
            keys: 1000,
            hot_keys: 10,
            rate_per_ms: 100,
            seed: 7,
        };
        for i in 0..1000 {
            assert_eq!(g.event(i).0, i);
        }
        let mut hot: Vec<u64> = (1000..50_000).map(|i| g.event(i).0).collect();
        hot.sort_unstable();
        hot.dedup();
        assert_eq!(hot.len(), 10, "{hot:?}");
        assert!(hot.iter().all(|&k| k < 1000 && k % 100 == 0), "{hot:?}");
        assert_eq!(g.event(250).2, BASE_TIME_MS + 2);
    }

    #[test]
    fn the_probe_is_running_once_every_worker_reported() {
        let probe = Probe::new(2, true);
        let origin = Instant::now();
        probe.on_record();
        probe.on_record();
        assert!(probe.first_after(origin).is_some());
        assert!(probe.running_after(origin).is_none());
        let p = probe.clone();
        std::thread::spawn(move || p.on_record()).join().unwrap();
        assert!(probe.running_after(origin).is_some());
        assert!(probe.stop_requested());
    }
}
