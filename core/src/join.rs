//! Joins of two keyed streams. Both inputs are keyed by the same key type and reach one stage
//! through hash exchanges, tagged [`Either::Left`] or [`Either::Right`]; the operators here pair
//! them up per key.
//!
//! - **Window join** (inner, over tumbling, sliding or session windows): a window operator
//!   whose [`WindowJoin`] function pairs the left and right records of each window — so it
//!   shares windows' slicing, lateness and triggers.
//! - **Interval join** ([`IntervalJoin`]): a left record at `t` pairs with the right records
//!   of its key in `[t + lower, t + upper]`; each side is buffered until the watermark passes
//!   the last time a record of the other side could still pair with it. A record behind the
//!   watermark of its input is late and dropped, as in Flink.
//! - **Bounded equi-joins** ([`BoundedJoin`]): inner, left outer, right outer and full outer
//!   joins of bounded inputs (Flink's DataSet joins). Both sides are buffered per key and
//!   joined when the inputs end.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use crate::FastMap;
use crate::chain::{Collector, Pipe};
use crate::context::OperatorContext;
use crate::element::{CheckpointBarrier, NO_TIMESTAMP, Timestamp, Watermark};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::state::StateCodec;
use crate::window::{TimeWindow, WindowFunction};

/// A record of the left or the right input of a join.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
    /// Left and right records of the window (or slice).
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

/// One key's buffered records, by timestamp.
struct Buffers<A, B> {
    left: BTreeMap<i64, Vec<A>>,
    right: BTreeMap<i64, Vec<B>>,
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
    Some(crate::window::saturate(lo)..=crate::window::saturate(hi))
}

/// The instantiated [`IntervalJoin`].
pub struct IntervalJoinOp<F, K, A, B, C> {
    f: F,
    lower: i64,
    upper: i64,
    buffers: FastMap<K, Buffers<A, B>>,
    watermark: Watermark,
    ctx: OperatorContext,
    next: C,
}

impl<F, K, A, B, O, C> IntervalJoinOp<F, K, A, B, C>
where
    F: FnMut(&A, &B) -> O,
    K: Key,
    C: Collector<O>,
{
    /// Drops what can no longer pair: a left record at `t` once the watermark passes
    /// `t + upper`, a right record at `t` once it passes `t − lower`.
    fn expire(&mut self, w: i64) {
        let (lower, upper) = (self.lower, self.upper);
        self.buffers.retain(|_, b| {
            let left_keep = w.saturating_sub(upper).saturating_add(1);
            b.left = b.left.split_off(&left_keep);
            let right_keep = w.saturating_add(lower).saturating_add(1);
            b.right = b.right.split_off(&right_keep);
            !(b.left.is_empty() && b.right.is_empty())
        });
    }
}

impl<F, K, A, B, O, C> Collector<(K, Either<A, B>)> for IntervalJoinOp<F, K, A, B, C>
where
    F: FnMut(&A, &B) -> O,
    K: Key,
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
        let b = self.buffers.entry(key).or_insert_with(|| Buffers {
            left: BTreeMap::new(),
            right: BTreeMap::new(),
        });
        let (lower, upper) = (i128::from(self.lower), i128::from(self.upper));
        match value {
            Either::Left(a) => {
                if let Some(partners) = shifted(ts, lower, upper) {
                    for (&rts, rights) in b.right.range(partners) {
                        for r in rights {
                            self.next.collect((self.f)(&a, r), ts.max(rts))?;
                        }
                    }
                }
                b.left.entry(ts).or_default().push(a);
            }
            Either::Right(r) => {
                if let Some(partners) = shifted(ts, -upper, -lower) {
                    for (&lts, lefts) in b.left.range(partners) {
                        for a in lefts {
                            self.next.collect((self.f)(a, &r), ts.max(lts))?;
                        }
                    }
                }
                b.right.entry(ts).or_default().push(r);
            }
        }
        Ok(())
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        if watermark > self.watermark {
            self.watermark = watermark;
            self.expire(watermark.0);
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
    A: 'static,
    B: 'static,
    O: 'static,
{
    type Out = O;
    type Op<C: Collector<O>> = IntervalJoinOp<F, K, A, B, C>;
    fn attach<C: Collector<O>>(self, next: C, ctx: &OperatorContext) -> Self::Op<C> {
        IntervalJoinOp {
            f: self.f,
            lower: self.lower,
            upper: self.upper,
            buffers: FastMap::default(),
            watermark: Watermark::MIN,
            ctx: ctx.clone(),
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push(format!("interval_join[{}, {}]", self.lower, self.upper));
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
pub struct BoundedJoinOp<F, K, A, B, C> {
    f: F,
    join_type: JoinType,
    sides: FastMap<K, (Vec<A>, Vec<B>)>,
    done: bool,
    next: C,
}

impl<F, K, A, B, O, C> BoundedJoinOp<F, K, A, B, C>
where
    F: FnMut(&K, Option<&A>, Option<&B>) -> O,
    K: Key,
    C: Collector<O>,
{
    fn join_all(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        let keep_left = matches!(self.join_type, JoinType::LeftOuter | JoinType::FullOuter);
        let keep_right = matches!(self.join_type, JoinType::RightOuter | JoinType::FullOuter);
        for (key, (lefts, rights)) in self.sides.drain() {
            for a in &lefts {
                for b in &rights {
                    self.next
                        .collect((self.f)(&key, Some(a), Some(b)), NO_TIMESTAMP)?;
                }
            }
            if keep_left && rights.is_empty() {
                for a in &lefts {
                    self.next
                        .collect((self.f)(&key, Some(a), None), NO_TIMESTAMP)?;
                }
            }
            if keep_right && lefts.is_empty() {
                for b in &rights {
                    self.next
                        .collect((self.f)(&key, None, Some(b)), NO_TIMESTAMP)?;
                }
            }
        }
        Ok(())
    }
}

impl<F, K, A, B, O, C> Collector<(K, Either<A, B>)> for BoundedJoinOp<F, K, A, B, C>
where
    F: FnMut(&K, Option<&A>, Option<&B>) -> O,
    K: Key,
    C: Collector<O>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, Either<A, B>), _ts: Timestamp) -> Result<()> {
        let sides = match self.sides.get_mut(&key) {
            Some(sides) => sides,
            None => self.sides.entry(key).or_default(),
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
    A: 'static,
    B: 'static,
    O: 'static,
{
    type Out = O;
    type Op<C: Collector<O>> = BoundedJoinOp<F, K, A, B, C>;
    fn attach<C: Collector<O>>(self, next: C, _ctx: &OperatorContext) -> Self::Op<C> {
        BoundedJoinOp {
            f: self.f,
            join_type: self.join_type,
            sides: FastMap::default(),
            done: false,
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push(format!("join({:?}, bounded)", self.join_type));
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
}
