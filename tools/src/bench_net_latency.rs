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
//! The two nodes' workers are pinned to CPUs of their own (as the nodes of two machines
//! would be, `sluice node worker --cpus`), unless `--unpinned`.
//!
//! Before it starts, the bench measures the machine's floor: a thread spinning on each of the
//! nodes' CPUs for two seconds, reading the clock, counts the time lost to pauses (of 50 µs,
//! 200 µs, 1 ms and more) — the hypervisor giving the CPU to another machine, interrupts, other
//! threads. A worker on that CPU stops for them too, so a record's chance of meeting one is
//! about that share: where 1% of the time goes to pauses over 200 µs, no engine's p99 on this
//! machine is under 200 µs. Each run also reports how long the two worker threads were ready
//! to run but waited for a CPU (their run-queue wait, read from `/proc/thread-self/schedstat`
//! by each worker's sink when it opens and finishes), and how much time the hypervisor stole
//! from the machine (`steal` in `/proc/stat`), both per second of the run. On a shared machine
//! with two cores those, not the engine, are where the tail comes from: the threads of other
//! sessions' compilers get the kernel's fair share (autogroups, so `nice` does not help), and
//! a worker that is runnable waits a slice of theirs — 2 to 6 ms each time in
//! `perf sched timehist`. Every record behind it waits too, those that stay on worker 0 as
//! well as those that cross the network.

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
use sluice_core::runtime::default_key_groups;
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

/// What each latency sink hands back when its worker is done.
struct SinkEnd {
    worker: usize,
    hist: Histogram<u64>,
    /// Its worker thread's CPU time and run-queue wait from the sink's open to its finish.
    sched: SchedStat,
    ended: Instant,
}

type SinkEnds = Arc<Mutex<Vec<SinkEnd>>>;

/// Records each record's latency in a histogram per worker.
struct LatencySink {
    pace: Arc<Pace>,
    out: SinkEnds,
}

struct LatencyWriter {
    pace: Arc<Pace>,
    out: SinkEnds,
    worker: usize,
    hist: Histogram<u64>,
    sched_at_open: SchedStat,
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
            sched_at_open: this_thread_sched(),
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
        let ended = Instant::now();
        let sched = this_thread_sched().since(self.sched_at_open);
        let hist = std::mem::replace(&mut self.hist, histogram());
        self.out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SinkEnd {
                worker: self.worker,
                hist,
                sched,
                ended,
            });
        Ok(())
    }
}

/// A thread's nanoseconds on a CPU and waiting on a run queue (ready to run, but another
/// thread had the CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SchedStat {
    cpu_ns: u64,
    wait_ns: u64,
}

impl SchedStat {
    fn since(self, before: SchedStat) -> SchedStat {
        SchedStat {
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            wait_ns: self.wait_ns.saturating_sub(before.wait_ns),
        }
    }
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

/// The calling thread's counters (zero where `/proc` does not have them). Read on the worker
/// itself, at its sink's open and finish, so that nothing polls while the run lasts.
fn this_thread_sched() -> SchedStat {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .as_deref()
        .and_then(parse_schedstat)
        .unwrap_or_default()
}

/// Time the hypervisor gave the machine's CPUs to others (`steal` in `/proc/stat`), in ms,
/// summed over the CPUs; `None` where `/proc/stat` does not say.
fn steal_ms() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_steal_ms(&text)
}

/// The `steal` field of `/proc/stat`'s first line, in ms (the file counts in USER_HZ, 100
/// per second on Linux).
fn parse_steal_ms(text: &str) -> Option<f64> {
    let line = text.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let steal: u64 = fields.nth(7)?.parse().ok()?;
    Some(steal as f64 * 10.0)
}

/// How often the main thread looks whether the parts are done. Nothing is timed by it (the
/// run ends when the last sink does), so it can be slow: a thread waking every millisecond
/// took a worker's CPU ~1000 times a second.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// What one run measured.
struct Run {
    secs: f64,
    /// The worker threads' CPU time and run-queue wait over the run, summed, in ms.
    worker_cpu_ms: f64,
    worker_wait_ms: f64,
    /// The machine's stolen time over the run, in ms summed over its CPUs.
    steal_ms: Option<f64>,
    /// Latencies of records that crossed the network (worker 1), and of the others.
    remote: Histogram<u64>,
    local: Histogram<u64>,
}

/// The CPUs the two nodes' workers are pinned to: the first two this process may use, or
/// none (unpinned) when `pin` is off or there are fewer than two.
fn node_cpus(pin: bool) -> Vec<usize> {
    match sluice::available_cpus() {
        cpus if pin && cpus.len() >= 2 => cpus[..2].to_vec(),
        _ => Vec::new(),
    }
}

/// Runs the pipeline as two one-worker parts over loopback.
fn run(rate: f64, events: u64, keys: u64, cpus: &[usize]) -> Result<Run> {
    let pace = Arc::new(Pace {
        start: OnceLock::new(),
        rate,
        events,
        keys,
    });
    let ends: SinkEnds = Arc::new(Mutex::new(Vec::new()));
    let secret = ClusterSecret::random().map_err(|e| anyhow!("{e}"))?;
    let mut parts = Vec::new();
    for p in 0..2 {
        let env = Env::new();
        env.from_source(PacedSource(pace.clone()))
            .into_keyed()
            .reduce(|_: u64, newest: u64| newest)
            .sink(LatencySink {
                pace: pace.clone(),
                out: ends.clone(),
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
            // Each node on a CPU of its own, as on two machines.
            cpus: cpus.get(p).map(|&c| vec![c]).unwrap_or_default(),
        };
        parts.push(Part::prepare(Arc::new(graph), spec).map_err(|e| anyhow!("{e}"))?);
    }
    let endpoints: Vec<_> = parts.iter().flat_map(|p| p.data_addrs().to_vec()).collect();
    // The first record is due once both parts have had time to connect.
    let _ = pace.start.set(Instant::now() + Duration::from_millis(30));
    // An unthrottled source does not wait for `pace.start`: the run's length is taken from
    // here, connections included (taking it from `pace.start` made a run that ended within
    // those 30 ms look almost infinitely fast).
    let steal_before = steal_ms();
    let started = Instant::now();
    for p in &mut parts {
        p.start(endpoints.clone());
    }
    let mut done = [false, false];
    while !done.iter().all(|d| *d) {
        for (i, p) in parts.iter_mut().enumerate() {
            if let Some(result) = p.poll_finished() {
                result.map_err(|e| anyhow!("part {i}: {e}"))?;
                done[i] = true;
            }
        }
        std::thread::sleep(POLL_EVERY);
    }
    let ends = std::mem::take(&mut *ends.lock().unwrap_or_else(|e| e.into_inner()));
    let ended = ends
        .iter()
        .map(|e| e.ended)
        .max()
        .unwrap_or_else(Instant::now);
    let secs = ended.duration_since(started).as_secs_f64();
    let steal_ms = steal_before.zip(steal_ms()).map(|(a, b)| b - a);
    let (mut remote, mut local) = (histogram(), histogram());
    let (mut cpu_ns, mut wait_ns) = (0, 0);
    for end in &ends {
        let target = if end.worker == 1 {
            &mut remote
        } else {
            &mut local
        };
        target
            .add(&end.hist)
            .map_err(|e| anyhow!("merge histograms: {e}"))?;
        cpu_ns += end.sched.cpu_ns;
        wait_ns += end.sched.wait_ns;
    }
    if remote.len() + local.len() != events {
        return Err(anyhow!(
            "measured {} of {events} records",
            remote.len() + local.len()
        ));
    }
    Ok(Run {
        secs,
        worker_cpu_ms: cpu_ns as f64 / 1e6,
        worker_wait_ms: wait_ns as f64 / 1e6,
        steal_ms,
        remote,
        local,
    })
}

/// How long the machine's floor is measured.
const PAUSES_FOR: Duration = Duration::from_secs(2);
/// Pause thresholds of the machine's floor, in µs.
const PAUSE_US: [u64; 3] = [50, 200, 1000];

/// How much of `dur` a thread spinning on `cpu` lost to pauses: for each of [`PAUSE_US`],
/// the share of the time in gaps at least that long between two reads of the clock, and the
/// longest gap, in µs. Whatever stops a spinning thread (the hypervisor taking the CPU,
/// interrupts, other threads) stops a worker on that CPU as well.
fn pauses_on(cpu: Option<usize>, dur: Duration) -> ([f64; 3], u64) {
    if let Some(cpu) = cpu {
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu).is_ok() {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        }
    }
    let start = Instant::now();
    let mut prev = start;
    let mut lost = [Duration::ZERO; 3];
    let mut longest = Duration::ZERO;
    loop {
        let now = Instant::now();
        let gap = now - prev;
        prev = now;
        for (l, t) in lost.iter_mut().zip(PAUSE_US) {
            if gap >= Duration::from_micros(t) {
                *l += gap;
            }
        }
        longest = longest.max(gap);
        if now - start >= dur {
            break;
        }
    }
    let total = (prev - start).as_secs_f64();
    (
        lost.map(|l| l.as_secs_f64() / total),
        longest.as_micros() as u64,
    )
}

/// The machine's floor: [`pauses_on`] for each CPU of `cpus` at once (one thread unpinned
/// when there are none), as JSON.
fn machine_pauses(cpus: &[usize], dur: Duration) -> Vec<serde_json::Value> {
    let placements: Vec<Option<usize>> = match cpus {
        [] => vec![None],
        c => c.iter().copied().map(Some).collect(),
    };
    let threads: Vec<_> = placements
        .iter()
        .map(|&cpu| (cpu, std::thread::spawn(move || pauses_on(cpu, dur))))
        .collect();
    threads
        .into_iter()
        .filter_map(|(cpu, t)| {
            let (shares, longest) = t.join().ok()?;
            Some(serde_json::json!({
                "cpu": cpu,
                "time_in_pauses_over_50us": shares[0],
                "time_in_pauses_over_200us": shares[1],
                "time_in_pauses_over_1ms": shares[2],
                "longest_pause_us": longest,
            }))
        })
        .collect()
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
    pin: bool,
) -> Result<serde_json::Value> {
    let cpus = node_cpus(pin);
    // The machine's floor first, on the nodes' CPUs, with nothing else of ours running.
    let pauses = machine_pauses(&cpus, PAUSES_FOR);
    eprintln!(
        "\nthe machine: a thread spinning on each of the nodes' CPUs for {} s lost",
        PAUSES_FOR.as_secs()
    );
    for p in &pauses {
        let share = |k: &str| p[k].as_f64().unwrap_or(0.0) * 100.0;
        eprintln!(
            "  CPU {}: {:.2}% of the time to pauses ≥ 50 µs, {:.2}% ≥ 200 µs, {:.2}% ≥ 1 ms \
             (longest {} µs)",
            p["cpu"]
                .as_u64()
                .map_or("any".to_string(), |c| c.to_string()),
            share("time_in_pauses_over_50us"),
            share("time_in_pauses_over_200us"),
            share("time_in_pauses_over_1ms"),
            p["longest_pause_us"],
        );
    }
    // Warm-up, not counted.
    run(0.0, throughput_events.min(100_000), keys, &cpus)?;
    let mut maxima = Vec::new();
    for _ in 0..runs {
        let r = run(0.0, throughput_events, keys, &cpus)?;
        maxima.push(throughput_events as f64 / r.secs.max(1e-9));
    }
    let max_rate = median(&maxima);
    eprintln!(
        "keyed pipeline across two nodes (loopback, {}), maximum rate {}/s (median of {runs}):",
        match cpus.as_slice() {
            [a, b] => format!("pinned to CPUs {a} and {b}"),
            _ => "unpinned".to_string(),
        },
        human(max_rate)
    );
    eprintln!(
        "{:>6} {:>10}  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}   (µs, median of {runs} runs; \
         remote records; rq wait: the workers' run-queue wait, steal: the machine's stolen \
         time, ms per s)",
        "level", "records/s", "p50", "p99", "p99.9", "max", "rq wait", "steal"
    );
    let mut levels = Vec::new();
    for fraction in LEVELS {
        let rate = max_rate * fraction;
        let events = ((rate * secs) as u64).max(1000);
        let (mut remote, mut local, mut sched) = (Vec::new(), Vec::new(), Vec::new());
        let (mut waits, mut steals) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let r = run(rate, events, keys, &cpus)?;
            remote.push(percentiles(&r.remote));
            local.push(percentiles(&r.local));
            let per_sec = |ms: f64| ms / r.secs.max(1e-9);
            waits.push(per_sec(r.worker_wait_ms));
            if let Some(steal) = r.steal_ms {
                steals.push(per_sec(steal));
            }
            sched.push(serde_json::json!({
                "secs": r.secs,
                "worker_cpu_ms_per_s": per_sec(r.worker_cpu_ms),
                "worker_runqueue_wait_ms_per_s": per_sec(r.worker_wait_ms),
                "steal_ms_per_s": r.steal_ms.map(per_sec),
            }));
        }
        let (rm, lm) = (medians(&remote), medians(&local));
        let (wait, steal) = (
            median(&waits),
            (!steals.is_empty()).then(|| median(&steals)),
        );
        eprintln!(
            "{:>5.0}% {:>10}  {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.1} {:>9}",
            fraction * 100.0,
            human(rate),
            rm[0],
            rm[1],
            rm[2],
            rm[3],
            wait,
            steal.map_or("-".to_string(), |s| format!("{s:.1}")),
        );
        levels.push(serde_json::json!({
            "fraction": fraction,
            "rate_rps": rate,
            "events": events,
            "remote_latency_us": json_of(&rm),
            "local_latency_us": json_of(&lm),
            "remote_runs_us": remote.iter().map(json_of).collect::<Vec<_>>(),
            "worker_runqueue_wait_ms_per_s": wait,
            "steal_ms_per_s": steal,
            "sched_runs": sched,
        }));
    }
    Ok(serde_json::json!({
        "pipeline": "paced source (worker 0) -> keyed exchange across two nodes -> \
                     running keyed reduce -> latency sink",
        "latency": "now - intended emission instant (coordinated omission corrected)",
        "node_cpus": cpus,
        "machine_pauses": pauses,
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
        assert_eq!(
            stat(4_000_000, 2_500_000).since(stat(1_000_000, 500_000)),
            stat(3_000_000, 2_000_000)
        );
    }

    #[test]
    fn steal_is_the_eighth_field_of_the_cpu_line() {
        let stat =
            "cpu  8133 0 2633 14423 1257 0 17 82 0 0\ncpu0 3952 0 1103 8027 149 0 3 38 0 0\n";
        assert_eq!(parse_steal_ms(stat), Some(820.0));
        assert_eq!(parse_steal_ms("cpu  1 2 3\n"), None);
        assert_eq!(parse_steal_ms("intr 1 2 3 4 5 6 7 8 9\n"), None);
    }

    #[test]
    fn a_spinning_thread_measures_its_pauses() {
        let (shares, longest) = pauses_on(None, Duration::from_millis(20));
        assert!(shares.iter().all(|s| (0.0..=1.0).contains(s)), "{shares:?}");
        // A share of time in pauses of at least 1 ms is within the share of those of at
        // least 200 µs, and so on.
        assert!(
            shares[0] >= shares[1] && shares[1] >= shares[2],
            "{shares:?}"
        );
        assert!(longest < 20_000_000, "{longest}");
    }
}
