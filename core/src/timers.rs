//! Timers of keyed operators: per (key, namespace) event-time or processing-time instants that
//! fire in timestamp order (Flink's `InternalTimerService`).
//!
//! A timer is identified by its key, its namespace (a window, or `()` for a keyed process
//! function) and its time: registering the same timer twice registers it once, and deleting
//! one that does not exist does nothing. Timers with the same time fire in the order they were
//! registered. The queue is a binary heap of (time, sequence) over a table of live timers;
//! a deleted timer leaves a stale heap entry that is skipped when it comes up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::Hash;

use crate::FastMap;

/// Timers one queue may hold: bounds its memory (a runaway registration loop fails loudly).
pub const TIMERS_MAX: usize = 1 << 26;

/// A queue of timers for one time domain (event time or processing time).
#[derive(Debug)]
pub struct TimerQueue<K, N> {
    heap: BinaryHeap<Reverse<(i64, u64)>>,
    live: FastMap<u64, (K, N, i64)>,
    index: FastMap<(K, N, i64), u64>,
    next_seq: u64,
}

impl<K, N> Default for TimerQueue<K, N> {
    fn default() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            live: FastMap::default(),
            index: FastMap::default(),
            next_seq: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, N: Hash + Eq + Clone> TimerQueue<K, N> {
    /// Registers a timer; a no-op if it exists.
    ///
    /// ```
    /// use sluice_core::timers::TimerQueue;
    /// let mut q: TimerQueue<&str, ()> = TimerQueue::default();
    /// q.register("b", (), 20);
    /// q.register("a", (), 10);
    /// q.register("a", (), 10); // the same timer: registered once
    /// q.register("c", (), 15);
    /// q.delete(&"c", &(), 15);
    /// let fired: Vec<_> = std::iter::from_fn(|| q.pop_due(20)).collect();
    /// assert_eq!(fired, vec![("a", (), 10), ("b", (), 20)]);
    /// ```
    pub fn register(&mut self, key: K, namespace: N, time: i64) {
        let id = (key, namespace, time);
        if self.index.contains_key(&id) {
            return;
        }
        assert!(
            self.live.len() < TIMERS_MAX,
            "timers={} max={TIMERS_MAX}",
            self.live.len()
        );
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse((time, seq)));
        self.live.insert(seq, id.clone());
        self.index.insert(id, seq);
    }

    /// Deletes a timer; a no-op if it does not exist.
    pub fn delete(&mut self, key: &K, namespace: &N, time: i64) {
        let id = (key.clone(), namespace.clone(), time);
        if let Some(seq) = self.index.remove(&id) {
            self.live.remove(&seq);
        }
    }

    /// The earliest live timer's time.
    pub fn peek_time(&mut self) -> Option<i64> {
        self.skip_stale();
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Removes and returns the earliest timer if its time is `<= up_to`.
    pub fn pop_due(&mut self, up_to: i64) -> Option<(K, N, i64)> {
        self.skip_stale();
        let &Reverse((time, seq)) = self.heap.peek()?;
        if time > up_to {
            return None;
        }
        self.heap.pop();
        let id = self.live.remove(&seq)?;
        self.index.remove(&id);
        Some(id)
    }

    /// Number of live timers.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no timer is registered.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    fn skip_stale(&mut self) {
        while let Some(Reverse((_, seq))) = self.heap.peek() {
            if self.live.contains_key(seq) {
                return;
            }
            self.heap.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a sorted list: timers fire in (time, registration) order, once each, and
        /// deleted ones never.
        #[test]
        fn fires_like_a_sorted_set(
            ops in proptest::collection::vec((0u8..3, 0u8..4, 0i64..20), 0..200),
        ) {
            let mut q: TimerQueue<u8, ()> = TimerQueue::default();
            let mut model: Vec<(i64, u64, u8)> = Vec::new();
            let mut seq = 0u64;
            for (op, key, time) in ops {
                match op {
                    0 | 1 => {
                        q.register(key, (), time);
                        if !model.iter().any(|&(t, _, k)| t == time && k == key) {
                            model.push((time, seq, key));
                            seq += 1;
                        }
                    }
                    _ => {
                        q.delete(&key, &(), time);
                        model.retain(|&(t, _, k)| !(t == time && k == key));
                    }
                }
            }
            model.sort();
            let fired: Vec<(u8, (), i64)> = std::iter::from_fn(|| q.pop_due(i64::MAX)).collect();
            let expected: Vec<(u8, (), i64)> = model.iter().map(|&(t, _, k)| (k, (), t)).collect();
            prop_assert_eq!(fired, expected);
            prop_assert!(q.is_empty());
        }
    }
}
