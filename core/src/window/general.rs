//! The general window operator (Flink's `WindowOperator`): any assigner — processing-time
//! windows, global windows, sessions — with any [`Trigger`].
//!
//! State is kept per key and window: the window function's accumulator and the trigger's
//! state. Timers are per key and window; besides the trigger's own, every window has a
//! cleanup timer at the end of its allowed lateness (event time) or at its end (processing
//! time), when its state is dropped. At the end of a bounded input, processing-time timers fire
//! too, so no window's contents are silently lost.
//!
//! State: each key's windows in a store table, the timers in the store's timer sets (restored
//! processing-time timers are asked for again), the operator's watermark written at each
//! barrier.

use std::marker::PhantomData;

use crate::chain::Collector;
use crate::context::{OperatorContext, SideOutput};
use crate::element::{CheckpointBarrier, Timestamp, Watermark, is_event_time};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::process::TimeDomain;
use crate::state::{OpMeta, OpTable, OpTimers};
use crate::window::combine::Combined;
use crate::window::function::WindowFunction;
use crate::window::trigger::{TimerRequest, Trigger, TriggerContext, TriggerResult};
use crate::window::{TimeCharacteristic, TimeWindow, WindowAssigner, no_timestamp_error};

/// The general window operator's pipe.
pub struct GeneralWindow<W, Tr, K, T> {
    pub(crate) function: W,
    pub(crate) trigger: Tr,
    pub(crate) assigner: WindowAssigner,
    pub(crate) allowed_lateness: i64,
    pub(crate) late_tag: Option<u64>,
    pub(crate) _p: PhantomData<fn(K, T)>,
}

impl<W: Clone, Tr: Clone, K, T> Clone for GeneralWindow<W, Tr, K, T> {
    fn clone(&self) -> Self {
        GeneralWindow {
            function: self.function.clone(),
            trigger: self.trigger.clone(),
            assigner: self.assigner,
            allowed_lateness: self.allowed_lateness,
            late_tag: self.late_tag,
            _p: PhantomData,
        }
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct WinState<A, S> {
    window: TimeWindow,
    /// `None` once purged (until the next record).
    acc: Option<A>,
    trigger: S,
}

/// A key's windows.
type KeyWindows<A, S> = Vec<WinState<A, S>>;

/// The instantiated general window operator.
///
/// State: each key's windows (accumulator and trigger state) in a store table, the event- and
/// processing-time timers in the store's timer sets, and the operator's watermark written at
/// each barrier.
pub struct GeneralWindowOp<W: WindowFunction<K, T>, Tr: Trigger<T>, K, T, C> {
    function: W,
    trigger: Tr,
    assigner: WindowAssigner,
    lateness: i64,
    windows: OpTable<(), K, KeyWindows<W::Acc, Tr::State>>,
    event_timers: OpTimers<K, TimeWindow>,
    processing_timers: OpTimers<K, TimeWindow>,
    progress: OpMeta<i64>,
    watermark: Watermark,
    tctx: TriggerContext,
    assigned: Vec<TimeWindow>,
    late: SideOutput<(K, T)>,
    ctx: OperatorContext,
    out: Vec<W::Out>,
    /// Restoring the operator's progress failed: the first call reports it.
    broken: Option<Error>,
    next: C,
}

impl<W, Tr, K, T> GeneralWindow<W, Tr, K, T>
where
    W: WindowFunction<K, T>,
    Tr: Trigger<T>,
{
    pub(crate) fn instantiate<C>(
        self,
        next: C,
        ctx: &OperatorContext,
    ) -> GeneralWindowOp<W, Tr, K, T, C>
    where
        K: Key,
        T: 'static,
    {
        let late = match self.late_tag {
            Some(tag) => ctx.side_output(tag),
            None => SideOutput::discard(),
        };
        let mut op = GeneralWindowOp {
            function: self.function,
            trigger: self.trigger,
            assigner: self.assigner,
            lateness: self.allowed_lateness,
            windows: OpTable::register(ctx, "windows"),
            event_timers: OpTimers::register(ctx, "event-timers"),
            processing_timers: OpTimers::register(ctx, "processing-timers"),
            progress: OpMeta::register(ctx, "progress"),
            watermark: Watermark::MIN,
            tctx: TriggerContext::default(),
            assigned: Vec::new(),
            late,
            ctx: ctx.clone(),
            out: Vec::new(),
            broken: None,
            next,
        };
        if let Err(e) = op.restore() {
            op.broken = Some(e);
        }
        op
    }
}

fn find<A, S>(states: &[WinState<A, S>], window: &TimeWindow) -> Option<usize> {
    states.iter().position(|s| s.window == *window)
}

/// Readies the trigger context for a call of the trigger.
fn prepare(tctx: &mut TriggerContext, watermark: Watermark, ctx: &OperatorContext) {
    tctx.watermark = watermark.0;
    tctx.processing_time = ctx.processing_time_ms();
    tctx.requests.clear();
}

impl<W, Tr, K, T, C> GeneralWindowOp<W, Tr, K, T, C>
where
    W: WindowFunction<K, T>,
    Tr: Trigger<T>,
    K: Key,
{
    /// Takes up the watermark of the instances whose key groups this one now owns (they saw
    /// the same watermarks) and asks for the first restored processing-time timer.
    fn restore(&mut self) -> Result<()> {
        let restored = self.progress.restored()?;
        if let Some(w) = restored.into_iter().min() {
            self.watermark = Watermark(w);
        }
        self.request_next_processing_timer()
    }

    fn request_next_processing_timer(&mut self) -> Result<()> {
        if let Some(t) = self.processing_timers.next_time()? {
            self.ctx.request_processing_time(t);
        }
        Ok(())
    }
}

impl<W, Tr, K, T, C> GeneralWindowOp<W, Tr, K, T, C>
where
    W: WindowFunction<K, T>,
    Tr: Trigger<T>,
    K: Key,
    T: Clone,
    C: Collector<W::Out>,
{
    fn event_time(&self) -> bool {
        self.assigner.time() == TimeCharacteristic::EventTime
    }

    /// When a window's state is dropped.
    fn cleanup_time(&self, window: &TimeWindow) -> i64 {
        if self.event_time() {
            window.max_timestamp().saturating_add(self.lateness)
        } else {
            window.max_timestamp()
        }
    }

    fn prepare_trigger_ctx(&mut self) {
        prepare(&mut self.tctx, self.watermark, &self.ctx);
    }

    /// Applies the timer requests the trigger made for (`key`, `window`).
    fn apply_requests(&mut self, key: &K, window: &TimeWindow) -> Result<()> {
        for request in self.tctx.requests.drain(..) {
            match request {
                TimerRequest::Register(TimeDomain::EventTime, t) => {
                    self.event_timers.register_at(t, key.clone(), *window)?;
                }
                TimerRequest::Register(TimeDomain::ProcessingTime, t) => {
                    self.processing_timers
                        .register_at(t, key.clone(), *window)?;
                    self.ctx.request_processing_time(t);
                }
                TimerRequest::Delete(TimeDomain::EventTime, t) => {
                    self.event_timers.delete(t, key.clone(), *window)?;
                }
                TimerRequest::Delete(TimeDomain::ProcessingTime, t) => {
                    self.processing_timers.delete(t, key.clone(), *window)?;
                }
            }
        }
        Ok(())
    }

    fn register_cleanup(&mut self, key: &K, window: &TimeWindow) -> Result<()> {
        let at = self.cleanup_time(window);
        if self.event_time() {
            self.event_timers.register_at(at, key.clone(), *window)
        } else {
            self.processing_timers
                .register_at(at, key.clone(), *window)?;
            self.ctx.request_processing_time(at);
            Ok(())
        }
    }

    /// Emits the window's current contents (if any) for `key`.
    fn emit(&mut self, key: &K, i: usize) -> Result<()> {
        let GeneralWindowOp {
            function,
            windows,
            out,
            next,
            ..
        } = self;
        let mut table = windows.get()?.lock();
        let Some(state) = table.get(&(), key)?.and_then(|states| states.get(i)) else {
            return Ok(());
        };
        if let Some(acc) = &state.acc {
            let window = state.window;
            function.emit(key, &window, &[acc], out)?;
            for o in out.drain(..) {
                next.collect(o, window.max_timestamp())?;
            }
        }
        Ok(())
    }

    /// Acts on a trigger's decision for window `i` of `key`.
    fn act(&mut self, key: &K, i: usize, result: TriggerResult) -> Result<()> {
        if result.fires() {
            self.emit(key, i)?;
        }
        if result.purges() {
            let mut table = self.windows.get()?.lock();
            if let Some(state) = table.get_mut(&(), key)?.and_then(|s| s.get_mut(i)) {
                state.acc = None;
            }
        }
        Ok(())
    }

    /// Merges `window` with the key's overlapping windows (sessions); returns the merged one.
    fn merge_windows(&mut self, key: &K, window: TimeWindow) -> Result<TimeWindow> {
        let mut merged = window;
        let taken = {
            let mut table = self.windows.get()?.lock();
            let states = table.get_or_insert_with(&(), key.clone(), Vec::new)?;
            let mut taken = Vec::new();
            let mut i = 0;
            while i < states.len() {
                if states[i].window.overlaps(&window) {
                    merged = merged.span(&states[i].window);
                    taken.push(states.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            if taken.len() == 1 && taken[0].window == merged {
                states.extend(taken);
                return Ok(merged);
            }
            taken
        };
        let mut acc: Option<W::Acc> = None;
        let mut trigger_state = Tr::State::default();
        let mut old_windows = Vec::with_capacity(taken.len());
        for old in taken {
            match (&mut acc, old.acc) {
                (Some(a), Some(b)) => self.function.merge(a, b),
                (None, b) => acc = b,
                (Some(_), None) => {}
            }
            self.trigger.merge_state(&mut trigger_state, old.trigger);
            old_windows.push(old.window);
        }
        for old in &old_windows {
            let mut unused = Tr::State::default();
            self.prepare_trigger_ctx();
            self.trigger.clear(old, &mut unused, &mut self.tctx);
            self.apply_requests(key, old)?;
            let at = self.cleanup_time(old);
            self.event_timers.delete(at, key.clone(), *old)?;
            self.processing_timers.delete(at, key.clone(), *old)?;
        }
        if !old_windows.is_empty() {
            self.prepare_trigger_ctx();
            self.trigger
                .on_merge(&merged, &mut trigger_state, &mut self.tctx);
            self.apply_requests(key, &merged)?;
        }
        let mut table = self.windows.get()?.lock();
        let states = table.get_or_insert_with(&(), key.clone(), Vec::new)?;
        states.push(WinState {
            window: merged,
            acc,
            trigger: trigger_state,
        });
        Ok(merged)
    }

    /// Adds a record to window `window` of `key` and asks the trigger.
    fn add_to_window(
        &mut self,
        key: &K,
        window: TimeWindow,
        value: T,
        ts: Timestamp,
    ) -> Result<()> {
        let (i, result) = {
            let GeneralWindowOp {
                function,
                trigger,
                windows,
                tctx,
                watermark,
                ctx,
                ..
            } = self;
            let mut table = windows.get()?.lock();
            let states = match table.get_mut(&(), key)? {
                Some(states) => states,
                None => table.get_or_insert_with(&(), key.clone(), Vec::new)?,
            };
            let i = match find(states, &window) {
                Some(i) => i,
                None => {
                    states.push(WinState {
                        window,
                        acc: None,
                        trigger: Tr::State::default(),
                    });
                    states.len() - 1
                }
            };
            let state = &mut states[i];
            let acc = state.acc.get_or_insert_with(|| function.create());
            function.add(acc, value.clone(), ts);
            prepare(tctx, *watermark, ctx);
            let result = trigger.on_element(&value, ts, &window, &mut state.trigger, tctx);
            (i, result)
        };
        self.apply_requests(key, &window)?;
        self.register_cleanup(key, &window)?;
        self.act(key, i, result)
    }

    /// A timer of (`key`, `window`) fired at `time`.
    fn on_timer(
        &mut self,
        key: K,
        window: TimeWindow,
        time: i64,
        domain: TimeDomain,
    ) -> Result<()> {
        let (i, mut trigger_state) = {
            let mut table = self.windows.get()?.lock();
            let Some(states) = table.get_mut(&(), &key)? else {
                return Ok(());
            };
            let Some(i) = find(states, &window) else {
                return Ok(());
            };
            (i, std::mem::take(&mut states[i].trigger))
        };
        self.prepare_trigger_ctx();
        let (trigger, ctx) = (&mut self.trigger, &mut self.tctx);
        let result = match domain {
            TimeDomain::EventTime => trigger.on_event_time(time, &window, &mut trigger_state, ctx),
            TimeDomain::ProcessingTime => {
                trigger.on_processing_time(time, &window, &mut trigger_state, ctx)
            }
        };
        self.apply_requests(&key, &window)?;
        let cleanup = time == self.cleanup_time(&window)
            && (domain == TimeDomain::EventTime) == self.event_time();
        self.act(&key, i, result)?;
        if cleanup {
            self.prepare_trigger_ctx();
            self.trigger
                .clear(&window, &mut trigger_state, &mut self.tctx);
            self.apply_requests(&key, &window)?;
            let mut table = self.windows.get()?.lock();
            let emptied = match table.get_mut(&(), &key)? {
                Some(states) => {
                    states.swap_remove(i);
                    states.is_empty()
                }
                None => false,
            };
            if emptied {
                table.remove(&(), &key)?;
            }
        } else {
            let mut table = self.windows.get()?.lock();
            if let Some(state) = table.get_mut(&(), &key)?.and_then(|s| s.get_mut(i)) {
                state.trigger = trigger_state;
            }
        }
        Ok(())
    }

    fn fire_timers(&mut self, domain: TimeDomain, up_to: i64) -> Result<()> {
        loop {
            let due = match domain {
                TimeDomain::EventTime => self.event_timers.pop_due(up_to)?,
                TimeDomain::ProcessingTime => self.processing_timers.pop_due(up_to)?,
            };
            let Some((time, key, window)) = due else {
                break;
            };
            self.on_timer(key, window, time, domain)?;
        }
        if domain == TimeDomain::ProcessingTime {
            self.request_next_processing_timer()?;
        }
        Ok(())
    }

    fn late_record(&mut self, key: K, value: T, ts: Timestamp) -> Result<()> {
        if !self.late.emit((key, value), ts)? {
            self.ctx.count_late_dropped(1);
        }
        Ok(())
    }

    fn check(&mut self) -> Result<()> {
        match self.broken.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<W, Tr, K, T, C> Collector<(K, Combined<T, W::Acc>)> for GeneralWindowOp<W, Tr, K, T, C>
where
    W: WindowFunction<K, T>,
    Tr: Trigger<T>,
    K: Key,
    T: Clone,
    C: Collector<W::Out>,
{
    fn collect(&mut self, (key, value): (K, Combined<T, W::Acc>), ts: Timestamp) -> Result<()> {
        self.check()?;
        let Combined::Raw(value) = value else {
            return Err(crate::Error::Config(
                "internal: a partial window accumulator reached a window that is not sliced".into(),
            ));
        };
        // Global windows hold everything: they need no time (Flink's `GlobalWindows`).
        let global = self.assigner == WindowAssigner::Global;
        let event = self.event_time() && !global;
        let time = match event {
            true if !is_event_time(ts) => return Err(no_timestamp_error(ts)),
            true => ts,
            false => self.ctx.processing_time_ms(),
        };
        let horizon = self.watermark.max(self.ctx.input_watermark()).0;
        let lateness = self.lateness;
        let mut assigned = std::mem::take(&mut self.assigned);
        assigned.clear();
        if self.assigner.is_merging() {
            // See the module docs of `window`: a session record behind the watermark is late.
            if event && time.saturating_add(lateness) <= horizon {
                self.assigned = assigned;
                return self.late_record(key, value, ts);
            }
            self.assigner.assign(time, &mut assigned);
            match self.merge_windows(&key, assigned[0]) {
                Ok(merged) => assigned[0] = merged,
                Err(e) => {
                    self.assigned = assigned;
                    return Err(e);
                }
            }
        } else {
            self.assigner.assign(time, &mut assigned);
            if event {
                assigned.retain(|w| w.max_timestamp().saturating_add(lateness) > horizon);
            }
            if assigned.is_empty() {
                self.assigned = assigned;
                return self.late_record(key, value, ts);
            }
        }
        let result = assigned
            .iter()
            .try_for_each(|&w| self.add_to_window(&key, w, value.clone(), ts));
        self.assigned = assigned;
        result
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        self.check()?;
        if watermark > self.watermark {
            self.watermark = watermark;
            self.fire_timers(TimeDomain::EventTime, watermark.0)?;
            if watermark == Watermark::MAX {
                // The input ended: processing-time windows fire now rather than never.
                self.fire_timers(TimeDomain::ProcessingTime, i64::MAX)?;
            }
        }
        self.next.on_watermark(watermark)
    }
    fn on_processing_time(&mut self, now_ms: i64) -> Result<()> {
        self.check()?;
        self.fire_timers(TimeDomain::ProcessingTime, now_ms)?;
        self.next.on_processing_time(now_ms)
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.check()?;
        self.progress.save(&self.watermark.0)?;
        self.next.on_barrier(barrier)
    }
    crate::forward_hooks!(on_status, flush, on_end);
}
