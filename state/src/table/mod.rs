//! Tables: the hot tier. A table is one state of one operator, scoped by namespace and key,
//! holding typed Rust values in a two-level `FxHashMap` (namespace → key → slot), owned by
//! the operator. A resident hit costs one namespace lookup (free for `()`) and one key
//! lookup; writes compare one word of the slot (dirty in this epoch?) and set a clock bit.
//! Values are serialized only when a checkpoint writes them or eviction spills them.
//!
//! Checkpoints are copy-on-write, as in Flink's heap backend: `freeze` moves the dirty-key
//! list aside and bumps the epoch (O(1)); the store's writer then serializes the frozen
//! entries in chunks while records flow, and a write to a frozen entry that the writer has
//! not reached yet first serializes the old value into the table's copy-on-write batch.

use std::cell::{Cell, RefCell, RefMut};
use std::hash::Hash;
use std::rc::Rc;

use crate::codec::{Codec, Scratch};
use crate::error::{AccessError, Fault, FaultResult};
use crate::frame::{FrameRef, Kind, SortKey};
use crate::segment::EntryBatch;

/// Slot state bits: dirty (changed since it was last written), persisted (a version may be
/// on disk, so removing it needs a tombstone), referenced (clock bit for eviction); the low
/// bits are the epoch it was dirtied in, or for a clean slot the epoch it was written in.
const DIRTY: u32 = 1 << 31;
const PERSISTED: u32 = 1 << 30;
const REF: u32 = 1 << 29;
const EPOCH: u32 = REF - 1;

/// Restored frames decoded before they are applied together (`restore_flush`).
const RESTORE_BATCH: usize = 32;

/// A namespace map's capacity (entries) below which `prefetch` does nothing: a smaller map
/// stays in the caches, where touching an entry twice costs more than it saves. Capacity,
/// not length: a map reserved for a restore is large, and missed, from its first insert.
const PREFETCH_MIN_ENTRIES: usize = 1 << 15;

/// Entries touched together (`prefetch`) before they are used, by the checkpoint writer.
const PREFETCH_RUN: usize = 16;

/// Frozen entries the writer serializes per borrow of the table.
pub(crate) const SERIALIZE_CHUNK: usize = 4096;

/// How a table finds the key group of an entry: called only when the entry is written or
/// looked up on disk, never on a resident hit. A closure, so it can capture the job's number
/// of key groups.
pub type KeyGroupFn<N, K> = std::rc::Rc<dyn Fn(&N, &K) -> u32>;

/// Options of a table.
pub struct TableConfig<N, K, V> {
    /// The key group of an entry.
    pub key_group: KeyGroupFn<N, K>,
    /// Time to live in ms (0: forever). Flink's semantics: set on create and on write;
    /// expired entries are never returned.
    pub ttl_ms: u64,
    /// Whether entries may be evicted to disk under memory pressure (timers: no).
    pub evictable: bool,
    /// Heap bytes owned by a value (charged when the entry is created); `None`: only the
    /// entry's inline size is charged.
    pub weigh: Option<fn(&V) -> usize>,
}

impl<N, K, V> TableConfig<N, K, V> {
    /// A table whose entries belong to key group `key_group(ns, key)`.
    pub fn new(key_group: impl Fn(&N, &K) -> u32 + 'static) -> Self {
        TableConfig {
            key_group: std::rc::Rc::new(key_group),
            ttl_ms: 0,
            evictable: true,
            weigh: None,
        }
    }
    /// With a time to live.
    pub fn with_ttl_ms(mut self, ttl_ms: u64) -> Self {
        self.ttl_ms = ttl_ms;
        self
    }
}

impl<N, K, V> Clone for TableConfig<N, K, V> {
    fn clone(&self) -> Self {
        TableConfig {
            key_group: self.key_group.clone(),
            ttl_ms: self.ttl_ms,
            evictable: self.evictable,
            weigh: self.weigh,
        }
    }
}

/// Per-store counters every table reads without borrowing the store.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Bytes of resident entries (what eviction keeps under the budget).
    pub mem_used: Cell<usize>,
    /// Bytes of evicted entries waiting in memory for `Store::flush`.
    pub spill_pending: Cell<usize>,
    pub mem_budget: Cell<usize>,
    pub poisoned: Cell<bool>,
    pub now_ms: Cell<u64>,
    /// The last epoch whose checkpoint segment is searchable.
    pub registered_epoch: Cell<u32>,
    /// Checkpoint id that frames spilled now belong to.
    pub tag: Cell<u64>,
    /// No segment exists: a miss is an absent key.
    pub disk_empty: Cell<bool>,
    /// Entries written over a version that may be on disk (an estimate of dead entries).
    pub superseded: Cell<u64>,
    /// Some entry is not in memory (evicted, or not loaded by a restore), so lookups may
    /// read segments: only then is a newly written segment worth reading ahead.
    pub evicted: Cell<bool>,
    /// `StoreConfig::dirty_list_slack`.
    pub dirty_slack: Cell<usize>,
}

impl Counters {
    pub fn charge(&self, bytes: usize) {
        self.mem_used.set(self.mem_used.get() + bytes);
    }
    pub fn release(&self, bytes: usize) {
        self.mem_used.set(self.mem_used.get().saturating_sub(bytes));
    }
    pub fn spill_add(&self, bytes: usize) {
        self.spill_pending.set(self.spill_pending.get() + bytes);
    }
    pub fn spill_done(&self, bytes: usize) {
        self.spill_pending
            .set(self.spill_pending.get().saturating_sub(bytes));
    }
    /// The dirty list's length below which `push_dirty` never prunes it: four times the
    /// slack.
    pub fn dirty_floor(&self) -> usize {
        4 * self.dirty_slack.get()
    }
}

/// An entry found on disk.
pub(crate) enum Found {
    Absent,
    Put { value: Scratch, expires_ms: u64 },
}

/// What tables need from their store on the slow paths (a trait object, so tables do not
/// carry the store's disk type).
pub(crate) trait StoreLink {
    fn poison_message(&self) -> String;
    fn lookup(&self, sort: &SortKey, ns: &[u8], key: &[u8]) -> FaultResult<Found>;
    /// Every frame of a namespace of a state, newest segment first, with ns drops applied.
    fn scan_ns(
        &self,
        state: u32,
        ns: &[u8],
        f: &mut dyn FnMut(&FrameRef<'_>) -> FaultResult<()>,
    ) -> FaultResult<()>;
    fn may_have_ns(&self, state: u32, ns_hash: u64) -> bool;
    fn spill(&self, batch: EntryBatch) -> FaultResult<()>;
    fn drop_ns(&self, state: u32, ns: Vec<u8>);
}

/// What the store's checkpoint writer needs from a table.
pub(crate) trait TableOps {
    fn freeze(&mut self, checkpoint_id: u64);
    /// Serializes up to `max` frozen entries into `out`; true when all are done.
    fn serialize_frozen(&mut self, out: &mut EntryBatch, max: usize) -> FaultResult<bool>;
    fn finish_frozen(&mut self);
    fn abort_frozen(&mut self);
}

/// What the store's background load needs from a table (see `warm.rs`).
pub(crate) trait WarmOps {
    /// Takes one restored frame (segments newest first); false when the load must stop.
    fn warm_frame(&mut self, fr: &FrameRef<'_>) -> Result<bool, AccessError>;
    /// Applies the frames taken so far: at the end of each step, before the job runs again
    /// (a frame kept for later would be applied after a drop of its namespace, say).
    fn warm_apply(&mut self);
    /// Ends the load, after `every_frame` of the table (or not); returns whether the table
    /// is now resident in full.
    fn warm_end(&mut self, every_frame: bool) -> bool;
}

struct Slot<V> {
    value: Option<V>,
    expires_ms: u64,
    state: u32,
    weight: u32,
}

impl<V> Slot<V> {
    /// The clean slot of an entry read from disk (its weight is set when it is placed).
    fn restored(value: V, expires_ms: u64) -> Self {
        Slot {
            value: Some(value),
            expires_ms,
            state: PERSISTED,
            weight: 0,
        }
    }
}

/// Serialization scratch and identity, apart from the maps so both can be borrowed at once.
struct Ser<N, K> {
    superseded: Rc<Counters>,
    state: u32,
    name: Rc<str>,
    key_group: KeyGroupFn<N, K>,
    ns: Scratch,
    key: Scratch,
    value: Scratch,
}

fn encode_fault(name: &str, what: &str, e: String) -> Fault {
    Fault::io(
        "serialize entry",
        std::path::Path::new(name),
        std::io::Error::other(format!("{what}: {e}")),
    )
}

impl<N: Codec, K: Codec> Ser<N, K> {
    /// Serializes namespace and key into the scratch buffers and returns the sort key.
    fn keys(&mut self, ns: &N, key: &K) -> FaultResult<SortKey> {
        ns.encode(&mut self.ns)
            .map_err(|e| encode_fault(&self.name, "namespace", e))?;
        key.encode(&mut self.key)
            .map_err(|e| encode_fault(&self.name, "key", e))?;
        let kg = (self.key_group)(ns, key);
        Ok(SortKey::of(self.state, kg, &self.ns, &self.key))
    }
    fn entry<V: Codec>(
        &mut self,
        ns: &N,
        key: &K,
        slot: &Slot<V>,
        tag: u64,
        out: &mut EntryBatch,
    ) -> FaultResult<()> {
        if slot.state & PERSISTED != 0 {
            let c = &self.superseded.superseded;
            c.set(c.get() + 1);
        }
        let sort = self.keys(ns, key)?;
        let kind = match &slot.value {
            Some(v) => {
                v.encode(&mut self.value)
                    .map_err(|e| encode_fault(&self.name, "value", e))?;
                Kind::Put
            }
            None => {
                self.value.clear();
                Kind::Tombstone
            }
        };
        out.push(
            sort,
            kind,
            slot.expires_ms,
            tag,
            &self.ns,
            &self.key,
            &self.value,
        );
        Ok(())
    }
}

/// The contents of a table; operators reach it through [`Table::lock`].
pub struct TableData<N, K, V> {
    spaces: Spaces<N, K, V>,
    ser: Ser<N, K>,
    cfg: TableConfig<N, K, V>,
    counters: Rc<Counters>,
    store: Rc<dyn StoreLink>,
    cur: u32,
    frozen_epoch: u32,
    frozen_id: u64,
    dirty: Vec<(N, K)>,
    frozen: Vec<(N, K)>,
    frozen_at: usize,
    cow: EntryBatch,
    entry_bytes: usize,
    weight_total: usize,
    /// No entry of this table lives only on disk.
    resident_all: bool,
    /// A namespace is being loaded: no eviction until it is complete.
    loading: bool,
    /// Entries a restore will load: the capacity of the first namespace's map.
    reserve_hint: usize,
    /// Restored entries decoded and not yet applied (see `restore_flush`).
    restoring: Vec<(N, K, Option<V>, u64)>,
    /// The dirty list's length at which it is pruned next.
    dirty_prune_at: usize,
    /// The namespace (index in `spaces`) where the last eviction stopped: the next starts there.
    evict_space: usize,
    /// A background load of the restored entries, while it runs.
    warm: Option<Box<Warm<N, K, V>>>,
}

/// A table handle: the operator keeps it and borrows its contents once per batch.
pub struct Table<N, K, V> {
    inner: Rc<RefCell<TableData<N, K, V>>>,
}

impl<N, K, V> Clone for Table<N, K, V> {
    fn clone(&self) -> Self {
        Table {
            inner: self.inner.clone(),
        }
    }
}

/// A namespace key: namespaces are `()` for plain keyed state, a window for window state.
pub trait Ns: Codec + Eq + Hash + Clone {}
impl<T: Codec + Eq + Hash + Clone> Ns for T {}

impl<N: Ns, K: Ns, V: Codec> Table<N, K, V> {
    pub(crate) fn new(
        state: u32,
        name: &str,
        cfg: TableConfig<N, K, V>,
        counters: Rc<Counters>,
        store: Rc<dyn StoreLink>,
        epoch: u32,
    ) -> Table<N, K, V> {
        let entry_bytes = std::mem::size_of::<(K, Slot<V>)>() * 8 / 7 + 1;
        let dirty_prune_at = counters.dirty_floor();
        let data = TableData {
            spaces: Spaces::default(),
            ser: Ser {
                superseded: counters.clone(),
                state,
                name: name.into(),
                key_group: cfg.key_group.clone(),
                ns: Scratch::new(),
                key: Scratch::new(),
                value: Scratch::new(),
            },
            resident_all: counters.disk_empty.get(),
            cfg,
            counters,
            store,
            cur: epoch,
            frozen_epoch: 0,
            frozen_id: 0,
            dirty: Vec::new(),
            frozen: Vec::new(),
            frozen_at: 0,
            cow: EntryBatch::default(),
            entry_bytes,
            weight_total: 0,
            loading: false,
            reserve_hint: 0,
            restoring: Vec::new(),
            dirty_prune_at,
            evict_space: 0,
            warm: None,
        };
        Table {
            inner: Rc::new(RefCell::new(data)),
        }
    }
    pub(crate) fn ops(&self) -> Rc<RefCell<dyn TableOps>>
    where
        N: 'static,
        K: 'static,
    {
        self.inner.clone()
    }
    pub(crate) fn warm_ops(&self) -> Rc<RefCell<dyn WarmOps>>
    where
        N: 'static,
        K: 'static,
    {
        self.inner.clone()
    }
}

impl<N, K, V> Table<N, K, V> {
    /// Borrows the table's contents (once per batch; panics if already borrowed, which is a
    /// programming error: the checkpoint writer borrows only between batches).
    pub fn lock(&self) -> RefMut<'_, TableData<N, K, V>> {
        self.inner.borrow_mut()
    }
}

fn now_expired(expires_ms: u64, now_ms: u64) -> bool {
    expires_ms != 0 && expires_ms <= now_ms
}

impl<N: Ns, K: Ns, V: Codec> TableData<N, K, V> {
    #[inline]
    fn check(&self) -> Result<(), AccessError> {
        if self.counters.poisoned.get() {
            return Err(AccessError::Poisoned(self.store.poison_message()));
        }
        Ok(())
    }

    #[inline]
    fn expiry(&self) -> u64 {
        if self.cfg.ttl_ms == 0 {
            0
        } else {
            self.counters.now_ms.get().saturating_add(self.cfg.ttl_ms)
        }
    }

    /// Looks up a resident, live slot (the hot path: no I/O, no allocation).
    #[inline]
    fn resident(&mut self, ns: &N, key: &K) -> Option<*mut Slot<V>> {
        let slot = self.spaces.get_mut(ns)?.map.get_mut(key)?;
        if slot.expires_ms != 0 && now_expired(slot.expires_ms, self.counters.now_ms.get()) {
            return None;
        }
        Some(slot as *mut Slot<V>)
    }

    /// Marks a slot dirty in the current epoch; copies a frozen value first (copy-on-write).
    #[cold]
    fn touch(&mut self, ns: &N, key: &K) -> FaultResult<()> {
        let Some(space) = self.spaces.get_mut(ns) else {
            return Ok(());
        };
        let Some(slot) = space.map.get_mut(key) else {
            return Ok(());
        };
        if slot.state & DIRTY != 0 && slot.state & EPOCH != self.cur && self.frozen_epoch != 0 {
            self.ser
                .entry(ns, key, slot, self.frozen_id, &mut self.cow)?;
            // The old value goes to disk with the frozen checkpoint: removing this entry
            // later needs a tombstone (found by the extended crash-image run, seed 42).
            slot.state |= PERSISTED;
            space.persisted = true;
        }
        slot.state = (slot.state & (PERSISTED | REF)) | DIRTY | self.cur;
        self.push_dirty(ns, key);
        Ok(())
    }

    #[inline]
    fn slot_for_write(&mut self, ns: &N, key: &K) -> Result<Option<&mut Slot<V>>, AccessError> {
        let p = match self.resident(ns, key) {
            Some(p) => p,
            None => match self.miss(ns, key)? {
                Some(slot) => slot as *mut Slot<V>,
                None => return Ok(None),
            },
        };
        // Why a pointer: returning the reference found by the hit path directly is rejected
        // by today's borrow checker on the miss branch (NLL problem case #3); the safe
        // alternative is a second hash lookup on every hit.
        // SAFETY: `p` points into `self.spaces`, from a `&mut self` borrow that has ended;
        // nothing touched the maps since, so the slot is there and nothing else refers to it.
        let state = unsafe { (*p).state };
        if state & (DIRTY | EPOCH) != DIRTY | self.cur {
            self.touch(ns, key)?;
        }
        // SAFETY: `touch` only changes fields of existing slots and pushes to `self.dirty`;
        // it never inserts into or removes from the maps, so `p` is still valid and unique.
        let slot = unsafe { &mut *p };
        if slot.state & REF == 0 {
            slot.state |= REF;
        }
        if self.cfg.ttl_ms != 0 {
            slot.expires_ms = self.expiry();
        }
        Ok(Some(slot))
    }

    /// Touches the entry of `key` in `ns` if it is resident, changing nothing: a hint that
    /// it is accessed soon. A run of these overlaps the cache misses of a large table, which
    /// one access after another would take in turn.
    /// Does nothing while the namespace's map is small enough to stay cached.
    #[inline]
    pub fn prefetch(&self, ns: &N, key: &K) {
        let Some(space) = self.spaces.get(ns) else {
            return;
        };
        if space.map.capacity() < PREFETCH_MIN_ENTRIES {
            return;
        }
        if let Some(slot) = space.map.get(key) {
            std::hint::black_box(slot.state);
        }
    }

    /// The value of `key` in `ns`, if any.
    #[inline]
    pub fn get(&mut self, ns: &N, key: &K) -> Result<Option<&V>, AccessError> {
        self.check()?;
        let Some(p) = self.resident(ns, key) else {
            return Ok(self.miss(ns, key)?.and_then(|s| s.value.as_ref()));
        };
        // SAFETY: as in `slot_for_write`: `p` comes from a finished `&mut self` borrow of the
        // maps and nothing changed them since.
        let slot = unsafe { &mut *p };
        if slot.state & REF == 0 {
            slot.state |= REF; // written only when clear: reads dirty no cache line
        }
        Ok(slot.value.as_ref())
    }

    /// The value of `key` in `ns` for updating in place, if any.
    #[inline]
    pub fn get_mut(&mut self, ns: &N, key: &K) -> Result<Option<&mut V>, AccessError> {
        self.check()?;
        Ok(self.slot_for_write(ns, key)?.and_then(|s| s.value.as_mut()))
    }

    /// The value of `key` in `ns`, inserting `f()` if there is none.
    #[inline]
    pub fn get_or_insert_with(
        &mut self,
        ns: &N,
        key: K,
        f: impl FnOnce() -> V,
    ) -> Result<&mut V, AccessError> {
        self.check()?;
        let p = match self.slot_for_write(ns, &key)? {
            Some(slot) => slot as *mut Slot<V>,
            None => {
                let slot = self.new_slot(ns, key, f())?;
                return Ok(slot_value(slot));
            }
        };
        // SAFETY: `p` comes from the `&mut self` borrow just ended; no map changed since.
        let slot = unsafe { &mut *p };
        if slot.value.is_none() {
            slot.value = Some(f());
        }
        Ok(slot_value(slot))
    }

    /// Sets the value of `key` in `ns` (no read of the old value, even from disk).
    pub fn insert(&mut self, ns: &N, key: K, value: V) -> Result<(), AccessError> {
        self.check()?;
        if let Some(p) = self.resident(ns, &key) {
            // SAFETY: `p` comes from the finished `&mut self` borrow in `resident`.
            let state = unsafe { (*p).state };
            if state & (DIRTY | EPOCH) != DIRTY | self.cur {
                self.touch(ns, &key)?;
            }
            // SAFETY: `touch` changes no map, so `p` is still valid and unique.
            let slot = unsafe { &mut *p };
            slot.value = Some(value);
            slot.state |= REF;
            slot.expires_ms = self.expiry();
            return Ok(());
        }
        self.drop_expired(ns, &key)?;
        self.new_slot(ns, key, value)?;
        Ok(())
    }

    /// Removes `key` from `ns` (a tombstone if a version may be on disk).
    pub fn remove(&mut self, ns: &N, key: &K) -> Result<(), AccessError> {
        self.check()?;
        self.drop_expired(ns, key)?;
        let on_disk_unknown = !self.space_complete(ns);
        let (cur, frozen) = (self.cur, self.frozen_epoch != 0);
        let resident = self
            .spaces
            .get(ns)
            .and_then(|s| s.map.get(key))
            .map(|slot| {
                let frozen_pending = slot.state & DIRTY != 0 && slot.state & EPOCH != cur && frozen;
                slot.state & PERSISTED != 0 || frozen_pending
            });
        match resident {
            Some(true) => {
                self.touch(ns, key)?;
                if let Some(slot) = self.spaces.get_mut(ns).and_then(|s| s.map.get_mut(key)) {
                    slot.value = None;
                    slot.state |= PERSISTED;
                }
            }
            Some(false) => {
                if let Some(slot) = self.spaces.get_mut(ns).and_then(|s| s.map.remove(key)) {
                    self.release(slot.weight as usize);
                }
            }
            None if on_disk_unknown => self.put_tombstone(ns, key.clone())?,
            None => {}
        }
        Ok(())
    }

    /// Whether `key` has a value in `ns`.
    pub fn contains(&mut self, ns: &N, key: &K) -> Result<bool, AccessError> {
        Ok(self.get(ns, key)?.is_some())
    }

    /// Calls `f` for every entry of `ns` (loading evicted ones first).
    pub fn for_each_in_namespace(
        &mut self,
        ns: &N,
        mut f: impl FnMut(&K, &V),
    ) -> Result<(), AccessError> {
        self.check()?;
        self.load_namespace(ns)?;
        let now = self.counters.now_ms.get();
        if let Some(space) = self.spaces.get(ns) {
            for (k, slot) in &space.map {
                if let Some(v) = &slot.value {
                    if !now_expired(slot.expires_ms, now) {
                        f(k, v);
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes every entry of `ns` and returns them (a window firing: emit, then forget).
    pub fn take_namespace(&mut self, ns: &N) -> Result<Vec<(K, V)>, AccessError> {
        let mut out = Vec::new();
        self.take_namespace_into(ns, &mut out)?;
        Ok(out)
    }

    /// [`take_namespace`](Self::take_namespace) appending to `out`, a buffer the caller keeps
    /// from one firing to the next (a fresh vector per window would fault in new pages).
    pub fn take_namespace_into(
        &mut self,
        ns: &N,
        out: &mut Vec<(K, V)>,
    ) -> Result<(), AccessError> {
        self.check()?;
        self.load_namespace(ns)?;
        let now = self.counters.now_ms.get();
        out.reserve(self.spaces.get(ns).map_or(0, |s| s.map.len()));
        self.drop_namespace_with(ns, |k, slot| {
            if let Some(v) = slot.value {
                if !now_expired(slot.expires_ms, now) {
                    out.push((k, v));
                }
            }
        })
    }

    /// Removes every entry of `ns`: O(1) per resident entry, plus one namespace tombstone if
    /// some of them may be on disk (no per-key tombstones, no reads).
    pub fn drop_namespace(&mut self, ns: &N) -> Result<(), AccessError> {
        self.check()?;
        self.drop_namespace_with(ns, |_, _| {})
    }

    /// The resident namespaces.
    pub fn namespaces(&self) -> impl Iterator<Item = &N> {
        self.spaces.keys()
    }

    /// Resident entries (tombstones included).
    pub fn resident_len(&self) -> usize {
        self.spaces.values().map(|s| s.map.len()).sum()
    }

    fn release(&mut self, weight: usize) {
        self.weight_total = self.weight_total.saturating_sub(weight);
        self.counters.release(weight);
    }

    fn space_complete(&self, ns: &N) -> bool {
        if self.resident_all {
            return true;
        }
        self.spaces.get(ns).is_some_and(|s| s.complete)
    }

    /// A resident but expired slot is removed (a tombstone if it may be on disk).
    fn drop_expired(&mut self, ns: &N, key: &K) -> FaultResult<()> {
        let now = self.counters.now_ms.get();
        let expired = self
            .spaces
            .get(ns)
            .and_then(|s| s.map.get(key))
            .is_some_and(|s| now_expired(s.expires_ms, now));
        if !expired {
            return Ok(());
        }
        self.touch(ns, key)?;
        if let Some(space) = self.spaces.get_mut(ns) {
            if let Some(slot) = space.map.get_mut(key) {
                slot.value = None;
                slot.expires_ms = 0;
                slot.state |= PERSISTED;
            }
        }
        Ok(())
    }

    /// The slow path of a lookup: expired, or not resident.
    #[cold]
    fn miss(&mut self, ns: &N, key: &K) -> Result<Option<&mut Slot<V>>, AccessError> {
        // A resident slot here is expired (dropped now) or a tombstone: no value either way.
        // (One lookup: a key seen for the first time, the common miss, costs no second one.)
        if let Some(slot) = self.spaces.get(ns).and_then(|s| s.map.get(key)) {
            if now_expired(slot.expires_ms, self.counters.now_ms.get()) {
                self.drop_expired(ns, key)?;
            }
            debug_assert!(
                self.spaces
                    .get(ns)
                    .and_then(|s| s.map.get(key))
                    .is_some_and(|s| s.value.is_none())
            );
            return Ok(None);
        }
        if self.space_complete(ns) {
            return Ok(None);
        }
        let sort = self.ser.keys(ns, key)?;
        let found = self.store.lookup(&sort, &self.ser.ns, &self.ser.key)?;
        let Found::Put { value, expires_ms } = found else {
            return Ok(None);
        };
        if now_expired(expires_ms, self.counters.now_ms.get()) {
            return Ok(None);
        }
        let value = V::decode(value.as_slice()).map_err(|reason| AccessError::Decode {
            state: self.ser.name.to_string(),
            what: "value",
            reason,
        })?;
        let slot = Slot {
            value: Some(value),
            expires_ms,
            state: PERSISTED | REF,
            weight: 0,
        };
        Ok(Some(self.place(ns, key.clone(), slot)?))
    }

    /// A new dirty entry.
    fn new_slot(&mut self, ns: &N, key: K, value: V) -> Result<&mut Slot<V>, AccessError> {
        let persisted = if self.counters.disk_empty.get() {
            0
        } else {
            PERSISTED
        };
        let slot = Slot {
            value: Some(value),
            expires_ms: self.expiry(),
            state: DIRTY | REF | persisted | self.cur,
            weight: 0,
        };
        self.place(ns, key, slot)
    }

    fn put_tombstone(&mut self, ns: &N, key: K) -> Result<(), AccessError> {
        let slot = Slot {
            value: None,
            expires_ms: 0,
            state: DIRTY | PERSISTED | self.cur,
            weight: 0,
        };
        self.place(ns, key, slot)?;
        Ok(())
    }

    /// Notes a key dirtied in this epoch. Without checkpoints (which take the list) the list
    /// would keep every key ever written, removed ones too — a timer per record, say — so it
    /// is pruned to the dirty slots whenever it has doubled since the last prune (and by
    /// `evict`). A prune keeps only keys with a dirty slot, so a new slot's key is listed by
    /// `place` once that slot's eviction is done, just before it is inserted: listed before
    /// the eviction, it was dropped by the eviction's prune and the slot, placed after it,
    /// missed the next checkpoint. Pruning before the push keeps the new key likewise.
    #[inline]
    fn push_dirty(&mut self, ns: &N, key: &K) {
        if self.dirty.len() >= self.dirty_prune_at {
            self.prune_dirty();
            self.dirty_prune_at = 2 * self.dirty.len() + self.counters.dirty_floor();
        }
        self.dirty.push((ns.clone(), key.clone()));
    }

    /// The bytes an entry holding `value` is charged: the slot, and the value's heap as the
    /// table's weigher counts it.
    pub(crate) fn weight_of(&self, value: &Option<V>) -> usize {
        let heap = match (value, self.cfg.weigh) {
            (Some(v), Some(w)) => w(v),
            _ => 0,
        };
        self.entry_bytes + heap
    }

    /// Inserts a slot for a key that is not resident, charging its weight (and evicting
    /// first when over the budget).
    fn place(&mut self, ns: &N, key: K, mut slot: Slot<V>) -> Result<&mut Slot<V>, AccessError> {
        let weight = self.weight_of(&slot.value);
        slot.weight = weight.min(u32::MAX as usize) as u32;
        let c = &self.counters;
        if self.cfg.evictable && !self.loading && c.mem_used.get() + weight > c.mem_budget.get() {
            self.evict()?;
        }
        // Listed after the eviction, whose prune would drop a key with no slot yet.
        if slot.state & DIRTY != 0 {
            self.push_dirty(ns, &key);
        }
        self.weight_total += weight;
        self.counters.charge(weight);
        if !self.spaces.contains_key(ns) {
            let complete = self.resident_all || {
                let sort = self.ser.keys(ns, &key)?;
                !self.store.may_have_ns(self.ser.state, sort.ns_hash)
            };
            let hint = std::mem::take(&mut self.reserve_hint);
            let space = Space {
                map: self.spaces.new_map(hint),
                complete,
                persisted: !complete,
                hand: 0,
            };
            self.spaces.insert(ns.clone(), space);
        }
        let Some(space) = self.spaces.get_mut(ns) else {
            unreachable!("namespace inserted above")
        };
        if slot.state & PERSISTED != 0 {
            space.persisted = true;
        }
        Ok(space.map.entry(key).insert_entry(slot).into_mut())
    }

    /// Loads every entry of `ns` that lives only on disk, so the namespace is complete.
    fn load_namespace(&mut self, ns: &N) -> Result<(), AccessError> {
        if self.space_complete(ns) {
            return Ok(());
        }
        // Loading places entries without evicting (the namespace must be whole when it is
        // read), so make room first: otherwise reading namespaces one after another (map
        // state, key after key) would grow past the budget until the next write.
        let c = &self.counters;
        if self.cfg.evictable && c.mem_used.get() > c.mem_budget.get() {
            self.evict()?;
        }
        let mut ns_bytes = Scratch::new();
        ns.encode(&mut ns_bytes)
            .map_err(|e| AccessError::from(encode_fault(&self.ser.name, "namespace", e)))?;
        let mut found: Vec<(K, Option<V>, u64)> = Vec::new();
        let mut seen = rustc_hash::FxHashSet::default();
        let name = self.ser.name.clone();
        let mut decode_err = None;
        self.store.scan_ns(self.ser.state, &ns_bytes, &mut |fr| {
            if !seen.insert((fr.head.sort.key_hash, fr.key.to_vec())) {
                return Ok(()); // an older version
            }
            let key = crate::codec::decode_unaligned::<K>(fr.key);
            let value = match fr.head.kind {
                Kind::Put => crate::codec::decode_unaligned::<V>(fr.value).map(Some),
                Kind::Tombstone => Ok(None),
            };
            match (key, value) {
                (Ok(k), Ok(v)) => found.push((k, v, fr.head.expires_ms)),
                (Err(reason), _) | (_, Err(reason)) => decode_err = Some(reason),
            }
            Ok(())
        })?;
        if let Some(reason) = decode_err {
            return Err(AccessError::Decode {
                state: name.to_string(),
                what: "entry",
                reason,
            });
        }
        let now = self.counters.now_ms.get();
        self.loading = true;
        let placed = self.place_all(ns, found, now);
        self.loading = false;
        placed?;
        if let Some(space) = self.spaces.get_mut(ns) {
            space.complete = true;
        }
        Ok(())
    }

    fn place_all(
        &mut self,
        ns: &N,
        found: Vec<(K, Option<V>, u64)>,
        now: u64,
    ) -> Result<(), AccessError> {
        for (k, v, expires_ms) in found {
            let resident = self.spaces.get(ns).is_some_and(|s| s.map.contains_key(&k));
            if resident || v.is_none() || now_expired(expires_ms, now) {
                continue;
            }
            let slot = Slot {
                value: v,
                expires_ms,
                state: PERSISTED,
                weight: 0,
            };
            self.place(ns, k, slot)?;
        }
        Ok(())
    }

    fn drop_namespace_with(
        &mut self,
        ns: &N,
        mut f: impl FnMut(K, Slot<V>),
    ) -> Result<(), AccessError> {
        let complete = self.space_complete(ns);
        let Some(mut space) = self.spaces.remove(ns) else {
            if !complete {
                self.drop_ns_on_disk(ns)?;
            }
            return Ok(());
        };
        let frozen_pending = self.frozen_epoch != 0;
        let mut freed = 0usize;
        let mut failed = None;
        for (k, slot) in space.map.drain() {
            let dirty_frozen = slot.state & DIRTY != 0 && slot.state & EPOCH != self.cur;
            if frozen_pending && dirty_frozen && failed.is_none() {
                if let Err(e) = self.ser.entry(ns, &k, &slot, self.frozen_id, &mut self.cow) {
                    failed = Some(e);
                }
            }
            freed += slot.weight as usize;
            f(k, slot);
        }
        self.spaces.recycle(std::mem::take(&mut space.map));
        self.release(freed);
        if let Some(e) = failed {
            return Err(e.into());
        }
        if space.persisted || !space.complete || frozen_pending {
            self.drop_ns_on_disk(ns)?;
        }
        Ok(())
    }

    fn drop_ns_on_disk(&mut self, ns: &N) -> Result<(), AccessError> {
        let mut ns_bytes = Scratch::new();
        ns.encode(&mut ns_bytes)
            .map_err(|e| AccessError::from(encode_fault(&self.ser.name, "namespace", e)))?;
        self.store
            .drop_ns(self.ser.state, ns_bytes.as_slice().to_vec());
        Ok(())
    }
}

fn slot_value<V>(slot: &mut Slot<V>) -> &mut V {
    match &mut slot.value {
        Some(v) => v,
        None => unreachable!("a slot just given a value has one"),
    }
}

mod evict;
mod spaces;
mod warm;

use spaces::{Space, Spaces};
use warm::Warm;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::sim::SimDisk;
    use crate::{Store, StoreConfig, TableConfig};

    /// Without checkpoints nothing takes the dirty list: written-then-removed keys (a timer
    /// per record) and keys removed and written again must not pile up in it.
    #[test]
    fn without_checkpoints_the_dirty_list_stays_near_the_dirty_entries() {
        let cfg = StoreConfig {
            key_groups: (0, 0),
            ..StoreConfig::default()
        };
        let store = Store::open(SimDisk::default(), Path::new("/t"), cfg, None).unwrap();
        let table = store
            .table::<(), u64, u64>("churn", TableConfig::new(|_: &(), _: &u64| 0))
            .unwrap();
        let mut t = table.lock();
        for i in 0..200_000u64 {
            t.insert(&(), i, i).unwrap();
            if i >= 100 {
                t.remove(&(), &(i - 100)).unwrap();
            }
            t.insert(&(), u64::MAX, i).unwrap();
            t.remove(&(), &u64::MAX).unwrap();
        }
        assert_eq!(t.resident_len(), 100);
        // The list's floor is four times the slack (the default's).
        let floor = 4 * StoreConfig::default().dirty_list_slack;
        assert!(t.dirty.len() < 3 * floor, "{}", t.dirty.len());
        assert!(t.dirty_prune_at < 4 * floor);
        drop(t);
        // What the pruned list still names is what a checkpoint writes.
        futures_lite::future::block_on(store.checkpoint(1)).unwrap();
        drop(table);
        let disk = store.shared.disk.clone();
        drop(store);
        let cfg = StoreConfig {
            key_groups: (0, 0),
            ..StoreConfig::default()
        };
        let store = Store::open(disk, Path::new("/t"), cfg, Some(1)).unwrap();
        let table = store
            .table::<(), u64, u64>("churn", TableConfig::new(|_: &(), _: &u64| 0))
            .unwrap();
        store.warm_all().unwrap();
        let mut t = table.lock();
        assert_eq!(t.resident_len(), 100);
        for i in 199_900..200_000u64 {
            assert_eq!(t.get(&(), &i).unwrap(), Some(&i));
        }
        assert_eq!(t.get(&(), &u64::MAX).unwrap(), None);
    }

    /// The clock's hand goes round the whole table: entries written once and never used
    /// again are all evicted as new ones arrive, wherever their buckets are. (Sweeps that
    /// started at the map's first bucket each time never reached its back: entries there
    /// stayed resident whatever their use, and the back of the table filled up.)
    #[test]
    fn eviction_goes_round_the_whole_table() {
        let cfg = StoreConfig {
            memory_budget_bytes: 64 << 10,
            key_groups: (0, 0),
            ..StoreConfig::default()
        };
        let store = Store::open(SimDisk::default(), Path::new("/t"), cfg, None).unwrap();
        let table = store
            .table::<(), u64, u64>("once", TableConfig::new(|_: &(), _: &u64| 0))
            .unwrap();
        let first = {
            let mut t = table.lock();
            let mut k = 0;
            while t.resident_len() == k as usize {
                t.insert(&(), k, k).unwrap();
                k += 1;
            }
            k - 1 // entries placed before the first eviction
        };
        for batch in 0..40u64 {
            {
                let mut t = table.lock();
                for i in 0..first {
                    let k = first + batch * first + i;
                    t.insert(&(), k, k).unwrap();
                }
            }
            futures_lite::future::block_on(store.flush()).unwrap();
        }
        let t = table.lock();
        let space = t.spaces.get(&()).unwrap();
        let left = (0..first).filter(|k| space.map.contains_key(k)).count();
        assert_eq!(
            left, 0,
            "of the first {first} entries, {left} were never evicted"
        );
    }
}
