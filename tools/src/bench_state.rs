//! `sluice bench state`: the state store against a hand-written `FxHashMap` and (built with
//! `--features rocksdb`) RocksDB, on the same keys in the same invocation, run by run
//! interleaved: point updates and reads in memory and with the budget at a fraction of the
//! state, checkpoints against the number of dirty keys, recovery against state size.
//! Medians and ratios go to stderr as a table, and with `--json` to stdout.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::{Value, json};
use sluice_bench::state::{self, ENTRY_BYTES, PointResult};
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
    /// Memory budget of the constrained runs, as a fraction of the in-memory state.
    #[arg(long, default_value_t = 0.1)]
    budget_fraction: f64,
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
            "update_per_s": self.med(|r| r.update_per_s),
            "read_per_s": self.med(|r| r.read_per_s),
            "memory_bytes": self.med(|r| r.memory_bytes as f64),
            "update_per_s_runs": self.runs.iter().map(|r| r.update_per_s).collect::<Vec<_>>(),
            "read_per_s_runs": self.runs.iter().map(|r| r.read_per_s).collect::<Vec<_>>(),
        })
    }
}

fn point_runs(args: &StateBench, keys: u64) -> Result<Vec<Series>> {
    let ops = args.ops.unwrap_or(keys.min(10_000_000));
    let budget = ((keys as f64) * ENTRY_BYTES as f64 * args.budget_fraction) as usize;
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
        series[0].runs.push(state::hashmap_point(keys, ops));
        let tmp = scratch(args, "point")?;
        let d = tmp.path();
        series[1].runs.push(state::sluice_point(
            &d.join("mem"),
            keys,
            ops,
            usize::MAX / 2,
        )?);
        series[2]
            .runs
            .push(state::sluice_point(&d.join("budget"), keys, ops, budget)?);
        #[cfg(feature = "rocksdb")]
        {
            series[3]
                .runs
                .push(state::rocksdb_point(&d.join("rmem"), keys, ops, None)?);
            series[4].runs.push(state::rocksdb_point(
                &d.join("rbudget"),
                keys,
                ops,
                Some(budget),
            )?);
        }
        eprintln!("point {keys} keys: run {}/{} done", run + 1, args.runs);
    }
    Ok(series)
}

fn point(args: &StateBench) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for &keys in &args.keys {
        let series = point_runs(args, keys)?;
        eprintln!("\npoint workload, {keys} keys (16 B keys, 64 B values), medians:");
        eprintln!(
            "{:<22} {:>14} {:>14} {:>14}",
            "variant", "updates/s", "reads/s", "loads/s"
        );
        for s in &series {
            eprintln!(
                "{:<22} {:>14.0} {:>14.0} {:>14.0}",
                s.name,
                s.med(|r| r.update_per_s),
                s.med(|r| r.read_per_s),
                s.med(|r| r.load_per_s)
            );
        }
        let med = |i: usize, f: fn(&PointResult) -> f64| series.get(i).map_or(0.0, |s| s.med(f));
        let upd = |i: usize| med(i, |r| r.update_per_s);
        let rd = |i: usize| med(i, |r| r.read_per_s);
        let mut ratios = json!({
            "sluice_in_memory_vs_hashmap_updates": upd(1) / upd(0),
            "sluice_in_memory_vs_hashmap_reads": rd(1) / rd(0),
        });
        eprintln!(
            "sluice in memory / hashmap: updates {:.2}, reads {:.2}",
            upd(1) / upd(0),
            rd(1) / rd(0)
        );
        if series.len() > 3 {
            eprintln!(
                "sluice / rocksdb in memory: updates {:.2}, reads {:.2}",
                upd(1) / upd(3),
                rd(1) / rd(3)
            );
            eprintln!(
                "sluice / rocksdb with budget: updates {:.2}, reads {:.2}",
                upd(2) / upd(4),
                rd(2) / rd(4)
            );
            ratios["sluice_vs_rocksdb_in_memory_updates"] = json!(upd(1) / upd(3));
            ratios["sluice_vs_rocksdb_in_memory_reads"] = json!(rd(1) / rd(3));
            ratios["sluice_vs_rocksdb_budget_updates"] = json!(upd(2) / upd(4));
            ratios["sluice_vs_rocksdb_budget_reads"] = json!(rd(2) / rd(4));
        }
        out.push(json!({
            "keys": keys,
            "budget_fraction": args.budget_fraction,
            "variants": series.iter().map(Series::json).collect::<Vec<_>>(),
            "ratios": ratios,
        }));
    }
    Ok(out)
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

fn recovery(args: &StateBench) -> Result<Value> {
    let mut rows = Vec::new();
    eprintln!("\nrecovery (open + load the table), medians:");
    eprintln!(
        "{:>10} {:>12} {:>10} {:>10} {:>10} {:>6}",
        "keys", "bytes", "ms", "open ms", "MB/s", "cold"
    );
    for &keys in &args.recovery_keys {
        let mut rs = Vec::new();
        for _ in 0..args.runs {
            let tmp = scratch(args, "rec")?;
            rs.push(state::sluice_recovery(tmp.path(), keys, usize::MAX / 2)?);
        }
        let ms = median(&rs.iter().map(|r| r.ms).collect::<Vec<_>>());
        let open_ms = median(&rs.iter().map(|r| r.open_ms).collect::<Vec<_>>());
        let bytes = rs[0].bytes;
        let mbps = bytes as f64 / 1e6 / (ms / 1e3);
        let cold = rs[0].cold;
        eprintln!("{keys:>10} {bytes:>12} {ms:>10.1} {open_ms:>10.1} {mbps:>10.0} {cold:>6}");
        rows.push(json!({
            "keys": keys,
            "bytes": bytes,
            "ms": ms,
            "open_ms": open_ms,
            "mb_per_s": mbps,
            "cold_cache": cold,
        }));
    }
    Ok(json!(rows))
}

/// Runs the benchmark.
pub fn run(args: &StateBench) -> Result<()> {
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
