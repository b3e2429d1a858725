//! Local pre-aggregation of windows before the hash exchange (Flink's two-phase,
//! "local-global" window aggregation), for sliced windows and for sessions.
//!
//! A [`WindowCombiner`] sits in the sending stage, after its watermarks are assigned. A record
//! ahead of the stage's watermark is added to a local accumulator per (slice, key); the
//! partial accumulators of a slice are sent on — as [`Combined::Partial`] records stamped with
//! a timestamp inside the slice — just before the watermark that makes the slice's first window
//! due, so the window operator merges them before that watermark reaches it. A record at or
//! behind the watermark goes on as it is ([`Combined::Raw`]): the window operator judges its
//! lateness exactly as without the combiner, because the watermark this stage sends is the
//! watermark of the channel the record arrives on. So the exchange carries about one record per
//! key and slice instead of one per event, with the same results.
//!
//! Partials are also sent before a checkpoint barrier (the combiner keeps nothing across a
//! checkpoint), before the stage turns idle (the operator then stops waiting for its
//! watermark), at the end of input, and whenever it holds [`COMBINE_ENTRIES_MAX`] of them.
//!
//! **Sessions.** For event-time sessions with gap `g` the combiner keeps, per key, one local
//! session: records ahead of the watermark whose windows `[ts, ts + g)` overlap, merged as the
//! session operator merges them, sent on as one [`Combined::Session`] stamped with its start.
//! A record that overlaps nothing of the key's local session sends that one on and starts
//! another; a record at or behind the watermark sends the key's local session on before it
//! goes on raw. A local session is sent on before the watermark reaches its start. Then at the
//! operator it merges with nothing that has fired — a session that has fired ends at or before
//! the watermark, before every record of the local session — so merging it whole gives the
//! sessions and accumulators that merging its records one by one gives, and none of its
//! records is judged late: the same results. Local sessions wait in buckets of
//! [`SESSION_BUCKET_MS`] by start, so a watermark finds the due ones without a scan (sent up to
//! a bucket early).

use std::collections::VecDeque;
use std::marker::PhantomData;

use crate::FastMap;
use crate::chain::{Collector, Pipe};
use crate::context::OperatorContext;
use crate::element::{
    CheckpointBarrier, NO_TIMESTAMP, Timestamp, Watermark, WatermarkStatus, is_event_time,
};
use crate::error::Result;
use crate::key::Key;
use crate::window::sliced::SliceSpec;
use crate::window::{TimeWindow, WindowAssigner, WindowFunction, saturate};

/// Partial accumulators a combiner holds before it sends them all on: bounds its memory.
pub const COMBINE_ENTRIES_MAX: usize = 1 << 16;

/// Local sessions wait in buckets of this many ms by start: a watermark sends on the buckets
/// it has reached, so a local session goes at most this much before it must.
pub const SESSION_BUCKET_MS: i64 = 4;

/// What crosses the exchange of a windowed aggregation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Combined<T, A> {
    /// A record.
    Raw(T),
    /// The accumulator of one key's records in one slice, stamped with a timestamp inside
    /// the slice.
    Partial(A),
    /// The accumulator of one key's records whose session windows merge into this window,
    /// stamped with its start.
    Session(TimeWindow, A),
}

/// The combiner's pipe: pre-aggregates slices (tumbling or sliding event-time windows) or
/// sessions (event-time session windows) when the windows fire by their default trigger and
/// the function merges; passes records through otherwise.
pub struct WindowCombiner<W, K, T> {
    function: W,
    spec: Option<SliceSpec>,
    /// The session gap, for sessions.
    gap: Option<i64>,
    _p: PhantomData<fn(K, T)>,
}

impl<W: Clone, K, T> Clone for WindowCombiner<W, K, T> {
    fn clone(&self) -> Self {
        WindowCombiner {
            function: self.function.clone(),
            spec: self.spec,
            gap: self.gap,
            _p: PhantomData,
        }
    }
}

impl<W, K, T> WindowCombiner<W, K, T>
where
    W: WindowFunction<K, T>,
{
    /// A combiner for windows of `assigner` computed by `function` (fired by their default
    /// trigger when `default_trigger`).
    pub fn new(assigner: &WindowAssigner, function: W, default_trigger: bool) -> Self {
        let on = default_trigger && function.combinable() && assigner.time().is_event();
        let (spec, gap) = match *assigner {
            _ if !on => (None, None),
            WindowAssigner::Tumbling { size, offset, .. } => {
                (Some(SliceSpec::new(size, size, offset)), None)
            }
            WindowAssigner::Sliding {
                size,
                slide,
                offset,
                ..
            } => (Some(SliceSpec::new(size, slide, offset)), None),
            WindowAssigner::Session { gap, .. } => (None, Some(gap)),
            WindowAssigner::Global => (None, None),
        };
        WindowCombiner {
            function,
            spec,
            gap,
            _p: PhantomData,
        }
    }
}

/// One key's local session.
struct LocalSession<A> {
    window: TimeWindow,
    acc: A,
}

/// The local sessions of a combiner.
struct LocalSessions<K, A> {
    gap: i64,
    by_key: FastMap<K, LocalSession<A>>,
    /// Keys by the bucket of their local session's start, ascending; a key whose session
    /// moved to an earlier bucket, or was sent on, may also be in a later one.
    buckets: VecDeque<(i64, Vec<K>)>,
    /// Keys in `buckets`.
    filed: usize,
    spare: Vec<Vec<K>>,
}

fn bucket_of(start: i64) -> i64 {
    start.div_euclid(SESSION_BUCKET_MS)
}

impl<K: Key, A> LocalSessions<K, A> {
    fn new(gap: i64) -> Self {
        LocalSessions {
            gap,
            by_key: FastMap::default(),
            buckets: VecDeque::new(),
            filed: 0,
            spare: Vec::new(),
        }
    }

    /// Files `key` under `bucket`.
    fn file(&mut self, bucket: i64, key: K) {
        self.filed += 1;
        match self.buckets.iter().rposition(|(b, _)| *b <= bucket) {
            Some(i) if self.buckets[i].0 == bucket => self.buckets[i].1.push(key),
            found => {
                let at = found.map_or(0, |i| i + 1);
                let mut keys = self.spare.pop().unwrap_or_default();
                keys.push(key);
                self.buckets.insert(at, (bucket, keys));
            }
        }
    }

    /// Sends on, in bucket order, the local sessions of the buckets up to `last`.
    fn send_up_to<C: Collector<(K, Combined<T, A>)>, T>(
        &mut self,
        last: i64,
        next: &mut C,
    ) -> Result<()> {
        while let Some((bucket, _)) = self.buckets.front() {
            if *bucket > last {
                break;
            }
            let Some((bucket, mut keys)) = self.buckets.pop_front() else {
                break;
            };
            self.filed -= keys.len();
            for key in keys.drain(..) {
                let due = self
                    .by_key
                    .get(&key)
                    .is_some_and(|s| bucket_of(s.window.start) <= bucket);
                if due && let Some(s) = self.by_key.remove(&key) {
                    next.collect((key, Combined::Session(s.window, s.acc)), s.window.start)?;
                }
            }
            if self.spare.len() < 64 {
                self.spare.push(keys);
            }
        }
        Ok(())
    }

    /// Sends every local session on.
    fn send_all<C: Collector<(K, Combined<T, A>)>, T>(&mut self, next: &mut C) -> Result<()> {
        self.send_up_to(i64::MAX, next)?;
        // Every local session is filed under its bucket: nothing is left.
        debug_assert!(self.by_key.is_empty());
        for (key, s) in self.by_key.drain() {
            next.collect((key, Combined::Session(s.window, s.acc)), s.window.start)?;
        }
        Ok(())
    }

    /// Sends `key`'s local session on, if it has one.
    fn send_key<C: Collector<(K, Combined<T, A>)>, T>(
        &mut self,
        key: &K,
        next: &mut C,
    ) -> Result<()> {
        if let Some(s) = self.by_key.remove(key) {
            next.collect(
                (key.clone(), Combined::Session(s.window, s.acc)),
                s.window.start,
            )?;
        }
        Ok(())
    }
}

struct LocalSlice<K, A> {
    start: i128,
    /// The largest timestamp added: the partials' stamp.
    max_ts: i64,
    accs: FastMap<K, A>,
}

/// The instantiated [`WindowCombiner`].
pub struct WindowCombinerOp<W: WindowFunction<K, T>, K, T, C> {
    function: W,
    spec: Option<SliceSpec>,
    sessions: Option<LocalSessions<K, W::Acc>>,
    slices: VecDeque<LocalSlice<K, W::Acc>>,
    entries: usize,
    watermark: i64,
    /// The timestamps `[lo, hi]` of the last slice used and its start.
    cached: (i64, i64, i128),
    spare_maps: Vec<FastMap<K, W::Acc>>,
    next: C,
    _t: PhantomData<fn(T)>,
}

impl<W, K, T, C> WindowCombinerOp<W, K, T, C>
where
    W: WindowFunction<K, T>,
    K: Key,
    C: Collector<(K, Combined<T, W::Acc>)>,
{
    fn send(&mut self, slice: LocalSlice<K, W::Acc>) -> Result<()> {
        let mut accs = slice.accs;
        self.entries -= accs.len();
        for (key, acc) in accs.drain() {
            self.next
                .collect((key, Combined::Partial(acc)), slice.max_ts)?;
        }
        if self.spare_maps.len() < 4 {
            self.spare_maps.push(accs);
        }
        Ok(())
    }

    /// Sends the slices whose first window is due at watermark `w`.
    fn send_due(&mut self, w: i64) -> Result<()> {
        let Some(spec) = self.spec else {
            return Ok(());
        };
        while let Some(slice) = self.slices.front() {
            let first = spec
                .slice_window_starts(slice.start)
                .next()
                .unwrap_or(slice.start);
            if spec.max_timestamp(first) > w {
                break;
            }
            if let Some(slice) = self.slices.pop_front() {
                self.send(slice)?;
            }
        }
        Ok(())
    }

    fn send_all(&mut self) -> Result<()> {
        while let Some(slice) = self.slices.pop_front() {
            self.send(slice)?;
        }
        self.cached = (1, 0, 0);
        if let Some(sessions) = &mut self.sessions {
            sessions.send_all(&mut self.next)?;
        }
        Ok(())
    }

    /// Adds a record ahead of the watermark to its key's local session.
    #[inline]
    fn add_to_session(&mut self, key: K, value: T, ts: Timestamp) -> Result<()> {
        let WindowCombinerOp {
            function,
            sessions,
            next,
            ..
        } = self;
        let Some(sessions) = sessions else {
            return next.collect((key, Combined::Raw(value)), ts);
        };
        let window = TimeWindow::new(ts, ts.saturating_add(sessions.gap));
        let refile = match sessions.by_key.get_mut(&key) {
            Some(s) if s.window.overlaps(&window) => {
                // The common case: the record extends the key's local session.
                function.add(&mut s.acc, value, ts);
                let before = bucket_of(s.window.start);
                s.window = s.window.span(&window);
                let after = bucket_of(s.window.start);
                (after < before).then_some(after)
            }
            Some(s) => {
                let mut acc = function.create();
                function.add(&mut acc, value, ts);
                let old = std::mem::replace(s, LocalSession { window, acc });
                next.collect(
                    (key.clone(), Combined::Session(old.window, old.acc)),
                    old.window.start,
                )?;
                Some(bucket_of(ts))
            }
            None => {
                let mut acc = function.create();
                function.add(&mut acc, value, ts);
                sessions
                    .by_key
                    .insert(key.clone(), LocalSession { window, acc });
                Some(bucket_of(ts))
            }
        };
        if let Some(bucket) = refile {
            sessions.file(bucket, key);
            if sessions.by_key.len() >= COMBINE_ENTRIES_MAX
                || sessions.filed >= 4 * COMBINE_ENTRIES_MAX
            {
                self.send_all()?;
            }
        }
        Ok(())
    }

    fn slice_for(&mut self, spec: SliceSpec, ts: Timestamp) -> usize {
        let (lo, hi, start) = self.cached;
        if ts >= lo && ts <= hi && self.slices.back().is_some_and(|s| s.start == start) {
            return self.slices.len() - 1;
        }
        let start = spec.slice_start(ts);
        self.cached = (
            saturate(start),
            saturate(start + spec.slice_len() - 1),
            start,
        );
        match self.slices.iter().rposition(|s| s.start <= start) {
            Some(i) if self.slices[i].start == start => i,
            found => {
                let at = found.map_or(0, |i| i + 1);
                let accs = self.spare_maps.pop().unwrap_or_default();
                let slice = LocalSlice {
                    start,
                    max_ts: ts,
                    accs,
                };
                self.slices.insert(at, slice);
                at
            }
        }
    }
}

impl<W, K, T, C> Collector<(K, T)> for WindowCombinerOp<W, K, T, C>
where
    W: WindowFunction<K, T>,
    K: Key,
    C: Collector<(K, Combined<T, W::Acc>)>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, T), ts: Timestamp) -> Result<()> {
        let spec = match self.spec {
            Some(spec) if ts != NO_TIMESTAMP && ts > self.watermark => spec,
            None if self.sessions.is_some() => {
                if is_event_time(ts) && ts > self.watermark {
                    return self.add_to_session(key, value, ts);
                }
                // The key's local session goes first, as its records came first.
                if let Some(sessions) = &mut self.sessions {
                    sessions.send_key(&key, &mut self.next)?;
                }
                return self.next.collect((key, Combined::Raw(value)), ts);
            }
            _ => return self.next.collect((key, Combined::Raw(value)), ts),
        };
        let i = self.slice_for(spec, ts);
        let slice = &mut self.slices[i];
        slice.max_ts = slice.max_ts.max(ts);
        let new = match slice.accs.get_mut(&key) {
            Some(acc) => {
                self.function.add(acc, value, ts);
                false
            }
            None => {
                let mut acc = self.function.create();
                self.function.add(&mut acc, value, ts);
                slice.accs.insert(key, acc);
                true
            }
        };
        if new {
            self.entries += 1;
            if self.entries >= COMBINE_ENTRIES_MAX {
                self.send_all()?;
            }
        }
        Ok(())
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        if watermark == Watermark::MAX {
            self.send_all()?;
        } else {
            self.send_due(watermark.0)?;
            if let Some(sessions) = &mut self.sessions {
                // Local sessions that start at or before the watermark go before it.
                sessions.send_up_to(bucket_of(watermark.0), &mut self.next)?;
            }
        }
        self.watermark = self.watermark.max(watermark.0);
        self.next.on_watermark(watermark)
    }
    fn on_status(&mut self, status: WatermarkStatus) -> Result<()> {
        if status == WatermarkStatus::Idle {
            // The operator stops waiting for this input's watermark: what is held must not
            // wait either.
            self.send_all()?;
        }
        self.next.on_status(status)
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.send_all()?;
        self.next.on_barrier(barrier)
    }
    fn on_end(&mut self) -> Result<()> {
        self.send_all()?;
        self.next.on_end()
    }
    crate::forward_hooks!(on_processing_time, flush);
}

impl<W, K, T> Pipe<(K, T)> for WindowCombiner<W, K, T>
where
    W: WindowFunction<K, T>,
    K: Key,
    T: 'static,
{
    type Out = (K, Combined<T, W::Acc>);
    type Op<C: Collector<Self::Out>> = WindowCombinerOp<W, K, T, C>;
    fn attach<C: Collector<Self::Out>>(self, next: C, _ctx: &OperatorContext) -> Self::Op<C> {
        WindowCombinerOp {
            function: self.function,
            spec: self.spec,
            sessions: self.gap.map(LocalSessions::new),
            slices: VecDeque::new(),
            entries: 0,
            watermark: i64::MIN,
            cached: (1, 0, 0),
            spare_maps: Vec::new(),
            next,
            _t: PhantomData,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        if self.spec.is_some() || self.gap.is_some() {
            out.push("window_combine".to_owned());
        }
    }
}

/// Wraps records as [`Combined::Raw`], for window operators fed without a combiner (joins).
pub fn raw<K, T, A>((key, value): (K, T)) -> (K, Combined<T, A>) {
    (key, Combined::Raw(value))
}
