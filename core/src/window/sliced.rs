//! Tumbling and sliding event-time windows by *slices* (as Flink's SQL window operators do).
//!
//! Time is cut into slices of `gcd(size, slide)` ms; every window is a run of `size / slice`
//! consecutive slices. A record is added to exactly one slice — one accumulator update per
//! record whatever `size / slide` is — and a window's result merges the accumulators of its
//! slices when it fires. For tumbling windows a slice is a window and firing is a scan of one
//! map.
//!
//! A record of a sliding window can be *partly late*: behind the watermark of its input for its
//! earliest windows but not for its later ones. It must count only in the later ones, whether
//! or not the earlier ones have fired yet (which depends on the other inputs), so it is kept
//! apart, with the end of the first window it may count in, and added to the windows that
//! qualify when they fire. Such records are rare: they arrive later than the out-of-orderness
//! bound.

use std::collections::VecDeque;
use std::marker::PhantomData;

use crate::FastMap;
use crate::chain::Collector;
use crate::context::{OperatorContext, SideOutput};
use crate::element::{CheckpointBarrier, Timestamp, Watermark, is_event_time};
use crate::error::Result;
use crate::key::Key;
use crate::window::combine::Combined;
use crate::window::function::WindowFunction;
use crate::window::{TimeWindow, gcd, no_timestamp_error, saturate};

/// The geometry of sliced windows. Window and slice bounds are computed in `i128`, so that
/// windows near the `i64` limits keep their true starts; they saturate only when emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceSpec {
    size: i128,
    slide: i128,
    offset: i128,
    slice: i128,
}

/// `x mod m` in `[0, m)`.
#[inline]
fn rem(x: i128, m: i128) -> i128 {
    x.rem_euclid(m)
}

impl SliceSpec {
    /// Windows of `size` starting every `slide` (equal for tumbling), aligned to `offset`.
    pub fn new(size: i64, slide: i64, offset: i64) -> SliceSpec {
        assert!(
            size > 0 && slide > 0 && slide <= size,
            "size={size} slide={slide}"
        );
        SliceSpec {
            size: i128::from(size),
            slide: i128::from(slide),
            offset: i128::from(offset),
            slice: i128::from(gcd(size, slide)),
        }
    }

    /// The length of a slice.
    pub(crate) fn slice_len(&self) -> i128 {
        self.slice
    }

    fn is_tumbling(&self) -> bool {
        self.slide == self.size
    }

    /// The start of the slice holding `ts`.
    #[inline]
    pub(crate) fn slice_start(&self, ts: Timestamp) -> i128 {
        let ts = i128::from(ts);
        ts - rem(ts - self.offset, self.slice)
    }

    /// The start of the latest window holding instant `t`.
    #[inline]
    fn last_window_start(&self, t: i128) -> i128 {
        t - rem(t - self.offset, self.slide)
    }

    /// The largest timestamp of the window starting at `start` (`i64::MAX − 1` at most: event
    /// times stop there).
    #[inline]
    pub(crate) fn max_timestamp(&self, start: i128) -> i64 {
        saturate(start + self.size) - 1
    }

    /// The windows holding `ts`, as their starts, earliest first.
    fn window_starts(&self, ts: Timestamp) -> impl Iterator<Item = i128> + use<> {
        let last = self.last_window_start(i128::from(ts));
        let first = last - ((last - i128::from(ts) + self.size - 1) / self.slide) * self.slide;
        let slide = self.slide;
        (0..=(last - first) / slide).map(move |k| first + k * slide)
    }

    /// The windows holding the slice starting at `start`, as their starts, earliest first.
    pub(crate) fn slice_window_starts(&self, start: i128) -> impl Iterator<Item = i128> + use<> {
        // Window starts s ≡ offset (mod slide) with slice end − size ≤ s ≤ slice start.
        let last = self.last_window_start(start);
        let lowest = start + self.slice - self.size;
        let first = last - ((last - lowest).max(0) / self.slide) * self.slide;
        let slide = self.slide;
        (0..=(last - first) / slide).map(move |k| first + k * slide)
    }

    /// The window starting at `start`, its bounds saturated to `i64`.
    fn window(&self, start: i128) -> TimeWindow {
        TimeWindow::new(saturate(start), saturate(start + self.size))
    }
}

/// Emptied slice maps kept for reuse.
const SPARE_MAPS_MAX: usize = 4;

/// A record that may count only in windows starting at `min_start` or later.
struct Partial<K, T> {
    key: K,
    value: T,
    ts: Timestamp,
    min_start: i128,
}

struct Slice<K, A, T> {
    start: i128,
    accs: FastMap<K, A>,
    partials: Vec<Partial<K, T>>,
}

/// The sliced window operator's pipe.
pub struct SlicedWindow<W, K, T> {
    pub(crate) function: W,
    pub(crate) spec: SliceSpec,
    pub(crate) allowed_lateness: i64,
    pub(crate) late_tag: Option<u64>,
    pub(crate) _p: PhantomData<fn(K, T)>,
}

impl<W: Clone, K, T> Clone for SlicedWindow<W, K, T> {
    fn clone(&self) -> Self {
        SlicedWindow {
            function: self.function.clone(),
            spec: self.spec,
            allowed_lateness: self.allowed_lateness,
            late_tag: self.late_tag,
            _p: PhantomData,
        }
    }
}

/// The instantiated sliced window operator.
pub struct SlicedWindowOp<W: WindowFunction<K, T>, K, T, C> {
    function: W,
    spec: SliceSpec,
    lateness: i64,
    slices: VecDeque<Slice<K, W::Acc, T>>,
    watermark: Watermark,
    /// Windows whose `max_timestamp` is at most this have fired once.
    fired_upto: i64,
    late: SideOutput<(K, T)>,
    ctx: OperatorContext,
    out: Vec<W::Out>,
    scratch_starts: Vec<i128>,
    /// The timestamps `[lo, hi]` of the slice the last on-time record went to, and its start:
    /// in-order records skip the slice arithmetic.
    cached: (i64, i64, i128),
    /// Emptied maps of purged slices, for new slices.
    spare_maps: Vec<FastMap<K, W::Acc>>,
    next: C,
}

impl<W, K, T> SlicedWindow<W, K, T>
where
    W: WindowFunction<K, T>,
{
    pub(crate) fn instantiate<C>(self, next: C, ctx: &OperatorContext) -> SlicedWindowOp<W, K, T, C>
    where
        K: 'static,
        T: 'static,
    {
        let late = match self.late_tag {
            Some(tag) => ctx.side_output(tag),
            None => SideOutput::discard(),
        };
        SlicedWindowOp {
            function: self.function,
            spec: self.spec,
            lateness: self.allowed_lateness,
            slices: VecDeque::new(),
            watermark: Watermark::MIN,
            fired_upto: i64::MIN,
            late,
            ctx: ctx.clone(),
            out: Vec::new(),
            scratch_starts: Vec::new(),
            cached: (1, 0, 0),
            spare_maps: Vec::new(),
            next,
        }
    }
}

impl<W, K, T, C> SlicedWindowOp<W, K, T, C>
where
    W: WindowFunction<K, T>,
    K: Key,
    T: Clone,
    C: Collector<W::Out>,
{
    /// Index of the slice starting at `start`, created if missing (slices are sorted).
    #[inline]
    fn slice_index(&mut self, start: i128) -> usize {
        let mut i = self.slices.len();
        while i > 0 {
            let s = self.slices[i - 1].start;
            if s == start {
                return i - 1;
            }
            if s < start {
                break;
            }
            i -= 1;
        }
        // A purged slice's map is reused: it keeps its capacity, so a new slice does not grow
        // its table again through every size (nor fault in fresh pages) as keys arrive.
        let accs = self.spare_maps.pop().unwrap_or_default();
        self.slices.insert(
            i,
            Slice {
                start,
                accs,
                partials: Vec::new(),
            },
        );
        i
    }

    fn late_record(&mut self, key: K, value: T, ts: Timestamp) -> Result<()> {
        if !self.late.emit((key, value), ts)? {
            self.ctx.count_late_dropped(1);
        }
        Ok(())
    }

    /// The slices of the window starting at `start`, as an index range.
    fn window_slices(&self, start: i128) -> std::ops::Range<usize> {
        let end = start + self.spec.size;
        let first = self.slices.partition_point(|s| s.start < start);
        let last = self.slices.partition_point(|s| s.start < end);
        first..last
    }

    /// Emits the window starting at `start` for every key (its first firing).
    fn fire_window(&mut self, start: i128) -> Result<()> {
        let range = self.window_slices(start);
        if range.is_empty() {
            return Ok(());
        }
        let window = self.spec.window(start);
        let ts_out = window.max_timestamp();
        let SlicedWindowOp {
            function,
            slices,
            out,
            next,
            ..
        } = self;
        let in_window = slices.range(range);
        let partial = partial_accs(function, in_window.clone(), start);
        let mut parts: Vec<&W::Acc> = Vec::new();
        for (j, slice) in in_window.clone().enumerate() {
            for (key, acc) in &slice.accs {
                // A key is emitted once, from the first slice of the window that holds it.
                if in_window.clone().take(j).any(|s| s.accs.contains_key(key)) {
                    continue;
                }
                parts.clear();
                parts.push(acc);
                parts.extend(
                    in_window
                        .clone()
                        .skip(j + 1)
                        .filter_map(|s| s.accs.get(key)),
                );
                parts.extend(partial.get(key));
                function.emit(key, &window, &parts, out)?;
                for o in out.drain(..) {
                    next.collect(o, ts_out)?;
                }
            }
        }
        for (key, acc) in &partial {
            if !in_window.clone().any(|s| s.accs.contains_key(key)) {
                function.emit(key, &window, &[acc], out)?;
                for o in out.drain(..) {
                    next.collect(o, ts_out)?;
                }
            }
        }
        Ok(())
    }

    /// Emits the window starting at `start` for one key again (a late record within the
    /// allowed lateness changed it after it fired).
    fn refire_key(&mut self, start: i128, key: &K) -> Result<()> {
        let range = self.window_slices(start);
        let window = self.spec.window(start);
        let SlicedWindowOp {
            function,
            slices,
            out,
            next,
            ..
        } = self;
        let in_window = slices.range(range);
        let partial = partial_accs(function, in_window.clone(), start);
        let mut parts: Vec<&W::Acc> = in_window.filter_map(|s| s.accs.get(key)).collect();
        parts.extend(partial.get(key));
        if parts.is_empty() {
            return Ok(());
        }
        function.emit(key, &window, &parts, out)?;
        for o in out.drain(..) {
            next.collect(o, window.max_timestamp())?;
        }
        Ok(())
    }

    /// Fires, in order, the windows with data whose largest timestamp is in
    /// `(fired_upto, up_to]`.
    fn fire_up_to(&mut self, up_to: i64) -> Result<()> {
        let mut starts = std::mem::take(&mut self.scratch_starts);
        starts.clear();
        for slice in &self.slices {
            if self.spec.is_tumbling() {
                starts.push(slice.start);
            } else {
                starts.extend(self.spec.slice_window_starts(slice.start));
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let fired_upto = self.fired_upto;
        let spec = self.spec;
        let result = starts
            .iter()
            .copied()
            .filter(|&s| spec.max_timestamp(s) > fired_upto && spec.max_timestamp(s) <= up_to)
            .try_for_each(|s| self.fire_window(s));
        self.scratch_starts = starts;
        result?;
        self.fired_upto = self.fired_upto.max(up_to);
        Ok(())
    }

    /// Drops the slices whose every window is past the allowed lateness.
    fn purge(&mut self, up_to: i64) {
        while let Some(slice) = self.slices.front() {
            let last = self.spec.last_window_start(slice.start);
            if self.spec.max_timestamp(last).saturating_add(self.lateness) > up_to {
                break;
            }
            if let Some(mut slice) = self.slices.pop_front()
                && self.spare_maps.len() < SPARE_MAPS_MAX
            {
                slice.accs.clear();
                self.spare_maps.push(slice.accs);
            }
        }
    }

    /// The index of the slice holding `ts`, created if missing; in-order records hit the
    /// cached one.
    #[inline]
    fn current_slice(&mut self, ts: Timestamp) -> usize {
        let (lo, hi, start) = self.cached;
        if ts >= lo && ts <= hi && self.slices.back().is_some_and(|s| s.start == start) {
            return self.slices.len() - 1;
        }
        let start = self.spec.slice_start(ts);
        self.cached = (
            saturate(start),
            saturate(start + self.spec.slice - 1),
            start,
        );
        self.slice_index(start)
    }

    /// A combiner's accumulator of `key`'s records in the slice holding `ts`: merged into the
    /// slice. The records were on time where they were combined, and the partial comes before
    /// the watermark that makes any of its windows due, so normally none has fired; if one
    /// has (the watermark here ran ahead of that input's, after idleness), it fires again.
    fn merge_partial(&mut self, key: K, acc: W::Acc, ts: Timestamp) -> Result<()> {
        let refire_key = (ts <= self.watermark.0).then(|| key.clone());
        let i = self.current_slice(ts);
        let slice = &mut self.slices[i];
        let start = slice.start;
        match slice.accs.get_mut(&key) {
            Some(current) => self.function.merge(current, acc),
            None => {
                slice.accs.insert(key, acc);
            }
        }
        let Some(key) = refire_key else {
            return Ok(());
        };
        let (spec, watermark) = (self.spec, self.watermark.0);
        let due: Vec<i128> = spec
            .slice_window_starts(start)
            .filter(|&s| spec.max_timestamp(s) <= watermark)
            .collect();
        for window_start in due {
            self.refire_key(window_start, &key)?;
        }
        Ok(())
    }

    /// A record at least partly behind its input's watermark: late, partly late, or late
    /// within the allowed lateness for windows that already fired.
    fn add_slow(&mut self, key: K, value: T, ts: Timestamp, horizon: i64) -> Result<()> {
        let spec = self.spec;
        let lateness = self.lateness;
        let open = |start: i128| spec.max_timestamp(start).saturating_add(lateness) > horizon;
        let Some(min_start) = spec.window_starts(ts).find(|&s| open(s)) else {
            return self.late_record(key, value, ts);
        };
        let first_start = spec.window_starts(ts).next().unwrap_or(min_start);
        let i = self.slice_index(spec.slice_start(ts));
        let refire_key = key.clone();
        if min_start == first_start {
            let function = &mut self.function;
            let acc = self.slices[i]
                .accs
                .entry(key)
                .or_insert_with(|| function.create());
            function.add(acc, value, ts);
        } else {
            self.slices[i].partials.push(Partial {
                key,
                value,
                ts,
                min_start,
            });
        }
        // Windows that already fired and are still within the allowed lateness fire again.
        let watermark = self.watermark.0;
        let refire: Vec<i128> = spec
            .window_starts(ts)
            .filter(|&s| s >= min_start && spec.max_timestamp(s) <= watermark)
            .collect();
        for start in refire {
            self.refire_key(start, &refire_key)?;
        }
        Ok(())
    }
}

/// Accumulators of the partly late records of `slices` that count in the window starting at
/// `start`, per key.
fn partial_accs<'s, W, K, T, I>(function: &mut W, slices: I, start: i128) -> FastMap<K, W::Acc>
where
    W: WindowFunction<K, T>,
    K: Key,
    T: Clone + 's,
    W::Acc: 's,
    I: Iterator<Item = &'s Slice<K, W::Acc, T>>,
{
    let mut accs = FastMap::default();
    for p in slices.flat_map(|s| s.partials.iter()) {
        if p.min_start <= start {
            let acc = accs
                .entry(p.key.clone())
                .or_insert_with(|| function.create());
            function.add(acc, p.value.clone(), p.ts);
        }
    }
    accs
}

impl<W, K, T, C> Collector<(K, Combined<T, W::Acc>)> for SlicedWindowOp<W, K, T, C>
where
    W: WindowFunction<K, T>,
    K: Key,
    T: Clone,
    C: Collector<W::Out>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, Combined<T, W::Acc>), ts: Timestamp) -> Result<()> {
        if !is_event_time(ts) {
            return Err(no_timestamp_error(ts));
        }
        let value = match value {
            Combined::Raw(value) => value,
            Combined::Partial(acc) => return self.merge_partial(key, acc, ts),
        };
        let horizon = self.watermark.max(self.ctx.input_watermark()).0;
        if ts <= horizon {
            return self.add_slow(key, value, ts, horizon);
        }
        // Ahead of the watermark, so none of its windows has fired: the common case.
        let i = self.current_slice(ts);
        let slice = &mut self.slices[i];
        let function = &mut self.function;
        let acc = slice.accs.entry(key).or_insert_with(|| function.create());
        function.add(acc, value, ts);
        Ok(())
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        if watermark > self.watermark {
            self.watermark = watermark;
            self.fire_up_to(watermark.0)?;
            self.purge(watermark.0);
        }
        self.next.on_watermark(watermark)
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.next.on_barrier(barrier)
    }
    crate::forward_hooks!(on_status, on_processing_time, flush, on_end);
}
