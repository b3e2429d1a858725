//! `sluice bench checkpoint`: what checkpoints cost (issue 5, item 8), in three parts.
//!
//! - **throughput**: a keyed tumbling-window count and sum whose state holds `--keys` keys
//!   while `--dirty-keys` of them change (`sluice_bench::checkpoint`). The state is prepared
//!   once (a warm-up over every key, then a savepoint); every run resumes from that savepoint
//!   and processes `--events` more events, without checkpoints and with a checkpoint every
//!   `--intervals-ms`, interleaved run by run (none, 1 s, 100 ms, none, …). Throughput is
//!   events per second from the moment the first worker processes records to the source's
//!   end, and events per CPU-second of the whole run (steadier on a shared machine); the
//!   overhead is one minus the ratio of medians. Every run's results must be equal.
//!   Each variant's checkpoints give HDR percentiles of the per-instance synchronous pause,
//!   the end-to-end duration and the alignment (`CheckpointStats`, merged over its runs).
//! - **alignment**: a fast and a slow paced source into a union and a keyed reduce,
//!   checkpointed; the alignment-time percentiles, beside a run with two fast sources.
//! - **recovery**: per state size in `--recovery-keys`, a checkpoint of that many keys is
//!   prepared; then the time from `execute` to every worker processing records, for a fresh
//!   start, a restore from the checkpoint (the store reopened in place, as after a failure),
//!   and a restore from a savepoint (state copied by key groups, as when rescaling).
//!
//! Checkpoints and savepoints are real files, fsynced, in a scratch directory (under `--dir`)
//! removed at the end. Human tables go to stderr, JSON to stdout; the load average is
//! recorded before and after.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sluice::{
    CheckpointConfig, CheckpointStats, Env, EventTimeTrigger, RestoreFrom, RuntimeConfig,
    WatermarkStrategy, WindowAssigner,
};
use sluice_bench::checkpoint::{HotKeyGen, HotKeySource, Probe, ProbedCountSum, STOPPED_RUNNING};
use sluice_bench::paced::PacedSource;
use sluice_bench::stats::median;
use sluice_bench::window::{DigestSink, WindowDigest};
use sluice_core::checkpoint::metadata;
use sluice_tools::window_agg::parse_window_spec;

use crate::bench_window::cpu_seconds;
use sluice::cli::progress::human;

/// Options of `sluice bench checkpoint`.
#[derive(Args, Debug)]
pub struct CheckpointBench {
    /// Keys in the window state of the throughput runs.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Keys the events after the warm-up draw from: about the keys dirty per checkpoint
    /// (default: 1% of --keys; --dirty-keys equal to --keys draws from all of them).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    dirty_keys: Option<u64>,
    /// Events per throughput run, after the prepared state.
    #[arg(long, default_value_t = 300_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Checkpoint intervals compared with no checkpoints, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,100")]
    intervals_ms: Vec<u64>,
    /// The windows: tumbling:SIZE_MS or sliding:SIZE_MS:SLIDE_MS; far longer than the run's
    /// event time, so that the state keeps its size until the input ends.
    #[arg(long, default_value = "tumbling:3600000", value_parser = parse_window_spec)]
    window: WindowAssigner,
    /// Events per second of event time.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1000..))]
    event_rate: u64,
    /// Throttle the source to this many events per second over all workers (default: as
    /// fast as the job goes).
    #[arg(long, value_name = "EVENTS_PER_S")]
    rate: Option<f64>,
    /// No pre-aggregation before the exchange (an explicit event-time trigger): every
    /// record updates the window state, as in a Flink DataStream window.
    #[arg(long)]
    per_record: bool,
    /// Workers (default: the cores available).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Runs of each variant (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Checkpoint interval of the alignment runs.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    align_interval_ms: u64,
    /// The slow input's pause between two batches of 100 (the fast one reads 10 every ms).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    slow_pause_ms: u64,
    /// How long each alignment run reads, in ms.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(10..))]
    align_ms: u64,
    /// State sizes (keys) of the recovery runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    recovery_keys: Vec<u64>,
    /// Run only this part.
    #[arg(long, value_parser = ["throughput", "alignment", "recovery"])]
    only: Option<String>,
    /// Parent of the scratch directory (on the disk to measure, not tmpfs).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print a JSON record to stdout.
    #[arg(long)]
    json: bool,
}

/// Out-of-orderness of the watermarks (the events are in order).
const OUT_OF_ORDERNESS_MS: i64 = 0;
/// Interval of the checkpoints that prepare a state.
const PREPARE_INTERVAL: Duration = Duration::from_millis(100);

impl CheckpointBench {
    fn workers(&self) -> usize {
        self.workers
            .map_or_else(|| sluice::available_cpus().len().max(1), |w| w as usize)
    }
    fn wants(&self, part: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == part)
    }
    fn events_gen(&self, keys: u64, hot_keys: u64) -> HotKeyGen {
        HotKeyGen {
            keys,
            hot_keys: hot_keys.min(keys),
            rate_per_ms: (self.event_rate / 1000).max(1),
            seed: 0x5EED,
        }
    }
}

pub fn run(args: &CheckpointBench) -> Result<()> {
    if !matches!(
        args.window,
        WindowAssigner::Tumbling { .. } | WindowAssigner::Sliding { .. }
    ) {
        bail!("--window must be tumbling or sliding (the state must keep its size)");
    }
    let scratch = {
        let mut b = tempfile::Builder::new();
        b.prefix("sluice-bench-checkpoint-");
        match &args.dir {
            Some(d) => b.tempdir_in(d),
            None => b.tempdir(),
        }
        .context("create a scratch directory")?
    };
    let load_before = load_average();
    let mut out = serde_json::Map::new();
    if args.wants("throughput") {
        out.insert(
            "throughput".into(),
            throughput(args, &scratch.path().join("t"))?,
        );
    }
    if args.wants("alignment") {
        out.insert(
            "alignment".into(),
            alignment(args, &scratch.path().join("a"))?,
        );
    }
    if args.wants("recovery") {
        out.insert(
            "recovery".into(),
            recovery(args, &scratch.path().join("r"))?,
        );
    }
    let load_after = load_average();
    eprintln!("load average before {load_before:?}, after {load_after:?}");
    if args.json {
        let mut json = json!({
            "schema": "sluice-bench/1",
            "bench": "checkpoint",
            "workers": args.workers(),
            "runs": args.runs,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "machine": { "cpus": sluice::available_cpus().len() },
        });
        if let Some(o) = json.as_object_mut() {
            o.extend(out);
        }
        println!("{json}");
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`); empty if unreadable.
fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| {
            s.split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// An environment of `workers` whose stores, without checkpoints, go under `dir`.
fn env_in(workers: usize, dir: &Path) -> Env {
    Env::with_config(RuntimeConfig {
        workers,
        state_dir: Some(dir.join("scratch")),
        restart_attempts: 0,
        ..RuntimeConfig::default()
    })
}

/// The benchmark's window job: hot-key events → watermarks → keyed windows → `(count, sum)`
/// → a digest in `sink`. With `per_record`, an explicit event-time trigger turns the
/// pre-aggregation off.
fn window_job(
    env: &Env,
    source: HotKeySource,
    window: WindowAssigner,
    per_record: bool,
    sink: DigestSink,
) {
    let probe = source.probe.clone();
    let windows = env
        .from_source(source)
        .assign_timestamps_and_watermarks(WatermarkStrategy::for_bounded_out_of_orderness(
            OUT_OF_ORDERNESS_MS,
        ))
        .into_keyed()
        .window(window);
    let agg = ProbedCountSum { probe };
    if per_record {
        windows.trigger(EventTimeTrigger).aggregate(agg).sink(sink);
    } else {
        windows.aggregate(agg).sink(sink);
    }
}

/// A prepared state: a checkpoint and a savepoint holding every key's window.
struct Prepared {
    /// The checkpoint directory (its newest complete checkpoint holds every key).
    checkpoints: PathBuf,
    savepoint: PathBuf,
    secs: f64,
}

/// Runs the warm-up of `events_gen` with checkpoints, and once a complete checkpoint holds all
/// of it, stops the job with a savepoint.
fn prepare(
    args: &CheckpointBench,
    events_gen: HotKeyGen,
    per_record: bool,
    dir: &Path,
) -> Result<Prepared> {
    let workers = args.workers();
    let env = env_in(workers, dir);
    let checkpoints = dir.join("chk");
    let mut config = CheckpointConfig::new(&checkpoints, PREPARE_INTERVAL);
    config.retain = 2;
    env.set_checkpoint_config(config);
    let stop = Arc::new(AtomicBool::new(false));
    env.stop_with_savepoint_on(stop.clone(), dir.join("savepoints"));
    let keys = events_gen.keys;
    let chk = checkpoints.clone();
    env.on_progress(move |p, _| {
        if p.records_in >= keys && !stop.load(Ordering::Relaxed) && warm_up_checkpointed(&chk, keys)
        {
            stop.store(true, Ordering::Relaxed);
        }
    });
    let source = HotKeySource {
        events_gen,
        end: u64::MAX,
        hold_at: Some(keys),
        probe: Probe::new(workers, false),
    };
    window_job(&env, source, args.window, per_record, DigestSink::new());
    let start = Instant::now();
    let report = env
        .execute("bench checkpoint")
        .context("prepare the state")?;
    let savepoint = report
        .savepoint
        .context("the preparing job ended without its savepoint")?;
    Ok(Prepared {
        checkpoints,
        savepoint,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Whether the newest complete checkpoint in `dir` has read every source split past `keys`.
fn warm_up_checkpointed(dir: &Path, keys: u64) -> bool {
    let Ok((Some((_, meta)), _)) = metadata::latest(dir) else {
        return false;
    };
    meta.stages
        .iter()
        .filter(|s| s.name.starts_with("Source: "))
        .flat_map(|s| &s.instances)
        .flat_map(|i| &i.splits)
        .all(|s| s.done || s.position.unwrap_or(0) >= keys)
}

/// HDR percentiles in µs.
fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.5),
        "p99": h.value_at_quantile(0.99),
        "p99_9": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

fn stats_json(s: &CheckpointStats) -> Value {
    json!({
        "completed": s.completed,
        "aborted": s.aborted,
        "sync_pause_us": percentiles(&s.sync_us),
        "sync_pause_max_per_checkpoint_us": percentiles(&s.sync_max_us),
        "sync_pause_by_stage_us": s.by_stage.iter().map(|p| {
            json!({
                "stage": p.name,
                "sync_pause_us": percentiles(&p.sync_us),
                "freeze_us": percentiles(&p.freeze_us),
                "sync_cpu_us": percentiles(&p.sync_cpu_us),
            })
        }).collect::<Vec<_>>(),
        "duration_us": percentiles(&s.duration_us),
        "align_us": percentiles(&s.align_us),
    })
}

struct Variant {
    name: String,
    interval_ms: Option<u64>,
    events_per_s: Vec<f64>,
    wall_events_per_s: Vec<f64>,
    events_per_cpu_s: Vec<f64>,
    /// Checkpoints measured per run (the final checkpoint of a finished job is not).
    completed: Vec<u64>,
    stats: CheckpointStats,
}

/// What one throughput run measured.
struct RunResult {
    /// Events per second from the first worker running to the source's end.
    events_per_s: f64,
    /// Events per second of the whole run (restore and final firing included).
    wall_events_per_s: f64,
    /// Events per CPU-second of the whole run (all threads).
    events_per_cpu_s: f64,
    stats: CheckpointStats,
    digest: WindowDigest,
}

/// One throughput run from the prepared savepoint.
fn throughput_run(
    args: &CheckpointBench,
    prepared: &Prepared,
    events_gen: HotKeyGen,
    interval_ms: Option<u64>,
    dir: &Path,
) -> Result<RunResult> {
    let workers = args.workers();
    let env = env_in(workers, dir);
    if let Some(ms) = interval_ms {
        env.enable_checkpointing(dir.join("chk"), Duration::from_millis(ms));
    }
    env.restore_from(RestoreFrom::Path(prepared.savepoint.clone()));
    if let Some(rate) = args.rate {
        env.set_source_rate(rate);
    }
    let probe = Probe::new(workers, false);
    let source = HotKeySource {
        events_gen,
        end: events_gen.keys + args.events,
        hold_at: None,
        probe: probe.clone(),
    };
    let sink = DigestSink::new();
    let digest = sink.handle();
    window_job(&env, source, args.window, args.per_record, sink);
    let (start, cpu_before) = (Instant::now(), cpu_seconds());
    let report = env.execute("bench checkpoint").context("throughput run")?;
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    // From the first worker processing records: a worker still restoring its state while
    // another already runs must not shorten the interval (that would inflate the rate).
    let (Some(running), Some(end)) = (probe.first_after(start), probe.source_end_after(start))
    else {
        bail!("a throughput run never ran on every worker or never ended");
    };
    let steady = end.saturating_sub(running).as_secs_f64().max(1e-9);
    let _ = std::fs::remove_dir_all(dir);
    Ok(RunResult {
        events_per_s: args.events as f64 / steady,
        wall_events_per_s: args.events as f64 / wall,
        events_per_cpu_s: args.events as f64 / cpu.max(1e-9),
        stats: report.checkpoints,
        digest: digest.digest(),
    })
}

fn throughput(args: &CheckpointBench, dir: &Path) -> Result<Value> {
    let dirty = args.dirty_keys.unwrap_or((args.keys / 100).max(1));
    let events_gen = args.events_gen(args.keys, dirty);
    eprintln!("preparing a state of {} keys (a savepoint) ...", args.keys);
    let prepared = prepare(args, events_gen, args.per_record, &dir.join("prepare"))?;
    let state_bytes = dir_bytes(&prepared.savepoint);
    eprintln!(
        "prepared in {:.1}s: savepoint of {} MB",
        prepared.secs,
        state_bytes / 1_000_000
    );
    let mut variants = vec![Variant {
        name: "none".into(),
        interval_ms: None,
        events_per_s: vec![],
        wall_events_per_s: vec![],
        events_per_cpu_s: vec![],
        completed: vec![],
        stats: CheckpointStats::default(),
    }];
    for &ms in &args.intervals_ms {
        variants.push(Variant {
            name: format!("every {ms} ms"),
            interval_ms: Some(ms),
            events_per_s: vec![],
            wall_events_per_s: vec![],
            events_per_cpu_s: vec![],
            completed: vec![],
            stats: CheckpointStats::default(),
        });
    }
    let mut reference: Option<WindowDigest> = None;
    for run in 0..args.runs {
        for (i, v) in variants.iter_mut().enumerate() {
            let run_dir = dir.join(format!("run-{run}-{i}"));
            let r = throughput_run(args, &prepared, events_gen, v.interval_ms, &run_dir)?;
            match reference {
                Some(d) if d != r.digest => {
                    bail!("{}: results differ from the first run's", v.name)
                }
                _ => reference = Some(r.digest),
            }
            // The final checkpoint of a finished job is not measured.
            let measured = r.stats.duration_us.len();
            if v.interval_ms.is_some() && measured == 0 {
                eprintln!(
                    "warning: {} measured no checkpoint in run {}: make the run longer",
                    v.name,
                    run + 1
                );
            }
            v.events_per_s.push(r.events_per_s);
            v.wall_events_per_s.push(r.wall_events_per_s);
            v.events_per_cpu_s.push(r.events_per_cpu_s);
            v.completed.push(measured);
            v.stats.add(&r.stats);
        }
        eprintln!("run {}/{} done", run + 1, args.runs);
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(throughput_report(
        args,
        &variants,
        dirty,
        state_bytes,
        &prepared,
    ))
}

fn throughput_report(
    args: &CheckpointBench,
    variants: &[Variant],
    dirty: u64,
    state_bytes: u64,
    prepared: &Prepared,
) -> Value {
    let none = median(&variants[0].events_per_s);
    let none_wall = median(&variants[0].wall_events_per_s);
    let none_cpu = median(&variants[0].events_per_cpu_s);
    eprintln!(
        "\nwindow job, {} keys, {} hot, {} events per run, {}{}, {} runs, medians:",
        args.keys,
        dirty,
        args.events,
        args.window.describe(),
        if args.per_record { ", per record" } else { "" },
        args.runs
    );
    eprintln!(
        "{:<14} {:>9} {:>9} {:>12} {:>9} {:>6} {:>10} {:>10} {:>10}",
        "checkpoints",
        "events/s",
        "overhead",
        "events/cpu-s",
        "overhead",
        "count",
        "sync p99",
        "dur p50",
        "dur p99"
    );
    let mut json_variants = Vec::new();
    for v in variants {
        let m = median(&v.events_per_s);
        let overhead = 1.0 - m / none;
        let c = median(&v.events_per_cpu_s);
        let cpu_overhead = 1.0 - c / none_cpu;
        let s = &v.stats;
        let q = |h: &Histogram<u64>, x: f64| {
            if h.is_empty() {
                "-".to_string()
            } else {
                format!("{} µs", h.value_at_quantile(x))
            }
        };
        eprintln!(
            "{:<14} {:>9} {:>8.1}% {:>12} {:>8.1}% {:>6} {:>10} {:>10} {:>10}",
            v.name,
            human(m),
            overhead * 100.0,
            human(c),
            cpu_overhead * 100.0,
            s.duration_us.len(),
            q(&s.sync_us, 0.99),
            q(&s.duration_us, 0.5),
            q(&s.duration_us, 0.99),
        );
        for p in s.by_stage.iter().filter(|p| !p.sync_us.is_empty()) {
            eprintln!(
                "    sync p50 {} p99 {} (CPU p99 {}, freeze p99 {}): {}",
                q(&p.sync_us, 0.5),
                q(&p.sync_us, 0.99),
                q(&p.sync_cpu_us, 0.99),
                q(&p.freeze_us, 0.99),
                p.name
            );
        }
        let mut o = json!({
            "name": v.name,
            "interval_ms": v.interval_ms,
            "events_per_s_median": m,
            "events_per_s": v.events_per_s,
            "wall_events_per_s_median": median(&v.wall_events_per_s),
            "ratio_vs_none": m / none,
            "overhead": overhead,
            "events_per_cpu_s_median": c,
            "events_per_cpu_s": v.events_per_cpu_s,
            "cpu_overhead": cpu_overhead,
            "wall_overhead": 1.0 - median(&v.wall_events_per_s) / none_wall,
            "measured_checkpoints_per_run": v.completed,
        });
        if let (Some(o), Value::Object(s)) = (o.as_object_mut(), stats_json(s)) {
            o.extend(s);
        }
        json_variants.push(o);
    }
    json!({
        "keys": args.keys,
        "dirty_keys": dirty,
        "events": args.events,
        "window": args.window.describe(),
        "per_record": args.per_record,
        "event_rate": args.event_rate,
        "rate": args.rate,
        "savepoint_bytes": state_bytes,
        "prepare_s": prepared.secs,
        "variants": json_variants,
    })
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// One alignment run: a fast source and one paused `slow_pause` between batches of 100 (or
/// two fast ones) into a union and a keyed count and sum, checkpointed.
fn alignment_run(
    args: &CheckpointBench,
    slow_pause: Option<Duration>,
    dir: &Path,
) -> Result<CheckpointStats> {
    let workers = args.workers() as u64;
    let env = env_in(workers as usize, dir);
    env.enable_checkpointing(
        dir.join("chk"),
        Duration::from_millis(args.align_interval_ms),
    );
    // 10 numbers per ms per worker on the fast side.
    let fast = |first, count| PacedSource {
        first,
        count,
        batch: 10,
        pause: Duration::from_millis(1),
    };
    let n_fast = workers * 10 * args.align_ms;
    let a = env.from_source(fast(0, n_fast));
    let b = match slow_pause {
        Some(pause) => {
            let n_slow = workers * 100 * args.align_ms / pause.as_millis().max(1) as u64;
            env.from_source(PacedSource {
                first: n_fast,
                count: n_slow.max(1),
                batch: 100,
                pause,
            })
        }
        None => env.from_source(fast(n_fast, n_fast)),
    };
    let out = a
        .union(b)
        .map(|x: u64| (x % 97, (1u64, x)))
        .into_keyed()
        .emit_final()
        .reduce(|a: (u64, u64), b: (u64, u64)| (a.0 + b.0, a.1 + b.1))
        .collect();
    let report = env
        .execute("bench checkpoint alignment")
        .context("alignment run")?;
    if out.take().len() != 97 {
        bail!("the alignment job lost keys");
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(report.checkpoints)
}

fn alignment(args: &CheckpointBench, dir: &Path) -> Result<Value> {
    let slow = Duration::from_millis(args.slow_pause_ms);
    let mut skewed = CheckpointStats::default();
    let mut balanced = CheckpointStats::default();
    for run in 0..args.runs {
        let s = alignment_run(args, Some(slow), &dir.join(format!("skewed-{run}")))?;
        skewed.add(&s);
        let b = alignment_run(args, None, &dir.join(format!("balanced-{run}")))?;
        balanced.add(&b);
        eprintln!("alignment run {}/{} done", run + 1, args.runs);
    }
    eprintln!(
        "\nalignment, a union of two paced inputs, checkpoints every {} ms, {} runs:",
        args.align_interval_ms, args.runs
    );
    for (name, s) in [("skewed", &skewed), ("balanced", &balanced)] {
        eprintln!(
            "{name:<9} {} checkpoints, alignment p50 {} µs, p99 {} µs, max {} µs",
            s.completed,
            s.align_us.value_at_quantile(0.5),
            s.align_us.value_at_quantile(0.99),
            s.align_us.max()
        );
    }
    Ok(json!({
        "interval_ms": args.align_interval_ms,
        "read_ms": args.align_ms,
        "fast": "10 numbers per ms per worker",
        "slow": format!("100 numbers per {} ms per worker", args.slow_pause_ms),
        "skewed": stats_json(&skewed),
        "balanced": stats_json(&balanced),
    }))
}

/// How a recovery run starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    Fresh,
    Checkpoint,
    Savepoint,
}

/// The time from `execute` to every worker's window operator processing a record; the run
/// then stops itself.
fn recovery_run(
    args: &CheckpointBench,
    prepared: &Prepared,
    events_gen: HotKeyGen,
    start: Start,
    dir: &Path,
) -> Result<f64> {
    let workers = args.workers();
    let env = env_in(workers, dir);
    match start {
        Start::Fresh => {}
        Start::Checkpoint => {
            env.restore_from(RestoreFrom::Path(prepared.checkpoints.clone()));
        }
        Start::Savepoint => {
            env.restore_from(RestoreFrom::Path(prepared.savepoint.clone()));
        }
    }
    let probe = Probe::new(workers, true);
    let source = HotKeySource {
        events_gen,
        end: u64::MAX,
        hold_at: None,
        probe: probe.clone(),
    };
    window_job(&env, source, args.window, true, DigestSink::new());
    let origin = Instant::now();
    match env.execute("bench checkpoint") {
        Err(e) if e.to_string().contains(STOPPED_RUNNING) => {}
        Err(e) => return Err(e).context("recovery run"),
        Ok(_) => bail!("a recovery run ended before it stopped itself"),
    }
    let running = probe
        .running_after(origin)
        .context("a recovery run stopped before it ran")?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(running.as_secs_f64() * 1e3)
}

fn recovery(args: &CheckpointBench, dir: &Path) -> Result<Value> {
    let mut sizes = Vec::new();
    eprintln!();
    for &keys in &args.recovery_keys {
        // Restored runs draw from every key, so every worker's windows get records at once.
        let events_gen = args.events_gen(keys, keys);
        let size_dir = dir.join(format!("keys-{keys}"));
        eprintln!("preparing a checkpoint of {keys} keys ...");
        let prepared = prepare(args, events_gen, true, &size_dir.join("prepare"))?;
        let checkpoint_bytes = dir_bytes(&prepared.checkpoints);
        let mut ms = [Vec::new(), Vec::new(), Vec::new()];
        for run in 0..args.runs {
            for (i, start) in [Start::Fresh, Start::Checkpoint, Start::Savepoint]
                .into_iter()
                .enumerate()
            {
                let run_dir = size_dir.join(format!("run-{run}-{i}"));
                ms[i].push(recovery_run(args, &prepared, events_gen, start, &run_dir)?);
            }
        }
        let [fresh, checkpoint, savepoint] = ms.map(|v| (median(&v), v));
        eprintln!(
            "{keys} keys: running after {:.0} ms fresh, {:.0} ms from the checkpoint, {:.0} ms \
             from the savepoint (medians of {})",
            fresh.0, checkpoint.0, savepoint.0, args.runs
        );
        sizes.push(json!({
            "keys": keys,
            "checkpoint_dir_bytes": checkpoint_bytes,
            "savepoint_bytes": dir_bytes(&prepared.savepoint),
            "fresh_ms_median": fresh.0,
            "checkpoint_ms_median": checkpoint.0,
            "savepoint_ms_median": savepoint.0,
            "reopen_ms": checkpoint.0 - fresh.0,
            "fresh_ms": fresh.1,
            "checkpoint_ms": checkpoint.1,
            "savepoint_ms": savepoint.1,
        }));
        let _ = std::fs::remove_dir_all(&size_dir);
    }
    Ok(json!({ "per_record": true, "sizes": sizes }))
}
