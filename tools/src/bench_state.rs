//! `sluice bench state`: the state store against a hand-written `FxHashMap` and (built with
//! `--features rocksdb`) RocksDB, on the same keys in the same invocation, run by run
//! interleaved: point updates and reads in memory and with the budget at a fraction of the
//! state, checkpoints against the number of dirty keys, recovery against state size.
//! Medians and ratios go to stderr as a table, and with `--json` to stdout.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::{Value, json};
use sluice_bench::state::{self, ENTRY_BYTES, PointResult, Restore};
use sluice_bench::stats::median;

/// Options of `sluice bench state`.
#[derive(Args, Debug)]
pub struct StateBench {
    /// State sizes (keys) of the point workloads, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000000")]
    keys: Vec<u64>,
    /// Updates and reads per point run (default: the number of keys, at most 10M).
    #[arg(long)]
    ops: Option<u64>,
    /// Workers of the point runs, comma-separated: with N > 1, Sluice runs N stores, one per
    /// executor pinned to its own CPU, and RocksDB N instances on N threads (as Flink runs
    /// one per slot), each with an Nth of the keys, operations and budget; the rates are
    /// then the machine's.
    #[arg(long, value_delimiter = ',', default_value = "1",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    point_workers: Vec<u32>,
    /// Memory budget of the constrained runs, as a fraction of the in-memory state.
    #[arg(long, default_value_t = 0.1)]
    budget_fraction: f64,
    /// Start the point runs' timed phases with each engine's files as its load left them,
    /// instead of read once just before (on a VM that reclaims idle memory, reading a page
    /// not touched for a minute costs far more than one just touched).
    #[arg(long)]
    no_warm: bool,
    /// Total keys of the checkpoint runs.
    #[arg(long, default_value_t = 10_000_000)]
    checkpoint_keys: u64,
    /// Dirty keys per checkpoint, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,10000,100000,1000000"
    )]
    dirty: Vec<u64>,
    /// State sizes (keys) of the recovery runs, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000000,4000000,10000000"
    )]
    recovery_keys: Vec<u64>,
    /// Stores restored at once in the recovery runs, comma-separated: each gets an equal share
    /// of the keys and its own executor pinned to its own CPU, as a job's workers restore
    /// theirs (default: 1 and, on a machine of several CPUs, one per CPU).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=256))]
    recovery_stores: Vec<u32>,
    /// How the recovery runs restore, comma-separated: `background` (the default for jobs)
    /// validates and indexes the segments, then loads the table into memory (the job could
    /// run meanwhile, reading what is not loaded yet from disk); `eager` loads each table
    /// when it is registered, before the job could run; `lazy` validates and indexes the
    /// segments and reads entries on access.
    #[arg(long, value_delimiter = ',', default_value = "background,eager,lazy",
          value_parser = ["background", "eager", "lazy"])]
    recovery_modes: Vec<String>,
    /// Which process the recovery runs restore in, comma-separated: `new` is a fresh
    /// process, as a worker process started after a crash restores (every byte of its state
    /// lands in memory never touched before); `same` is a process that restored the same
    /// stores once and dropped them, as a job restarted on its running workers after an
    /// in-job failure restores, into memory its allocator kept (the page cache is dropped in
    /// between, as before every run).
    #[arg(long, value_delimiter = ',', default_value = "new,same",
          value_parser = ["new", "same"])]
    recovery_process: Vec<String>,
    /// Internal: restore the recovery stores written under DIR in this process and print
    /// the figures as JSON (each recovery run is a fresh process, as a restarted job is).
    #[arg(long, hide = true, value_name = "DIR")]
    recovery_child: Option<PathBuf>,
    /// Internal: the page cache was dropped before the child started.
    #[arg(long, hide = true)]
    recovery_child_cold: bool,
    /// Runs of each variant (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Run only this part: point, checkpoint or recovery.
    #[arg(long, value_parser = ["point", "checkpoint", "recovery"])]
    only: Option<String>,
    /// Parent directory for the stores (must be on the disk to measure, not tmpfs).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print a JSON record to stdout.
    #[arg(long)]
    json: bool,
}

fn scratch(args: &StateBench, tag: &str) -> Result<tempfile::TempDir> {
    let prefix = format!("sluice-bench-state-{tag}-");
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    Ok(match &args.dir {
        Some(d) => b.tempdir_in(d)?,
        None => b.tempdir()?,
    })
}

struct Series {
    name: String,
    runs: Vec<PointResult>,
}

impl Series {
    fn med(&self, f: impl Fn(&PointResult) -> f64) -> f64 {
        median(&self.runs.iter().map(f).collect::<Vec<_>>())
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "load_per_s": self.med(|r| r.load_per_s),
            "load_batch_max_ms": self.med(|r| r.load_batch_max_ms),
            "update_per_s": self.med(|r| r.update_per_s),
            "read_per_s": self.med(|r| r.read_per_s),
            "memory_bytes": self.med(|r| r.memory_bytes as f64),
            "update_cpu_per_s": self.med(|r| r.update_cpu_per_s),
            "update_compacted_bytes": self.med(|r| r.update_compacted_bytes as f64),
            "read_cpu_per_s": self.med(|r| r.read_cpu_per_s),
            "read_segments": self.med(|r| r.read_segments as f64),
            "update_per_s_runs": self.runs.iter().map(|r| r.update_per_s).collect::<Vec<_>>(),
            "read_per_s_runs": self.runs.iter().map(|r| r.read_per_s).collect::<Vec<_>>(),
        })
    }
}

fn point_runs(args: &StateBench, keys: u64, workers: usize) -> Result<Vec<Series>> {
    let ops = args.ops.unwrap_or(keys.min(10_000_000));
    let budget = ((keys as f64) * ENTRY_BYTES as f64 * args.budget_fraction) as usize;
    let cpus = sluice::available_cpus();
    let warm = !args.no_warm;
    let mut names = vec!["hashmap".to_string(), "sluice in memory".into()];
    names.push(format!(
        "sluice budget {:.0}%",
        args.budget_fraction * 100.0
    ));
    if cfg!(feature = "rocksdb") {
        names.push("rocksdb in memory".into());
        names.push(format!(
            "rocksdb budget {:.0}%",
            args.budget_fraction * 100.0
        ));
    }
    let mut series: Vec<Series> = names
        .into_iter()
        .map(|name| Series { name, runs: vec![] })
        .collect();
    for run in 0..args.runs {
        // The hand-written map is one thread's limit; with several workers it is not run.
        if workers == 1 {
            series[0].runs.push(state::hashmap_point(keys, ops));
        }
        let tmp = scratch(args, "point")?;
        let d = tmp.path();
        series[1].runs.push(state::sluice_point(
            &d.join("mem"),
            keys,
            ops,
            usize::MAX / 2,
            workers,
            &cpus,
            warm,
        )?);
        series[2].runs.push(state::sluice_point(
            &d.join("budget"),
            keys,
            ops,
            budget,
            workers,
            &cpus,
            warm,
        )?);
        #[cfg(feature = "rocksdb")]
        {
            series[3].runs.push(state::rocksdb_point(
                &d.join("rmem"),
                keys,
                ops,
                None,
                workers,
                warm,
            )?);
            series[4].runs.push(state::rocksdb_point(
                &d.join("rbudget"),
                keys,
                ops,
                Some(budget),
                workers,
                warm,
            )?);
        }
        eprintln!(
            "point {keys} keys, {workers} worker(s): run {}/{} done",
            run + 1,
            args.runs
        );
    }
    Ok(series)
}

fn point(args: &StateBench) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for &keys in &args.keys {
        for &workers in &args.point_workers {
            out.push(point_block(args, keys, workers as usize)?);
        }
    }
    Ok(out)
}

/// Which rate of a run.
type Rate = fn(&PointResult) -> f64;

/// The point workload at `keys` keys on `workers` workers: the table on stderr and the
/// JSON block.
fn point_block(args: &StateBench, keys: u64, workers: usize) -> Result<Value> {
    let series = point_runs(args, keys, workers)?;
    let series: Vec<Series> = series.into_iter().filter(|s| !s.runs.is_empty()).collect();
    eprintln!(
        "\npoint workload, {keys} keys (16 B keys, 64 B values), {workers} worker(s), medians:"
    );
    eprintln!(
        "{:<22} {:>14} {:>14} {:>14} {:>12} {:>11} {:>13}",
        "variant", "updates/s", "reads/s", "loads/s", "load max ms", "upd cpu/s", "upd merged MB"
    );
    for s in &series {
        eprintln!(
            "{:<22} {:>14.0} {:>14.0} {:>14.0} {:>12.1} {:>11.2} {:>13.1}",
            s.name,
            s.med(|r| r.update_per_s),
            s.med(|r| r.read_per_s),
            s.med(|r| r.load_per_s),
            s.med(|r| r.load_batch_max_ms),
            s.med(|r| r.update_cpu_per_s),
            s.med(|r| r.update_compacted_bytes as f64) / 1e6
        );
    }
    let find = |name: &str| series.iter().find(|s| s.name.starts_with(name));
    let med = |name: &str, f: fn(&PointResult) -> f64| find(name).map(|s| s.med(f));
    let mut ratios = json!({});
    let mut ratio = |key: &str, what: &str, a: Option<f64>, b: Option<f64>| {
        if let (Some(a), Some(b)) = (a, b) {
            eprintln!("{what}: {:.2}", a / b);
            ratios[key] = json!(a / b);
        }
    };
    let updates: Rate = |r| r.update_per_s;
    let reads: Rate = |r| r.read_per_s;
    let kinds = [(updates, "updates"), (reads, "reads")];
    for (f, kind) in kinds {
        let f = |name: &str| med(name, f);
        ratio(
            &format!("sluice_in_memory_vs_hashmap_{kind}"),
            &format!("sluice in memory / hashmap, {kind}"),
            f("sluice in memory"),
            f("hashmap"),
        );
        ratio(
            &format!("sluice_vs_rocksdb_in_memory_{kind}"),
            &format!("sluice / rocksdb in memory, {kind}"),
            f("sluice in memory"),
            f("rocksdb in memory"),
        );
        ratio(
            &format!("sluice_vs_rocksdb_budget_{kind}"),
            &format!("sluice / rocksdb with budget, {kind}"),
            f("sluice budget"),
            f("rocksdb budget"),
        );
    }
    Ok(json!({
        "keys": keys,
        "workers": workers,
        "budget_fraction": args.budget_fraction,
        "files_warmed": !args.no_warm,
        "variants": series.iter().map(Series::json).collect::<Vec<_>>(),
        "ratios": ratios,
    }))
}

fn checkpoint(args: &StateBench) -> Result<Value> {
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let tmp = scratch(args, "ckpt")?;
        runs.push(state::sluice_checkpoints(
            tmp.path(),
            args.checkpoint_keys,
            &args.dirty,
        )?);
        eprintln!("checkpoints: run {}/{} done", run + 1, args.runs);
    }
    eprintln!("\ncheckpoints of {} keys, medians:", args.checkpoint_keys);
    eprintln!(
        "{:>10} {:>12} {:>12} {:>14}",
        "dirty", "freeze µs", "total ms", "bytes"
    );
    let mut rows = Vec::new();
    for i in 0..runs[0].len() {
        let med = |f: &dyn Fn(&state::CheckpointResult) -> f64| {
            median(&runs.iter().map(|r| f(&r[i])).collect::<Vec<_>>())
        };
        let dirty = runs[0][i].dirty;
        let (f, t, b) = (
            med(&|r| r.freeze_us),
            med(&|r| r.total_ms),
            med(&|r| r.bytes as f64),
        );
        let first = if i == 0 { " (first, full)" } else { "" };
        eprintln!("{dirty:>10} {f:>12.1} {t:>12.2} {b:>14.0}{first}");
        rows.push(
            json!({"dirty": dirty, "freeze_us": f, "total_ms": t, "bytes": b, "full": i == 0}),
        );
    }
    Ok(json!({ "keys": args.checkpoint_keys, "checkpoints": rows }))
}

/// The store counts of the recovery runs.
fn recovery_stores(args: &StateBench, cpus: usize) -> Vec<usize> {
    if !args.recovery_stores.is_empty() {
        return args.recovery_stores.iter().map(|&n| n as usize).collect();
    }
    if cpus > 1 { vec![1, cpus] } else { vec![1] }
}

fn recovery(args: &StateBench) -> Result<Value> {
    let cpus = sluice::available_cpus();
    let mut rows = Vec::new();
    eprintln!("\nrecovery (open + load the table), medians:");
    eprintln!(
        "{:>10} {:>6} {:>7} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>6}",
        "keys",
        "stores",
        "process",
        "mode",
        "bytes",
        "ms",
        "open ms",
        "cpu ms",
        "MB/s",
        "MB/s/store",
        "loaded ms",
        "cold"
    );
    for &keys in &args.recovery_keys {
        for stores in recovery_stores(args, cpus.len()) {
            for process in &args.recovery_process {
                for mode in &args.recovery_modes {
                    let run = RecoveryRun {
                        keys,
                        stores,
                        mode: Restore::from_name(mode).unwrap_or_default(),
                        same_process: process == "same",
                    };
                    rows.push(recovery_row(args, &run)?);
                }
            }
        }
    }
    Ok(json!(rows))
}

/// What one row of the recovery table restores, and how.
struct RecoveryRun {
    keys: u64,
    stores: usize,
    mode: Restore,
    same_process: bool,
}

impl RecoveryRun {
    /// The `--recovery-modes` value of this run.
    fn mode(&self) -> &'static str {
        self.mode.name()
    }
    /// The `--recovery-process` value of this run.
    fn process(&self) -> &'static str {
        if self.same_process { "same" } else { "new" }
    }
}

/// One row of the recovery table: `stores` stores holding `keys` keys in all, restored at
/// once in a child process (after the page cache is dropped): a fresh one, or one that
/// restored and dropped them once before (`same_process`). One store runs on an unpinned
/// executor (the series measured since the start); several run pinned, one per CPU. MB/s is
/// the machine's: all the segment bytes over the wall time until the slowest store is done;
/// MB/s/store is each store's bytes over its own time (median over the stores). `ms`,
/// `open ms` and `cpu ms` are the slowest store's time, its open, and the CPU time a store's
/// thread spent (median over the stores), until the job could run. `loaded ms` is the time
/// until the slowest store was resident in full (an eager restore's `ms`; a background
/// restore's load, run to its end at once; none for a lazy one).
fn recovery_row(args: &StateBench, run: &RecoveryRun) -> Result<Value> {
    let &RecoveryRun { keys, stores, .. } = run;
    let (mut wall, mut open, mut cpu, mut per, mut faults, mut loaded) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut bytes, mut cold) = (0u64, true);
    for _ in 0..args.runs {
        let tmp = scratch(args, "rec")?;
        state::write_recovery_states(tmp.path(), keys, stores)?;
        let dropped = state::drop_page_cache();
        let runs = restore_in_child(tmp.path(), run, dropped)?;
        let rs = &runs.stores;
        bytes = rs.iter().map(|r| r.bytes).sum();
        cold &= rs.iter().all(|r| r.cold);
        wall.push(runs.wall_ms);
        loaded.push(runs.loaded_wall_ms);
        open.push(rs.iter().map(|r| r.open_ms).fold(0.0, f64::max));
        cpu.push(median(&rs.iter().map(|r| r.cpu_ms).collect::<Vec<_>>()));
        faults.push(median(
            &rs.iter().map(|r| r.faults as f64).collect::<Vec<_>>(),
        ));
        per.push(median(
            &rs.iter()
                .map(|r| r.bytes as f64 / 1e6 / (r.ms / 1e3))
                .collect::<Vec<_>>(),
        ));
    }
    let ms = median(&wall);
    let (open_ms, cpu_ms, per_store) = (median(&open), median(&cpu), median(&per));
    let mbps = bytes as f64 / 1e6 / (ms / 1e3);
    let (mode, process) = (run.mode(), run.process());
    // A lazy restore loads nothing: NaN prints as such, and is null in the JSON.
    let loaded_ms = match run.mode {
        Restore::Lazy => f64::NAN,
        _ => median(&loaded),
    };
    eprintln!(
        "{keys:>10} {stores:>6} {process:>7} {mode:>10} {bytes:>12} {ms:>9.1} {open_ms:>9.1} \
         {cpu_ms:>9.1} {mbps:>9.0} {per_store:>10.0} {loaded_ms:>9.1} {cold:>6}"
    );
    Ok(json!({
        "keys": keys,
        "stores": stores,
        "mode": mode,
        "process": process,
        "bytes": bytes,
        "ms": ms,
        "open_ms": open_ms,
        "cpu_ms_per_store": cpu_ms,
        "page_faults_per_store": median(&faults),
        "mb_per_s": mbps,
        "mb_per_s_per_store": per_store,
        "ms_runs": wall,
        "loaded_ms": state::finite(loaded_ms),
        "cold_cache": cold,
    }))
}

/// Restores the stores under `dir` in a child process (this binary, `--recovery-child`).
fn restore_in_child(
    dir: &std::path::Path,
    run: &RecoveryRun,
    cold: bool,
) -> Result<state::ParallelRecovery> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["bench", "state", "--recovery-child"])
        .arg(dir)
        .args(["--recovery-keys", &run.keys.to_string()])
        .args(["--recovery-stores", &run.stores.to_string()])
        .args(["--recovery-modes", run.mode()])
        .args(["--recovery-process", run.process()])
        .stderr(std::process::Stdio::inherit());
    if cold {
        cmd.arg("--recovery-child-cold");
    }
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "the restoring child failed: {text}");
    let line = text.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line)
        .map_err(|e| anyhow::anyhow!("the restoring child printed '{line}': {e}"))?;
    state::ParallelRecovery::from_json(&v)
}

/// The child's side of [`restore_in_child`]. In a `same` process the stores are restored
/// and dropped once first (untimed), and the page cache dropped again if it was.
fn recovery_child(args: &StateBench, dir: &std::path::Path) -> Result<()> {
    let (Some(&keys), Some(&stores)) = (args.recovery_keys.first(), args.recovery_stores.first())
    else {
        anyhow::bail!("--recovery-child needs --recovery-keys and --recovery-stores");
    };
    let cpus = sluice::available_cpus();
    let mode = args
        .recovery_modes
        .first()
        .and_then(|m| Restore::from_name(m));
    let mode = mode.unwrap_or_default();
    let mut cold = args.recovery_child_cold;
    let restore = |cold| {
        state::restore_stores(
            dir,
            keys,
            stores as usize,
            &cpus,
            usize::MAX / 2,
            cold,
            mode,
        )
    };
    if args.recovery_process.first().is_some_and(|p| p == "same") {
        restore(cold)?;
        cold = cold && state::drop_page_cache();
    }
    println!("{}", restore(cold)?.to_json());
    Ok(())
}

/// Runs the benchmark.
pub fn run(args: &StateBench) -> Result<()> {
    if let Some(dir) = &args.recovery_child {
        return recovery_child(args, dir);
    }
    let want = |part: &str| args.only.as_deref().is_none_or(|o| o == part);
    let mut record = json!({
        "schema": "sluice-bench/1",
        "bench": "state",
        "runs": args.runs,
        "rocksdb": cfg!(feature = "rocksdb"),
        "machine": { "cpus": sluice::available_cpus().len() },
    });
    if want("point") {
        record["point"] = json!(point(args)?);
    }
    if want("checkpoint") {
        record["checkpoint"] = checkpoint(args)?;
    }
    if want("recovery") {
        record["recovery"] = recovery(args)?;
    }
    if args.json {
        println!("{record}");
    }
    Ok(())
}
