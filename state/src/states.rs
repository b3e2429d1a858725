//! Flink's state kinds on top of [`Table`]: value, list, map, reducing and aggregating
//! state, and the ordered timer set behind event- and processing-time timers. Each is a
//! table with a few methods, so all share one hot path, one checkpoint and one eviction.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashSet;

use crate::codec::Codec;
use crate::disk::Disk;
use crate::error::{AccessError, OpenError};
use crate::store::Store;
use crate::table::{Ns, Table, TableConfig, TableData};

/// Flink's `ValueState`: one value per (namespace, key).
pub type ValueState<N, K, V> = Table<N, K, V>;
/// Flink's `ListState`: a list per (namespace, key); appends push onto the resident list.
pub type ListState<N, K, T> = Table<N, K, Vec<T>>;
/// Flink's `MapState`: per (namespace, key) a map of user keys, stored as one entry per user
/// key with (namespace, key) as the table's namespace, so a user key is read or written
/// without the rest of its map, and a whole map is iterated or cleared as one namespace.
pub type MapState<N, K, UK, UV> = Table<(N, K), UK, UV>;
/// Flink's `ReducingState`: a value per (namespace, key) folded with a reduce function.
pub type ReducingState<N, K, V> = Table<N, K, V>;
/// Flink's `AggregatingState`: an accumulator per (namespace, key).
pub type AggregatingState<N, K, A> = Table<N, K, A>;

/// Flink's `AggregateFunction`, as aggregating state uses it.
pub trait AggregateFunction<In> {
    /// The accumulator.
    type Acc;
    /// A fresh accumulator.
    fn create_accumulator(&self) -> Self::Acc;
    /// Adds an input.
    fn add(&self, acc: &mut Self::Acc, input: In);
}

impl<N: Ns, K: Ns, T> TableData<N, K, Vec<T>>
where
    Vec<T>: Codec,
{
    /// Appends to the list of `key` in `ns` (no copy of the list).
    #[inline]
    pub fn append(&mut self, ns: &N, key: K, item: T) -> Result<(), AccessError> {
        self.get_or_insert_with(ns, key, Vec::new)?.push(item);
        Ok(())
    }
}

impl<N: Ns, K: Ns, V: Codec> TableData<N, K, V> {
    /// Reducing state: folds `value` into the value of `key` in `ns` with `f`, or stores it.
    #[inline]
    pub fn reduce(
        &mut self,
        ns: &N,
        key: K,
        value: V,
        f: impl FnOnce(&mut V, V),
    ) -> Result<(), AccessError> {
        let mut value = Some(value);
        let slot =
            self.get_or_insert_with(ns, key, || value.take().unwrap_or_else(|| unreachable!()))?;
        if let Some(v) = value {
            f(slot, v);
        }
        Ok(())
    }

    /// Aggregating state: adds `input` to the accumulator of `key` in `ns`.
    #[inline]
    pub fn aggregate<In, F: AggregateFunction<In, Acc = V>>(
        &mut self,
        ns: &N,
        key: K,
        input: In,
        agg: &F,
    ) -> Result<(), AccessError> {
        let acc = self.get_or_insert_with(ns, key, || agg.create_accumulator())?;
        agg.add(acc, input);
        Ok(())
    }
}

/// Deleted timers a [`TimerSet`]'s heap may hold beyond twice its live ones before it is
/// rebuilt.
const STALE_TIMERS_SLACK: usize = 1024;

/// The storage behind timers: an ordered set of (timestamp, key, namespace) with delete,
/// persisted as a table that is never evicted (timers are few and always needed).
///
/// In memory the order is a binary heap with a set of the live timers: a timer is usually
/// registered later than most (a push is a comparison or two) and taken from the front, so a
/// heap costs a fraction of an ordered tree's searches. A deleted timer stays in the heap until
/// it comes up and is skipped; the heap's top is always live (stale tops are dropped after
/// every delete and pop), so [`peek`](Self::peek) needs no mutation.
pub struct TimerSet<K, N> {
    table: Table<(), (u64, K, N), ()>,
    heap: BinaryHeap<Reverse<(u64, K, N)>>,
    live: FxHashSet<(u64, K, N)>,
}

impl<K: Ns + Ord, N: Ns + Ord> TimerSet<K, N>
where
    (u64, K, N): Ns,
{
    /// Registers a timer; a duplicate is a no-op.
    pub fn register(&mut self, ts: u64, key: K, ns: N) -> Result<(), AccessError> {
        let t = (ts, key, ns);
        if self.live.contains(&t) {
            return Ok(());
        }
        self.table.lock().insert(&(), t.clone(), ())?;
        self.live.insert(t.clone());
        self.heap.push(Reverse(t));
        Ok(())
    }

    /// Deletes a timer, if set.
    pub fn delete(&mut self, ts: u64, key: K, ns: N) -> Result<(), AccessError> {
        let t = (ts, key, ns);
        if self.live.remove(&t) {
            self.table.lock().remove(&(), &t)?;
            self.drop_stale_top();
            // Deleted timers far in the future would otherwise pile up in the heap (a timeout
            // moved on every record): rebuild it when they outnumber the live ones.
            if self.heap.len() > 2 * self.live.len() + STALE_TIMERS_SLACK {
                self.heap = self.live.iter().cloned().map(Reverse).collect();
            }
        }
        Ok(())
    }

    /// The earliest timer.
    pub fn peek(&self) -> Option<&(u64, K, N)> {
        self.heap.peek().map(|Reverse(t)| t)
    }

    /// Removes and returns the earliest timer if it is due at `time` (timestamp ≤ time).
    pub fn pop_due(&mut self, time: u64) -> Result<Option<(u64, K, N)>, AccessError> {
        match self.heap.peek() {
            Some(Reverse((ts, _, _))) if *ts <= time => {}
            _ => return Ok(None),
        }
        let Some(Reverse(t)) = self.heap.pop() else {
            return Ok(None);
        };
        debug_assert!(self.live.contains(&t), "the heap's top is live");
        self.live.remove(&t);
        self.table.lock().remove(&(), &t)?;
        self.drop_stale_top();
        Ok(Some(t))
    }

    /// Drops deleted timers from the top of the heap, so that its top is live.
    fn drop_stale_top(&mut self) {
        while let Some(Reverse(top)) = self.heap.peek() {
            if self.live.contains(top) {
                return;
            }
            self.heap.pop();
        }
    }

    /// Timers set.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

impl<D: Disk> Store<D> {
    /// Registers (or restores) the timer set `name`; `key_group` gives a timer's key group
    /// from its key.
    pub fn timers<K: Ns + Ord, N: Ns + Ord>(
        &self,
        name: &str,
        key_group: impl Fn(&K) -> u32 + 'static,
    ) -> Result<TimerSet<K, N>, OpenError>
    where
        (u64, K, N): Ns,
    {
        let mut cfg = TableConfig::new(move |_: &(), t: &(u64, K, N)| key_group(&t.1));
        cfg.evictable = false;
        let table = self.table(name, cfg)?;
        let mut live = FxHashSet::default();
        table
            .lock()
            .for_each_in_namespace(&(), |t, _| {
                live.insert(t.clone());
            })
            .map_err(|e| OpenError::Config(e.to_string()))?;
        let heap = live.iter().cloned().map(Reverse).collect();
        Ok(TimerSet { table, heap, live })
    }
}
