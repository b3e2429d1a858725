//! The low-level layer: keyed process functions (Flink's `KeyedProcessFunction`) with keyed
//! state, per-key event-time and processing-time timers, and side outputs.
//!
//! The operator scopes its [`KeyedState`] to the key of each record (and of each timer) before
//! calling the function. Timers fire in timestamp order: event-time timers when the watermark
//! reaches them, *before* the watermark is passed on (so what they emit is not late
//! downstream); processing-time timers when processing time reaches them.

use std::marker::PhantomData;

use crate::chain::{Collector, Pipe};
use crate::context::{OperatorContext, OutputTag};
use crate::element::{CheckpointBarrier, Timestamp, Watermark};
use crate::error::Result;
use crate::key::Key;
use crate::keyed_state::KeyedState;
use crate::timers::TimerQueue;

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
pub trait KeyedProcessFunction<K, T, O>: Clone + Send + Sync + 'static {
    /// Declares state handles (`ctx.value_state(..)`), once per worker, before any record.
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

/// The event-time and processing-time timers of a keyed operator.
pub struct Timers<K> {
    event: TimerQueue<K, ()>,
    processing: TimerQueue<K, ()>,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            event: TimerQueue::default(),
            processing: TimerQueue::default(),
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
    pub fn register_event_time_timer(&mut self, ts: Timestamp) {
        let key = self.state.current_key().clone();
        self.timers.event.register(key, (), ts);
    }
    /// Deletes an event-time timer of the current key.
    pub fn delete_event_time_timer(&mut self, ts: Timestamp) {
        let key = self.state.current_key();
        self.timers.event.delete(key, &(), ts);
    }
    /// Registers a processing-time timer for the current key (a no-op if it exists).
    pub fn register_processing_time_timer(&mut self, ts: i64) {
        let key = self.state.current_key().clone();
        self.timers.processing.register(key, (), ts);
        self.ctx.request_processing_time(ts);
    }
    /// Deletes a processing-time timer of the current key.
    pub fn delete_processing_time_timer(&mut self, ts: i64) {
        let key = self.state.current_key();
        self.timers.processing.delete(key, &(), ts);
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
    opened: Option<crate::Error>,
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

    fn fire_timers<T>(&mut self, domain: TimeDomain, up_to: i64) -> Result<()>
    where
        F: KeyedProcessFunction<K, T, O>,
    {
        loop {
            let queue = match domain {
                TimeDomain::EventTime => &mut self.timers.event,
                TimeDomain::ProcessingTime => &mut self.timers.processing,
            };
            let Some((key, (), ts)) = queue.pop_due(up_to) else {
                return Ok(());
            };
            self.state.set_current_key(key);
            let mut pctx = ProcessContext {
                state: &mut self.state,
                timers: &mut self.timers,
                out: &mut self.out,
                ctx: &self.ctx,
                timestamp: ts,
                watermark: self.watermark,
            };
            let result = self.f.on_timer(ts, domain, &mut pctx);
            self.state.take_current_key();
            result?;
            self.emit_buffered()?;
        }
    }
}

impl<F, K, T, O, C> Collector<(K, T)> for KeyedProcessOp<F, K, O, C>
where
    F: KeyedProcessFunction<K, T, O>,
    K: Key,
    C: Collector<O>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, T), ts: Timestamp) -> Result<()> {
        if let Some(e) = self.opened.take() {
            return Err(e);
        }
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
        if let Some(e) = self.opened.take() {
            return Err(e);
        }
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
        let mut state = KeyedState::default();
        // An error while opening surfaces at the first record (attach cannot fail).
        let opened = f.open(&mut state).err();
        KeyedProcessOp {
            f,
            state,
            timers: Timers::default(),
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
            let n = self.count.value(ctx.state()).copied().unwrap_or(0) + 1;
            self.count.update(ctx.state(), n);
            if let Some(&previous) = self.last.value(ctx.state()) {
                ctx.delete_event_time_timer(previous + 10);
            }
            self.last.update(ctx.state(), ts);
            ctx.register_event_time_timer(ts + 10);
            Ok(())
        }
        fn on_timer(
            &mut self,
            timestamp: Timestamp,
            domain: TimeDomain,
            ctx: &mut ProcessContext<'_, char, (char, u64)>,
        ) -> Result<()> {
            assert_eq!(domain, TimeDomain::EventTime);
            let n = self.count.clear(ctx.state()).unwrap_or(0);
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
}
