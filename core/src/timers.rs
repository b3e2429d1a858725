//! Timers of keyed operators: per (key, namespace) event-time or processing-time instants that
//! fire in timestamp order (Flink's `InternalTimerService`).
//!
//! A timer is identified by its key, its namespace (a window, or `()` for a keyed process
//! function) and its time: registering the same timer twice registers it once, and deleting
//! one that does not exist does nothing.
//!
//! Two implementations:
//! - [`KeyedTimers`]: timers in the stage's state store (the store's `TimerSet`: an ordered
//!   index in memory over a table that is checkpointed, never evicted, and restored — by key
//!   group when the job rescales, since a timer belongs to its key's key group). Timers with
//!   the same time fire in the order of their keys' stable hashes (then of the namespaces):
//!   a function of the timers alone, so a restored run fires them exactly as an uninterrupted
//!   one would. Keyed process functions and interval joins use it.
//! - [`TimerQueue`]: in memory, not checkpointed; timers with the same time fire in the order
//!   they were registered. A binary heap of (time, sequence) over a table of live timers; a
//!   deleted timer leaves a stale heap entry that is skipped when it comes up.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::hash::{Hash, Hasher};

use rkyv::{Archive, Deserialize, Serialize};
use sluice_state::{Ns, TimerSet};

use crate::FastMap;
use crate::context::OperatorContext;
use crate::error::{Error, Result};
use crate::key::Key;

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

/// The store's `u64` timestamp of an event or processing time: order-preserving (the sign
/// bit flipped, so `i64::MIN` is 0 and `i64::MAX` is `u64::MAX`).
#[inline]
pub fn to_stored_time(time: i64) -> u64 {
    (time as u64) ^ (1 << 63)
}

/// The inverse of [`to_stored_time`].
#[inline]
pub fn from_stored_time(stored: u64) -> i64 {
    (stored ^ (1 << 63)) as i64
}

/// A timer's key as the store keeps it: the key beside its stable hash. The store's timer
/// set is ordered, and [`Key`] has no `Ord` (a key need only be hashable and storable), so
/// timer keys order by stable hash, then — for distinct keys with the same hash, about one
/// pair in 2^64 — by their rkyv archives. The hash is also the timer's key group, so it is
/// computed once per registration, never at a checkpoint.
#[derive(Archive, Serialize, Deserialize, Clone, Debug)]
pub struct TimerKey<K> {
    hash: u64,
    key: K,
}

impl<K: Key> TimerKey<K> {
    /// `key` and its stable hash.
    #[inline]
    pub fn new(key: K) -> TimerKey<K> {
        TimerKey {
            hash: key.stable_hash(),
            key,
        }
    }
    /// The key.
    pub fn key(&self) -> &K {
        &self.key
    }
    /// The key's stable hash.
    pub fn stable_hash(&self) -> u64 {
        self.hash
    }
    /// The key, taken out.
    pub fn into_key(self) -> K {
        self.key
    }
}

impl<K: PartialEq> PartialEq for TimerKey<K> {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}
impl<K: Eq> Eq for TimerKey<K> {}

impl<K> Hash for TimerKey<K> {
    /// The stable hash alone: equal keys have equal stable hashes.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<K: Key> Ord for TimerKey<K> {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        self.hash.cmp(&other.hash).then_with(|| {
            if self.key == other.key {
                return Ordering::Equal;
            }
            // Archives are injective (decoding inverts them), so distinct keys differ here.
            let archive = |k: &K| {
                sluice_state::codec::to_vec(k)
                    .unwrap_or_else(|e| panic!("encode a timer's key to order it: {e}"))
            };
            archive(&self.key).cmp(&archive(&other.key))
        })
    }
}
impl<K: Key> PartialOrd for TimerKey<K> {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Timers of one time domain in the stage's state store: checkpointed with the operator's
/// state and restored with it (by key group when the job rescales). See the module docs for
/// the order of timers with the same time.
pub struct KeyedTimers<K, N> {
    set: TimerSet<TimerKey<K>, N>,
}

impl<K: Key, N: Ns + Ord> KeyedTimers<K, N> {
    /// Registers (or restores) the timer set `name` (a full state name, with its operator's
    /// prefix) in the stage's store.
    pub fn open(ctx: &OperatorContext, name: &str) -> Result<KeyedTimers<K, N>> {
        let key_groups = ctx.key_groups();
        let set = ctx
            .state()
            .store()
            .timers(name, move |k: &TimerKey<K>| key_groups.key_group(k.hash))
            .map_err(|e| Error::State {
                op: "register timers",
                message: crate::runtime::one_line(&e.to_string()),
            })?;
        Ok(KeyedTimers { set })
    }

    /// Registers a timer; a no-op if it exists.
    #[inline]
    pub fn register(&mut self, key: TimerKey<K>, namespace: N, time: i64) -> Result<()> {
        self.set.register(to_stored_time(time), key, namespace)?;
        Ok(())
    }

    /// Deletes a timer; a no-op if it does not exist.
    #[inline]
    pub fn delete(&mut self, key: TimerKey<K>, namespace: N, time: i64) -> Result<()> {
        self.set.delete(to_stored_time(time), key, namespace)?;
        Ok(())
    }

    /// Removes and returns the earliest timer if its time is `<= up_to`.
    #[inline]
    pub fn pop_due(&mut self, up_to: i64) -> Result<Option<(TimerKey<K>, N, i64)>> {
        Ok(self
            .set
            .pop_due(to_stored_time(up_to))?
            .map(|(t, key, ns)| (key, ns, from_stored_time(t))))
    }

    /// The earliest timer's time.
    pub fn peek_time(&self) -> Option<i64> {
        self.set.peek().map(|(t, _, _)| from_stored_time(*t))
    }

    /// Number of timers.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether no timer is registered.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
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

    #[test]
    fn stored_times_keep_the_order_of_event_times() {
        let times = [
            i64::MIN,
            i64::MIN + 1,
            -1_000,
            -1,
            0,
            1,
            1_000,
            i64::MAX - 1,
            i64::MAX,
        ];
        for pair in times.windows(2) {
            assert!(
                to_stored_time(pair[0]) < to_stored_time(pair[1]),
                "{pair:?}"
            );
        }
        for t in times {
            assert_eq!(from_stored_time(to_stored_time(t)), t);
        }
        assert_eq!(to_stored_time(i64::MIN), 0);
        assert_eq!(to_stored_time(i64::MAX), u64::MAX);
    }

    #[test]
    fn keys_with_the_same_hash_order_by_their_archives() {
        let forged = |key: String| TimerKey { hash: 7, key };
        let (a, b) = (forged("a".into()), forged("b".into()));
        assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
        assert_ne!(a.cmp(&b), Ordering::Equal);
        assert_eq!(a.cmp(&forged("a".into())), Ordering::Equal);
        let other = TimerKey {
            hash: 8,
            key: String::new(),
        };
        assert_eq!(a.cmp(&other), Ordering::Less);
    }

    proptest! {
        /// Against a sorted set of (time, key's stable hash): timers in the store fire in that
        /// order, once each, deleted ones never, and those registered twice once.
        #[test]
        fn keyed_timers_fire_like_a_sorted_set(
            ops in proptest::collection::vec((0u8..3, 0u32..6, -10i64..10), 0..150),
            up_to in -12i64..12,
        ) {
            let ctx = OperatorContext::standalone();
            let mut timers: KeyedTimers<u32, ()> = KeyedTimers::open(&ctx, "t").unwrap();
            let mut model = std::collections::BTreeSet::new();
            for (op, key, time) in ops {
                let entry = (time, key.stable_hash(), key);
                if op < 2 {
                    timers.register(TimerKey::new(key), (), time).unwrap();
                    model.insert(entry);
                } else {
                    timers.delete(TimerKey::new(key), (), time).unwrap();
                    model.remove(&entry);
                }
            }
            prop_assert_eq!(timers.len(), model.len());
            prop_assert_eq!(timers.peek_time(), model.first().map(|e| e.0));
            let mut fired = Vec::new();
            while let Some((key, (), time)) = timers.pop_due(up_to).unwrap() {
                fired.push((time, key.into_key()));
            }
            let expected: Vec<(i64, u32)> = model
                .iter()
                .filter(|e| e.0 <= up_to)
                .map(|&(t, _, k)| (t, k))
                .collect();
            prop_assert_eq!(fired, expected);
        }
    }
}
