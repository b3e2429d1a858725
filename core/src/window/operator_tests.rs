//! Window operators against brute-force references, on random streams.
//!
//! Each test builds several input *channels*, each a stream of records whose watermarks come
//! from a bounded-out-of-orderness generator, then feeds them to the operator in a random
//! interleaving, tracking the combined watermark as a gate stage does. The reference computes
//! the result from each record's own channel watermark alone — no interleaving — so passing
//! for every interleaving shows that results do not depend on timing.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::element::StreamElement;
use crate::exchange::WatermarkTracker;
use crate::keyed::AggregateFunction;
use crate::testkit::{Harness, context_capturing};
use crate::window::{
    AggregateWindow, Combined, CountTrigger, DefaultTrigger, PurgingTrigger, TimeWindow,
    WindowAssigner, WindowCombiner, WindowOperator, WindowOutput,
};
use crate::{Watermark, element::Timestamp};

/// `(count, sum)` of the values.
#[derive(Clone)]
struct CountSum;

impl AggregateFunction<i64> for CountSum {
    type Acc = (u64, i64);
    type Out = (u64, i64);
    fn create_accumulator(&self) -> (u64, i64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, i64), v: i64) {
        acc.0 += 1;
        acc.1 = acc.1.wrapping_add(v);
    }
    fn merge(&self, acc: &mut (u64, i64), other: (u64, i64)) {
        acc.0 += other.0;
        acc.1 = acc.1.wrapping_add(other.1);
    }
    fn get_result(&self, acc: &(u64, i64)) -> (u64, i64) {
        *acc
    }
}

/// One record as it travels: key, value, timestamp, and the watermark of its channel before
/// it.
#[derive(Clone, Debug)]
struct Rec {
    key: u8,
    value: i64,
    ts: Timestamp,
    horizon: i64,
}

/// An element of a channel.
#[derive(Clone, Debug)]
enum Elem {
    Rec(Rec),
    Watermark(i64),
}

/// What reaches the window operator: a record or a combiner's partial accumulator.
type Msg = (u8, Combined<i64, (u64, i64)>);

/// An element of a channel as the window operator receives it.
#[derive(Clone, Debug)]
enum Wire {
    Msg(Msg, Timestamp),
    Watermark(i64),
}

/// The channel as it leaves its stage: through a [`WindowCombiner`] when `combine`.
fn wire(assigner: WindowAssigner, channel: &[Elem], combine: bool) -> Vec<Wire> {
    if !combine {
        return channel
            .iter()
            .map(|e| match e {
                Elem::Rec(r) => Wire::Msg((r.key, Combined::Raw(r.value)), r.ts),
                Elem::Watermark(w) => Wire::Watermark(*w),
            })
            .collect();
    }
    let combiner = WindowCombiner::new(&assigner, AggregateWindow::new(CountSum), true);
    let mut h = Harness::new(combiner);
    let mut out = Vec::new();
    let take = |h: &mut Harness<(u8, i64), _>, out: &mut Vec<Wire>| {
        for e in h.take_elements() {
            match e {
                StreamElement::Records(mut b) => {
                    let _ = b.drain_each(|m, ts| {
                        out.push(Wire::Msg(m, ts));
                        Ok::<(), ()>(())
                    });
                }
                StreamElement::Watermark(w) => out.push(Wire::Watermark(w.0)),
                _ => {}
            }
        }
    };
    for e in channel {
        match e {
            Elem::Rec(r) => h.record((r.key, r.value), r.ts).unwrap(),
            Elem::Watermark(w) => h.watermark(*w).unwrap(),
        }
        take(&mut h, &mut out);
    }
    // The end of the input: what the combiner still holds goes before the final watermark.
    h.end().unwrap();
    take(&mut h, &mut out);
    out.retain(|e| !matches!(e, Wire::Watermark(i64::MAX)));
    out
}

/// Builds a channel from timestamps, with watermarks `max − delay − 1` every `interval`
/// records, and each record's horizon.
fn channel(records: &[(u8, i64, Timestamp)], delay: i64, interval: usize) -> Vec<Elem> {
    let mut out = Vec::new();
    let (mut max, mut wm) = (i64::MIN, i64::MIN);
    for (i, &(key, value, ts)) in records.iter().enumerate() {
        out.push(Elem::Rec(Rec {
            key,
            value,
            ts,
            horizon: wm,
        }));
        max = max.max(ts);
        if (i + 1) % interval == 0 {
            let w = max.saturating_sub(delay).saturating_sub(1);
            if w > wm {
                wm = w;
                out.push(Elem::Watermark(w));
            }
        }
    }
    out
}

type Output = WindowOutput<u8, (u64, i64)>;
/// Final `(count, sum)` per key and window.
type Windows = BTreeMap<(u8, TimeWindow), (u64, i64)>;
/// Channels of `(key, value, timestamp)`, the out-of-orderness bound, the watermark interval.
type Channels = (Vec<Vec<(u8, i64, i64)>>, i64, usize);

/// Runs the operator over the channels in the interleaving `picks`; returns its outputs in
/// order and the late records it sent to the side output.
fn run_operator(
    assigner: WindowAssigner,
    lateness: i64,
    channels: &[Vec<Elem>],
    picks: &[usize],
    count_trigger: Option<u64>,
) -> (Vec<Output>, Vec<(u8, i64)>) {
    run_operator_wired(assigner, lateness, channels, picks, count_trigger, false)
}

fn run_operator_wired(
    assigner: WindowAssigner,
    lateness: i64,
    channels: &[Vec<Elem>],
    picks: &[usize],
    count_trigger: Option<u64>,
    combine: bool,
) -> (Vec<Output>, Vec<(u8, i64)>) {
    let channels: Vec<Vec<Wire>> = channels
        .iter()
        .map(|c| wire(assigner, c, combine && count_trigger.is_none()))
        .collect();
    let late_tag = 77;
    let (ctx, late) = context_capturing::<(u8, i64)>(late_tag);
    let function = AggregateWindow::new(CountSum);
    let mut outputs = Vec::new();
    macro_rules! drive {
        ($op:expr) => {{
            let mut h = Harness::with_context($op, ctx.clone());
            let mut tracker = WatermarkTracker::new(channels.len());
            let mut pos = vec![0usize; channels.len()];
            let mut order: Vec<usize> = picks.iter().map(|p| p % channels.len()).collect();
            for c in 0..channels.len() {
                order.extend(std::iter::repeat_n(c, channels[c].len()));
            }
            for c in order {
                let Some(e) = channels[c].get(pos[c]) else {
                    continue;
                };
                pos[c] += 1;
                match e {
                    Wire::Msg(m, ts) => {
                        let h_in = tracker.lateness_watermark(c).0;
                        h.record_on(m.clone(), *ts, h_in).unwrap();
                    }
                    Wire::Watermark(w) => {
                        if let Some(w) = tracker.update(c, Watermark(*w)) {
                            h.watermark(w.0).unwrap();
                        }
                    }
                }
            }
            h.end().unwrap();
            outputs.extend(h.take_records());
        }};
    }
    match count_trigger {
        None => drive!(WindowOperator::<_, _, u8, i64>::new(
            assigner,
            function,
            DefaultTrigger::of(&assigner),
            true,
            lateness,
            Some(late_tag),
        )),
        Some(n) => drive!(WindowOperator::<_, _, u8, i64>::new(
            assigner,
            function,
            PurgingTrigger::of(CountTrigger::of(n)),
            false,
            lateness,
            Some(late_tag),
        )),
    }
    let late = late.borrow().records.iter().map(|(r, _)| *r).collect();
    (outputs, late)
}

/// The reference for tumbling and sliding windows: every record counts in the windows that
/// are still open for it by its own channel's watermark.
fn reference_fixed(
    assigner: WindowAssigner,
    lateness: i64,
    channels: &[Vec<Elem>],
) -> (Windows, Vec<(u8, i64)>) {
    let mut windows = BTreeMap::new();
    let mut late = Vec::new();
    for r in channels.iter().flatten().filter_map(|e| match e {
        Elem::Rec(r) => Some(r),
        Elem::Watermark(_) => None,
    }) {
        let mut assigned = Vec::new();
        assigner.assign(r.ts, &mut assigned);
        let open: Vec<_> = assigned
            .into_iter()
            .filter(|w| w.max_timestamp().saturating_add(lateness) > r.horizon)
            .collect();
        if open.is_empty() {
            late.push((r.key, r.value));
        }
        for w in open {
            let acc = windows.entry((r.key, w)).or_insert((0u64, 0i64));
            acc.0 += 1;
            acc.1 = acc.1.wrapping_add(r.value);
        }
    }
    late.sort();
    (windows, late)
}

/// The reference for session windows: per key, the records not behind their channel's
/// watermark (minus lateness), merged offline wherever `[ts, ts + gap)` windows overlap.
fn reference_sessions(
    gap: i64,
    lateness: i64,
    channels: &[Vec<Elem>],
) -> (Windows, Vec<(u8, i64)>) {
    let mut per_key: BTreeMap<u8, Vec<(i64, i64)>> = BTreeMap::new();
    let mut late = Vec::new();
    for e in channels.iter().flatten() {
        if let Elem::Rec(r) = e {
            if r.ts.saturating_add(lateness) <= r.horizon {
                late.push((r.key, r.value));
            } else {
                per_key.entry(r.key).or_default().push((r.ts, r.value));
            }
        }
    }
    let mut sessions = BTreeMap::new();
    for (key, mut recs) in per_key {
        recs.sort();
        let mut current: Option<(TimeWindow, (u64, i64))> = None;
        for (ts, v) in recs {
            let end = ts.saturating_add(gap);
            current = match current {
                Some((w, acc)) if ts < w.end => Some((
                    TimeWindow::new(w.start, w.end.max(end)),
                    (acc.0 + 1, acc.1.wrapping_add(v)),
                )),
                Some((w, acc)) => {
                    sessions.insert((key, w), acc);
                    Some((TimeWindow::new(ts, end), (1, v)))
                }
                None => Some((TimeWindow::new(ts, end), (1, v))),
            };
        }
        if let Some((w, acc)) = current {
            sessions.insert((key, w), acc);
        }
    }
    late.sort();
    (sessions, late)
}

/// The final value of every window the operator emitted; with `exactly_once`, also checks
/// that each window was emitted once.
fn finals(outputs: &[Output], exactly_once: bool) -> Windows {
    let mut map = BTreeMap::new();
    for o in outputs {
        let previous = map.insert((o.key, o.window), o.value);
        assert!(
            !exactly_once || previous.is_none(),
            "window emitted twice: {o:?}"
        );
    }
    map
}

/// Drops session emissions superseded by a later, larger session of the same key (updates
/// after late records within the allowed lateness).
fn maximal(map: Windows) -> Windows {
    let all: Vec<_> = map.keys().copied().collect();
    map.into_iter()
        .filter(|((k, w), _)| {
            !all.iter()
                .any(|(k2, w2)| k2 == k && w2 != w && w2.start <= w.start && w2.end >= w.end)
        })
        .collect()
}

fn sorted(mut v: Vec<(u8, i64)>) -> Vec<(u8, i64)> {
    v.sort();
    v
}

/// Random channels: per record a key, a value, and a timestamp that advances by up to
/// `step` and jumps back by up to `disorder`.
fn channels_strategy() -> impl Strategy<Value = Channels> {
    let record = (0u8..4, -5i64..50, 0i64..6, 0i64..40, any::<bool>());
    let chan = proptest::collection::vec(record, 0..60);
    (
        proptest::collection::vec(chan, 1..4),
        -200i64..200,
        0i64..15,
        1usize..8,
    )
        .prop_map(|(chans, base, delay, interval)| {
            let chans = chans
                .into_iter()
                .map(|recs| {
                    let mut t = base;
                    recs.into_iter()
                        .map(|(k, v, step, back, disorder)| {
                            t += step;
                            (k, v, if disorder { t - back } else { t })
                        })
                        .collect()
                })
                .collect();
            (chans, delay, interval)
        })
}

fn fixed_assigner() -> impl Strategy<Value = WindowAssigner> {
    prop_oneof![
        (1i64..30).prop_map(WindowAssigner::tumbling),
        (1i64..30, 1i64..30).prop_map(|(a, b)| WindowAssigner::sliding(a.max(b), a.min(b))),
        (1i64..20, 1i64..5, -7i64..7)
            .prop_map(|(s, k, o)| WindowAssigner::sliding(s * k, s).with_offset(o)),
    ]
}

/// Cases per property: 300, or `SLUICE_PROPTEST_CASES` (the extended tier runs more).
fn cases() -> u32 {
    std::env::var("SLUICE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn tumbling_and_sliding_match_the_reference(
        (chans, delay, interval) in channels_strategy(),
        assigner in fixed_assigner(),
        lateness in prop_oneof![Just(0i64), 0i64..20],
        picks in proptest::collection::vec(0usize..4, 0..300),
    ) {
        let channels: Vec<_> = chans.iter().map(|c| channel(c, delay, interval)).collect();
        let (outputs, late) = run_operator(assigner, lateness, &channels, &picks, None);
        let (expected, expected_late) = reference_fixed(assigner, lateness, &channels);
        prop_assert_eq!(finals(&outputs, lateness == 0), expected.clone());
        prop_assert_eq!(sorted(late), expected_late.clone());
        // The same with each channel pre-aggregated by a combiner before the exchange.
        let (outputs, late) =
            run_operator_wired(assigner, lateness, &channels, &picks, None, true);
        prop_assert_eq!(finals(&outputs, lateness == 0), expected);
        prop_assert_eq!(sorted(late), expected_late);
    }

    #[test]
    fn sessions_match_the_reference(
        (chans, delay, interval) in channels_strategy(),
        gap in 1i64..25,
        lateness in prop_oneof![Just(0i64), 0i64..20],
        picks in proptest::collection::vec(0usize..4, 0..300),
    ) {
        let channels: Vec<_> = chans.iter().map(|c| channel(c, delay, interval)).collect();
        let assigner = WindowAssigner::session(gap);
        let (outputs, late) = run_operator(assigner, lateness, &channels, &picks, None);
        let (expected, expected_late) = reference_sessions(gap, lateness, &channels);
        prop_assert_eq!(maximal(finals(&outputs, lateness == 0)), expected.clone());
        prop_assert_eq!(sorted(late), expected_late.clone());
        // The same with each channel's local sessions merged by a combiner first.
        let (outputs, late) =
            run_operator_wired(assigner, lateness, &channels, &picks, None, true);
        prop_assert_eq!(maximal(finals(&outputs, lateness == 0)), expected);
        prop_assert_eq!(sorted(late), expected_late);
    }

    /// The general operator (taken with any trigger other than the default) under the default
    /// trigger's rules gives the same windows as the fast paths.
    #[test]
    fn purging_count_trigger_partitions_each_window(
        (chans, delay, interval) in channels_strategy(),
        assigner in prop_oneof![fixed_assigner(), (1i64..25).prop_map(WindowAssigner::session)],
        n in 1u64..5,
        picks in proptest::collection::vec(0usize..4, 0..300),
    ) {
        // With a purging count trigger every window emits one result per n records, and the
        // records still there at the end are dropped: the emitted counts are multiples of n
        // and their sums per window never exceed the window's records.
        let channels: Vec<_> = chans.iter().map(|c| channel(c, delay, interval)).collect();
        let (outputs, _) = run_operator(assigner, 0, &channels, &picks, Some(n));
        for o in &outputs {
            if assigner.is_merging() {
                // Merging windows add up their counts: a merge can pass n at once.
                prop_assert!(o.value.0 >= n, "{:?}", o);
            } else {
                prop_assert_eq!(o.value.0, n, "{:?}", o);
            }
        }
        if !assigner.is_merging() {
            let (expected, _) = reference_fixed(assigner, 0, &channels);
            let mut emitted: BTreeMap<(u8, TimeWindow), u64> = BTreeMap::new();
            for o in &outputs {
                *emitted.entry((o.key, o.window)).or_default() += o.value.0;
            }
            for (kw, count) in emitted {
                let total = expected.get(&kw).map_or(0, |e| e.0);
                prop_assert_eq!(count, total - total % n, "{:?}", kw);
            }
        }
    }
}

/// The operator the tests below drive: a count and sum per key and window, with the
/// assigner's default trigger, no allowed lateness and no late output.
fn count_sum_operator(
    assigner: WindowAssigner,
) -> WindowOperator<AggregateWindow<CountSum, i64>, DefaultTrigger, u8, i64> {
    WindowOperator::new(
        assigner,
        AggregateWindow::new(CountSum),
        DefaultTrigger::of(&assigner),
        true,
        0,
        None,
    )
}

#[test]
fn a_window_fires_when_the_watermark_reaches_its_end_minus_one() {
    let assigner = WindowAssigner::tumbling(10);
    let mut h = Harness::new(count_sum_operator(assigner));
    h.record((1, Combined::Raw(5)), 3).unwrap();
    h.watermark(8).unwrap();
    assert!(h.take_records().is_empty());
    h.watermark(9).unwrap();
    let out = h.take_timestamped();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.window, TimeWindow::new(0, 10));
    assert_eq!(out[0].1, 9, "a window's result carries its max timestamp");
}

#[test]
fn session_records_bridge_two_sessions() {
    let assigner = WindowAssigner::session(10);
    let mut h = Harness::new(count_sum_operator(assigner));
    let raw = |v: i64| Combined::Raw(v);
    h.record((1, raw(1)), 0).unwrap();
    h.record((1, raw(2)), 30).unwrap();
    h.record((1, raw(4)), 15).unwrap(); // [15, 25) overlaps neither: 10 − 0 and 30 − 25 apart.
    h.record((1, raw(8)), 22).unwrap(); // [22, 32) bridges [15, 25) and [30, 40).
    h.record((1, raw(16)), 5).unwrap(); // [5, 15) overlaps [0, 10) only: 15 is not before 15.
    h.end().unwrap();
    let mut got: Vec<_> = h
        .take_records()
        .into_iter()
        .map(|o| (o.window.start, o.window.end, o.value))
        .collect();
    got.sort();
    assert_eq!(got, vec![(0, 15, (2, 17)), (15, 40, (3, 14))]);
}

#[test]
fn a_combined_session_bridges_three_sessions() {
    let assigner = WindowAssigner::session(10);
    let mut h = Harness::new(count_sum_operator(assigner));
    for (v, ts) in [(1, 0), (2, 20), (4, 40), (8, 70)] {
        h.record((1, Combined::Raw(v)), ts).unwrap();
    }
    // [5, 45) overlaps [0, 10), [20, 30) and [40, 50), not [70, 80).
    let partial = Combined::Session(TimeWindow::new(5, 45), (3, 16));
    h.record((1, partial), 5).unwrap();
    h.end().unwrap();
    let mut got: Vec<_> = h
        .take_records()
        .into_iter()
        .map(|o| (o.window.start, o.window.end, o.value))
        .collect();
    got.sort();
    assert_eq!(got, vec![(0, 50, (6, 23)), (70, 80, (1, 8))]);
}

/// What a session combiner sends for `elements` (records `(key, value, ts)` or watermarks).
fn combined(gap: i64, elements: &[Result<(u8, i64, i64), i64>]) -> Vec<Wire> {
    let combiner = WindowCombiner::new(
        &WindowAssigner::session(gap),
        AggregateWindow::new(CountSum),
        true,
    );
    let mut h = Harness::new(combiner);
    let mut out = Vec::new();
    for e in elements {
        match *e {
            Ok((key, value, ts)) => h.record((key, value), ts).unwrap(),
            Err(w) => h.watermark(w).unwrap(),
        }
        for e in h.take_elements() {
            match e {
                StreamElement::Records(mut b) => {
                    let _ = b.drain_each(|m, ts| {
                        out.push(Wire::Msg(m, ts));
                        Ok::<(), ()>(())
                    });
                }
                StreamElement::Watermark(w) => out.push(Wire::Watermark(w.0)),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn the_session_combiner_sends_a_local_session_before_the_watermark_reaches_it() {
    let session = |k: u8, s: i64, e: i64, acc: (u64, i64)| {
        Wire::Msg((k, Combined::Session(TimeWindow::new(s, e), acc)), s)
    };
    let got = combined(
        10,
        &[
            Ok((1, 1, 100)),
            Ok((1, 2, 105)), // extends [100, 110) to [100, 115)
            Ok((2, 4, 101)),
            Ok((1, 8, 93)),   // extends it back to [93, 115), an earlier bucket
            Ok((2, 16, 120)), // overlaps nothing: [101, 111) goes on
            Err(90),          // nothing starts at or before 90
            Err(95),          // key 1's session starts at 93
            Ok((1, 32, 95)),  // at or behind the watermark: raw
            Err(200),
        ],
    );
    let want = [
        session(2, 101, 111, (1, 4)),
        Wire::Watermark(90),
        session(1, 93, 115, (3, 11)),
        Wire::Watermark(95),
        Wire::Msg((1, Combined::Raw(32)), 95),
        session(2, 120, 130, (1, 16)),
        Wire::Watermark(200),
    ];
    assert_eq!(format!("{got:?}"), format!("{want:?}"));
    // A raw record of a key sends that key's local session first.
    let got = combined(
        10,
        &[Err(50), Ok((1, 1, 60)), Ok((1, 2, 40)), Ok((2, 4, 61))],
    );
    let want = [
        Wire::Watermark(50),
        session(1, 60, 70, (1, 1)),
        Wire::Msg((1, Combined::Raw(2)), 40),
    ];
    assert_eq!(format!("{got:?}"), format!("{want:?}"));
}

#[test]
fn timestamps_near_the_limits() {
    for assigner in [
        WindowAssigner::tumbling(1_000),
        WindowAssigner::sliding(1_000, 250),
        WindowAssigner::session(1_000),
    ] {
        let chans = [vec![
            (1u8, 1i64, i64::MIN + 1),
            (1, 2, i64::MIN + 500),
            (2, 3, -1),
            (2, 4, 0),
            (3, 5, i64::MAX - 10),
            (3, 6, i64::MAX - 1),
        ]];
        let channels: Vec<_> = chans.iter().map(|c| channel(c, 0, 1)).collect();
        let (outputs, late) = run_operator(assigner, 0, &channels, &[], None);
        let (combined, combined_late) = run_operator_wired(assigner, 0, &channels, &[], None, true);
        assert_eq!(
            finals(&combined, true),
            finals(&outputs, true),
            "{assigner:?}"
        );
        assert_eq!(sorted(combined_late), sorted(late.clone()), "{assigner:?}");
        let expected = match assigner {
            WindowAssigner::Session { gap, .. } => reference_sessions(gap, 0, &channels),
            _ => reference_fixed(assigner, 0, &channels),
        };
        assert_eq!(finals(&outputs, true), expected.0, "{assigner:?}");
        assert_eq!(sorted(late), expected.1, "{assigner:?}");
        assert!(
            outputs
                .iter()
                .any(|o| o.key == 3 && o.window.contains(i64::MAX - 1)),
            "{assigner:?}: {outputs:?}"
        );
    }
}

#[test]
fn global_windows_need_no_timestamps() {
    let assigner = WindowAssigner::global();
    let op = WindowOperator::<_, _, u8, i64>::new(
        assigner,
        AggregateWindow::new(CountSum),
        CountTrigger::of(2),
        false,
        0,
        None,
    );
    let mut h = Harness::new(op);
    for v in 1..=5 {
        h.record((1, Combined::Raw(v)), crate::element::NO_TIMESTAMP)
            .unwrap();
    }
    h.end().unwrap();
    let counts: Vec<(u64, i64)> = h.take_records().into_iter().map(|o| o.value).collect();
    assert_eq!(
        counts,
        vec![(2, 3), (4, 10)],
        "fires every 2 records, keeping its contents"
    );
}
