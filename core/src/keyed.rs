//! Keyed aggregation operators: `reduce` and `aggregate` on a keyed stream, and the combiners
//! that pre-aggregate before the exchange when only final values are wanted.
//!
//! Records arrive as `(key, value)` pairs: the key is extracted once, before the hash exchange,
//! and travels with the value. The aggregations keep their values in a table of the stage's
//! state store (`crate::state`), so they are checkpointed and may exceed memory; the combiners
//! hold values only until the next barrier, watermark maximum or end of input, when they send
//! them all on, so they keep no state across a checkpoint.
//!
//! Two emission modes ([`Emit`]): `Running` emits the updated value for every record, as
//! Flink's keyed `reduce` does; `Final` emits one value per key when the input ends. Under
//! `Final` the sending worker combines values per key first ([`Combine`], [`CombineAgg`]), so
//! the exchange carries one record per distinct key per combine round instead of one per
//! input record. That is sound because the order in which a key's records from different
//! upstream workers meet is already arbitrary: a final result that depends on it would be
//! nondeterministic with or without the combiner.

use std::marker::PhantomData;

use crate::FastMap;
use crate::chain::{Collector, Pipe};
use crate::context::OperatorContext;
use crate::element::{CheckpointBarrier, NO_TIMESTAMP, Timestamp, Watermark};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::state::{OpTable, StateCodec};

/// Distinct keys a combiner holds before it sends them all on: bounds its memory.
pub const COMBINE_KEYS_MAX: usize = 1 << 16;

/// When a keyed aggregation emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// The updated value after every record.
    Running,
    /// One value per key when the input ends.
    Final,
}

/// Flink's `AggregateFunction`: an accumulator per key, records added to it, accumulators
/// merged, a result read from it.
pub trait AggregateFunction<T>: Clone + Send + Sync + 'static {
    /// The accumulator.
    type Acc: Send + 'static;
    /// The result.
    type Out: 'static;
    /// A fresh accumulator.
    fn create_accumulator(&self) -> Self::Acc;
    /// Adds a record.
    fn add(&self, acc: &mut Self::Acc, value: T);
    /// Merges another accumulator of the same key into `acc`.
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    /// The result of an accumulator.
    fn get_result(&self, acc: &Self::Acc) -> Self::Out;
}

/// Folds `value` into the slot (`None` only transiently, while the function runs).
#[inline]
fn fold_into<T, F: FnMut(T, T) -> T>(f: &mut F, slot: &mut Option<T>, value: T) {
    *slot = Some(match slot.take() {
        Some(current) => f(current, value),
        None => value,
    });
}

/// The control hooks of an aggregation that may hold final values: `$emit` (a block using
/// `$this` for the operator) emits them when the watermark reaches its maximum, *before* the
/// watermark is passed on, so that no record follows `Watermark::MAX` on a channel, and again
/// at the end of input for inputs that carried no watermark (a no-op once emitted).
macro_rules! final_hooks {
    (|$this:ident| $emit:block) => {
        fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
            if watermark == Watermark::MAX {
                let $this = &mut *self;
                $emit?;
            }
            self.next.on_watermark(watermark)
        }
        fn on_end(&mut self) -> Result<()> {
            let $this = &mut *self;
            $emit?;
            self.next.on_end()
        }
        fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
            self.next.on_barrier(barrier)
        }
        crate::forward_hooks!(on_status, on_processing_time, flush);
    };
}

/// Touches the entries of a run of records' keys in a keyed operator's table
/// ([`Collector::prefetch`]).
#[inline]
fn prefetch_keys<K: Key, X, V: StateCodec>(state: &mut OpTable<(), K, V>, records: &[(K, X)]) {
    if records.len() < 2 {
        return;
    }
    if let Ok(table) = state.get() {
        let table = table.lock();
        for (key, _) in records {
            table.prefetch(&(), key);
        }
    }
}

/// [`Collector::prefetch`] for a keyed operator whose records are `$record`s (a key first) and
/// whose table is `self.state`.
macro_rules! prefetch_hooks {
    ($record:ty) => {
        #[inline]
        fn prefetch(&mut self, records: &[$record], _timestamps: &[Timestamp]) {
            prefetch_keys(&mut self.state, records);
        }
        fn prefetches(&self) -> bool {
            true
        }
    };
}

/// The control hooks of a combiner: it holds values across flushes (the point of combining)
/// and sends them all on before a checkpoint barrier, before the final watermark and at the
/// end of input.
macro_rules! combiner_hooks {
    () => {
        fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
            if watermark == Watermark::MAX {
                self.send_all()?;
            }
            self.next.on_watermark(watermark)
        }
        crate::forward_hooks!(on_status, on_processing_time, flush);
        fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
            self.send_all()?;
            self.next.on_barrier(barrier)
        }
        fn on_end(&mut self) -> Result<()> {
            self.send_all()?;
            self.next.on_end()
        }
    };
}

macro_rules! clone_pipe {
    ($name:ident < $f:ident, $($p:ident),* >) => {
        impl<$f: Clone, $($p),*> Clone for $name<$f, $($p),*> {
            fn clone(&self) -> Self {
                $name { f: self.f.clone(), emit: self.emit, _p: PhantomData }
            }
        }
    };
}

/// Keyed `reduce`: `(key, value)` in, the key's reduced value out.
pub struct Reduce<F, K, T> {
    f: F,
    emit: Emit,
    _p: PhantomData<fn(K, T)>,
}
clone_pipe!(Reduce<F, K, T>);

impl<F, K, T> Reduce<F, K, T> {
    /// Reduces with `f`, emitting per `emit`.
    pub fn new(f: F, emit: Emit) -> Self {
        Reduce {
            f,
            emit,
            _p: PhantomData,
        }
    }
}

/// The instantiated [`Reduce`].
pub struct ReduceOp<F, K, T, C> {
    f: F,
    emit: Emit,
    state: OpTable<(), K, Option<T>>,
    next: C,
}

/// Emits and drops every value of `state` (the final values).
fn emit_all<K, V, O, C>(
    state: &mut OpTable<(), K, V>,
    next: &mut C,
    mut out: impl FnMut(K, V) -> Option<O>,
) -> Result<()>
where
    K: Key,
    V: StateCodec,
    C: Collector<O>,
{
    let values = state.get()?.lock().take_namespace(&())?;
    for (key, value) in values {
        if let Some(o) = out(key, value) {
            next.collect(o, NO_TIMESTAMP)?;
        }
    }
    Ok(())
}

impl<F, K, T, C> Collector<(K, T)> for ReduceOp<F, K, T, C>
where
    F: FnMut(T, T) -> T,
    K: Key,
    T: Clone + StateCodec,
    C: Collector<T>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, T), ts: Timestamp) -> Result<()> {
        let mut table = self.state.get()?.lock();
        let slot = table.get_or_insert_with(&(), key, || None)?;
        fold_into(&mut self.f, slot, value);
        match (self.emit, slot.as_ref()) {
            (Emit::Running, Some(v)) => {
                let v = v.clone();
                drop(table);
                self.next.collect(v, ts)
            }
            _ => Ok(()),
        }
    }
    prefetch_hooks!((K, T));
    final_hooks!(|this| {
        if this.emit == Emit::Final {
            emit_all(&mut this.state, &mut this.next, |_, v| v)?;
        }
        Ok::<(), Error>(())
    });
}

impl<F, K, T> Pipe<(K, T)> for Reduce<F, K, T>
where
    F: FnMut(T, T) -> T + Clone + Send + Sync + 'static,
    K: Key,
    T: Clone + StateCodec,
{
    type Out = T;
    type Op<C: Collector<T>> = ReduceOp<F, K, T, C>;
    fn attach<C: Collector<T>>(self, next: C, ctx: &OperatorContext) -> Self::Op<C> {
        ReduceOp {
            f: self.f,
            emit: self.emit,
            state: OpTable::register(ctx, "reduce"),
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push(format!("reduce({})", emit_name(self.emit)));
    }
    fn uses_state(&self) -> bool {
        true
    }
}

fn emit_name(emit: Emit) -> &'static str {
    match emit {
        Emit::Running => "running",
        Emit::Final => "final",
    }
}

/// Pre-aggregation before the exchange for a final `reduce`: `(key, value)` in, `(key,
/// partially reduced value)` out, at most once per key per [`COMBINE_KEYS_MAX`] distinct keys.
pub struct Combine<F, K, T> {
    f: F,
    emit: Emit,
    _p: PhantomData<fn(K, T)>,
}
clone_pipe!(Combine<F, K, T>);

impl<F, K, T> Combine<F, K, T> {
    /// Combines with `f`.
    pub fn new(f: F) -> Self {
        Combine {
            f,
            emit: Emit::Final,
            _p: PhantomData,
        }
    }
}

/// The instantiated [`Combine`].
pub struct CombineOp<F, K, T, C> {
    f: F,
    state: FastMap<K, Option<T>>,
    next: C,
}

impl<F, K: Key, T, C: Collector<(K, T)>> CombineOp<F, K, T, C> {
    fn send_all(&mut self) -> Result<()> {
        for (key, value) in self.state.drain() {
            if let Some(v) = value {
                self.next.collect((key, v), NO_TIMESTAMP)?;
            }
        }
        Ok(())
    }
}

impl<F, K, T, C> Collector<(K, T)> for CombineOp<F, K, T, C>
where
    F: FnMut(T, T) -> T,
    K: Key,
    C: Collector<(K, T)>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, T), _ts: Timestamp) -> Result<()> {
        let slot = self.state.entry(key).or_insert(None);
        fold_into(&mut self.f, slot, value);
        if self.state.len() >= COMBINE_KEYS_MAX {
            self.send_all()
        } else {
            Ok(())
        }
    }
    combiner_hooks!();
}

impl<F, K, T> Pipe<(K, T)> for Combine<F, K, T>
where
    F: FnMut(T, T) -> T + Clone + Send + Sync + 'static,
    K: Key,
    T: 'static,
{
    type Out = (K, T);
    type Op<C: Collector<(K, T)>> = CombineOp<F, K, T, C>;
    fn attach<C: Collector<(K, T)>>(self, next: C, _ctx: &OperatorContext) -> Self::Op<C> {
        CombineOp {
            f: self.f,
            state: FastMap::default(),
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push("combine".to_owned());
    }
}

/// Keyed `aggregate`: `(key, value)` in, `get_result` of the key's accumulator out.
pub struct Aggregate<A, K, T> {
    f: A,
    emit: Emit,
    _p: PhantomData<fn(K, T)>,
}
clone_pipe!(Aggregate<A, K, T>);

impl<A, K, T> Aggregate<A, K, T> {
    /// Aggregates with `f`, emitting per `emit`.
    pub fn new(f: A, emit: Emit) -> Self {
        Aggregate {
            f,
            emit,
            _p: PhantomData,
        }
    }
}

/// The instantiated [`Aggregate`].
pub struct AggregateOp<A: AggregateFunction<T>, K, T, C> {
    f: A,
    emit: Emit,
    state: OpTable<(), K, A::Acc>,
    next: C,
}

impl<A, K, T, C> Collector<(K, T)> for AggregateOp<A, K, T, C>
where
    A: AggregateFunction<T>,
    A::Acc: StateCodec,
    K: Key,
    C: Collector<A::Out>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, T), ts: Timestamp) -> Result<()> {
        let f = &self.f;
        let mut table = self.state.get()?.lock();
        let acc = table.get_or_insert_with(&(), key, || f.create_accumulator())?;
        f.add(acc, value);
        if self.emit == Emit::Running {
            let out = f.get_result(acc);
            drop(table);
            self.next.collect(out, ts)
        } else {
            Ok(())
        }
    }
    prefetch_hooks!((K, T));
    final_hooks!(|this| {
        if this.emit == Emit::Final {
            let f = &this.f;
            emit_all(&mut this.state, &mut this.next, |_, acc| {
                Some(f.get_result(&acc))
            })?;
        }
        Ok::<(), Error>(())
    });
}

impl<A, K, T> Pipe<(K, T)> for Aggregate<A, K, T>
where
    A: AggregateFunction<T>,
    A::Acc: StateCodec,
    K: Key,
    T: 'static,
{
    type Out = A::Out;
    type Op<C: Collector<A::Out>> = AggregateOp<A, K, T, C>;
    fn attach<C: Collector<A::Out>>(self, next: C, ctx: &OperatorContext) -> Self::Op<C> {
        AggregateOp {
            f: self.f,
            emit: self.emit,
            state: OpTable::register(ctx, "aggregate"),
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push(format!("aggregate({})", emit_name(self.emit)));
    }
    fn uses_state(&self) -> bool {
        true
    }
}

/// Pre-aggregation before the exchange for a final `aggregate`: `(key, value)` in, `(key,
/// accumulator)` out.
pub struct CombineAgg<A, K, T> {
    f: A,
    emit: Emit,
    _p: PhantomData<fn(K, T)>,
}
clone_pipe!(CombineAgg<A, K, T>);

impl<A, K, T> CombineAgg<A, K, T> {
    /// Combines with `f`.
    pub fn new(f: A) -> Self {
        CombineAgg {
            f,
            emit: Emit::Final,
            _p: PhantomData,
        }
    }
}

/// The instantiated [`CombineAgg`].
pub struct CombineAggOp<A: AggregateFunction<T>, K, T, C> {
    f: A,
    state: FastMap<K, A::Acc>,
    next: C,
}

impl<A: AggregateFunction<T>, K: Key, T, C: Collector<(K, A::Acc)>> CombineAggOp<A, K, T, C> {
    fn send_all(&mut self) -> Result<()> {
        for pair in self.state.drain() {
            self.next.collect(pair, NO_TIMESTAMP)?;
        }
        Ok(())
    }
}

impl<A, K, T, C> Collector<(K, T)> for CombineAggOp<A, K, T, C>
where
    A: AggregateFunction<T>,
    K: Key,
    C: Collector<(K, A::Acc)>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, T), _ts: Timestamp) -> Result<()> {
        let f = &self.f;
        let acc = self
            .state
            .entry(key)
            .or_insert_with(|| f.create_accumulator());
        f.add(acc, value);
        if self.state.len() >= COMBINE_KEYS_MAX {
            self.send_all()
        } else {
            Ok(())
        }
    }
    combiner_hooks!();
}

impl<A, K, T> Pipe<(K, T)> for CombineAgg<A, K, T>
where
    A: AggregateFunction<T>,
    K: Key,
    T: 'static,
{
    type Out = (K, A::Acc);
    type Op<C: Collector<(K, A::Acc)>> = CombineAggOp<A, K, T, C>;
    fn attach<C: Collector<(K, A::Acc)>>(self, next: C, _ctx: &OperatorContext) -> Self::Op<C> {
        CombineAggOp {
            f: self.f,
            state: FastMap::default(),
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push("combine".to_owned());
    }
}

/// The receiving half of a final `aggregate` after [`CombineAgg`]: merges `(key, accumulator)`
/// pairs and emits each key's result when the input ends.
pub struct MergeAgg<A, K, T> {
    f: A,
    emit: Emit,
    _p: PhantomData<fn(K, T)>,
}
clone_pipe!(MergeAgg<A, K, T>);

impl<A, K, T> MergeAgg<A, K, T> {
    /// Merges with `f`.
    pub fn new(f: A) -> Self {
        MergeAgg {
            f,
            emit: Emit::Final,
            _p: PhantomData,
        }
    }
}

/// The instantiated [`MergeAgg`].
pub struct MergeAggOp<A: AggregateFunction<T>, K, T, C> {
    f: A,
    state: OpTable<(), K, A::Acc>,
    next: C,
}

impl<A, K, T, C> Collector<(K, A::Acc)> for MergeAggOp<A, K, T, C>
where
    A: AggregateFunction<T>,
    A::Acc: StateCodec,
    K: Key,
    C: Collector<A::Out>,
{
    #[inline]
    fn collect(&mut self, (key, other): (K, A::Acc), _ts: Timestamp) -> Result<()> {
        let mut table = self.state.get()?.lock();
        match table.get_mut(&(), &key)? {
            Some(acc) => self.f.merge(acc, other),
            None => table.insert(&(), key, other)?,
        }
        Ok(())
    }
    prefetch_hooks!((K, A::Acc));
    final_hooks!(|this| {
        let f = &this.f;
        emit_all(&mut this.state, &mut this.next, |_, acc| {
            Some(f.get_result(&acc))
        })?;
        Ok::<(), Error>(())
    });
}

impl<A, K, T> Pipe<(K, A::Acc)> for MergeAgg<A, K, T>
where
    A: AggregateFunction<T>,
    A::Acc: StateCodec,
    K: Key,
    T: 'static,
{
    type Out = A::Out;
    type Op<C: Collector<A::Out>> = MergeAggOp<A, K, T, C>;
    fn attach<C: Collector<A::Out>>(self, next: C, ctx: &OperatorContext) -> Self::Op<C> {
        MergeAggOp {
            f: self.f,
            state: OpTable::register(ctx, "aggregate"),
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push("aggregate(final)".to_owned());
    }
    fn uses_state(&self) -> bool {
        true
    }
}

/// Keyed `reduce` over `(key, value)` pairs that keeps the key beside the value: `(key,
/// value)` in, `(key, reduced value)` out. The key is stored once, not also inside the value.
pub struct ReducePairs<F, K, V> {
    f: F,
    emit: Emit,
    _p: PhantomData<fn(K, V)>,
}
clone_pipe!(ReducePairs<F, K, V>);

impl<F, K, V> ReducePairs<F, K, V> {
    /// Reduces values with `f`, emitting per `emit`.
    pub fn new(f: F, emit: Emit) -> Self {
        ReducePairs {
            f,
            emit,
            _p: PhantomData,
        }
    }
}

/// The instantiated [`ReducePairs`].
pub struct ReducePairsOp<F, K, V, C> {
    f: F,
    emit: Emit,
    state: OpTable<(), K, Option<V>>,
    next: C,
}

impl<F, K, V, C> Collector<(K, V)> for ReducePairsOp<F, K, V, C>
where
    F: FnMut(V, V) -> V,
    K: Key,
    V: Clone + StateCodec,
    C: Collector<(K, V)>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, V), ts: Timestamp) -> Result<()> {
        let mut table = self.state.get()?.lock();
        if self.emit == Emit::Final {
            let slot = table.get_or_insert_with(&(), key, || None)?;
            fold_into(&mut self.f, slot, value);
            return Ok(());
        }
        // The key is cloned only when it is new.
        let slot = match table.get_mut(&(), &key)? {
            Some(slot) => slot,
            None => table.get_or_insert_with(&(), key.clone(), || None)?,
        };
        fold_into(&mut self.f, slot, value);
        match slot.clone() {
            Some(v) => {
                drop(table);
                self.next.collect((key, v), ts)
            }
            None => Ok(()),
        }
    }
    prefetch_hooks!((K, V));
    final_hooks!(|this| {
        if this.emit == Emit::Final {
            emit_all(&mut this.state, &mut this.next, |k, v| v.map(|v| (k, v)))?;
        }
        Ok::<(), Error>(())
    });
}

impl<F, K, V> Pipe<(K, V)> for ReducePairs<F, K, V>
where
    F: FnMut(V, V) -> V + Clone + Send + Sync + 'static,
    K: Key,
    V: Clone + StateCodec,
{
    type Out = (K, V);
    type Op<C: Collector<(K, V)>> = ReducePairsOp<F, K, V, C>;
    fn attach<C: Collector<(K, V)>>(self, next: C, ctx: &OperatorContext) -> Self::Op<C> {
        ReducePairsOp {
            f: self.f,
            emit: self.emit,
            state: OpTable::register(ctx, "reduce"),
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push(format!("reduce({})", emit_name(self.emit)));
    }
    fn uses_state(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamElement;
    use crate::testkit::Harness;

    #[test]
    fn final_values_precede_the_final_watermark() {
        let pipe = crate::chain::Then(
            Combine::new(|a: u64, b: u64| a + b),
            ReducePairs::new(|a: u64, b: u64| a + b, Emit::Final),
        );
        let mut h = Harness::new(pipe);
        for (k, v) in [(1u32, 1u64), (2, 5), (1, 2)] {
            h.record((k, v), NO_TIMESTAMP).unwrap();
        }
        h.watermark(10).unwrap();
        h.end().unwrap();
        let elements = h.take_elements();
        let max_at = elements
            .iter()
            .position(|e| matches!(e, StreamElement::Watermark(Watermark::MAX)))
            .unwrap();
        let mut records: Vec<(u32, u64)> = Vec::new();
        for (i, e) in elements.iter().enumerate() {
            if let StreamElement::Records(batch) = e {
                assert!(i < max_at, "records after Watermark::MAX: {elements:?}");
                records.extend(batch.records());
            }
        }
        records.sort();
        assert_eq!(records, vec![(1, 3), (2, 5)]);
        assert!(matches!(elements.last(), Some(StreamElement::EndOfInput)));
    }

    #[test]
    fn running_values_follow_every_record() {
        let mut h = Harness::new(ReducePairs::new(|a: u64, b: u64| a + b, Emit::Running));
        for (k, v) in [(1u32, 1u64), (1, 2), (2, 5), (1, 3)] {
            h.record((k, v), 40 + v as i64).unwrap();
        }
        h.end().unwrap();
        assert_eq!(
            h.take_timestamped(),
            vec![((1, 1), 41), ((1, 3), 42), ((2, 5), 45), ((1, 6), 43)]
        );
    }
}
