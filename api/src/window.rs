//! Windowed streams and joins: `key_by(..).window(..)` and the two-input joins.

use std::marker::PhantomData;

use sluice_core::Result;
use sluice_core::chain::Pipe;
use sluice_core::chain::{Map, Then};
use sluice_core::context::OutputTag;
use sluice_core::join::{BoundedJoin, Either, IntervalJoin, JoinType, WindowJoin};
use sluice_core::key::Key;
use sluice_core::keyed::AggregateFunction;
use sluice_core::state::StateCodec;
use sluice_core::window::{
    AggregateWindow, Combined, DefaultTrigger, ProcessWindow, ReduceWindow, TimeWindow, Trigger,
    WindowAssigner, WindowCombiner, WindowFunction, WindowOperator,
};

use crate::stream::{DataStream, GateHead, Head, hash_exchange_two, hash_exchange_with};
use sluice_core::remote::{codec_of, combined_codec, either_codec};

/// A keyed stream cut into windows (from [`KeyedStream::window`](crate::KeyedStream::window)),
/// ready for a window function: [`reduce`](Self::reduce), [`aggregate`](Self::aggregate) or
/// [`process`](Self::process). Records must carry event-time timestamps for event-time windows
/// (assign them with a [`WatermarkStrategy`](crate::WatermarkStrategy)).
#[must_use = "a windowed stream does nothing until a window function is applied"]
pub struct WindowedStream<H: Head, P: Pipe<H::Item, Out = (K, T)>, K, T, Tr> {
    stream: DataStream<H, P>,
    assigner: WindowAssigner,
    trigger: Tr,
    default_trigger: bool,
    allowed_lateness: i64,
    late_tag: Option<u64>,
    _p: PhantomData<fn() -> (K, T)>,
}

/// The stream a window function produces: after the exchange, records or partial
/// accumulators meet the window operator.
pub type WindowResult<K, T, W, Tr> = DataStream<
    GateHead<(K, Combined<T, <W as WindowFunction<K, T>>::Acc>)>,
    WindowOperator<W, Tr, K, T>,
>;

impl<H, P, K, T> WindowedStream<H, P, K, T, DefaultTrigger>
where
    H: Head,
    P: Pipe<H::Item, Out = (K, T)>,
    K: Key,
    T: Clone + Send + 'static,
{
    pub(crate) fn new(stream: DataStream<H, P>, assigner: WindowAssigner) -> Self {
        WindowedStream {
            stream,
            assigner,
            trigger: DefaultTrigger::of(&assigner),
            default_trigger: true,
            allowed_lateness: 0,
            late_tag: None,
            _p: PhantomData,
        }
    }
}

impl<H, P, K, T, Tr> WindowedStream<H, P, K, T, Tr>
where
    H: Head,
    P: Pipe<H::Item, Out = (K, T)>,
    K: Key,
    T: Clone + Send + 'static,
    Tr: Trigger<T>,
{
    /// Fires windows with `trigger` instead of the assigner's own (Flink's `trigger`).
    pub fn trigger<Tr2: Trigger<T>>(self, trigger: Tr2) -> WindowedStream<H, P, K, T, Tr2> {
        WindowedStream {
            stream: self.stream,
            assigner: self.assigner,
            trigger,
            default_trigger: false,
            allowed_lateness: self.allowed_lateness,
            late_tag: self.late_tag,
            _p: PhantomData,
        }
    }

    /// Keeps windows `ms` after they fire: a late record within that time updates the window
    /// and makes it fire again (event-time windows).
    pub fn allowed_lateness(mut self, ms: i64) -> Self {
        self.allowed_lateness = ms.max(0);
        self
    }

    /// Sends records that are late for all their windows to side output `tag` (read it with
    /// [`DataStream::side_output`] on the result) instead of dropping them.
    pub fn side_output_late_data(mut self, tag: &OutputTag<(K, T)>) -> Self {
        self.late_tag = Some(tag.id());
        self
    }

    /// Applies any [`WindowFunction`]. Event-time windows with the default trigger
    /// pre-aggregate on the sending worker (a [`WindowCombiner`]), so about one accumulator per
    /// key and slice (tumbling, sliding) or local session crosses the exchange instead of every
    /// record.
    pub fn apply<W>(self, function: W) -> WindowResult<K, T, W, Tr>
    where
        W: WindowFunction<K, T>,
        W::Acc: Send,
    {
        let combiner = WindowCombiner::new(&self.assigner, function.clone(), self.default_trigger);
        let partials = combined_codec(codec_of::<T>(), codec_of::<W::Acc>());
        let gate = hash_exchange_with(self.stream.then(combiner), partials);
        let op = WindowOperator::new(
            self.assigner,
            function,
            self.trigger,
            self.default_trigger,
            self.allowed_lateness,
            self.late_tag,
        );
        DataStream::new(gate.env, gate.head, op)
    }

    /// Folds each window's records with `f(accumulated, next)`; emits a
    /// [`WindowOutput`](crate::WindowOutput) per key and window.
    pub fn reduce<F>(self, f: F) -> WindowResult<K, T, ReduceWindow<F, T>, Tr>
    where
        T: StateCodec,
        F: FnMut(T, T) -> T + Clone + Send + Sync + 'static,
    {
        self.apply(ReduceWindow::new(f))
    }

    /// Aggregates each window's records incrementally; emits a
    /// [`WindowOutput`](crate::WindowOutput) with the result per key and window.
    ///
    /// ```
    /// use sluice::{AggregateFunction, WatermarkStrategy, WindowAssigner};
    /// #[derive(Clone)]
    /// struct Count;
    /// impl AggregateFunction<(i64, &'static str)> for Count {
    ///     type Acc = u64;
    ///     type Out = u64;
    ///     fn create_accumulator(&self) -> u64 { 0 }
    ///     fn add(&self, acc: &mut u64, _: (i64, &'static str)) { *acc += 1 }
    ///     fn merge(&self, acc: &mut u64, other: u64) { *acc += other }
    ///     fn get_result(&self, acc: &u64) -> u64 { *acc }
    /// }
    /// let out = sluice::testing::run_local(2, |env| {
    ///     env.from_iter(vec![(100i64, "a"), (900, "a"), (1_200, "a"), (300, "b")])
    ///         .assign_timestamps_and_watermarks(
    ///             WatermarkStrategy::for_bounded_out_of_orderness(0)
    ///                 .with_timestamp_assigner(|e: &(i64, &'static str)| e.0),
    ///         )
    ///         .key_by(|e: &(i64, &'static str)| e.1.to_owned())
    ///         .window(WindowAssigner::tumbling(1_000))
    ///         .aggregate(Count)
    ///         .map(|w| (w.key, w.window.start, w.value))
    ///         .collect()
    /// });
    /// let out: Vec<(&str, i64, u64)> = out.iter().map(|(k, s, n)| (k.as_str(), *s, *n)).collect();
    /// assert_eq!(out, vec![("a", 0, 2), ("a", 1_000, 1), ("b", 0, 1)]);
    /// ```
    pub fn aggregate<A>(self, agg: A) -> WindowResult<K, T, AggregateWindow<A, T>, Tr>
    where
        A: AggregateFunction<T>,
        A::Acc: Clone + StateCodec,
    {
        self.apply(AggregateWindow::new(agg))
    }

    /// Calls `f(key, window, records, out)` with all of each window's records when it fires
    /// (Flink's `ProcessWindowFunction`); `f` appends its results to `out`.
    pub fn process<F, O>(self, f: F) -> WindowResult<K, T, ProcessWindow<F, T, O>, Tr>
    where
        T: StateCodec,
        O: 'static,
        F: FnMut(&K, &TimeWindow, &mut dyn Iterator<Item = &T>, &mut Vec<O>) -> Result<()>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        self.apply(ProcessWindow::new(f))
    }
}

/// Two streams to join, from [`DataStream::join`]: name their keys with
/// [`where_key`](Self::where_key) and [`equal_to`](Self::equal_to).
#[must_use = "a join does nothing until it is applied"]
pub struct JoinBuilder<H1: Head, P1: Pipe<H1::Item>, H2: Head, P2: Pipe<H2::Item>> {
    left: DataStream<H1, P1>,
    right: DataStream<H2, P2>,
}

impl<H1: Head, P1: Pipe<H1::Item>, H2: Head, P2: Pipe<H2::Item>> JoinBuilder<H1, P1, H2, P2> {
    pub(crate) fn new(left: DataStream<H1, P1>, right: DataStream<H2, P2>) -> Self {
        JoinBuilder { left, right }
    }

    /// The left stream's key.
    pub fn where_key<K, F1>(self, left_key: F1) -> JoinWhere<H1, P1, H2, P2, F1, K>
    where
        K: Key,
        F1: FnMut(&P1::Out) -> K + Clone + Send + Sync + 'static,
    {
        JoinWhere {
            left: self.left,
            right: self.right,
            left_key,
            _k: PhantomData,
        }
    }
}

/// A join with its left key; name the right one with [`equal_to`](Self::equal_to).
#[must_use = "a join does nothing until it is applied"]
pub struct JoinWhere<H1: Head, P1: Pipe<H1::Item>, H2: Head, P2: Pipe<H2::Item>, F1, K> {
    left: DataStream<H1, P1>,
    right: DataStream<H2, P2>,
    left_key: F1,
    _k: PhantomData<fn() -> K>,
}

impl<H1, P1, H2, P2, F1, K> JoinWhere<H1, P1, H2, P2, F1, K>
where
    H1: Head,
    P1: Pipe<H1::Item>,
    H2: Head,
    P2: Pipe<H2::Item>,
    K: Key,
    F1: FnMut(&P1::Out) -> K + Clone + Send + Sync + 'static,
    P1::Out: Clone + Send + 'static,
    P2::Out: Clone + Send + 'static,
{
    /// The right stream's key: records join when their keys are equal.
    pub fn equal_to<F2>(self, mut right_key: F2) -> JoinedStreams<K, P1::Out, P2::Out>
    where
        F2: FnMut(&P2::Out) -> K + Clone + Send + Sync + 'static,
    {
        let mut left_key = self.left_key;
        let left = self
            .left
            .map(move |a| (left_key(&a), Either::Left::<P1::Out, P2::Out>(a)));
        let right = self
            .right
            .map(move |b| (right_key(&b), Either::Right::<P1::Out, P2::Out>(b)));
        JoinedStreams {
            gate: hash_exchange_two(
                left,
                right,
                either_codec(codec_of::<P1::Out>(), codec_of::<P2::Out>()),
            ),
        }
    }
}

/// Wraps join records for the window operator.
type RawFn<K, A, B> = fn((K, Either<A, B>)) -> (K, Combined<Either<A, B>, (Vec<A>, Vec<B>)>);

/// The operators of a window join after its exchange.
pub type WindowJoinPipe<K, A, B, F, O> = Then<
    Map<RawFn<K, A, B>, (K, Combined<Either<A, B>, (Vec<A>, Vec<B>)>)>,
    WindowOperator<WindowJoin<F, A, B, O>, DefaultTrigger, K, Either<A, B>>,
>;

/// Two keyed streams meeting in one stage, ready for a join: a window join, an interval join
/// or a bounded (batch) equi-join.
#[must_use = "a join does nothing until it is applied"]
pub struct JoinedStreams<K: Send + 'static, A: Send + 'static, B: Send + 'static> {
    gate: DataStream<GateHead<(K, Either<A, B>)>, sluice_core::chain::Identity>,
}

/// The joins buffer records of both sides in the stage's state store (checkpointed, and
/// evicted to disk when they outgrow memory), so both record types are [`StateCodec`].
impl<K, A, B> JoinedStreams<K, A, B>
where
    K: Key,
    A: Clone + Send + StateCodec,
    B: Clone + Send + StateCodec,
{
    /// An inner join within windows: `f(left, right)` for every pair with equal keys in the
    /// same window (Flink's window `join`), emitted when the window fires, with the window's
    /// largest timestamp.
    pub fn window<F, O>(
        self,
        assigner: WindowAssigner,
        f: F,
    ) -> DataStream<GateHead<(K, Either<A, B>)>, WindowJoinPipe<K, A, B, F, O>>
    where
        A: StateCodec,
        B: StateCodec,
        O: 'static,
        F: FnMut(&A, &B) -> O + Clone + Send + Sync + 'static,
    {
        let op = WindowOperator::new(
            assigner,
            WindowJoin::new(f),
            DefaultTrigger::of(&assigner),
            true,
            0,
            None,
        );
        let raw = Map::new(sluice_core::window::combine::raw as RawFn<K, A, B>);
        DataStream::new(self.gate.env, self.gate.head, Then(raw, op))
    }

    /// An interval join: a left record at `t` pairs with the right records of its key in
    /// `[t + lower, t + upper]`; `f(left, right)` is emitted at the later of the two times.
    pub fn interval<F, O>(
        self,
        lower: i64,
        upper: i64,
        f: F,
    ) -> Result<DataStream<GateHead<(K, Either<A, B>)>, IntervalJoin<F, K, A, B, O>>>
    where
        O: 'static,
        F: FnMut(&A, &B) -> O + Clone + Send + Sync + 'static,
    {
        let op = IntervalJoin::new(lower, upper, f)?;
        Ok(DataStream::new(self.gate.env, self.gate.head, op))
    }

    /// An equi-join of bounded inputs (Flink's DataSet joins): when both inputs have ended,
    /// `f(key, Some(left), Some(right))` for every pair with equal keys, and for the unmatched
    /// records `join_type` keeps, `f` with `None` on the missing side. It emits when its
    /// inputs end: on a stream that never ends it never emits.
    ///
    /// ```
    /// use sluice::JoinType;
    /// let out = sluice::testing::run_local(2, |env| {
    ///     let users = env.from_iter(vec![(1u32, "ann".to_owned()), (2, "bob".to_owned())]);
    ///     let orders = env.from_iter(vec![(1u32, 30u64), (1, 12), (3, 7)]);
    ///     users
    ///         .join(orders)
    ///         .where_key(|u: &(u32, String)| u.0)
    ///         .equal_to(|o: &(u32, u64)| o.0)
    ///         .bounded(JoinType::FullOuter, |id, u, o| {
    ///             (*id, u.map(|u| u.1.clone()), o.map(|o| o.1))
    ///         })
    ///         .collect()
    /// });
    /// let ann = Some("ann".to_owned());
    /// assert_eq!(
    ///     out,
    ///     vec![(1, ann.clone(), Some(12)), (1, ann, Some(30)), (2, Some("bob".into()), None),
    ///          (3, None, Some(7))]
    /// );
    /// ```
    pub fn bounded<F, O>(
        self,
        join_type: JoinType,
        f: F,
    ) -> DataStream<GateHead<(K, Either<A, B>)>, BoundedJoin<F, K, A, B, O>>
    where
        O: 'static,
        F: FnMut(&K, Option<&A>, Option<&B>) -> O + Clone + Send + Sync + 'static,
    {
        DataStream::new(
            self.gate.env,
            self.gate.head,
            BoundedJoin::new(join_type, f),
        )
    }
}
