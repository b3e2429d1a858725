//! `sluice bench net --latency`: end-to-end latency of a keyed pipeline whose keyed exchange
//! crosses two nodes, at 10%, 50% and 90% of the pipeline's own maximum rate.
//!
//! The pipeline: a paced generator source (one split, so it reads on worker 0) → `into_keyed`
//! → a running keyed reduce (its value in the state store) → a latency sink. It runs as two
//! parts of one job — two nodes of one worker each, in this process, joined by an
//! authenticated `sluice-net` connection over loopback TCP — so every record whose key
//! worker 1 owns crosses the network (serialized, framed, credited) and the others stay on
//! worker 0 (in-process channel).
//!
//! Latency is `now − due`, where record `n`'s due instant is `start + n / rate`: when the
//! source *should* have emitted it. A record that waited behind a slow pipeline, or behind a
//! source that fell behind, counts its whole wait — the wrk2 way of correcting coordinated
//! omission, by measuring from the intended instant rather than from the actual send. The
//! maximum rate is measured first (the same pipeline unthrottled, median of the runs); each
//! level then runs for a fixed time; every figure is the median over the runs.
//!
//! Each run also reports how long the two worker threads were ready to run but waited for a
//! CPU (their run-queue wait, from `/proc/self/task/*/schedstat`, sampled while the run lasts),
//! per second of the run. On a shared machine with two cores that wait, not the engine, is
//! where the tail comes from: the threads of other sessions' compilers get the kernel's fair
//! share (autogroups, so `nice` does not help), and a worker that is runnable waits a slice of
//! theirs — 2 to 6 ms each time in `perf sched timehist`. Every record behind it waits too,
//! those that stay on worker 0 as well as those that cross the network. A run whose workers
//! waited, say, 50 ms per second cannot have a p99 under a slice; a p99 of 200 µs needs runs
//! whose wait is near zero.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use sluice::{
    Batch, Env, ReadPosition, ReadStatus, Sink, SinkContext, SinkWriter, Source, SourceContext,
    SourceReader,
};
use sluice_bench::stats::median;
use sluice_core::exchange::PartLayout;
use sluice_core::remote::part::{Part, PartSpec};
use sluice_core::runtime::{WORKER_THREAD_PREFIX, default_key_groups};
use sluice_net::{ClusterSecret, NetConfig};

use sluice::cli::progress::human;

/// Highest latency recorded, in µs.
const LATENCY_US_MAX: u64 = 60_000_000;
/// The rates measured, as fractions of the maximum.
const LEVELS: [f64; 3] = [0.1, 0.5, 0.9];

/// The schedule of a run: when record `n` is due.
struct Pace {
    start: OnceLock<Instant>,
    /// Records per second; 0: as fast as possible.
    rate: f64,
    events: u64,
    keys: u64,
}

impl Pace {
    fn now_us(&self) -> i64 {
        let start = *self.start.get_or_init(Instant::now);
        let now = Instant::now();
        match now.checked_duration_since(start) {
            Some(d) => d.as_micros() as i64,
            None => -(start.duration_since(now).as_micros() as i64),
        }
    }
    fn due_us(&self, n: u64) -> i64 {
        if self.rate <= 0.0 {
            return 0;
        }
        (n as f64 / self.rate * 1e6) as i64
    }
    /// Records due by `now_us`.
    fn due_by(&self, now_us: i64) -> u64 {
        if self.rate <= 0.0 {
            return self.events;
        }
        let n = (now_us.max(0) as f64 * self.rate / 1e6) as u64 + 1;
        n.min(self.events)
    }
}

fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `(key, n)` records released on the [`Pace`].
struct PacedSource(Arc<Pace>);

struct PacedReader {
    pace: Arc<Pace>,
    next: u64,
}

impl Source for PacedSource {
    type Item = (u64, u64);
    type Split = ();
    type Reader = PacedReader;
    fn name(&self) -> String {
        "paced generator".into()
    }
    fn is_bounded(&self) -> bool {
        true
    }
    fn splits(&self, _workers: usize) -> sluice::Result<Vec<()>> {
        Ok(vec![()])
    }
    async fn open(
        &self,
        _split: (),
        _start: Option<ReadPosition>,
        _ctx: &SourceContext,
    ) -> sluice::Result<PacedReader> {
        Ok(PacedReader {
            pace: self.0.clone(),
            next: 0,
        })
    }
}

impl SourceReader for PacedReader {
    type Item = (u64, u64);
    async fn read_batch(
        &mut self,
        out: &mut Batch<(u64, u64)>,
        records_max: usize,
    ) -> sluice::Result<ReadStatus> {
        let pace = &self.pace;
        loop {
            if self.next >= pace.events {
                return Ok(ReadStatus::End);
            }
            let now = pace.now_us();
            let due = pace.due_by(now);
            if due <= self.next {
                let wait = pace.due_us(self.next) - now;
                glommio::timer::sleep(Duration::from_micros(wait.max(1) as u64)).await;
                continue;
            }
            let n = (due - self.next).min(records_max as u64);
            for i in self.next..self.next + n {
                out.push((mix(i) % pace.keys, i), sluice::NO_TIMESTAMP);
            }
            self.next += n;
            return Ok(ReadStatus::More);
        }
    }
    fn position(&self) -> ReadPosition {
        ReadPosition(self.next)
    }
}

type Histograms = Arc<Mutex<Vec<(usize, Histogram<u64>)>>>;

/// Records each record's latency in a histogram per worker.
struct LatencySink {
    pace: Arc<Pace>,
    out: Histograms,
}

struct LatencyWriter {
    pace: Arc<Pace>,
    out: Histograms,
    worker: usize,
    hist: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("1 µs to 60 s at 3 digits is valid")
}

impl Sink<(u64, u64)> for LatencySink {
    type Writer = LatencyWriter;
    fn name(&self) -> String {
        "latency".into()
    }
    async fn open(&self, ctx: &SinkContext) -> sluice::Result<LatencyWriter> {
        Ok(LatencyWriter {
            pace: self.pace.clone(),
            out: self.out.clone(),
            worker: ctx.worker,
            hist: histogram(),
        })
    }
}

impl SinkWriter<(u64, u64)> for LatencyWriter {
    async fn write_batch(&mut self, batch: &mut Vec<(u64, u64)>) -> sluice::Result<()> {
        let now = self.pace.now_us();
        for (_, n) in batch.drain(..) {
            let latency = (now - self.pace.due_us(n)).clamp(1, LATENCY_US_MAX as i64);
            let _ = self.hist.record(latency as u64);
        }
        Ok(())
    }
    async fn finish(&mut self) -> sluice::Result<()> {
        let hist = std::mem::replace(&mut self.hist, histogram());
        self.out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.worker, hist));
        Ok(())
    }
}

/// CPU time and run-queue wait of this process's worker threads, by thread id, as
/// `/proc/self/task/TID/schedstat` last showed them.
#[derive(Default)]
struct Sched {
    threads: HashMap<u64, SchedStat>,
}

/// A thread's nanoseconds on a CPU and waiting on a run queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SchedStat {
    cpu_ns: u64,
    wait_ns: u64,
}

/// The first two fields of a `schedstat` file: time on a CPU and time runnable but waiting,
/// in ns (the third, the number of time slices, is not needed).
fn parse_schedstat(text: &str) -> Option<SchedStat> {
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    Some(SchedStat {
        cpu_ns: fields.next()?.ok()?,
        wait_ns: fields.next()?.ok()?,
    })
}

impl Sched {
    /// Reads every worker thread's counters; a thread that is gone keeps its last ones.
    /// Nothing is read where `/proc` is not there (the figures are then 0).
    fn sample(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return;
        };
        for entry in dir.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let path = entry.path();
            let worker = std::fs::read_to_string(path.join("comm"))
                .is_ok_and(|c| c.starts_with(WORKER_THREAD_PREFIX));
            if !worker {
                continue;
            }
            let stat = std::fs::read_to_string(path.join("schedstat"));
            if let Some(stat) = stat.ok().as_deref().and_then(parse_schedstat) {
                self.threads.insert(tid, stat);
            }
        }
    }

    /// What the threads did since `before`, summed over the threads, in ms: CPU, wait.
    fn since(&self, before: &Sched) -> (f64, f64) {
        let (mut cpu, mut wait) = (0u64, 0u64);
        for (tid, now) in &self.threads {
            let then = before.threads.get(tid).copied().unwrap_or_default();
            cpu += now.cpu_ns.saturating_sub(then.cpu_ns);
            wait += now.wait_ns.saturating_sub(then.wait_ns);
        }
        (cpu as f64 / 1e6, wait as f64 / 1e6)
    }
}

/// How often the run-queue figures are sampled while a run lasts.
const SCHED_SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// What one run measured.
struct Run {
    secs: f64,
    /// The worker threads' CPU time and run-queue wait over the run, summed, in ms.
    worker_cpu_ms: f64,
    worker_wait_ms: f64,
    /// Latencies of records that crossed the network (worker 1), and of the others.
    remote: Histogram<u64>,
    local: Histogram<u64>,
}

/// Runs the pipeline as two one-worker parts over loopback.
fn run(rate: f64, events: u64, keys: u64) -> Result<Run> {
    let pace = Arc::new(Pace {
        start: OnceLock::new(),
        rate,
        events,
        keys,
    });
    let hists: Histograms = Arc::new(Mutex::new(Vec::new()));
    let secret = ClusterSecret::random().map_err(|e| anyhow!("{e}"))?;
    let mut parts = Vec::new();
    for p in 0..2 {
        let env = Env::new();
        env.from_source(PacedSource(pace.clone()))
            .into_keyed()
            .reduce(|_: u64, newest: u64| newest)
            .sink(LatencySink {
                pace: pace.clone(),
                out: hists.clone(),
            });
        let (graph, config) = env.take_job("net-latency").map_err(|e| anyhow!("{e}"))?;
        let spec = PartSpec {
            run: 1,
            layout: PartLayout {
                workers: 2,
                local: p..p + 1,
            },
            key_groups_max: default_key_groups(2),
            restore: None,
            config,
            data_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            data_port: 0,
            net: NetConfig::new(secret.clone(), "bench", &format!("node{p}")),
        };
        parts.push(Part::prepare(Arc::new(graph), spec).map_err(|e| anyhow!("{e}"))?);
    }
    let endpoints: Vec<_> = parts.iter().flat_map(|p| p.data_addrs().to_vec()).collect();
    // The first record is due once both parts have had time to connect.
    let _ = pace.start.set(Instant::now() + Duration::from_millis(30));
    // An unthrottled source does not wait for `pace.start`: the run's length is taken from
    // here, connections included (taking it from `pace.start` made a run that ended within
    // those 30 ms look almost infinitely fast).
    let mut before = Sched::default();
    before.sample();
    let mut sched = Sched::default();
    let started = Instant::now();
    for p in &mut parts {
        p.start(endpoints.clone());
    }
    let mut done = [false, false];
    let mut sampled = started;
    while !done.iter().all(|d| *d) {
        if sampled.elapsed() >= SCHED_SAMPLE_EVERY {
            sched.sample();
            sampled = Instant::now();
        }
        for (i, p) in parts.iter_mut().enumerate() {
            if let Some(result) = p.poll_finished() {
                result.map_err(|e| anyhow!("part {i}: {e}"))?;
                done[i] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = started.elapsed().as_secs_f64();
    let (worker_cpu_ms, worker_wait_ms) = sched.since(&before);
    let (mut remote, mut local) = (histogram(), histogram());
    for (worker, h) in hists.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let target = if *worker == 1 {
            &mut remote
        } else {
            &mut local
        };
        target
            .add(h)
            .map_err(|e| anyhow!("merge histograms: {e}"))?;
    }
    if remote.len() + local.len() != events {
        return Err(anyhow!(
            "measured {} of {events} records",
            remote.len() + local.len()
        ));
    }
    Ok(Run {
        secs,
        worker_cpu_ms,
        worker_wait_ms,
        remote,
        local,
    })
}

/// p50, p99, p99.9 and max of `h`, in µs.
fn percentiles(h: &Histogram<u64>) -> [f64; 4] {
    [
        h.value_at_quantile(0.5) as f64,
        h.value_at_quantile(0.99) as f64,
        h.value_at_quantile(0.999) as f64,
        h.max() as f64,
    ]
}

/// Element-wise medians of percentile rows.
fn medians(rows: &[[f64; 4]]) -> [f64; 4] {
    let mut out = [0.0; 4];
    for (i, o) in out.iter_mut().enumerate() {
        let column: Vec<f64> = rows.iter().map(|r| r[i]).collect();
        *o = median(&column);
    }
    out
}

fn json_of(p: &[f64; 4]) -> serde_json::Value {
    serde_json::json!({ "p50": p[0], "p99": p[1], "p999": p[2], "max": p[3] })
}

/// The benchmark: `throughput_events` per maximum-rate run, `secs` per latency run, `runs`
/// of each.
pub fn latency(
    throughput_events: u64,
    secs: f64,
    runs: u32,
    keys: u64,
) -> Result<serde_json::Value> {
    // Warm-up, not counted.
    run(0.0, throughput_events.min(100_000), keys)?;
    let mut maxima = Vec::new();
    for _ in 0..runs {
        let r = run(0.0, throughput_events, keys)?;
        maxima.push(throughput_events as f64 / r.secs.max(1e-9));
    }
    let max_rate = median(&maxima);
    eprintln!(
        "\nkeyed pipeline across two nodes (loopback), maximum rate {}/s (median of {runs}):",
        human(max_rate)
    );
    eprintln!(
        "{:>6} {:>10}  {:>9} {:>9} {:>9} {:>9} {:>9}   (µs, median of {runs} runs; remote \
         records; rq wait: the workers' run-queue wait, ms per s)",
        "level", "records/s", "p50", "p99", "p99.9", "max", "rq wait"
    );
    let mut levels = Vec::new();
    for fraction in LEVELS {
        let rate = max_rate * fraction;
        let events = ((rate * secs) as u64).max(1000);
        let (mut remote, mut local, mut sched) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let r = run(rate, events, keys)?;
            remote.push(percentiles(&r.remote));
            local.push(percentiles(&r.local));
            let per_sec = |ms: f64| ms / r.secs.max(1e-9);
            sched.push(serde_json::json!({
                "secs": r.secs,
                "worker_cpu_ms_per_s": per_sec(r.worker_cpu_ms),
                "worker_runqueue_wait_ms_per_s": per_sec(r.worker_wait_ms),
            }));
        }
        let (rm, lm) = (medians(&remote), medians(&local));
        let waits: Vec<f64> = sched
            .iter()
            .filter_map(|s| s["worker_runqueue_wait_ms_per_s"].as_f64())
            .collect();
        let wait = median(&waits);
        eprintln!(
            "{:>5.0}% {:>10}  {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.1}",
            fraction * 100.0,
            human(rate),
            rm[0],
            rm[1],
            rm[2],
            rm[3],
            wait
        );
        levels.push(serde_json::json!({
            "fraction": fraction,
            "rate_rps": rate,
            "events": events,
            "remote_latency_us": json_of(&rm),
            "local_latency_us": json_of(&lm),
            "remote_runs_us": remote.iter().map(json_of).collect::<Vec<_>>(),
            "worker_runqueue_wait_ms_per_s": wait,
            "sched_runs": sched,
        }));
    }
    Ok(serde_json::json!({
        "pipeline": "paced source (worker 0) -> keyed exchange across two nodes -> \
                     running keyed reduce -> latency sink",
        "latency": "now - intended emission instant (coordinated omission corrected)",
        "max_rate_rps": max_rate,
        "max_rate_runs_rps": maxima,
        "keys": keys,
        "levels": levels,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_cpu_and_wait() {
        let s = parse_schedstat("431002 97535 5\n");
        assert_eq!(
            s,
            Some(SchedStat {
                cpu_ns: 431_002,
                wait_ns: 97_535
            })
        );
        assert_eq!(parse_schedstat("12"), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn sched_counts_what_happened_since() {
        let stat = |cpu_ns, wait_ns| SchedStat { cpu_ns, wait_ns };
        let mut before = Sched::default();
        before.threads.insert(1, stat(1_000_000, 500_000));
        let mut after = Sched::default();
        // Thread 1 ran on; thread 2 started after `before`.
        after.threads.insert(1, stat(4_000_000, 2_500_000));
        after.threads.insert(2, stat(3_000_000, 1_000_000));
        assert_eq!(after.since(&before), (6.0, 3.0));
    }
}
