//! A throughput probe for exchanges between busy stages: 20 M numbers → rebalance → map →
//! hash by key → running sum → a sink that only counts. Prints records/s.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice::{Env, Sink, SinkContext, SinkWriter};

struct Count(Arc<AtomicU64>);
struct CountWriter(Arc<AtomicU64>, u64);

impl Sink<(u64, u64)> for Count {
    type Writer = CountWriter;
    fn name(&self) -> String {
        "count".into()
    }
    async fn open(&self, _ctx: &SinkContext) -> sluice::Result<CountWriter> {
        Ok(CountWriter(self.0.clone(), 0))
    }
}

impl SinkWriter<(u64, u64)> for CountWriter {
    async fn write_batch(&mut self, batch: &mut Vec<(u64, u64)>) -> sluice::Result<()> {
        self.1 += batch.len() as u64;
        batch.clear();
        Ok(())
    }
    async fn finish(&mut self) -> sluice::Result<()> {
        self.0.fetch_add(self.1, Ordering::Relaxed);
        Ok(())
    }
}

fn main() -> Result<(), sluice::Error> {
    let n: u64 = 20_000_000;
    let workers: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let seen = Arc::new(AtomicU64::new(0));
    let env = Env::new();
    env.set_workers(workers);
    env.from_iter(0..n)
        .rebalance()
        .map(|x| (x % 10_000, 1u64))
        .into_keyed()
        .sum()
        .sink(Count(seen.clone()));
    let start = std::time::Instant::now();
    env.execute("rebalance pipeline")?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} records in {secs:.2}s: {:.1} M records/s",
        seen.load(Ordering::Relaxed),
        n as f64 / secs / 1e6
    );
    Ok(())
}
