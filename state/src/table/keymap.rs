//! A namespace's key map: one `FxHashMap`, or, when it is sized up front for many entries
//! (a restore knows how many it loads), several maps (shards) that together fit them.
//!
//! Why shards: a hash map's table has a power of two of buckets and holds up to 7/8 of them,
//! so a map sized for `n` entries just past 7/8 of a power of two takes twice the buckets,
//! and is less than half full. The bench's 4M entries (of 16 B keys and 64 B values) took
//! 8M buckets, 840 MB, where 4.6M would do; on a VM a restore spends most of its time
//! faulting in the table's fresh pages, so that memory is time as well. Between 16 and 31
//! shards of one power of two each can be sized to fit any count within a few percent.
//! A shard also grows (rehashes) on its own, a fraction of the whole table at a time.
//!
//! A key's shard comes from bits 24..56 of its hash, which the maps themselves use for
//! neither the bucket (the low bits, up to 2^24 buckets a shard) nor the control byte (the
//! top 7 bits): keys of one shard are spread over all of its buckets and tags.

use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash};

use rustc_hash::{FxBuildHasher, FxHashMap};

/// Capacity hints below which a map is one `FxHashMap`.
const SHARD_MIN_ENTRIES: usize = 1 << 16;

/// Most shards of a map. A plan takes the smallest shards (a power of two of buckets) of
/// which this many suffice, so a large map has 16 to 31 of them: within that octave every
/// count fits some number of shards to within about 1/16.
const SHARDS_MAX: usize = 31;

/// How a map sized for `n` entries is laid out: shards, and each one's capacity (7/8 of a
/// power of two). Each shard gets room for its expected share plus four standard deviations
/// of the binomial spread of keys over shards, so that none of them has to grow.
fn plan(n: usize) -> (usize, usize) {
    let mut buckets = 64usize;
    loop {
        let cap = buckets / 8 * 7;
        // The most entries a shard may expect: x + 4 √x ≤ cap.
        let x = ((4.0 + cap as f64).sqrt() - 2.0).powi(2);
        let shards = (n as f64 / x).ceil() as usize;
        if shards <= SHARDS_MAX {
            return (shards.max(1), cap);
        }
        buckets *= 2;
    }
}

/// The map of one namespace's keys (see the module's comment).
pub(super) struct KeyMap<K, V> {
    /// Shard 0, the only one of an unsharded map.
    first: FxHashMap<K, V>,
    /// Shards 1.. of a sharded map.
    rest: Vec<FxHashMap<K, V>>,
}

impl<K, V> Default for KeyMap<K, V> {
    fn default() -> Self {
        KeyMap {
            first: FxHashMap::default(),
            rest: Vec::new(),
        }
    }
}

impl<K: Eq + Hash, V> KeyMap<K, V> {
    /// A map with room for `n` entries: sharded to fit when `n` is large.
    pub(super) fn with_capacity(n: usize) -> Self {
        if n < SHARD_MIN_ENTRIES {
            return KeyMap {
                first: FxHashMap::with_capacity_and_hasher(n, FxBuildHasher),
                rest: Vec::new(),
            };
        }
        let (shards, cap) = plan(n);
        let map = || FxHashMap::with_capacity_and_hasher(cap, FxBuildHasher);
        KeyMap {
            first: map(),
            rest: (1..shards).map(|_| map()).collect(),
        }
    }

    /// Makes room for `n` more entries (spread evenly when sharded).
    pub(super) fn reserve(&mut self, n: usize) {
        if self.rest.is_empty() {
            self.first.reserve(n);
            return;
        }
        let per = n.div_ceil(self.shards());
        let extra = per + 4 * (per as f64).sqrt() as usize;
        for m in self.all_mut() {
            m.reserve(extra);
        }
    }

    pub(super) fn shards(&self) -> usize {
        1 + self.rest.len()
    }

    /// The shard of `key` (see the module's comment): 0 when unsharded.
    #[inline]
    fn shard_of(&self, key: &K) -> usize {
        let h = FxBuildHasher.hash_one(key);
        (((h >> 24) as u32 as u64 * self.shards() as u64) >> 32) as usize
    }

    /// The shard of `key`: the only map of an unsharded map, inline; the sharded case
    /// (a restored map, whose accesses miss the caches anyway) out of line, so it adds
    /// nothing but a test to the hot path of the common case.
    #[inline]
    fn shard(&self, key: &K) -> &FxHashMap<K, V> {
        if self.rest.is_empty() {
            return &self.first;
        }
        self.sharded(key)
    }

    #[inline(never)]
    fn sharded(&self, key: &K) -> &FxHashMap<K, V> {
        match self.shard_of(key) {
            0 => &self.first,
            s => &self.rest[s - 1],
        }
    }

    #[inline]
    fn shard_mut(&mut self, key: &K) -> &mut FxHashMap<K, V> {
        if self.rest.is_empty() {
            return &mut self.first;
        }
        self.sharded_mut(key)
    }

    #[inline(never)]
    fn sharded_mut(&mut self, key: &K) -> &mut FxHashMap<K, V> {
        match self.shard_of(key) {
            0 => &mut self.first,
            s => &mut self.rest[s - 1],
        }
    }

    #[inline]
    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.shard(key).get(key)
    }

    #[inline]
    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.shard_mut(key).get_mut(key)
    }

    #[inline]
    pub(super) fn contains_key(&self, key: &K) -> bool {
        self.shard(key).contains_key(key)
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        self.shard_mut(key).remove(key)
    }

    #[inline]
    pub(super) fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        self.shard_mut(&key).entry(key)
    }

    /// Whether the map is large enough that its entries miss the caches: sharded, or one
    /// map with room for `min` entries.
    #[inline]
    pub(super) fn is_large(&self, min: usize) -> bool {
        !self.rest.is_empty() || self.first.capacity() >= min
    }
}

impl<K, V> KeyMap<K, V> {
    fn all(&self) -> impl Iterator<Item = &FxHashMap<K, V>> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut FxHashMap<K, V>> {
        std::iter::once(&mut self.first).chain(self.rest.iter_mut())
    }

    pub(super) fn len(&self) -> usize {
        self.all().map(|m| m.len()).sum()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.all().all(|m| m.is_empty())
    }

    /// Entries the map holds without growing.
    pub(super) fn capacity(&self) -> usize {
        self.all().map(|m| m.capacity()).sum()
    }

    /// Every entry, in the map's order (shard after shard).
    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.all().flat_map(|m| m.iter())
    }

    /// Removes and yields every entry, keeping the memory for reuse.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (K, V)> + '_ {
        self.all_mut().flat_map(|m| m.drain())
    }

    /// Visits the entries in the map's order from the `skip`th on, keeping or removing each
    /// as `f` says, until `f` says to stop. Returns how many entries the map holds before
    /// the place it stopped (counting those skipped and those kept), or `None` when it went
    /// to the end. Shards wholly before the `skip`th entry are passed over without a visit.
    pub(super) fn sweep(
        &mut self,
        skip: usize,
        mut f: impl FnMut(&K, &mut V) -> Sweep,
    ) -> Option<usize> {
        let mut before = 0usize;
        for m in self.all_mut() {
            if before + m.len() <= skip {
                before += m.len();
                continue;
            }
            let mut stopped = false;
            m.retain(|k, v| {
                if stopped {
                    return true;
                }
                if before < skip {
                    before += 1;
                    return true;
                }
                match f(k, v) {
                    Sweep::Keep => {
                        before += 1;
                        true
                    }
                    Sweep::Remove => false,
                    Sweep::Stop => {
                        stopped = true;
                        true
                    }
                }
            });
            if stopped {
                return Some(before);
            }
        }
        None
    }
}

/// What [`KeyMap::sweep`] does with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sweep {
    Keep,
    Remove,
    Stop,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_fits_its_count_within_a_few_percent() {
        for n in [
            1 << 16,
            100_000,
            917_505,
            1_000_000,
            3_670_017,
            4_000_000,
            10_000_000,
        ] {
            let (shards, cap) = plan(n);
            assert!((1..=SHARDS_MAX).contains(&shards), "{n}: {shards} shards");
            let per = n as f64 / shards as f64;
            assert!(
                per + 4.0 * per.sqrt() <= cap as f64 + 1.0,
                "{n}: {shards} × {cap}"
            );
            let buckets = cap / 7 * 8;
            let load = n as f64 / (shards * buckets) as f64;
            assert!(
                load > 0.75,
                "{n}: {shards} shards of {buckets} buckets, load {load}"
            );
        }
    }

    #[test]
    fn a_sharded_map_holds_its_reservation_without_growing() {
        let n = 300_000usize;
        let mut m: KeyMap<u64, u64> = KeyMap::with_capacity(n);
        assert!(m.shards() >= 16, "{} shards", m.shards());
        let cap = m.capacity();
        let buckets: usize = m.all().map(|s| s.capacity() / 7 * 8).sum();
        for k in 0..n as u64 {
            assert!(m.entry(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)).or_insert(k) == &k);
        }
        assert_eq!(m.capacity(), cap, "a shard grew");
        assert!(
            n as f64 / buckets as f64 > 0.75,
            "{n} entries in {buckets} buckets"
        );
        assert_eq!(m.len(), n);
        for k in 0..n as u64 {
            assert_eq!(m.get(&k.wrapping_mul(0x9e37_79b9_7f4a_7c15)), Some(&k));
        }
    }

    #[test]
    fn sequential_keys_spread_over_every_shard() {
        let n = 200_000u64;
        let mut m: KeyMap<u64, ()> = KeyMap::with_capacity(n as usize);
        for k in 0..n {
            m.entry(k).or_insert(());
        }
        let fair = n as f64 / m.shards() as f64;
        for s in m.all() {
            let l = s.len() as f64;
            assert!(
                (l - fair).abs() < 0.05 * fair,
                "a shard holds {l} of a fair {fair}"
            );
        }
    }

    /// A sweep from a place in the middle stops where told, and a second one from that place
    /// visits exactly the entries after it: the same as one pass over the map in its order.
    #[test]
    fn sweeps_resume_where_the_last_one_stopped() {
        for n in [1_000usize, 100_000] {
            let mut m: KeyMap<u64, u64> = KeyMap::with_capacity(n);
            for k in 0..n as u64 {
                m.entry(k).or_insert(k);
            }
            let order: Vec<u64> = m.iter().map(|(k, _)| *k).collect();
            // Remove every third entry visited, stop at the 600th visited.
            let mut seen = Vec::new();
            let hand = m.sweep(0, |k, _| {
                if seen.len() == 600 {
                    return Sweep::Stop;
                }
                seen.push(*k);
                if seen.len() % 3 == 0 {
                    Sweep::Remove
                } else {
                    Sweep::Keep
                }
            });
            assert_eq!(hand, Some(400));
            let rest = m.sweep(hand.unwrap(), |k, _| {
                seen.push(*k);
                Sweep::Keep
            });
            assert_eq!(rest, None);
            assert_eq!(seen, order, "{n} entries");
            assert_eq!(m.len(), n - 200);
        }
    }
}
