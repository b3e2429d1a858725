//! [`DataStream`] and [`KeyedStream`]: the typed builders of a job.
//!
//! A `DataStream<H, P>` is a *head* `H` (a source, or the receiving end of an exchange) and a
//! chain `P` of operators after it; its record type is `P::Out`. Transformations extend the
//! chain at compile time, so the chain of one stage is one monomorphised call path. An
//! exchange (`key_by` + aggregation, `rebalance`, `broadcast`, `union`) or a sink closes the
//! stage: the head, the chain and the output become one [`StageFactory`] in the job graph.

use std::fmt::Display;
use std::ops::AddAssign;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_core::Key;
use sluice_core::chain::{
    FlatMap, FlatMapInto, Flatten, Identity, Map, MapWithTimestamp, Pipe, Then, TryMap, filter,
};
use sluice_core::context::OutputTag;
use sluice_core::exchange::{Edge, Partitioning};
use sluice_core::graph::{
    Forward, HashByKey, OutputSpec, Rebalance, SideOutputSpec, StageFactory, ToBroadcast, ToEdge,
    ToSide, ToSink,
};
use sluice_core::keyed::{
    Aggregate, AggregateFunction, Combine, CombineAgg, Emit, MergeAgg, Reduce, ReducePairs,
};
use sluice_core::process::{KeyedProcess, KeyedProcessFunction};
use sluice_core::remote::{CodecSource, codec_of, pair_codec, register_wire_type};
use sluice_core::sink::Sink;
use sluice_core::source::Source;
use sluice_core::stage::{GateStage, SourceStage};
use sluice_core::state::StateCodec;
use sluice_core::time::{
    AssignTimestamps, TimestampAssigner, WatermarkGenerator, WatermarkStrategy,
};
use sluice_core::window::{DefaultTrigger, WindowAssigner};

use crate::env::Env;
use crate::sinks::{CollectHandle, CollectSink, PrintSink, TextFileSink};
use crate::window::{JoinBuilder, WindowedStream};

/// Turns a head, the chain after it and the stage's output into a stage of a job.
/// (A separate trait from [`Head`] only to work around a limitation of rustc's trait solver.)
pub trait BuildStage<I> {
    /// Adds the stage to `env`'s job.
    fn into_stage<P, O>(self, env: &Env, pipe: P, out: O, sides: Vec<Box<dyn SideOutputSpec>>)
    where
        P: Pipe<I>,
        O: OutputSpec<P::Out>;
}

/// Where a stage's records come from: a source or the receiving end of exchanges.
pub trait Head: 'static + BuildStage<<Self as Head>::Item> {
    /// The records the head produces.
    type Item: 'static;
}

/// A stage that starts at a source.
pub struct SourceHead<S>(pub S);

impl<S: Source> Head for SourceHead<S> {
    type Item = S::Item;
}

impl<S: Source> BuildStage<S::Item> for SourceHead<S> {
    fn into_stage<P, O>(self, env: &Env, pipe: P, out: O, sides: Vec<Box<dyn SideOutputSpec>>)
    where
        P: Pipe<S::Item>,
        O: OutputSpec<P::Out>,
    {
        let stage: Box<dyn StageFactory> = Box::new(SourceStage::new(self.0, pipe, out, sides));
        env.add_stage(stage);
    }
}

/// A stage that starts at the receiving end of one or more edges.
pub struct GateHead<T: Send> {
    edges: Vec<(Arc<Edge<T>>, std::rc::Rc<std::cell::RefCell<bool>>)>,
}

impl<T: Send + 'static> Head for GateHead<T> {
    type Item = T;
}

impl<T: Send + 'static> BuildStage<T> for GateHead<T> {
    fn into_stage<P, O>(self, env: &Env, pipe: P, out: O, sides: Vec<Box<dyn SideOutputSpec>>)
    where
        P: Pipe<T>,
        O: OutputSpec<P::Out>,
    {
        let mut edges = Vec::with_capacity(self.edges.len());
        for (edge, consumed) in self.edges {
            *consumed.borrow_mut() = true;
            edges.push(edge);
        }
        env.add_stage(Box::new(GateStage::new(edges, pipe, out, sides)));
    }
}

/// A stream of records: a head and the chain of operators after it. The record type is
/// `P::Out`.
#[must_use = "a stream does nothing until it ends in a sink and the job is executed"]
pub struct DataStream<H: Head, P: Pipe<H::Item>> {
    pub(crate) env: Env,
    pub(crate) head: H,
    pub(crate) pipe: P,
    /// The side outputs read from this stage so far.
    pub(crate) sides: Vec<Box<dyn SideOutputSpec>>,
}

impl<H: Head, P: Pipe<H::Item>> DataStream<H, P> {
    pub(crate) fn new(env: Env, head: H, pipe: P) -> Self {
        DataStream {
            env,
            head,
            pipe,
            sides: Vec::new(),
        }
    }

    pub(crate) fn then<Q: Pipe<P::Out>>(self, q: Q) -> DataStream<H, Then<P, Q>> {
        DataStream {
            env: self.env,
            head: self.head,
            pipe: Then(self.pipe, q),
            sides: self.sides,
        }
    }

    /// The records an operator of this stream's chain emitted to side output `tag` (late
    /// records of a window, say), as a stream of their own on the same workers.
    ///
    /// ```
    /// use sluice::{OutputTag, ProcessContext, KeyedProcessFunction};
    /// let odd: OutputTag<u64> = OutputTag::new("odd");
    /// let tag = odd.clone();
    /// let env = sluice::Env::new();
    /// let mut evens = env
    ///     .from_iter(1..=6u64)
    ///     .key_by(|x: &u64| *x % 3)
    ///     .process(move |x: u64, ctx: &mut ProcessContext<'_, u64, u64>| {
    ///         if x % 2 == 0 {
    ///             ctx.output(x);
    ///             Ok(())
    ///         } else {
    ///             ctx.side_output(&tag, x)
    ///         }
    ///     });
    /// let odds = evens.side_output(&odd).collect();
    /// let evens = evens.collect();
    /// env.execute("doc").unwrap();
    /// let (mut e, mut o) = (evens.take(), odds.take());
    /// e.sort();
    /// o.sort();
    /// assert_eq!((e, o), (vec![2, 4, 6], vec![1, 3, 5]));
    /// ```
    pub fn side_output<T: Send + 'static>(
        &mut self,
        tag: &OutputTag<T>,
    ) -> DataStream<GateHead<T>, Identity> {
        let edge = Arc::new(Edge::new(Partitioning::Forward));
        let consumed = self.env.add_edge(edge.clone());
        self.sides
            .push(Box::new(ToSide::new(tag.id(), tag.name(), edge.clone())));
        DataStream::new(
            self.env.clone(),
            GateHead {
                edges: vec![(edge, consumed)],
            },
            Identity,
        )
    }

    /// One record out per record in.
    pub fn map<U, F>(self, f: F) -> DataStream<H, Then<P, Map<F, U>>>
    where
        U: 'static,
        F: FnMut(P::Out) -> U + Clone + Send + Sync + 'static,
    {
        self.then(Map::new(f))
    }

    /// Like [`map`](Self::map), but the function also gets the record's event-time timestamp
    /// ([`NO_TIMESTAMP`](crate::NO_TIMESTAMP) if it has none).
    pub fn map_with_timestamp<U, F>(self, f: F) -> DataStream<H, Then<P, MapWithTimestamp<F, U>>>
    where
        U: 'static,
        F: FnMut(P::Out, i64) -> U + Clone + Send + Sync + 'static,
    {
        self.then(MapWithTimestamp::new(f))
    }

    /// Like [`map`](Self::map), but the function may fail; an error fails the job with a
    /// message naming the operator `name`.
    pub fn try_map<U, E, F>(self, name: &'static str, f: F) -> DataStream<H, Then<P, TryMap<F, U>>>
    where
        U: 'static,
        E: Display + 'static,
        F: FnMut(P::Out) -> Result<U, E> + Clone + Send + Sync + 'static,
    {
        self.then(TryMap::new(name, f))
    }

    /// Keeps the records for which `f` is true.
    pub fn filter<F>(self, f: F) -> DataStream<H, Then<P, sluice_core::chain::Filter<F, P::Out>>>
    where
        P::Out: 'static,
        F: FnMut(&P::Out) -> bool + Clone + Send + Sync + 'static,
    {
        self.then(filter(f))
    }

    /// Any number of records out per record in, from what `f` returns.
    #[allow(clippy::type_complexity)]
    pub fn flat_map<I, F>(self, f: F) -> DataStream<H, Then<P, Then<FlatMap<F, I>, Flatten<I>>>>
    where
        I: IntoIterator + 'static,
        F: FnMut(P::Out) -> I + Clone + Send + Sync + 'static,
    {
        self.then(Then(FlatMap::new(f), Flatten::new()))
    }

    /// Any number of records out per record in: `f` appends them to a buffer that is reused
    /// from record to record, so it allocates nothing once warm.
    pub fn flat_map_into<U, F>(self, f: F) -> DataStream<H, Then<P, FlatMapInto<F, U>>>
    where
        U: 'static,
        F: FnMut(P::Out, &mut Vec<U>) + Clone + Send + Sync + 'static,
    {
        self.then(FlatMapInto::new(f))
    }

    /// Gives the records event-time timestamps and emits watermarks per `strategy` (Flink's
    /// `assignTimestampsAndWatermarks`). Upstream watermarks are replaced by the strategy's.
    /// Watermarks follow the data: one after every 1024 records at most, so which records
    /// are late does not depend on how fast the job runs.
    ///
    /// ```
    /// use sluice::WatermarkStrategy;
    /// let env = sluice::Env::new();
    /// let stream = env
    ///     .from_iter(vec![(1_000i64, "a"), (1_500, "b")])
    ///     .assign_timestamps_and_watermarks(
    ///         WatermarkStrategy::for_bounded_out_of_orderness(100)
    ///             .with_timestamp_assigner(|e: &(i64, &str)| e.0),
    ///     );
    /// # let _ = stream;
    /// ```
    pub fn assign_timestamps_and_watermarks<A, G>(
        self,
        strategy: WatermarkStrategy<A, G>,
    ) -> DataStream<H, Then<P, AssignTimestamps<A, G, P::Out>>>
    where
        P::Out: 'static,
        A: TimestampAssigner<P::Out>,
        G: WatermarkGenerator<P::Out>,
    {
        self.then(AssignTimestamps::new(strategy))
    }

    /// Partitions the stream by key: records with the same key reach the same worker, through
    /// the key group of the key's stable hash. Follow it with an aggregation.
    #[allow(clippy::type_complexity)]
    pub fn key_by<K, F>(
        self,
        mut key: F,
    ) -> KeyedStream<
        H,
        Then<P, Map<impl FnMut(P::Out) -> (K, P::Out) + Clone + Send + Sync, (K, P::Out)>>,
        K,
        P::Out,
    >
    where
        K: Key,
        P::Out: Send + 'static,
        F: FnMut(&P::Out) -> K + Clone + Send + Sync + 'static,
    {
        let with_key = move |rec: P::Out| (key(&rec), rec);
        KeyedStream {
            stream: self.then(Map::new(with_key)),
            _p: std::marker::PhantomData,
        }
    }

    /// Treats a stream of `(key, value)` pairs as keyed by its first field, without copying
    /// the key: aggregations keep the key beside the value and emit `(key, value)` pairs.
    ///
    /// ```
    /// let out = sluice::testing::run_local(2, |env| {
    ///     let pairs = env.from_iter(vec![('a', 1), ('b', 2), ('a', 3)]);
    ///     pairs.into_keyed().emit_final().sum().collect()
    /// });
    /// assert_eq!(out, vec![('a', 4), ('b', 2)]);
    /// ```
    pub fn into_keyed<K, V>(self) -> PairKeyedStream<H, P, K, V>
    where
        P: Pipe<H::Item, Out = (K, V)>,
        K: Key,
        V: Send + 'static,
    {
        PairKeyedStream {
            stream: self,
            _p: std::marker::PhantomData,
        }
    }

    pub(crate) fn exchange<O>(
        self,
        partitioning: Partitioning,
        out: impl FnOnce(Arc<Edge<P::Out>>) -> O,
    ) -> DataStream<GateHead<P::Out>, Identity>
    where
        P::Out: Send + 'static,
        O: OutputSpec<P::Out>,
    {
        self.exchange_with(partitioning, codec_of::<P::Out>(), out)
    }

    /// An exchange whose records cross nodes (when the job runs on a cluster) with the codec
    /// `codec` finds.
    pub(crate) fn exchange_with<O>(
        self,
        partitioning: Partitioning,
        codec: CodecSource<P::Out>,
        out: impl FnOnce(Arc<Edge<P::Out>>) -> O,
    ) -> DataStream<GateHead<P::Out>, Identity>
    where
        P::Out: Send + 'static,
        O: OutputSpec<P::Out>,
    {
        let edge = Arc::new(Edge::with_codec(partitioning, codec));
        let consumed = self.env.add_edge(edge.clone());
        self.head
            .into_stage(&self.env, self.pipe, out(edge.clone()), self.sides);
        DataStream::new(
            self.env,
            GateHead {
                edges: vec![(edge, consumed)],
            },
            Identity,
        )
    }

    /// Windows over the whole stream, not per key (Flink's `windowAll`): every record goes to
    /// one worker.
    pub fn window_all(
        self,
        assigner: WindowAssigner,
    ) -> WindowedStream<
        H,
        Then<P, Map<impl FnMut(P::Out) -> ((), P::Out) + Clone + Send + Sync, ((), P::Out)>>,
        (),
        P::Out,
        DefaultTrigger,
    >
    where
        P::Out: Clone + Send + 'static,
    {
        self.key_by(|_: &P::Out| ()).window(assigner)
    }

    /// Joins this stream with `other`: name the keys, then pick a window join, an interval
    /// join or a bounded equi-join (see [`JoinedStreams`](crate::JoinedStreams)).
    pub fn join<H2: Head, P2: Pipe<H2::Item>>(
        self,
        other: DataStream<H2, P2>,
    ) -> JoinBuilder<H, P, H2, P2> {
        JoinBuilder::new(self, other)
    }

    /// Spreads records round robin over all workers.
    pub fn rebalance(self) -> DataStream<GateHead<P::Out>, Identity>
    where
        P::Out: Send + 'static,
    {
        self.exchange(Partitioning::Rebalance, |e| ToEdge::new(e, Rebalance))
    }

    /// Sends every record to every worker.
    pub fn broadcast(self) -> DataStream<GateHead<P::Out>, Identity>
    where
        P::Out: Clone + Send + 'static,
    {
        self.exchange(Partitioning::Broadcast, ToBroadcast::new)
    }

    /// Merges this stream with another of the same record type. Each worker's records stay on
    /// that worker.
    pub fn union<H2: Head, P2: Pipe<H2::Item, Out = P::Out>>(
        self,
        other: DataStream<H2, P2>,
    ) -> DataStream<GateHead<P::Out>, Identity>
    where
        P::Out: Send + 'static,
    {
        let env = self.env.clone();
        let mut a = self.exchange(Partitioning::Forward, |e| ToEdge::new(e, Forward));
        let b = other.exchange(Partitioning::Forward, |e| ToEdge::new(e, Forward));
        a.head.edges.extend(b.head.edges);
        DataStream::new(env, a.head, Identity)
    }

    /// Ends the stream in `sink`.
    pub fn sink<S: Sink<P::Out>>(self, sink: S) {
        self.head
            .into_stage(&self.env, self.pipe, ToSink::new(sink), self.sides);
    }

    /// Prints every record to stdout as `worker> record` (worker counted from 1, as in Flink).
    pub fn print(self)
    where
        P::Out: std::fmt::Debug,
    {
        self.sink(PrintSink);
    }

    /// Writes every record as a line of text into part files in directory `dir` (see
    /// [`TextFileSink`]).
    pub fn write_text(self, dir: impl Into<PathBuf>)
    where
        P::Out: Display,
    {
        self.sink(TextFileSink::new(dir));
    }

    /// Collects every record in memory; read them with [`CollectHandle::take`] after
    /// [`Env::execute`]. For tests and small results.
    pub fn collect(self) -> CollectHandle<P::Out>
    where
        P::Out: Send + 'static,
    {
        let sink = CollectSink::new();
        let handle = sink.handle();
        self.sink(sink);
        handle
    }
}

/// A stream partitioned by key `K`, ready for a keyed aggregation that emits the updated
/// value after every record (Flink's keyed `reduce`/`sum`/`aggregate`). Each record travels as
/// `(key, record)`; the aggregation's state is kept per key on the worker that owns the key.
#[must_use = "a keyed stream does nothing until it is aggregated"]
pub struct KeyedStream<H: Head, P: Pipe<H::Item, Out = (K, T)>, K, T> {
    stream: DataStream<H, P>,
    _p: std::marker::PhantomData<fn() -> (K, T)>,
}

/// A keyed stream whose aggregation emits one final value per key when the input ends. Values
/// are combined per key on the sending worker before the exchange, so far fewer records cross
/// it than with running values.
#[must_use = "a keyed stream does nothing until it is aggregated"]
pub struct FinalKeyedStream<H: Head, P: Pipe<H::Item, Out = (K, T)>, K, T> {
    stream: DataStream<H, P>,
    _p: std::marker::PhantomData<fn() -> (K, T)>,
}

fn sum_fn<T, N: AddAssign + Copy + 'static>(
    field: impl Fn(&mut T) -> &mut N + Clone + Send + Sync + 'static,
) -> impl FnMut(T, T) -> T + Clone + Send + Sync + 'static {
    move |mut acc: T, mut next: T| {
        let add = *field(&mut next);
        *field(&mut acc) += add;
        acc
    }
}

/// The hash exchange of `(key, value)` pairs, whose values cross nodes with the codec
/// registered for `V` (keys are registered here: a [`Key`] is serializable).
pub(crate) fn hash_exchange<H, P, K, V>(
    stream: DataStream<H, P>,
) -> DataStream<GateHead<(K, V)>, Identity>
where
    H: Head,
    P: Pipe<H::Item, Out = (K, V)>,
    K: Key,
    V: Send + 'static,
{
    hash_exchange_with(stream, codec_of::<V>())
}

/// [`hash_exchange`] of values the API knows to be serializable: registered for the wire.
pub(crate) fn hash_exchange_stored<H, P, K, V>(
    stream: DataStream<H, P>,
) -> DataStream<GateHead<(K, V)>, Identity>
where
    H: Head,
    P: Pipe<H::Item, Out = (K, V)>,
    K: Key,
    V: StateCodec + Send,
{
    register_wire_type::<V>();
    hash_exchange(stream)
}

/// [`hash_exchange`] with the values' codec found by `values`.
pub(crate) fn hash_exchange_with<H, P, K, V>(
    stream: DataStream<H, P>,
    values: CodecSource<V>,
) -> DataStream<GateHead<(K, V)>, Identity>
where
    H: Head,
    P: Pipe<H::Item, Out = (K, V)>,
    K: Key,
    V: Send + 'static,
{
    register_wire_type::<K>();
    let codec = pair_codec(codec_of::<K>(), values);
    stream.exchange_with(Partitioning::Hash, codec, |e| ToEdge::new(e, HashByKey))
}

/// Two keyed streams hashed into one stage: a record's key group decides its worker, whichever
/// stream it comes from.
pub(crate) fn hash_exchange_two<H1, P1, H2, P2, K, V>(
    left: DataStream<H1, P1>,
    right: DataStream<H2, P2>,
    values: CodecSource<V>,
) -> DataStream<GateHead<(K, V)>, Identity>
where
    H1: Head,
    P1: Pipe<H1::Item, Out = (K, V)>,
    H2: Head,
    P2: Pipe<H2::Item, Out = (K, V)>,
    K: Key,
    V: Send + 'static,
{
    let mut a = hash_exchange_with(left, values.clone());
    let b = hash_exchange_with(right, values);
    a.head.edges.extend(b.head.edges);
    a
}

impl<H, P, K, T> KeyedStream<H, P, K, T>
where
    H: Head,
    P: Pipe<H::Item, Out = (K, T)>,
    K: Key,
    T: Send + 'static,
{
    /// Switches to final values: one per key, when the input ends.
    pub fn emit_final(self) -> FinalKeyedStream<H, P, K, T> {
        FinalKeyedStream {
            stream: self.stream,
            _p: std::marker::PhantomData,
        }
    }

    /// Reduces each key's records with `f(accumulated, next)`, emitting the accumulated value
    /// after every record.
    pub fn reduce<F>(self, f: F) -> DataStream<GateHead<(K, T)>, Reduce<F, K, T>>
    where
        T: Clone + StateCodec,
        F: FnMut(T, T) -> T + Clone + Send + Sync + 'static,
    {
        let gate = hash_exchange_stored(self.stream);
        DataStream::new(gate.env, gate.head, Reduce::new(f, Emit::Running))
    }

    /// Sums the numeric field that `field` points to, keeping the other fields of the key's
    /// first record (Flink's `sum(position)`), emitting the running sum after every record.
    #[allow(clippy::type_complexity)]
    pub fn sum<N, F>(
        self,
        field: F,
    ) -> DataStream<GateHead<(K, T)>, Reduce<impl FnMut(T, T) -> T + Clone + Send + Sync, K, T>>
    where
        T: Clone + StateCodec,
        N: AddAssign + Copy + 'static,
        F: Fn(&mut T) -> &mut N + Clone + Send + Sync + 'static,
    {
        self.reduce(sum_fn(field))
    }

    /// Aggregates each key's records with an [`AggregateFunction`], emitting the result after
    /// every record.
    pub fn aggregate<A>(self, agg: A) -> DataStream<GateHead<(K, T)>, Aggregate<A, K, T>>
    where
        A: AggregateFunction<T>,
        A::Acc: StateCodec,
    {
        let gate = hash_exchange(self.stream);
        DataStream::new(gate.env, gate.head, Aggregate::new(agg, Emit::Running))
    }

    /// Cuts each key's records into windows of `assigner` (Flink's `window`); apply a window
    /// function to the result.
    pub fn window(self, assigner: WindowAssigner) -> WindowedStream<H, P, K, T, DefaultTrigger>
    where
        T: Clone,
    {
        WindowedStream::new(self.stream, assigner)
    }

    /// Processes each record with a [`KeyedProcessFunction`] — keyed state, event-time and
    /// processing-time timers, side outputs (Flink's `process` on a `KeyedStream`). A closure
    /// `|value, ctx: &mut ProcessContext<K, O>| -> Result<()>` is one.
    ///
    /// ```
    /// use sluice::ProcessContext;
    /// let env = sluice::Env::new();
    /// let out = env
    ///     .from_iter(vec![("a", 1), ("b", 2), ("a", 3)])
    ///     .key_by(|(k, _): &(&str, i32)| k.to_string())
    ///     .process(|(k, v), ctx: &mut ProcessContext<'_, String, String>| {
    ///         ctx.output(format!("{k}={v}"));
    ///         Ok(())
    ///     })
    ///     .collect();
    /// env.execute("doc").unwrap();
    /// let mut got = out.take();
    /// got.sort();
    /// assert_eq!(got, vec!["a=1", "a=3", "b=2"]);
    /// ```
    pub fn process<F, O>(self, f: F) -> DataStream<GateHead<(K, T)>, KeyedProcess<F, K, T, O>>
    where
        F: KeyedProcessFunction<K, T, O>,
        O: 'static,
    {
        let gate = hash_exchange(self.stream);
        DataStream::new(gate.env, gate.head, KeyedProcess::new(f))
    }
}

impl<H, P, K, T> FinalKeyedStream<H, P, K, T>
where
    H: Head,
    P: Pipe<H::Item, Out = (K, T)>,
    K: Key,
    T: Send + 'static,
{
    /// Reduces each key's records with `f(accumulated, next)`; emits each key's value when the
    /// input ends. `f` should be associative and commutative: records of one key arrive from
    /// several workers in no fixed order.
    ///
    /// ```
    /// let env = sluice::Env::new();
    /// let out = env
    ///     .from_iter(vec![("a".to_owned(), 1), ("b".to_owned(), 2), ("a".to_owned(), 3)])
    ///     .key_by(|(k, _): &(String, i32)| k.clone())
    ///     .emit_final()
    ///     .reduce(|(k, x), (_, y)| (k, x + y))
    ///     .collect();
    /// env.execute("doc").unwrap();
    /// let mut got = out.take();
    /// got.sort();
    /// assert_eq!(got, vec![("a".to_owned(), 4), ("b".to_owned(), 2)]);
    /// ```
    pub fn reduce<F>(self, f: F) -> DataStream<GateHead<(K, T)>, Reduce<F, K, T>>
    where
        T: Clone + StateCodec,
        F: FnMut(T, T) -> T + Clone + Send + Sync + 'static,
    {
        let gate = hash_exchange_stored(self.stream.then(Combine::new(f.clone())));
        DataStream::new(gate.env, gate.head, Reduce::new(f, Emit::Final))
    }

    /// Sums the numeric field that `field` points to; emits each key's sum when the input
    /// ends.
    #[allow(clippy::type_complexity)]
    pub fn sum<N, F>(
        self,
        field: F,
    ) -> DataStream<GateHead<(K, T)>, Reduce<impl FnMut(T, T) -> T + Clone + Send + Sync, K, T>>
    where
        T: Clone + StateCodec,
        N: AddAssign + Copy + 'static,
        F: Fn(&mut T) -> &mut N + Clone + Send + Sync + 'static,
    {
        self.reduce(sum_fn(field))
    }

    /// Aggregates each key's records with an [`AggregateFunction`]; emits each key's result
    /// when the input ends. Accumulators are built on the sending workers and merged on the
    /// owning one.
    pub fn aggregate<A>(self, agg: A) -> DataStream<GateHead<(K, A::Acc)>, MergeAgg<A, K, T>>
    where
        A: AggregateFunction<T>,
        A::Acc: StateCodec,
    {
        let gate = hash_exchange_stored(self.stream.then(CombineAgg::new(agg.clone())));
        DataStream::new(gate.env, gate.head, MergeAgg::new(agg))
    }
}

/// A stream of `(key, value)` pairs keyed by the key, from [`DataStream::into_keyed`]: its
/// aggregations emit `(key, value)` pairs (after every record; with
/// [`emit_final`](Self::emit_final), once per key when the input ends).
#[must_use = "a keyed stream does nothing until it is aggregated"]
pub struct PairKeyedStream<H: Head, P: Pipe<H::Item, Out = (K, V)>, K, V> {
    stream: DataStream<H, P>,
    _p: std::marker::PhantomData<fn() -> (K, V)>,
}

/// A [`PairKeyedStream`] whose aggregations emit one pair per key when the input ends, after
/// combining values per key before the exchange.
#[must_use = "a keyed stream does nothing until it is aggregated"]
pub struct FinalPairKeyedStream<H: Head, P: Pipe<H::Item, Out = (K, V)>, K, V> {
    stream: DataStream<H, P>,
    _p: std::marker::PhantomData<fn() -> (K, V)>,
}

fn add_fn<V: AddAssign>(mut acc: V, next: V) -> V {
    acc += next;
    acc
}

impl<H, P, K, V> PairKeyedStream<H, P, K, V>
where
    H: Head,
    P: Pipe<H::Item, Out = (K, V)>,
    K: Key,
    V: Clone + Send + 'static,
{
    /// Cuts each key's values into windows of `assigner`; apply a window function to the
    /// result.
    pub fn window(self, assigner: WindowAssigner) -> WindowedStream<H, P, K, V, DefaultTrigger> {
        WindowedStream::new(self.stream, assigner)
    }

    /// Switches to final values: one pair per key, when the input ends.
    pub fn emit_final(self) -> FinalPairKeyedStream<H, P, K, V> {
        FinalPairKeyedStream {
            stream: self.stream,
            _p: std::marker::PhantomData,
        }
    }

    /// Reduces each key's values with `f(accumulated, next)`, emitting `(key, accumulated)`
    /// after every record.
    pub fn reduce<F>(self, f: F) -> DataStream<GateHead<(K, V)>, ReducePairs<F, K, V>>
    where
        V: StateCodec,
        F: FnMut(V, V) -> V + Clone + Send + Sync + 'static,
    {
        let gate = hash_exchange_stored(self.stream);
        DataStream::new(gate.env, gate.head, ReducePairs::new(f, Emit::Running))
    }

    /// Sums each key's values, emitting `(key, running sum)` after every record.
    pub fn sum(self) -> DataStream<GateHead<(K, V)>, ReducePairs<fn(V, V) -> V, K, V>>
    where
        V: AddAssign + StateCodec,
    {
        self.reduce(add_fn::<V> as fn(V, V) -> V)
    }
}

impl<H, P, K, V> FinalPairKeyedStream<H, P, K, V>
where
    H: Head,
    P: Pipe<H::Item, Out = (K, V)>,
    K: Key,
    V: Clone + Send + 'static,
{
    /// Reduces each key's values with `f(accumulated, next)`; emits `(key, value)` per key
    /// when the input ends. `f` should be associative and commutative.
    pub fn reduce<F>(self, f: F) -> DataStream<GateHead<(K, V)>, ReducePairs<F, K, V>>
    where
        V: StateCodec,
        F: FnMut(V, V) -> V + Clone + Send + Sync + 'static,
    {
        let gate = hash_exchange_stored(self.stream.then(Combine::new(f.clone())));
        DataStream::new(gate.env, gate.head, ReducePairs::new(f, Emit::Final))
    }

    /// Sums each key's values; emits `(key, sum)` per key when the input ends.
    pub fn sum(self) -> DataStream<GateHead<(K, V)>, ReducePairs<fn(V, V) -> V, K, V>>
    where
        V: AddAssign + StateCodec,
    {
        self.reduce(add_fn::<V> as fn(V, V) -> V)
    }
}
