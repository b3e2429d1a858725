//! `sluice bench nexmark`: the Nexmark queries on generated events, as fast as possible
//! (throughput mode) or at a fixed rate with end-to-end latency (rate mode), one query or the
//! whole suite; a table like the suite's own runner on stderr, JSON lines (`sluice-bench/1`)
//! on stdout or into a file, and the result rows into `--output DIR/qN/` for checking.
//!
//! Throughput is events over the job's wall time; per core, over the workers; and per
//! CPU-second, over the CPU time the process used during the run (user + system, all threads),
//! which other load on a shared machine inflates far less than wall time. The suite's runner
//! reports `Cores` as the CPU it measured and `Throughput/Cores` as events per CPU-second; the
//! table shows both kinds.
//!
//! Rate mode (`--rate R`): the source releases events by the wall clock at R events/s in
//! total, event time following wall time (`sluice_bench::nexmark::run` explains what a row's
//! generation time is); each row's latency from then to the sink goes into HDR histograms.
//!
//! `--checkpoint-interval-ms MS` runs every query with aligned checkpoints into a fresh
//! directory (under `--checkpoint-dir`, else the system's temporary directory; removed after
//! the run): every operator's state goes into them, and the sinks commit with them. The table
//! and the JSON then give the checkpoints completed, their duration and the longest synchronous
//! pause per checkpoint (p50/p99/max over the runs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use sluice::{CheckpointStats, Env};
use sluice_bench::nexmark::queries::{Due, Query};
use sluice_bench::nexmark::run::{BenchOutput, LatencyClock, ThrottledSource, latency_histogram};
use sluice_bench::nexmark::{NexmarkConfig, NexmarkSource};
use sluice_bench::stats::median;

use sluice::cli::progress::human;

/// Options of `sluice bench nexmark`.
#[derive(Args, Debug)]
pub struct NexmarkBench {
    /// The query to run: q0, q1, q2, q3, q4, q5, q5-inc, q7, q8, q9, q10, q11, q12, q14, q15,
    /// q16, q17, q18, q19, q20, q21 or q22.
    #[arg(long, value_name = "QN", value_parser = parse_query, required_unless_present = "all")]
    query: Option<Query>,
    /// Runs every implemented query, one after the other.
    #[arg(long, conflicts_with = "query")]
    all: bool,
    /// Events per run (the suite runs 100 M).
    #[arg(long, default_value_t = 100_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Events per second of event time (default 10 M, the suite's; in rate mode, the rate).
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u64).range(1..))]
    event_rate: Option<u64>,
    /// Event 0's time, epoch milliseconds.
    #[arg(long, value_name = "T", default_value_t = 1_700_000_000_000)]
    base_time_ms: i64,
    /// Workers (default: the cores available).
    #[arg(long, value_name = "W", value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Rate mode: release R events per second in total by the wall clock, and measure each
    /// result row's end-to-end latency.
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Writes each query's result rows into DIR/qN/ (part files; one line per row, the SELECT
    /// list's fields comma-separated). With several runs, the first one writes them.
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// Takes aligned checkpoints every MS milliseconds (exactly-once state and output).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_interval_ms: Option<u64>,
    /// Where the checkpointed runs write their checkpoints (a fresh directory per run, removed
    /// after it; default: the system's temporary directory). Must be on the disk to measure.
    #[arg(long, value_name = "DIR", requires = "checkpoint_interval_ms")]
    checkpoint_dir: Option<PathBuf>,
    /// Runs of each query; the figures are medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Writes one JSON object per query, to stdout or to FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    json: Option<PathBuf>,
}

fn parse_query(s: &str) -> Result<Query, String> {
    Query::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Query::ALL.iter().map(|q| q.name()).collect();
        format!("unknown query '{s}' (implemented: {})", names.join(", "))
    })
}

/// One query's measurements over its runs.
struct Measured {
    query: Query,
    workers: usize,
    secs: Vec<f64>,
    cpu_secs: Vec<f64>,
    rows: u64,
    latency: Option<Histogram<u64>>,
    checkpoints: Option<CheckpointStats>,
}

/// CPU time used by this process so far (user + system, all threads), in seconds.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

pub fn nexmark(args: &NexmarkBench) -> Result<()> {
    let queries: Vec<Query> = match args.query {
        Some(q) => vec![q],
        None => Query::ALL.to_vec(),
    };
    let cfg = config(args)?;
    let workers = args
        .workers
        .map_or_else(|| sluice::available_cpus().len().max(1), |w| w as usize);
    if let Some(dir) = &args.output {
        for q in &queries {
            sluice::cli::check_output_dir(&dir.join(q.name())).map_err(anyhow::Error::msg)?;
        }
    }
    let mut results = Vec::new();
    for &query in &queries {
        let mut m = Measured {
            query,
            workers,
            secs: Vec::new(),
            cpu_secs: Vec::new(),
            rows: 0,
            latency: None,
            checkpoints: None,
        };
        for run in 0..args.runs {
            let output = (run == 0).then(|| args.output.as_ref().map(|d| d.join(query.name())));
            run_once(args, &cfg, query, workers, output.flatten(), &mut m)?;
            let (secs, cpu) = (m.secs[run as usize], m.cpu_secs[run as usize]);
            eprintln!(
                "{} run {}/{}: {:.2}s, {} events/s, {} events/CPU-s, {} rows",
                query.name(),
                run + 1,
                args.runs,
                secs,
                human(args.events as f64 / secs),
                human(args.events as f64 / cpu.max(1e-9)),
                m.rows
            );
        }
        results.push(m);
    }
    print_table(args, &results);
    write_json(args, &cfg, &results)
}

/// The generator's configuration: in rate mode event time follows the wall clock, so the
/// event-time rate is the rate.
fn config(args: &NexmarkBench) -> Result<NexmarkConfig> {
    let event_rate = match (args.rate, args.event_rate) {
        (Some(r), Some(e)) if r != e => bail!(
            "--event-rate {e} differs from --rate {r}: in rate mode event time follows the wall \
             clock, so the event-time rate is the rate"
        ),
        (Some(r), _) => r,
        (None, e) => e.unwrap_or(10_000_000),
    };
    Ok(NexmarkConfig {
        events: Some(args.events),
        base_time_ms: args.base_time_ms,
        first_event_rate: event_rate,
        next_event_rate: event_rate,
    })
}

fn run_once(
    args: &NexmarkBench,
    cfg: &NexmarkConfig,
    query: Query,
    workers: usize,
    output: Option<PathBuf>,
    m: &mut Measured,
) -> Result<()> {
    let env = Env::new();
    env.set_workers(workers);
    let clock = match args.rate {
        Some(_) => Some(LatencyClock::new(cfg)?),
        None => None,
    };
    let checkpoint_dir = match args.checkpoint_interval_ms {
        Some(ms) => {
            let parent = args
                .checkpoint_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir);
            std::fs::create_dir_all(&parent)
                .with_context(|| format!("create checkpoint directory {}", parent.display()))?;
            let dir = tempfile::Builder::new()
                .prefix(&format!("sluice-nexmark-{}-", query.name()))
                .tempdir_in(&parent)
                .with_context(|| {
                    format!("create a checkpoint directory in {}", parent.display())
                })?;
            env.enable_checkpointing(dir.path(), Duration::from_millis(ms));
            Some(dir)
        }
        None => None,
    };
    let out = BenchOutput::new(output, clock.clone());
    match clock {
        Some(clock) => query.build(&env, ThrottledSource::new(cfg.clone(), clock), &out),
        None => query.build(&env, NexmarkSource::new(cfg.clone()), &out),
    }
    let cpu_before = cpu_seconds();
    let start = Instant::now();
    let report = env
        .execute(&format!("nexmark {}", query.name()))
        .with_context(|| format!("query {} failed", query.name()))?;
    m.secs.push(start.elapsed().as_secs_f64());
    m.cpu_secs.push(cpu_seconds() - cpu_before);
    if let Some(dir) = checkpoint_dir {
        let stats = &report.checkpoints;
        match &mut m.checkpoints {
            Some(c) => c.add(stats),
            None => m.checkpoints = Some(stats.clone()),
        }
        let path = dir.path().display().to_string();
        dir.close()
            .with_context(|| format!("remove checkpoint directory {path}"))?;
    }
    m.rows = out.rows.load(Ordering::Relaxed);
    if args.rate.is_some() && query.due() != Due::AtEnd {
        let run = std::mem::replace(
            &mut *out.histogram.lock().unwrap_or_else(|e| e.into_inner()),
            latency_histogram(),
        );
        let merged = m.latency.get_or_insert_with(latency_histogram);
        merged.add(&run).context("merge latency histograms")?;
    }
    Ok(())
}

/// Throughput figures of one query: medians over its runs.
struct Figures {
    secs: f64,
    rps: f64,
    per_core: f64,
    per_cpu_s: f64,
    cores_used: f64,
}

fn figures(events: u64, m: &Measured) -> Figures {
    let secs = median(&m.secs);
    let rps: Vec<f64> = m.secs.iter().map(|s| events as f64 / s).collect();
    let per_cpu: Vec<f64> = m
        .cpu_secs
        .iter()
        .map(|c| events as f64 / c.max(1e-9))
        .collect();
    let cores: Vec<f64> = m.cpu_secs.iter().zip(&m.secs).map(|(c, s)| c / s).collect();
    let rps = median(&rps);
    Figures {
        secs,
        rps,
        per_core: rps / m.workers as f64,
        per_cpu_s: median(&per_cpu),
        cores_used: median(&cores),
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn print_table(args: &NexmarkBench, results: &[Measured]) {
    let rate = args.rate.is_some();
    let mut header = format!(
        "| {:<6} | {:>11} | {:>7} | {:>5} | {:>7} | {:>16} | {:>15} | {:>12} | {:>10} |",
        "Query",
        "Events",
        "Workers",
        "Cores",
        "Time(s)",
        "Throughput (r/s)",
        "Throughput/Core",
        "Events/CPU-s",
        "Rows"
    );
    if rate {
        header.push_str(&format!(
            " {:>8} | {:>8} | {:>8} | {:>8} |",
            "p50(ms)", "p99(ms)", "p99.9(ms)", "max(ms)"
        ));
    }
    let checkpointed = args.checkpoint_interval_ms.is_some();
    if checkpointed {
        header.push_str(&format!(
            " {:>6} | {:>13} | {:>13} |",
            "Ckpts", "Ckpt p99(ms)", "Pause p99(ms)"
        ));
    }
    let rule: String = header
        .chars()
        .map(|c| if c == '|' { '+' } else { '-' })
        .collect();
    eprintln!("\n{rule}\n{header}\n{rule}");
    for m in results {
        let f = figures(args.events, m);
        let mut line = format!(
            "| {:<6} | {:>11} | {:>7} | {:>5.2} | {:>7.3} | {:>16} | {:>15} | {:>12} | {:>10} |",
            m.query.name(),
            args.events,
            m.workers,
            f.cores_used,
            f.secs,
            human(f.rps),
            human(f.per_core),
            human(f.per_cpu_s),
            m.rows
        );
        if rate {
            let cols = match &m.latency {
                Some(h) => [0.5, 0.99, 0.999]
                    .map(|q| ms(h.value_at_quantile(q)))
                    .into_iter()
                    .chain([ms(h.max())])
                    .collect::<Vec<_>>(),
                None => vec!["-".to_owned(); 4],
            };
            line.push_str(&format!(
                " {:>8} | {:>8} | {:>9} | {:>8} |",
                cols[0], cols[1], cols[2], cols[3]
            ));
        }
        if let Some(c) = &m.checkpoints {
            let p99 = |h: &Histogram<u64>| {
                if h.is_empty() {
                    "-".to_owned()
                } else {
                    ms(h.value_at_quantile(0.99))
                }
            };
            line.push_str(&format!(
                " {:>6} | {:>13} | {:>13} |",
                c.completed,
                p99(&c.duration_us),
                p99(&c.sync_max_us)
            ));
        }
        eprintln!("{line}");
    }
    eprintln!("{rule}");
    eprintln!(
        "Cores: CPU used (CPU-s per s); Throughput/Core: per worker; Events/CPU-s: events per \
         second of CPU time{}",
        if rate {
            "; latency from each row's due generation time to the sink (q4: final rows, none)"
        } else {
            ""
        }
    );
    if checkpointed {
        eprintln!(
            "Ckpts: checkpoints completed over the runs; Ckpt: trigger to completion; Pause: the \
             longest synchronous pause of any instance, per checkpoint"
        );
    }
}

fn checkpoints_json(args: &NexmarkBench, m: &Measured) -> serde_json::Value {
    let Some(c) = &m.checkpoints else {
        return serde_json::Value::Null;
    };
    let percentiles = |h: &Histogram<u64>| {
        if h.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::json!({
            "p50": h.value_at_quantile(0.5),
            "p99": h.value_at_quantile(0.99),
            "max": h.max(),
            "count": h.len(),
        })
    };
    serde_json::json!({
        "interval_ms": args.checkpoint_interval_ms,
        "completed": c.completed,
        "aborted": c.aborted,
        "duration_us": percentiles(&c.duration_us),
        "sync_pause_max_us": percentiles(&c.sync_max_us),
    })
}

fn write_json(args: &NexmarkBench, cfg: &NexmarkConfig, results: &[Measured]) -> Result<()> {
    let Some(target) = &args.json else {
        return Ok(());
    };
    let mut lines = String::new();
    for m in results {
        let f = figures(args.events, m);
        let (latency, hdr) = match &m.latency {
            Some(h) => (
                serde_json::json!({
                    "p50": h.value_at_quantile(0.5),
                    "p90": h.value_at_quantile(0.9),
                    "p99": h.value_at_quantile(0.99),
                    "p999": h.value_at_quantile(0.999),
                    "max": h.max(),
                    "mean": h.mean(),
                    "count": h.len(),
                }),
                serde_json::Value::String(hdr_base64(h)?),
            ),
            None => (serde_json::Value::Null, serde_json::Value::Null),
        };
        let json = serde_json::json!({
            "schema": "sluice-bench/1",
            "bench": "nexmark",
            "query": m.query.name(),
            "mode": if args.rate.is_some() { "rate" } else { "events" },
            "events": args.events,
            "rate": args.rate,
            "event_rate": cfg.first_event_rate,
            "base_time_ms": cfg.base_time_ms,
            "workers": m.workers,
            "runs": m.secs.len(),
            "duration_s": f.secs,
            "durations_s": m.secs,
            "throughput_rps": f.rps,
            "throughput_per_core": f.per_core,
            "throughput_per_cpu_s": f.per_cpu_s,
            "cpu_cores_used": f.cores_used,
            "rows": m.rows,
            "latency_us": latency,
            "hdr": hdr,
            "checkpoints": checkpoints_json(args, m),
            "machine": {
                "cpus": sluice::available_cpus().len(),
                "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_owned())
                    .ok(),
            },
        });
        lines.push_str(&json.to_string());
        lines.push('\n');
    }
    if target == Path::new("-") {
        print!("{lines}");
        std::io::stdout().flush().context("write JSON to stdout")
    } else {
        std::fs::write(target, lines).with_context(|| format!("write {}", target.display()))
    }
}

/// The histogram in HdrHistogram's V2 deflate encoding, base64: other tools can merge or plot
/// it.
fn hdr_base64(h: &Histogram<u64>) -> Result<String> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| anyhow::anyhow!("encode latency histogram: {e:?}"))?;
    Ok(base64(&bytes))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_pads_as_the_standard_says() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
