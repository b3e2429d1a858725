//! Joins of two keyed streams. Both inputs are keyed by the same key type and reach one stage
//! through hash exchanges, tagged [`Either::Left`] or [`Either::Right`]; the operators here pair
//! them up per key.
//!
//! - **Window join** (inner, over tumbling, sliding or session windows): a window operator
//!   whose [`WindowJoin`] function pairs the left and right records of each window — so it
//!   shares windows' slicing, lateness, triggers and state.
//! - **Interval join** ([`IntervalJoin`]): a left record at `t` pairs with the right records
//!   of its key in `[t + lower, t + upper]`; each side is buffered until the watermark passes
//!   the last time a record of the other side could still pair with it. A record behind the
//!   watermark of its input is late and dropped, as in Flink.
//! - **Bounded equi-joins** ([`BoundedJoin`]): inner, left outer, right outer and full outer
//!   joins of bounded inputs (Flink's DataSet joins). Both sides are buffered per key and
//!   joined when the inputs end.
//!
//! The interval and bounded joins keep their buffers in the stage's state store, so they are
//! checkpointed, restored (by key group when the job rescales) and may exceed memory; records
//! are [`StateCodec`].

use std::marker::PhantomData;

use rkyv::{Archive, Deserialize, Serialize};

use crate::chain::{Collector, Pipe};
use crate::context::OperatorContext;
use crate::element::{CheckpointBarrier, NO_TIMESTAMP, Timestamp, Watermark};
use crate::error::{Error, Result};
use crate::key::{Key, KeyGroups};
use crate::state::{OpTable, OpTimers, StateCodec};
use crate::window::{TimeWindow, WindowFunction};

/// A record of the left or the right input of a join.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
pub enum Either<A, B> {
    /// From the left input.
    Left(A),
    /// From the right input.
    Right(B),
}

/// Which unmatched records a bounded join keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinType {
    /// Only pairs.
    Inner,
    /// Pairs, and left records without a match (with `None` on the right).
    LeftOuter,
    /// Pairs, and right records without a match.
    RightOuter,
    /// Pairs, and unmatched records of both sides.
    FullOuter,
}

/// The window function of a window join: emits `f(left, right)` for every pair of left and
/// right records of a window (the cross product per key and window, as Flink's `join`).
pub struct WindowJoin<F, A, B, O> {
    f: F,
    _p: PhantomData<fn(A, B) -> O>,
}

impl<F: Clone, A, B, O> Clone for WindowJoin<F, A, B, O> {
    fn clone(&self) -> Self {
        WindowJoin {
            f: self.f.clone(),
            _p: PhantomData,
        }
    }
}

impl<F, A, B, O> WindowJoin<F, A, B, O> {
    /// Pairs with `f`.
    pub fn new(f: F) -> Self {
        WindowJoin { f, _p: PhantomData }
    }
}

impl<K, A, B, O, F> WindowFunction<K, Either<A, B>> for WindowJoin<F, A, B, O>
where
    K: 'static,
    A: Clone + StateCodec,
    B: Clone + StateCodec,
    O: 'static,
    F: FnMut(&A, &B) -> O + Clone + Send + Sync + 'static,
{
    /// Left and right records of the window (or slice): storable, since both are.
    type Acc = (Vec<A>, Vec<B>);
    type Out = O;
    fn create(&mut self) -> Self::Acc {
        (Vec::new(), Vec::new())
    }
    fn combinable(&self) -> bool {
        false
    }
    #[inline]
    fn add(&mut self, acc: &mut Self::Acc, value: Either<A, B>, _ts: Timestamp) {
        match value {
            Either::Left(a) => acc.0.push(a),
            Either::Right(b) => acc.1.push(b),
        }
    }
    fn merge(&mut self, acc: &mut Self::Acc, mut other: Self::Acc) {
        acc.0.append(&mut other.0);
        acc.1.append(&mut other.1);
    }
    fn emit(
        &mut self,
        _key: &K,
        _window: &TimeWindow,
        parts: &[&Self::Acc],
        out: &mut Vec<O>,
    ) -> Result<()> {
        for left in parts.iter().flat_map(|p| p.0.iter()) {
            for right in parts.iter().flat_map(|p| p.1.iter()) {
                out.push((self.f)(left, right));
            }
        }
        Ok(())
    }
}

/// The interval join's pipe: left at `t` pairs with right in `[t + lower, t + upper]`.
pub struct IntervalJoin<F, K, A, B, O> {
    f: F,
    lower: i64,
    upper: i64,
    _p: PhantomData<fn(K, A, B) -> O>,
}

impl<F: Clone, K, A, B, O> Clone for IntervalJoin<F, K, A, B, O> {
    fn clone(&self) -> Self {
        IntervalJoin {
            f: self.f.clone(),
            lower: self.lower,
            upper: self.upper,
            _p: PhantomData,
        }
    }
}

impl<F, K, A, B, O> IntervalJoin<F, K, A, B, O> {
    /// Pairs with `f` when `right.ts − left.ts` is in `[lower, upper]`.
    pub fn new(lower: i64, upper: i64, f: F) -> Result<Self> {
        if lower > upper {
            return Err(Error::Config(format!(
                "interval join: lower bound {lower} is above upper bound {upper}"
            )));
        }
        Ok(IntervalJoin {
            f,
            lower,
            upper,
            _p: PhantomData,
        })
    }
}

/// One key's buffered records of an interval join, each side sorted by timestamp (records of
/// the same time in arrival order). One entry per key, so a record costs one lookup for both
/// its partners and its own buffer; records arrive nearly in time order (a late one is
/// dropped), so an insert is almost always a push.
#[derive(Archive, Serialize, Deserialize)]
pub struct IntervalBuffers<A, B> {
    left: Vec<(i64, A)>,
    right: Vec<(i64, B)>,
}

impl<A, B> Default for IntervalBuffers<A, B> {
    fn default() -> Self {
        IntervalBuffers {
            left: Vec::new(),
            right: Vec::new(),
        }
    }
}

/// Inserts `(ts, item)` after the items of times `<= ts`.
#[inline]
fn insert_sorted<T>(items: &mut Vec<(i64, T)>, ts: i64, item: T) {
    match items.last() {
        Some(&(last, _)) if last > ts => {
            let at = items.partition_point(|&(t, _)| t <= ts);
            items.insert(at, (ts, item));
        }
        _ => items.push((ts, item)),
    }
}

/// The items of `items` (sorted) whose times are in `range`.
#[inline]
fn in_range<T>(items: &[(i64, T)], range: std::ops::RangeInclusive<i64>) -> &[(i64, T)] {
    let lo = items.partition_point(|&(t, _)| t < *range.start());
    let hi = items.partition_point(|&(t, _)| t <= *range.end());
    &items[lo..hi.max(lo)]
}

/// `x` clamped into `i64`.
fn saturate(x: i128) -> i64 {
    x.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The timestamps `[ts + lo, ts + hi]`, computed without overflow: clamped into `i64`, or
/// `None` when none of them is an `i64` (clamping such a range onto a limit would pair records
/// that are not within the bounds).
fn shifted(ts: i64, lo: i128, hi: i128) -> Option<std::ops::RangeInclusive<i64>> {
    let (lo, hi) = (i128::from(ts) + lo, i128::from(ts) + hi);
    let (min, max) = (i128::from(i64::MIN), i128::from(i64::MAX));
    if lo > max || hi < min {
        return None;
    }
    Some(saturate(lo)..=saturate(hi))
}

/// When the interval join may drop buffered records: a left record at `t` once the watermark
/// reaches `t + upper` (a right record pairing with it would be at or behind the watermark,
/// so late), a right one at `t` once it reaches `t − lower`.
#[derive(Clone, Copy)]
struct Expiry {
    lower: i128,
    upper: i128,
}

impl Expiry {
    #[inline]
    fn left(&self, ts: i64) -> i64 {
        saturate(i128::from(ts) + self.upper)
    }
    #[inline]
    fn right(&self, ts: i64) -> i64 {
        saturate(i128::from(ts) - self.lower)
    }
    /// The earliest time at which something of `b` may be dropped (its key's cleanup timer).
    fn first<A, B>(&self, b: &IntervalBuffers<A, B>) -> Option<i64> {
        let left = b.left.first().map(|&(t, _)| self.left(t));
        let right = b.right.first().map(|&(t, _)| self.right(t));
        match (left, right) {
            (Some(l), Some(r)) => Some(l.min(r)),
            (l, r) => l.or(r),
        }
    }
    /// Drops what watermark `w` expired; returns the next cleanup time, `None` when empty.
    fn expire<A, B>(&self, b: &mut IntervalBuffers<A, B>, w: i64) -> Option<i64> {
        let left = b.left.partition_point(|&(t, _)| self.left(t) <= w);
        b.left.drain(..left);
        let right = b.right.partition_point(|&(t, _)| self.right(t) <= w);
        b.right.drain(..right);
        self.first(b)
    }
}

/// The instantiated [`IntervalJoin`].
///
/// Cleanup: every key with buffered records has one event-time timer, at the earliest time
/// something of its buffers expires (`Expiry`); when the watermark reaches it, that key's
/// expired records are dropped and the timer is set again for what is left. So a watermark
/// costs work in proportion to the keys that have something to drop, never a scan of all keys,
/// and the timers are checkpointed with the buffers.
pub struct IntervalJoinOp<F, K, A, B, C> {
    f: F,
    lower: i64,
    upper: i64,
    expiry: Expiry,
    buffers: OpTable<(), K, IntervalBuffers<A, B>>,
    cleanup: OpTimers<K, ()>,
    watermark: Watermark,
    ctx: OperatorContext,
    next: C,
}

impl<F, K, A, B, O, C> IntervalJoinOp<F, K, A, B, C>
where
    F: FnMut(&A, &B) -> O,
    K: Key,
    A: StateCodec,
    B: StateCodec,
    C: Collector<O>,
{
    /// Drops what can no longer pair, key by key as their cleanup timers come due.
    fn expire(&mut self, w: i64) -> Result<()> {
        let expiry = self.expiry;
        let timers = &mut self.cleanup;
        let mut table = self.buffers.get()?.lock();
        while let Some((_, key, ())) = timers.pop_due(w)? {
            let next = match table.get_mut(&(), &key)? {
                Some(b) => expiry.expire(b, w),
                None => None,
            };
            match next {
                Some(at) => timers.register_at(at, key, ())?,
                None => table.remove(&(), &key)?,
            }
        }
        Ok(())
    }

    /// Pairs a record of key `key` with the buffered records of the other side and buffers
    /// it, setting the key's cleanup timer earlier if it expires first.
    fn join(&mut self, key: K, value: Either<A, B>, ts: Timestamp) -> Result<()> {
        let (lower, upper) = (i128::from(self.lower), i128::from(self.upper));
        let expiry = self.expiry;
        let mut table = self.buffers.get()?.lock();
        // The key is cloned only when it is new.
        let b = match table.get_mut(&(), &key)? {
            Some(b) => b,
            None => table.get_or_insert_with(&(), key.clone(), IntervalBuffers::default)?,
        };
        let armed = expiry.first(b);
        let expires = match value {
            Either::Left(a) => {
                if let Some(partners) = shifted(ts, lower, upper) {
                    for (rts, r) in in_range(&b.right, partners) {
                        self.next.collect((self.f)(&a, r), ts.max(*rts))?;
                    }
                }
                insert_sorted(&mut b.left, ts, a);
                expiry.left(ts)
            }
            Either::Right(r) => {
                if let Some(partners) = shifted(ts, -upper, -lower) {
                    for (lts, a) in in_range(&b.left, partners) {
                        self.next.collect((self.f)(a, &r), ts.max(*lts))?;
                    }
                }
                insert_sorted(&mut b.right, ts, r);
                expiry.right(ts)
            }
        };
        drop(table);
        match armed {
            Some(at) if at <= expires => Ok(()),
            armed => {
                // The key's first record, or one that expires before the others.
                if let Some(at) = armed {
                    self.cleanup.delete(at, key.clone(), ())?;
                }
                self.cleanup.register_at(expires, key, ())
            }
        }
    }
}

impl<F, K, A, B, O, C> Collector<(K, Either<A, B>)> for IntervalJoinOp<F, K, A, B, C>
where
    F: FnMut(&A, &B) -> O,
    K: Key,
    A: StateCodec,
    B: StateCodec,
    C: Collector<O>,
{
    fn collect(&mut self, (key, value): (K, Either<A, B>), ts: Timestamp) -> Result<()> {
        if !crate::element::is_event_time(ts) {
            return Err(crate::window::no_timestamp_error(ts));
        }
        let horizon = self.watermark.max(self.ctx.input_watermark()).0;
        if ts <= horizon {
            self.ctx.count_late_dropped(1);
            return Ok(());
        }
        self.join(key, value, ts)
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        if watermark > self.watermark {
            self.watermark = watermark;
            self.expire(watermark.0)?;
        }
        self.next.on_watermark(watermark)
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.next.on_barrier(barrier)
    }
    crate::forward_hooks!(on_status, on_processing_time, flush, on_end);
}

impl<F, K, A, B, O> Pipe<(K, Either<A, B>)> for IntervalJoin<F, K, A, B, O>
where
    F: FnMut(&A, &B) -> O + Clone + Send + Sync + 'static,
    K: Key,
    A: StateCodec,
    B: StateCodec,
    O: 'static,
{
    type Out = O;
    type Op<C: Collector<O>> = IntervalJoinOp<F, K, A, B, C>;
    fn attach<C: Collector<O>>(self, next: C, ctx: &OperatorContext) -> Self::Op<C> {
        let buffers = OpTable::register(ctx, "interval-join");
        let cleanup = OpTimers::register(ctx, "interval-join-cleanup");
        IntervalJoinOp {
            f: self.f,
            lower: self.lower,
            upper: self.upper,
            expiry: Expiry {
                lower: i128::from(self.lower),
                upper: i128::from(self.upper),
            },
            buffers,
            cleanup,
            watermark: Watermark::MIN,
            ctx: ctx.clone(),
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push(format!("interval_join[{}, {}]", self.lower, self.upper));
    }
    fn uses_state(&self) -> bool {
        true
    }
}

/// The bounded equi-join's pipe: `f(key, left, right)` per pair, and per unmatched record as
/// the join type asks (with `None` for the missing side), when both inputs have ended.
pub struct BoundedJoin<F, K, A, B, O> {
    f: F,
    join_type: JoinType,
    _p: PhantomData<fn(K, A, B) -> O>,
}

impl<F: Clone, K, A, B, O> Clone for BoundedJoin<F, K, A, B, O> {
    fn clone(&self) -> Self {
        BoundedJoin {
            f: self.f.clone(),
            join_type: self.join_type,
            _p: PhantomData,
        }
    }
}

impl<F, K, A, B, O> BoundedJoin<F, K, A, B, O> {
    /// A `join_type` join emitting `f(key, left, right)`.
    pub fn new(join_type: JoinType, f: F) -> Self {
        BoundedJoin {
            f,
            join_type,
            _p: PhantomData,
        }
    }
}

/// The instantiated [`BoundedJoin`].
///
/// Its buffers are one store entry per key (both sides' records: one lookup per record), in a
/// namespace per key group. When the inputs end it joins one key group at a time
/// (`take_namespace`), so what it holds in memory at once is one key group's buffers, not the
/// whole state, however much of it was evicted to disk meanwhile.
pub struct BoundedJoinOp<F, K, A, B, C> {
    f: F,
    join_type: JoinType,
    sides: OpTable<u32, K, (Vec<A>, Vec<B>)>,
    key_groups: KeyGroups,
    worker: usize,
    done: bool,
    next: C,
}

impl<F, K, A, B, O, C> BoundedJoinOp<F, K, A, B, C>
where
    F: FnMut(&K, Option<&A>, Option<&B>) -> O,
    K: Key,
    A: StateCodec,
    B: StateCodec,
    C: Collector<O>,
{
    fn join_all(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        for kg in self.key_groups.range_of(self.worker) {
            let keys = self.sides.get()?.lock().take_namespace(&kg)?;
            for (key, (lefts, rights)) in keys {
                self.join_key(&key, &lefts, &rights)?;
            }
        }
        Ok(())
    }

    fn join_key(&mut self, key: &K, lefts: &[A], rights: &[B]) -> Result<()> {
        let keep_left = matches!(self.join_type, JoinType::LeftOuter | JoinType::FullOuter);
        let keep_right = matches!(self.join_type, JoinType::RightOuter | JoinType::FullOuter);
        for a in lefts {
            for b in rights {
                self.next
                    .collect((self.f)(key, Some(a), Some(b)), NO_TIMESTAMP)?;
            }
        }
        if keep_left && rights.is_empty() {
            for a in lefts {
                self.next
                    .collect((self.f)(key, Some(a), None), NO_TIMESTAMP)?;
            }
        }
        if keep_right && lefts.is_empty() {
            for b in rights {
                self.next
                    .collect((self.f)(key, None, Some(b)), NO_TIMESTAMP)?;
            }
        }
        Ok(())
    }
}

impl<F, K, A, B, O, C> Collector<(K, Either<A, B>)> for BoundedJoinOp<F, K, A, B, C>
where
    F: FnMut(&K, Option<&A>, Option<&B>) -> O,
    K: Key,
    A: StateCodec,
    B: StateCodec,
    C: Collector<O>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, Either<A, B>), _ts: Timestamp) -> Result<()> {
        let kg = self.key_groups.key_group(key.stable_hash());
        let mut table = self.sides.get()?.lock();
        let sides = match table.get_mut(&kg, &key)? {
            Some(sides) => sides,
            None => table.get_or_insert_with(&kg, key, Default::default)?,
        };
        match value {
            Either::Left(a) => sides.0.push(a),
            Either::Right(b) => sides.1.push(b),
        }
        Ok(())
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        // The final watermark: both inputs ended. Results go before it, as for aggregations.
        if watermark == Watermark::MAX {
            self.join_all()?;
        }
        self.next.on_watermark(watermark)
    }
    fn on_end(&mut self) -> Result<()> {
        self.join_all()?;
        self.next.on_end()
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.next.on_barrier(barrier)
    }
    crate::forward_hooks!(on_status, on_processing_time, flush);
}

impl<F, K, A, B, O> Pipe<(K, Either<A, B>)> for BoundedJoin<F, K, A, B, O>
where
    F: FnMut(&K, Option<&A>, Option<&B>) -> O + Clone + Send + Sync + 'static,
    K: Key,
    A: StateCodec,
    B: StateCodec,
    O: 'static,
{
    type Out = O;
    type Op<C: Collector<O>> = BoundedJoinOp<F, K, A, B, C>;
    fn attach<C: Collector<O>>(self, next: C, ctx: &OperatorContext) -> Self::Op<C> {
        BoundedJoinOp {
            f: self.f,
            join_type: self.join_type,
            sides: OpTable::register(ctx, "bounded-join"),
            key_groups: ctx.key_groups(),
            worker: ctx.worker(),
            done: false,
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push(format!("join({:?}, bounded)", self.join_type));
    }
    fn uses_state(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Harness;

    #[test]
    fn interval_join_pairs_within_the_bounds() {
        let join = IntervalJoin::new(-2, 1, |a: &u32, b: &u32| (*a, *b)).unwrap();
        let mut h = Harness::new(join);
        h.record((1u8, Either::Left(10)), 10).unwrap();
        h.record((1, Either::Right(8)), 8).unwrap();
        h.record((1, Either::Right(11)), 11).unwrap();
        h.record((1, Either::Right(12)), 12).unwrap();
        h.record((2, Either::Right(10)), 10).unwrap();
        let mut got = h.take_timestamped();
        got.sort();
        assert_eq!(got, vec![((10, 8), 10), ((10, 11), 11)]);
        // After the watermark passes 10 + 1, left 10 is gone (a right record pairing with it
        // would be late); right 8 is gone too, right 11 and 12 stay for left records to come.
        h.watermark(11).unwrap();
        h.record((1, Either::Left(13)), 13).unwrap();
        let mut got = h.take_records();
        got.sort();
        assert_eq!(got, vec![(13, 11), (13, 12)]);
        assert_eq!(h.context().worker(), 0);
    }

    #[test]
    fn bounded_outer_joins_keep_the_unmatched() {
        let f = |k: &u8, a: Option<&u32>, b: Option<&u32>| (*k, a.copied(), b.copied());
        let rows = |t: JoinType| {
            let mut h = Harness::new(BoundedJoin::new(t, f));
            h.record((1u8, Either::Left(1)), 0).unwrap();
            h.record((1, Either::Right(2)), 0).unwrap();
            h.record((2, Either::Left(3)), 0).unwrap();
            h.record((3, Either::Right(4)), 0).unwrap();
            h.end().unwrap();
            let mut r = h.take_records();
            r.sort();
            r
        };
        let pair = (1, Some(1), Some(2));
        assert_eq!(rows(JoinType::Inner), vec![pair]);
        assert_eq!(rows(JoinType::LeftOuter), vec![pair, (2, Some(3), None)]);
        assert_eq!(rows(JoinType::RightOuter), vec![pair, (3, None, Some(4))]);
        assert_eq!(
            rows(JoinType::FullOuter),
            vec![pair, (2, Some(3), None), (3, None, Some(4))]
        );
    }

    #[test]
    fn interval_join_frees_each_key_once_the_watermark_passes_its_records() {
        let join = IntervalJoin::new(-5, 5, |a: &u32, b: &u32| (*a, *b)).unwrap();
        let mut h = Harness::new(join);
        let store = h.context().state().store().clone();
        for k in 0..1_000u32 {
            let t = i64::from(k);
            h.record((k, Either::Left(k)), t).unwrap();
            h.record((k, Either::Right(k + 1)), t + 3).unwrap();
        }
        assert_eq!(h.take_records().len(), 1_000);
        let full = store.memory_used();
        // Left records at t expire at t + 5, right ones at t + 3 + 5: half the keys are gone.
        h.watermark(507).unwrap();
        let half = store.memory_used();
        assert!(half < full * 2 / 3, "{half} of {full}");
        // A key whose left record expired keeps its right one, which still pairs.
        h.record((600, Either::Left(7)), 605).unwrap();
        assert_eq!(h.take_records(), vec![(7, 601)]);
        h.watermark(2_000).unwrap();
        assert_eq!(store.memory_used(), 0, "every buffer and timer dropped");
    }

    #[test]
    fn interval_join_pairs_records_that_arrive_out_of_order() {
        let join = IntervalJoin::new(0, 10, |a: &i64, b: &i64| (*a, *b)).unwrap();
        let mut h = Harness::new(join);
        for t in [20, 5, 12, 5, 30] {
            h.record((1u8, Either::Right(t)), t).unwrap();
        }
        h.record((1, Either::Left(4)), 4).unwrap();
        h.record((1, Either::Left(20)), 20).unwrap();
        assert_eq!(
            h.take_timestamped(),
            vec![
                ((4, 5), 5),
                ((4, 5), 5),
                ((4, 12), 12),
                ((20, 20), 20),
                ((20, 30), 30)
            ]
        );
    }
}
