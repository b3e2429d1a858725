//! The chained operator path, measured per record:
//!
//! - `map_filter_map/chain` pushes a batch of `u64`s through `map → filter → map` fused into
//!   one [`Collector`] chain ending in a sink tail; `…/hand_loop` is the same computation as a
//!   plain loop into a `Vec`. Their ratio is the cost of the chain's abstraction.
//! - `wordcount_worker/chain` is one worker's word-count path on a batch of lines:
//!   tokenize (`flat_map_into`) → `(word, 1)` → per-key combine → hash exchange tail over two
//!   targets, with the batches the tail emits drained; `…/hand_loop` tokenizes and counts the
//!   same lines into one hash map, like the baseline word count.

use std::hint::black_box;

use compact_str::CompactString;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rustc_hash::FxHashMap;
use sluice_core::chain::{Collector, FlatMapInto, Map, Outbox, Pipe, SinkTail, Then, filter};
use sluice_core::context::OperatorContext;
use sluice_core::exchange::{ExchangeTail, HashPartitioner};
use sluice_core::keyed::Combine;
use sluice_core::{KeyGroups, NO_TIMESTAMP, StreamElement};

fn drain<T>(outbox: &sluice_core::chain::OutboxRef<T>) -> usize {
    let mut n = 0;
    while let Some((_, e)) = outbox.borrow_mut().pop() {
        if let StreamElement::Records(b) = e {
            n += b.len();
        }
    }
    n
}

fn map_filter_map(c: &mut Criterion) {
    let input: Vec<u64> = (0..4096).collect();
    let mut g = c.benchmark_group("map_filter_map");
    g.throughput(Throughput::Elements(input.len() as u64));
    g.bench_function("chain", |b| {
        let outbox = Outbox::new_ref();
        let pipe = Then(
            Map::new(|x: u64| x.wrapping_mul(0x9E37_79B9)),
            Then(filter(|x: &u64| x & 3 != 0), Map::new(|x: u64| x >> 3)),
        );
        let mut chain = pipe.attach(
            SinkTail::new(outbox.clone()),
            &OperatorContext::standalone(),
        );
        b.iter(|| {
            for &x in &input {
                chain.collect(black_box(x), NO_TIMESTAMP).unwrap();
            }
            chain.flush().unwrap();
            black_box(drain(&outbox))
        })
    });
    g.bench_function("hand_loop", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            let mut n = 0;
            for &x in &input {
                let y = black_box(x).wrapping_mul(0x9E37_79B9);
                if y & 3 != 0 {
                    out.push(y >> 3);
                    if out.len() == 1024 {
                        n += out.len();
                        out = Vec::with_capacity(1024);
                    }
                }
            }
            n += out.len();
            out.clear();
            black_box(n)
        })
    });
    g.finish();
}

fn lines() -> Vec<String> {
    let mut text = Vec::new();
    sluice_bench::corpus::write_corpus(&mut text, 256 * 1024, 7).unwrap();
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wordcount_worker(c: &mut Criterion) {
    let lines = lines();
    let words: usize = lines
        .iter()
        .map(|l| {
            let mut n = 0;
            sluice::text::for_each_word(l, &mut String::new(), |_| n += 1);
            n
        })
        .sum();
    let mut g = c.benchmark_group("wordcount_worker");
    g.throughput(Throughput::Elements(words as u64));
    g.bench_function("chain", |b| {
        b.iter_batched(
            || lines.clone(),
            |batch| {
                let outbox = Outbox::new_ref();
                let mut scratch = String::new();
                let tokenize = move |line: String, out: &mut Vec<(CompactString, u64)>| {
                    sluice::text::for_each_word(&line, &mut scratch, |w| out.push((w.into(), 1)));
                };
                let pipe = Then(
                    FlatMapInto::new(tokenize),
                    Combine::new(|a: u64, b: u64| a + b),
                );
                let kg = KeyGroups::new(128, 2).unwrap();
                let tail = ExchangeTail::new(HashPartitioner::new(kg), 2, outbox.clone());
                let mut chain = pipe.attach(tail, &OperatorContext::standalone());
                for line in batch {
                    chain.collect(line, NO_TIMESTAMP).unwrap();
                }
                chain.on_end().unwrap();
                black_box(drain(&outbox))
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("hand_loop", |b| {
        b.iter_batched(
            || lines.clone(),
            |batch| {
                let mut counts: FxHashMap<String, u64> = FxHashMap::default();
                let mut scratch = String::new();
                for line in batch {
                    sluice::text::for_each_word(&line, &mut scratch, |w| match counts.get_mut(w) {
                        Some(c) => *c += 1,
                        None => {
                            counts.insert(w.to_owned(), 1);
                        }
                    });
                }
                black_box(counts.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, map_filter_map, wordcount_worker);
criterion_main!(benches);
