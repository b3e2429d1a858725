//! The table's side of eviction, restores and checkpoints: clock eviction into spill
//! batches, the restore of entries read from disk, and the `TableOps` the store's checkpoint
//! writer drives (freeze, serialize the frozen entries, finish or abort).

use super::*;

impl<N: Ns, K: Ns, V: Codec> TableData<N, K, V> {
    /// Clock eviction: frees about a tenth of the budget from this table. Clean entries are
    /// dropped (their newest version is in a searchable segment); dirty ones are serialized
    /// into a spill segment, which `Store::flush` writes. Entries that a pending checkpoint
    /// still has to write, and recently used ones (clock bit set, then cleared), stay.
    ///
    /// The clock's hand stays where an eviction stopped (a namespace, and a place in its
    /// map's order), and the next one goes on from there, round the table. Starting every
    /// sweep at the map's first bucket instead evicted from the front of the table only:
    /// entries at its back were never visited, whatever their use, and the back filled up
    /// with live entries and tombstones with no empty bucket in reach, so a lookup of a key
    /// that is not resident — every new key — probed on through group after group (a
    /// budgeted load's lookups took ~10× as long).
    pub(super) fn evict(&mut self) -> FaultResult<()> {
        let c = self.counters.clone();
        let budget = c.mem_budget.get();
        let target = c.mem_used.get().saturating_sub(budget - budget / 10);
        let registered = c.registered_epoch.get();
        let tag = c.tag.get();
        let (cur, frozen_pending) = (self.cur, self.frozen_epoch != 0);
        let mut batch = EntryBatch::default();
        let mut freed = 0usize;
        let mut err = None;
        let mut stopped_in = None;
        // From the hand to the end of its map, then twice round the whole table: the first
        // full round clears every clock bit it passes, the second evicts what is left.
        'rounds: for _round in 0..3 {
            let n = self.spaces.len();
            for j in 0..n {
                let i = (self.evict_space + j) % n;
                if freed >= target {
                    stopped_in = Some(i);
                    break 'rounds;
                }
                let (ns, space) = self.spaces.at_mut(i);
                let ser = &mut self.ser;
                let mut any = false;
                // Entries before the hand are passed over. Those that stay are counted, so
                // the hand is then a count of the map's entries before the place it stopped.
                let skip = std::mem::take(&mut space.hand);
                let mut before = 0usize;
                let mut hand = None;
                space.map.retain(|k, slot| {
                    if hand.is_some() {
                        return true;
                    }
                    if before < skip {
                        before += 1;
                        return true;
                    }
                    if freed >= target || err.is_some() {
                        hand = Some(before);
                        return true;
                    }
                    let evicted = 'decide: {
                        if slot.state & REF != 0 {
                            slot.state &= !REF;
                            break 'decide false;
                        }
                        let epoch = slot.state & EPOCH;
                        if slot.state & DIRTY != 0 {
                            if frozen_pending && epoch != cur {
                                break 'decide false;
                            }
                            if let Err(e) = ser.entry(ns, k, slot, tag, &mut batch) {
                                err = Some(e);
                                break 'decide false;
                            }
                        } else if epoch > registered {
                            break 'decide false;
                        }
                        true
                    };
                    if evicted {
                        freed += slot.weight as usize;
                        any = true;
                    } else {
                        before += 1;
                    }
                    !evicted
                });
                // Past the end of the map (or its hand was): the next sweep starts at its
                // beginning.
                space.hand = hand.unwrap_or(0);
                if any {
                    space.complete = false;
                    space.persisted = true;
                }
                if hand.is_some() {
                    stopped_in = Some(i);
                    break 'rounds;
                }
            }
        }
        self.evict_space = stopped_in.unwrap_or(0);
        if let Some(e) = err {
            return Err(e);
        }
        self.spaces.retain(|_, s| !s.map.is_empty() || !s.complete);
        debug_assert!(self.spaces.consistent());
        self.resident_all = false;
        c.evicted.set(true);
        self.warm_evicted();
        self.prune_dirty();
        self.weight_total = self.weight_total.saturating_sub(freed);
        c.release(freed);
        if !batch.is_empty() {
            self.store.spill(batch)?;
        }
        Ok(())
    }

    /// Keeps the dirty-key list proportional to the resident entries: evicted keys were
    /// spilled and removed ones are gone, so neither needs an entry in it, and a key needs
    /// one entry. Any dirty slot stays (today every one listed is of this epoch: an aborted
    /// checkpoint's keys go straight into the next frozen list), so pruning never drops a key
    /// that a checkpoint still has to write.
    pub(super) fn prune_dirty(&mut self) {
        if self.dirty.len() <= 2 * self.resident_len() + self.counters.dirty_slack.get() {
            return;
        }
        // Once per key too: a key removed and written again in one epoch is listed twice.
        let keep: Vec<bool> = {
            let mut seen = rustc_hash::FxHashSet::default();
            self.dirty
                .iter()
                .map(|(ns, key)| {
                    let dirty = self
                        .spaces
                        .get(ns)
                        .and_then(|s| s.map.get(key))
                        .is_some_and(|slot| slot.state & DIRTY != 0);
                    dirty && seen.insert((ns, key))
                })
                .collect()
        };
        let mut kept = keep.into_iter();
        self.dirty.retain(|_| kept.next().unwrap_or(true));
    }

    /// Takes one frame of this table's state while the store is restored (oldest segment
    /// first): decoded now, applied with the next [`RESTORE_BATCH`] frames (see
    /// [`restore_flush`](Self::restore_flush)); the caller flushes at the end.
    pub(crate) fn restore_frame(&mut self, fr: &FrameRef<'_>) -> Result<(), AccessError> {
        let restored = self.decode_frame(fr)?;
        self.restoring.push(restored);
        if self.restoring.len() >= RESTORE_BATCH {
            self.restore_flush()?;
        }
        Ok(())
    }

    /// A restored frame as the table's types: namespace, key, value (`None` for a tombstone
    /// or an expired entry) and expiry.
    pub(super) fn decode_frame(
        &self,
        fr: &FrameRef<'_>,
    ) -> Result<(N, K, Option<V>, u64), AccessError> {
        let decode = |what: &'static str, reason: String| AccessError::Decode {
            state: self.ser.name.to_string(),
            what,
            reason,
        };
        let ns = crate::codec::decode_unaligned::<N>(fr.ns).map_err(|r| decode("namespace", r))?;
        let key = crate::codec::decode_unaligned::<K>(fr.key).map_err(|r| decode("key", r))?;
        let now = self.counters.now_ms.get();
        let gone = fr.head.kind == Kind::Tombstone || now_expired(fr.head.expires_ms, now);
        let value = if gone {
            None
        } else {
            let v = crate::codec::decode_unaligned::<V>(fr.value);
            Some(v.map_err(|r| decode("value", r))?)
        };
        Ok((ns, key, value, fr.head.expires_ms))
    }

    /// Applies the frames taken so far, in order. A restore inserts every entry at a random
    /// place of a large map, and a lookup's first load (the map's control bytes) missed the
    /// cache each time, one miss after another: the lookups of a whole batch go first, in a
    /// tight loop whose misses overlap, so the inserts after them find those bytes cached.
    pub(crate) fn restore_flush(&mut self) -> Result<(), AccessError> {
        let mut batch = std::mem::take(&mut self.restoring);
        for (ns, key, _, _) in &batch {
            self.prefetch(ns, key);
        }
        for (ns, key, value, expires_ms) in batch.drain(..) {
            self.restore_one(ns, key, value, expires_ms)?;
        }
        self.restoring = batch;
        Ok(())
    }

    /// Applies one restored entry (`None`: a tombstone or an expired entry): one lookup of
    /// the key (an entry of the map) when its namespace exists, which it does after the
    /// first entry for `()`.
    fn restore_one(
        &mut self,
        ns: N,
        key: K,
        value: Option<V>,
        expires_ms: u64,
    ) -> Result<(), AccessError> {
        let Some(value) = value else {
            if let Some(slot) = self.spaces.get_mut(&ns).and_then(|s| s.map.remove(&key)) {
                self.release(slot.weight as usize);
            }
            return Ok(());
        };
        let c = &self.counters;
        let full =
            |weight: usize| self.cfg.evictable && c.mem_used.get() + weight > c.mem_budget.get();
        let mut slot = Slot::restored(value, expires_ms);
        let weight = self.weight_of(&slot.value);
        let key = match self.spaces.get_mut(&ns) {
            None => key,
            Some(space) => match space.map.entry(key) {
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let old = o.get_mut();
                    old.value = slot.value;
                    old.expires_ms = expires_ms;
                    return Ok(());
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    if full(self.entry_bytes) {
                        self.resident_all = false;
                        space.complete = false;
                        return Ok(());
                    }
                    if full(weight) {
                        // `place` evicts first.
                        v.into_key()
                    } else {
                        slot.weight = weight.min(u32::MAX as usize) as u32;
                        self.weight_total += weight;
                        c.charge(weight);
                        space.persisted = true;
                        v.insert(slot);
                        return Ok(());
                    }
                }
            },
        };
        if full(self.entry_bytes) {
            self.resident_all = false;
            if let Some(space) = self.spaces.get_mut(&ns) {
                space.complete = false;
            }
            return Ok(());
        }
        self.place(&ns, key, slot)?;
        Ok(())
    }

    /// After a restore: the table now reflects the disk (or what fit of it).
    pub(crate) fn restore_done(&mut self, loaded_everything: bool) {
        self.resident_all = loaded_everything;
        for space in self.spaces.values_mut() {
            space.persisted = true;
            if self.resident_all {
                space.complete = true;
            }
        }
    }

    pub(crate) fn set_resident_all(&mut self, v: bool) {
        self.resident_all = v;
    }

    /// Sizes the first namespace's map for a restore of `entries` entries (as far as the
    /// budget allows), so that loading does not rehash.
    pub(crate) fn reserve_for_restore(&mut self, entries: usize) {
        let fit = self.counters.mem_budget.get() / self.entry_bytes.max(1);
        self.reserve_hint = entries.min(fit);
    }

    pub(crate) fn resident_all(&self) -> bool {
        self.resident_all
    }
}

impl<N: Ns, K: Ns, V: Codec> TableOps for TableData<N, K, V> {
    fn freeze(&mut self, checkpoint_id: u64) {
        assert_eq!(
            self.frozen_epoch, 0,
            "freeze while a frozen checkpoint is pending"
        );
        self.frozen_epoch = self.cur;
        self.frozen_id = checkpoint_id;
        self.frozen = std::mem::take(&mut self.dirty);
        self.frozen_at = 0;
        self.cur += 1;
        assert!(self.cur < EPOCH, "epoch counter overflow");
    }
    fn serialize_frozen(&mut self, out: &mut EntryBatch, max: usize) -> FaultResult<bool> {
        let end = (self.frozen_at + max).min(self.frozen.len());
        let (fe, cur) = (self.frozen_epoch, self.cur);
        for i in self.frozen_at..end {
            if (i - self.frozen_at) % PREFETCH_RUN == 0 {
                // Touch the next run's slots first, so that their cache misses overlap.
                for (ns, key) in &self.frozen[i..(i + PREFETCH_RUN).min(end)] {
                    self.prefetch(ns, key);
                }
            }
            let (ns, key) = &self.frozen[i];
            let Some(space) = self.spaces.get_mut(ns) else {
                continue;
            };
            let Some(slot) = space.map.get_mut(key) else {
                continue;
            };
            if slot.state & DIRTY == 0 || slot.state & EPOCH == cur {
                continue; // written already (duplicate key), or copied on write
            }
            self.ser.entry(ns, key, slot, self.frozen_id, out)?;
            slot.state = (slot.state & REF) | PERSISTED | fe;
            space.persisted = true;
        }
        self.frozen_at = end;
        let done = end == self.frozen.len();
        if done {
            out.append(&mut self.cow);
        }
        Ok(done)
    }
    fn finish_frozen(&mut self) {
        self.frozen_epoch = 0;
        self.frozen = Vec::new();
        self.frozen_at = 0;
        self.cow = EntryBatch::default();
    }
    fn abort_frozen(&mut self) {
        let mut frozen = std::mem::take(&mut self.frozen);
        self.dirty.append(&mut frozen);
        self.finish_frozen();
    }
}

impl<N, K, V> Drop for TableData<N, K, V> {
    fn drop(&mut self) {
        self.counters.release(self.weight_total);
    }
}
