//! The state store's hot path, per access, against a hand-written `FxHashMap` on the same
//! keys (the window operators' target is ≥ 0.5× of the hand loop):
//!
//! - `resident_update/{table,hashmap}`: read-modify-write of resident entries (`get_mut`),
//!   a batch of 1024 random keys out of 100k;
//! - `resident_get/{table,hashmap}`: point reads of resident entries;
//! - `window_upsert/{table,hashmap}`: per record, `get_or_insert_with` in one of 8
//!   namespaces (windows) — the shape of a windowed aggregation; the window of each record
//!   is random (the worst case for the table's namespace cache);
//! - `window_upsert_ordered/…`: the same records in event-time order (the window changes
//!   every 128 records), as a windowed stream delivers them.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustc_hash::FxHashMap;
use sluice_bench::state::{key, mix};
use sluice_state::{GlommioDisk, Store, StoreConfig, TableConfig};

const KEYS: u64 = 100_000;
const BATCH: u64 = 1024;

fn kg(_: &(), k: &[u8; 16]) -> u32 {
    u32::from(k[0] & 127)
}

fn kgw(_: &u64, k: &u64) -> u32 {
    (*k & 127) as u32
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("scratch directory");
    let cfg = StoreConfig {
        memory_budget_bytes: 1 << 30,
        key_groups: (0, 127),
        ..StoreConfig::default()
    };
    let store = Store::open(GlommioDisk, tmp.path(), cfg, None).expect("open store");
    let table = store
        .table::<(), [u8; 16], [u8; 64]>("bench", TableConfig::new(kg))
        .expect("table");
    let mut map: FxHashMap<[u8; 16], [u8; 64]> = FxHashMap::default();
    {
        let mut t = table.lock();
        for i in 0..KEYS {
            t.insert(&(), key(i), [i as u8; 64]).expect("insert");
            map.insert(key(i), [i as u8; 64]);
        }
    }
    let keys: Vec<[u8; 16]> = (0..BATCH).map(|j| key(mix(j) % KEYS)).collect();

    let mut g = c.benchmark_group("resident_update");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("table", |b| {
        b.iter(|| {
            let mut t = table.lock();
            for k in &keys {
                if let Ok(Some(v)) = t.get_mut(&(), k) {
                    v[1] = v[1].wrapping_add(1);
                }
            }
        })
    });
    g.bench_function("hashmap", |b| {
        b.iter(|| {
            for k in &keys {
                if let Some(v) = map.get_mut(k) {
                    v[1] = v[1].wrapping_add(1);
                }
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("resident_get");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("table", |b| {
        b.iter(|| {
            let mut t = table.lock();
            for k in &keys {
                black_box(t.get(&(), k).ok().flatten().map(|v| v[0]));
            }
        })
    });
    g.bench_function("hashmap", |b| {
        b.iter(|| {
            for k in &keys {
                black_box(map.get(k).map(|v| v[0]));
            }
        })
    });
    g.finish();

    let windows = store
        .table::<u64, u64, u64>("windows", TableConfig::new(kgw))
        .expect("table");
    let mut wmap: FxHashMap<(u64, u64), u64> = FxHashMap::default();
    let recs: Vec<(u64, u64)> = (0..BATCH)
        .map(|j| (mix(j) % 8, mix(j ^ 7) % 10_000))
        .collect();
    let mut g = c.benchmark_group("window_upsert");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("table", |b| {
        b.iter(|| {
            let mut t = windows.lock();
            for (w, k) in &recs {
                if let Ok(v) = t.get_or_insert_with(w, *k, || 0) {
                    *v += 1;
                }
            }
        })
    });
    g.bench_function("hashmap", |b| {
        b.iter(|| {
            for (w, k) in &recs {
                *wmap.entry((*w, *k)).or_insert(0) += 1;
            }
        })
    });
    g.finish();

    let ordered: Vec<(u64, u64)> = (0..BATCH).map(|j| (j / 128, mix(j ^ 7) % 10_000)).collect();
    let mut g = c.benchmark_group("window_upsert_ordered");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("table", |b| {
        b.iter(|| {
            let mut t = windows.lock();
            for (w, k) in &ordered {
                if let Ok(v) = t.get_or_insert_with(w, *k, || 0) {
                    *v += 1;
                }
            }
        })
    });
    g.bench_function("hashmap", |b| {
        b.iter(|| {
            for (w, k) in &ordered {
                *wmap.entry((*w, *k)).or_insert(0) += 1;
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
