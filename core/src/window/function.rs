//! Window functions: what a window keeps while it is open and what it emits when it fires.
//!
//! A [`WindowFunction`] keeps an accumulator per key and window (or per key and slice, for
//! sliced windows) and emits from one or several accumulators: a sliding window is the union
//! of its slices, so its result is computed from their accumulators together, never from a
//! copy of each record per window.
//!
//! - [`ReduceWindow`]: `reduce` — the accumulator is the reduced record.
//! - [`AggregateWindow`]: `aggregate` with an [`AggregateFunction`] — incremental.
//! - [`ProcessWindow`]: `process` — the accumulator is the list of records; the function sees
//!   all of them and the window.

use std::marker::PhantomData;

use crate::element::Timestamp;
use crate::error::Result;
use crate::keyed::AggregateFunction;
use crate::state::StateCodec;
use crate::window::TimeWindow;

/// A window's result with its key and window: what `reduce` and `aggregate` emit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WindowOutput<K, V> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: TimeWindow,
    /// The result.
    pub value: V,
}

/// The per-window state and result of a window operator.
pub trait WindowFunction<K, T>: Clone + Send + Sync + 'static {
    /// What is kept per key and window (or slice): in the state store, so storable.
    type Acc: StateCodec + Clone;
    /// What is emitted.
    type Out: 'static;
    /// An empty accumulator.
    fn create(&mut self) -> Self::Acc;
    /// Adds a record.
    fn add(&mut self, acc: &mut Self::Acc, value: T, ts: Timestamp);
    /// Merges `other` into `acc` (when session windows merge, and partial accumulators of
    /// a slice meet).
    fn merge(&mut self, acc: &mut Self::Acc, other: Self::Acc);
    /// Whether pre-aggregating before the exchange pays: accumulators much smaller than the
    /// records they summarise. Not for functions that keep every record.
    fn combinable(&self) -> bool {
        true
    }
    /// Emits the result of window `window` of key `key`, whose contents are the union of
    /// `parts` (at least one).
    fn emit(
        &mut self,
        key: &K,
        window: &TimeWindow,
        parts: &[&Self::Acc],
        out: &mut Vec<Self::Out>,
    ) -> Result<()>;
}

/// `reduce`: folds a window's records with `f(accumulated, next)`; emits the folded record.
pub struct ReduceWindow<F, T> {
    f: F,
    _t: PhantomData<fn(T) -> T>,
}

impl<F: Clone, T> Clone for ReduceWindow<F, T> {
    fn clone(&self) -> Self {
        ReduceWindow {
            f: self.f.clone(),
            _t: PhantomData,
        }
    }
}

impl<F, T> ReduceWindow<F, T> {
    /// Reduces with `f`.
    pub fn new(f: F) -> Self {
        ReduceWindow { f, _t: PhantomData }
    }
}

impl<K, T, F> WindowFunction<K, T> for ReduceWindow<F, T>
where
    K: Clone + 'static,
    T: Clone + StateCodec,
    F: FnMut(T, T) -> T + Clone + Send + Sync + 'static,
{
    type Acc = Option<T>;
    type Out = WindowOutput<K, T>;
    fn create(&mut self) -> Option<T> {
        None
    }
    #[inline]
    fn add(&mut self, acc: &mut Option<T>, value: T, _ts: Timestamp) {
        fold(&mut self.f, acc, value);
    }
    fn merge(&mut self, acc: &mut Option<T>, other: Option<T>) {
        if let Some(value) = other {
            fold(&mut self.f, acc, value);
        }
    }
    fn emit(
        &mut self,
        key: &K,
        window: &TimeWindow,
        parts: &[&Option<T>],
        out: &mut Vec<Self::Out>,
    ) -> Result<()> {
        let mut folded: Option<T> = None;
        for part in parts.iter().filter_map(|p| p.as_ref()) {
            fold(&mut self.f, &mut folded, part.clone());
        }
        if let Some(value) = folded {
            out.push(WindowOutput {
                key: key.clone(),
                window: *window,
                value,
            });
        }
        Ok(())
    }
}

#[inline]
fn fold<T>(f: &mut impl FnMut(T, T) -> T, acc: &mut Option<T>, value: T) {
    *acc = Some(match acc.take() {
        Some(current) => f(current, value),
        None => value,
    });
}

/// `aggregate`: an [`AggregateFunction`]'s accumulator per window; emits its result.
pub struct AggregateWindow<A, T> {
    agg: A,
    _t: PhantomData<fn(T)>,
}

impl<A: Clone, T> Clone for AggregateWindow<A, T> {
    fn clone(&self) -> Self {
        AggregateWindow {
            agg: self.agg.clone(),
            _t: PhantomData,
        }
    }
}

impl<A, T> AggregateWindow<A, T> {
    /// Aggregates with `agg`.
    pub fn new(agg: A) -> Self {
        AggregateWindow {
            agg,
            _t: PhantomData,
        }
    }
}

impl<K, T, A> WindowFunction<K, T> for AggregateWindow<A, T>
where
    K: Clone + 'static,
    T: 'static,
    A: AggregateFunction<T>,
    A::Acc: Clone + StateCodec,
{
    type Acc = A::Acc;
    type Out = WindowOutput<K, A::Out>;
    fn create(&mut self) -> A::Acc {
        self.agg.create_accumulator()
    }
    #[inline]
    fn add(&mut self, acc: &mut A::Acc, value: T, _ts: Timestamp) {
        self.agg.add(acc, value);
    }
    fn merge(&mut self, acc: &mut A::Acc, other: A::Acc) {
        self.agg.merge(acc, other);
    }
    fn emit(
        &mut self,
        key: &K,
        window: &TimeWindow,
        parts: &[&A::Acc],
        out: &mut Vec<Self::Out>,
    ) -> Result<()> {
        let value = match parts {
            [one] => self.agg.get_result(one),
            _ => {
                let mut acc = self.agg.create_accumulator();
                for part in parts {
                    self.agg.merge(&mut acc, (*part).clone());
                }
                self.agg.get_result(&acc)
            }
        };
        out.push(WindowOutput {
            key: key.clone(),
            window: *window,
            value,
        });
        Ok(())
    }
}

/// `process`: keeps a window's records; `f(key, window, records, out)` sees all of them
/// when it fires (Flink's `ProcessWindowFunction`).
pub struct ProcessWindow<F, T, O> {
    f: F,
    _t: PhantomData<fn(T) -> O>,
}

impl<F: Clone, T, O> Clone for ProcessWindow<F, T, O> {
    fn clone(&self) -> Self {
        ProcessWindow {
            f: self.f.clone(),
            _t: PhantomData,
        }
    }
}

impl<F, T, O> ProcessWindow<F, T, O> {
    /// Processes windows with `f`.
    pub fn new(f: F) -> Self {
        ProcessWindow { f, _t: PhantomData }
    }
}

impl<K, T, O, F> WindowFunction<K, T> for ProcessWindow<F, T, O>
where
    K: 'static,
    T: Clone + StateCodec,
    O: 'static,
    F: FnMut(&K, &TimeWindow, &mut dyn Iterator<Item = &T>, &mut Vec<O>) -> Result<()>
        + Clone
        + Send
        + Sync
        + 'static,
{
    type Acc = Vec<T>;
    type Out = O;
    fn create(&mut self) -> Vec<T> {
        Vec::new()
    }
    fn combinable(&self) -> bool {
        false
    }
    #[inline]
    fn add(&mut self, acc: &mut Vec<T>, value: T, _ts: Timestamp) {
        acc.push(value);
    }
    fn merge(&mut self, acc: &mut Vec<T>, mut other: Vec<T>) {
        acc.append(&mut other);
    }
    fn emit(
        &mut self,
        key: &K,
        window: &TimeWindow,
        parts: &[&Vec<T>],
        out: &mut Vec<O>,
    ) -> Result<()> {
        let mut records = parts.iter().flat_map(|p| p.iter());
        (self.f)(key, window, &mut records, out)
    }
}
