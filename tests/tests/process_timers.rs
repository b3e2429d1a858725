//! Keyed process functions through the public API on real multi-worker runs: keyed state of
//! every kind (value, list, map), event-time timers (registered, deleted, deduplicated, fired
//! in timestamp order and before the watermark that passes them moves on), processing-time
//! timers that fire while the input is still open, side outputs, and what the function sees of
//! time (`timestamp`, `current_watermark`) — against references computed in the tests, on
//! random streams with random disorder (beyond the out-of-orderness bound too).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice::{
    KeyedProcessFunction, KeyedState, ListState, MapState, OutputTag, ProcessContext, Result,
    TimeDomain, Timestamp, ValueState, WatermarkStrategy, WindowAssigner,
};
use sluice_tests::event_time::{Ev, Watermarks, assert_same, assert_same_map, events};
use sluice_tests::held::{Gate, HeldSource, WatchSink, records};
use sluice_tests::run_job;

/// What [`Buckets`] emits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Out {
    /// A bucket's timer fired at `at`: the ids of its records since the last firing.
    Bucket { key: u8, at: i64, ids: Vec<u32> },
    /// A reminder timer fired.
    Reminder { key: u8, at: i64 },
}

/// Per key, collects the ids of each bucket of `size` ms (map state) and emits them when an
/// event-time timer at the bucket's last millisecond fires; keeps every id (list state) and
/// their count (value state), and checks that they agree at every timer. Each record also
/// registers a *reminder* timer at `even(ts) + 2·size` and deletes it again when its bucket
/// is even, so only odd buckets' reminders fire. `size` is even, so bucket timers fall on odd
/// instants and reminders on even ones: the two never meet. Ids divisible by 5 also go to a
/// side output. Each input record carries its horizon (its worker's watermark before it, from
/// the reference): the operator's watermark must never be ahead of it.
#[derive(Clone)]
struct Buckets {
    size: i64,
    fifths: OutputTag<(u8, u32)>,
    buckets: MapState<i64, Vec<u32>>,
    ids: ListState<u32>,
    count: ValueState<u64>,
}

impl Buckets {
    fn bucket(&self, ts: i64) -> i64 {
        ts - ts.rem_euclid(self.size)
    }
    fn reminder(&self, ts: i64) -> i64 {
        ts - ts.rem_euclid(2) + 2 * self.size
    }
}

impl KeyedProcessFunction<u8, (Ev, i64), Out> for Buckets {
    fn open(&mut self, state: &mut KeyedState<u8>) -> Result<()> {
        self.buckets = state.map_state("buckets");
        self.ids = state.list_state("ids");
        self.count = state.value_state("count");
        Ok(())
    }

    fn process_element(
        &mut self,
        (e, horizon): (Ev, i64),
        ctx: &mut ProcessContext<'_, u8, Out>,
    ) -> Result<()> {
        assert_eq!(
            ctx.timestamp(),
            e.ts,
            "a record's timestamp is its event time"
        );
        assert_eq!(*ctx.key(), e.key);
        let w = ctx.current_watermark().0;
        assert!(
            w <= horizon,
            "record {e:?}: operator watermark {w} ahead of its input's {horizon}"
        );
        let start = self.bucket(e.ts);
        let state = ctx.state();
        if self
            .buckets
            .value_mut(state, &start, |ids| ids.push(e.id))?
            .is_none()
        {
            self.buckets.put(state, start, vec![e.id])?;
        }
        self.ids.add(state, e.id)?;
        let n = self.count.value(state)?.unwrap_or(0);
        self.count.update(state, n + 1)?;
        ctx.register_event_time_timer(start + self.size - 1)?;
        let reminder = self.reminder(e.ts);
        ctx.register_event_time_timer(reminder)?;
        if (start / self.size).rem_euclid(2) == 0 {
            ctx.delete_event_time_timer(reminder)?;
        }
        if e.id % 5 == 0 {
            ctx.side_output(&self.fifths, (e.key, e.id))?;
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        at: Timestamp,
        domain: TimeDomain,
        ctx: &mut ProcessContext<'_, u8, Out>,
    ) -> Result<()> {
        assert_eq!(domain, TimeDomain::EventTime);
        assert_eq!(ctx.timestamp(), at);
        let w = ctx.current_watermark().0;
        assert!(w >= at, "timer {at} fired at watermark {w}");
        let key = *ctx.key();
        let state = ctx.state();
        let all = self.ids.with_list(state, <[u32]>::len)? as u64;
        assert_eq!(self.count.value(state)?, Some(all), "key {key}");
        if at.rem_euclid(2) == 0 {
            ctx.output(Out::Reminder { key, at });
            return Ok(());
        }
        if let Some(ids) = self.buckets.take(state, &(at + 1 - self.size))? {
            let known: BTreeSet<u32> = self.ids.get(state)?.into_iter().collect();
            assert!(ids.iter().all(|id| known.contains(id)), "{ids:?}");
            ctx.output(Out::Bucket { key, at, ids });
        }
        Ok(())
    }
}

fn strategy(
    wm: Watermarks,
) -> WatermarkStrategy<impl sluice::TimestampAssigner<(Ev, i64)>, sluice::BoundedOutOfOrderness> {
    WatermarkStrategy::for_bounded_out_of_orderness(wm.delay)
        .with_timestamp_assigner(|e: &(Ev, i64)| e.0.ts)
        .with_watermark_interval_records(wm.interval as u32)
}

fn check_buckets(input: &[Ev], wm: Watermarks, size: i64) {
    let horizons = wm.horizons(&input.iter().map(|e| e.ts).collect::<Vec<_>>());
    let items: Vec<(Ev, i64)> = input.iter().copied().zip(horizons).collect();
    let fifths: OutputTag<(u8, u32)> = OutputTag::new("fifths");
    let function = Buckets {
        size,
        fifths: fifths.clone(),
        buckets: MapState::default(),
        ids: ListState::default(),
        count: ValueState::default(),
    };
    let (out, side) = run_job(wm.workers, "buckets", move |env| {
        let mut main = env
            .from_iter(items)
            .assign_timestamps_and_watermarks(strategy(wm))
            .key_by(|e: &(Ev, i64)| e.0.key)
            .process(function);
        let side = main.side_output(&fifths).collect();
        let out = main.map_with_timestamp(|o, ts| (o, ts)).collect();
        move || (out.take(), side.take())
    });
    // Every record's id is emitted once, with its bucket, at the bucket's last millisecond,
    // however the firings split it (a late record's bucket fires again).
    let mut got_buckets: BTreeMap<(u8, i64), Vec<u32>> = BTreeMap::new();
    let mut got_reminders = BTreeSet::new();
    for (o, ts) in out {
        match o {
            Out::Bucket { key, at, ids } => {
                assert_eq!(ts, at, "a timer's output carries the timer's time");
                got_buckets.entry((key, at)).or_default().extend(ids);
            }
            Out::Reminder { key, at } => {
                assert_eq!(ts, at);
                got_reminders.insert((key, at));
            }
        }
    }
    let mut expected_buckets: BTreeMap<(u8, i64), Vec<u32>> = BTreeMap::new();
    let mut expected_reminders = BTreeSet::new();
    for e in input {
        let start = e.ts - e.ts.rem_euclid(size);
        expected_buckets
            .entry((e.key, start + size - 1))
            .or_default()
            .push(e.id);
        if (start / size).rem_euclid(2) == 1 {
            expected_reminders.insert((e.key, e.ts - e.ts.rem_euclid(2) + 2 * size));
        }
    }
    for ids in got_buckets
        .values_mut()
        .chain(expected_buckets.values_mut())
    {
        ids.sort_unstable();
    }
    let what = format!("buckets, {wm:?}, size {size}");
    assert_same_map(&expected_buckets, &got_buckets, &what);
    assert_eq!(got_reminders, expected_reminders, "reminders, {wm:?}");
    let expected_side: Vec<(u8, u32)> = input
        .iter()
        .filter(|e| e.id % 5 == 0)
        .map(|e| (e.key, e.id))
        .collect();
    assert_same(expected_side, side, "side output");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(sluice_tests::proptest_cases(16)))]

    #[test]
    fn keyed_state_and_event_time_timers_match_reference_on_random_streams(
        n in 0usize..600,
        keys in 1u8..8,
        seed in any::<u64>(),
        base in -10_000i64..10_000,
        step in 0i64..8,
        back in 0i64..100,
        delay in 0i64..40,
        interval in 1usize..64,
        workers in 1usize..=4,
        half_size in 1i64..30,
    ) {
        let input = events(n, keys, seed, base, step, back);
        let wm = Watermarks { workers, delay, interval };
        check_buckets(&input, wm, 2 * half_size);
    }
}

/// Registers an event-time timer at each record's timestamp and emits `(key, time)` when it
/// fires — on the main output and on a side output.
#[derive(Clone)]
struct EchoTimers {
    fired: OutputTag<(u8, i64)>,
}

impl KeyedProcessFunction<u8, Ev, (u8, i64)> for EchoTimers {
    fn process_element(
        &mut self,
        e: Ev,
        ctx: &mut ProcessContext<'_, u8, (u8, i64)>,
    ) -> Result<()> {
        ctx.register_event_time_timer(e.ts)
    }
    fn on_timer(
        &mut self,
        at: Timestamp,
        _domain: TimeDomain,
        ctx: &mut ProcessContext<'_, u8, (u8, i64)>,
    ) -> Result<()> {
        let key = *ctx.key();
        ctx.output((key, at));
        ctx.side_output(&self.fired, (key, at))
    }
}

#[test]
fn timers_fire_in_timestamp_order_before_the_watermark_passes() {
    // Disorder within the bound: no record is late, so every timer is registered ahead of the
    // watermark and fires once. Downstream, a tumbling window over the timers' outputs
    // (behind a hash exchange) must find none of them late: each was emitted before the
    // watermark that fired it moved on.
    let input = events(3_000, 6, 5, -2_000, 3, 30);
    let size = 50;
    let mut expected: BTreeMap<(u8, i64), u64> = BTreeMap::new();
    for &(key, ts) in &input.iter().map(|e| (e.key, e.ts)).collect::<BTreeSet<_>>() {
        *expected.entry((key, ts - ts.rem_euclid(size))).or_default() += 1;
    }
    for workers in [1, 2, 4] {
        let fired: OutputTag<(u8, i64)> = OutputTag::new("fired");
        let late: OutputTag<(u8, (u8, i64))> = OutputTag::new("late");
        let function = EchoTimers {
            fired: fired.clone(),
        };
        let items = input.clone();
        let (windows, order, late) = run_job(workers, "echo timers", move |env| {
            let mut timers = env
                .from_iter(items)
                .assign_timestamps_and_watermarks(
                    WatermarkStrategy::for_bounded_out_of_orderness(30)
                        .with_timestamp_assigner(|e: &Ev| e.ts)
                        .with_watermark_interval_records(17),
                )
                .key_by(|e: &Ev| e.key)
                .process(function);
            let order = timers.side_output(&fired).collect();
            let mut counted = timers
                .key_by(|t: &(u8, i64)| t.0)
                .window(WindowAssigner::tumbling(size))
                .side_output_late_data(&late)
                .aggregate(Count);
            let late = counted.side_output(&late).collect();
            let windows = counted
                .map(|w| ((w.key, w.window.start), w.value))
                .collect();
            move || (windows.take(), order.take(), late.take())
        });
        assert!(
            late.is_empty(),
            "{workers} workers: late timer outputs {late:?}"
        );
        let windows: BTreeMap<(u8, i64), u64> = windows.into_iter().collect();
        assert_eq!(windows, expected, "{workers} workers");
        // One key's timers fire on one worker, in timestamp order.
        let mut last: BTreeMap<u8, i64> = BTreeMap::new();
        for (key, at) in order {
            if let Some(previous) = last.insert(key, at) {
                assert!(previous < at, "key {key}: timer {at} after {previous}");
            }
        }
    }
}

/// Counts records.
#[derive(Clone)]
struct Count;

impl sluice::AggregateFunction<(u8, i64)> for Count {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: (u8, i64)) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// Counts each key's records and, 20 ms of processing time after its first one, emits the
/// count so far.
#[derive(Clone, Default)]
struct CountAfterADelay {
    count: ValueState<u64>,
}

impl KeyedProcessFunction<u8, u8, (u8, u64)> for CountAfterADelay {
    fn open(&mut self, state: &mut KeyedState<u8>) -> Result<()> {
        self.count = state.value_state("count");
        Ok(())
    }
    fn process_element(
        &mut self,
        _: u8,
        ctx: &mut ProcessContext<'_, u8, (u8, u64)>,
    ) -> Result<()> {
        let n = self.count.value(ctx.state())?.unwrap_or(0) + 1;
        self.count.update(ctx.state(), n)?;
        if n == 1 {
            let at = ctx.current_processing_time() + 20;
            ctx.register_processing_time_timer(at)?;
        }
        Ok(())
    }
    fn on_timer(
        &mut self,
        at: Timestamp,
        domain: TimeDomain,
        ctx: &mut ProcessContext<'_, u8, (u8, u64)>,
    ) -> Result<()> {
        assert_eq!(domain, TimeDomain::ProcessingTime);
        let now = ctx.current_processing_time();
        assert!(now >= at, "processing-time timer {at} fired at {now}");
        let key = *ctx.key();
        let n = self.count.value(ctx.state())?.unwrap_or(0);
        ctx.output((key, n));
        Ok(())
    }
}

#[test]
fn a_processing_time_timer_fires_while_the_input_is_open() {
    // The source hands over its records, then stays open until the sink has seen every key's
    // timer fire (or a watchdog gives up, failing the test).
    let first: Vec<u8> = (0..300u32).map(|i| (i * 7 % 5) as u8).collect();
    for workers in [1, 3] {
        let gate = Gate::new();
        let until: sluice_tests::held::Until<(u8, u64)> =
            Arc::new(|got: &[(u8, u64)]| got.len() >= 5);
        let sink = WatchSink::new(gate.clone(), until);
        let received = sink.received();
        let watchdog = gate.watchdog(Duration::from_secs(20));
        let source = HeldSource::new(first.clone(), vec![], gate.clone());
        run_job(workers, "processing-time timer", move |env| {
            env.from_source(source)
                .key_by(|k: &u8| *k)
                .process(CountAfterADelay::default())
                .sink(sink);
            || ()
        });
        let _ = watchdog.join();
        assert!(
            !gate.released_by_watchdog(),
            "{workers} workers: timers did not fire while the input was open: got {:?}",
            records(&received)
        );
        let mut got = records(&received);
        got.sort_unstable();
        assert_eq!(got, (0..5).map(|k| (k, 60)).collect::<Vec<_>>());
        let held = received.lock().unwrap_or_else(|e| e.into_inner());
        assert!(held.iter().all(|(_, released)| !released), "{held:?}");
    }
}
