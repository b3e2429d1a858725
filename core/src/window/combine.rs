//! Local pre-aggregation of sliced windows before the hash exchange (Flink's two-phase,
//! "local-global" window aggregation).
//!
//! A [`SliceCombiner`] sits in the sending stage, after its watermarks are assigned. A record
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
//! checkpoint), at the end of input, and whenever it holds [`COMBINE_ENTRIES_MAX`] of them.

use std::collections::VecDeque;
use std::marker::PhantomData;

use crate::FastMap;
use crate::chain::{Collector, Pipe};
use crate::context::OperatorContext;
use crate::element::{CheckpointBarrier, NO_TIMESTAMP, Timestamp, Watermark};
use crate::error::Result;
use crate::key::Key;
use crate::window::sliced::SliceSpec;
use crate::window::{WindowAssigner, WindowFunction, saturate};

/// Partial accumulators a combiner holds before it sends them all on: bounds its memory.
pub const COMBINE_ENTRIES_MAX: usize = 1 << 16;

/// What crosses the exchange of a windowed aggregation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Combined<T, A> {
    /// A record.
    Raw(T),
    /// The accumulator of one key's records in one slice, stamped with a timestamp inside
    /// the slice.
    Partial(A),
}

/// The combiner's pipe: pre-aggregates when `spec` is set (tumbling or sliding event-time
/// windows with the default trigger and a function that merges), passes records through
/// otherwise.
pub struct SliceCombiner<W, K, T> {
    function: W,
    spec: Option<SliceSpec>,
    _p: PhantomData<fn(K, T)>,
}

impl<W: Clone, K, T> Clone for SliceCombiner<W, K, T> {
    fn clone(&self) -> Self {
        SliceCombiner {
            function: self.function.clone(),
            spec: self.spec,
            _p: PhantomData,
        }
    }
}

impl<W, K, T> SliceCombiner<W, K, T>
where
    W: WindowFunction<K, T>,
{
    /// A combiner for windows of `assigner` computed by `function` (fired by their default
    /// trigger when `default_trigger`).
    pub fn new(assigner: &WindowAssigner, function: W, default_trigger: bool) -> Self {
        let spec = match (default_trigger && function.combinable(), *assigner) {
            (true, WindowAssigner::Tumbling { size, offset, time }) if time.is_event() => {
                Some(SliceSpec::new(size, size, offset))
            }
            (
                true,
                WindowAssigner::Sliding {
                    size,
                    slide,
                    offset,
                    time,
                },
            ) if time.is_event() => Some(SliceSpec::new(size, slide, offset)),
            _ => None,
        };
        SliceCombiner {
            function,
            spec,
            _p: PhantomData,
        }
    }
}

struct LocalSlice<K, A> {
    start: i128,
    /// The largest timestamp added: the partials' stamp.
    max_ts: i64,
    accs: FastMap<K, A>,
}

/// The instantiated [`SliceCombiner`].
pub struct SliceCombinerOp<W: WindowFunction<K, T>, K, T, C> {
    function: W,
    spec: Option<SliceSpec>,
    slices: VecDeque<LocalSlice<K, W::Acc>>,
    entries: usize,
    watermark: i64,
    /// The timestamps `[lo, hi]` of the last slice used and its start.
    cached: (i64, i64, i128),
    spare_maps: Vec<FastMap<K, W::Acc>>,
    next: C,
    _t: PhantomData<fn(T)>,
}

impl<W, K, T, C> SliceCombinerOp<W, K, T, C>
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

impl<W, K, T, C> Collector<(K, T)> for SliceCombinerOp<W, K, T, C>
where
    W: WindowFunction<K, T>,
    K: Key,
    C: Collector<(K, Combined<T, W::Acc>)>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, T), ts: Timestamp) -> Result<()> {
        let spec = match self.spec {
            Some(spec) if ts != NO_TIMESTAMP && ts > self.watermark => spec,
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
        }
        self.watermark = self.watermark.max(watermark.0);
        self.next.on_watermark(watermark)
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.send_all()?;
        self.next.on_barrier(barrier)
    }
    fn on_end(&mut self) -> Result<()> {
        self.send_all()?;
        self.next.on_end()
    }
    crate::forward_hooks!(on_status, on_processing_time, flush);
}

impl<W, K, T> Pipe<(K, T)> for SliceCombiner<W, K, T>
where
    W: WindowFunction<K, T>,
    K: Key,
    T: 'static,
{
    type Out = (K, Combined<T, W::Acc>);
    type Op<C: Collector<Self::Out>> = SliceCombinerOp<W, K, T, C>;
    fn attach<C: Collector<Self::Out>>(self, next: C, _ctx: &OperatorContext) -> Self::Op<C> {
        SliceCombinerOp {
            function: self.function,
            spec: self.spec,
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
        if self.spec.is_some() {
            out.push("window_combine".to_owned());
        }
    }
}

/// Wraps records as [`Combined::Raw`], for window operators fed without a combiner (joins).
pub fn raw<K, T, A>((key, value): (K, T)) -> (K, Combined<T, A>) {
    (key, Combined::Raw(value))
}
