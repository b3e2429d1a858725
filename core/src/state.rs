//! Keyed state in the per-core log-structured store (`sluice-state`): one store per stateful
//! stage instance, opened before the stage's chain is attached, so its operators register
//! their tables when they attach.
//!
//! Where a store lives: under the job's state root (`<checkpoint dir>/state`, or a scratch
//! directory removed at the end of a job without checkpoints), in `<run>/stage-<i>/worker-<w>`
//! where `<run>` is unique to the run that created it. A restore with the same number of
//! workers reopens each instance's store at the restored checkpoint and goes on writing
//! incrementally into it; a restore with another number of workers (or from a savepoint)
//! builds a new store per worker from the key groups it now owns, read out of the old stores.
//!
//! At a barrier the stage freezes its store (the synchronous part: copy-on-write of the dirty
//! sets), sends the barrier on, and writes the frozen entries in a task of its own while
//! records keep flowing; the acknowledgement goes out when they are durable.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use std::io;

use sluice_state::sim::SimDisk;
use sluice_state::{
    Codec, Disk, DiskReader, DiskWriter, GlommioDisk, Ns, Store, StoreConfig, Table, TableConfig,
    TimerSet,
};

use crate::error::{Error, Result};
use crate::key::{Key, KeyGroups};

pub use sluice_state::{Codec as StateCodec, Ns as StateNs};

/// The store of one stage instance.
pub type StateStore = Store<StateDisk>;

/// Where a store keeps its files: real files through io_uring in a job, or memory for an
/// operator tested on its own ([`crate::testkit`], [`OperatorContext::standalone`]).
///
/// [`OperatorContext::standalone`]: crate::context::OperatorContext::standalone
#[derive(Clone, Debug)]
pub enum StateDisk {
    /// glommio DMA files.
    Files(GlommioDisk),
    /// A simulated disk in memory.
    Memory(SimDisk),
}

/// A file being written on a [`StateDisk`].
pub enum StateWriter {
    /// On glommio.
    Files(<GlommioDisk as Disk>::Writer),
    /// In memory.
    Memory(<SimDisk as Disk>::Writer),
}

/// A file being read on a [`StateDisk`].
pub enum StateReader {
    /// On glommio.
    Files(<GlommioDisk as Disk>::Reader),
    /// In memory.
    Memory(<SimDisk as Disk>::Reader),
}

macro_rules! on_disk {
    ($self:expr, |$d:ident| $e:expr) => {
        match $self {
            StateDisk::Files($d) => $e,
            StateDisk::Memory($d) => $e,
        }
    };
}

impl Disk for StateDisk {
    type Writer = StateWriter;
    type Reader = StateReader;
    async fn create(&self, path: &Path) -> io::Result<StateWriter> {
        Ok(match self {
            StateDisk::Files(d) => StateWriter::Files(d.create(path).await?),
            StateDisk::Memory(d) => StateWriter::Memory(d.create(path).await?),
        })
    }
    fn open(&self, path: &Path) -> io::Result<StateReader> {
        Ok(match self {
            StateDisk::Files(d) => StateReader::Files(d.open(path)?),
            StateDisk::Memory(d) => StateReader::Memory(d.open(path)?),
        })
    }
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        on_disk!(self, |d| d.rename(from, to).await)
    }
    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        on_disk!(self, |d| d.sync_dir(dir).await)
    }
    async fn remove(&self, path: &Path) -> io::Result<()> {
        on_disk!(self, |d| d.remove(path).await)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        on_disk!(self, |d| d.list(dir))
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        on_disk!(self, |d| d.create_dir_all(dir))
    }
    fn write_small(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        on_disk!(self, |d| d.write_small(path, bytes))
    }
    async fn prime(&self, path: &Path) -> io::Result<()> {
        on_disk!(self, |d| d.prime(path).await)
    }
    async fn sync_file(&self, path: &Path) -> io::Result<()> {
        on_disk!(self, |d| d.sync_file(path).await)
    }
}

impl DiskWriter for StateWriter {
    fn alignment(&self) -> usize {
        match self {
            StateWriter::Files(w) => w.alignment(),
            StateWriter::Memory(w) => w.alignment(),
        }
    }
    async fn write_at(&mut self, pos: u64, buf: &[u8]) -> io::Result<()> {
        match self {
            StateWriter::Files(w) => w.write_at(pos, buf).await,
            StateWriter::Memory(w) => w.write_at(pos, buf).await,
        }
    }
    async fn sync(&mut self) -> io::Result<()> {
        match self {
            StateWriter::Files(w) => w.sync().await,
            StateWriter::Memory(w) => w.sync().await,
        }
    }
    async fn close(self) -> io::Result<()> {
        match self {
            StateWriter::Files(w) => w.close().await,
            StateWriter::Memory(w) => w.close().await,
        }
    }
}

impl DiskReader for StateReader {
    fn len(&self) -> u64 {
        match self {
            StateReader::Files(r) => r.len(),
            StateReader::Memory(r) => r.len(),
        }
    }
    fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            StateReader::Files(r) => r.read_exact_at(pos, buf),
            StateReader::Memory(r) => r.read_exact_at(pos, buf),
        }
    }
    fn will_need_range(&self, pos: u64, len: u64) {
        match self {
            StateReader::Files(r) => r.will_need_range(pos, len),
            StateReader::Memory(r) => r.will_need_range(pos, len),
        }
    }
}

/// Bytes of resident state a store keeps by default before it evicts to disk.
pub const STATE_BUDGET_BYTES_DEFAULT: usize = 512 << 20;

/// What a restore loads into memory, and when: the store's [`Restore`](sluice_state::Restore)
/// (default: `Background`).
pub use sluice_state::Restore as StateLoading;

/// How a job's stores are placed and sized (the same for every stage instance).
#[derive(Clone, Debug)]
pub struct StateSettings {
    /// The root of the job's state.
    pub root: PathBuf,
    /// This run's directory name under the root.
    pub run: String,
    /// Resident bytes per store.
    pub budget_bytes: usize,
    /// Checkpoints a store keeps.
    pub retained: usize,
    /// What a restore loads into memory.
    pub loading: StateLoading,
}

/// Where one stage's state comes from on a restore.
#[derive(Clone, Debug)]
pub struct StateRestore {
    /// The checkpoint.
    pub checkpoint_id: u64,
    /// The workers of the job that took it.
    pub workers: usize,
    /// Each old instance's store directory (absolute), by worker.
    pub dirs: Vec<PathBuf>,
    /// Whether it is a savepoint (always restored by key groups).
    pub savepoint: bool,
}

fn state_error(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::State {
        op,
        message: crate::runtime::one_line(&e.to_string()),
    }
}

/// A stage instance's store and what its operators need to register tables in it.
pub struct StageState {
    store: Rc<StateStore>,
    dir: PathBuf,
    key_groups: KeyGroups,
    next_operator: Cell<u32>,
    /// A background write or merge failed: the next call reports it.
    failed: Rc<RefCell<Option<Error>>>,
    /// The store's compactor task ([`StateStore::compactor`]), on a worker's executor.
    compactor: RefCell<Option<glommio::task::JoinHandle<()>>>,
}

impl StageState {
    /// Opens (or restores) the store of `stage` on `worker`.
    pub async fn open(
        settings: &StateSettings,
        stage: usize,
        worker: usize,
        key_groups: KeyGroups,
        restore: Option<&StateRestore>,
    ) -> Result<StageState> {
        let range = key_groups.range_of(worker);
        let cfg = StoreConfig {
            memory_budget_bytes: settings.budget_bytes,
            retained_checkpoints: settings.retained.max(1),
            restore: settings.loading,
            key_groups: (range.start, range.end.saturating_sub(1)),
            ..StoreConfig::default()
        };
        let fresh = settings
            .root
            .join(&settings.run)
            .join(format!("stage-{stage}"))
            .join(format!("worker-{worker}"));
        let same_layout = restore.filter(|r| {
            !r.savepoint && r.workers == key_groups.workers() as usize && r.dirs.len() > worker
        });
        let (store, dir) = match (same_layout, restore) {
            (Some(r), _) => {
                let dir = r.dirs[worker].clone();
                let store = Store::open(
                    StateDisk::Files(GlommioDisk),
                    &dir,
                    cfg,
                    Some(r.checkpoint_id),
                )
                .map_err(|e| state_error("reopen state store", e))?;
                (store, dir)
            }
            (None, Some(r)) => {
                let sources: Vec<(PathBuf, u64)> = r
                    .dirs
                    .iter()
                    .map(|d| (d.clone(), r.checkpoint_id))
                    .collect();
                let kgs = (range.start, range.end.saturating_sub(1));
                let store = Store::restore_key_groups(
                    StateDisk::Files(GlommioDisk),
                    &fresh,
                    cfg,
                    &sources,
                    kgs,
                )
                .await
                .map_err(|e| state_error("restore state by key groups", e))?;
                (store, fresh)
            }
            (None, None) => {
                let store = Store::open(StateDisk::Files(GlommioDisk), &fresh, cfg, None)
                    .map_err(|e| state_error("open state store", e))?;
                (store, fresh)
            }
        };
        let store = Rc::new(store);
        let failed = Rc::new(RefCell::new(None));
        // Background loads of restored tables and merges run beside the operators, in the
        // worker's own executor.
        let compactor = {
            let (store, failed) = (store.clone(), failed.clone());
            glommio::spawn_local(async move {
                if let Err(e) = store.compactor().await {
                    failed
                        .borrow_mut()
                        .get_or_insert(state_error("load or merge state", e));
                }
            })
            .detach()
        };
        Ok(StageState {
            store,
            dir,
            key_groups,
            next_operator: Cell::new(0),
            failed,
            compactor: RefCell::new(Some(compactor)),
        })
    }

    /// A store in memory for an operator run on its own (tests): no files, no checkpoints.
    pub fn in_memory(key_groups: KeyGroups) -> Result<StageState> {
        StageState::on_sim_disk(SimDisk::default(), key_groups, None)
    }

    /// A store on the simulated disk `disk`, reopened at `checkpoint` if given: for tests of
    /// an operator's restore, which checkpoint its store ([`StateStore::freeze`], `write`)
    /// and open a new one on the same disk.
    pub fn on_sim_disk(
        disk: SimDisk,
        key_groups: KeyGroups,
        checkpoint: Option<u64>,
    ) -> Result<StageState> {
        let cfg = StoreConfig {
            memory_budget_bytes: STATE_BUDGET_BYTES_DEFAULT,
            key_groups: (0, key_groups.key_groups_max().saturating_sub(1)),
            ..StoreConfig::default()
        };
        let dir = PathBuf::from("/memory/state");
        let store = Store::open(StateDisk::Memory(disk), &dir, cfg, checkpoint)
            .map_err(|e| state_error("open state store", e))?;
        Ok(StageState {
            store: Rc::new(store),
            dir,
            key_groups,
            next_operator: Cell::new(0),
            failed: Rc::new(RefCell::new(None)),
            compactor: RefCell::new(None),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store.
    pub fn store(&self) -> &Rc<StateStore> {
        &self.store
    }

    /// A new operator's prefix for its state names: `op<n>`, in attach order (the same in
    /// every run of the same job, so a restore finds each operator's tables).
    pub fn operator_prefix(&self) -> String {
        let n = self.next_operator.get();
        self.next_operator.set(n + 1);
        format!("op{n}")
    }

    /// Registers (or restores) table `name` of keys `K` in namespaces `N`.
    pub fn table<N: Ns, K: Key, V: Codec>(&self, name: &str) -> Result<Table<N, K, V>> {
        let kg = self.key_groups;
        let cfg = TableConfig::new(move |_: &N, k: &K| kg.key_group(k.stable_hash()));
        self.store
            .table(name, cfg)
            .map_err(|e| state_error("register state", e))
    }

    /// Records a failure of a background write, reported by [`check`](Self::check).
    pub fn fail(&self, e: Error) {
        self.failed.borrow_mut().get_or_insert(e);
    }

    /// Fails if a background write failed.
    pub fn check(&self) -> Result<()> {
        match self.failed.borrow_mut().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stops the compactor task once its running merge is done, and waits for it; then
    /// reports any failure of it or of a background write.
    pub async fn stop_compactor(&self) -> Result<()> {
        let task = self.compactor.borrow_mut().take();
        if let Some(task) = task {
            self.store.stop_compactor();
            task.await;
        }
        self.check()
    }

    /// After a batch: writes out evicted entries if any wait in memory.
    pub async fn flush(&self) -> Result<()> {
        if self.store.needs_flush() {
            self.store
                .flush()
                .await
                .map_err(|e| state_error("write evicted state", e))?;
        }
        Ok(())
    }
}

impl From<sluice_state::AccessError> for Error {
    fn from(e: sluice_state::AccessError) -> Error {
        state_error("access state", e)
    }
}

impl StageState {
    /// Registers (or restores) table `name` of per-key-group values: the key *is* the key
    /// group (operator metadata, see [`OpMeta`]).
    fn group_table<V: Codec>(&self, name: &str) -> Result<Table<(), u32, V>> {
        let cfg = TableConfig::new(|_: &(), kg: &u32| *kg);
        self.store
            .table(name, cfg)
            .map_err(|e| state_error("register state", e))
    }

    /// Registers (or restores) timer set `name` of keys `K` in namespaces `N`.
    fn timer_set<K: Key, N: Ns + Ord>(&self, name: &str) -> Result<TimerSet<K, N>> {
        let kg = self.key_groups;
        self.store
            .timers(name, move |k: &K| kg.key_group(k.stable_hash()))
            .map_err(|e| state_error("register timers", e))
    }
}

/// The state directory an acknowledgement names: relative to `root` when inside it.
pub fn relative_to(dir: &Path, root: &Path) -> String {
    dir.strip_prefix(root)
        .unwrap_or(dir)
        .to_string_lossy()
        .into_owned()
}

/// A table an operator registered when it attached, or why registering failed (reported at
/// its first use: attaching cannot fail).
pub struct OpTable<N, K, V> {
    table: std::result::Result<Table<N, K, V>, Option<Error>>,
}

impl<N: Ns, K: Key, V: Codec> OpTable<N, K, V> {
    /// Registers table `name` of a new operator of the stage (see
    /// [`StageState::operator_prefix`]).
    pub fn register(ctx: &crate::context::OperatorContext, name: &str) -> OpTable<N, K, V> {
        let state = ctx.state();
        let name = format!("{}/{name}", state.operator_prefix());
        OpTable {
            table: state.table(&name).map_err(Some),
        }
    }

    /// The table.
    #[inline]
    pub fn get(&mut self) -> Result<&Table<N, K, V>> {
        registered(&mut self.table).map(|t| &*t)
    }
}

/// Registration failed: the error, reported at first use (attaching cannot fail).
fn registered<T>(r: &mut std::result::Result<T, Option<Error>>) -> Result<&mut T> {
    match r {
        Ok(t) => Ok(t),
        Err(e) => Err(e.take().unwrap_or_else(|| Error::State {
            op: "register state",
            message: "failed earlier".into(),
        })),
    }
}

/// An operator's own progress (a window operator's watermark, its open slices): one value per
/// stage instance, written at every barrier under each key group the instance owns, so that
/// whichever instance owns a key group after a rescale finds the values of the instances it
/// took key groups from, and combines them.
pub struct OpMeta<V> {
    table: std::result::Result<Table<(), u32, V>, Option<Error>>,
    key_groups: std::ops::Range<u32>,
}

impl<V: Codec + Clone> OpMeta<V> {
    /// Registers metadata `name` of a new operator (named like its tables).
    pub fn register(ctx: &crate::context::OperatorContext, name: &str) -> OpMeta<V> {
        let state = ctx.state();
        let name = format!("{}/{name}", state.operator_prefix());
        OpMeta {
            table: state.group_table(&name).map_err(Some),
            key_groups: ctx.key_groups().range_of(ctx.worker()),
        }
    }

    /// The values restored for this instance's key groups (none on a fresh start).
    pub fn restored(&mut self) -> Result<Vec<V>> {
        let table = registered(&mut self.table)?;
        let mut data = table.lock();
        let mut out = Vec::new();
        for kg in self.key_groups.clone() {
            if let Some(v) = data.get(&(), &kg)? {
                out.push(v.clone());
            }
        }
        Ok(out)
    }

    /// Records `value` for the next checkpoint.
    pub fn save(&mut self, value: &V) -> Result<()> {
        let table = registered(&mut self.table)?;
        let mut data = table.lock();
        for kg in self.key_groups.clone() {
            data.insert(&(), kg, value.clone())?;
        }
        Ok(())
    }
}

/// Event-time order as unsigned order: the sign bit flipped (`i64::MIN` is 0, `i64::MAX` is
/// `u64::MAX`).
#[inline]
fn time_key(t: i64) -> u64 {
    (t as u64) ^ (1 << 63)
}

#[inline]
fn time_of(k: u64) -> i64 {
    (k ^ (1 << 63)) as i64
}

/// An operator's timers in the store (Flink's `InternalTimerService`): per (key, namespace)
/// event-time or processing-time instants, checkpointed with the key's key group (so restored
/// by key group when the job rescales). Registering a timer twice registers it once; deleting
/// one that is not set does nothing. Resident always (timers are few and always needed): the
/// store's `TimerSet`, a binary heap with lazy deletes over a never-evicted table.
///
/// Timers fire in (time, key, namespace) order: a function of the timers alone, so a run
/// restored from a checkpoint fires them exactly as an uninterrupted one would.
pub struct OpTimers<K, N> {
    set: std::result::Result<TimerSet<K, N>, Option<Error>>,
}

impl<K: Key, N: Ns + Ord> OpTimers<K, N> {
    /// Registers timer set `name` of a new operator (named like its tables).
    pub fn register(ctx: &crate::context::OperatorContext, name: &str) -> OpTimers<K, N> {
        let state = ctx.state();
        let name = format!("{}/{name}", state.operator_prefix());
        OpTimers {
            set: state.timer_set(&name).map_err(Some),
        }
    }

    /// Sets a timer at `time` (a no-op if set).
    pub fn register_at(&mut self, time: i64, key: K, ns: N) -> Result<()> {
        Ok(registered(&mut self.set)?.register(time_key(time), key, ns)?)
    }

    /// Deletes a timer, if set.
    pub fn delete(&mut self, time: i64, key: K, ns: N) -> Result<()> {
        Ok(registered(&mut self.set)?.delete(time_key(time), key, ns)?)
    }

    /// The earliest timer's time.
    pub fn next_time(&mut self) -> Result<Option<i64>> {
        Ok(registered(&mut self.set)?.peek().map(|t| time_of(t.0)))
    }

    /// Removes and returns the earliest timer due at `time`.
    pub fn pop_due(&mut self, time: i64) -> Result<Option<(i64, K, N)>> {
        let due = registered(&mut self.set)?.pop_due(time_key(time))?;
        Ok(due.map(|(t, k, n)| (time_of(t), k, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::OperatorContext;
    use proptest::prelude::*;

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
            assert!(time_key(pair[0]) < time_key(pair[1]), "{pair:?}");
        }
        for t in times {
            assert_eq!(time_of(time_key(t)), t);
        }
        assert_eq!(time_key(i64::MIN), 0);
        assert_eq!(time_key(i64::MAX), u64::MAX);
    }

    proptest! {
        /// Against a sorted set of (time, key): timers fire in that order, once each, deleted
        /// ones never, and those registered twice once.
        #[test]
        fn op_timers_fire_like_a_sorted_set(
            ops in proptest::collection::vec((0u8..3, 0u32..6, -10i64..10), 0..150),
            up_to in -12i64..12,
        ) {
            let ctx = OperatorContext::standalone();
            let mut timers: OpTimers<u32, ()> = OpTimers::register(&ctx, "t");
            let mut model = std::collections::BTreeSet::new();
            for (op, key, time) in ops {
                if op < 2 {
                    timers.register_at(time, key, ()).unwrap();
                    model.insert((time, key));
                } else {
                    timers.delete(time, key, ()).unwrap();
                    model.remove(&(time, key));
                }
            }
            prop_assert_eq!(timers.next_time().unwrap(), model.first().map(|e| e.0));
            let mut fired = Vec::new();
            while let Some((time, key, ())) = timers.pop_due(up_to).unwrap() {
                fired.push((time, key));
            }
            let expected: Vec<(i64, u32)> =
                model.iter().copied().filter(|e| e.0 <= up_to).collect();
            prop_assert_eq!(fired, expected);
        }
    }
}
