//! RELIABILITY R7a on the real kernel path: a child process writes, evicts, compacts and
//! checkpoints through glommio DMA files on the real disk (merging in a compactor task and
//! writing each checkpoint in a task, beside its next round, as a worker does) and is
//! killed with SIGKILL at a
//! seeded random moment, over and over; after every kill the store reopens at exactly the
//! newest complete checkpoint — at least the last one the child acknowledged — with the
//! state of that checkpoint, entry for entry.
//!
//! The state at checkpoint `c` is a pure function of the seed and `c`, so the parent knows it
//! without trusting the child. CI runs 25 kills; `SLUICE_RELIABILITY=extended` runs 1,000
//! (about 3 minutes): `SLUICE_RELIABILITY=extended cargo test -p sluice-state --release
//! --test kill_child`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use sluice_state::{GlommioDisk, Store, StoreConfig, TableConfig, latest_checkpoint};

const DIR_ENV: &str = "SLUICE_KILL_CHILD_DIR";
const KEYS: u64 = 3000;

fn kg(_: &(), k: &u64) -> u32 {
    (*k % 16) as u32
}

fn cfg() -> StoreConfig {
    StoreConfig {
        memory_budget_bytes: 60_000,
        key_groups: (0, 15),
        segments_max: 4,
        restore: sluice_state::Restore::Lazy,
        ..StoreConfig::default()
    }
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// What round `r` does to key `k`: nothing, set a value, or remove it.
fn round_op(r: u64, k: u64) -> Option<Option<u64>> {
    let h = mix(r * 1_000_003 + k);
    match h % 10 {
        0..=5 => None,
        6..=8 => Some(Some(h >> 20)),
        _ => Some(None),
    }
}

fn model_at(c: u64) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for r in 1..=c {
        for k in 0..KEYS {
            match round_op(r, k) {
                Some(Some(v)) => {
                    m.insert(k, v);
                }
                Some(None) => {
                    m.remove(&k);
                }
                None => {}
            }
        }
    }
    m
}

fn on_glommio<T: Send + 'static>(f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 << 10)
        .spawn(move || async move { f().await })
        .unwrap()
        .join()
        .unwrap()
}

/// The child: resumes from the newest checkpoint and runs rounds until killed.
#[test]
fn kill_child_writer() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    on_glommio(async move || {
        let store = Store::open(GlommioDisk, &dir, cfg(), None).unwrap();
        let t = store
            .table::<(), u64, u64>("kv", TableConfig::new(kg))
            .unwrap();
        // As in a worker: merges run in a task of their own, and each checkpoint is frozen
        // between rounds and written by a task while the next round runs.
        let compactor = store.clone();
        glommio::spawn_local(async move { compactor.compactor().await.unwrap() }).detach();
        let mut writing = None;
        let mut c = store.last_checkpoint();
        loop {
            c += 1;
            {
                let mut tl = t.lock();
                for k in 0..KEYS {
                    match round_op(c, k) {
                        Some(Some(v)) => tl.insert(&(), k, v).unwrap(),
                        Some(None) => tl.remove(&(), &k).unwrap(),
                        None => {}
                    }
                }
            }
            store.flush().await.unwrap();
            if let Some(w) = writing.take() {
                w.await;
            }
            if c % 3 == 0 {
                store.compact(c % 6 == 0).await.unwrap();
            }
            let frozen = store.freeze(c).unwrap();
            let writer = store.clone();
            writing = Some(
                glommio::spawn_local(async move {
                    writer.write(frozen).await.unwrap();
                    println!("ACK {c}");
                })
                .detach(),
            );
        }
    });
}

fn verify(dir: &Path, acked: u64) -> u64 {
    let dir = dir.to_path_buf();
    on_glommio(async move || {
        let newest = latest_checkpoint(&GlommioDisk, &dir).unwrap().unwrap_or(0);
        assert!(
            newest >= acked,
            "newest manifest {newest} < acknowledged {acked}"
        );
        let store = Store::open(GlommioDisk, &dir, cfg(), None).unwrap();
        let c = store.last_checkpoint();
        let t = store
            .table::<(), u64, u64>("kv", TableConfig::new(kg))
            .unwrap();
        let want = model_at(c);
        let mut tl = t.lock();
        for k in 0..KEYS {
            assert_eq!(
                tl.get(&(), &k).unwrap().copied(),
                want.get(&k).copied(),
                "ckpt {c} key {k}"
            );
        }
        c
    })
}

#[test]
fn sigkill_at_random_moments_recovers_exactly_the_last_complete_checkpoint() {
    let kills = match std::env::var("SLUICE_RELIABILITY").as_deref() {
        Ok("extended") => 1000,
        _ => 25,
    };
    let seed: u64 = std::env::var("SLUICE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    println!("SLUICE_FAULT_SEED={seed}");
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("state-kill");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let store_dir = dir.path().join("store");
    let (mut acked, mut recovered, mut rng) = (0u64, 0u64, seed | 1);
    for _ in 0..kills {
        rng = mix(rng);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill_child_writer",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(DIR_ENV, &store_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        // Kill after a seeded number of acknowledgements plus a seeded delay.
        let acks_wanted = rng % 3;
        let delay = Duration::from_micros(mix(rng) % 20_000);
        let reader = std::thread::spawn(move || {
            let mut last = None;
            let mut seen = 0;
            let mut lines = BufReader::new(out).lines();
            #[allow(clippy::disallowed_methods)] // a watchdog in the test, not the store's time
            let start = Instant::now();
            while let Some(Ok(line)) = lines.next() {
                if let Some(c) = line.strip_prefix("ACK ") {
                    last = c.parse::<u64>().ok();
                    seen += 1;
                    if seen > acks_wanted || start.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                }
            }
            (last, lines)
        });
        let (last, lines) = reader.join().unwrap();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        drop(lines);
        if let Some(c) = last {
            acked = acked.max(c);
        }
        let c = verify(&store_dir, acked);
        assert!(c >= recovered, "recovered {c} after {recovered}");
        recovered = c;
    }
    println!(
        "{{\"suite\":\"R7a\",\"seed\":{seed},\"kills\":{kills},\
         \"last_checkpoint\":{recovered},\"lost\":0}}"
    );
    assert!(
        recovered >= kills as u64 / 2,
        "too little progress: checkpoint {recovered}"
    );
}
