//! Operator chains: the operators between two exchanges, fused into one monomorphised call
//! path.
//!
//! A chain is built from [`Pipe`]s. Each pipe wraps the next operator's [`Collector`] in its
//! own, so `map(f).filter(g)` becomes `Map<F, Filter<G, Tail>>`: a record pushed into the head
//! runs `f`, then `g`, then reaches the tail, all through static calls the compiler inlines. The
//! only dynamic dispatch is once per *batch*, where a stage's driver hands a batch to its chain.
//!
//! Every stream element has a hook (record with its timestamp, watermark, watermark status,
//! processing time, barrier, flush, end of input), as in Arroyo's operator trait: stateless
//! operators forward the hooks they do not use; stateful ones (keyed reduce, windows) act on
//! them. A stateless operator keeps its input record's timestamp, as Flink's do.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::context::OperatorContext;
use crate::element::{
    BATCH_RECORDS_MAX, Batch, CheckpointBarrier, StreamElement, Timestamp, Watermark,
    WatermarkStatus,
};
use crate::error::{Error, Result};

/// The receiving end of an operator: where records and the other stream elements go.
pub trait Collector<T> {
    /// One record and its event time ([`NO_TIMESTAMP`](crate::element::NO_TIMESTAMP) when it
    /// has none).
    fn collect(&mut self, record: T, ts: Timestamp) -> Result<()>;
    /// The event-time watermark advanced.
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()>;
    /// The input became idle or active again.
    fn on_status(&mut self, status: WatermarkStatus) -> Result<()>;
    /// Processing time reached a deadline some operator asked for
    /// ([`OperatorContext::request_processing_time`]).
    fn on_processing_time(&mut self, now_ms: i64) -> Result<()>;
    /// A checkpoint barrier passes (snapshot state here).
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()>;
    /// The input is momentarily drained: hand partial batches on, for latency.
    fn flush(&mut self) -> Result<()>;
    /// The input ended: emit final results, then pass the end on.
    fn on_end(&mut self) -> Result<()>;
    /// A hint that `records` (with `timestamps`, empty when the records have none) are the
    /// next ones collected, in this order. An operator that looks every record up in a large
    /// table touches their entries here, one after another, so that the cache misses of a
    /// run of records overlap instead of stalling each record in turn. Changes no state and
    /// emits nothing. Default: nothing.
    #[inline]
    fn prefetch(&mut self, _records: &[T], _timestamps: &[Timestamp]) {}
    /// Whether [`prefetch`](Collector::prefetch) does anything. `Batch::drain_into` announces
    /// runs of records only to a collector that says so and gives any other its plain
    /// per-record loop: once inlined, the answer is a constant, and the loop the compiler
    /// sees is the one it inlines best (splitting every chain's loop into runs made a source
    /// chain ~7% more instructions per record, callgrind, through lost inlining).
    #[inline]
    fn prefetches(&self) -> bool {
        false
    }
}

/// Forwards the listed non-record hooks of a collector to its `next` field (all of them when
/// none is listed).
#[macro_export]
#[doc(hidden)]
macro_rules! forward_hooks {
    () => {
        $crate::forward_hooks!(on_watermark, on_status, on_processing_time, on_barrier, flush,
            on_end);
    };
    ($($hook:ident),+ $(,)?) => {
        $($crate::forward_hooks!(@one $hook);)+
    };
    (@one on_watermark) => {
        #[inline]
        fn on_watermark(&mut self, watermark: $crate::Watermark) -> $crate::Result<()> {
            self.next.on_watermark(watermark)
        }
    };
    (@one on_status) => {
        #[inline]
        fn on_status(
            &mut self,
            status: $crate::element::WatermarkStatus,
        ) -> $crate::Result<()> {
            self.next.on_status(status)
        }
    };
    (@one on_processing_time) => {
        #[inline]
        fn on_processing_time(&mut self, now_ms: i64) -> $crate::Result<()> {
            self.next.on_processing_time(now_ms)
        }
    };
    (@one on_barrier) => {
        #[inline]
        fn on_barrier(
            &mut self,
            barrier: $crate::element::CheckpointBarrier,
        ) -> $crate::Result<()> {
            self.next.on_barrier(barrier)
        }
    };
    (@one flush) => {
        #[inline]
        fn flush(&mut self) -> $crate::Result<()> {
            self.next.flush()
        }
    };
    (@one on_end) => {
        #[inline]
        fn on_end(&mut self) -> $crate::Result<()> {
            self.next.on_end()
        }
    };
}

/// A step of a chain, before it is instantiated: a value cloned onto every worker, which then
/// [`attach`](Pipe::attach)es it in front of the rest of that worker's chain.
pub trait Pipe<In>: Clone + Send + Sync + 'static {
    /// The records this step emits.
    type Out;
    /// The instantiated operator, in front of `C`.
    type Op<C: Collector<Self::Out>>: Collector<In>;
    /// Instantiates the step in front of `next`, in the stage instance described by `ctx`.
    fn attach<C: Collector<Self::Out>>(self, next: C, ctx: &OperatorContext) -> Self::Op<C>;
    /// Appends the names of the operators in this step, for plans and error messages.
    fn names(&self, out: &mut Vec<String>);
    /// Whether an operator of this step keeps keyed state (the stage then opens a state store
    /// before attaching its chain).
    fn uses_state(&self) -> bool {
        false
    }
}

/// The empty chain.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl<T> Pipe<T> for Identity {
    type Out = T;
    type Op<C: Collector<T>> = C;
    fn attach<C: Collector<T>>(self, next: C, _ctx: &OperatorContext) -> C {
        next
    }
    fn names(&self, _out: &mut Vec<String>) {}
}

/// `A` followed by `B`.
#[derive(Clone, Debug)]
pub struct Then<A, B>(pub A, pub B);

impl<In, A: Pipe<In>, B: Pipe<A::Out>> Pipe<In> for Then<A, B> {
    type Out = B::Out;
    type Op<C: Collector<B::Out>> = A::Op<B::Op<C>>;
    fn attach<C: Collector<B::Out>>(self, next: C, ctx: &OperatorContext) -> Self::Op<C> {
        self.0.attach(self.1.attach(next, ctx), ctx)
    }
    fn names(&self, out: &mut Vec<String>) {
        self.0.names(out);
        self.1.names(out);
    }
    fn uses_state(&self) -> bool {
        self.0.uses_state() || self.1.uses_state()
    }
}

/// Declares a stateless one-function operator: its pipe struct and its collector.
macro_rules! stateless_op {
    (
        $(#[$doc:meta])* $pipe:ident, $op:ident, $name:literal,
        <$in:ident, $out:ident> where F: $bound:path,
        |$self_:ident, $rec:ident, $ts:ident| $body:block
    ) => {
        $(#[$doc])*
        pub struct $pipe<F, $out> {
            f: F,
            _out: PhantomData<fn() -> $out>,
        }
        impl<F: Clone, $out> Clone for $pipe<F, $out> {
            fn clone(&self) -> Self {
                $pipe { f: self.f.clone(), _out: PhantomData }
            }
        }
        impl<F, $out> $pipe<F, $out> {
            /// Wraps the user function.
            pub fn new(f: F) -> Self {
                $pipe { f, _out: PhantomData }
            }
        }
        /// The instantiated operator.
        pub struct $op<F, C> {
            f: F,
            next: C,
        }
        impl<$in, $out: 'static, F, C> Collector<$in> for $op<F, C>
        where
            F: $bound,
            C: Collector<$out>,
        {
            #[inline]
            fn collect(&mut $self_, $rec: $in, $ts: Timestamp) -> Result<()> $body
            forward_hooks!();
        }
        impl<$in, $out: 'static, F> Pipe<$in> for $pipe<F, $out>
        where
            F: $bound + Clone + Send + Sync + 'static,
        {
            type Out = $out;
            type Op<C: Collector<$out>> = $op<F, C>;
            fn attach<C: Collector<$out>>(self, next: C, _ctx: &OperatorContext) -> $op<F, C> {
                $op { f: self.f, next }
            }
            fn names(&self, out: &mut Vec<String>) {
                out.push($name.to_owned());
            }
        }
    };
}

stateless_op!(
    /// `map`: one record out per record in.
    Map, MapOp, "map", <T, U> where F: FnMut(T) -> U,
    |self, rec, ts| { self.next.collect((self.f)(rec), ts) }
);

stateless_op!(
    /// `map_with_timestamp`: `map` that also sees the record's event time.
    MapWithTimestamp, MapWithTimestampOp, "map", <T, U> where F: FnMut(T, Timestamp) -> U,
    |self, rec, ts| { self.next.collect((self.f)(rec, ts), ts) }
);

stateless_op!(
    /// `flat_map`: any number of records out per record in, from an iterator.
    FlatMap, FlatMapOp, "flat_map", <T, I> where F: FnMut(T) -> I,
    |self, rec, ts| { self.next.collect((self.f)(rec), ts) }
);

/// `filter`: keeps the records the predicate accepts.
pub struct Filter<F, T> {
    f: F,
    _in: PhantomData<fn(T)>,
}

impl<F: Clone, T> Clone for Filter<F, T> {
    fn clone(&self) -> Self {
        Filter {
            f: self.f.clone(),
            _in: PhantomData,
        }
    }
}

/// `filter`'s pipe.
pub fn filter<T, F: FnMut(&T) -> bool>(f: F) -> Filter<F, T> {
    Filter {
        f,
        _in: PhantomData,
    }
}

/// The instantiated [`Filter`].
pub struct FilterOp<F, C> {
    f: F,
    next: C,
}

impl<T, F: FnMut(&T) -> bool, C: Collector<T>> Collector<T> for FilterOp<F, C> {
    #[inline]
    fn collect(&mut self, rec: T, ts: Timestamp) -> Result<()> {
        if (self.f)(&rec) {
            self.next.collect(rec, ts)
        } else {
            Ok(())
        }
    }
    forward_hooks!();
}

impl<T: 'static, F> Pipe<T> for Filter<F, T>
where
    F: FnMut(&T) -> bool + Clone + Send + Sync + 'static,
{
    type Out = T;
    type Op<C: Collector<T>> = FilterOp<F, C>;
    fn attach<C: Collector<T>>(self, next: C, _ctx: &OperatorContext) -> FilterOp<F, C> {
        FilterOp { f: self.f, next }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push("filter".to_owned());
    }
}

/// `flat_map`'s inner step: flattens each iterator into the next collector.
#[derive(Debug)]
pub struct Flatten<I>(PhantomData<fn() -> I>);

impl<I> Clone for Flatten<I> {
    fn clone(&self) -> Self {
        Flatten(PhantomData)
    }
}

impl<I> Default for Flatten<I> {
    fn default() -> Self {
        Flatten(PhantomData)
    }
}

impl<I> Flatten<I> {
    /// The step.
    pub fn new() -> Self {
        Flatten(PhantomData)
    }
}

/// The instantiated [`Flatten`].
pub struct FlattenOp<C> {
    next: C,
}

impl<I: IntoIterator, C: Collector<I::Item>> Collector<I> for FlattenOp<C> {
    #[inline]
    fn collect(&mut self, iter: I, ts: Timestamp) -> Result<()> {
        for item in iter {
            self.next.collect(item, ts)?;
        }
        Ok(())
    }
    forward_hooks!();
}

impl<I: IntoIterator + 'static> Pipe<I> for Flatten<I> {
    type Out = I::Item;
    type Op<C: Collector<I::Item>> = FlattenOp<C>;
    fn attach<C: Collector<I::Item>>(self, next: C, _ctx: &OperatorContext) -> FlattenOp<C> {
        FlattenOp { next }
    }
    fn names(&self, _out: &mut Vec<String>) {}
}

/// `flat_map_into`: the function appends its outputs to a reusable buffer, so producing many
/// records from one costs no allocation once the buffer has grown.
pub struct FlatMapInto<F, U> {
    f: F,
    _out: PhantomData<fn() -> U>,
}

impl<F: Clone, U> Clone for FlatMapInto<F, U> {
    fn clone(&self) -> Self {
        FlatMapInto {
            f: self.f.clone(),
            _out: PhantomData,
        }
    }
}

impl<F, U> FlatMapInto<F, U> {
    /// Wraps the user function.
    pub fn new(f: F) -> Self {
        FlatMapInto {
            f,
            _out: PhantomData,
        }
    }
}

/// The instantiated [`FlatMapInto`].
pub struct FlatMapIntoOp<F, U, C> {
    f: F,
    buf: Vec<U>,
    next: C,
}

impl<T, U, F: FnMut(T, &mut Vec<U>), C: Collector<U>> Collector<T> for FlatMapIntoOp<F, U, C> {
    #[inline]
    fn collect(&mut self, rec: T, ts: Timestamp) -> Result<()> {
        (self.f)(rec, &mut self.buf);
        for item in self.buf.drain(..) {
            self.next.collect(item, ts)?;
        }
        Ok(())
    }
    forward_hooks!();
}

impl<T, U: 'static, F> Pipe<T> for FlatMapInto<F, U>
where
    F: FnMut(T, &mut Vec<U>) + Clone + Send + Sync + 'static,
{
    type Out = U;
    type Op<C: Collector<U>> = FlatMapIntoOp<F, U, C>;
    fn attach<C: Collector<U>>(self, next: C, _ctx: &OperatorContext) -> Self::Op<C> {
        FlatMapIntoOp {
            f: self.f,
            buf: Vec::new(),
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push("flat_map".to_owned());
    }
}

/// `try_map`: like `map`, but the function may fail, which fails the job with the error and
/// the operator's name.
pub struct TryMap<F, U> {
    f: F,
    name: &'static str,
    _out: PhantomData<fn() -> U>,
}

impl<F: Clone, U> Clone for TryMap<F, U> {
    fn clone(&self) -> Self {
        TryMap {
            f: self.f.clone(),
            name: self.name,
            _out: PhantomData,
        }
    }
}

impl<F, U> TryMap<F, U> {
    /// Wraps the user function under the operator name `name`.
    pub fn new(name: &'static str, f: F) -> Self {
        TryMap {
            f,
            name,
            _out: PhantomData,
        }
    }
}

/// The instantiated [`TryMap`].
pub struct TryMapOp<F, C> {
    f: F,
    name: &'static str,
    next: C,
}

impl<T, U, E, F, C> Collector<T> for TryMapOp<F, C>
where
    F: FnMut(T) -> std::result::Result<U, E>,
    E: std::fmt::Display,
    C: Collector<U>,
{
    #[inline]
    fn collect(&mut self, rec: T, ts: Timestamp) -> Result<()> {
        match (self.f)(rec) {
            Ok(out) => self.next.collect(out, ts),
            Err(e) => Err(Error::operator(self.name, e)),
        }
    }
    forward_hooks!();
}

impl<T, U: 'static, E: std::fmt::Display, F> Pipe<T> for TryMap<F, U>
where
    F: FnMut(T) -> std::result::Result<U, E> + Clone + Send + Sync + 'static,
{
    type Out = U;
    type Op<C: Collector<U>> = TryMapOp<F, C>;
    fn attach<C: Collector<U>>(self, next: C, _ctx: &OperatorContext) -> TryMapOp<F, C> {
        TryMapOp {
            f: self.f,
            name: self.name,
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push(self.name.to_owned());
    }
}

/// Where a stage's chain puts what must leave the stage: full batches and control elements,
/// each for one target worker or for all. The stage's driver drains it after every input batch,
/// awaiting channel capacity (backpressure) or sink I/O.
pub struct Outbox<T> {
    queue: VecDeque<(Target, StreamElement<T>)>,
}

/// Who an outbox entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// One target worker.
    One(usize),
    /// Every target.
    All,
}

/// A shared handle on an outbox: the chain's tail pushes, the driver pops.
pub type OutboxRef<T> = Rc<RefCell<Outbox<T>>>;

impl<T> Outbox<T> {
    /// A new, empty outbox.
    pub fn new_ref() -> OutboxRef<T> {
        Rc::new(RefCell::new(Outbox {
            queue: VecDeque::new(),
        }))
    }
    /// Queues an element.
    pub fn push(&mut self, target: Target, element: StreamElement<T>) {
        if let StreamElement::Records(batch) = &element {
            assert!(batch.len() <= BATCH_RECORDS_MAX, "batch={}", batch.len());
            debug_assert!(
                batch.timestamps().is_empty() || batch.timestamps().len() == batch.len(),
                "timestamps={} records={}",
                batch.timestamps().len(),
                batch.len()
            );
        }
        self.queue.push_back((target, element));
    }
    /// Takes the oldest entry.
    pub fn pop(&mut self) -> Option<(Target, StreamElement<T>)> {
        self.queue.pop_front()
    }
    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// A new batch buffer with room for a full batch: one allocation per batch, never per record.
#[inline]
pub fn new_batch<T>() -> Batch<T> {
    Batch::with_capacity()
}

/// The tail of a chain that ends in a sink: batches records for the sink's writer.
pub struct SinkTail<T> {
    buf: Batch<T>,
    outbox: OutboxRef<T>,
}

impl<T> SinkTail<T> {
    /// A tail writing into `outbox`.
    pub fn new(outbox: OutboxRef<T>) -> Self {
        SinkTail {
            buf: new_batch(),
            outbox,
        }
    }
    fn hand_on(&mut self) {
        if !self.buf.is_empty() {
            let batch = std::mem::replace(&mut self.buf, new_batch());
            self.outbox
                .borrow_mut()
                .push(Target::One(0), StreamElement::Records(batch));
        }
    }
}

impl<T> Collector<T> for SinkTail<T> {
    #[inline]
    fn collect(&mut self, record: T, ts: Timestamp) -> Result<()> {
        self.buf.push(record, ts);
        if self.buf.len() == BATCH_RECORDS_MAX {
            self.hand_on();
        }
        Ok(())
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        self.hand_on();
        self.outbox
            .borrow_mut()
            .push(Target::All, StreamElement::Watermark(watermark));
        Ok(())
    }
    fn on_status(&mut self, status: WatermarkStatus) -> Result<()> {
        self.hand_on();
        self.outbox
            .borrow_mut()
            .push(Target::All, StreamElement::Status(status));
        Ok(())
    }
    fn on_processing_time(&mut self, _now_ms: i64) -> Result<()> {
        Ok(())
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.hand_on();
        self.outbox
            .borrow_mut()
            .push(Target::All, StreamElement::Barrier(barrier));
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        self.hand_on();
        Ok(())
    }
    fn on_end(&mut self) -> Result<()> {
        self.hand_on();
        self.outbox
            .borrow_mut()
            .push(Target::All, StreamElement::EndOfInput);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Harness;

    fn run<P: Pipe<u32>>(pipe: P, input: Vec<u32>) -> Vec<P::Out> {
        let mut h = Harness::new(pipe);
        for r in input {
            h.record(r, 7).unwrap();
        }
        h.end().unwrap();
        h.take_records()
    }

    #[test]
    fn chain_map_filter_flat_map() {
        let pipe = Then(
            Map::new(|x: u32| x * 10),
            Then(
                filter(|x: &u32| *x != 20),
                Then(FlatMap::new(|x: u32| [x, x + 1]), Flatten::new()),
            ),
        );
        assert_eq!(run(pipe, vec![1, 2, 3]), vec![10, 11, 30, 31]);
    }

    #[test]
    fn stateless_operators_keep_the_timestamp() {
        let pipe = Then(Map::new(|x: u32| x + 1), FlatMap::new(|x: u32| [x, x]));
        let mut h = Harness::new(Then(pipe, Flatten::new()));
        h.record(1, 100).unwrap();
        h.record(5, -3).unwrap();
        assert_eq!(
            h.take_timestamped(),
            vec![(2, 100), (2, 100), (6, -3), (6, -3)]
        );
    }

    #[test]
    fn flat_map_into_reuses_its_buffer() {
        let pipe = FlatMapInto::new(|x: u32, out: &mut Vec<u32>| out.extend(0..x));
        assert_eq!(run(pipe, vec![2, 0, 3]), vec![0, 1, 0, 1, 2]);
    }

    #[test]
    fn try_map_names_the_operator() {
        let pipe = TryMap::new("parse", |x: u32| if x < 3 { Ok(x) } else { Err("too big") });
        let mut h = Harness::new(pipe);
        h.record(1, 0).unwrap();
        let err = h.record(7, 0).unwrap_err();
        assert_eq!(err.to_string(), "operator 'parse' failed: too big");
    }

    #[test]
    fn sink_tail_batches_are_bounded() {
        let n = BATCH_RECORDS_MAX as u32 * 2 + 5;
        let mut h = Harness::new(Identity);
        for r in 0..n {
            h.record(r, crate::element::NO_TIMESTAMP).unwrap();
        }
        h.end().unwrap();
        let sizes: Vec<_> = h
            .take_elements()
            .into_iter()
            .map(|e| match e {
                StreamElement::Records(b) => b.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, vec![BATCH_RECORDS_MAX, BATCH_RECORDS_MAX, 5, 0, 0]);
    }
}
