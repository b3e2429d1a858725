//! Store scenarios on the simulated disk: checkpoint and reopen, eviction and read-back,
//! namespaces, TTL, the state kinds, timers, compaction, savepoints and key-group restores.

use std::path::{Path, PathBuf};

use futures_lite::future::{block_on, poll_once};
use sluice_state::sim::{CrashImage, SimDisk};
use sluice_state::{Restore, Store, StoreConfig, Table, TableConfig};

fn kg(_: &u64, k: &u64) -> u32 {
    (*k % 16) as u32
}

fn kg0(_: &(), k: &u64) -> u32 {
    (*k % 16) as u32
}

fn cfg(budget: usize) -> StoreConfig {
    StoreConfig {
        memory_budget_bytes: budget,
        key_groups: (0, 15),
        ..StoreConfig::default()
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/sim/store")
}

#[test]
fn checkpoint_reopen_returns_the_checkpointed_values() {
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(1 << 20), None).unwrap();
    let t = store
        .table::<(), u64, String>("values", TableConfig::new(kg0))
        .unwrap();
    {
        let mut t = t.lock();
        for k in 0..100u64 {
            t.insert(&(), k, format!("v{k}")).unwrap();
        }
        t.remove(&(), &7).unwrap();
    }
    block_on(store.checkpoint(1)).unwrap();
    {
        let mut t = t.lock();
        t.insert(&(), 1000, "after".into()).unwrap();
        *t.get_mut(&(), &1).unwrap().unwrap() = "changed".into();
    }
    drop(t);
    drop(store);
    let store = Store::open(disk.clone(), &dir(), cfg(1 << 20), Some(1)).unwrap();
    let t = store
        .table::<(), u64, String>("values", TableConfig::new(kg0))
        .unwrap();
    let mut t = t.lock();
    assert_eq!(t.get(&(), &1).unwrap().map(String::as_str), Some("v1"));
    assert_eq!(t.get(&(), &7).unwrap(), None);
    assert_eq!(t.get(&(), &1000).unwrap(), None);
    assert_eq!(t.get(&(), &99).unwrap().map(String::as_str), Some("v99"));
}

#[test]
fn incremental_checkpoint_writes_only_dirty_entries_and_deletes() {
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(64 << 20), None).unwrap();
    let t = store
        .table::<(), u64, u64>("counts", TableConfig::new(kg0))
        .unwrap();
    {
        let mut t = t.lock();
        for k in 0..10_000u64 {
            t.insert(&(), k, k).unwrap();
        }
    }
    let first = block_on(store.checkpoint(1)).unwrap();
    assert_eq!(first.entries, 10_000);
    {
        let mut t = t.lock();
        for k in 0..10u64 {
            *t.get_mut(&(), &k).unwrap().unwrap() += 1;
        }
        t.remove(&(), &500).unwrap();
    }
    let second = block_on(store.checkpoint(2)).unwrap();
    assert_eq!(second.entries, 11);
    assert!(
        second.bytes_written < first.bytes_written / 50,
        "{second:?} vs {first:?}"
    );
    drop(t);
    drop(store);
    let store = Store::open(disk, &dir(), cfg(64 << 20), Some(2)).unwrap();
    let t = store
        .table::<(), u64, u64>("counts", TableConfig::new(kg0))
        .unwrap();
    let mut t = t.lock();
    assert_eq!(t.get(&(), &3).unwrap(), Some(&4));
    assert_eq!(t.get(&(), &500).unwrap(), None);
    assert_eq!(t.get(&(), &9999).unwrap(), Some(&9999));
}

#[test]
fn writes_after_freeze_do_not_change_the_checkpoint() {
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(64 << 20), None).unwrap();
    let t = store
        .table::<(), u64, u64>("cow", TableConfig::new(kg0))
        .unwrap();
    {
        let mut t = t.lock();
        for k in 0..5000u64 {
            t.insert(&(), k, 1).unwrap();
        }
    }
    let frozen = store.freeze(1).unwrap();
    {
        let mut t = t.lock();
        for k in 0..5000u64 {
            *t.get_mut(&(), &k).unwrap().unwrap() = 2;
        }
        t.remove(&(), &0).unwrap();
        t.insert(&(), 99_999, 2).unwrap();
    }
    block_on(store.write(frozen)).unwrap();
    drop(t);
    drop(store);
    let store = Store::open(disk, &dir(), cfg(64 << 20), Some(1)).unwrap();
    let t = store
        .table::<(), u64, u64>("cow", TableConfig::new(kg0))
        .unwrap();
    let mut t = t.lock();
    for k in 0..5000u64 {
        assert_eq!(t.get(&(), &k).unwrap(), Some(&1), "key {k}");
    }
    assert_eq!(t.get(&(), &99_999).unwrap(), None);
}

/// A value copied on write for a frozen checkpoint is on disk once that checkpoint is
/// written, so removing the entry later must leave a tombstone (found by the extended
/// crash-image run, seed 42: the removed value came back after a reopen).
#[test]
fn remove_after_a_copy_on_write_leaves_a_tombstone() {
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(1 << 20), None).unwrap();
    let t = store
        .table::<(), u64, u64>("t", TableConfig::new(kg0))
        .unwrap();
    t.lock().insert(&(), 1, 75).unwrap();
    let frozen = store.freeze(1).unwrap();
    *t.lock().get_mut(&(), &1).unwrap().unwrap() += 1;
    block_on(store.write(frozen)).unwrap();
    t.lock().remove(&(), &1).unwrap();
    block_on(store.checkpoint(2)).unwrap();
    drop(t);
    drop(store);
    let store = Store::open(disk, &dir(), cfg(1 << 20), Some(2)).unwrap();
    let t = store
        .table::<(), u64, u64>("t", TableConfig::new(kg0))
        .unwrap();
    assert_eq!(t.lock().get(&(), &1).unwrap(), None);
}

/// A checkpoint segment is read ahead into the page cache only when lookups may read it:
/// while every entry is in memory, writing a checkpoint advises nothing; once entries were
/// evicted, the next checkpoint's segment is advised whole.
#[test]
fn checkpoint_segments_are_read_ahead_only_once_entries_were_evicted() {
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(1 << 20), None).unwrap();
    let t = store
        .table::<(), u64, [u64; 8]>("resident", TableConfig::new(kg0))
        .unwrap();
    {
        let mut t = t.lock();
        for k in 0..1000u64 {
            t.insert(&(), k, [k; 8]).unwrap();
        }
    }
    block_on(store.checkpoint(1)).unwrap();
    assert_eq!(disk.advised_bytes(), 0, "all resident: nothing read ahead");
    {
        let mut t = t.lock();
        for k in 1000..30_000u64 {
            t.insert(&(), k, [k; 8]).unwrap();
        }
    }
    block_on(store.flush()).unwrap();
    let spilled = disk.advised_bytes();
    assert!(spilled > 0, "evicted entries' segments are read ahead");
    {
        let mut t = t.lock();
        for k in 0..100u64 {
            *t.get_mut(&(), &k).unwrap().unwrap() = [k + 1; 8];
        }
    }
    block_on(store.checkpoint(2)).unwrap();
    assert!(
        disk.advised_bytes() > spilled,
        "and so is the next checkpoint's"
    );
}

#[test]
fn state_ten_times_the_budget_is_evicted_and_read_back() {
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(200_000), None).unwrap();
    let t = store
        .table::<(), u64, u64>("big", TableConfig::new(kg0))
        .unwrap();
    let n = 40_000u64;
    for round in 0..3u64 {
        let mut tl = t.lock();
        for k in 0..n {
            *tl.get_or_insert_with(&(), k, || 0).unwrap() += k + round;
        }
        drop(tl);
        block_on(store.flush()).unwrap();
        eprintln!("stats {:?}", store.stats());
        assert!(
            store.memory_used() < 400_000,
            "memory {}",
            store.memory_used()
        );
    }
    let expect = |k: u64| 3 * k + 3;
    {
        let mut tl = t.lock();
        for k in (0..n).step_by(7) {
            assert_eq!(tl.get(&(), &k).unwrap(), Some(&expect(k)), "key {k}");
        }
    }
    block_on(store.checkpoint(1)).unwrap();
    block_on(store.compact(true)).unwrap();
    {
        let mut tl = t.lock();
        for k in (0..n).step_by(5) {
            assert_eq!(tl.get(&(), &k).unwrap(), Some(&expect(k)), "key {k}");
        }
    }
    drop(t);
    drop(store);
    let store = Store::open(disk, &dir(), cfg(200_000), Some(1)).unwrap();
    let t = store
        .table::<(), u64, u64>("big", TableConfig::new(kg0))
        .unwrap();
    let mut tl = t.lock();
    for k in (0..n).step_by(3) {
        assert_eq!(tl.get(&(), &k).unwrap(), Some(&expect(k)), "key {k}");
    }
}

#[test]
fn namespaces_iterate_and_drop_including_evicted_entries() {
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(150_000), None).unwrap();
    let t = store
        .table::<u64, u64, u64>("windows", TableConfig::new(kg))
        .unwrap();
    {
        let mut tl = t.lock();
        for w in 0..10u64 {
            for k in 0..1000u64 {
                tl.insert(&w, k, w * 10_000 + k).unwrap();
            }
        }
    }
    block_on(store.flush()).unwrap();
    block_on(store.checkpoint(1)).unwrap();
    {
        let mut tl = t.lock();
        let mut n = 0;
        tl.for_each_in_namespace(&3, |k, v| {
            assert_eq!(*v, 30_000 + k);
            n += 1;
        })
        .unwrap();
        assert_eq!(n, 1000);
        let taken = tl.take_namespace(&4).unwrap();
        assert_eq!(taken.len(), 1000);
        tl.drop_namespace(&5).unwrap();
        assert_eq!(tl.get(&5, &1).unwrap(), None);
        assert_eq!(tl.get(&4, &1).unwrap(), None);
        assert_eq!(tl.get(&6, &1).unwrap(), Some(&60_001));
        tl.insert(&5, 1, 7).unwrap();
    }
    block_on(store.flush()).unwrap();
    block_on(store.checkpoint(2)).unwrap();
    drop(t);
    drop(store);
    let store = Store::open(disk, &dir(), cfg(150_000), Some(2)).unwrap();
    let t = store
        .table::<u64, u64, u64>("windows", TableConfig::new(kg))
        .unwrap();
    let mut tl = t.lock();
    assert_eq!(tl.get(&5, &1).unwrap(), Some(&7));
    assert_eq!(tl.get(&5, &2).unwrap(), None);
    assert_eq!(tl.get(&4, &2).unwrap(), None);
    assert_eq!(tl.get(&9, &999).unwrap(), Some(&90_999));
    let mut n = 0;
    tl.for_each_in_namespace(&5, |_, _| n += 1).unwrap();
    assert_eq!(n, 1);
}

/// Map state reads one namespace per key: loading namespaces one after another, with no
/// write in between, must evict as it goes (loading a namespace places its entries without
/// evicting, so it makes room first).
#[test]
fn reading_many_evicted_namespaces_stays_within_the_budget() {
    let disk = SimDisk::default();
    let budget = 100_000;
    let store = Store::open(disk.clone(), &dir(), cfg(budget), None).unwrap();
    let t = store
        .table::<u64, u64, u64>("maps", TableConfig::new(kg))
        .unwrap();
    let keys = 10_000u64;
    for ns in 0..keys {
        let mut tl = t.lock();
        tl.insert(&ns, 1, ns).unwrap();
        tl.insert(&ns, 2, ns + 1).unwrap();
        drop(tl);
        if ns % 256 == 0 {
            block_on(store.flush()).unwrap();
        }
    }
    block_on(store.checkpoint(1)).unwrap();
    for ns in 0..keys {
        let mut sum = 0;
        t.lock()
            .for_each_in_namespace(&ns, |_, v| sum += *v)
            .unwrap();
        assert_eq!(sum, 2 * ns + 1, "namespace {ns}");
    }
    let used = store.memory_used();
    assert!(
        used <= budget + budget / 10,
        "memory {used}, budget {budget}"
    );
}

/// Timers against a `BTreeSet` model: registered (twice, sometimes), deleted, moved (a
/// timeout pushed back on every record, so deleted timers outnumber live ones and the heap is
/// rebuilt), and taken due in order — also after a restore.
#[test]
fn timers_moved_and_deleted_fire_like_a_sorted_set() {
    fn tkg(k: &u64) -> u32 {
        (*k % 16) as u32
    }
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(1 << 20), None).unwrap();
    let mut timers = store.timers::<u64, u64>("timers", tkg).unwrap();
    let mut model = std::collections::BTreeSet::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut now = 0u64;
    let mut timeout: std::collections::BTreeMap<u64, u64> = Default::default();
    for i in 0..20_000u64 {
        let key = next() % 64;
        match next() % 4 {
            0 => {
                // A timeout moved further on: delete the old one, register the new one.
                let at = now + 10_000 + next() % 100;
                if let Some(old) = timeout.insert(key, at) {
                    timers.delete(old, key, 0).unwrap();
                    model.remove(&(old, key, 0));
                }
                timers.register(at, key, 0).unwrap();
                model.insert((at, key, 0));
            }
            1 => {
                let at = now + next() % 50;
                timers.register(at, key, 1).unwrap();
                timers.register(at, key, 1).unwrap();
                model.insert((at, key, 1));
            }
            2 => {
                let at = now + next() % 50;
                timers.delete(at, key, 1).unwrap();
                model.remove(&(at, key, 1));
            }
            _ => {
                now += next() % 20;
                while let Some(t) = timers.pop_due(now).unwrap() {
                    assert_eq!(Some(t), model.pop_first(), "op {i}");
                    if t.2 == 0 {
                        timeout.remove(&t.1);
                    }
                }
                assert!(model.first().is_none_or(|t| t.0 > now), "op {i}");
            }
        }
        assert_eq!(timers.len(), model.len());
        assert_eq!(timers.peek(), model.first(), "op {i}");
    }
    block_on(store.checkpoint(1)).unwrap();
    drop(timers);
    drop(store);
    let store = Store::open(disk, &dir(), cfg(1 << 20), Some(1)).unwrap();
    let mut timers = store.timers::<u64, u64>("timers", tkg).unwrap();
    let fired: Vec<_> = std::iter::from_fn(|| timers.pop_due(u64::MAX).unwrap()).collect();
    assert_eq!(fired, model.into_iter().collect::<Vec<_>>());
}

#[test]
fn ttl_entries_expire_and_are_never_returned() {
    let disk = SimDisk::default();
    let store = Store::open(disk, &dir(), cfg(1 << 20), None).unwrap();
    store.set_time_ms(1000);
    let t = store
        .table::<(), u64, u64>("ttl", TableConfig::new(kg0).with_ttl_ms(100))
        .unwrap();
    let mut tl = t.lock();
    tl.insert(&(), 1, 1).unwrap();
    tl.insert(&(), 2, 2).unwrap();
    store.set_time_ms(1050);
    *tl.get_mut(&(), &2).unwrap().unwrap() += 1; // write: refreshes the TTL
    store.set_time_ms(1120);
    assert_eq!(tl.get(&(), &1).unwrap(), None);
    assert_eq!(tl.get(&(), &2).unwrap(), Some(&3));
    store.set_time_ms(1200);
    assert_eq!(tl.get(&(), &2).unwrap(), None);
}

#[test]
fn list_map_reducing_aggregating_state_and_timers_survive_a_restore() {
    struct Avg;
    impl sluice_state::AggregateFunction<u64> for Avg {
        type Acc = (u64, u64);
        fn create_accumulator(&self) -> (u64, u64) {
            (0, 0)
        }
        fn add(&self, acc: &mut (u64, u64), x: u64) {
            acc.0 += x;
            acc.1 += 1;
        }
    }
    fn kgm(ns: &((), u64), _: &String) -> u32 {
        (ns.1 % 16) as u32
    }
    fn tkg(k: &u64) -> u32 {
        (*k % 16) as u32
    }
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(1 << 20), None).unwrap();
    let list = store
        .table::<(), u64, Vec<u32>>("list", TableConfig::new(kg0))
        .unwrap();
    let map = store
        .table::<((), u64), String, u64>("map", TableConfig::new(kgm))
        .unwrap();
    let red = store
        .table::<(), u64, u64>("reduce", TableConfig::new(kg0))
        .unwrap();
    let agg = store
        .table::<(), u64, (u64, u64)>("agg", TableConfig::new(kg0))
        .unwrap();
    let mut timers = store.timers::<u64, u64>("timers", tkg).unwrap();
    for k in 0..50u64 {
        list.lock().append(&(), k, k as u32).unwrap();
        list.lock().append(&(), k, 7).unwrap();
        map.lock().insert(&((), k), "a".into(), k).unwrap();
        map.lock().insert(&((), k), "b".into(), k + 1).unwrap();
        red.lock().reduce(&(), k, 3, |a, b| *a += b).unwrap();
        red.lock().reduce(&(), k, 4, |a, b| *a += b).unwrap();
        agg.lock().aggregate(&(), k, 10, &Avg).unwrap();
        timers.register(100 + k, k, 0).unwrap();
    }
    timers.delete(100, 0, 0).unwrap();
    block_on(store.checkpoint(1)).unwrap();
    drop((list, map, red, agg, timers));
    drop(store);
    let store = Store::open(disk, &dir(), cfg(1 << 20), Some(1)).unwrap();
    let list = store
        .table::<(), u64, Vec<u32>>("list", TableConfig::new(kg0))
        .unwrap();
    let map = store
        .table::<((), u64), String, u64>("map", TableConfig::new(kgm))
        .unwrap();
    let red = store
        .table::<(), u64, u64>("reduce", TableConfig::new(kg0))
        .unwrap();
    let agg = store
        .table::<(), u64, (u64, u64)>("agg", TableConfig::new(kg0))
        .unwrap();
    let mut timers = store.timers::<u64, u64>("timers", tkg).unwrap();
    assert_eq!(list.lock().get(&(), &3).unwrap(), Some(&vec![3, 7]));
    let mut m = Vec::new();
    map.lock()
        .for_each_in_namespace(&((), 3), |k, v| m.push((k.clone(), *v)))
        .unwrap();
    m.sort();
    assert_eq!(m, vec![("a".to_string(), 3), ("b".to_string(), 4)]);
    assert_eq!(red.lock().get(&(), &3).unwrap(), Some(&7));
    assert_eq!(agg.lock().get(&(), &3).unwrap(), Some(&(10, 1)));
    assert_eq!(timers.len(), 49);
    assert_eq!(timers.pop_due(101).unwrap(), Some((101, 1, 0)));
    assert_eq!(timers.pop_due(101).unwrap(), None);
}

fn fill_store(disk: &SimDisk, path: &Path, kgs: (u32, u32), keys: std::ops::Range<u64>) {
    let store = Store::open(
        disk.clone(),
        path,
        StoreConfig {
            key_groups: kgs,
            ..cfg(1 << 20)
        },
        None,
    )
    .unwrap();
    let t = store
        .table::<u64, u64, u64>("s", TableConfig::new(kg))
        .unwrap();
    {
        let mut tl = t.lock();
        for k in keys.filter(|k| {
            let g = (*k % 16) as u32;
            kgs.0 <= g && g <= kgs.1
        }) {
            tl.insert(&1, k, k * 2).unwrap();
            tl.insert(&2, k, k * 3).unwrap();
        }
    }
    block_on(store.checkpoint(5)).unwrap();
    t.lock().drop_namespace(&2).unwrap();
    block_on(store.checkpoint(6)).unwrap();
}

#[test]
fn restore_rescale_2_to_3_reads_only_its_key_groups() {
    let disk = SimDisk::default();
    let (a, b) = (PathBuf::from("/sim/w0"), PathBuf::from("/sim/w1"));
    fill_store(&disk, &a, (0, 7), 0..2000);
    fill_store(&disk, &b, (8, 15), 0..2000);
    let sources = vec![(a, 6u64), (b, 6u64)];
    let ranges = [(0u32, 4u32), (5, 10), (11, 15)];
    let mut total = 0;
    for (i, r) in ranges.iter().enumerate() {
        let target = PathBuf::from(format!("/sim/new{i}"));
        let c = StoreConfig {
            key_groups: *r,
            ..cfg(1 << 20)
        };
        let store = block_on(Store::restore_key_groups(
            disk.clone(),
            &target,
            c,
            &sources,
            *r,
        ))
        .unwrap();
        let t = store
            .table::<u64, u64, u64>("s", TableConfig::new(kg))
            .unwrap();
        let mut tl = t.lock();
        for k in 0..2000u64 {
            let g = (k % 16) as u32;
            let mine = r.0 <= g && g <= r.1;
            let expect = mine.then_some(k * 2);
            assert_eq!(tl.get(&1, &k).unwrap().copied(), expect, "key {k} in {r:?}");
            assert_eq!(tl.get(&2, &k).unwrap(), None, "dropped namespace, key {k}");
        }
        total += tl.resident_len();
        let stats = store.stats();
        assert!(stats.segment_entries > 0);
    }
    assert_eq!(total, 2000);
}

#[test]
fn savepoint_restores_with_a_different_number_of_workers() {
    let disk = SimDisk::default();
    let w = PathBuf::from("/sim/sp-src");
    let store = Store::open(disk.clone(), &w, cfg(1 << 20), None).unwrap();
    let t = store
        .table::<u64, u64, u64>("s", TableConfig::new(kg))
        .unwrap();
    {
        let mut tl = t.lock();
        for k in 0..3000u64 {
            tl.insert(&0, k, k).unwrap();
        }
    }
    block_on(store.checkpoint(1)).unwrap();
    {
        let mut tl = t.lock();
        for k in 0..100u64 {
            tl.remove(&0, &k).unwrap();
        }
    }
    let sp = PathBuf::from("/sim/savepoint");
    let info = block_on(store.savepoint(2, &sp)).unwrap();
    assert_eq!(info.checkpoint_id, 2);
    for (i, r) in [(0u32, 7u32), (8, 15)].iter().enumerate() {
        let target = PathBuf::from(format!("/sim/sp-new{i}"));
        let c = StoreConfig {
            key_groups: *r,
            ..cfg(1 << 20)
        };
        let s2 = block_on(Store::restore_key_groups(
            disk.clone(),
            &target,
            c,
            &[(sp.clone(), 2)],
            *r,
        ))
        .unwrap();
        let t2 = s2
            .table::<u64, u64, u64>("s", TableConfig::new(kg))
            .unwrap();
        let mut tl = t2.lock();
        for k in 0..3000u64 {
            let g = (k % 16) as u32;
            let expect = (k >= 100 && r.0 <= g && g <= r.1).then_some(k);
            assert_eq!(tl.get(&0, &k).unwrap().copied(), expect, "key {k}");
        }
    }
}

#[test]
fn retention_deletes_segments_no_retained_checkpoint_needs() {
    let disk = SimDisk::default();
    let c = StoreConfig {
        retained_checkpoints: 2,
        segments_max: 2,
        ..cfg(1 << 20)
    };
    let store = Store::open(disk.clone(), &dir(), c.clone(), None).unwrap();
    let t = store
        .table::<(), u64, u64>("r", TableConfig::new(kg0))
        .unwrap();
    for ckpt in 1..=8u64 {
        {
            let mut tl = t.lock();
            for k in 0..200u64 {
                tl.insert(&(), k + ckpt, ckpt).unwrap();
            }
        }
        block_on(store.checkpoint(ckpt)).unwrap();
        block_on(store.compact(false)).unwrap();
    }
    let names = disk.snapshot();
    let manifests = names
        .files()
        .keys()
        .filter(|p| p.to_string_lossy().contains("MANIFEST"))
        .count();
    assert_eq!(manifests, 2);
    let segs = names
        .files()
        .keys()
        .filter(|p| p.to_string_lossy().ends_with(".seg"))
        .count();
    assert!(segs <= 6, "{segs} segment files left");
    // Both retained checkpoints still open.
    for id in [7, 8] {
        drop(Store::open(disk.clone(), &dir(), c.clone(), Some(id)).unwrap());
    }
}

/// A store that spills at every round of [`spill_round`]: a small budget, and merges once
/// there are more than 4 segments.
fn spilling_store(disk: &SimDisk) -> (Store<SimDisk>, Table<(), u64, [u64; 4]>) {
    let c = StoreConfig {
        segments_max: 4,
        ..cfg(64 << 10)
    };
    let store = Store::open(disk.clone(), &dir(), c, None).unwrap();
    let t = store
        .table::<(), u64, [u64; 4]>("spilled", TableConfig::new(kg0))
        .unwrap();
    (store, t)
}

/// Writes `[round; 4]` to keys 0..2000 (more than the budget holds).
fn spill_round(t: &Table<(), u64, [u64; 4]>, round: u64) {
    let mut tl = t.lock();
    for k in 0..2000u64 {
        tl.insert(&(), k, [round; 4]).unwrap();
    }
}

/// Checks a sample of the keys holds the last round's value.
fn assert_spilled_rounds(t: &Table<(), u64, [u64; 4]>, last: u64) {
    let mut tl = t.lock();
    for k in (0..2000u64).step_by(97) {
        assert_eq!(tl.get(&(), &k).unwrap(), Some(&[last; 4]), "key {k}");
    }
}

/// Without checkpoints, a store that evicts and compacts keeps on disk only the segments it
/// still uses: a merge's inputs that no checkpoint names are removed when the merge is done
/// (they used to wait for a checkpoint's retirement, so a job without checkpoints kept every
/// segment it ever wrote).
#[test]
fn compaction_without_checkpoints_removes_its_inputs() {
    let disk = SimDisk::default();
    let (store, t) = spilling_store(&disk);
    for round in 0..20u64 {
        spill_round(&t, round);
        block_on(store.flush()).unwrap(); // spills, and merges when there are too many
        let files = disk
            .snapshot()
            .files()
            .keys()
            .filter(|p| p.to_string_lossy().ends_with(".seg"))
            .count();
        assert_eq!(
            files,
            store.stats().segments,
            "round {round}: files left behind"
        );
    }
    let live = store.stats().segments;
    assert!(
        live < 20,
        "20 rounds of spills were merged into {live} segments"
    );
    assert_spilled_rounds(&t, 19);
}

/// Merges in a compactor task beside the workload: flushes leave them to it while it keeps
/// up, and merge themselves once the segments pile up past twice `segments_max` (a worker
/// that never yields starves the compactor); stopping it ends the task.
#[test]
fn the_compactor_merges_beside_the_workload_and_a_starved_one_is_bounded() {
    for starve in [false, true] {
        let (store, t) = spilling_store(&SimDisk::default());
        let mut most = 0;
        let work = async {
            for round in 0..40u64 {
                spill_round(&t, round);
                store.flush().await.unwrap();
                most = most.max(store.stats().segments);
                if !starve {
                    futures_lite::future::yield_now().await;
                }
            }
            store.stop_compactor();
        };
        let (merged, ()) = block_on(futures_lite::future::zip(store.compactor(), work));
        merged.unwrap();
        let stats = store.stats();
        assert!(stats.compactions > 0, "starve {starve}: {stats:?}");
        // Spills in memory (not yet merged) add one segment at most.
        let bound = if starve { 2 * 4 + 1 } else { 4 + 1 };
        assert!(
            most <= bound,
            "starve {starve}: {most} segments, bound {bound}"
        );
        assert_spilled_rounds(&t, 39);
    }
}

/// A store whose checkpoints 1 to 4 each rewrote keys 0..20000 (key `k` holds `k * 10 + 3`
/// at the end) in several segments of megabytes, so that a merge of them yields between its
/// chunks.
fn four_checkpoints_of_20k_keys(disk: &SimDisk) -> (Store<SimDisk>, Table<(), u64, u64>) {
    let store = Store::open(disk.clone(), &dir(), cfg(256 << 10), None).unwrap();
    let t = store
        .table::<(), u64, u64>("counts", TableConfig::new(kg0))
        .unwrap();
    for round in 0..4u64 {
        {
            let mut tl = t.lock();
            for k in 0..20_000u64 {
                tl.insert(&(), k, k * 10 + round).unwrap();
            }
        }
        block_on(store.flush()).unwrap();
        block_on(store.checkpoint(round + 1)).unwrap();
    }
    assert!(store.stats().segments >= 2, "{:?}", store.stats());
    (store, t)
}

/// Once entries were evicted, a merge's output is read into the page cache as it is
/// written, a chunk at a time, not all at once after it replaced its inputs (whose cached
/// pages go with their files): the first chunk is advised before the merge ends, and the
/// whole output is advised once.
#[test]
fn a_merge_output_is_read_ahead_as_it_is_written() {
    let disk = SimDisk::default();
    let (store, _t) = four_checkpoints_of_20k_keys(&disk);
    let before = disk.advised_bytes();
    let mut merge = Box::pin(store.compact(true));
    assert!(
        block_on(poll_once(&mut merge)).is_none(),
        "the merge yields between chunks"
    );
    let first = disk.advised_bytes() - before;
    assert!(first > 0, "the first chunk is advised while the merge runs");
    assert!(block_on(merge).unwrap(), "merged");
    let st = store.stats();
    assert_eq!(st.segments, 1, "{st:?}");
    let advised = disk.advised_bytes() - before;
    assert!(first < advised, "{first} of {advised}");
    assert!(
        advised >= st.segment_bytes && advised < st.segment_bytes + 2 * 4096,
        "the output ({} bytes) is advised once: {advised}",
        st.segment_bytes
    );
}

/// A savepoint asked for while a merge runs (a worker's compaction task beside its barrier)
/// waits for the merge, then holds merges off until its copy is written: the merge cannot
/// replace segments that the savepoint's checkpoint names before they are copied, and the
/// savepoint restores every entry.
#[test]
fn a_savepoint_taken_while_a_merge_runs_copies_every_entry() {
    let disk = SimDisk::default();
    let (store, t) = four_checkpoints_of_20k_keys(&disk);
    let mut merge = Box::pin(store.compact(true));
    assert!(
        block_on(poll_once(&mut merge)).is_none(),
        "the merge yields between chunks"
    );
    {
        let mut tl = t.lock();
        for k in 0..1000u64 {
            tl.insert(&(), k, k * 10 + 4).unwrap(); // in the savepoint
        }
    }
    let sp = PathBuf::from("/sim/savepoint");
    let mut savepoint = Box::pin(store.savepoint(5, &sp));
    // A poll of each in turn, as an executor runs two tasks that yield.
    let (mut merged, mut saved) = (None, None);
    while saved.is_none() {
        if merged.is_none() {
            merged = block_on(poll_once(&mut merge));
        }
        saved = block_on(poll_once(&mut savepoint));
        if saved.is_none() && merged.is_some() {
            assert!(
                !block_on(store.compact(true)).unwrap(),
                "no merge runs while the savepoint copies"
            );
        }
    }
    assert!(merged.unwrap().unwrap(), "the merge finished first");
    assert_eq!(saved.unwrap().unwrap().checkpoint_id, 5);
    {
        let mut tl = t.lock();
        for k in 0..100u64 {
            tl.insert(&(), k, 7).unwrap(); // after the savepoint: not in it
        }
    }
    block_on(store.checkpoint(6)).unwrap();
    assert!(block_on(store.compact(true)).unwrap(), "merges run again");
    drop((merge, savepoint));
    drop((t, store));
    let target = PathBuf::from("/sim/restored");
    let s2 = block_on(Store::restore_key_groups(
        disk.clone(),
        &target,
        cfg(256 << 10),
        &[(sp, 5)],
        (0, 15),
    ))
    .unwrap();
    let t2 = s2
        .table::<(), u64, u64>("counts", TableConfig::new(kg0))
        .unwrap();
    let mut tl = t2.lock();
    for k in 0..20_000u64 {
        let v = k * 10 + if k < 1000 { 4 } else { 3 };
        assert_eq!(tl.get(&(), &k).unwrap(), Some(&v), "key {k}");
    }
}

/// A merge that runs while a checkpoint is frozen (a worker's compaction task beside its
/// barrier): the checkpoint names the merge's output in place of its inputs, and reopening it
/// finds every entry as it was at the freeze.
#[test]
fn a_checkpoint_frozen_while_a_merge_runs_keeps_every_entry() {
    let disk = SimDisk::default();
    let (store, t) = four_checkpoints_of_20k_keys(&disk);
    let merged_before = store.stats().compactions;
    let mut merge = Box::pin(store.compact(true));
    assert!(
        block_on(poll_once(&mut merge)).is_none(),
        "the merge yields between chunks"
    );
    let frozen = store.freeze(10).unwrap();
    {
        let mut tl = t.lock();
        for k in 0..100u64 {
            tl.insert(&(), k, 7).unwrap(); // after the freeze: not in checkpoint 10
        }
    }
    assert!(block_on(merge).unwrap(), "the merge finished");
    assert_eq!(store.stats().compactions, merged_before + 1);
    block_on(store.write(frozen)).unwrap();
    drop(t);
    drop(store);
    let store = Store::open(disk.clone(), &dir(), cfg(256 << 10), Some(10)).unwrap();
    let t = store
        .table::<(), u64, u64>("counts", TableConfig::new(kg0))
        .unwrap();
    let mut tl = t.lock();
    for k in 0..20_000u64 {
        assert_eq!(tl.get(&(), &k).unwrap(), Some(&(k * 10 + 3)), "key {k}");
    }
}

/// A restore reads each segment's extents of a state (one per key group, other states'
/// extents in between): the entries of every segment arrive, the newest version winning; a
/// frame that rots after the open checked it is a corruption error of the restore naming the
/// segment file and the frame's offset, and other states still restore. The same for an
/// eager restore and a background one (its load run to the end: newest segment first, so a
/// tombstone in the newest must keep older versions out; the rot is the load's error).
#[test]
fn restore_reads_extents_of_several_segments_and_detects_rot_after_the_open() {
    for mode in [Restore::Eager, Restore::Background] {
        restore_reads_extents(mode);
    }
}

fn restore_reads_extents(mode: Restore) {
    let cfg = |budget| StoreConfig {
        restore: mode,
        ..cfg(budget)
    };
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(64 << 20), None).unwrap();
    let a = store
        .table::<(), u64, u64>("a", TableConfig::new(kg0))
        .unwrap();
    let b = store
        .table::<(), u64, String>("b", TableConfig::new(kg0))
        .unwrap();
    for c in 1..=3u64 {
        {
            let (mut a, mut b) = (a.lock(), b.lock());
            for k in 0..2000u64 {
                if c == 1 || k % 3 == c % 3 {
                    a.insert(&(), k, k * 10 + c).unwrap();
                }
                b.insert(&(), k + c, format!("{c}")).unwrap();
            }
            if c == 3 {
                a.remove(&(), &5).unwrap();
            }
        }
        block_on(store.checkpoint(c)).unwrap();
    }
    drop((a, b, store));
    let store = Store::open(disk.clone(), &dir(), cfg(64 << 20), Some(3)).unwrap();
    assert_eq!(store.stats().segments, 3);
    let a = store
        .table::<(), u64, u64>("a", TableConfig::new(kg0))
        .unwrap();
    let b = store
        .table::<(), u64, String>("b", TableConfig::new(kg0))
        .unwrap();
    assert_eq!(store.warming(), mode == Restore::Background);
    store.warm_all().unwrap();
    assert!(!store.warming());
    {
        let (mut a, mut b) = (a.lock(), b.lock());
        assert_eq!(a.resident_len(), 1999);
        for k in 0..2000u64 {
            let want = match k % 3 {
                _ if k == 5 => None,
                0 => Some(k * 10 + 3),
                2 => Some(k * 10 + 2),
                _ => Some(k * 10 + 1),
            };
            assert_eq!(a.get(&(), &k).unwrap().copied(), want, "key {k}");
        }
        assert_eq!(b.resident_len(), 2002);
        assert_eq!(b.get(&(), &1).unwrap().map(String::as_str), Some("1"));
        assert_eq!(b.get(&(), &2).unwrap().map(String::as_str), Some("2"));
        assert_eq!(b.get(&(), &2001).unwrap().map(String::as_str), Some("3"));
        assert_eq!(b.get(&(), &2002).unwrap().map(String::as_str), Some("3"));
    }
    drop((a, b, store));

    // Rot in the 300th frame of state "a" in the largest segment, after the open checked it.
    let store = Store::open(disk.clone(), &dir(), cfg(64 << 20), Some(3)).unwrap();
    let files = disk.snapshot();
    let (seg, bytes) = segment_files(&files).max_by_key(|(_, f)| f.len()).unwrap();
    let id_a = sluice_state::state_id("a");
    let (mut at, mut seen) = (0usize, 0);
    let bad = loop {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        assert!(len > 0, "fewer than 300 frames of state a");
        let state = u32::from_le_bytes(bytes[at + 32..at + 36].try_into().unwrap());
        if state == id_a {
            seen += 1;
            if seen == 300 {
                break at;
            }
        }
        at += len;
    };
    disk.flip(seg, bad + 84, 0x20);
    let err = match store.table::<(), u64, u64>("a", TableConfig::new(kg0)) {
        Ok(_) if mode == Restore::Background => match store.warm_all() {
            Ok(()) => panic!("rot in a frame loaded in the background was not detected"),
            Err(e) => e.to_string(),
        },
        Ok(_) => panic!("rot in a restored frame was not detected"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&seg.display().to_string()) && err.contains(&format!("offset {bad}:")),
        "{err}"
    );
    assert!(err.contains("crc mismatch"), "{err}");
    let b = store
        .table::<(), u64, String>("b", TableConfig::new(kg0))
        .unwrap();
    store.warm_all().unwrap();
    assert_eq!(b.lock().resident_len(), 2002);
}

/// The segment files of a disk image, with their bytes.
fn segment_files(image: &CrashImage) -> impl Iterator<Item = (&PathBuf, &Vec<u8>)> {
    image
        .files()
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "seg"))
}

/// A store with table `name` of keys `0..n` (values `value(k)`), checkpointed as checkpoint 1
/// and closed: its disk.
fn checkpointed_table(name: &str, n: u64, value: fn(u64) -> u64) -> SimDisk {
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(64 << 20), None).unwrap();
    let t = store
        .table::<(), u64, u64>(name, TableConfig::new(kg0))
        .unwrap();
    {
        let mut t = t.lock();
        for k in 0..n {
            t.insert(&(), k, value(k)).unwrap();
        }
    }
    block_on(store.checkpoint(1)).unwrap();
    disk
}

/// Point lookups of evicted entries in one segment of many sparse-index strides (the
/// lookup searches a top level of every 16th fence first): every key is found with its
/// value, absent keys are absent; rot in a frame after the open is a crc error naming the
/// file and the frame's offset for each lookup that scans that frame, and no lookup returns
/// a wrong value.
#[test]
fn lookups_across_many_index_strides_find_every_key_and_detect_rot() {
    let n = 30_000u64;
    let disk = checkpointed_table("wide", n, |k| k * 3 + 1);
    let lazy = StoreConfig {
        restore: sluice_state::Restore::Lazy,
        ..cfg(64 << 20)
    };
    let open = || {
        let store = Store::open(disk.clone(), &dir(), lazy.clone(), Some(1)).unwrap();
        let t = store
            .table::<(), u64, u64>("wide", TableConfig::new(kg0))
            .unwrap();
        (store, t)
    };
    let (store, t) = open();
    let stats = store.stats();
    assert_eq!(stats.segments, 1);
    assert!(
        stats.segment_bytes > 4096 * 8 * sluice_state::segment::FENCE_TOP_STRIDE as u64,
        "only {} bytes: fewer than 8 strides",
        stats.segment_bytes
    );
    {
        let mut t = t.lock();
        assert_eq!(t.resident_len(), 0);
        for k in 0..n {
            assert_eq!(t.get(&(), &k).unwrap(), Some(&(k * 3 + 1)), "key {k}");
        }
        for k in n..n + 500 {
            assert_eq!(t.get(&(), &k).unwrap(), None, "key {k}");
        }
    }
    drop((t, store));

    let (store, t) = open();
    let files = disk.snapshot();
    let (seg, bytes) = segment_files(&files).next().unwrap();
    let mut bad = 0usize;
    for _ in 0..20_000 {
        bad += u32::from_le_bytes(bytes[bad..bad + 4].try_into().unwrap()) as usize;
    }
    disk.flip(seg, bad + 84, 0x20);
    let mut t = t.lock();
    let mut errors = 0;
    for k in 0..n {
        match t.get(&(), &k) {
            Ok(v) => assert_eq!(v, Some(&(k * 3 + 1)), "key {k}"),
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains(&seg.display().to_string()) && e.contains(&format!("offset {bad}:")),
                    "{e}"
                );
                assert!(e.contains("crc mismatch"), "{e}");
                errors += 1;
            }
        }
    }
    assert!(errors > 0, "the rotten frame was never read");
    drop(t);
    drop(store);
}

/// A point lookup checks the crc of the frame it returns, not of the frames before it in
/// the block it reads: rot in one evicted entry's value is a crc error naming the file and
/// that frame's offset for that key alone, and every other key of its block, before and
/// after it, still reads its own value.
#[test]
fn rot_in_one_entry_fails_only_that_entry_and_not_its_block() {
    let n = 3000u64;
    let disk = checkpointed_table("block", n, |k| k * 5 + 2);
    let files = disk.snapshot();
    let (seg, bytes) = segment_files(&files).next().unwrap();
    // Frames of this table: an 80-byte header, the key (8 bytes, padded to 16), the value.
    let mut frames = Vec::new();
    let mut at = 0usize;
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        frames.push(at);
        at += len;
    }
    assert_eq!(frames.len() as u64, n);
    // A frame with two more after it in the same 4 KiB, so that no sparse-index entry
    // starts between it and them: their lookups read it first.
    let m = (frames.len() / 2..frames.len() - 2)
        .find(|&i| frames[i] / 4096 == frames[i + 2] / 4096 && frames[i] % 4096 > 0)
        .unwrap();
    let bad = frames[m];
    let key_at = |f: usize| u64::from_le_bytes(bytes[f + 80..f + 88].try_into().unwrap());
    let rotten = key_at(bad);
    let lazy = StoreConfig {
        restore: sluice_state::Restore::Lazy,
        ..cfg(64 << 20)
    };
    let store = Store::open(disk.clone(), &dir(), lazy, Some(1)).unwrap();
    let t = store
        .table::<(), u64, u64>("block", TableConfig::new(kg0))
        .unwrap();
    // Rot after the open (which checks every frame).
    disk.flip(seg, bad + 96, 0x08);
    let mut t = t.lock();
    for f in [frames[m + 1], frames[m + 2], frames[m - 1]] {
        let k = key_at(f);
        assert_eq!(t.get(&(), &k).unwrap(), Some(&(k * 5 + 2)), "key {k}");
    }
    let e = t.get(&(), &rotten).unwrap_err().to_string();
    assert!(
        e.contains(&seg.display().to_string()) && e.contains(&format!("offset {bad}:")),
        "{e}"
    );
    assert!(e.contains("crc mismatch"), "{e}");
    for k in (0..n).filter(|&k| k != rotten) {
        assert_eq!(t.get(&(), &k).unwrap(), Some(&(k * 5 + 2)), "key {k}");
    }
}

/// A key written for the first time is in the next checkpoint also when its write makes room
/// by evicting and that eviction prunes the dirty list. (The key was listed before its slot
/// was placed: the prune found no dirty slot for it and dropped it, so the checkpoint missed
/// it. Here every eviction comes from such a write, and with no checkpoint taking the list
/// it grows until the evictions prune it.)
#[test]
fn a_new_key_whose_write_evicts_and_prunes_the_dirty_list_is_checkpointed() {
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(64 << 10), None).unwrap();
    let t = store
        .table::<(), u64, u64>("counts", TableConfig::new(kg0))
        .unwrap();
    for batch in 0..50u64 {
        {
            let mut tl = t.lock();
            for k in batch * 1000..(batch + 1) * 1000 {
                tl.insert(&(), k, k + 1).unwrap();
            }
        }
        block_on(store.flush()).unwrap();
    }
    block_on(store.checkpoint(1)).unwrap();
    drop(t);
    drop(store);
    let store = Store::open(disk.clone(), &dir(), cfg(64 << 10), Some(1)).unwrap();
    let t = store
        .table::<(), u64, u64>("counts", TableConfig::new(kg0))
        .unwrap();
    let mut tl = t.lock();
    let lost: Vec<u64> = (0..50_000u64)
        .filter(|k| tl.get(&(), k).unwrap() != Some(&(k + 1)))
        .collect();
    assert!(
        lost.is_empty(),
        "{} keys lost, the first {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

fn kg_ns(_: &u8, k: &u64) -> u32 {
    (*k % 16) as u32
}

type Entries = std::collections::BTreeMap<(u8, u64), u64>;

/// A background restore of `budget` bytes whose load steps a 4 KiB block at a time.
fn background(budget: usize) -> StoreConfig {
    StoreConfig {
        restore: Restore::Background,
        warm_step_bytes: 1,
        ..cfg(budget)
    }
}

/// Every entry of namespaces 0..3 of `t`, as the job sees them.
fn entries_of(t: &Table<u8, u64, u64>) -> Entries {
    let mut out = Entries::new();
    let mut t = t.lock();
    for ns in 0..3u8 {
        t.for_each_in_namespace(&ns, |k, v| {
            out.insert((ns, *k), *v);
        })
        .unwrap();
    }
    out
}

/// A disk with table "w" checkpointed twice: namespaces 0..3 of keys 0..3000 at checkpoint
/// 1, then newer values of the even keys of namespace 0 and a removed key at checkpoint 2;
/// and what it holds.
fn two_checkpoints() -> (SimDisk, Entries) {
    let disk = SimDisk::default();
    let store = Store::open(disk.clone(), &dir(), cfg(64 << 20), None).unwrap();
    let t = store
        .table::<u8, u64, u64>("w", TableConfig::new(kg_ns))
        .unwrap();
    let mut model = Entries::new();
    {
        let mut t = t.lock();
        for ns in 0..3u8 {
            for k in 0..3000u64 {
                t.insert(&ns, k, k).unwrap();
                model.insert((ns, k), k);
            }
        }
    }
    block_on(store.checkpoint(1)).unwrap();
    {
        let mut t = t.lock();
        for k in (0..3000u64).step_by(2) {
            t.insert(&0, k, k + 1_000_000).unwrap();
            model.insert((0, k), k + 1_000_000);
        }
        t.remove(&0, &1).unwrap();
        model.remove(&(0, 1));
    }
    block_on(store.checkpoint(2)).unwrap();
    (disk, model)
}

/// A background restore serves the job at once (a key not loaded yet is read from disk), and
/// its load, a step at a time between the job's changes, never brings back what the job
/// changed meanwhile: a value written, a key removed, a namespace dropped; nor an entry the
/// newest segment removed. At its end the table is resident in full — it serves every entry
/// with every segment rotten — and a checkpoint keeps the job's view.
#[test]
fn background_load_keeps_what_the_job_changed_meanwhile() {
    let (disk, mut model) = two_checkpoints();
    let bg = background(64 << 20);
    let store = Store::open(disk.clone(), &dir(), bg.clone(), Some(2)).unwrap();
    let t = store
        .table::<u8, u64, u64>("w", TableConfig::new(kg_ns))
        .unwrap();
    assert!(store.warming() && t.lock().warming());
    assert_eq!(t.lock().resident_len(), 0);
    // Before any step: served from disk.
    assert_eq!(t.lock().get(&0, &2998).unwrap(), Some(&(2998 + 1_000_000)));
    assert_eq!(t.lock().get(&0, &1).unwrap(), None);
    let mut steps = 0u64;
    while store.warm_step().unwrap() {
        steps += 1;
        let mut tl = t.lock();
        let k = steps * 7 % 3000;
        match steps % 5 {
            0 => {
                tl.insert(&0, k, 7).unwrap();
                model.insert((0, k), 7);
            }
            1 => {
                tl.remove(&2, &k).unwrap();
                model.remove(&(2, k));
            }
            2 => {
                *tl.get_or_insert_with(&2, k, || 0).unwrap() += 5;
                *model.entry((2, k)).or_insert(0) += 5;
            }
            _ => {
                let got = tl.get(&0, &k).unwrap().copied();
                assert_eq!(got, model.get(&(0, k)).copied(), "key {k} at step {steps}");
            }
        }
        if steps == 10 {
            tl.drop_namespace(&1).unwrap();
            model.retain(|(ns, _), _| *ns != 1);
        }
    }
    assert!(steps > 20, "the load took {steps} steps");
    assert!(!store.warming() && !t.lock().warming());
    // Resident in full: rot in every segment goes unnoticed, as nothing reads them.
    for (path, bytes) in segment_files(&disk.snapshot()) {
        for at in (100..bytes.len()).step_by(997) {
            disk.flip(path, at, 0x10);
        }
    }
    assert_eq!(entries_of(&t), model);
    for k in 3000..3100u64 {
        assert_eq!(t.lock().get(&0, &k).unwrap(), None);
    }
}

/// A background load ends where the budget does, and at the table's first eviction; either
/// way the table is left as a lazy restore leaves it, and serves every entry right.
#[test]
fn background_load_stops_at_the_budget_and_at_an_eviction() {
    let (disk, model) = two_checkpoints();
    for (budget, new_keys) in [(100 << 10, 0), (2 << 20, 60_000u64)] {
        let bg = background(budget);
        let store = Store::open(disk.clone(), &dir(), bg, Some(2)).unwrap();
        let t = store
            .table::<u8, u64, u64>("w", TableConfig::new(kg_ns))
            .unwrap();
        for _ in 0..5 {
            store.warm_step().unwrap();
        }
        // With room for the load, the job's new keys fill the rest and evict.
        let mut want = model.clone();
        {
            let mut tl = t.lock();
            for k in 0..new_keys {
                tl.insert(&2, 10_000 + k, k).unwrap();
                want.insert((2, 10_000 + k), k);
            }
        }
        block_on(store.flush()).unwrap();
        store.warm_all().unwrap();
        assert!(!store.warming());
        let used = store.memory_used();
        assert!(used <= budget, "{used} bytes resident, budget {budget}");
        assert!(t.lock().resident_len() < want.len());
        assert_eq!(entries_of(&t), want, "budget {budget}");
    }
}

/// The maintenance task ([`Store::compactor`], which a job runs beside its operators) runs
/// a background load in steps while the job works between them: registering the table
/// wakes it, and the load ends with the table resident in full and what the job wrote kept.
#[test]
fn the_compactor_task_runs_the_background_load_beside_the_job() {
    let (disk, mut model) = two_checkpoints();
    let bg = background(64 << 20);
    let store = Store::open(disk, &dir(), bg, Some(2)).unwrap();
    let mut batches = 0u64;
    let work = async {
        // The task waits for work: the registration must wake it.
        futures_lite::future::yield_now().await;
        let t = store
            .table::<u8, u64, u64>("w", TableConfig::new(kg_ns))
            .unwrap();
        while store.warming() {
            let k = batches * 13 % 3000;
            t.lock().insert(&1, k, batches).unwrap();
            model.insert((1, k), batches);
            batches += 1;
            futures_lite::future::yield_now().await;
        }
        store.stop_compactor();
        t
    };
    let (done, t) = block_on(futures_lite::future::zip(store.compactor(), work));
    done.unwrap();
    assert!(batches > 20, "the load ended after {batches} batches");
    assert!(!t.lock().warming());
    assert_eq!(entries_of(&t), model);
}
