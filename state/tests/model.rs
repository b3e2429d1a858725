//! Model-based property test (STYLE item 31): random puts (single and bursts), adds, removes,
//! list appends, namespace drops, checkpoints (some frozen while more writes arrive),
//! compactions, flushes, evictions (a small memory budget makes them constant) and reopens,
//! against a `BTreeMap` model. After every operation that reads, the store must agree with
//! the model; after a reopen, with the model at the last checkpoint. Reopens take turns
//! among the restore modes; a background restore's load advances a step at a time (`Warm`)
//! between the other operations, and with a budget large enough for it to finish too.
//!
//! `SLUICE_RELIABILITY=extended` runs 2,000 cases instead of 48.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures_lite::future::block_on;
use proptest::prelude::*;
use sluice_state::sim::SimDisk;
use sluice_state::{Frozen, Restore, Store, StoreConfig, Table, TableConfig};

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u16, u32),
    /// Puts of `len` keys from `start` (wrapping): a burst that lists many keys between
    /// checkpoints, so evictions prune the dirty-key list.
    PutRun(u8, u16, u8, u32),
    Add(u8, u16, u32),
    Remove(u8, u16),
    Append(u16, u32),
    DropNs(u8),
    Get(u8, u16),
    IterNs(u8),
    Freeze,
    Write,
    Checkpoint,
    Compact(bool),
    Flush,
    Reopen,
    /// Steps of the background load of a restore, if one runs.
    Warm(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..4u8, 0..200u16, any::<u32>()).prop_map(|(n, k, v)| Op::Put(n, k, v)),
        2 => (0..4u8, 0..200u16, 1..120u8, any::<u32>())
            .prop_map(|(n, k, len, v)| Op::PutRun(n, k, len, v)),
        10 => (0..4u8, 0..200u16, 0..1000u32).prop_map(|(n, k, v)| Op::Add(n, k, v)),
        3 => (0..4u8, 0..200u16).prop_map(|(n, k)| Op::Remove(n, k)),
        3 => (0..50u16, any::<u32>()).prop_map(|(k, v)| Op::Append(k, v)),
        1 => (0..4u8).prop_map(Op::DropNs),
        6 => (0..4u8, 0..200u16).prop_map(|(n, k)| Op::Get(n, k)),
        1 => (0..4u8).prop_map(Op::IterNs),
        1 => Just(Op::Freeze),
        1 => Just(Op::Write),
        2 => Just(Op::Checkpoint),
        1 => any::<bool>().prop_map(Op::Compact),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        3 => (1..4u8).prop_map(Op::Warm),
    ]
}

type Model = BTreeMap<(u8, u16), u32>;
type Lists = BTreeMap<u16, Vec<u32>>;

fn kg(_: &u8, k: &u16) -> u32 {
    u32::from(*k % 8)
}

fn kgl(_: &(), k: &u16) -> u32 {
    u32::from(*k % 8)
}

struct Sut {
    disk: SimDisk,
    store: Store<SimDisk>,
    t: Table<u8, u16, u32>,
    l: Table<(), u16, Vec<u32>>,
    frozen: Option<(Frozen, Model, Lists)>,
    next_ckpt: u64,
}

/// The store's options for the `n`th open: the restore modes in turn, the last with a
/// budget its load never fills (and no evictions after it until the next reopen).
fn cfg(n: u64) -> StoreConfig {
    let (restore, budget) = match n % 4 {
        0 => (Restore::Eager, 6_000),
        1 => (Restore::Lazy, 6_000),
        2 => (Restore::Background, 6_000),
        _ => (Restore::Background, 1 << 20),
    };
    StoreConfig {
        memory_budget_bytes: budget,
        key_groups: (0, 7),
        segments_max: 3,
        retained_checkpoints: 2,
        restore,
        // Prunes of the dirty-key list after a handful of writes, not a thousand.
        dirty_list_slack: 4,
        // Steps of one 4 KiB block.
        warm_step_bytes: 1,
    }
}

impl Sut {
    fn open(disk: SimDisk, next_ckpt: u64) -> Sut {
        let dir = PathBuf::from("/sim/model");
        let store = Store::open(disk.clone(), &dir, cfg(next_ckpt), None).unwrap();
        let t = store.table("t", TableConfig::new(kg)).unwrap();
        let l = store.table("l", TableConfig::new(kgl)).unwrap();
        Sut {
            disk,
            store,
            t,
            l,
            frozen: None,
            next_ckpt,
        }
    }
}

fn check_all(sut: &Sut, model: &Model, lists: &Lists) {
    let mut t = sut.t.lock();
    for ns in 0..4u8 {
        let mut got = BTreeMap::new();
        t.for_each_in_namespace(&ns, |k, v| {
            got.insert((ns, *k), *v);
        })
        .unwrap();
        let want: Model = model
            .iter()
            .filter(|(k, _)| k.0 == ns)
            .map(|(k, v)| (*k, *v))
            .collect();
        assert_eq!(got, want, "namespace {ns}");
    }
    let mut l = sut.l.lock();
    for k in 0..50u16 {
        assert_eq!(l.get(&(), &k).unwrap(), lists.get(&k), "list {k}");
    }
}

fn run(ops: Vec<Op>, canary: bool) {
    let mut sut = Sut::open(SimDisk::new(512), 1);
    let (mut model, mut lists) = (Model::new(), Lists::new());
    let (mut durable, mut durable_lists) = (Model::new(), Lists::new());
    for op in ops {
        match op {
            Op::Put(n, k, v) => {
                sut.t.lock().insert(&n, k, v).unwrap();
                model.insert((n, k), v);
            }
            Op::PutRun(n, start, len, v) => {
                let mut t = sut.t.lock();
                for i in 0..u16::from(len) {
                    let k = (start + i) % 200;
                    let v = v.wrapping_add(u32::from(i));
                    t.insert(&n, k, v).unwrap();
                    model.insert((n, k), v);
                }
            }
            Op::Add(n, k, v) => {
                *sut.t.lock().get_or_insert_with(&n, k, || 0).unwrap() += v;
                *model.entry((n, k)).or_insert(0) += v;
            }
            Op::Remove(n, k) => {
                sut.t.lock().remove(&n, &k).unwrap();
                model.remove(&(n, k));
            }
            Op::Append(k, v) => {
                sut.l.lock().append(&(), k, v).unwrap();
                lists.entry(k).or_default().push(v);
            }
            Op::DropNs(n) => {
                sut.t.lock().drop_namespace(&n).unwrap();
                model.retain(|(m, _), _| *m != n);
            }
            Op::Get(n, k) => {
                let got = sut.t.lock().get(&n, &k).unwrap().copied();
                assert_eq!(got, model.get(&(n, k)).copied(), "get {n} {k}");
            }
            Op::IterNs(n) => {
                let mut got = Model::new();
                sut.t
                    .lock()
                    .for_each_in_namespace(&n, |k, v| {
                        got.insert((n, *k), *v);
                    })
                    .unwrap();
                let want: Model = model
                    .iter()
                    .filter(|(k, _)| k.0 == n)
                    .map(|(k, v)| (*k, *v))
                    .collect();
                assert_eq!(got, want, "iterate namespace {n}");
            }
            Op::Freeze => {
                let f = sut.store.freeze(sut.next_ckpt).unwrap();
                sut.next_ckpt += 1;
                sut.frozen = Some((f, model.clone(), lists.clone()));
            }
            Op::Write => {
                if let Some((f, m, l)) = sut.frozen.take() {
                    block_on(sut.store.write(f)).unwrap();
                    (durable, durable_lists) = (m, l);
                }
            }
            Op::Checkpoint => {
                sut.frozen = None;
                block_on(sut.store.checkpoint(sut.next_ckpt)).unwrap();
                sut.next_ckpt += 1;
                (durable, durable_lists) = (model.clone(), lists.clone());
            }
            Op::Compact(force) => {
                block_on(sut.store.compact(force)).unwrap();
            }
            Op::Flush => block_on(sut.store.flush()).unwrap(),
            Op::Warm(steps) => {
                for _ in 0..steps {
                    sut.store.warm_step().unwrap();
                }
            }
            Op::Reopen => {
                let (disk, next) = (sut.disk.clone(), sut.next_ckpt);
                drop(sut);
                sut = Sut::open(disk, next);
                (model, lists) = (durable.clone(), durable_lists.clone());
            }
        }
    }
    if canary {
        // The harness must notice one wrong value.
        *model.entry((0, 0)).or_insert(0) += 1;
    }
    check_all(&sut, &model, &lists);
    let (disk, next) = (sut.disk.clone(), sut.next_ckpt);
    drop(sut);
    let sut = Sut::open(disk, next);
    check_all(&sut, &durable, &durable_lists);
}

fn cases() -> u32 {
    match std::env::var("SLUICE_RELIABILITY").as_deref() {
        Ok("extended") => 2000,
        _ => 48,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn store_agrees_with_a_btreemap_model(ops in proptest::collection::vec(op(), 1..300)) {
        run(ops, false);
    }
}

/// The canary: a model off by one value must make the check fail.
#[test]
fn canary_a_wrong_model_is_caught() {
    let ops = vec![
        Op::Put(0, 0, 5),
        Op::Checkpoint,
        Op::Add(0, 1, 3),
        Op::Flush,
        Op::Reopen,
    ];
    let caught = std::panic::catch_unwind(|| run(ops, true)).is_err();
    assert!(caught, "the model check did not notice a wrong value");
}
