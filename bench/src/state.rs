//! The state store's workloads, shared by `sluice bench state` and the criterion benches:
//! point updates (read-modify-write) and reads of 16-byte keys with 64-byte values, in
//! memory and with the memory budget at a fraction of the state; checkpoints as a function
//! of the number of dirty keys; recovery time against state size. Each workload runs on
//! Sluice's store (glommio DMA files on the disk under `dir`), on a hand-written `FxHashMap`
//! (the in-memory limit) and, with the `rocksdb` feature, on RocksDB configured as Flink's
//! RocksDB state backend configures it (no write-ahead log), on the same keys in the same
//! order.

use std::hint::black_box;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use glommio::{LocalExecutorBuilder, Placement};
use rustc_hash::FxHashMap;
pub use sluice_state::Restore;
use sluice_state::{GlommioDisk, Store, StoreConfig, TableConfig};

/// Keys per batch between two `Store::flush` calls (the runtime's batch size).
pub const BATCH: u64 = 1024;
/// Bytes the store accounts per resident entry of this workload (measured: `memory_used`
/// after loading divided by the keys).
pub const ENTRY_BYTES: usize = 119;

/// The workload's key number `i`: 16 bytes, spread over key groups.
#[inline]
pub fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&mix(i).to_le_bytes());
    k[8..].copy_from_slice(&i.to_le_bytes());
    k
}

/// The key the read phase reads `j`-th: random, and not one the update phase touched (its
/// `mix(j)` for `j < ops`), so that a read of a budgeted store finds what the budget left in
/// memory, not what the updates just brought in. (Until this was separate, the reads used
/// `mix(j ^ 0x55)`, which for `j < ops` is the update phase's set of keys in another order.)
#[inline]
pub fn read_key(j: u64, keys: u64) -> [u8; 16] {
    key(mix(j | 1 << 62) % keys)
}

/// A 64-bit mixer (splitmix64's finalizer): the random order of the accesses.
#[inline]
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn kg(_: &(), k: &[u8; 16]) -> u32 {
    u32::from(k[0] & 127)
}

/// Throughputs of one point workload run. With several workers the rates are the
/// machine's: all workers' operations over the time from the first worker's start of the
/// phase to the last one's end.
#[derive(Clone, Debug, Default)]
pub struct PointResult {
    /// Inserts per second while loading: all keys written, then (Sluice, RocksDB) until no
    /// merge or compaction is due or running.
    pub load_per_s: f64,
    /// Read-modify-write updates per second.
    pub update_per_s: f64,
    /// Point reads per second.
    pub read_per_s: f64,
    /// Bytes the engine accounts in memory at the end (the store's budget accounting),
    /// summed over the workers.
    pub memory_bytes: u64,
    /// CPU seconds the process used per second of the update phase, all threads (RocksDB
    /// compacts on background threads; Sluice's store works on its worker's thread).
    pub update_cpu_per_s: f64,
    /// Bytes of segments Sluice's stores merged during the update phase (0 for the others).
    pub update_compacted_bytes: u64,
    /// CPU seconds per second of the read phase, all threads.
    pub read_cpu_per_s: f64,
    /// Sluice's on-disk segments at the start of the read phase, each of which a lookup of
    /// an evicted key may probe (0 for the others); with several stores, the most any has.
    pub read_segments: u64,
    /// The longest batch of the load, in ms: the engine's own work on one batch of
    /// [`BATCH`] inserts (Sluice's inserts, not the flush after them; RocksDB's write of the
    /// batch; the hash map's inserts). A table that rehashes all of its entries at once, or
    /// an engine that stalls its writes, shows here.
    pub load_batch_max_ms: f64,
}

/// Raises `longest` (ms) to the time since `start` if that is longer: the longest load batch.
fn note_longest(longest: &mut f64, start: Instant) {
    *longest = longest.max(start.elapsed().as_secs_f64() * 1e3);
}

/// One worker's part of a point run: the keys `first..first + keys` and `ops` updates and
/// reads among them. One worker has all of the keys; `n` workers a disjoint `n`th each.
#[derive(Clone, Copy, Debug)]
struct Share {
    first: u64,
    keys: u64,
    ops: u64,
}

impl Share {
    fn split(keys: u64, ops: u64, workers: usize) -> Vec<Share> {
        let n = workers as u64;
        (0..n)
            .map(|w| Share {
                first: w * keys / n,
                keys: (w + 1) * keys / n - w * keys / n,
                ops: (w + 1) * ops / n - w * ops / n,
            })
            .collect()
    }
    /// The key the load phase inserts `j`-th.
    fn load_key(&self, j: u64) -> [u8; 16] {
        key(self.first + j)
    }
    /// The key the update phase changes `j`-th.
    fn update_key(&self, j: u64) -> [u8; 16] {
        key(self.first + mix(j) % self.keys)
    }
    /// The key the read phase reads `j`-th (see [`read_key`]).
    fn read_key(&self, j: u64) -> [u8; 16] {
        key(self.first + mix(j | 1 << 62) % self.keys)
    }
}

/// A point in time and the process's CPU time then.
#[derive(Clone, Copy, Debug)]
struct Mark {
    wall: Instant,
    cpu: f64,
}

impl Mark {
    fn now() -> Mark {
        Mark {
            wall: Instant::now(),
            cpu: process_cpu_s(),
        }
    }
}

/// One worker's phase: where it started and ended.
type Span = (Mark, Mark);

/// The three phases of one worker, and what its engine reports.
#[derive(Debug)]
struct WorkerRun {
    load: Span,
    update: Span,
    read: Span,
    memory_bytes: u64,
    update_compacted_bytes: u64,
    read_segments: u64,
    load_batch_max_ms: f64,
}

/// The machine's rates from its workers' phases: each phase from the first start to the
/// last end.
fn combine(runs: &[WorkerRun], shares: &[Share]) -> PointResult {
    let keys: u64 = shares.iter().map(|s| s.keys).sum();
    let ops: u64 = shares.iter().map(|s| s.ops).sum();
    let span = |f: fn(&WorkerRun) -> Span| -> (f64, f64) {
        let start = runs.iter().map(|r| f(r).0).min_by_key(|m| m.wall);
        let end = runs.iter().map(|r| f(r).1).max_by_key(|m| m.wall);
        match (start, end) {
            (Some(a), Some(b)) => {
                let s = (b.wall - a.wall).as_secs_f64().max(1e-9);
                (s, (b.cpu - a.cpu) / s)
            }
            _ => (f64::INFINITY, 0.0),
        }
    };
    let (load_s, _) = span(|r| r.load);
    let (update_s, update_cpu) = span(|r| r.update);
    let (read_s, read_cpu) = span(|r| r.read);
    PointResult {
        load_per_s: keys as f64 / load_s,
        update_per_s: ops as f64 / update_s,
        read_per_s: ops as f64 / read_s,
        memory_bytes: runs.iter().map(|r| r.memory_bytes).sum(),
        update_cpu_per_s: update_cpu,
        update_compacted_bytes: runs.iter().map(|r| r.update_compacted_bytes).sum(),
        read_cpu_per_s: read_cpu,
        read_segments: runs.iter().map(|r| r.read_segments).max().unwrap_or(0),
        load_batch_max_ms: runs.iter().map(|r| r.load_batch_max_ms).fold(0.0, f64::max),
    }
}

/// Starts each phase of several workers together: a worker passes gate `round` once every
/// worker has arrived at it, so that no worker's phase overlaps another's previous one. A
/// worker that fails says so, and the others stop at their next gate instead of waiting
/// for it forever.
struct Gate {
    workers: usize,
    arrived: AtomicUsize,
    failed: AtomicBool,
}

impl Gate {
    fn new(workers: usize) -> Gate {
        Gate {
            workers,
            arrived: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
        }
    }
    /// Whether every worker reached gate `round`; an error once one failed.
    fn open(&self, round: usize) -> Result<bool> {
        anyhow::ensure!(!self.failed.load(Ordering::Acquire), STOPPED);
        Ok(self.arrived.load(Ordering::Acquire) >= self.workers * round)
    }
    /// Waits on a glommio executor, whose other tasks (the store's compactor) run meanwhile.
    async fn pass(&self, round: usize) -> Result<()> {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        while !self.open(round)? {
            glommio::timer::sleep(Duration::from_micros(100)).await;
        }
        Ok(())
    }
    /// Waits on a plain thread.
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
    fn pass_blocking(&self, round: usize) -> Result<()> {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        while !self.open(round)? {
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(())
    }
    /// Records a worker's failure, and passes it on.
    fn fail<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        r
    }
}

/// The workers' runs, or the error of the one that failed first: not the others' report
/// that they stopped because of it.
fn first_failure(results: Vec<Result<WorkerRun>>) -> Result<Vec<WorkerRun>> {
    let (runs, errs): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    let mut errs: Vec<anyhow::Error> = errs.into_iter().filter_map(Result::err).collect();
    if errs.is_empty() {
        return Ok(runs.into_iter().filter_map(Result::ok).collect());
    }
    let cause = errs
        .iter()
        .position(|e| !e.to_string().starts_with(STOPPED))
        .unwrap_or(0);
    Err(errs.swap_remove(cause))
}

/// What a worker that stopped at a gate because another one failed reports.
const STOPPED: &str = "stopped: another worker failed";

/// Where a phase started: the clock and the process's CPU time.
struct Phase {
    wall: Instant,
    cpu: f64,
}

impl Phase {
    fn start() -> Phase {
        Phase {
            wall: Instant::now(),
            cpu: process_cpu_s(),
        }
    }
    /// Operations per second since the start.
    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.wall.elapsed().as_secs_f64()
    }
    /// CPU seconds per second since the start.
    fn cpu_per_s(&self) -> f64 {
        (process_cpu_s() - self.cpu) / self.wall.elapsed().as_secs_f64()
    }
}

/// A phase's end: a progress line on stderr naming the run (`label`) and the phase (a
/// 50M-key run's phases take minutes each), and the phase's span.
fn phase_done(label: &str, what: &str, n: u64, start: Mark) -> Span {
    let end = Mark::now();
    eprintln!(
        "point: {label}: {what} {n} keys in {:.1} s",
        (end.wall - start.wall).as_secs_f64()
    );
    (start, end)
}

/// Reads every file in `dir` once, front to back, through the page cache, and says so on
/// stderr: a point run's timed phases then start with each engine's files just touched.
///
/// Without it, how long ago an engine last wrote each file decides how much its lookups
/// cost on a VM whose host or guest reclaims idle memory: on the VM of the README, a page
/// of the page cache idle for a minute took about 10 µs to read again (under 1 µs when just
/// touched), and RocksDB rewrites most of its data in the last seconds of a settled load,
/// while the store's large segments are merged earlier.
pub fn warm_files(dir: &Path, label: &str) -> Result<u64> {
    use anyhow::Context;
    use std::io::Read;
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    let list = || format!("list {}", dir.display());
    for entry in std::fs::read_dir(dir).with_context(list)? {
        let entry = entry.with_context(list)?;
        if !entry.file_type().with_context(list)?.is_file() {
            continue;
        }
        let path = entry.path();
        let read = || format!("read {}", path.display());
        let mut f = std::fs::File::open(&path).with_context(read)?;
        loop {
            let n = f.read(&mut buf).with_context(read)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
    }
    eprintln!(
        "point: {label}: read {} MB of its files in {:.1} s (page cache warmed)",
        bytes >> 20,
        start.elapsed().as_secs_f64()
    );
    Ok(bytes)
}

/// User and system CPU seconds of the whole process so far.
fn process_cpu_s() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
        secs(u.user_time()) + secs(u.system_time())
    })
}

/// Runs `f` on a fresh glommio executor (the store's futures are not `Send`).
pub fn on_glommio<T: Send + 'static>(f: impl AsyncFnOnce() -> T + Send + 'static) -> Result<T> {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 << 10)
        .spawn(move || async move { f().await })
        .map_err(|e| anyhow::anyhow!("start a glommio executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("glommio executor failed: {e}"))
}

/// A run's name in progress lines: the engine, its memory budget and, of several, the
/// worker.
fn run_label(engine: &str, budget: usize, worker: usize, workers: usize) -> String {
    let mut l = match budget {
        b if b >= usize::MAX / 2 => format!("{engine} in memory"),
        b => format!("{engine} budget {} MB", b >> 20),
    };
    if workers > 1 {
        l += &format!(" (worker {}/{workers})", worker + 1);
    }
    l
}

/// The end of a batch, as in a worker: evicted entries are written, and the worker returns
/// to its executor (where the compactor task gets its turn).
async fn end_batch(store: &Store<GlommioDisk>) -> Result<()> {
    store.flush().await?;
    futures_lite::future::yield_now().await;
    Ok(())
}

/// Point updates and reads on Sluice's store in `dir` with a memory budget. With
/// `workers` > 1, as a job on that many cores runs: one store per worker, each on its own
/// executor pinned to its own CPU (of `cpus`, in turn) with a `workers`th of the keys, the
/// operations and the budget; the phases start together. With `warm`, each worker reads its
/// store's files once between the load and the updates ([`warm_files`]).
pub fn sluice_point(
    dir: &Path,
    keys: u64,
    ops: u64,
    budget: usize,
    workers: usize,
    cpus: &[usize],
    warm: bool,
) -> Result<PointResult> {
    anyhow::ensure!(workers > 0, "at least one worker");
    let shares = Share::split(keys, ops, workers);
    let gate = Arc::new(Gate::new(workers));
    let mut handles = Vec::new();
    for (w, &share) in shares.iter().enumerate() {
        let placement = match cpus {
            _ if workers == 1 => Placement::Unbound,
            [] => Placement::Unbound,
            _ => Placement::Fixed(cpus[w % cpus.len()]),
        };
        let d = if workers == 1 {
            dir.to_path_buf()
        } else {
            dir.join(format!("w{w}"))
        };
        let gate = gate.clone();
        let budget = if budget >= usize::MAX / 2 {
            budget
        } else {
            budget / workers
        };
        let label = run_label("sluice", budget, w, workers);
        let h = LocalExecutorBuilder::new(placement)
            .io_memory(64 << 10)
            .spawn(move || async move {
                gate.fail(sluice_worker(&d, share, budget, warm, &gate, &label).await)
            })
            .map_err(|e| anyhow::anyhow!("start a glommio executor: {e}"))?;
        handles.push(h);
    }
    let results = handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|e| anyhow::anyhow!("glommio executor failed: {e}"))?
        })
        .collect();
    Ok(combine(&first_failure(results)?, &shares))
}

/// One worker of [`sluice_point`], on its executor.
async fn sluice_worker(
    dir: &Path,
    share: Share,
    budget: usize,
    warm: bool,
    gate: &Gate,
    label: &str,
) -> Result<WorkerRun> {
    let cfg = StoreConfig {
        memory_budget_bytes: budget,
        key_groups: (0, 127),
        ..StoreConfig::default()
    };
    let store = Rc::new(Store::open(GlommioDisk, dir, cfg, None)?);
    // Merges run in a task beside the workload, as in a worker (see `StageState`).
    let spawn_compactor = || {
        let store = store.clone();
        glommio::spawn_local(async move { store.compactor().await }).detach()
    };
    let compactor = spawn_compactor();
    let t = store.table::<(), [u8; 16], [u8; 64]>("point", TableConfig::new(kg))?;
    gate.pass(1).await?;
    let start = Mark::now();
    let mut i = 0;
    let mut load_batch_max_ms = 0f64;
    while i < share.keys {
        {
            let batch = Instant::now();
            let mut tl = t.lock();
            for j in i..(i + BATCH).min(share.keys) {
                tl.insert(&(), share.load_key(j), [j as u8; 64])?;
            }
            note_longest(&mut load_batch_max_ms, batch);
        }
        i += BATCH;
        end_batch(&store).await?;
    }
    // The load ends with no merge due (as RocksDB's ends with no compaction pending): the
    // backlog of a fast load would otherwise land on the update phase.
    store.stop_compactor();
    if let Some(merged) = compactor.await {
        merged?;
    }
    while store.compact(false).await? {}
    let compactor = spawn_compactor();
    let load = phase_done(label, "loaded", share.keys, start);
    if warm {
        warm_files(dir, label)?;
    }
    gate.pass(2).await?;
    let merged_before = store.stats().compacted_in_bytes;
    let start = Mark::now();
    let mut i = 0;
    while i < share.ops {
        {
            let mut tl = t.lock();
            for j in i..(i + BATCH).min(share.ops) {
                let v = tl.get_or_insert_with(&(), share.update_key(j), || [0; 64])?;
                v[1] = v[1].wrapping_add(1);
            }
        }
        i += BATCH;
        end_batch(&store).await?;
    }
    let update = phase_done(label, "updated", share.ops, start);
    let stats = store.stats();
    gate.pass(3).await?;
    let start = Mark::now();
    let mut i = 0;
    while i < share.ops {
        {
            let mut tl = t.lock();
            for j in i..(i + BATCH).min(share.ops) {
                black_box(tl.get(&(), &share.read_key(j))?);
            }
        }
        i += BATCH;
        end_batch(&store).await?;
    }
    let read = phase_done(label, "read", share.ops, start);
    let memory_bytes = store.memory_used() as u64;
    store.stop_compactor();
    if let Some(merged) = compactor.await {
        merged?;
    }
    Ok(WorkerRun {
        load,
        update,
        read,
        memory_bytes,
        update_compacted_bytes: stats.compacted_in_bytes - merged_before,
        read_segments: stats.segments as u64,
        load_batch_max_ms,
    })
}

/// The same workload on a plain `FxHashMap` (no store): the in-memory limit.
pub fn hashmap_point(keys: u64, ops: u64) -> PointResult {
    let mut m: FxHashMap<[u8; 16], [u8; 64]> = FxHashMap::default();
    let mut r = PointResult::default();
    let phase = Phase::start();
    let mut i = 0;
    while i < keys {
        let batch = Instant::now();
        for j in i..(i + BATCH).min(keys) {
            m.insert(key(j), [j as u8; 64]);
        }
        note_longest(&mut r.load_batch_max_ms, batch);
        i += BATCH;
    }
    r.load_per_s = phase.rate(keys);
    let phase = Phase::start();
    for j in 0..ops {
        let v = m.entry(key(mix(j) % keys)).or_insert([0; 64]);
        v[1] = v[1].wrapping_add(1);
    }
    r.update_per_s = phase.rate(ops);
    r.update_cpu_per_s = phase.cpu_per_s();
    let phase = Phase::start();
    for j in 0..ops {
        black_box(m.get(&read_key(j, keys)));
    }
    r.read_per_s = phase.rate(ops);
    r.read_cpu_per_s = phase.cpu_per_s();
    r.memory_bytes = (m.capacity() * (16 + 64 + 1)) as u64;
    r
}

/// RocksDB as Flink's state backend runs it: no write-ahead log; the block cache and the
/// memtables together get `budget` bytes (or plenty, for the in-memory case). With
/// `workers` > 1, as Flink runs one instance per slot: that many instances, each on its own
/// thread with a `workers`th of the keys, the operations and the budget (the compaction
/// threads are RocksDB's own); the phases start together.
#[cfg(feature = "rocksdb")]
pub fn rocksdb_point(
    dir: &Path,
    keys: u64,
    ops: u64,
    budget: Option<usize>,
    workers: usize,
    warm: bool,
) -> Result<PointResult> {
    anyhow::ensure!(workers > 0, "at least one worker");
    let shares = Share::split(keys, ops, workers);
    let gate = Gate::new(workers);
    let runs = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .enumerate()
            .map(|(w, &share)| {
                let d = if workers == 1 {
                    dir.to_path_buf()
                } else {
                    dir.join(format!("w{w}"))
                };
                let budget = budget.map(|b| b / workers);
                let label = run_label("rocksdb", budget.unwrap_or(usize::MAX), w, workers);
                let gate = &gate;
                scope
                    .spawn(move || gate.fail(rocksdb_worker(&d, share, budget, warm, gate, &label)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a RocksDB worker panicked")))
            })
            .collect()
    });
    let runs = first_failure(runs)?;
    Ok(combine(&runs, &shares))
}

/// Waits until RocksDB has no flush or compaction pending or running: the end of a load,
/// as Sluice's ends with no merge due.
#[cfg(feature = "rocksdb")]
fn rocksdb_settle(db: &rocksdb::DB) -> Result<()> {
    const BUSY: [&str; 4] = [
        "rocksdb.mem-table-flush-pending",
        "rocksdb.num-running-flushes",
        "rocksdb.compaction-pending",
        "rocksdb.num-running-compactions",
    ];
    loop {
        let mut busy = false;
        for p in BUSY {
            busy |= db.property_int_value(p)?.unwrap_or(0) != 0;
        }
        if !busy {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// One worker of [`rocksdb_point`], on its thread.
#[cfg(feature = "rocksdb")]
fn rocksdb_worker(
    dir: &Path,
    share: Share,
    budget: Option<usize>,
    warm: bool,
    gate: &Gate,
    label: &str,
) -> Result<WorkerRun> {
    use rocksdb::{BlockBasedOptions, Cache, DB, Options, WriteBatch, WriteOptions};
    let mut opts = Options::default();
    opts.create_if_missing(true);
    let (cache, memtable) = match budget {
        Some(b) => (b / 2, (b / 4).max(1 << 20)),
        None => (8 << 30, 256 << 20),
    };
    opts.set_write_buffer_size(memtable);
    opts.set_max_write_buffer_number(2);
    let mut bbo = BlockBasedOptions::default();
    bbo.set_block_cache(&Cache::new_lru_cache(cache));
    bbo.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&bbo);
    let db = anyhow::Context::context(DB::open(&opts, dir), "open RocksDB")?;
    let mut wo = WriteOptions::default();
    wo.disable_wal(true);
    gate.pass_blocking(1)?;
    let start = Mark::now();
    let mut i = 0;
    let mut load_batch_max_ms = 0f64;
    while i < share.keys {
        let batch = Instant::now();
        let mut wb = WriteBatch::default();
        for j in i..(i + BATCH).min(share.keys) {
            wb.put(share.load_key(j), [j as u8; 64]);
        }
        db.write_opt(wb, &wo)?;
        note_longest(&mut load_batch_max_ms, batch);
        i += BATCH;
    }
    rocksdb_settle(&db)?;
    let load = phase_done(label, "loaded", share.keys, start);
    if warm {
        warm_files(dir, label)?;
    }
    gate.pass_blocking(2)?;
    let start = Mark::now();
    for j in 0..share.ops {
        let k = share.update_key(j);
        let mut v = match db.get_pinned(k)? {
            Some(p) => <[u8; 64]>::try_from(&p[..]).unwrap_or([0; 64]),
            None => [0; 64],
        };
        v[1] = v[1].wrapping_add(1);
        db.put_opt(k, v, &wo)?;
    }
    let update = phase_done(label, "updated", share.ops, start);
    gate.pass_blocking(3)?;
    let start = Mark::now();
    for j in 0..share.ops {
        black_box(db.get_pinned(share.read_key(j))?.map(|p| p.len()));
    }
    let read = phase_done(label, "read", share.ops, start);
    let memory_bytes = db
        .property_int_value("rocksdb.cur-size-all-mem-tables")?
        .unwrap_or(0);
    Ok(WorkerRun {
        load,
        update,
        read,
        memory_bytes,
        update_compacted_bytes: 0,
        read_segments: 0,
        load_batch_max_ms,
    })
}

/// One checkpoint's figures.
#[derive(Clone, Debug, Default)]
pub struct CheckpointResult {
    /// Keys changed since the previous checkpoint.
    pub dirty: u64,
    /// The synchronous part: `Store::freeze`, in µs.
    pub freeze_us: f64,
    /// Freeze plus write until the manifest is durable, in ms.
    pub total_ms: f64,
    /// Bytes written.
    pub bytes: u64,
}

/// Loads `keys` keys, takes a full first checkpoint, then one checkpoint per entry of
/// `dirty` after changing that many random keys.
pub fn sluice_checkpoints(dir: &Path, keys: u64, dirty: &[u64]) -> Result<Vec<CheckpointResult>> {
    let dir = dir.to_path_buf();
    let dirty = dirty.to_vec();
    on_glommio(async move || -> Result<Vec<CheckpointResult>> {
        let cfg = StoreConfig {
            memory_budget_bytes: usize::MAX / 2,
            key_groups: (0, 127),
            ..StoreConfig::default()
        };
        let store = Store::open(GlommioDisk, &dir, cfg, None)?;
        let t = store.table::<(), [u8; 16], [u8; 64]>("ckpt", TableConfig::new(kg))?;
        {
            let mut tl = t.lock();
            for j in 0..keys {
                tl.insert(&(), key(j), [j as u8; 64])?;
            }
        }
        let mut out = Vec::new();
        let mut id = 0;
        let mut salt = 0u64;
        for d in std::iter::once(keys).chain(dirty) {
            if id > 0 {
                let mut tl = t.lock();
                for _ in 0..d {
                    salt += 1;
                    if let Some(v) = tl.get_mut(&(), &key(mix(salt) % keys))? {
                        v[2] = v[2].wrapping_add(1);
                    }
                }
            }
            id += 1;
            let start = Instant::now();
            let frozen = store.freeze(id)?;
            let freeze_us = start.elapsed().as_secs_f64() * 1e6;
            let info = store.write(frozen).await?;
            let total_ms = start.elapsed().as_secs_f64() * 1e3;
            out.push(CheckpointResult {
                dirty: d,
                freeze_us,
                total_ms,
                bytes: info.bytes_written,
            });
        }
        Ok(out)
    })?
}

/// One recovery's figures.
#[derive(Clone, Debug, Default)]
pub struct RecoveryResult {
    /// Keys in the state.
    pub keys: u64,
    /// Bytes of segments read.
    pub bytes: u64,
    /// Open (validate every frame, build indexes) plus registering the table, which loads
    /// it into memory in an eager restore and reads nothing more in a lazy or background
    /// one, in ms: when the job could run its first record.
    pub ms: f64,
    /// From the same start until the table was resident in full, in ms: `ms` for an eager
    /// restore, after the background load for a background one, NaN for a lazy one.
    pub loaded_ms: f64,
    /// The open alone, in ms.
    pub open_ms: f64,
    /// CPU time (user and system) of the restoring thread over the same span, in ms: what
    /// the restore costs its core, less sensitive than `ms` to other processes.
    pub cpu_ms: f64,
    /// Minor page faults of the restoring thread over the same span.
    pub faults: u64,
    /// Whether the page cache was dropped first (needs root).
    pub cold: bool,
}

/// CPU time (ms) and minor page faults of the calling thread so far.
fn thread_usage() -> (f64, u64) {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_THREAD) {
        Ok(u) => {
            let tv =
                |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e3 + t.tv_usec() as f64 / 1e3;
            (
                tv(u.user_time()) + tv(u.system_time()),
                u.minor_page_faults() as u64,
            )
        }
        Err(_) => (0.0, 0),
    }
}

/// Writes a checkpoint of the keys `first..first + keys` into a store in `dir`.
fn write_recovery_state(dir: &Path, first: u64, keys: u64) -> Result<()> {
    let d = dir.to_path_buf();
    on_glommio(async move || -> Result<()> {
        let cfg = StoreConfig {
            memory_budget_bytes: usize::MAX / 2,
            key_groups: (0, 127),
            ..StoreConfig::default()
        };
        let store = Store::open(GlommioDisk, &d, cfg, None)?;
        let t = store.table::<(), [u8; 16], [u8; 64]>("rec", TableConfig::new(kg))?;
        {
            let mut tl = t.lock();
            for j in first..first + keys {
                tl.insert(&(), key(j), [j as u8; 64])?;
            }
        }
        store.checkpoint(1).await?;
        Ok(())
    })?
}

/// Drops the page cache (needs root); whether it could.
pub fn drop_page_cache() -> bool {
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Reopens the store in `dir` (keys `first..first + keys`) at checkpoint 1 and registers its
/// table, restoring it as `mode` says, on the calling executor; a background load is then
/// run to its end at once (a job's maintenance task runs it in steps between batches). Then
/// checks that the table serves its first and last keys, and that a load left it resident
/// in full.
async fn restore_store(
    dir: &Path,
    (first, keys): (u64, u64),
    budget: usize,
    cold: bool,
    mode: Restore,
) -> Result<RecoveryResult> {
    let cfg = StoreConfig {
        memory_budget_bytes: budget,
        key_groups: (0, 127),
        restore: mode,
        ..StoreConfig::default()
    };
    let (cpu0, faults0) = thread_usage();
    let start = Instant::now();
    let store = Store::open(GlommioDisk, dir, cfg, Some(1))?;
    let open_ms = start.elapsed().as_secs_f64() * 1e3;
    let t = store.table::<(), [u8; 16], [u8; 64]>("rec", TableConfig::new(kg))?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let (cpu1, faults1) = thread_usage();
    let loaded_ms = match mode {
        Restore::Eager => ms,
        Restore::Lazy => f64::NAN,
        Restore::Background => {
            store.warm_all()?;
            start.elapsed().as_secs_f64() * 1e3
        }
    };
    let resident = t.lock().resident_len() as u64;
    anyhow::ensure!(
        mode == Restore::Lazy || resident == keys,
        "{mode:?} restore left {resident} of {keys} keys resident"
    );
    for j in [first, first + keys.max(1) - 1] {
        let got = t.lock().get(&(), &key(j))?.copied();
        anyhow::ensure!(got == Some([j as u8; 64]), "restored key {j} reads {got:?}");
    }
    Ok(RecoveryResult {
        keys,
        bytes: store.stats().segment_bytes,
        ms,
        loaded_ms,
        open_ms,
        cpu_ms: cpu1 - cpu0,
        faults: faults1 - faults0,
        cold,
    })
}

/// Writes `stores` stores of `keys / stores` keys each under `dir` (see [`store_dir`]).
pub fn write_recovery_states(dir: &Path, keys: u64, stores: usize) -> Result<()> {
    anyhow::ensure!(stores > 0, "at least one store");
    let per = keys / stores as u64;
    for s in 0..stores {
        write_recovery_state(&store_dir(dir, s), s as u64 * per, per)?;
    }
    Ok(())
}

/// The directory of store `s` of a recovery run under `dir`.
pub fn store_dir(dir: &Path, s: usize) -> std::path::PathBuf {
    dir.join(format!("store-{s}"))
}

/// A recovery of one or several stores at once.
#[derive(Clone, Debug, Default)]
pub struct ParallelRecovery {
    /// Each store's figures (its own open and load, on its own executor).
    pub stores: Vec<RecoveryResult>,
    /// Until the last store could serve the job, in ms (the stores start together).
    pub wall_ms: f64,
    /// Until the last store was loaded in full, in ms (NaN for lazy restores).
    pub loaded_wall_ms: f64,
}

impl ParallelRecovery {
    /// As one JSON value (what a restoring child process reports to the bench).
    pub fn to_json(&self) -> serde_json::Value {
        let stores: Vec<_> = self
            .stores
            .iter()
            .map(|r| {
                let loaded = finite(r.loaded_ms);
                let (ms, open, cpu) = (r.ms, r.open_ms, r.cpu_ms);
                serde_json::json!([r.keys, r.bytes, ms, open, cpu, r.faults, r.cold, loaded])
            })
            .collect();
        let loaded = finite(self.loaded_wall_ms);
        serde_json::json!({ "wall_ms": self.wall_ms, "loaded_wall_ms": loaded, "stores": stores })
    }
    /// Reads [`to_json`](Self::to_json)'s value back.
    pub fn from_json(v: &serde_json::Value) -> Result<ParallelRecovery> {
        let bad = || anyhow::anyhow!("bad recovery record: {v}");
        let f = |x: &serde_json::Value| x.as_f64().ok_or_else(bad);
        let nan_if_null = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
        let mut out = ParallelRecovery {
            wall_ms: f(&v["wall_ms"])?,
            loaded_wall_ms: nan_if_null(&v["loaded_wall_ms"]),
            stores: Vec::new(),
        };
        for r in v["stores"].as_array().ok_or_else(bad)? {
            out.stores.push(RecoveryResult {
                keys: f(&r[0])? as u64,
                bytes: f(&r[1])? as u64,
                ms: f(&r[2])?,
                open_ms: f(&r[3])?,
                cpu_ms: f(&r[4])?,
                faults: f(&r[5])? as u64,
                cold: r[6].as_bool().ok_or_else(bad)?,
                loaded_ms: nan_if_null(&r[7]),
            });
        }
        Ok(out)
    }
}

/// Restores the `stores` stores that [`write_recovery_states`] wrote under `dir`, all at
/// once: one store on an unpinned executor, several each on its own executor pinned to its
/// own CPU of `cpus` (round robin), as a job's workers restore theirs, started together.
/// `cold` is whether the page cache was dropped since they were written; `mode` how the
/// tables are restored. A recovery is a fresh process (a restarted job), so the bench runs
/// this in one: memory the writing freed would otherwise be reused, already faulted in.
pub fn restore_stores(
    dir: &Path,
    keys: u64,
    stores: usize,
    cpus: &[usize],
    budget: usize,
    cold: bool,
    mode: Restore,
) -> Result<ParallelRecovery> {
    anyhow::ensure!(stores > 0, "at least one store");
    let per = keys / stores as u64;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(stores));
    let mut handles = Vec::new();
    for s in 0..stores {
        let placement = match cpus {
            _ if stores == 1 => Placement::Unbound,
            [] => Placement::Unbound,
            _ => Placement::Fixed(cpus[s % cpus.len()]),
        };
        let d = store_dir(dir, s);
        let barrier = barrier.clone();
        let h = LocalExecutorBuilder::new(placement)
            .io_memory(64 << 10)
            .spawn(move || async move {
                barrier.wait();
                restore_store(&d, (s as u64 * per, per), budget, cold, mode).await
            })
            .map_err(|e| anyhow::anyhow!("start a glommio executor: {e}"))?;
        handles.push(h);
    }
    let mut out = ParallelRecovery::default();
    for h in handles {
        let r = h
            .join()
            .map_err(|e| anyhow::anyhow!("glommio executor failed: {e}"))?;
        out.stores.push(r?);
    }
    // The stores start together (the barrier): the slowest one's times are the machine's.
    let slowest = |f: fn(&RecoveryResult) -> f64| out.stores.iter().map(f).fold(0.0, f64::max);
    out.wall_ms = slowest(|r| r.ms);
    out.loaded_wall_ms = match mode {
        Restore::Lazy => f64::NAN,
        _ => slowest(|r| r.loaded_ms),
    };
    Ok(out)
}

/// `x`, or JSON null when it is not finite (JSON has no NaN).
pub fn finite(x: f64) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!(x)
    } else {
        serde_json::Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_the_keys_and_operations_without_overlap() {
        for (keys, ops, workers) in [(10, 3, 1), (10, 3, 3), (1_000_003, 999, 7), (5, 5, 5)] {
            let shares = Share::split(keys, ops, workers);
            assert_eq!(shares.len(), workers);
            assert_eq!(shares.iter().map(|s| s.keys).sum::<u64>(), keys);
            assert_eq!(shares.iter().map(|s| s.ops).sum::<u64>(), ops);
            let mut next = 0;
            for s in &shares {
                assert_eq!(s.first, next, "shares are contiguous");
                next += s.keys;
                // Every key a share touches is one of its own.
                let own = s.first..s.first + s.keys;
                let index = |k: [u8; 16]| u64::from_le_bytes(k[8..].try_into().unwrap());
                for j in 0..s.ops.max(s.keys).min(1000) {
                    assert!(own.contains(&index(s.load_key(j % s.keys))));
                    assert!(own.contains(&index(s.update_key(j))));
                    assert!(own.contains(&index(s.read_key(j))));
                }
            }
        }
    }

    #[test]
    fn the_machine_rate_runs_from_the_first_start_to_the_last_end() {
        let t0 = Instant::now();
        let at = |ms: u64, cpu: f64| Mark {
            wall: t0 + Duration::from_millis(ms),
            cpu,
        };
        let run = |load: Span, update: Span, read: Span, load_batch_max_ms: f64| WorkerRun {
            load,
            update,
            read,
            memory_bytes: 10,
            update_compacted_bytes: 1,
            read_segments: 3,
            load_batch_max_ms,
        };
        let runs = [
            run(
                (at(0, 0.0), at(1000, 1.0)),
                (at(2000, 2.0), at(2500, 3.0)),
                (at(3000, 4.0), at(3100, 4.2)),
                1.0,
            ),
            run(
                (at(10, 0.0), at(2000, 2.0)),
                (at(2001, 2.0), at(3000, 4.0)),
                (at(3000, 4.0), at(3200, 4.4)),
                2.0,
            ),
        ];
        let shares = Share::split(400, 100, 2);
        let r = combine(&runs, &shares);
        assert!((r.load_per_s - 400.0 / 2.0).abs() < 1e-6, "{r:?}");
        assert!((r.update_per_s - 100.0 / 1.0).abs() < 1e-6, "{r:?}");
        assert!((r.read_per_s - 100.0 / 0.2).abs() < 1e-6, "{r:?}");
        assert!((r.update_cpu_per_s - 2.0).abs() < 1e-9, "{r:?}");
        assert!((r.read_cpu_per_s - 2.0).abs() < 1e-9, "{r:?}");
        assert_eq!(
            (r.memory_bytes, r.update_compacted_bytes, r.read_segments),
            (20, 2, 3)
        );
        // The longest load batch is the longest of any worker's.
        assert_eq!(r.load_batch_max_ms, 2.0, "{r:?}");
    }

    #[test]
    fn several_stores_run_the_workload_each_in_its_own_directory() {
        let dir = tempfile::tempdir().unwrap();
        let r = sluice_point(
            dir.path(),
            20_000,
            4_000,
            20_000 * ENTRY_BYTES / 10,
            2,
            &[],
            true,
        )
        .unwrap();
        assert!(r.load_per_s > 0.0 && r.update_per_s > 0.0 && r.read_per_s > 0.0);
        // Each store kept to its half of the budget (and a batch's worth over it).
        assert!(
            r.memory_bytes <= (20_000 * ENTRY_BYTES / 10 + 2 * BATCH as usize * ENTRY_BYTES) as u64,
            "{r:?}"
        );
        for w in ["w0", "w1"] {
            assert!(dir.path().join(w).join("STORE").exists(), "{w}");
        }
    }

    #[test]
    fn warming_reads_every_file_of_the_directory_and_nothing_below_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.seg"), vec![1u8; 3 << 20]).unwrap();
        std::fs::write(dir.path().join("STORE"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("b"), vec![2u8; 1000]).unwrap();
        assert_eq!(warm_files(dir.path(), "test").unwrap(), (3 << 20) + 1);
        let e = warm_files(&dir.path().join("missing"), "test").unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("missing") && msg.contains("No such file"),
            "{msg}"
        );
    }

    #[test]
    fn a_worker_that_fails_stops_the_others_and_its_error_is_the_one_reported() {
        let dir = tempfile::tempdir().unwrap();
        // The second worker's store directory is a file: its open fails.
        std::fs::write(dir.path().join("w1"), b"not a directory").unwrap();
        let e = sluice_point(dir.path(), 20_000, 4_000, usize::MAX / 2, 2, &[], false).unwrap_err();
        let msg = format!("{e:#}");
        assert!(!msg.starts_with(STOPPED), "{msg}");
        assert!(msg.contains("w1"), "{msg}");
    }
}
