//! `sluice bench window`: windowed aggregation (count and sum per key and window) over
//! generated events — the hand-written single-threaded tumbling-window loop, the engine on 1
//! worker and on N workers with the requested windows, and (when those are not tumbling) the
//! engine on 1 worker with tumbling windows of the same size, interleaved run by run on the
//! same events; medians and ratios. Every engine run's results are checked against the loop's
//! (tumbling) or the 1-worker run's.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use sluice::{Env, WatermarkStrategy, WindowAssigner};
use sluice_bench::stats::median;
use sluice_bench::window::{
    CountSum, DigestSink, EventGen, EventSource, WindowDigest, tumbling_loop,
};
use sluice_tools::window_agg::parse_window_spec;

use sluice::cli::progress::human;

/// Options of `sluice bench window`.
#[derive(Args, Debug)]
pub struct WindowBench {
    /// Events to generate.
    #[arg(long, default_value_t = 20_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// The windows: tumbling:SIZE_MS, sliding:SIZE_MS:SLIDE_MS or session:GAP_MS.
    #[arg(long, default_value = "tumbling:1000", value_parser = parse_window_spec)]
    window: WindowAssigner,
    /// Workers of the parallel engine run (default: the cores available).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Events per second of event time.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1000..))]
    event_rate: u64,
    /// One event in eight is this many ms older than its neighbours (at most).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(0..))]
    disorder_ms: i64,
    /// The watermark's out-of-orderness bound; at least `--disorder-ms`, so that no event is
    /// late and every run must give the same windows.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(0..))]
    out_of_orderness_ms: i64,
    /// Runs of each variant.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Print a JSON record to stdout.
    #[arg(long)]
    json: bool,
}

struct Variant {
    name: String,
    workers: usize,
    window: Option<WindowAssigner>,
    events_per_s: Vec<f64>,
    /// Events per second of CPU time (all threads): robust to other load on the machine,
    /// which inflates wall time but not CPU time.
    events_per_cpu_s: Vec<f64>,
}

/// CPU time used by this process so far (user + system, all threads), in seconds.
pub(crate) fn cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

fn engine_run(
    events_gen: EventGen,
    window: WindowAssigner,
    d: i64,
    workers: usize,
) -> Result<(f64, WindowDigest)> {
    let env = Env::new();
    env.set_workers(workers);
    let sink = DigestSink::new();
    let digest = sink.handle();
    env.from_source(EventSource::new(events_gen))
        .assign_timestamps_and_watermarks(WatermarkStrategy::for_bounded_out_of_orderness(d))
        .into_keyed()
        .window(window)
        .aggregate(CountSum)
        .sink(sink);
    let start = Instant::now();
    env.execute("bench window").context("bench job failed")?;
    Ok((start.elapsed().as_secs_f64(), digest.digest()))
}

/// The size of the tumbling windows the loop (and the tumbling comparison) uses.
fn tumbling_size(window: &WindowAssigner) -> i64 {
    match *window {
        WindowAssigner::Tumbling { size, .. } | WindowAssigner::Sliding { size, .. } => size,
        WindowAssigner::Session { gap, .. } => gap,
        WindowAssigner::Global => 1000,
    }
}

fn variants(args: &WindowBench, n: usize) -> Vec<Variant> {
    let variant = |name: String, workers, window| Variant {
        name,
        workers,
        window,
        events_per_s: Vec::new(),
        events_per_cpu_s: Vec::new(),
    };
    let spec = args.window.describe();
    let mut v = vec![variant("hand-written loop (tumbling)".into(), 1, None)];
    let tumbling = WindowAssigner::tumbling(tumbling_size(&args.window));
    if !matches!(args.window, WindowAssigner::Tumbling { .. }) {
        v.push(variant(
            format!("sluice 1 worker, {}", tumbling.describe()),
            1,
            Some(tumbling),
        ));
    }
    v.push(variant(
        format!("sluice 1 worker, {spec}"),
        1,
        Some(args.window),
    ));
    if n > 1 {
        v.push(variant(
            format!("sluice {n} workers, {spec}"),
            n,
            Some(args.window),
        ));
    }
    v
}

pub fn window(args: &WindowBench) -> Result<()> {
    if args.disorder_ms > args.out_of_orderness_ms {
        bail!(
            "--disorder-ms {} exceeds --out-of-orderness-ms {}: late events would make runs on \
             different worker counts disagree",
            args.disorder_ms,
            args.out_of_orderness_ms
        );
    }
    let events_gen = EventGen {
        events: args.events,
        keys: args.keys,
        rate_per_ms: (args.event_rate / 1000).max(1),
        disorder_ms: args.disorder_ms,
        seed: 0x5EED,
    };
    let n = args
        .workers
        .map_or_else(|| sluice::available_cpus().len().max(1), |w| w as usize);
    let size = tumbling_size(&args.window);
    let d = args.out_of_orderness_ms;
    let mut variants = variants(args, n);
    let mut spec_digest: Option<WindowDigest> = None;
    let (reference, late) = tumbling_loop(&events_gen, size, d);
    if late > 0 {
        bail!("internal: {late} late events despite disorder <= out-of-orderness");
    }
    for run in 0..args.runs {
        for v in variants.iter_mut() {
            let cpu_before = cpu_seconds();
            let (secs, digest) = match v.window {
                None => {
                    let start = Instant::now();
                    let (digest, _) = tumbling_loop(&events_gen, size, d);
                    (start.elapsed().as_secs_f64(), digest)
                }
                Some(w) => engine_run(events_gen, w, d, v.workers)?,
            };
            let cpu = cpu_seconds() - cpu_before;
            check(&v.name, v.window, &digest, &reference, &mut spec_digest)?;
            v.events_per_s.push(args.events as f64 / secs);
            v.events_per_cpu_s.push(args.events as f64 / cpu.max(1e-9));
        }
        eprintln!("run {}/{} done", run + 1, args.runs);
    }
    report(args, &variants, &reference, n)
}

/// Tumbling results must equal the loop's; the requested windows must give the same results
/// in every run, whatever the worker count.
fn check(
    name: &str,
    window: Option<WindowAssigner>,
    digest: &WindowDigest,
    reference: &WindowDigest,
    spec_digest: &mut Option<WindowDigest>,
) -> Result<()> {
    let tumbling = matches!(window, None | Some(WindowAssigner::Tumbling { .. }));
    let want = if tumbling {
        Some(*reference)
    } else {
        *spec_digest
    };
    if let Some(want) = want
        && want != *digest
    {
        bail!("{name}: results differ from the reference ({digest:?} vs {want:?})");
    }
    if !tumbling {
        *spec_digest = Some(*digest);
    }
    Ok(())
}

fn report(
    args: &WindowBench,
    variants: &[Variant],
    reference: &WindowDigest,
    n: usize,
) -> Result<()> {
    let medians: Vec<f64> = variants.iter().map(|v| median(&v.events_per_s)).collect();
    let cpu_medians: Vec<f64> = variants
        .iter()
        .map(|v| median(&v.events_per_cpu_s))
        .collect();
    let find = |pred: &dyn Fn(&Variant) -> bool| {
        variants
            .iter()
            .zip(&medians)
            .find(|(v, _)| pred(v))
            .map(|(_, m)| *m)
    };
    let is_spec = |v: &Variant| v.window == Some(args.window);
    let loop_rate = medians[0];
    let tumbling_1 =
        find(&|v| v.workers == 1 && matches!(v.window, Some(WindowAssigner::Tumbling { .. })));
    let spec_1 = find(&|v| v.workers == 1 && is_spec(v)).unwrap_or(0.0);
    let spec_n = find(&|v| v.workers == n && n > 1 && is_spec(v));
    eprintln!(
        "\nwindowed count+sum, {} events, {} keys, {} ({} windows per run), {} runs, medians:",
        args.events,
        args.keys,
        args.window.describe(),
        reference.windows,
        args.runs
    );
    eprintln!(
        "{:<40} {:>14} {:>16}",
        "variant", "events/s", "events/cpu-s"
    );
    for ((v, m), c) in variants.iter().zip(&medians).zip(&cpu_medians) {
        eprintln!("{:<40} {:>14} {:>16}", v.name, human(*m), human(*c));
    }
    if cpu_medians[0] > 0.0 && variants.len() > 1 {
        eprintln!(
            "per CPU-second, sluice 1 worker {} / loop: {:.2}",
            variants[1].window.map_or(String::new(), |w| w.describe()),
            cpu_medians[1] / cpu_medians[0]
        );
    }
    let ratio = |a: Option<f64>, b: f64| a.filter(|_| b > 0.0).map(|a| a / b);
    let vs_loop = ratio(tumbling_1, loop_rate);
    let vs_tumbling = tumbling_1.map(|t| spec_1 / t);
    let scaling = ratio(spec_n, spec_1);
    if let Some(r) = vs_loop {
        eprintln!("sluice 1 worker tumbling / hand-written loop: {r:.2}");
    }
    if !matches!(args.window, WindowAssigner::Tumbling { .. }) {
        eprintln!(
            "sluice 1 worker {} / tumbling: {:.2}",
            args.window.describe(),
            vs_tumbling.unwrap_or(0.0)
        );
    }
    if let Some(r) = scaling {
        eprintln!("sluice {n} workers / 1 worker: {r:.2}");
    }
    if args.json {
        let json = serde_json::json!({
            "schema": "sluice-bench/1",
            "bench": "window",
            "events": args.events,
            "keys": args.keys,
            "window": args.window.describe(),
            "event_rate": args.event_rate,
            "out_of_orderness_ms": args.out_of_orderness_ms,
            "disorder_ms": args.disorder_ms,
            "windows_emitted": reference.windows,
            "runs": args.runs,
            "variants": variants.iter().zip(&medians).zip(&cpu_medians)
                .map(|((v, m), c)| serde_json::json!({
                    "name": v.name,
                    "workers": v.workers,
                    "events_per_s_median": m,
                    "events_per_s": v.events_per_s,
                    "events_per_cpu_s_median": c,
                })).collect::<Vec<_>>(),
            "ratio_1_worker_tumbling_vs_loop": vs_loop,
            "ratio_1_worker_window_vs_tumbling": vs_tumbling,
            "ratio_n_workers_vs_1_worker": scaling,
            "n_workers": n,
            "machine": { "cpus": sluice::available_cpus().len() },
        });
        println!("{json}");
    }
    Ok(())
}
