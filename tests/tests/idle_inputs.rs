//! Idle inputs through the public API: a stage fed by two sources, one of which goes quiet
//! without ending. With `WatermarkStrategy::with_idleness` on the quiet one, the windows of
//! the other fire while the quiet input is still open (a union, and a window join whose right
//! side went quiet after its records); without it they fire only once the quiet input ends.
//! The quiet input is a [`HeldSource`] released from the sink side when the awaited windows
//! have arrived — a watchdog releases it after 20 s and fails the test — or, in the tests that
//! expect nothing early, 300 ms after the other source handed over its records.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice::{OutputTag, WatermarkStrategy};
use sluice_tests::event_time::{
    Ev, Span, Watermarks, Windows, assert_same, events, max_timestamp, place, window_contents,
    window_join,
};
use sluice_tests::held::{Gate, HeldSource, Received, Until, WatchSink};
use sluice_tests::run_job;

/// How long the quiet input may be silent before it counts as idle.
const IDLENESS_MS: i64 = 100;
/// The watchdog: how long a test waits for windows that should fire while the input is open.
const WATCHDOG: Duration = Duration::from_secs(20);

/// The watermarks of a held source: one split, so one worker's.
fn held_watermarks(delay: i64, interval: usize) -> Watermarks {
    Watermarks {
        workers: 1,
        delay,
        interval,
    }
}

/// The last watermark a held source emits before it waits: after its last full interval.
fn last_watermark(records: &[Ev], wm: Watermarks) -> i64 {
    let full = records.len() / wm.interval * wm.interval;
    records[..full]
        .iter()
        .map(|e| e.ts)
        .max()
        .map_or(i64::MIN, |max| max - wm.delay - 1)
}

/// Releases `gate` 300 ms after `read` is set (the other source handed over its records):
/// for tests that expect nothing to fire while the quiet input is open.
fn release_later(gate: &Arc<Gate>, read: Arc<AtomicBool>) {
    let gate = gate.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        while !read.load(Ordering::SeqCst) && started.elapsed() < WATCHDOG {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        gate.release();
    });
}

/// What arrived before and after the quiet input was released.
fn split<T: Clone>(received: &Received<T>) -> (Vec<T>, Vec<T>) {
    let held = received.lock().unwrap_or_else(|e| e.into_inner());
    let before = held.iter().filter(|(_, r)| !r).map(|(x, _)| x.clone());
    let after = held.iter().filter(|(_, r)| *r).map(|(x, _)| x.clone());
    (before.collect(), after.collect())
}

/// Whether `got` holds every element of `want` (as multisets).
fn holds_all<T: Ord + Clone>(got: &[T], want: &[T]) -> bool {
    let mut counts: BTreeMap<&T, i64> = BTreeMap::new();
    for x in want {
        *counts.entry(x).or_default() += 1;
    }
    for x in got {
        if let Some(n) = counts.get_mut(x) {
            *n -= 1;
        }
    }
    counts.values().all(|&n| n <= 0)
}

/// A window's result: key, window, the ids of its records, sorted.
type Window = (u8, Span, Vec<u32>);

fn ids_of(
    key: &u8,
    window: &sluice::TimeWindow,
    records: &mut dyn Iterator<Item = &Ev>,
    out: &mut Vec<Window>,
) -> sluice::Result<()> {
    let mut ids: Vec<u32> = records.map(|e| e.id).collect();
    ids.sort_unstable();
    out.push((*key, (window.start, window.end), ids));
    Ok(())
}

/// A union of `active` (a source that hands over its records, then stays open until `gate`
/// is released) and `quiet` (one that stays silent until then, emits `later` and ends), keyed,
/// in tumbling windows, without idleness: nothing can fire before the release, which comes
/// 300 ms after `active` handed over its records.
fn run_union_without_idleness(workers: usize, active: Vec<Ev>, later: Vec<Ev>) -> Received<Window> {
    let gate = Gate::new();
    let never: Until<Window> = Arc::new(|_: &[Window]| false);
    let sink = WatchSink::new(gate.clone(), never);
    let received = sink.received();
    let read = Arc::new(AtomicBool::new(false));
    release_later(&gate, read.clone());
    let active = HeldSource::new(active, vec![], gate.clone()).signal_first_read(read);
    let quiet = HeldSource::new(vec![], later, gate.clone());
    run_job(workers, "union with a quiet input", move |env| {
        let a = env
            .from_source(active)
            .assign_timestamps_and_watermarks(strategy(50, None));
        let q = env
            .from_source(quiet)
            .assign_timestamps_and_watermarks(strategy(1, None));
        a.union(q)
            .key_by(|e: &Ev| e.key)
            .window(Windows::tumbling(100).assigner())
            .process(ids_of)
            .sink(sink);
        || ()
    });
    received
}

/// The same union with idleness on the quiet input, in three acts:
/// 1. `active` hands over its records and waits; `quiet` stays silent and turns idle, so the
///    windows that `active`'s watermark passed fire. The window sink releases `quiet` once it
///    has them all (a watchdog gives up after 20 s).
/// 2. `quiet` becomes active again: it emits `later`, then one record per key far behind its
///    own watermark, and ends. The late-record sink releases `active` once it has those.
/// 3. `active` ends: everything fires.
///
/// `active` ends only after `quiet`'s records were judged, so none of them is late because
/// `active`'s final watermark passed while `quiet` was still idle. Returns the windows and
/// the late records, each with whether its sink had released its gate by then, and whether
/// a watchdog had to release a gate.
fn run_union_with_idleness(
    workers: usize,
    active: Vec<Ev>,
    later: Vec<Ev>,
    early: Vec<Window>,
) -> (Received<Window>, Received<(u8, Ev)>, bool) {
    let markers = later_markers();
    let quiet_gate = Gate::new();
    let active_gate = Gate::new();
    let until: Until<Window> = Arc::new(move |got: &[Window]| holds_all(got, &early));
    let windows_sink = WatchSink::new(quiet_gate.clone(), until);
    let windows = windows_sink.received();
    let wanted = markers.len();
    let until: Until<(u8, Ev)> = Arc::new(move |got: &[(u8, Ev)]| got.len() >= wanted);
    let late_sink = WatchSink::new(active_gate.clone(), until);
    let late = late_sink.received();
    let watchdogs = [
        quiet_gate.watchdog(WATCHDOG),
        active_gate.watchdog(2 * WATCHDOG),
    ];
    let active = HeldSource::new(active, vec![], active_gate.clone());
    let quiet_records: Vec<Ev> = later.into_iter().chain(markers).collect();
    let quiet = HeldSource::new(vec![], quiet_records, quiet_gate.clone());
    run_job(workers, "union with an idle input", move |env| {
        let a = env
            .from_source(active)
            .assign_timestamps_and_watermarks(strategy(50, None));
        let q = env
            .from_source(quiet)
            .assign_timestamps_and_watermarks(strategy(1, Some(IDLENESS_MS)));
        let late_tag: OutputTag<(u8, Ev)> = OutputTag::new("late");
        let mut windows = a
            .union(q)
            .key_by(|e: &Ev| e.key)
            .window(Windows::tumbling(100).assigner())
            .side_output_late_data(&late_tag)
            .process(ids_of);
        windows.side_output(&late_tag).sink(late_sink);
        windows.sink(windows_sink);
        || ()
    });
    for watchdog in watchdogs {
        let _ = watchdog.join();
    }
    let by_watchdog = quiet_gate.released_by_watchdog() || active_gate.released_by_watchdog();
    (windows, late, by_watchdog)
}

/// Records of the quiet input far behind its own watermark, one per key of `later`: late
/// whatever the other input does.
fn later_markers() -> Vec<Ev> {
    (0..3)
        .map(|k| Ev {
            key: k,
            ts: 5,
            id: 20_000 + u32::from(k),
        })
        .collect()
}

/// Bounded out-of-orderness of 10 ms, a watermark every `interval` records, and idleness.
fn strategy(
    interval: u32,
    idleness: Option<i64>,
) -> WatermarkStrategy<impl sluice::TimestampAssigner<Ev>, sluice::BoundedOutOfOrderness> {
    let s = WatermarkStrategy::for_bounded_out_of_orderness(10)
        .with_timestamp_assigner(|e: &Ev| e.ts)
        .with_watermark_interval_records(interval);
    match idleness {
        Some(ms) => s.with_idleness(ms),
        None => s,
    }
}

/// The union's input: the active source's records, the quiet one's (ids from 10 000, far in
/// the future), the windows of both, and those that the active source's watermark fires
/// alone.
fn union_case() -> (Vec<Ev>, Vec<Ev>, Vec<Window>, Vec<Window>) {
    let active = events(2_000, 4, 3, 0, 3, 5);
    let later: Vec<Ev> = (0..30)
        .map(|i| Ev {
            key: (i % 3) as u8,
            ts: 1_000_000 + 7 * i64::from(i),
            id: 10_000 + i,
        })
        .collect();
    let wa = held_watermarks(10, 50);
    let wq = held_watermarks(10, 1);
    let mut placed = place(&active, wa, |e| e.key, |e| e.ts, |e| e.id);
    placed.extend(place(&later, wq, |e| e.key, |e| e.ts, |e| e.id));
    let (contents, late) = window_contents(Windows::tumbling(100), &placed, 0);
    assert!(late.is_empty(), "the case has no late records");
    let all: Vec<Window> = contents
        .into_iter()
        .map(|((k, span), mut ids)| {
            ids.sort_unstable();
            (k, span, ids)
        })
        .collect();
    let horizon = last_watermark(&active, wa);
    let early: Vec<Window> = all
        .iter()
        .filter(|(_, (_, end), _)| max_timestamp(*end) <= horizon)
        .cloned()
        .collect();
    assert!(early.len() > 10, "the case has windows to fire early");
    (active, later, all, early)
}

#[test]
fn an_idle_input_does_not_hold_back_the_windows_of_a_union() {
    let (active, later, all, early) = union_case();
    for workers in [1, 3] {
        let (windows, late, by_watchdog) =
            run_union_with_idleness(workers, active.clone(), later.clone(), early.clone());
        let (before, after) = split(&windows);
        assert!(
            !by_watchdog,
            "{workers} workers: the windows did not fire while the quiet input was open (got \
             {} of {} early windows), or its late records never came",
            before.len(),
            early.len()
        );
        // While the quiet input is idle, the watermark is the active input's: exactly the
        // windows it has passed fire.
        assert_same(
            early.clone(),
            before.clone(),
            &format!("{workers} workers, early"),
        );
        let everything: Vec<Window> = before.into_iter().chain(after).collect();
        assert_same(all.clone(), everything, &format!("{workers} workers, all"));
        let late: Vec<(u8, Ev)> = split(&late).0;
        let markers: Vec<(u8, Ev)> = later_markers().into_iter().map(|e| (e.key, e)).collect();
        assert_same(markers, late, &format!("{workers} workers, late"));
    }
}

#[test]
fn without_idleness_a_quiet_input_holds_back_every_window_until_it_ends() {
    let (active, later, all, _) = union_case();
    for workers in [1, 2] {
        let received = run_union_without_idleness(workers, active.clone(), later.clone());
        let (before, after) = split(&received);
        assert!(
            before.is_empty(),
            "{workers} workers: {} windows fired while the quiet input held the watermark, \
             e.g. {:?}",
            before.len(),
            before.first()
        );
        assert_same(all.clone(), after, &format!("{workers} workers"));
    }
}

/// A window join whose left side stays open after its records and whose right side goes
/// quiet (idle or not) after its own.
fn run_join(
    workers: usize,
    left: Vec<Ev>,
    right: Vec<Ev>,
    idle: bool,
    until: Until<(u8, u32, u32, i64)>,
) -> (Received<(u8, u32, u32, i64)>, bool) {
    let gate = Gate::new();
    let sink = WatchSink::new(gate.clone(), until);
    let received = sink.received();
    let read = Arc::new(AtomicBool::new(false));
    let watchdog = if idle {
        Some(gate.watchdog(WATCHDOG))
    } else {
        release_later(&gate, read.clone());
        None
    };
    let left = HeldSource::new(left, vec![], gate.clone()).signal_first_read(read);
    let right = HeldSource::new(right, vec![], gate.clone());
    run_job(workers, "join with a quiet input", move |env| {
        let l = env
            .from_source(left)
            .assign_timestamps_and_watermarks(strategy(50, None));
        let idleness = idle.then_some(IDLENESS_MS);
        let r = env
            .from_source(right)
            .assign_timestamps_and_watermarks(strategy(1_000, idleness));
        l.join(r)
            .where_key(|e: &Ev| e.key)
            .equal_to(|e: &Ev| e.key)
            .window(Windows::tumbling(100).assigner(), |a: &Ev, b: &Ev| {
                (a.key, a.id, b.id)
            })
            .map_with_timestamp(|(k, a, b), ts| (k, a, b, ts))
            .sink(sink);
        || ()
    });
    if let Some(watchdog) = watchdog {
        let _ = watchdog.join();
    }
    (received, gate.released_by_watchdog())
}

#[test]
fn an_idle_side_does_not_hold_back_the_windows_of_a_join() {
    // The right side hands over its records, too few for a watermark, then goes quiet: its
    // watermark stays at the minimum, so only idleness lets the left side's watermark fire
    // the joined windows.
    let left = events(1_500, 3, 9, 0, 3, 5);
    let right: Vec<Ev> = (0..60)
        .map(|i| Ev {
            key: (i % 3) as u8,
            ts: 40 * i64::from(i),
            id: i,
        })
        .collect();
    let (wl, wr) = (held_watermarks(10, 50), held_watermarks(10, 1_000));
    let lp = place(&left, wl, |e| e.key, |e| e.ts, |e| e.id);
    let rp = place(&right, wr, |e| e.key, |e| e.ts, |e| e.id);
    let all = window_join(Windows::tumbling(100), &lp, &rp);
    let horizon = last_watermark(&left, wl);
    let early: Vec<_> = all.iter().filter(|r| r.3 <= horizon).cloned().collect();
    assert!(
        horizon > last_watermark(&right, wr) && !early.is_empty(),
        "the right side's watermark must hold back windows that idleness then fires"
    );
    for workers in [1, 2] {
        let wanted = early.clone();
        let until: Until<(u8, u32, u32, i64)> = Arc::new(move |got| holds_all(got, &wanted));
        let (received, by_watchdog) = run_join(workers, left.clone(), right.clone(), true, until);
        let (before, after) = split(&received);
        assert!(
            !by_watchdog,
            "{workers} workers: joined windows did not fire while the right side was open"
        );
        assert_same(
            early.clone(),
            before.clone(),
            &format!("{workers} workers, early"),
        );
        let everything = before.into_iter().chain(after).collect();
        assert_same(all.clone(), everything, &format!("{workers} workers, all"));
    }
    // Without idleness, nothing fires before the right side ends.
    let never: Until<(u8, u32, u32, i64)> = Arc::new(|_: &[(u8, u32, u32, i64)]| false);
    let (received, _) = run_join(2, left, right, false, never);
    let (before, after) = split(&received);
    assert!(
        before.is_empty(),
        "{} joined rows fired early",
        before.len()
    );
    assert_same(all, after, "without idleness");
}
