//! The store: one per worker, in its own directory. It owns the segments (their sparse
//! indexes, bloom filters and files), the state registry and the namespace drops, and it
//! answers the tables' slow paths (lookups of evicted entries, spills). Checkpoints are in
//! `checkpoint.rs`, compaction, savepoints and key-group restores in `maintain.rs`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

use rustc_hash::FxHashMap;
use xxhash_rust::xxh3::xxh3_64;

use crate::codec::Codec;
use crate::codec::Scratch;
use crate::disk::{Disk, DiskReader};
use crate::error::{AccessError, Fault, FaultResult, OpenError};
use crate::frame::{FrameRef, Kind, SortKey};
use crate::manifest::{self, Manifest, NsDropRec};
use crate::segment::{self, EntryBatch, SCAN_AHEAD_BYTES, SegIndex, SegmentBuilder, Source};
use crate::table::{Counters, Found, Ns, StoreLink, Table, TableConfig, TableOps};
use crate::warm::{Part, Restore, WARM_STEP_BYTES, WarmJob};

/// The store's identity file: non-empty, so that glommio's O_DIRECT probe reads real blocks.
pub const IDENTITY_FILE: &str = "STORE";
const IDENTITY_BYTES: usize = 4096;

/// Options of a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Bytes of resident entries (and evicted ones not yet written) the store aims to keep.
    pub memory_budget_bytes: usize,
    /// Checkpoints whose segments are kept (Flink's `state.checkpoints.num-retained`).
    pub retained_checkpoints: usize,
    /// The key groups this store holds, inclusive (namespace drops apply to them).
    pub key_groups: (u32, u32),
    /// Compaction merges the segments once there are more than this many. A flush merges
    /// them itself once there are more than twice this many (the compactor fell behind).
    pub segments_max: usize,
    /// What registering a restored table loads into memory, and when.
    pub restore: Restore,
    /// Listings a table's dirty-key list may hold beyond twice its resident entries (keys
    /// evicted or removed since they were written, which no checkpoint has taken yet) before
    /// it is pruned. Tests lower it so that prunes are frequent.
    pub dirty_list_slack: usize,
    /// Bytes of a segment one step of a background load reads (it ends at the next 4 KiB
    /// fence past them). Tests lower it so that steps end within small segments.
    pub warm_step_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            memory_budget_bytes: 256 << 20,
            retained_checkpoints: 3,
            key_groups: (0, u32::MAX),
            segments_max: 8,
            restore: Restore::default(),
            dirty_list_slack: 1024,
            warm_step_bytes: WARM_STEP_BYTES,
        }
    }
}

/// What a frozen checkpoint will write.
pub(crate) struct FrozenMeta {
    pub checkpoint_id: u64,
    pub order: u64,
    pub segment_id: u64,
    pub epoch: u32,
    pub segments: Vec<u64>,
    pub ns_drops: Vec<NsDropRec>,
    pub states: Vec<(String, u32)>,
}

pub(crate) struct Core<R> {
    pub segments: Vec<SegIndex<R>>,
    pub states: BTreeMap<String, u32>,
    pub next_order: u64,
    pub next_segment_id: u64,
    pub last_checkpoint: u64,
    pub last_frozen: u64,
    pub ns_drops: FxHashMap<(u32, u64), Vec<NsDropRec>>,
    pub tables: Vec<(String, Weak<RefCell<dyn TableOps>>)>,
    pub frozen: Option<FrozenMeta>,
    pub writing: bool,
    pub compacting: bool,
    /// Merges finished, and the bytes they read and wrote (see [`StoreStats`]).
    pub compactions: u64,
    pub compacted_in: u64,
    pub compacted_out: u64,
    pub retained: VecDeque<(u64, Vec<u64>)>,
    pub doomed: Vec<u64>,
    pub garbage: Vec<PathBuf>,
    pub poison: Option<String>,
    pub epoch: u32,
    pub primed: bool,
}

impl<R> Core<R> {
    /// The leading segments that are on disk: what a merge may take (a spill still in
    /// memory, and everything after it, waits for `Store::flush`).
    pub fn on_disk_prefix(&self) -> usize {
        self.segments
            .iter()
            .take_while(|s| matches!(s.source, Source::Disk(_)))
            .count()
    }
    pub fn drops_vec(&self) -> Vec<NsDropRec> {
        let mut v: Vec<NsDropRec> = self.ns_drops.values().flatten().cloned().collect();
        v.sort_by_key(|d| d.order);
        v
    }
    /// Whether an entry of a segment of `order` was dropped with its namespace later.
    pub fn killed(&self, sort: &SortKey, ns: &[u8], order: u64) -> bool {
        self.ns_drops
            .get(&(sort.state, sort.ns_hash))
            .is_some_and(|drops| {
                drops.iter().any(|d| {
                    d.order > order && d.kg_lo <= sort.kg && sort.kg <= d.kg_hi && d.ns == ns
                })
            })
    }
    pub fn add_drop(&mut self, d: NsDropRec) {
        let key = (d.state, xxh3_64(&d.ns));
        self.ns_drops.entry(key).or_default().push(d);
    }
}

pub(crate) struct Shared<D: Disk> {
    pub dir: PathBuf,
    pub disk: D,
    pub cfg: StoreConfig,
    pub counters: Rc<Counters>,
    pub core: RefCell<Core<D::Reader>>,
    /// The read buffer of lookups (reused: a miss allocates nothing but its value).
    pub lookup_buf: RefCell<Scratch>,
    /// Wakes [`Store::compactor`] when a merge may be due, or to stop it.
    pub compactor: Signal,
    /// Wakes a flush that waits for the compactor's merge ([`Store::flush`]).
    pub merged: Signal,
    /// [`Store::compactor`] runs: flushes leave merges to it unless it falls behind.
    pub compactor_running: Cell<bool>,
    pub compactor_stop: Cell<bool>,
    /// Restored tables waiting for (or in) their background load, in registration order.
    pub warm: RefCell<VecDeque<WarmJob>>,
    /// The buffer the loads' steps read through (kept: a fresh 4 MiB buffer per step would
    /// fault in new pages every time).
    pub warm_buf: RefCell<Scratch>,
}

/// A flag and the task waiting for it (one per store: a single task waits at a time).
#[derive(Default)]
pub(crate) struct Signal {
    raised: Cell<bool>,
    waiter: Cell<Option<std::task::Waker>>,
}

impl Signal {
    /// Raises the flag and wakes the waiting task, if any.
    pub fn raise(&self) {
        self.raised.set(true);
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }
    /// Waits until the flag is raised, and lowers it.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.raised.replace(false) {
                std::task::Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// A per-worker state store over a [`Disk`]. Clones share the store.
pub struct Store<D: Disk> {
    pub(crate) shared: Rc<Shared<D>>,
}

impl<D: Disk> Clone for Store<D> {
    fn clone(&self) -> Self {
        Store {
            shared: self.shared.clone(),
        }
    }
}

/// The state id of a state name: stable across stores, so that segments of different
/// workers sort the same way and restores need no remapping.
pub fn state_id(name: &str) -> u32 {
    (xxh3_64(name.as_bytes()) as u32) & 0x7fff_ffff
}

/// The newest checkpoint with a manifest in `dir`, if any.
pub fn latest_checkpoint<D: Disk>(disk: &D, dir: &Path) -> Result<Option<u64>, OpenError> {
    let names = disk
        .list(dir)
        .map_err(|e| Fault::io("list store directory", dir, e))?;
    Ok(names
        .iter()
        .filter_map(|n| manifest::parse_manifest_name(n))
        .max())
}

/// Reads and validates a manifest file.
pub(crate) fn read_manifest<D: Disk>(disk: &D, dir: &Path, id: u64) -> FaultResult<Manifest> {
    let path = dir.join(manifest::manifest_name(id));
    let r = disk
        .open(&path)
        .map_err(|e| Fault::io("open manifest", &path, e))?;
    let len = r.len() as usize;
    if len > manifest::MANIFEST_BYTES_MAX {
        return Err(Fault::corrupt(
            &path,
            0,
            format!("manifest of {len} bytes is too large"),
        ));
    }
    let mut bytes = vec![0u8; len];
    r.read_exact_at(0, &mut bytes)
        .map_err(|e| Fault::io("read manifest", &path, e))?;
    manifest::decode(&path, &bytes)
}

/// Opens a segment named by a manifest and validates every frame.
pub(crate) fn open_segment<D: Disk>(
    disk: &D,
    dir: &Path,
    rec: &manifest::SegmentRec,
    checkpoint_id: u64,
) -> FaultResult<SegIndex<D::Reader>> {
    let meta = rec.to_meta();
    let path = dir.join(segment::segment_name(meta.id));
    let reader = disk
        .open(&path)
        .map_err(|e| Fault::io("open segment", &path, e))?;
    if reader.len() < meta.data_len {
        return Err(Fault::corrupt(
            &path,
            reader.len(),
            format!(
                "truncated: {} bytes, the manifest says {}",
                reader.len(),
                meta.data_len
            ),
        ));
    }
    let (index, bloom) = segment::scan_segment(&meta, &path, &reader, checkpoint_id)?;
    Ok(SegIndex {
        meta,
        path,
        index,
        bloom,
        source: Source::Disk(Rc::new(reader)),
        synced: true,
    })
}

fn file_id(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    u64::from_str_radix(hex, 16).ok()
}

impl<D: Disk> Store<D> {
    /// Opens the store in `dir` at `checkpoint` (the coordinator's last complete one), or at
    /// its newest manifest when `None`, or empty when there is none. Every frame of every
    /// segment the manifest names is read and checked (a sequential read); anything written
    /// after the manifest is ignored and removed by the next write.
    pub fn open(
        disk: D,
        dir: &Path,
        cfg: StoreConfig,
        checkpoint: Option<u64>,
    ) -> Result<Store<D>, OpenError> {
        if cfg.memory_budget_bytes == 0 || cfg.retained_checkpoints == 0 {
            return Err(OpenError::Config(
                "memory budget and retained checkpoints must be positive".into(),
            ));
        }
        disk.create_dir_all(dir)
            .map_err(|e| Fault::io("create store directory", dir, e))?;
        let names = disk
            .list(dir)
            .map_err(|e| Fault::io("list store directory", dir, e))?;
        if !names.iter().any(|n| n == IDENTITY_FILE) {
            let mut id = b"sluice-state store, format 1\n".to_vec();
            id.resize(IDENTITY_BYTES, 0);
            let path = dir.join(IDENTITY_FILE);
            disk.write_small(&path, &id)
                .map_err(|e| Fault::io("write store identity", &path, e))?;
        }
        let mut ids: Vec<u64> = names
            .iter()
            .filter_map(|n| manifest::parse_manifest_name(n))
            .collect();
        ids.sort_unstable();
        let target = match checkpoint {
            Some(id) if !ids.contains(&id) => {
                return Err(OpenError::NoCheckpoint {
                    dir: dir.to_path_buf(),
                    checkpoint_id: id,
                });
            }
            Some(id) => Some(id),
            None => ids.last().copied(),
        };
        let core = match target {
            None => Self::fresh_core(dir, &names),
            Some(id) => Self::recover_core(&disk, dir, &cfg, &names, &ids, id)?,
        };
        let counters = Rc::new(Counters::default());
        counters.mem_budget.set(cfg.memory_budget_bytes);
        counters.dirty_slack.set(cfg.dirty_list_slack.max(1));
        counters.disk_empty.set(core.segments.is_empty());
        counters.tag.set(core.last_checkpoint + 1);
        let mem: usize = core.segments.iter().map(mem_bytes).sum();
        counters.spill_add(mem);
        let shared = Rc::new(Shared {
            dir: dir.to_path_buf(),
            disk,
            cfg,
            counters,
            core: RefCell::new(core),
            lookup_buf: RefCell::new(Scratch::new()),
            compactor: Signal::default(),
            merged: Signal::default(),
            compactor_running: Cell::new(false),
            compactor_stop: Cell::new(false),
            warm: RefCell::new(VecDeque::new()),
            warm_buf: RefCell::new(Scratch::new()),
        });
        Ok(Store { shared })
    }

    fn empty_core() -> Core<D::Reader> {
        Core {
            segments: Vec::new(),
            states: BTreeMap::new(),
            next_order: 1,
            next_segment_id: 1,
            last_checkpoint: 0,
            last_frozen: 0,
            ns_drops: FxHashMap::default(),
            tables: Vec::new(),
            frozen: None,
            writing: false,
            compacting: false,
            compactions: 0,
            compacted_in: 0,
            compacted_out: 0,
            retained: VecDeque::new(),
            doomed: Vec::new(),
            garbage: Vec::new(),
            poison: None,
            epoch: 1,
            primed: false,
        }
    }

    fn fresh_core(dir: &Path, names: &[String]) -> Core<D::Reader> {
        let mut core = Self::empty_core();
        for n in names {
            if let Some(id) = file_id(n) {
                core.next_segment_id = core.next_segment_id.max(id + 1);
            }
            if file_id(n).is_some() || n.ends_with(".tmp") {
                core.garbage.push(dir.join(n));
            }
        }
        core
    }

    fn recover_core(
        disk: &D,
        dir: &Path,
        cfg: &StoreConfig,
        names: &[String],
        ids: &[u64],
        target: u64,
    ) -> Result<Core<D::Reader>, OpenError> {
        let m = read_manifest(disk, dir, target)?;
        let mut core = Self::empty_core();
        for rec in &m.segments {
            core.segments.push(open_segment(disk, dir, rec, target)?);
        }
        core.segments.sort_by_key(|s| s.meta.order);
        core.states = m.states.iter().cloned().collect();
        core.next_order = m.next_order;
        core.next_segment_id = m.next_segment_id;
        core.last_checkpoint = target;
        core.last_frozen = target;
        for d in m.ns_drops {
            core.add_drop(d);
        }
        // Older manifests stay retained (their segments too); newer ones are not part of
        // this history any more.
        let older: Vec<u64> = ids.iter().copied().filter(|&i| i < target).collect();
        let keep_from = older
            .len()
            .saturating_sub(cfg.retained_checkpoints.saturating_sub(1));
        for &old in &older[keep_from..] {
            if let Ok(om) = read_manifest(disk, dir, old) {
                core.retained
                    .push_back((old, om.segments.iter().map(|s| s.id).collect()));
            }
        }
        core.retained
            .push_back((target, m.segments.iter().map(|s| s.id).collect()));
        let referenced: Vec<u64> = core.retained.iter().flat_map(|r| r.1.clone()).collect();
        let kept: Vec<u64> = core.retained.iter().map(|r| r.0).collect();
        for n in names {
            if let Some(id) = file_id(n) {
                core.next_segment_id = core.next_segment_id.max(id + 1);
                if !referenced.contains(&id) {
                    core.garbage.push(dir.join(n));
                }
            } else if n.ends_with(".tmp") {
                core.garbage.push(dir.join(n));
            } else if let Some(id) = manifest::parse_manifest_name(n) {
                if !kept.contains(&id) {
                    core.garbage.push(dir.join(n));
                }
            }
        }
        Ok(core)
    }

    /// Registers (or restores) the table of state `name`: its entries on disk are loaded
    /// into memory, oldest segment first, as far as the memory budget allows; the rest is
    /// read back on access.
    pub fn table<N: Ns, K: Ns, V: Codec>(
        &self,
        name: &str,
        cfg: TableConfig<N, K, V>,
    ) -> Result<Table<N, K, V>, OpenError> {
        let id = state_id(name);
        let epoch = {
            let mut core = self.shared.core.borrow_mut();
            if let Some(p) = &core.poison {
                return Err(OpenError::Poisoned(p.clone()));
            }
            if let Some((other, _)) = core.states.iter().find(|(n, i)| **i == id && *n != name) {
                return Err(OpenError::Config(format!(
                    "state names '{name}' and '{other}' hash to the same id; rename one"
                )));
            }
            let live = core
                .tables
                .iter()
                .any(|(n, t)| n == name && t.strong_count() > 0);
            if live {
                return Err(OpenError::Config(format!(
                    "state '{name}' is registered twice"
                )));
            }
            core.states.insert(name.to_string(), id);
            core.epoch
        };
        let link: Rc<dyn StoreLink> = self.shared.clone();
        let evictable = cfg.evictable;
        let table = Table::new(id, name, cfg, self.shared.counters.clone(), link, epoch);
        // Timers (not evictable: all of them are resident) are loaded at once in any mode.
        let restore = match self.shared.cfg.restore {
            Restore::Background | Restore::Lazy if !evictable => Restore::Eager,
            r => r,
        };
        if let Some(parts) = self.restore_table(id, &table, restore)? {
            let weak = Rc::downgrade(&table.warm_ops());
            self.shared
                .warm
                .borrow_mut()
                .push_back(WarmJob::new(weak, parts));
            self.merges_may_be_due();
        }
        let mut core = self.shared.core.borrow_mut();
        core.tables.retain(|(_, t)| t.strong_count() > 0);
        core.tables
            .push((name.to_string(), Rc::downgrade(&table.ops())));
        Ok(table)
    }

    /// Restores a table's entries as `restore` says; for a background load, starts it on
    /// the table and returns what it reads: the table's extents, newest segment first.
    fn restore_table<N: Ns, K: Ns, V: Codec>(
        &self,
        id: u32,
        table: &Table<N, K, V>,
        restore: Restore,
    ) -> Result<Option<Vec<Part>>, OpenError> {
        let core = self.shared.core.borrow();
        let mut t = table.lock();
        let any = core
            .segments
            .iter()
            .any(|s| s.meta.extents.iter().any(|e| e.state == id));
        let entries: u64 = core
            .segments
            .iter()
            .flat_map(|s| s.meta.extents.iter())
            .filter(|e| e.state == id)
            .map(|e| e.entries)
            .sum();
        if any && restore != Restore::Eager {
            t.set_resident_all(false);
            t.restore_done(false);
            self.shared.counters.evicted.set(true);
            if restore != Restore::Background {
                return Ok(None);
            }
            t.reserve_for_restore(entries as usize);
            t.warm_begin();
            let parts = core.segments.iter().rev().flat_map(|s| {
                let extents = s.meta.extents.iter().filter(move |e| e.state == id);
                extents.map(|e| (s.meta.id, e.offset, e.offset + e.len))
            });
            return Ok(Some(parts.collect()));
        }
        t.set_resident_all(true);
        t.reserve_for_restore(entries as usize);
        let mut buf = Scratch::new();
        let no_drops = core.ns_drops.is_empty();
        for seg in &core.segments {
            for e in seg.meta.extents.iter().filter(|e| e.state == id) {
                let mut err = None;
                seg.scan(
                    e.offset,
                    e.offset + e.len,
                    SCAN_AHEAD_BYTES,
                    &mut buf,
                    |fr| {
                        if !no_drops && core.killed(&fr.head.sort, fr.ns, seg.meta.order) {
                            return Ok(true);
                        }
                        if let Err(x) = t.restore_frame(fr) {
                            err = Some(x);
                            return Ok(false);
                        }
                        Ok(true)
                    },
                )?;
                if let Some(e) = err {
                    return Err(access_to_open(e));
                }
            }
        }
        t.restore_flush().map_err(access_to_open)?;
        let all = t.resident_all();
        t.restore_done(all);
        if !all {
            self.shared.counters.evicted.set(true);
        }
        Ok(None)
    }

    /// Sets the time that TTL compares against (ms; the runtime's processing time).
    pub fn set_time_ms(&self, now_ms: u64) {
        self.shared.counters.now_ms.set(now_ms);
    }

    /// Bytes the store accounts against its budget now.
    pub fn memory_used(&self) -> usize {
        self.shared.counters.mem_used.get() + self.shared.counters.spill_pending.get()
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The last checkpoint whose manifest is durable (or that the store was opened at).
    pub fn last_checkpoint(&self) -> u64 {
        self.shared.core.borrow().last_checkpoint
    }

    /// Figures about the store.
    pub fn stats(&self) -> StoreStats {
        let core = self.shared.core.borrow();
        StoreStats {
            segments: core.segments.len(),
            segment_bytes: core.segments.iter().map(|s| s.meta.data_len).sum(),
            segment_entries: core.segments.iter().map(|s| s.meta.entries).sum(),
            memory_used: self.memory_used(),
            index_bytes: core
                .segments
                .iter()
                .map(|s| s.bloom.bytes() + s.index.bytes())
                .sum(),
            compactions: core.compactions,
            compacted_in_bytes: core.compacted_in,
            compacted_out_bytes: core.compacted_out,
        }
    }

    /// Fails if the store failed closed.
    pub(crate) fn check(&self) -> FaultResult<()> {
        match &self.shared.core.borrow().poison {
            Some(p) => Err(Fault::Poisoned(p.clone())),
            None => Ok(()),
        }
    }

    /// Records a write or sync failure: every later call fails (never retry an fsync).
    pub(crate) fn fail(&self, f: Fault) -> Fault {
        if let Fault::Io { .. } = f {
            let mut core = self.shared.core.borrow_mut();
            if core.poison.is_none() {
                core.poison = Some(f.to_string());
            }
            self.shared.counters.poisoned.set(true);
        }
        f
    }
}

/// Figures about a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Live segments.
    pub segments: usize,
    /// Bytes of frames in them.
    pub segment_bytes: u64,
    /// Frames in them.
    pub segment_entries: u64,
    /// Bytes accounted against the memory budget.
    pub memory_used: usize,
    /// Bytes of sparse indexes and bloom filters.
    pub index_bytes: usize,
    /// Compactions finished since the store was opened.
    pub compactions: u64,
    /// Bytes of frames those compactions read, and wrote.
    pub compacted_in_bytes: u64,
    pub compacted_out_bytes: u64,
}

fn access_to_open(e: AccessError) -> OpenError {
    match e {
        AccessError::Io { op, path, source } => OpenError::Io { op, path, source },
        AccessError::Corrupt {
            path,
            offset,
            reason,
        } => OpenError::Corrupt {
            path,
            offset,
            reason,
        },
        AccessError::Poisoned(p) => OpenError::Poisoned(p),
        AccessError::Decode {
            state,
            what,
            reason,
        } => OpenError::Config(format!("decode {what} of state '{state}': {reason}")),
    }
}

/// Bytes a segment holds in memory (evicted entries not yet written).
pub(crate) fn mem_bytes<R>(s: &SegIndex<R>) -> usize {
    match &s.source {
        Source::Mem(b) | Source::Writing(b) => b.len(),
        Source::Disk(_) => 0,
    }
}

impl<D: Disk> StoreLink for Shared<D> {
    fn poison_message(&self) -> String {
        self.core.borrow().poison.clone().unwrap_or_default()
    }

    fn lookup(&self, sort: &SortKey, ns: &[u8], key: &[u8]) -> FaultResult<Found> {
        let core = self.core.borrow();
        let mut guard = self.lookup_buf.borrow_mut();
        let buf = &mut *guard;
        for seg in core.segments.iter().rev() {
            if !seg.may_contain(sort) {
                continue;
            }
            let Some(e) = seg.find(sort, ns, key, buf)? else {
                continue;
            };
            if e.kind == Kind::Tombstone || core.killed(sort, ns, seg.meta.order) {
                return Ok(Found::Absent);
            }
            let (value, expires_ms) = (e.value, e.expires_ms);
            return Ok(Found::Put { value, expires_ms });
        }
        Ok(Found::Absent)
    }

    fn scan_ns(
        &self,
        state: u32,
        ns: &[u8],
        f: &mut dyn FnMut(&FrameRef<'_>) -> FaultResult<()>,
    ) -> FaultResult<()> {
        let core = self.core.borrow();
        let nsh = xxh3_64(ns);
        let mut buf = Scratch::new();
        for seg in core.segments.iter().rev() {
            if !seg.bloom.may_contain(segment::ns_hash(state, nsh)) {
                continue;
            }
            for e in seg.meta.extents.iter().filter(|e| e.state == state) {
                let lo = SortKey {
                    state,
                    kg: e.kg,
                    ns_hash: nsh,
                    key_hash: 0,
                };
                let hi = SortKey {
                    key_hash: u64::MAX,
                    ..lo
                };
                let (start, end) = seg.range_of(&lo, &hi);
                let (start, end) = (start.max(e.offset), end.min(e.offset + e.len));
                if start >= end {
                    continue;
                }
                let block = seg.read_block(start, (end - start) as usize, &mut buf)?;
                segment::for_each_frame(&seg.path, seg.meta.id, start, block, |fr| {
                    if fr.head.sort > hi {
                        return Ok(false);
                    }
                    let mine = fr.head.sort >= lo && fr.ns == ns;
                    if mine && !core.killed(&fr.head.sort, ns, seg.meta.order) {
                        f(&fr)?;
                    }
                    Ok(true)
                })?;
            }
        }
        Ok(())
    }

    fn may_have_ns(&self, state: u32, ns_hash: u64) -> bool {
        let h = segment::ns_hash(state, ns_hash);
        self.core
            .borrow()
            .segments
            .iter()
            .any(|s| s.bloom.may_contain(h))
    }

    fn spill(&self, batch: EntryBatch) -> FaultResult<()> {
        let mut core = self.core.borrow_mut();
        if let Some(p) = &core.poison {
            return Err(Fault::Poisoned(p.clone()));
        }
        let (id, order) = (core.next_segment_id, core.next_order);
        core.next_segment_id += 1;
        core.next_order += 1;
        let mut b = SegmentBuilder::new(id, order, batch.len() as u64);
        b.push_batch(batch);
        let seg = b.finish(&self.dir);
        self.counters.spill_add(mem_bytes(&seg));
        self.counters.disk_empty.set(false);
        core.segments.push(seg);
        Ok(())
    }

    fn drop_ns(&self, state: u32, ns: Vec<u8>) {
        let mut core = self.core.borrow_mut();
        let order = core.next_order;
        core.next_order += 1;
        let (kg_lo, kg_hi) = self.cfg.key_groups;
        core.add_drop(NsDropRec {
            state,
            ns,
            order,
            kg_lo,
            kg_hi,
        });
    }
}
