//! The table's side of a background load ([`crate::Restore::Background`]): the table is
//! registered as a lazy restore leaves it (every miss reads the disk), and the store's
//! maintenance task then hands it its restored frames in steps, **newest segment first**,
//! while the job runs. A frame is inserted only where it is still the newest version of its
//! entry that the table does not hold:
//!
//! - the entry has no slot: any slot (written by the job, read back from disk by a miss, a
//!   tombstone, or inserted by this load from a newer segment) is newer;
//! - its namespace is not complete (loaded whole by the job, or known absent from disk);
//! - no newer segment of the load had a tombstone or an expired version of it (`gone`);
//! - no namespace drop made after its segment kills it (the store checks, as a restore does).
//!
//! Anything newer than the load's segments is in memory: the job's writes stay resident
//! until an eviction, and an eviction of this table ends the load (the evicted entries'
//! versions are in segments the load does not read). So does a full budget. A load that
//! ends early leaves the table as a lazy restore does, which is always correct; one that
//! reads every frame makes the table resident in full, as an eager restore does.

use rustc_hash::FxHashSet;

use super::*;

/// A load in progress.
pub(super) struct Warm<N, K, V> {
    /// Entries whose newest version in the load so far is a tombstone or expired.
    gone: FxHashSet<(N, K)>,
    /// Decoded frames not yet applied (applied together, as `restore_flush` does).
    batch: Vec<(N, K, Option<V>, u64)>,
    /// The load must stop: this table evicted, or the budget is full.
    over: bool,
}

impl<N: Ns, K: Ns, V: Codec> TableData<N, K, V> {
    /// Starts a background load (the table was registered without loading anything).
    pub(crate) fn warm_begin(&mut self) {
        self.warm = Some(Box::new(Warm {
            gone: FxHashSet::default(),
            batch: Vec::with_capacity(RESTORE_BATCH),
            over: false,
        }));
    }

    /// Whether a background load is running.
    pub fn warming(&self) -> bool {
        self.warm.is_some()
    }

    /// An eviction of this table ends its load.
    pub(super) fn warm_evicted(&mut self) {
        if let Some(w) = &mut self.warm {
            w.over = true;
        }
    }

    /// Applies the frames decoded so far: their map lookups first, as in `restore_flush`.
    fn warm_flush(&mut self) {
        let Some(mut w) = self.warm.take() else {
            return;
        };
        for (ns, key, _, _) in &w.batch {
            self.prefetch(ns, key);
        }
        let mut batch = std::mem::take(&mut w.batch);
        for (ns, key, value, expires_ms) in batch.drain(..) {
            if w.over {
                break;
            }
            self.warm_one(&mut w, ns, key, value, expires_ms);
        }
        w.batch = batch;
        self.warm = Some(w);
    }

    /// One frame: one probe of the key's map (the entry API, as a restore does), and of
    /// `gone` only while it holds anything.
    fn warm_one(
        &mut self,
        w: &mut Warm<N, K, V>,
        ns: N,
        key: K,
        value: Option<V>,
        expires_ms: u64,
    ) {
        if !w.gone.is_empty() && w.gone.contains(&(ns.clone(), key.clone())) {
            return;
        }
        let Some(value) = value else {
            // Older versions of it are not to be loaded (if the table holds it, they are not
            // anyway).
            w.gone.insert((ns, key));
            return;
        };
        let mut slot = Slot::restored(value, expires_ms);
        let weight = self.weight_of(&slot.value);
        let c = &self.counters;
        if self.cfg.evictable && c.mem_used.get() + weight > c.mem_budget.get() {
            w.over = true;
            return;
        }
        slot.weight = weight.min(u32::MAX as usize) as u32;
        if !self.spaces.contains_key(&ns) {
            let hint = std::mem::take(&mut self.reserve_hint);
            let space = Space {
                map: self.spaces.new_map(hint),
                complete: false,
                persisted: true,
                hand: 0,
            };
            self.spaces.insert(ns.clone(), space);
        }
        let Some(space) = self.spaces.get_mut(&ns) else {
            return;
        };
        if space.complete {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(v) = space.map.entry(key) {
            v.insert(slot);
            space.persisted = true;
            self.weight_total += weight;
            c.charge(weight);
        }
    }
}

impl<N: Ns, K: Ns, V: Codec> WarmOps for TableData<N, K, V> {
    fn warm_frame(&mut self, fr: &FrameRef<'_>) -> Result<bool, AccessError> {
        if self.warm.as_ref().is_none_or(|w| w.over) {
            return Ok(false);
        }
        let restored = self.decode_frame(fr)?;
        let Some(w) = &mut self.warm else {
            return Ok(false);
        };
        w.batch.push(restored);
        if w.batch.len() >= RESTORE_BATCH {
            self.warm_flush();
        }
        Ok(self.warm.as_ref().is_some_and(|w| !w.over))
    }

    fn warm_apply(&mut self) {
        self.warm_flush();
    }

    fn warm_end(&mut self, every_frame: bool) -> bool {
        let Some(w) = self.warm.take() else {
            return false;
        };
        let complete = every_frame && !w.over && w.batch.is_empty();
        if complete {
            self.restore_done(true);
        }
        complete
    }
}
