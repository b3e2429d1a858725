//! Checkpoints of the state store on the real disk: `freeze` (the synchronous pause at the
//! barrier) and freeze + write until the manifest is durable, for 10k dirty keys out of 1M
//! (`sluice bench state` runs the 10M-key series).

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_bench::state::{key, mix, on_glommio};
use sluice_state::{GlommioDisk, Store, StoreConfig, TableConfig};

const KEYS: u64 = 1_000_000;
const DIRTY: u64 = 10_000;

fn kg(_: &(), k: &[u8; 16]) -> u32 {
    u32::from(k[0] & 127)
}

/// Loads a store, then runs `iters` checkpoints of `DIRTY` keys; returns the time of the
/// freezes alone (`sync_only`) or of whole checkpoints.
fn run(iters: u64, sync_only: bool) -> Duration {
    on_glommio(async move || {
        let tmp = tempfile::tempdir().expect("scratch directory");
        let cfg = StoreConfig {
            memory_budget_bytes: 1 << 40,
            key_groups: (0, 127),
            ..StoreConfig::default()
        };
        let store = Store::open(GlommioDisk, tmp.path(), cfg, None).expect("open");
        let t = store
            .table::<(), [u8; 16], [u8; 64]>("c", TableConfig::new(kg))
            .expect("table");
        {
            let mut tl = t.lock();
            for i in 0..KEYS {
                tl.insert(&(), key(i), [0; 64]).expect("insert");
            }
        }
        store.checkpoint(1).await.expect("first checkpoint");
        let mut total = Duration::ZERO;
        let mut salt = 0;
        for id in 2..2 + iters {
            {
                let mut tl = t.lock();
                for _ in 0..DIRTY {
                    salt += 1;
                    if let Ok(Some(v)) = tl.get_mut(&(), &key(mix(salt) % KEYS)) {
                        v[0] = v[0].wrapping_add(1);
                    }
                }
            }
            let start = Instant::now();
            let frozen = store.freeze(id).expect("freeze");
            if sync_only {
                total += start.elapsed();
            }
            store.write(frozen).await.expect("write");
            if !sync_only {
                total += start.elapsed();
            }
        }
        total
    })
    .expect("glommio executor")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("checkpoint_10k_of_1m");
    g.sample_size(10);
    g.bench_function("freeze", |b| b.iter_custom(|iters| run(iters, true)));
    g.bench_function("freeze_and_write", |b| {
        b.iter_custom(|iters| run(iters, false))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
