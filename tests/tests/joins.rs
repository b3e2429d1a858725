//! Joins through the public API on real multi-worker runs, against the brute-force references
//! of `sluice_tests::event_time`: window joins over tumbling, sliding and session windows and
//! interval joins on random streams with random disorder (beyond the out-of-orderness bound
//! too), worker counts and watermark intervals on each side; bounded inner and outer joins
//! with duplicate keys, keys on one side only and empty inputs; and the edge cases — one
//! record per key, a record that bridges two sessions of the other side, timestamps near the
//! `i64` limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sluice::{Env, JoinType, WatermarkStrategy};
use sluice_tests::event_time::{
    Ev, Watermarks, Windows, assert_same, bounded_join, events, interval_join, place, window_join,
};
use sluice_tests::held::{Gate, HeldSource};
use sluice_tests::run_job;

/// A join's output row: key, left id, right id, event time.
type Row = (u8, u32, u32, i64);

/// Bounded out-of-orderness `wm.delay`, a watermark every `wm.interval` records.
fn strategy(
    wm: Watermarks,
) -> WatermarkStrategy<impl sluice::TimestampAssigner<Ev>, sluice::BoundedOutOfOrderness> {
    WatermarkStrategy::for_bounded_out_of_orderness(wm.delay)
        .with_timestamp_assigner(|e: &Ev| e.ts)
        .with_watermark_interval_records(wm.interval as u32)
}

fn sources(
    env: &Env,
    left: Vec<Ev>,
    right: Vec<Ev>,
    wl: Watermarks,
    wr: Watermarks,
) -> sluice::JoinedStreams<u8, Ev, Ev> {
    let left = env
        .from_iter(left)
        .assign_timestamps_and_watermarks(strategy(wl));
    let right = env
        .from_iter(right)
        .assign_timestamps_and_watermarks(strategy(wr));
    left.join(right)
        .where_key(|e: &Ev| e.key)
        .equal_to(|e: &Ev| e.key)
}

fn run_window_join(
    left: &[Ev],
    right: &[Ev],
    windows: Windows,
    wl: Watermarks,
    wr: Watermarks,
) -> Vec<Row> {
    assert_eq!(wl.workers, wr.workers);
    let (l, r) = (left.to_vec(), right.to_vec());
    run_job(wl.workers, "window join", move |env| {
        let out = sources(env, l, r, wl, wr)
            .window(windows.assigner(), |a: &Ev, b: &Ev| (a.key, a.id, b.id))
            .map_with_timestamp(|(k, a, b), ts| (k, a, b, ts))
            .collect();
        move || out.take()
    })
}

fn check_window_join(left: &[Ev], right: &[Ev], windows: Windows, wl: Watermarks, wr: Watermarks) {
    let lp = place(left, wl, |e| e.key, |e| e.ts, |e| e.id);
    let rp = place(right, wr, |e| e.key, |e| e.ts, |e| e.id);
    let expected = window_join(windows, &lp, &rp);
    let got = run_window_join(left, right, windows, wl, wr);
    assert_same(
        expected,
        got,
        &format!("window join {windows:?} {wl:?} {wr:?}"),
    );
}

fn run_interval_join(
    left: &[Ev],
    right: &[Ev],
    lower: i64,
    upper: i64,
    wl: Watermarks,
    wr: Watermarks,
) -> Vec<Row> {
    let (l, r) = (left.to_vec(), right.to_vec());
    run_job(wl.workers, "interval join", move |env| {
        let out = sources(env, l, r, wl, wr)
            .interval(lower, upper, |a: &Ev, b: &Ev| (a.key, a.id, b.id))
            .unwrap_or_else(|e| panic!("interval [{lower}, {upper}]: {e}"))
            .map_with_timestamp(|(k, a, b), ts| (k, a, b, ts))
            .collect();
        move || out.take()
    })
}

fn check_interval_join(
    left: &[Ev],
    right: &[Ev],
    lower: i64,
    upper: i64,
    wl: Watermarks,
    wr: Watermarks,
) {
    let lp = place(left, wl, |e| e.key, |e| e.ts, |e| e.id);
    let rp = place(right, wr, |e| e.key, |e| e.ts, |e| e.id);
    let expected = interval_join(lower, upper, &lp, &rp);
    let got = run_interval_join(left, right, lower, upper, wl, wr);
    assert_same(
        expected,
        got,
        &format!("interval join [{lower}, {upper}] {wl:?} {wr:?}"),
    );
}

fn windows_strategy() -> impl Strategy<Value = Windows> {
    prop_oneof![
        (1i64..60, -10i64..10).prop_map(|(size, offset)| Windows::Fixed {
            size,
            slide: size,
            offset
        }),
        (1i64..40, 1i64..40, -10i64..10).prop_map(|(a, b, offset)| Windows::Fixed {
            size: a.max(b),
            slide: a.min(b),
            offset
        }),
        (1i64..40).prop_map(Windows::session),
    ]
}

/// One side's stream: length, keys, seed, step, disorder, out-of-orderness, interval.
fn side() -> impl Strategy<Value = (usize, u64, i64, i64, i64, usize)> {
    (
        0usize..160,
        any::<u64>(),
        0i64..12,
        0i64..80,
        0i64..30,
        1usize..40,
    )
}

fn ms(e: &[Ev], w: usize, delay: i64, interval: usize) -> (Vec<Ev>, Watermarks) {
    (
        e.to_vec(),
        Watermarks {
            workers: w,
            delay,
            interval,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(sluice_tests::proptest_cases(16)))]

    #[test]
    fn window_join_matches_reference_on_random_streams(
        (nl, seed_l, step_l, back_l, delay_l, interval_l) in side(),
        (nr, seed_r, step_r, back_r, delay_r, interval_r) in side(),
        keys in 1u8..6,
        base in -10_000i64..10_000,
        workers in 1usize..=4,
        windows in windows_strategy(),
    ) {
        let (left, wl) = ms(
            &events(nl, keys, seed_l, base, step_l, back_l), workers, delay_l, interval_l,
        );
        let (right, wr) = ms(
            &events(nr, keys, seed_r, base, step_r, back_r), workers, delay_r, interval_r,
        );
        check_window_join(&left, &right, windows, wl, wr);
    }

    #[test]
    fn interval_join_matches_reference_on_random_streams(
        (nl, seed_l, step_l, back_l, delay_l, interval_l) in side(),
        (nr, seed_r, step_r, back_r, delay_r, interval_r) in side(),
        keys in 1u8..6,
        base in -10_000i64..10_000,
        workers in 1usize..=4,
        lower in -40i64..40,
        width in prop_oneof![Just(0i64), 0i64..50],
    ) {
        let (left, wl) = ms(
            &events(nl, keys, seed_l, base, step_l, back_l), workers, delay_l, interval_l,
        );
        let (right, wr) = ms(
            &events(nr, keys, seed_r, base, step_r, back_r), workers, delay_r, interval_r,
        );
        check_interval_join(&left, &right, lower, lower + width, wl, wr);
    }

    #[test]
    fn bounded_joins_match_reference_with_duplicate_and_one_sided_keys(
        left in proptest::collection::vec(0u8..8, 0..40),
        right in proptest::collection::vec(4u8..12, 0..40),
        workers in 1usize..=4,
    ) {
        for join_type in
            [JoinType::Inner, JoinType::LeftOuter, JoinType::RightOuter, JoinType::FullOuter]
        {
            check_bounded_join(&left, &right, join_type, workers);
        }
    }
}

fn check_bounded_join(left: &[u8], right: &[u8], join_type: JoinType, workers: usize) {
    // Records are (key, id); ids number each side's records.
    let l: Vec<(u8, u32)> = left
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, i as u32))
        .collect();
    let r: Vec<(u8, u32)> = right
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, i as u32))
        .collect();
    let expected: Vec<(u8, Option<u32>, Option<u32>)> = bounded_join(join_type, &l, &r);
    let got = run_job(workers, "bounded join", move |env| {
        let out = env
            .from_iter(l)
            .join(env.from_iter(r))
            .where_key(|a: &(u8, u32)| a.0)
            .equal_to(|b: &(u8, u32)| b.0)
            .bounded(join_type, |k, a, b| (*k, a.map(|a| a.1), b.map(|b| b.1)))
            .collect();
        move || out.take()
    });
    assert_same(
        expected,
        got,
        &format!("{join_type:?} on {workers} workers"),
    );
}

#[test]
fn bounded_joins_of_empty_inputs() {
    for join_type in [
        JoinType::Inner,
        JoinType::LeftOuter,
        JoinType::RightOuter,
        JoinType::FullOuter,
    ] {
        for workers in [1, 3] {
            check_bounded_join(&[], &[], join_type, workers);
            check_bounded_join(&[1, 1, 2], &[], join_type, workers);
            check_bounded_join(&[], &[5, 6, 6], join_type, workers);
        }
    }
    // A full outer join with an empty side is the other side, unmatched.
    let got = run_job(2, "bounded join", |env| {
        let out = env
            .from_iter(vec![(1u8, 'a'), (1, 'b')])
            .join(env.from_iter(Vec::<(u8, char)>::new()))
            .where_key(|a: &(u8, char)| a.0)
            .equal_to(|b: &(u8, char)| b.0)
            .bounded(JoinType::FullOuter, |k, a, b| {
                (*k, a.map(|a| a.1), b.map(|b| b.1))
            })
            .collect();
        move || out.take()
    });
    assert_same(
        vec![(1, Some('a'), None), (1, Some('b'), None)],
        got,
        "full outer",
    );
}

fn ev(key: u8, ts: i64, id: u32) -> Ev {
    Ev { key, ts, id }
}

fn wm(workers: usize, delay: i64, interval: usize) -> Watermarks {
    Watermarks {
        workers,
        delay,
        interval,
    }
}

#[test]
fn window_join_with_an_empty_side_or_one_record_per_key() {
    let left = vec![ev(1, 5, 0), ev(2, 17, 1), ev(3, -3, 2), ev(4, 1_000_000, 3)];
    let right = vec![ev(1, 9, 0), ev(2, 21, 1), ev(5, -3, 2), ev(4, 1_000_011, 3)];
    for windows in [
        Windows::tumbling(10),
        Windows::sliding(10, 5),
        Windows::session(5),
    ] {
        for workers in [1, 3] {
            let w = wm(workers, 0, 1);
            check_window_join(&left, &right, windows, w, w);
            check_window_join(&left, &[], windows, w, w);
            check_window_join(&[], &right, windows, w, w);
            assert!(run_window_join(&[], &right, windows, w, w).is_empty());
        }
    }
    // Tumbling windows of 10: only key 1 meets, in [0, 10); keys 2 (17 and 21) and 4
    // (1_000_000 and 1_000_011) fall into neighbouring windows.
    let got = run_window_join(
        &left,
        &right,
        Windows::tumbling(10),
        wm(2, 0, 1),
        wm(2, 0, 1),
    );
    assert_eq!(got, vec![(1, 0, 0, 9)]);
}

#[test]
fn a_record_of_one_side_bridges_two_sessions_of_the_other() {
    // Gap 10. Left at 0 and 13 are two sessions; a right record at 6, late but within the
    // bound, bridges them into [0, 23): it pairs with both. A right record at 40 is alone.
    let left = vec![ev(1, 0, 0), ev(1, 13, 1)];
    let right = vec![ev(1, 6, 0), ev(1, 40, 1)];
    for workers in [1, 2] {
        let w = wm(workers, 100, 1);
        let mut got = run_window_join(&left, &right, Windows::session(10), w, w);
        got.sort();
        assert_eq!(got, vec![(1, 0, 0, 22), (1, 1, 0, 22)]);
        check_window_join(&left, &right, Windows::session(10), w, w);
    }
    // Gap 5: left sessions [0, 5) and [13, 18). A right record at 4 joins the first; one at 5
    // only touches it: sessions merge when they overlap, not when they touch.
    let w = wm(1, 100, 1);
    let got = run_window_join(&left, &[ev(1, 4, 0)], Windows::session(5), w, w);
    assert_eq!(got, vec![(1, 0, 0, 8)]);
    let got = run_window_join(&left, &[ev(1, 5, 0)], Windows::session(5), w, w);
    assert_eq!(got, vec![]);
}

/// Events of one key near `i64::MIN` and `i64::MAX` (event times lie strictly between them).
fn near_the_limits(offsets: &[i64], id: u32) -> Vec<Ev> {
    let mut out = Vec::new();
    for (i, &o) in offsets.iter().enumerate() {
        let key = i as u8 % 2;
        out.push(ev(key, i64::MIN + 1 + o, id + 2 * i as u32));
        out.push(ev(key, i64::MAX - 1 - o, id + 2 * i as u32 + 1));
    }
    out
}

#[test]
fn window_join_near_the_i64_limits() {
    let left = near_the_limits(&[0, 3, 700], 0);
    let right = near_the_limits(&[1, 5, 900, 2_000], 100);
    for windows in [
        Windows::tumbling(1_000),
        Windows::sliding(1_000, 250),
        Windows::session(1_000),
    ] {
        for workers in [1, 2] {
            let w = wm(workers, 0, 1);
            check_window_join(&left, &right, windows, w, w);
        }
    }
    // The window reaching past i64::MAX shows end = i64::MAX and fires with the final
    // watermark.
    let got = run_window_join(
        &[ev(0, i64::MAX - 1, 1)],
        &[ev(0, i64::MAX - 3, 2)],
        Windows::tumbling(1_000),
        wm(1, 0, 1),
        wm(1, 0, 1),
    );
    assert_eq!(got, vec![(0, 1, 2, i64::MAX - 1)]);
}

#[test]
fn interval_join_with_equal_and_negative_bounds() {
    let left = events(300, 3, 11, -500, 4, 40);
    let right = events(300, 3, 12, -500, 4, 40);
    for (lower, upper) in [(0, 0), (-7, -7), (-20, -5), (3, 30), (-10, 10)] {
        for workers in [1, 2, 4] {
            check_interval_join(
                &left,
                &right,
                lower,
                upper,
                wm(workers, 10, 7),
                wm(workers, 3, 13),
            );
        }
    }
}

#[test]
fn interval_join_bounds_in_the_wrong_order_are_an_error() {
    let env = Env::new();
    let joined = sources(&env, vec![], vec![], wm(1, 0, 1), wm(1, 0, 1));
    let err = joined.interval(5, 4, |a: &Ev, b: &Ev| (a.id, b.id)).err();
    assert!(
        err.as_ref()
            .is_some_and(|e| e.to_string().contains("lower bound 5")),
        "{err:?}"
    );
}

/// Runs the interval join with `early` on one side and `late` on the other, whose records
/// enter the job only once `early`'s have been read (and 100 ms more): which of a key's two
/// records arrives first decides which side's buffer is searched for partners.
fn run_interval_join_in_order(
    early: Vec<Ev>,
    late: Vec<Ev>,
    early_is_left: bool,
    lower: i64,
    upper: i64,
) -> Vec<Row> {
    run_job(1, "interval join", move |env| {
        let open = Gate::new();
        open.release();
        let held = Gate::new();
        let read = Arc::new(AtomicBool::new(false));
        let early = HeldSource::new(early, vec![], open).signal_first_read(read.clone());
        let late = HeldSource::new(vec![], late, held.clone());
        let releaser = held.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !read.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(100));
            releaser.release();
        });
        let (left, right) = match early_is_left {
            true => (early, late),
            false => (late, early),
        };
        let w = wm(1, 0, 1);
        let out = env
            .from_source(left)
            .assign_timestamps_and_watermarks(strategy(w))
            .join(
                env.from_source(right)
                    .assign_timestamps_and_watermarks(strategy(w)),
            )
            .where_key(|e: &Ev| e.key)
            .equal_to(|e: &Ev| e.key)
            .interval(lower, upper, |a: &Ev, b: &Ev| (a.key, a.id, b.id))
            .unwrap_or_else(|e| panic!("interval [{lower}, {upper}]: {e}"))
            .map_with_timestamp(|(k, a, b), ts| (k, a, b, ts))
            .collect();
        move || out.take()
    })
}

#[test]
fn interval_join_near_the_i64_limits() {
    // Key 1: right.ts − left.ts = 5; key 2: −5. Near i64::MAX, `ts + bound` overflows: the
    // range of partners must not be clamped onto i64::MAX, pairing records that are not
    // within the bounds, whichever side's record comes first.
    let left = vec![ev(1, i64::MAX - 6, 0), ev(2, i64::MAX - 1, 1)];
    let right = vec![ev(1, i64::MAX - 1, 0), ev(2, i64::MAX - 6, 1)];
    let w = wm(1, 0, 1);
    let lp = place(&left, w, |e| e.key, |e| e.ts, |e| e.id);
    let rp = place(&right, w, |e| e.key, |e| e.ts, |e| e.id);
    for (lower, upper) in [(10, 20), (-20, -10), (5, 5), (-5, -5)] {
        let expected = interval_join(lower, upper, &lp, &rp);
        for left_first in [true, false] {
            let got = match left_first {
                true => run_interval_join_in_order(left.clone(), right.clone(), true, lower, upper),
                false => {
                    run_interval_join_in_order(right.clone(), left.clone(), false, lower, upper)
                }
            };
            let what = format!("[{lower}, {upper}], left records first: {left_first}");
            assert_same(expected.clone(), got, &what);
        }
    }
    for workers in [1, 2] {
        let w = wm(workers, 0, 1);
        for (lower, upper) in [(10, 20), (-20, -10), (0, 5), (-5, 0)] {
            check_interval_join(&left, &right, lower, upper, w, w);
        }
    }
    // And near i64::MIN (i64::MIN itself is "no timestamp").
    let left = vec![ev(1, i64::MIN + 6, 0), ev(2, i64::MIN + 1, 1)];
    let right = vec![ev(1, i64::MIN + 1, 0), ev(2, i64::MIN + 6, 1)];
    for (lower, upper) in [(10, 20), (-20, -10), (-5, 0), (0, 5), (i64::MIN, i64::MAX)] {
        check_interval_join(&left, &right, lower, upper, wm(1, 0, 1), wm(1, 0, 1));
    }
    let left = near_the_limits(&[0, 3, 700], 0);
    let right = near_the_limits(&[1, 5, 900, 2_000], 100);
    for (lower, upper) in [(-1_000, 1_000), (0, 0), (i64::MIN, i64::MAX), (-3, 2)] {
        check_interval_join(&left, &right, lower, upper, wm(2, 0, 1), wm(2, 0, 1));
    }
}

#[test]
fn a_key_that_appears_only_after_a_long_quiet_stretch() {
    // Keys 0 to 2 for a while, then nothing for 50 000 s of event time, then only key 9, on
    // both sides: a jump of the watermark past every window of the old keys at once.
    let mut left = events(800, 3, 51, 0, 3, 20);
    let mut right = events(800, 3, 52, 0, 3, 20);
    for i in 0..200u32 {
        let t = 50_000_000 + i64::from(i);
        left.push(ev(9, t * 2 - 50_000_000, 800 + i));
        right.push(ev(9, t * 3 - 100_000_000, 800 + i));
    }
    for workers in [1, 2, 3] {
        let (wl, wr) = (wm(workers, 10, 64), wm(workers, 25, 9));
        for windows in [
            Windows::tumbling(100),
            Windows::sliding(100, 25),
            Windows::session(10),
        ] {
            check_window_join(&left, &right, windows, wl, wr);
        }
        check_interval_join(&left, &right, -5, 5, wl, wr);
    }
}
