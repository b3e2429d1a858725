//! Generates Nexmark events and prints how many per second:
//!
//! - `cargo run --release -p sluice-bench --example nexmark_events -- 20000000` runs Sluice's
//!   generator on one thread (as a source reader fills batches);
//! - `… -- 5000000 crate` runs the `nexmark` crate's `EventGenerator` on one thread;
//! - `… -- 100000000 job 2` runs a job on 2 workers: `NexmarkSource` → keep the bids (a q0
//!   pass-through) → a sink that only counts them.
//!
//! Run under `valgrind --tool=cachegrind` the first two give instructions per event, which this
//! noisy shared machine measures better than time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sluice::{Env, ReadStatus, Sink, SinkContext, SinkWriter};
use sluice_bench::nexmark::{
    Bid, Event, Generator, NexmarkConfig, NexmarkEvents, NexmarkSource, NexmarkSplit,
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().map_or(Ok(20_000_000), |s| s.parse())?;
    let mode = args.next().unwrap_or_else(|| "sluice".into());
    let cfg = NexmarkConfig {
        events: Some(events),
        ..NexmarkConfig::default()
    };
    let start = Instant::now();
    let (what, checksum) = match mode.as_str() {
        "sluice" => ("sluice generator, 1 thread".to_owned(), generate(&cfg)?),
        "crate" => ("nexmark crate, 1 thread".to_owned(), generate_crate(&cfg)),
        "job" => {
            let workers: usize = args.next().map_or(Ok(2), |s| s.parse())?;
            let bids = run_job(cfg, workers)?;
            (
                format!("job of {workers} workers, {bids} bids counted"),
                bids,
            )
        }
        other => anyhow::bail!("unknown mode {other:?}: expected sluice, crate or job"),
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what}: {events} events in {secs:.3} s, {:.2} M events/s (checksum {checksum})",
        events as f64 / secs / 1e6
    );
    Ok(())
}

/// The sum of the events' times, through a source reader's batches.
fn generate(cfg: &NexmarkConfig) -> anyhow::Result<u64> {
    let split = NexmarkSplit {
        first: 0,
        step: 1,
        end: cfg.events.unwrap_or(u64::MAX),
    };
    let mut reader = NexmarkEvents::new(Generator::new(cfg)?, split, None);
    let mut batch = Vec::with_capacity(1024);
    let mut sum = 0u64;
    loop {
        batch.clear();
        let status = reader.fill(&mut batch, 1024);
        sum = batch
            .iter()
            .fold(sum, |s, e| s.wrapping_add(e.date_time() as u64));
        if status == ReadStatus::End {
            return Ok(sum);
        }
    }
}

fn generate_crate(cfg: &NexmarkConfig) -> u64 {
    let crate_cfg = nexmark::config::NexmarkConfig {
        base_time: cfg.base_time_ms as u64,
        first_rate: cfg.first_event_rate as usize,
        next_rate: cfg.next_event_rate as usize,
        ..Default::default()
    };
    nexmark::EventGenerator::new(crate_cfg)
        .take(cfg.events.unwrap_or(u64::MAX) as usize)
        .fold(0u64, |sum, e| sum.wrapping_add(e.timestamp()))
}

fn run_job(cfg: NexmarkConfig, workers: usize) -> anyhow::Result<u64> {
    let seen = Arc::new(AtomicU64::new(0));
    let env = Env::new();
    env.set_workers(workers);
    env.from_source(NexmarkSource::new(cfg))
        .flat_map(Event::bid)
        .sink(Count(seen.clone()));
    env.execute("nexmark bids")?;
    Ok(seen.load(Ordering::Relaxed))
}

/// A sink that only counts.
struct Count(Arc<AtomicU64>);
struct CountWriter(Arc<AtomicU64>, u64);

impl Sink<Bid> for Count {
    type Writer = CountWriter;
    fn name(&self) -> String {
        "count".into()
    }
    async fn open(&self, _ctx: &SinkContext) -> sluice::Result<CountWriter> {
        Ok(CountWriter(self.0.clone(), 0))
    }
}

impl SinkWriter<Bid> for CountWriter {
    async fn write_batch(&mut self, batch: &mut Vec<Bid>) -> sluice::Result<()> {
        self.1 += batch.len() as u64;
        batch.clear();
        Ok(())
    }
    async fn finish(&mut self) -> sluice::Result<()> {
        self.0.fetch_add(self.1, Ordering::Relaxed);
        Ok(())
    }
}
