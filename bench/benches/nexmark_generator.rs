//! Nexmark event generation, events per second on one thread, ours beside the reference crate
//! in the same run:
//!
//! - `nexmark_generator/sluice` fills batches of 1024 events the way `NexmarkSource`'s reader
//!   does (`description` and `extra` stay lazy);
//! - `…/sluice_all_fields` does the same and then draws every lazy text into a reused buffer,
//!   so it does all the work the crate does;
//! - `…/nexmark_crate` is the `nexmark` crate 0.2.0's `EventGenerator`, 1024 events a
//!   batch, with the same configuration.
//!
//! The stream position carries on across iterations, so the runs sample the real mix of
//! persons, auctions and bids.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_bench::nexmark::{Event, Generator, NexmarkConfig, NexmarkEvents, NexmarkSplit};

const BATCH: usize = 1024;

fn events(cfg: &NexmarkConfig) -> NexmarkEvents {
    let split = NexmarkSplit {
        first: 0,
        step: 1,
        end: u64::MAX,
    };
    let generator = Generator::new(cfg).unwrap_or_else(|e| panic!("{e}"));
    NexmarkEvents::new(generator, split, None)
}

fn draw_texts(e: &Event, buf: &mut String) -> usize {
    buf.clear();
    match e {
        Event::Person(p) => p.extra.write_to(buf),
        Event::Auction(a) => {
            a.description.write_to(buf);
            a.extra.write_to(buf);
        }
        Event::Bid(b) => b.extra.write_to(buf),
    }
    buf.len()
}

fn generator(c: &mut Criterion) {
    let cfg = NexmarkConfig::default();
    let mut g = c.benchmark_group("nexmark_generator");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("sluice", |b| {
        let mut events = events(&cfg);
        let mut out = Vec::with_capacity(BATCH);
        b.iter(|| {
            out.clear();
            events.fill(&mut out, BATCH);
            black_box(&out);
        })
    });
    g.bench_function("sluice_all_fields", |b| {
        let mut events = events(&cfg);
        let mut out = Vec::with_capacity(BATCH);
        let mut buf = String::with_capacity(512);
        b.iter(|| {
            out.clear();
            events.fill(&mut out, BATCH);
            let bytes: usize = out.iter().map(|e| draw_texts(e, &mut buf)).sum();
            black_box(bytes);
        })
    });
    g.bench_function("nexmark_crate", |b| {
        let crate_cfg = nexmark::config::NexmarkConfig {
            base_time: cfg.base_time_ms as u64,
            first_rate: cfg.first_event_rate as usize,
            next_rate: cfg.next_event_rate as usize,
            ..Default::default()
        };
        let mut events = nexmark::EventGenerator::new(crate_cfg);
        let mut out = Vec::with_capacity(BATCH);
        b.iter(|| {
            out.clear();
            out.extend(events.by_ref().take(BATCH));
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, generator);
criterion_main!(benches);
