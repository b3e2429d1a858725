//! The state handles against the store: scoping to the current key, declarations, time to
//! live, state several times the store's memory budget, and a checkpoint reopened.

use std::path::Path;
use std::rc::Rc;

use futures_lite::future::block_on;
use sluice_state::StoreConfig;
use sluice_state::sim::SimDisk;

use super::*;
use crate::keyed::AggregateFunction;
use crate::state::{StateDisk, StateStore};

fn store(disk: &SimDisk, budget_bytes: usize, checkpoint: Option<u64>) -> Rc<StateStore> {
    let cfg = StoreConfig {
        memory_budget_bytes: budget_bytes,
        key_groups: (0, 127),
        ..StoreConfig::default()
    };
    let disk = StateDisk::Memory(disk.clone());
    Rc::new(StateStore::open(disk, Path::new("/keyed"), cfg, checkpoint).unwrap())
}

fn keyed<K: Key>(store: &Rc<StateStore>) -> KeyedState<K> {
    KeyedState::in_store(store.clone(), KeyGroups::new(128, 1).unwrap(), "op0")
}

#[derive(Clone)]
struct Mean;

impl AggregateFunction<u32> for Mean {
    type Acc = (u64, u64);
    type Out = u64;
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), v: u32) {
        acc.0 += u64::from(v);
        acc.1 += 1;
    }
    fn merge(&self, acc: &mut (u64, u64), other: (u64, u64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn get_result(&self, acc: &(u64, u64)) -> u64 {
        acc.0 / acc.1.max(1)
    }
}

#[test]
fn handles_are_scoped_to_the_current_key() {
    let disk = SimDisk::default();
    let mut s: KeyedState<u32> = keyed(&store(&disk, 1 << 20, None));
    let count = s.value_state::<u64>("count");
    let seen = s.list_state::<char>("seen");
    let tags = s.map_state::<String, u8>("tags");
    let sum = s.reducing_state("sum", |a: i64, b: i64| a + b);
    let mean = s.aggregating_state("mean", Mean);
    assert!(s.declaration_error().is_none());
    s.set_current_key(1);
    count.update(&mut s, 5).unwrap();
    seen.add(&mut s, 'a').unwrap();
    seen.add_all(&mut s, ['b', 'c']).unwrap();
    tags.put(&mut s, "x".into(), 1).unwrap();
    tags.put(&mut s, "y".into(), 2).unwrap();
    sum.add(&mut s, 3).unwrap();
    sum.add(&mut s, 4).unwrap();
    mean.add(&mut s, 4).unwrap();
    mean.add(&mut s, 8).unwrap();
    s.set_current_key(2);
    assert_eq!(count.value(&s).unwrap(), None);
    assert!(seen.get(&s).unwrap().is_empty());
    assert!(tags.is_empty(&s).unwrap());
    assert_eq!(sum.get(&s).unwrap(), None);
    assert_eq!(mean.get(&s).unwrap(), None);
    count.update(&mut s, 9).unwrap();
    s.set_current_key(1);
    assert_eq!(count.value(&s).unwrap(), Some(5));
    assert_eq!(count.value_mut(&mut s, |v| *v += 1).unwrap(), Some(()));
    assert_eq!(count.with_value(&s, |v| v.copied()).unwrap(), Some(6));
    assert_eq!(seen.get(&s).unwrap(), vec!['a', 'b', 'c']);
    assert_eq!(seen.with_list(&s, <[char]>::len).unwrap(), 3);
    assert_eq!(tags.get(&s, &"x".into()).unwrap(), Some(1));
    assert!(tags.contains(&s, &"y".into()).unwrap());
    let mut entries = tags.entries(&s).unwrap();
    entries.sort();
    assert_eq!(entries, vec![("x".into(), 1), ("y".into(), 2)]);
    assert_eq!(tags.take(&mut s, &"x".into()).unwrap(), Some(1));
    assert_eq!(tags.get(&s, &"x".into()).unwrap(), None);
    tags.clear(&mut s).unwrap();
    assert!(tags.is_empty(&s).unwrap());
    assert_eq!(sum.get(&s).unwrap(), Some(7));
    assert_eq!(mean.get(&s).unwrap(), Some(6));
    seen.retain(&mut s, |c| *c != 'b').unwrap();
    assert_eq!(seen.take(&mut s).unwrap(), vec!['a', 'c']);
    assert!(seen.get(&s).unwrap().is_empty());
    assert_eq!(count.take(&mut s).unwrap(), Some(6));
    assert_eq!(count.value(&s).unwrap(), None);
    // The other key kept its value.
    s.set_current_key(2);
    assert_eq!(count.value(&s).unwrap(), Some(9));
}

#[test]
fn declaring_a_name_again_finds_the_same_state() {
    let disk = SimDisk::default();
    let mut s: KeyedState<String> = keyed(&store(&disk, 1 << 20, None));
    let count = s.value_state::<u64>("count");
    s.set_current_key("k".into());
    count.update(&mut s, 5).unwrap();
    let again = s.value_state::<u64>("count");
    assert_eq!(again.value(&s).unwrap(), Some(5));
    assert!(s.declaration_error().is_none());
    // Another kind (with the same table type) or another value type is an error, reported
    // by the operator after `open` and by a use of the handle.
    let list = s.list_state::<u64>("count");
    let err = s.declaration_error().unwrap().to_string();
    assert!(err.contains("state 'count' declared twice"), "{err}");
    let used = list.add(&mut s, 1).unwrap_err().to_string();
    assert!(used.contains("declaration failed"), "{used}");
}

#[test]
fn a_handle_that_was_never_declared_is_an_error() {
    let disk = SimDisk::default();
    let mut s: KeyedState<u8> = keyed(&store(&disk, 1 << 20, None));
    s.set_current_key(1);
    let err = ValueState::<u64>::default().update(&mut s, 1).unwrap_err();
    assert!(err.to_string().contains("before it was declared"), "{err}");
}

#[test]
fn state_with_a_time_to_live_expires_after_its_last_write() {
    let disk = SimDisk::default();
    let mut s: KeyedState<u8> = keyed(&store(&disk, 1 << 20, None));
    let ttl = StateTtlConfig::new(std::time::Duration::from_millis(100));
    let seen = s.with_ttl(ttl).value_state::<u32>("seen");
    let tags = s.with_ttl(ttl).map_state::<u8, u8>("tags");
    let forever = s.value_state::<u32>("forever");
    assert!(s.uses_ttl());
    s.set_time_ms(1_000);
    s.set_current_key(1);
    seen.update(&mut s, 1).unwrap();
    tags.put(&mut s, 1, 1).unwrap();
    forever.update(&mut s, 1).unwrap();
    s.set_time_ms(1_050);
    tags.put(&mut s, 2, 2).unwrap();
    // Reading does not extend the time to live; writing does.
    assert_eq!(seen.value(&s).unwrap(), Some(1));
    s.set_time_ms(1_099);
    seen.update(&mut s, 2).unwrap();
    s.set_time_ms(1_120);
    assert_eq!(seen.value(&s).unwrap(), Some(2));
    assert_eq!(tags.entries(&s).unwrap(), vec![(2, 2)]);
    s.set_time_ms(1_199);
    assert_eq!(seen.value(&s).unwrap(), None);
    assert_eq!(forever.value(&s).unwrap(), Some(1));
    // Declared again with another time to live: an error.
    let _ = s.value_state::<u32>("seen");
    assert!(s.declaration_error().is_some());
}

/// The time to live is kept with each value in checkpoints: after a reopen (of entries that
/// were resident and of entries evicted to segments), values expire when they would have
/// without the restart, and not before.
#[test]
fn state_with_a_time_to_live_expires_after_a_restore_as_without_it() {
    let keys = 2_000u32;
    let late = keys;
    let ttl = StateTtlConfig::new(std::time::Duration::from_millis(100));
    let disk = SimDisk::default();
    {
        let store = store(&disk, 64 << 10, None);
        let mut s: KeyedState<u32> = keyed(&store);
        let seen = s.with_ttl(ttl).value_state::<String>("seen");
        s.set_time_ms(1_000);
        for k in 0..keys {
            s.set_current_key(k);
            seen.update(&mut s, payload(k)).unwrap();
            if k % 256 == 0 {
                block_on(store.flush()).unwrap();
            }
        }
        s.set_time_ms(1_080);
        s.set_current_key(late);
        seen.update(&mut s, payload(late)).unwrap();
        block_on(store.flush()).unwrap();
        let used = store.memory_used();
        assert!(
            used < keys as usize * 100,
            "some values were evicted: {used} bytes used"
        );
        let frozen = store.freeze(1).unwrap();
        block_on(store.write(frozen)).unwrap();
    }
    let store = store(&disk, 64 << 10, Some(1));
    let mut s: KeyedState<u32> = keyed(&store);
    let seen = s.with_ttl(ttl).value_state::<String>("seen");
    assert!(s.declaration_error().is_none());
    let value = |s: &mut KeyedState<u32>, k: u32| {
        s.set_current_key(k);
        seen.value(s).unwrap()
    };
    s.set_time_ms(1_099);
    for k in (0..=late).step_by(97) {
        assert_eq!(value(&mut s, k), Some(payload(k)), "key {k} at 1099");
    }
    s.set_time_ms(1_100);
    for k in (0..keys).step_by(97) {
        assert_eq!(value(&mut s, k), None, "key {k} at 1100");
    }
    assert_eq!(value(&mut s, late), Some(payload(late)));
    s.set_time_ms(1_180);
    assert_eq!(value(&mut s, late), None);
}

/// A value of about 100 bytes, a function of its key.
fn payload(k: u32) -> String {
    format!("{k:>8}").repeat(12)
}

/// Writes value, list and map state for `keys` keys through a store whose budget is a small
/// fraction of it, flushing evicted entries as the runtime does after each batch.
fn fill(s: &mut KeyedState<u32>, store: &StateStore, keys: u32) {
    let text = s.value_state::<String>("text");
    let list = s.list_state::<u32>("list");
    let map = s.map_state::<u32, String>("map");
    for k in 0..keys {
        s.set_current_key(k);
        text.update(s, payload(k)).unwrap();
        for i in 0..4 {
            list.add(s, k + i).unwrap();
        }
        map.put(s, k % 3, payload(k + 1)).unwrap();
        map.put(s, k % 3 + 10, payload(k + 2)).unwrap();
        if k % 256 == 0 {
            block_on(store.flush()).unwrap();
        }
    }
    block_on(store.flush()).unwrap();
}

/// Reads back what [`fill`] wrote, flushing as the runtime does (reads evict entries that
/// were written since the last checkpoint, which then wait in memory to be written).
fn check(s: &mut KeyedState<u32>, store: &StateStore, keys: u32) {
    let text = s.value_state::<String>("text");
    let list = s.list_state::<u32>("list");
    let map = s.map_state::<u32, String>("map");
    assert!(s.declaration_error().is_none());
    for k in (0..keys).rev() {
        s.set_current_key(k);
        assert_eq!(text.value(s).unwrap(), Some(payload(k)), "key {k}");
        assert_eq!(list.get(s).unwrap(), (k..k + 4).collect::<Vec<_>>());
        let mut entries = map.entries(s).unwrap();
        entries.sort();
        let expected = vec![(k % 3, payload(k + 1)), (k % 3 + 10, payload(k + 2))];
        assert_eq!(entries, expected, "key {k}");
        if k % 256 == 0 {
            block_on(store.flush()).unwrap();
        }
    }
}

#[test]
fn state_several_times_the_memory_budget_reads_back() {
    let keys = 12_000;
    let budget = 128 << 10;
    let disk = SimDisk::default();
    let store = store(&disk, budget, None);
    let mut s: KeyedState<u32> = keyed(&store);
    fill(&mut s, &store, keys);
    assert!(
        store.memory_used() <= budget,
        "memory used {} over the budget {budget}",
        store.memory_used()
    );
    assert!(store.stats().segment_entries > 5_000, "state was evicted");
    check(&mut s, &store, keys);
    let used = store.memory_used();
    assert!(
        used <= 2 * budget,
        "memory used {used} after reading, budget {budget}"
    );
}

#[test]
fn keyed_state_survives_a_checkpoint_and_a_reopen() {
    let keys = 5_000;
    let disk = SimDisk::default();
    {
        let store = store(&disk, 128 << 10, None);
        let mut s: KeyedState<u32> = keyed(&store);
        fill(&mut s, &store, keys);
        let frozen = store.freeze(1).unwrap();
        block_on(store.write(frozen)).unwrap();
        // Changes after the checkpoint are not in it.
        let text = s.value_state::<String>("text");
        s.set_current_key(0);
        text.update(&mut s, "after".into()).unwrap();
    }
    let store = store(&disk, 128 << 10, Some(1));
    let mut s: KeyedState<u32> = keyed(&store);
    check(&mut s, &store, keys);
}
