//! Windows through the public API on real multi-worker runs, for what the `window-agg` tests
//! do not reach: count and purging count triggers on global windows (keyed and `window_all`),
//! a custom trigger (early firings, then the final one) on every window kind, processing-time
//! windows (firing while the input is open; the rest at the end of a bounded input), allowed
//! lateness with updates (each window's last result is the reference's) on the sliced,
//! session and general operators, late records to a side output, `reduce` and `process`
//! window functions (a process function sees every record of its window, sliding windows
//! included), `window_all`, windows without records (which emit nothing), a source that emits
//! its own watermarks, and a window ending exactly at `i64::MAX`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice::{
    AggregateFunction, CountTrigger, EventTimeTrigger, OutputTag, PurgingTrigger, Result,
    TimeWindow, Trigger, TriggerContext, TriggerResult, WatermarkStrategy, WindowAssigner,
};
use sluice_tests::event_time::{
    Ev, Span, Watermarks, Windows, assert_same, assert_same_map, events, place, window_contents,
};
use sluice_tests::held::{Gate, HeldSource, Until, WatchSink, records};
use sluice_tests::run_job;

/// A window's result as the tests compare it: key, window, the ids of its records, sorted.
type Fired<K> = (K, Span, Vec<u32>);

/// The process window function of these tests: the ids of the window's records.
fn ids_of<K: Copy>(
    key: &K,
    window: &TimeWindow,
    records: &mut dyn Iterator<Item = &Ev>,
    out: &mut Vec<Fired<K>>,
) -> Result<()> {
    let mut ids: Vec<u32> = records.map(|e| e.id).collect();
    ids.sort_unstable();
    out.push((*key, (window.start, window.end), ids));
    Ok(())
}

fn strategy(
    wm: Watermarks,
) -> WatermarkStrategy<impl sluice::TimestampAssigner<Ev>, sluice::BoundedOutOfOrderness> {
    WatermarkStrategy::for_bounded_out_of_orderness(wm.delay)
        .with_timestamp_assigner(|e: &Ev| e.ts)
        .with_watermark_interval_records(wm.interval as u32)
}

/// Each window's last result, in the order results arrived (one key's results come from one
/// worker, in order).
fn last_results<K: Ord + Clone, V>(results: Vec<(K, Span, V)>) -> BTreeMap<(K, Span), V> {
    results
        .into_iter()
        .map(|(k, span, v)| ((k, span), v))
        .collect()
}

/// Drops session results that a later, larger session of the same key superseded (after a
/// late record within the allowed lateness merged it with another).
fn maximal<V>(results: BTreeMap<(u8, Span), V>) -> BTreeMap<(u8, Span), V> {
    let all: Vec<(u8, Span)> = results.keys().copied().collect();
    results
        .into_iter()
        .filter(|((k, (s, e)), _)| {
            !all.iter()
                .any(|(k2, (s2, e2))| k2 == k && (s2, e2) != (s, e) && s2 <= s && e2 >= e)
        })
        .collect()
}

/// Runs `process` and `reduce` window functions over the same input with allowed lateness
/// and a late side output; checks each window's last result and the late records against the
/// reference.
fn check_lateness(input: &[Ev], wm: Watermarks, windows: Windows, lateness: i64) {
    let placed = place(input, wm, |e| e.key, |e| e.ts, |e| e.id);
    let (contents, late_ids) = window_contents(windows, &placed, lateness);
    let assigner = windows.assigner();
    let (items, items2) = (input.to_vec(), input.to_vec());
    let items3 = input.to_vec();
    let (processed, reduced, late, general) = run_job(wm.workers, "allowed lateness", move |env| {
        let late_tag: OutputTag<(u8, Ev)> = OutputTag::new("late");
        let mut processed = env
            .from_iter(items)
            .assign_timestamps_and_watermarks(strategy(wm))
            .key_by(|e: &Ev| e.key)
            .window(assigner)
            .allowed_lateness(lateness)
            .side_output_late_data(&late_tag)
            .process(ids_of::<u8>);
        let late = processed.side_output(&late_tag).collect();
        let processed = processed.collect();
        let reduced = env
            .from_iter(items2)
            .assign_timestamps_and_watermarks(strategy(wm))
            .key_by(|e: &Ev| e.key)
            .window(assigner)
            .allowed_lateness(lateness)
            .reduce(|a: Ev, b: Ev| if a.id <= b.id { a } else { b })
            .map(|w| (w.key, (w.window.start, w.window.end), w.value.id))
            .collect();
        // The default trigger, named: this takes the general window operator (a timer per
        // key and window, sessions merged as Flink does) instead of the sliced or session one.
        let late_tag: OutputTag<(u8, Ev)> = OutputTag::new("late, general");
        let mut general = env
            .from_iter(items3)
            .assign_timestamps_and_watermarks(strategy(wm))
            .key_by(|e: &Ev| e.key)
            .window(assigner)
            .trigger(EventTimeTrigger)
            .allowed_lateness(lateness)
            .side_output_late_data(&late_tag)
            .process(ids_of::<u8>);
        let general_late = general.side_output(&late_tag).collect();
        let general = general.collect();
        move || {
            let general = (general.take(), general_late.take());
            (processed.take(), reduced.take(), late.take(), general)
        }
    });
    let what = format!("{windows:?}, lateness {lateness}, {wm:?}");
    let (mut got, mut got_min) = (last_results(processed), last_results(reduced));
    let mut got_general = last_results(general.0);
    if matches!(windows, Windows::Session { .. }) {
        got = maximal(got);
        got_min = maximal(got_min);
        got_general = maximal(got_general);
    }
    let expected: BTreeMap<(u8, Span), Vec<u32>> = contents
        .into_iter()
        .map(|(kw, mut ids)| {
            ids.sort_unstable();
            (kw, ids)
        })
        .collect();
    let expected_min: BTreeMap<(u8, Span), u32> =
        expected.iter().map(|(kw, ids)| (*kw, ids[0])).collect();
    assert_same_map(&expected, &got, &format!("process: {what}"));
    assert_same_map(&expected_min, &got_min, &format!("reduce: {what}"));
    assert_same_map(
        &expected,
        &got_general,
        &format!("general operator: {what}"),
    );
    assert_same(
        late_ids.clone(),
        late.into_iter().map(|(_, e)| e.id).collect(),
        &format!("late records: {what}"),
    );
    assert_same(
        late_ids,
        general.1.into_iter().map(|(_, e)| e.id).collect(),
        &format!("late records, general operator: {what}"),
    );
}

fn windows_strategy() -> impl Strategy<Value = Windows> {
    prop_oneof![
        (1i64..80, -10i64..10).prop_map(|(size, offset)| Windows::Fixed {
            size,
            slide: size,
            offset
        }),
        (1i64..50, 1i64..50, -10i64..10).prop_map(|(a, b, offset)| Windows::Fixed {
            size: a.max(b),
            slide: a.min(b),
            offset
        }),
        (1i64..50).prop_map(Windows::session),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(sluice_tests::proptest_cases(16)))]

    #[test]
    fn allowed_lateness_and_late_output_match_reference_on_random_streams(
        n in 0usize..800,
        keys in 1u8..8,
        seed in any::<u64>(),
        base in -10_000i64..10_000,
        step in 0i64..6,
        back in 0i64..150,
        delay in 0i64..30,
        interval in 1usize..80,
        workers in 1usize..=4,
        windows in windows_strategy(),
        lateness in prop_oneof![Just(0i64), 0i64..100],
    ) {
        let input = events(n, keys, seed, base, step, back);
        check_lateness(&input, Watermarks { workers, delay, interval }, windows, lateness);
    }
}

#[test]
fn a_late_record_within_the_allowed_lateness_updates_its_window() {
    // One worker, a watermark after every record: 105 moves the watermark to 104, past the
    // end of [0, 100), which fires; 50 then arrives behind the watermark but within a
    // lateness of 10 (99 + 10 > 104): it updates [0, 100), which fires again. 20 arrives after
    // 300 moved the watermark to 299: late for good.
    let input =
        [(0, 10), (1, 105), (2, 50), (3, 300), (4, 20)].map(|(id, ts)| Ev { key: 1, ts, id });
    let wm = Watermarks {
        workers: 1,
        delay: 0,
        interval: 1,
    };
    check_lateness(&input, wm, Windows::tumbling(100), 10);
    let got = run_job(1, "lateness", move |env| {
        let late_tag: OutputTag<(u8, Ev)> = OutputTag::new("late");
        let mut windows = env
            .from_iter(input)
            .assign_timestamps_and_watermarks(strategy(wm))
            .key_by(|e: &Ev| e.key)
            .window(WindowAssigner::tumbling(100))
            .allowed_lateness(10)
            .side_output_late_data(&late_tag)
            .process(ids_of::<u8>);
        let late = windows.side_output(&late_tag).collect();
        let windows = windows.collect();
        move || (windows.take(), late.take())
    });
    assert_eq!(
        got.0,
        vec![
            (1, (0, 100), vec![0]),
            (1, (0, 100), vec![0, 2]),
            (1, (100, 200), vec![1]),
            (1, (300, 400), vec![3]),
        ]
    );
    assert_eq!(got.1, vec![(1, input[4])]);
}

/// The process window function for global windows: the window and the ids of its records,
/// in the order they arrived.
fn ids_in_order<K: Copy>(
    key: &K,
    window: &TimeWindow,
    records: &mut dyn Iterator<Item = &Ev>,
    out: &mut Vec<(K, TimeWindow, Vec<u32>)>,
) -> Result<()> {
    out.push((*key, *window, records.map(|e| e.id).collect()));
    Ok(())
}

/// Runs `trigger` over global windows (keyed by the record's key, or everything together
/// with `window_all`, shown as key 0); returns each firing's key and ids, in the order they
/// arrived.
fn run_global<Tr: Trigger<Ev>>(
    input: &[Ev],
    workers: usize,
    trigger: Tr,
    all: bool,
) -> Vec<(u8, Vec<u32>)> {
    let items = input.to_vec();
    let fired = run_job(workers, "global windows", move |env| {
        let timed = env.from_iter(items).assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|e: &Ev| e.ts),
        );
        let out = match all {
            true => timed
                .window_all(WindowAssigner::global())
                .trigger(trigger)
                .process(ids_in_order::<()>)
                .map(|((), w, ids)| (0, w, ids))
                .collect(),
            false => timed
                .key_by(|e: &Ev| e.key)
                .window(WindowAssigner::global())
                .trigger(trigger)
                .process(ids_in_order::<u8>)
                .map(|(k, w, ids)| (k, w, ids))
                .collect(),
        };
        move || out.take()
    });
    let everything = TimeWindow::new(i64::MIN, i64::MAX);
    fired
        .into_iter()
        .map(|(k, w, ids)| {
            assert_eq!(w, everything, "a global window");
            (k, ids)
        })
        .collect()
}

/// Checks the firings of a count trigger of `n` (purging or not) against each group's records:
/// with one worker, records reach the window in input order and the firings are exact;
/// otherwise their sizes, nesting (or disjointness) and membership are.
fn check_count_trigger(input: &[Ev], workers: usize, n: usize, purging: bool, all: bool) {
    let fired = if purging {
        run_global(
            input,
            workers,
            PurgingTrigger::of(CountTrigger::of(n as u64)),
            all,
        )
    } else {
        run_global(input, workers, CountTrigger::of(n as u64), all)
    };
    let what = format!("count({n}), purging {purging}, window_all {all}, {workers} workers");
    let mut groups: BTreeMap<u8, Vec<u32>> = BTreeMap::new();
    for e in input {
        groups
            .entry(if all { 0 } else { e.key })
            .or_default()
            .push(e.id);
    }
    let mut per_group: BTreeMap<u8, Vec<Vec<u32>>> = BTreeMap::new();
    for (k, ids) in fired {
        per_group.entry(k).or_default().push(ids);
    }
    for (k, ids) in &groups {
        let firings = per_group.remove(k).unwrap_or_default();
        assert_eq!(firings.len(), ids.len() / n, "{what}: key {k}: {firings:?}");
        let mut seen: Vec<u32> = Vec::new();
        for (j, f) in firings.iter().enumerate() {
            let expected_len = if purging { n } else { (j + 1) * n };
            assert_eq!(f.len(), expected_len, "{what}: key {k}, firing {j}: {f:?}");
            let mut sorted = f.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), f.len(), "{what}: a record twice in {f:?}");
            assert!(
                f.iter().all(|id| ids.contains(id)),
                "{what}: key {k}: {f:?}"
            );
            if purging {
                assert!(
                    f.iter().all(|id| !seen.contains(id)),
                    "{what}: not purged {f:?}"
                );
                seen.extend(f);
            } else {
                assert!(
                    seen.iter().all(|id| f.contains(id)),
                    "{what}: not nested {f:?}"
                );
                seen.clone_from(f);
            }
            if workers == 1 {
                let range = if purging {
                    j * n..(j + 1) * n
                } else {
                    0..(j + 1) * n
                };
                assert_eq!(f[..], ids[range], "{what}: key {k}, firing {j}");
            }
        }
    }
    assert!(
        per_group.is_empty(),
        "{what}: firings of unknown keys {per_group:?}"
    );
}

#[test]
fn count_triggers_on_global_windows_fire_every_n_records() {
    let input = events(1_000, 5, 21, 0, 3, 50);
    for workers in [1, 2, 4] {
        for (n, purging) in [
            (1, false),
            (7, false),
            (4, true),
            (50, true),
            (2_000, false),
        ] {
            check_count_trigger(&input, workers, n, purging, false);
        }
    }
    // Leftovers (fewer than n records since the last firing) are never emitted.
    let three = events(3, 1, 1, 0, 1, 0);
    assert!(run_global(&three, 2, CountTrigger::of(4), false).is_empty());
}

#[test]
fn count_triggers_on_window_all() {
    let input = events(500, 5, 22, -100, 3, 50);
    for workers in [1, 3] {
        check_count_trigger(&input, workers, 25, true, true);
        check_count_trigger(&input, workers, 60, false, true);
    }
}

/// Counts records.
#[derive(Clone)]
struct Count;

impl AggregateFunction<u8> for Count {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: u8) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
}

fn per_key(records: &[u8]) -> BTreeMap<u8, u64> {
    let mut counts = BTreeMap::new();
    for &k in records {
        *counts.entry(k).or_default() += 1;
    }
    counts
}

fn summed(results: &[(u8, u64)]) -> BTreeMap<u8, u64> {
    let mut counts = BTreeMap::new();
    for &(k, n) in results {
        *counts.entry(k).or_default() += n;
    }
    counts
}

#[test]
fn processing_time_windows_fire_while_the_input_is_open() {
    // Windows of 50 ms of processing time: the first records' windows fire while the source
    // still waits; the sink releases it once they have all been counted (a watchdog gives up
    // after 20 s, failing the test). The rest fire when the input ends, if not before.
    let first: Vec<u8> = (0..400u32).map(|i| (i % 4) as u8).collect();
    let rest: Vec<u8> = (0..100u32).map(|i| (i % 3) as u8 + 2).collect();
    for workers in [1, 2] {
        let gate = Gate::new();
        let until: Until<(u8, u64)> =
            Arc::new(|got: &[(u8, u64)]| got.iter().map(|(_, n)| n).sum::<u64>() >= 400);
        let sink = WatchSink::new(gate.clone(), until);
        let received = sink.received();
        let watchdog = gate.watchdog(Duration::from_secs(20));
        let source = HeldSource::new(first.clone(), rest.clone(), gate.clone());
        run_job(workers, "processing-time windows", move |env| {
            env.from_source(source)
                .key_by(|k: &u8| *k)
                .window(WindowAssigner::tumbling(50).on_processing_time())
                .aggregate(Count)
                .map(|w| (w.key, w.value))
                .sink(sink);
            || ()
        });
        let _ = watchdog.join();
        assert!(
            !gate.released_by_watchdog(),
            "{workers} workers: windows did not fire while the input was open: {:?}",
            records(&received)
        );
        let held = received.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let before: Vec<(u8, u64)> = held.iter().filter(|(_, r)| !r).map(|(x, _)| *x).collect();
        assert_eq!(
            summed(&before),
            per_key(&first),
            "{workers} workers, before"
        );
        let all: Vec<u8> = first.iter().chain(&rest).copied().collect();
        assert_eq!(
            summed(&records(&received)),
            per_key(&all),
            "{workers} workers"
        );
    }
}

#[test]
fn processing_time_windows_fire_the_rest_at_the_end_of_a_bounded_input() {
    // Windows of a day never end during the test: everything fires when the input ends.
    let input: Vec<u8> = (0..3_000u32).map(|i| (i * 13 % 7) as u8).collect();
    for workers in [1, 3] {
        let items = input.clone();
        let got = run_job(workers, "processing-time windows", move |env| {
            let out = env
                .from_iter(items)
                .key_by(|k: &u8| *k)
                .window(WindowAssigner::tumbling(86_400_000).on_processing_time())
                .aggregate(Count)
                .map(|w| (w.key, w.value))
                .collect();
            move || out.take()
        });
        assert_eq!(summed(&got), per_key(&input), "{workers} workers");
    }
}

#[test]
fn windows_without_records_emit_nothing() {
    // Two bursts far apart: of the sliding windows between them, only those holding a record
    // emit, with exactly their records.
    let input: Vec<Ev> = [(0, 1), (1, 5), (2, 10_000), (3, 10_007)]
        .map(|(id, ts)| Ev { key: 3, ts, id })
        .to_vec();
    let wm = Watermarks {
        workers: 2,
        delay: 0,
        interval: 1,
    };
    for windows in [
        Windows::sliding(100, 10),
        Windows::tumbling(100),
        Windows::session(50),
    ] {
        check_lateness(&input, wm, windows, 0);
    }
    let items = input.clone();
    let got = run_job(2, "sparse windows", move |env| {
        let out = env
            .from_iter(items)
            .assign_timestamps_and_watermarks(strategy(wm))
            .key_by(|e: &Ev| e.key)
            .window(WindowAssigner::sliding(100, 10))
            .process(ids_of::<u8>)
            .collect();
        move || out.take()
    });
    assert_eq!(got.len(), 20, "{got:?}");
    assert!(
        got.iter()
            .all(|(_, _, ids)| ids == &[0, 1] || ids == &[2, 3]),
        "{got:?}"
    );
    assert!(
        run_job(3, "no records", move |env| {
            let out = env
                .from_iter(Vec::<Ev>::new())
                .assign_timestamps_and_watermarks(strategy(wm))
                .key_by(|e: &Ev| e.key)
                .window(WindowAssigner::tumbling(10))
                .process(ids_of::<u8>)
                .collect();
            move || out.take()
        })
        .is_empty()
    );
}

#[test]
fn window_all_matches_reference() {
    let input = events(2_000, 9, 31, -5_000, 4, 120);
    for workers in [1, 2, 4] {
        let wm = Watermarks {
            workers,
            delay: 20,
            interval: 100,
        };
        for windows in [
            Windows::tumbling(70),
            Windows::sliding(90, 30),
            Windows::session(6),
        ] {
            let placed = place(&input, wm, |_| (), |e| e.ts, |e| e.id);
            let (contents, _) = window_contents(windows, &placed, 0);
            let expected: Vec<Fired<()>> = contents
                .into_iter()
                .map(|(((), span), mut ids)| {
                    ids.sort_unstable();
                    ((), span, ids)
                })
                .collect();
            let items = input.clone();
            let got = run_job(workers, "window_all", move |env| {
                let out = env
                    .from_iter(items)
                    .assign_timestamps_and_watermarks(strategy(wm))
                    .window_all(windows.assigner())
                    .process(ids_of::<()>)
                    .collect();
                move || out.take()
            });
            assert_same(
                expected,
                got,
                &format!("window_all {windows:?}, {workers} workers"),
            );
        }
    }
}

#[test]
fn a_window_ending_exactly_at_i64_max() {
    // i64::MAX is a multiple of 7, so the tumbling window [MAX − 7, MAX) ends exactly at
    // i64::MAX and holds the largest event time, MAX − 1 (i64::MAX itself is the final
    // watermark's instant, not an event time). After MAX − 1 the watermark is MAX − 2, so
    // MAX − 3 is still on time: both operators put the two records in that one window.
    assert_eq!(i64::MAX % 7, 0);
    let input = [(0, i64::MAX - 1), (1, i64::MAX - 3)].map(|(id, ts)| Ev { key: 1, ts, id });
    let wm = Watermarks {
        workers: 1,
        delay: 0,
        interval: 1,
    };
    let run = move |explicit_trigger: bool| {
        run_job(1, "window ending at i64::MAX", move |env| {
            let late_tag: OutputTag<(u8, Ev)> = OutputTag::new("late");
            let windowed = env
                .from_iter(input)
                .assign_timestamps_and_watermarks(strategy(wm))
                .key_by(|e: &Ev| e.key)
                .window(WindowAssigner::tumbling(7));
            let (late, out) = match explicit_trigger {
                true => {
                    let mut out = windowed
                        .trigger(EventTimeTrigger)
                        .side_output_late_data(&late_tag)
                        .process(ids_of::<u8>);
                    (out.side_output(&late_tag).collect(), out.collect())
                }
                false => {
                    let mut out = windowed
                        .side_output_late_data(&late_tag)
                        .process(ids_of::<u8>);
                    (out.side_output(&late_tag).collect(), out.collect())
                }
            };
            move || {
                let mut out = out.take();
                out.sort();
                let late: Vec<u32> = late.take().into_iter().map(|(_, e)| e.id).collect();
                (out, late)
            }
        })
    };
    let expected = (vec![(1, (i64::MAX - 7, i64::MAX), vec![0, 1])], vec![]);
    assert_eq!(run(false), expected, "sliced operator");
    assert_eq!(run(true), expected, "general operator");
    check_lateness(&input, wm, Windows::tumbling(7), 0);
    check_lateness(&input, wm, Windows::tumbling(70), 0);
}

#[test]
fn the_timestamp_i64_max_is_reserved() {
    let env = sluice::Env::new();
    env.set_workers(1);
    let out = env
        .from_iter([Ev {
            key: 1,
            ts: i64::MAX,
            id: 0,
        }])
        .assign_timestamps_and_watermarks(strategy(Watermarks {
            workers: 1,
            delay: 0,
            interval: 1,
        }))
        .key_by(|e: &Ev| e.key)
        .window(WindowAssigner::tumbling(7))
        .process(ids_of::<u8>)
        .collect();
    let err = env.execute("reserved timestamp").unwrap_err().to_string();
    assert!(err.contains("reserved for the final watermark"), "{err}");
    assert!(out.take().is_empty());
}

/// A custom trigger: fires early on every `n`-th record of a window, and finally when the
/// watermark passes the window's end. Its count is merged when sessions merge.
#[derive(Clone, Copy)]
struct EarlyEveryN {
    n: u64,
}

impl Trigger<Ev> for EarlyEveryN {
    type State = u64;
    fn on_element(
        &mut self,
        _record: &Ev,
        _ts: i64,
        window: &TimeWindow,
        seen: &mut u64,
        ctx: &mut TriggerContext,
    ) -> TriggerResult {
        ctx.register_event_time_timer(window.max_timestamp());
        *seen += 1;
        if *seen % self.n == 0 {
            TriggerResult::Fire
        } else {
            TriggerResult::Continue
        }
    }
    fn on_event_time(
        &mut self,
        time: i64,
        window: &TimeWindow,
        _seen: &mut u64,
        _ctx: &mut TriggerContext,
    ) -> TriggerResult {
        if time == window.max_timestamp() {
            TriggerResult::Fire
        } else {
            TriggerResult::Continue
        }
    }
    fn on_processing_time(
        &mut self,
        _time: i64,
        _window: &TimeWindow,
        _seen: &mut u64,
        _ctx: &mut TriggerContext,
    ) -> TriggerResult {
        TriggerResult::Continue
    }
    fn merge_state(&mut self, into: &mut u64, from: u64) {
        *into += from;
    }
    fn on_merge(&mut self, window: &TimeWindow, _seen: &mut u64, ctx: &mut TriggerContext) {
        ctx.register_event_time_timer(window.max_timestamp());
    }
    fn clear(&mut self, window: &TimeWindow, _seen: &mut u64, ctx: &mut TriggerContext) {
        ctx.delete_event_time_timer(window.max_timestamp());
    }
    fn name(&self) -> String {
        format!("early_every({})", self.n)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(sluice_tests::proptest_cases(16)))]

    /// Early firings are partial results of their window; the last result of each window is
    /// the reference's.
    #[test]
    fn a_custom_trigger_fires_early_and_at_the_end(
        n in 0usize..600,
        keys in 1u8..6,
        seed in any::<u64>(),
        step in 0i64..6,
        back in 0i64..60,
        delay in 0i64..30,
        interval in 1usize..60,
        workers in 1usize..=4,
        windows in windows_strategy(),
        every in 1u64..8,
    ) {
        let input = events(n, keys, seed, -300, step, back);
        let wm = Watermarks { workers, delay, interval };
        let placed = place(&input, wm, |e| e.key, |e| e.ts, |e| e.id);
        let (contents, _) = window_contents(windows, &placed, 0);
        let assigner = windows.assigner();
        let items = input.clone();
        let fired = run_job(workers, "custom trigger", move |env| {
            let out = env
                .from_iter(items)
                .assign_timestamps_and_watermarks(strategy(wm))
                .key_by(|e: &Ev| e.key)
                .window(assigner)
                .trigger(EarlyEveryN { n: every })
                .process(ids_of::<u8>)
                .collect();
            move || out.take()
        });
        let expected: BTreeMap<(u8, Span), Vec<u32>> = contents
            .into_iter()
            .map(|(kw, mut ids)| {
                ids.sort_unstable();
                (kw, ids)
            })
            .collect();
        let session = matches!(windows, Windows::Session { .. });
        for (k, span, ids) in &fired {
            // An early result of a fixed window holds some of its records; of a session, some
            // of the records of the session it ends up in.
            let holder = expected.iter().find(|((k2, (s, e)), _)| {
                k2 == k && if session { s <= &span.0 && e >= &span.1 } else { (*s, *e) == *span }
            });
            let Some((_, all)) = holder else {
                panic!("{windows:?}: a result for no window of the reference: {k} {span:?}");
            };
            prop_assert!(ids.iter().all(|id| all.contains(id)), "{:?} {:?}", span, ids);
        }
        let mut last = last_results(fired);
        if session {
            last = maximal(last);
        }
        assert_same_map(&expected, &last, &format!("{windows:?}, every {every}, {wm:?}"));
    }
}

/// A source whose readers stamp their records with event time and emit watermarks
/// themselves, with no `WatermarkStrategy`: worker `w` of `W` reads the items
/// `[w·n/W, (w+1)·n/W)` in batches of `interval`, each followed by the watermark
/// `max timestamp so far − delay − 1`, as a strategy on a `from_iter` source would.
struct SelfTimedSource {
    items: Arc<Vec<Ev>>,
    delay: i64,
    interval: usize,
}

struct SelfTimedReader {
    items: Arc<Vec<Ev>>,
    next: usize,
    end: usize,
    max: Option<i64>,
    delay: i64,
    interval: usize,
}

impl sluice::Source for SelfTimedSource {
    type Item = Ev;
    type Split = std::ops::Range<usize>;
    type Reader = SelfTimedReader;
    fn name(&self) -> String {
        "self-timed".into()
    }
    fn is_bounded(&self) -> bool {
        true
    }
    fn splits(&self, workers: usize) -> Result<Vec<std::ops::Range<usize>>> {
        let n = self.items.len();
        Ok((0..workers)
            .map(|w| w * n / workers..(w + 1) * n / workers)
            .collect())
    }
    async fn open(
        &self,
        split: std::ops::Range<usize>,
        _start: Option<sluice::ReadPosition>,
        _ctx: &sluice::SourceContext,
    ) -> Result<SelfTimedReader> {
        Ok(SelfTimedReader {
            items: self.items.clone(),
            next: split.start,
            end: split.end,
            max: None,
            delay: self.delay,
            interval: self.interval,
        })
    }
}

impl sluice::SourceReader for SelfTimedReader {
    type Item = Ev;
    async fn read_batch(
        &mut self,
        out: &mut sluice::Batch<Ev>,
        records_max: usize,
    ) -> Result<sluice::ReadStatus> {
        let end = self.end.min(self.next + self.interval.min(records_max));
        for e in &self.items[self.next..end] {
            out.push(*e, e.ts);
            self.max = Some(self.max.map_or(e.ts, |m| m.max(e.ts)));
        }
        self.next = end;
        Ok(match self.next == self.end {
            true => sluice::ReadStatus::End,
            false => sluice::ReadStatus::More,
        })
    }
    fn position(&self) -> sluice::ReadPosition {
        sluice::ReadPosition(self.next as u64)
    }
    fn watermark(&self) -> Option<sluice::Watermark> {
        // After every batch: a whole interval, but for the last batch, after which no record
        // of this reader is judged.
        let max = self.max?;
        Some(sluice::Watermark(max - self.delay - 1))
    }
}

#[test]
fn a_source_that_emits_its_own_watermarks() {
    let input = events(3_000, 5, 41, -1_000, 4, 90);
    for workers in [1, 2, 4] {
        let wm = Watermarks {
            workers,
            delay: 15,
            interval: 40,
        };
        for windows in [
            Windows::tumbling(60),
            Windows::sliding(80, 20),
            Windows::session(7),
        ] {
            let placed = place(&input, wm, |e| e.key, |e| e.ts, |e| e.id);
            let (contents, late) = window_contents(windows, &placed, 0);
            let expected: Vec<Fired<u8>> = contents
                .into_iter()
                .map(|((k, span), mut ids)| {
                    ids.sort_unstable();
                    (k, span, ids)
                })
                .collect();
            let source = SelfTimedSource {
                items: Arc::new(input.clone()),
                delay: wm.delay,
                interval: wm.interval,
            };
            let late_tag: OutputTag<(u8, Ev)> = OutputTag::new("late");
            let (got, got_late) = run_job(workers, "self-timed source", move |env| {
                let mut out = env
                    .from_source(source)
                    .key_by(|e: &Ev| e.key)
                    .window(windows.assigner())
                    .side_output_late_data(&late_tag)
                    .process(ids_of::<u8>);
                let late = out.side_output(&late_tag).collect();
                let out = out.collect();
                move || (out.take(), late.take())
            });
            let what = format!("{windows:?}, {workers} workers");
            assert!(!late.is_empty(), "{what}: the case has late records");
            assert_same(expected, got, &what);
            let got_late = got_late.into_iter().map(|(_, e)| e.id).collect();
            assert_same(late, got_late, &format!("late, {what}"));
        }
    }
}
