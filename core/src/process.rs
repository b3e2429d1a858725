//! The low-level layer: keyed process functions (Flink's `KeyedProcessFunction`) with keyed
//! state, per-key event-time and processing-time timers, and side outputs.
//!
//! The operator scopes its [`KeyedState`] to the key of each record (and of each timer) before
//! calling the function. State and timers live in the stage's state store, so both are
//! checkpointed and restored (by key group when the job rescales). Timers fire in timestamp
//! order: event-time timers when the watermark reaches them, *before* the watermark is passed
//! on (so what they emit is not late downstream); processing-time timers when processing time
//! reaches them (restored ones as soon as it has). Timers with the same time fire in the order
//! of their keys ([`OpTimers`]), so a restored run fires them as an uninterrupted one would.

use std::marker::PhantomData;

use crate::chain::{Collector, Pipe};
use crate::context::{OperatorContext, OutputTag};
use crate::element::{CheckpointBarrier, Timestamp, Watermark};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::keyed_state::KeyedState;
use crate::state::OpTimers;

/// Which clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeDomain {
    /// Event time: fires when the watermark reaches it.
    EventTime,
    /// Processing time: fires when the wall clock reaches it.
    ProcessingTime,
}

/// A function over a keyed stream, called per record and per timer, with keyed state.
///
/// Closures `FnMut(T, &mut ProcessContext<K, O>) -> Result<()>` are process functions without
/// state declarations or timers callbacks; implement the trait for more.
///
/// # Examples
///
/// Counts each key's records and emits the count 10 ms (event time) after the key's last
/// record; the count expires an hour (processing time) after its last change.
///
/// ```
/// use std::time::Duration;
/// use sluice_core::keyed_state::{KeyedState, StateTtlConfig, ValueState};
/// use sluice_core::process::{KeyedProcess, KeyedProcessFunction, ProcessContext, TimeDomain};
/// use sluice_core::testkit::Harness;
/// use sluice_core::{Result, Timestamp};
///
/// #[derive(Clone, Default)]
/// struct CountWithTimeout {
///     count: ValueState<u64>,
///     last: ValueState<i64>,
/// }
///
/// impl KeyedProcessFunction<String, u32, (String, u64)> for CountWithTimeout {
///     fn open(&mut self, state: &mut KeyedState<String>) -> Result<()> {
///         let hour = StateTtlConfig::new(Duration::from_secs(3_600));
///         self.count = state.with_ttl(hour).value_state("count");
///         self.last = state.value_state("last");
///         Ok(())
///     }
///     fn process_element(
///         &mut self,
///         _: u32,
///         ctx: &mut ProcessContext<'_, String, (String, u64)>,
///     ) -> Result<()> {
///         if self.count.value_mut(ctx.state(), |n| *n += 1)?.is_none() {
///             self.count.update(ctx.state(), 1)?;
///         }
///         if let Some(previous) = self.last.value(ctx.state())? {
///             ctx.delete_event_time_timer(previous + 10)?;
///         }
///         let ts = ctx.timestamp();
///         self.last.update(ctx.state(), ts)?;
///         ctx.register_event_time_timer(ts + 10)
///     }
///     fn on_timer(
///         &mut self,
///         at: Timestamp,
///         _: TimeDomain,
///         ctx: &mut ProcessContext<'_, String, (String, u64)>,
///     ) -> Result<()> {
///         let n = self.count.take(ctx.state())?.unwrap_or(0);
///         let key = ctx.key().clone();
///         ctx.output_at((key, n), at);
///         Ok(())
///     }
/// }
///
/// let mut h = Harness::new(KeyedProcess::new(CountWithTimeout::default()));
/// h.record(("a".to_owned(), 1), 100)?;
/// h.record(("b".to_owned(), 1), 101)?;
/// h.record(("a".to_owned(), 1), 105)?;
/// h.watermark(200)?;
/// assert_eq!(
///     h.take_timestamped(),
///     vec![(("b".to_owned(), 1), 111), (("a".to_owned(), 2), 115)]
/// );
/// # Ok::<(), sluice_core::Error>(())
/// ```
pub trait KeyedProcessFunction<K, T, O>: Clone + Send + Sync + 'static {
    /// Declares state handles (`state.value_state(..)`), once per worker, before any record.
    fn open(&mut self, _state: &mut KeyedState<K>) -> Result<()> {
        Ok(())
    }
    /// Processes one record of the current key.
    fn process_element(&mut self, value: T, ctx: &mut ProcessContext<'_, K, O>) -> Result<()>;
    /// A timer of the current key fired at `timestamp`.
    fn on_timer(
        &mut self,
        _timestamp: Timestamp,
        _domain: TimeDomain,
        _ctx: &mut ProcessContext<'_, K, O>,
    ) -> Result<()> {
        Ok(())
    }
}

impl<K, T, O, F> KeyedProcessFunction<K, T, O> for F
where
    F: FnMut(T, &mut ProcessContext<'_, K, O>) -> Result<()> + Clone + Send + Sync + 'static,
{
    fn process_element(&mut self, value: T, ctx: &mut ProcessContext<'_, K, O>) -> Result<()> {
        self(value, ctx)
    }
}

/// The event-time and processing-time timers of a keyed operator, in the state store.
pub struct Timers<K> {
    event: OpTimers<K, ()>,
    processing: OpTimers<K, ()>,
}

impl<K: Key> Timers<K> {
    /// Registers (or restores) the timers of a new operator.
    fn register(ctx: &OperatorContext) -> Timers<K> {
        Timers {
            event: OpTimers::register(ctx, "timers/event"),
            processing: OpTimers::register(ctx, "timers/processing"),
        }
    }
}

/// What a process function sees while it handles one record or timer.
pub struct ProcessContext<'a, K, O> {
    state: &'a mut KeyedState<K>,
    timers: &'a mut Timers<K>,
    out: &'a mut Vec<(O, Timestamp)>,
    ctx: &'a OperatorContext,
    timestamp: Timestamp,
    watermark: Watermark,
}

impl<K: Key, O> ProcessContext<'_, K, O> {
    /// The current key.
    pub fn key(&self) -> &K {
        self.state.current_key()
    }
    /// The timestamp of the record (or of the timer) being processed.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }
    /// The operator's current event-time watermark.
    pub fn current_watermark(&self) -> Watermark {
        self.watermark
    }
    /// The current processing time, in milliseconds since the Unix epoch.
    pub fn current_processing_time(&self) -> i64 {
        self.ctx.processing_time_ms()
    }
    /// The keyed state, scoped to the current key.
    pub fn state(&mut self) -> &mut KeyedState<K> {
        self.state
    }
    /// Emits a record with the current timestamp.
    pub fn output(&mut self, value: O) {
        self.out.push((value, self.timestamp));
    }
    /// Emits a record with timestamp `ts`.
    pub fn output_at(&mut self, value: O, ts: Timestamp) {
        self.out.push((value, ts));
    }
    /// Emits a record with the current timestamp to side output `tag`.
    pub fn side_output<X: 'static>(&mut self, tag: &OutputTag<X>, value: X) -> Result<()> {
        self.ctx
            .side_output::<X>(tag.id())
            .emit(value, self.timestamp)
            .map(|_| ())
    }
    /// Registers an event-time timer for the current key (a no-op if it exists).
    pub fn register_event_time_timer(&mut self, ts: Timestamp) -> Result<()> {
        let key = self.state.current_key().clone();
        self.timers.event.register_at(ts, key, ())
    }
    /// Deletes an event-time timer of the current key (a no-op if it does not exist).
    pub fn delete_event_time_timer(&mut self, ts: Timestamp) -> Result<()> {
        let key = self.state.current_key().clone();
        self.timers.event.delete(ts, key, ())
    }
    /// Registers a processing-time timer for the current key (a no-op if it exists).
    pub fn register_processing_time_timer(&mut self, ts: i64) -> Result<()> {
        let key = self.state.current_key().clone();
        self.timers.processing.register_at(ts, key, ())?;
        self.ctx.request_processing_time(ts);
        Ok(())
    }
    /// Deletes a processing-time timer of the current key (a no-op if it does not exist).
    pub fn delete_processing_time_timer(&mut self, ts: i64) -> Result<()> {
        let key = self.state.current_key().clone();
        self.timers.processing.delete(ts, key, ())
    }
}

/// `process` on a keyed stream.
pub struct KeyedProcess<F, K, T, O> {
    f: F,
    _p: PhantomData<fn(K, T) -> O>,
}

impl<F: Clone, K, T, O> Clone for KeyedProcess<F, K, T, O> {
    fn clone(&self) -> Self {
        KeyedProcess {
            f: self.f.clone(),
            _p: PhantomData,
        }
    }
}

impl<F, K, T, O> KeyedProcess<F, K, T, O> {
    /// The operator around `f`.
    pub fn new(f: F) -> Self {
        KeyedProcess { f, _p: PhantomData }
    }
}

/// The instantiated [`KeyedProcess`].
pub struct KeyedProcessOp<F, K, O, C> {
    f: F,
    state: KeyedState<K>,
    timers: Timers<K>,
    out: Vec<(O, Timestamp)>,
    ctx: OperatorContext,
    watermark: Watermark,
    /// Why opening failed: reported at the first element (attach cannot fail).
    opened: Option<Error>,
    next: C,
}

impl<F, K, O, C> KeyedProcessOp<F, K, O, C>
where
    K: Key,
    C: Collector<O>,
{
    fn emit_buffered(&mut self) -> Result<()> {
        for (value, ts) in self.out.drain(..) {
            self.next.collect(value, ts)?;
        }
        Ok(())
    }

    /// Why opening failed, once.
    #[inline]
    fn check_open(&mut self) -> Result<()> {
        match self.opened.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Tells the store the processing time, when some state has a time to live.
    #[inline]
    fn refresh_time(&self) {
        if self.state.uses_ttl() {
            self.state.set_time_ms(self.ctx.processing_time_ms());
        }
    }

    fn fire_timers<T>(&mut self, domain: TimeDomain, up_to: i64) -> Result<()>
    where
        F: KeyedProcessFunction<K, T, O>,
    {
        self.check_open()?;
        self.refresh_time();
        let timers = &mut self.timers;
        loop {
            let queue = match domain {
                TimeDomain::EventTime => &mut timers.event,
                TimeDomain::ProcessingTime => &mut timers.processing,
            };
            let Some((ts, key, ())) = queue.pop_due(up_to)? else {
                break;
            };
            self.state.set_current_key(key);
            let mut pctx = ProcessContext {
                state: &mut self.state,
                timers: &mut *timers,
                out: &mut self.out,
                ctx: &self.ctx,
                timestamp: ts,
                watermark: self.watermark,
            };
            let result = self.f.on_timer(ts, domain, &mut pctx);
            self.state.take_current_key();
            result?;
            for (value, ts) in self.out.drain(..) {
                self.next.collect(value, ts)?;
            }
        }
        if domain == TimeDomain::ProcessingTime {
            request_next_processing_time(&self.ctx, timers)?;
        }
        Ok(())
    }
}

/// Asks to be called back at the earliest processing-time timer (after timers fired, and
/// for timers restored from a checkpoint).
fn request_next_processing_time<K: Key>(
    ctx: &OperatorContext,
    timers: &mut Timers<K>,
) -> Result<()> {
    if let Some(at) = timers.processing.next_time()? {
        ctx.request_processing_time(at);
    }
    Ok(())
}

impl<F, K, T, O, C> Collector<(K, T)> for KeyedProcessOp<F, K, O, C>
where
    F: KeyedProcessFunction<K, T, O>,
    K: Key,
    C: Collector<O>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, T), ts: Timestamp) -> Result<()> {
        self.check_open()?;
        self.refresh_time();
        self.state.set_current_key(key);
        let mut pctx = ProcessContext {
            state: &mut self.state,
            timers: &mut self.timers,
            out: &mut self.out,
            ctx: &self.ctx,
            timestamp: ts,
            watermark: self.watermark,
        };
        let result = self.f.process_element(value, &mut pctx);
        self.state.take_current_key();
        result?;
        self.emit_buffered()
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        self.watermark = watermark;
        self.fire_timers(TimeDomain::EventTime, watermark.0)?;
        self.next.on_watermark(watermark)
    }
    fn on_processing_time(&mut self, now_ms: i64) -> Result<()> {
        self.fire_timers(TimeDomain::ProcessingTime, now_ms)?;
        self.next.on_processing_time(now_ms)
    }
    fn on_end(&mut self) -> Result<()> {
        self.check_open()?;
        self.next.on_end()
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.next.on_barrier(barrier)
    }
    crate::forward_hooks!(on_status, flush);
}

impl<F, K, T, O> Pipe<(K, T)> for KeyedProcess<F, K, T, O>
where
    F: KeyedProcessFunction<K, T, O>,
    K: Key,
    T: 'static,
    O: 'static,
{
    type Out = O;
    type Op<C: Collector<O>> = KeyedProcessOp<F, K, O, C>;
    fn attach<C: Collector<O>>(self, next: C, ctx: &OperatorContext) -> Self::Op<C> {
        let mut f = self.f;
        let prefix = ctx.state().operator_prefix();
        let mut state = KeyedState::new(ctx, &prefix);
        let mut timers = Timers::register(ctx);
        // An error while opening surfaces at the first element (attach cannot fail).
        let opened = f
            .open(&mut state)
            .err()
            .or_else(|| state.declaration_error())
            .or_else(|| request_next_processing_time(ctx, &mut timers).err());
        KeyedProcessOp {
            f,
            state,
            timers,
            out: Vec::new(),
            ctx: ctx.clone(),
            watermark: Watermark::MIN,
            opened,
            next,
        }
    }
    fn names(&self, out: &mut Vec<String>) {
        out.push("process".to_owned());
    }
    fn uses_state(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyed_state::ValueState;
    use crate::testkit::Harness;

    /// Counts per key and emits the count 10 ms (event time) after the key's last record.
    #[derive(Clone, Default)]
    struct CountWithTimeout {
        count: ValueState<u64>,
        last: ValueState<i64>,
    }

    impl KeyedProcessFunction<char, u32, (char, u64)> for CountWithTimeout {
        fn open(&mut self, state: &mut KeyedState<char>) -> Result<()> {
            self.count = state.value_state("count");
            self.last = state.value_state("last");
            Ok(())
        }
        fn process_element(
            &mut self,
            _value: u32,
            ctx: &mut ProcessContext<'_, char, (char, u64)>,
        ) -> Result<()> {
            let ts = ctx.timestamp();
            let n = self.count.value(ctx.state())?.unwrap_or(0) + 1;
            self.count.update(ctx.state(), n)?;
            if let Some(previous) = self.last.value(ctx.state())? {
                ctx.delete_event_time_timer(previous + 10)?;
            }
            self.last.update(ctx.state(), ts)?;
            ctx.register_event_time_timer(ts + 10)
        }
        fn on_timer(
            &mut self,
            timestamp: Timestamp,
            domain: TimeDomain,
            ctx: &mut ProcessContext<'_, char, (char, u64)>,
        ) -> Result<()> {
            assert_eq!(domain, TimeDomain::EventTime);
            let n = self.count.take(ctx.state())?.unwrap_or(0);
            let key = *ctx.key();
            ctx.output_at((key, n), timestamp);
            Ok(())
        }
    }

    #[test]
    fn timers_fire_in_order_before_the_watermark_passes() {
        let mut h = Harness::new(KeyedProcess::new(CountWithTimeout::default()));
        h.record(('a', 1), 100).unwrap();
        h.record(('b', 1), 101).unwrap();
        h.record(('a', 1), 105).unwrap();
        h.watermark(111).unwrap();
        assert_eq!(h.take_timestamped(), vec![(('b', 1), 111)]);
        h.watermark(200).unwrap();
        assert_eq!(h.take_timestamped(), vec![(('a', 2), 115)]);
    }

    #[test]
    fn closures_are_process_functions() {
        let f = |v: u32, ctx: &mut ProcessContext<'_, u8, u32>| {
            ctx.output(v * 2);
            Ok(())
        };
        let mut h = Harness::new(KeyedProcess::new(f));
        h.record((1, 21), 5).unwrap();
        assert_eq!(h.take_timestamped(), vec![(42, 5)]);
    }

    /// Registers a timer at each record's value (twice, to check deduplication) in the
    /// record's domain and emits `(key, time, domain)` when it fires.
    #[derive(Clone)]
    struct Echo;

    impl KeyedProcessFunction<u32, (TimeDomain, i64), (u32, i64, TimeDomain)> for Echo {
        fn process_element(
            &mut self,
            (domain, at): (TimeDomain, i64),
            ctx: &mut ProcessContext<'_, u32, (u32, i64, TimeDomain)>,
        ) -> Result<()> {
            for _ in 0..2 {
                match domain {
                    TimeDomain::EventTime => ctx.register_event_time_timer(at)?,
                    TimeDomain::ProcessingTime => ctx.register_processing_time_timer(at)?,
                }
            }
            Ok(())
        }
        fn on_timer(
            &mut self,
            at: Timestamp,
            domain: TimeDomain,
            ctx: &mut ProcessContext<'_, u32, (u32, i64, TimeDomain)>,
        ) -> Result<()> {
            let key = *ctx.key();
            ctx.output((key, at, domain));
            Ok(())
        }
    }

    /// Sets (`true`) or deletes a timer of the record's key in a domain, and counts the
    /// key's records; a timer emits `(key, time, domain, count)`.
    #[derive(Clone, Default)]
    struct SetOrDelete {
        count: ValueState<u64>,
    }

    type Timed = (u32, i64, TimeDomain, u64);

    impl KeyedProcessFunction<u32, (bool, TimeDomain, i64), Timed> for SetOrDelete {
        fn open(&mut self, state: &mut KeyedState<u32>) -> Result<()> {
            self.count = state.value_state("count");
            Ok(())
        }
        fn process_element(
            &mut self,
            (set, domain, at): (bool, TimeDomain, i64),
            ctx: &mut ProcessContext<'_, u32, Timed>,
        ) -> Result<()> {
            let n = self.count.value(ctx.state())?.unwrap_or(0) + 1;
            self.count.update(ctx.state(), n)?;
            match (set, domain) {
                (true, TimeDomain::EventTime) => ctx.register_event_time_timer(at),
                (true, TimeDomain::ProcessingTime) => ctx.register_processing_time_timer(at),
                (false, TimeDomain::EventTime) => ctx.delete_event_time_timer(at),
                (false, TimeDomain::ProcessingTime) => ctx.delete_processing_time_timer(at),
            }
        }
        fn on_timer(
            &mut self,
            at: Timestamp,
            domain: TimeDomain,
            ctx: &mut ProcessContext<'_, u32, Timed>,
        ) -> Result<()> {
            let n = self.count.value(ctx.state())?.unwrap_or(0);
            let key = *ctx.key();
            ctx.output((key, at, domain, n));
            Ok(())
        }
    }

    /// Timers and state in a checkpoint, restored into a new operator: the restored
    /// processing-time timers ask for a callback when the operator attaches, deleted timers
    /// stay deleted, and timers fire with the restored state.
    #[test]
    fn timers_and_state_restored_from_a_checkpoint_fire_as_without_a_restart() {
        use crate::context::ContextBuilder;
        use crate::key::KeyGroups;
        use crate::metrics::JobMetrics;
        use crate::state::StageState;
        use TimeDomain::{EventTime as E, ProcessingTime as P};
        use std::rc::Rc;
        use std::sync::Arc;

        let disk = sluice_state::sim::SimDisk::default();
        let key_groups = KeyGroups::new(128, 1).unwrap();
        let context = |checkpoint: Option<u64>| {
            let mut b = ContextBuilder::new(0, key_groups, "t", Arc::new(JobMetrics::new(1)));
            let state = StageState::on_sim_disk(disk.clone(), key_groups, checkpoint).unwrap();
            b.state = Some(Rc::new(state));
            b.build()
        };
        let ctx = context(None);
        let mut h = Harness::with_context(KeyedProcess::new(SetOrDelete::default()), ctx.clone());
        for (key, op) in [
            (1, (true, P, 2_000)),
            (1, (true, P, 1_000)),
            (2, (true, P, 1_500)),
            (2, (false, P, 1_500)),
            (3, (true, E, 50)),
            (3, (true, E, 60)),
            (3, (false, E, 50)),
            (4, (true, P, 900)),
        ] {
            h.record((key, op), 10).unwrap();
        }
        h.processing_time(900).unwrap();
        assert_eq!(h.take_records(), vec![(4, 900, P, 1)]);
        let store = ctx.state().store().clone();
        let frozen = store.freeze(1).unwrap();
        futures_lite::future::block_on(store.write(frozen)).unwrap();
        // After the checkpoint: lost with the failure.
        h.record((1, (true, P, 1_100)), 11).unwrap();
        drop((h, ctx, store));

        let ctx = context(Some(1));
        let mut h = Harness::with_context(KeyedProcess::new(SetOrDelete::default()), ctx.clone());
        assert_eq!(ctx.next_deadline(), Some(1_000), "asked for at attach");
        h.processing_time(1_999).unwrap();
        assert_eq!(h.take_records(), vec![(1, 1_000, P, 2)]);
        h.watermark(100).unwrap();
        assert_eq!(h.take_records(), vec![(3, 60, E, 3)]);
        h.processing_time(5_000).unwrap();
        assert_eq!(h.take_records(), vec![(1, 2_000, P, 2)]);
        // The deleted ones (and the one set after the checkpoint) never fire.
        h.processing_time(i64::MAX).unwrap();
        h.end().unwrap();
        assert_eq!(h.take_records(), vec![]);
    }

    #[test]
    fn timers_of_one_time_fire_once_each_in_the_order_of_their_keys() {
        let mut h = Harness::new(KeyedProcess::new(Echo));
        let keys: Vec<u32> = (0..50).collect();
        for &k in keys.iter().rev() {
            h.record((k, (TimeDomain::EventTime, 10)), 1).unwrap();
            h.record((k, (TimeDomain::ProcessingTime, 1_000)), 1)
                .unwrap();
        }
        h.watermark(9).unwrap();
        assert!(h.take_records().is_empty());
        h.watermark(10).unwrap();
        // Registered in descending order, fired in the keys' order.
        let expected: Vec<_> = keys
            .iter()
            .map(|&k| (k, 10, TimeDomain::EventTime))
            .collect();
        assert_eq!(h.take_records(), expected);
        assert_eq!(h.context().next_deadline(), Some(1_000));
        h.processing_time(999).unwrap();
        assert!(h.take_records().is_empty());
        h.processing_time(1_000).unwrap();
        let fired = h.take_records();
        assert_eq!(fired.len(), 50);
        assert!(
            fired
                .iter()
                .all(|&(_, at, d)| (at, d) == (1_000, TimeDomain::ProcessingTime))
        );
        assert_eq!(
            h.context().state().store().memory_used(),
            0,
            "no timer left"
        );
    }
}
