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
use crate::error::{Error, Result};
use crate::key::Key;
use crate::state::{OpMeta, OpTable};
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

/// A slice with data: its start, and the `min_start` of each namespace of its partly late
/// records.
#[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Slice {
    start: i128,
    partials: Vec<i128>,
}

/// What a sliced window operator writes at each barrier (under every key group it owns): its
/// watermark, how far its windows have fired, and the slices holding data, so that a restored
/// operator neither fires a window twice nor loses track of a slice.
#[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SlicedProgress {
    watermark: i64,
    fired_upto: i64,
    slices: Vec<Slice>,
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
///
/// Its state is in two store tables: accumulators per (slice, key), namespaced by slice start
/// — a slice fires by iterating its namespace and is purged by dropping it —, and the
/// accumulators of partly late records per ((slice, first window start), key).
pub struct SlicedWindowOp<W: WindowFunction<K, T>, K, T, C> {
    function: W,
    spec: SliceSpec,
    lateness: i64,
    accs: OpTable<i128, K, W::Acc>,
    partials: OpTable<(i128, i128), K, W::Acc>,
    progress: OpMeta<SlicedProgress>,
    /// The slices with data, sorted by start.
    slices: VecDeque<Slice>,
    watermark: Watermark,
    /// Windows whose `max_timestamp` is at most this have fired once.
    fired_upto: i64,
    late: SideOutput<(K, T)>,
    ctx: OperatorContext,
    out: Vec<W::Out>,
    scratch_starts: Vec<i128>,
    /// A window's accumulators merged per key while it fires.
    scratch_keys: FastMap<K, W::Acc>,
    /// The accumulators of a tumbling window taken out of the store as it fires (kept so that
    /// each firing reuses its memory).
    scratch_taken: Vec<(K, W::Acc)>,
    /// The timestamps `[lo, hi]` of the newest slice an on-time record went to, and its
    /// start: in-order records skip the slice arithmetic and the slice list.
    cached: (i64, i64, i128),
    /// Restoring the operator's progress failed: the first call reports it.
    broken: Option<Error>,
    next: C,
}

impl<W, K, T> SlicedWindow<W, K, T>
where
    W: WindowFunction<K, T>,
{
    pub(crate) fn instantiate<C>(self, next: C, ctx: &OperatorContext) -> SlicedWindowOp<W, K, T, C>
    where
        K: Key,
        T: 'static,
    {
        let late = match self.late_tag {
            Some(tag) => ctx.side_output(tag),
            None => SideOutput::discard(),
        };
        let mut op = SlicedWindowOp {
            function: self.function,
            spec: self.spec,
            lateness: self.allowed_lateness,
            accs: OpTable::register(ctx, "slices"),
            partials: OpTable::register(ctx, "partials"),
            progress: OpMeta::register(ctx, "progress"),
            slices: VecDeque::new(),
            watermark: Watermark::MIN,
            fired_upto: i64::MIN,
            late,
            ctx: ctx.clone(),
            out: Vec::new(),
            scratch_starts: Vec::new(),
            scratch_keys: FastMap::default(),
            scratch_taken: Vec::new(),
            cached: (1, 0, 0),
            broken: None,
            next,
        };
        if let Err(e) = op.restore() {
            op.broken = Some(e);
        }
        op
    }
}

impl<W, K, T, C> SlicedWindowOp<W, K, T, C>
where
    W: WindowFunction<K, T>,
    K: Key,
{
    /// Takes up the progress of the instances whose key groups this one now owns. They saw
    /// the same watermarks (a window operator follows a keyed exchange, and barriers are
    /// aligned), so they agree; the minimum is taken all the same.
    fn restore(&mut self) -> Result<()> {
        let restored = self.progress.restored()?;
        let Some(first) = restored.first() else {
            return Ok(());
        };
        self.watermark = Watermark(
            restored
                .iter()
                .map(|p| p.watermark)
                .min()
                .unwrap_or(first.watermark),
        );
        self.fired_upto = restored
            .iter()
            .map(|p| p.fired_upto)
            .min()
            .unwrap_or(first.fired_upto);
        let mut slices: Vec<Slice> = restored.into_iter().flat_map(|p| p.slices).collect();
        slices.sort_by_key(|s| s.start);
        for slice in slices {
            match self.slices.back_mut() {
                Some(last) if last.start == slice.start => {
                    for m in slice.partials {
                        if !last.partials.contains(&m) {
                            last.partials.push(m);
                        }
                    }
                }
                _ => self.slices.push_back(slice),
            }
        }
        Ok(())
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
        self.slices.insert(
            i,
            Slice {
                start,
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

    /// Emits what `scratch_keys` holds for the window starting at `start`, and empties it.
    fn emit_merged(&mut self, start: i128) -> Result<()> {
        let window = self.spec.window(start);
        let ts_out = window.max_timestamp();
        let SlicedWindowOp {
            function,
            scratch_keys,
            out,
            next,
            ..
        } = self;
        for (key, acc) in scratch_keys.drain() {
            function.emit(&key, &window, &[&acc], out)?;
            for o in out.drain(..) {
                next.collect(o, ts_out)?;
            }
        }
        Ok(())
    }

    /// Emits the window starting at `start` for every key (its first firing).
    fn fire_window(&mut self, start: i128) -> Result<()> {
        let range = self.window_slices(start);
        if range.is_empty() {
            return Ok(());
        }
        let single = range.len() == 1 && self.slices[range.start].partials.is_empty();
        if single && self.spec.is_tumbling() && self.lateness == 0 {
            // A tumbling window is one slice, and without allowed lateness it is purged at
            // this very watermark: take its accumulators instead of copying them.
            let slice = self.slices[range.start].start;
            let mut taken = std::mem::take(&mut self.scratch_taken);
            self.accs
                .get()?
                .lock()
                .take_namespace_into(&slice, &mut taken)?;
            let window = self.spec.window(start);
            let ts_out = window.max_timestamp();
            let SlicedWindowOp {
                function,
                out,
                next,
                ..
            } = self;
            for (key, acc) in taken.drain(..) {
                function.emit(&key, &window, &[&acc], out)?;
                for o in out.drain(..) {
                    next.collect(o, ts_out)?;
                }
            }
            self.scratch_taken = taken;
            return Ok(());
        }
        {
            let SlicedWindowOp {
                function,
                accs,
                partials,
                slices,
                scratch_keys,
                ..
            } = self;
            let mut table = accs.get()?.lock();
            for slice in slices.range(range.clone()) {
                table.for_each_in_namespace(&slice.start, |k, v| {
                    merge_into(function, scratch_keys, k, v)
                })?;
            }
            drop(table);
            let mut table = partials.get()?.lock();
            for slice in slices.range(range) {
                for &min_start in slice.partials.iter().filter(|&&m| m <= start) {
                    table.for_each_in_namespace(&(slice.start, min_start), |k, v| {
                        merge_into(function, scratch_keys, k, v)
                    })?;
                }
            }
        }
        self.emit_merged(start)
    }

    /// Emits the window starting at `start` for one key again (a late record within the
    /// allowed lateness changed it after it fired).
    fn refire_key(&mut self, start: i128, key: &K) -> Result<()> {
        let range = self.window_slices(start);
        let SlicedWindowOp {
            function,
            accs,
            partials,
            slices,
            scratch_keys,
            ..
        } = self;
        let mut table = accs.get()?.lock();
        for slice in slices.range(range.clone()) {
            if let Some(v) = table.get(&slice.start, key)? {
                merge_into(function, scratch_keys, key, v);
            }
        }
        drop(table);
        let mut table = partials.get()?.lock();
        for slice in slices.range(range) {
            for &min_start in slice.partials.iter().filter(|&&m| m <= start) {
                if let Some(v) = table.get(&(slice.start, min_start), key)? {
                    merge_into(function, scratch_keys, key, v);
                }
            }
        }
        drop(table);
        self.emit_merged(start)
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
    fn purge(&mut self, up_to: i64) -> Result<()> {
        while let Some(slice) = self.slices.front() {
            let last = self.spec.last_window_start(slice.start);
            if self.spec.max_timestamp(last).saturating_add(self.lateness) > up_to {
                break;
            }
            let Some(slice) = self.slices.pop_front() else {
                break;
            };
            self.accs.get()?.lock().drop_namespace(&slice.start)?;
            if !slice.partials.is_empty() {
                let mut table = self.partials.get()?.lock();
                for min_start in slice.partials {
                    table.drop_namespace(&(slice.start, min_start))?;
                }
            }
        }
        if self.slices.is_empty() {
            self.cached = (1, 0, 0);
        }
        Ok(())
    }

    /// The start of the slice holding `ts`, listed if new; in-order records hit the cached
    /// one.
    #[inline]
    fn current_slice(&mut self, ts: Timestamp) -> i128 {
        let (lo, hi, start) = self.cached;
        if ts >= lo && ts <= hi && self.slices.back().is_some_and(|s| s.start == start) {
            return start;
        }
        let start = self.spec.slice_start(ts);
        self.cached = (
            saturate(start),
            saturate(start + self.spec.slice - 1),
            start,
        );
        self.slice_index(start);
        start
    }

    /// A combiner's accumulator of `key`'s records in the slice holding `ts`: merged into the
    /// slice. The records were on time where they were combined, and the partial comes before
    /// the watermark that makes any of its windows due, so normally none has fired; if one
    /// has (the watermark here ran ahead of that input's, after idleness), it fires again.
    fn merge_partial(&mut self, key: K, acc: W::Acc, ts: Timestamp) -> Result<()> {
        let refire_key = (ts <= self.watermark.0).then(|| key.clone());
        let start = self.current_slice(ts);
        {
            let mut table = self.accs.get()?.lock();
            match table.get_mut(&start, &key)? {
                Some(current) => self.function.merge(current, acc),
                None => table.insert(&start, key, acc)?,
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
        let slice_start = spec.slice_start(ts);
        let i = self.slice_index(slice_start);
        let refire_key = key.clone();
        let function = &mut self.function;
        if min_start == first_start {
            let mut table = self.accs.get()?.lock();
            let acc = table.get_or_insert_with(&slice_start, key, || function.create())?;
            function.add(acc, value, ts);
        } else {
            // Partly late: it counts only in the windows from `min_start` on.
            let slice = &mut self.slices[i];
            if !slice.partials.contains(&min_start) {
                slice.partials.push(min_start);
            }
            let mut table = self.partials.get()?.lock();
            let acc =
                table.get_or_insert_with(&(slice_start, min_start), key, || function.create())?;
            function.add(acc, value, ts);
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

    /// Records the operator's progress for the checkpoint the barrier starts.
    fn save_progress(&mut self) -> Result<()> {
        let progress = SlicedProgress {
            watermark: self.watermark.0,
            fired_upto: self.fired_upto,
            slices: self.slices.iter().cloned().collect(),
        };
        self.progress.save(&progress)
    }
}

/// Adds a clone of `acc` to `key`'s merged accumulator in `merged`.
#[inline]
fn merge_into<W, K, T>(function: &mut W, merged: &mut FastMap<K, W::Acc>, key: &K, acc: &W::Acc)
where
    W: WindowFunction<K, T>,
    K: Key,
{
    match merged.get_mut(key) {
        Some(current) => function.merge(current, acc.clone()),
        None => {
            merged.insert(key.clone(), acc.clone());
        }
    }
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
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        if !is_event_time(ts) {
            return Err(no_timestamp_error(ts));
        }
        let value = match value {
            Combined::Raw(value) => value,
            Combined::Partial(acc) => return self.merge_partial(key, acc, ts),
            Combined::Session(..) => {
                return Err(crate::Error::Config(
                    "internal: a partial session reached a window that is not a session".into(),
                ));
            }
        };
        let horizon = self.watermark.max(self.ctx.input_watermark()).0;
        if ts <= horizon {
            return self.add_slow(key, value, ts, horizon);
        }
        // Ahead of the watermark, so none of its windows has fired: the common case.
        let start = self.current_slice(ts);
        let function = &mut self.function;
        let mut table = self.accs.get()?.lock();
        let acc = table.get_or_insert_with(&start, key, || function.create())?;
        function.add(acc, value, ts);
        Ok(())
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        if watermark > self.watermark {
            self.watermark = watermark;
            self.fire_up_to(watermark.0)?;
            self.purge(watermark.0)?;
        }
        self.next.on_watermark(watermark)
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        self.save_progress()?;
        self.next.on_barrier(barrier)
    }
    /// Touches the slices' entries of a run of records ahead of the watermark (raw or
    /// partial), so that their misses in a large table overlap.
    fn prefetch(&mut self, records: &[(K, Combined<T, W::Acc>)], timestamps: &[Timestamp]) {
        if records.len() < 2 || timestamps.len() != records.len() {
            return;
        }
        let (spec, horizon) = (self.spec, self.watermark.0);
        let Ok(accs) = self.accs.get() else {
            return;
        };
        let table = accs.lock();
        for ((key, _), &ts) in records.iter().zip(timestamps) {
            if ts > horizon {
                table.prefetch(&spec.slice_start(ts), key);
            }
        }
    }
    fn prefetches(&self) -> bool {
        true
    }
    crate::forward_hooks!(on_status, on_processing_time, flush, on_end);
}
