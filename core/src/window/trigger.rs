//! Triggers: when a window emits its result (Flink's `Trigger`).
//!
//! A trigger sees every record added to a window and the timers it registered, and answers
//! with a [`TriggerResult`]: keep going, fire (emit the window's current result), purge (drop
//! its contents), or both. It keeps a small state per key and window (a count, say) and
//! registers event-time or processing-time timers through its [`TriggerContext`].

use crate::element::Timestamp;
use crate::process::TimeDomain;
use crate::state::StateCodec;
use crate::window::{TimeCharacteristic, TimeWindow, WindowAssigner};

/// What a trigger decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerResult {
    /// Nothing happens.
    Continue,
    /// The window emits its result and keeps its contents.
    Fire,
    /// The window's contents are dropped.
    Purge,
    /// The window emits its result, then its contents are dropped.
    FireAndPurge,
}

impl TriggerResult {
    /// Whether the window emits.
    pub fn fires(self) -> bool {
        matches!(self, TriggerResult::Fire | TriggerResult::FireAndPurge)
    }
    /// Whether the window's contents are dropped.
    pub fn purges(self) -> bool {
        matches!(self, TriggerResult::Purge | TriggerResult::FireAndPurge)
    }
}

/// A timer operation a trigger asked for; the operator applies it for the trigger's key and
/// window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerRequest {
    /// Register a timer.
    Register(TimeDomain, i64),
    /// Delete a timer.
    Delete(TimeDomain, i64),
}

/// What a trigger sees of time, and where it registers timers.
#[derive(Debug, Default)]
pub struct TriggerContext {
    pub(crate) watermark: i64,
    pub(crate) processing_time: i64,
    pub(crate) requests: Vec<TimerRequest>,
}

impl TriggerContext {
    /// The operator's current event-time watermark.
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }
    /// The current processing time.
    pub fn current_processing_time(&self) -> i64 {
        self.processing_time
    }
    /// Calls `on_event_time` when the watermark reaches `time`.
    pub fn register_event_time_timer(&mut self, time: i64) {
        self.requests
            .push(TimerRequest::Register(TimeDomain::EventTime, time));
    }
    /// Calls `on_processing_time` when processing time reaches `time`.
    pub fn register_processing_time_timer(&mut self, time: i64) {
        self.requests
            .push(TimerRequest::Register(TimeDomain::ProcessingTime, time));
    }
    /// Deletes an event-time timer.
    pub fn delete_event_time_timer(&mut self, time: i64) {
        self.requests
            .push(TimerRequest::Delete(TimeDomain::EventTime, time));
    }
    /// Deletes a processing-time timer.
    pub fn delete_processing_time_timer(&mut self, time: i64) {
        self.requests
            .push(TimerRequest::Delete(TimeDomain::ProcessingTime, time));
    }
}

/// Decides when a window fires (Flink's `Trigger`).
pub trait Trigger<T>: Clone + Send + Sync + 'static {
    /// Kept per key and window (in the state store, so storable).
    type State: Default + StateCodec;
    /// A record was added to `window`.
    fn on_element(
        &mut self,
        record: &T,
        ts: Timestamp,
        window: &TimeWindow,
        state: &mut Self::State,
        ctx: &mut TriggerContext,
    ) -> TriggerResult;
    /// An event-time timer of `window` fired.
    fn on_event_time(
        &mut self,
        time: i64,
        window: &TimeWindow,
        state: &mut Self::State,
        ctx: &mut TriggerContext,
    ) -> TriggerResult;
    /// A processing-time timer of `window` fired.
    fn on_processing_time(
        &mut self,
        time: i64,
        window: &TimeWindow,
        state: &mut Self::State,
        ctx: &mut TriggerContext,
    ) -> TriggerResult;
    /// Windows merged into `window` (sessions): combine their states into `into`.
    fn merge_state(&mut self, _into: &mut Self::State, _from: Self::State) {}
    /// `window` is the result of a merge: register what it needs.
    fn on_merge(
        &mut self,
        _window: &TimeWindow,
        _state: &mut Self::State,
        _ctx: &mut TriggerContext,
    ) {
    }
    /// `window` is gone: delete its timers.
    fn clear(&mut self, window: &TimeWindow, state: &mut Self::State, ctx: &mut TriggerContext);
    /// A short name for plans.
    fn name(&self) -> String;
}

/// Fires when the watermark passes the window's end; a record arriving after that (within
/// the allowed lateness) fires it again.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventTimeTrigger;

impl<T> Trigger<T> for EventTimeTrigger {
    type State = ();
    fn on_element(
        &mut self,
        _record: &T,
        _ts: Timestamp,
        window: &TimeWindow,
        _state: &mut (),
        ctx: &mut TriggerContext,
    ) -> TriggerResult {
        if window.max_timestamp() <= ctx.current_watermark() {
            TriggerResult::Fire
        } else {
            ctx.register_event_time_timer(window.max_timestamp());
            TriggerResult::Continue
        }
    }
    fn on_event_time(
        &mut self,
        time: i64,
        window: &TimeWindow,
        _state: &mut (),
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
        _state: &mut (),
        _ctx: &mut TriggerContext,
    ) -> TriggerResult {
        TriggerResult::Continue
    }
    fn on_merge(&mut self, window: &TimeWindow, _state: &mut (), ctx: &mut TriggerContext) {
        if window.max_timestamp() > ctx.current_watermark() {
            ctx.register_event_time_timer(window.max_timestamp());
        }
    }
    fn clear(&mut self, window: &TimeWindow, _state: &mut (), ctx: &mut TriggerContext) {
        ctx.delete_event_time_timer(window.max_timestamp());
    }
    fn name(&self) -> String {
        "event_time".to_owned()
    }
}

/// Fires when processing time passes the window's end.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessingTimeTrigger;

impl<T> Trigger<T> for ProcessingTimeTrigger {
    type State = ();
    fn on_element(
        &mut self,
        _record: &T,
        _ts: Timestamp,
        window: &TimeWindow,
        _state: &mut (),
        ctx: &mut TriggerContext,
    ) -> TriggerResult {
        ctx.register_processing_time_timer(window.max_timestamp());
        TriggerResult::Continue
    }
    fn on_event_time(
        &mut self,
        _time: i64,
        _window: &TimeWindow,
        _state: &mut (),
        _ctx: &mut TriggerContext,
    ) -> TriggerResult {
        TriggerResult::Continue
    }
    fn on_processing_time(
        &mut self,
        time: i64,
        window: &TimeWindow,
        _state: &mut (),
        _ctx: &mut TriggerContext,
    ) -> TriggerResult {
        if time >= window.max_timestamp() {
            TriggerResult::Fire
        } else {
            TriggerResult::Continue
        }
    }
    fn on_merge(&mut self, window: &TimeWindow, _state: &mut (), ctx: &mut TriggerContext) {
        ctx.register_processing_time_timer(window.max_timestamp());
    }
    fn clear(&mut self, window: &TimeWindow, _state: &mut (), ctx: &mut TriggerContext) {
        ctx.delete_processing_time_timer(window.max_timestamp());
    }
    fn name(&self) -> String {
        "processing_time".to_owned()
    }
}

/// Fires every `count` records of a window (Flink's `CountTrigger`).
#[derive(Clone, Copy, Debug)]
pub struct CountTrigger {
    count: u64,
}

impl CountTrigger {
    /// Fires every `count` records (at least 1).
    pub fn of(count: u64) -> CountTrigger {
        CountTrigger {
            count: count.max(1),
        }
    }
}

impl<T> Trigger<T> for CountTrigger {
    type State = u64;
    fn on_element(
        &mut self,
        _record: &T,
        _ts: Timestamp,
        _window: &TimeWindow,
        seen: &mut u64,
        _ctx: &mut TriggerContext,
    ) -> TriggerResult {
        *seen += 1;
        if *seen >= self.count {
            *seen = 0;
            TriggerResult::Fire
        } else {
            TriggerResult::Continue
        }
    }
    fn on_event_time(
        &mut self,
        _time: i64,
        _window: &TimeWindow,
        _seen: &mut u64,
        _ctx: &mut TriggerContext,
    ) -> TriggerResult {
        TriggerResult::Continue
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
    fn clear(&mut self, _window: &TimeWindow, seen: &mut u64, _ctx: &mut TriggerContext) {
        *seen = 0;
    }
    fn name(&self) -> String {
        format!("count({})", self.count)
    }
}

/// Turns every firing of the wrapped trigger into fire-and-purge (Flink's `PurgingTrigger`):
/// each result covers only the records since the previous one.
#[derive(Clone, Copy, Debug)]
pub struct PurgingTrigger<Tr>(pub Tr);

impl<Tr> PurgingTrigger<Tr> {
    /// Purges after every firing of `trigger`.
    pub fn of(trigger: Tr) -> PurgingTrigger<Tr> {
        PurgingTrigger(trigger)
    }
}

fn purging(result: TriggerResult) -> TriggerResult {
    if result.fires() {
        TriggerResult::FireAndPurge
    } else {
        result
    }
}

impl<T, Tr: Trigger<T>> Trigger<T> for PurgingTrigger<Tr> {
    type State = Tr::State;
    fn on_element(
        &mut self,
        record: &T,
        ts: Timestamp,
        window: &TimeWindow,
        state: &mut Tr::State,
        ctx: &mut TriggerContext,
    ) -> TriggerResult {
        purging(self.0.on_element(record, ts, window, state, ctx))
    }
    fn on_event_time(
        &mut self,
        time: i64,
        window: &TimeWindow,
        state: &mut Tr::State,
        ctx: &mut TriggerContext,
    ) -> TriggerResult {
        purging(self.0.on_event_time(time, window, state, ctx))
    }
    fn on_processing_time(
        &mut self,
        time: i64,
        window: &TimeWindow,
        state: &mut Tr::State,
        ctx: &mut TriggerContext,
    ) -> TriggerResult {
        purging(self.0.on_processing_time(time, window, state, ctx))
    }
    fn merge_state(&mut self, into: &mut Tr::State, from: Tr::State) {
        self.0.merge_state(into, from);
    }
    fn on_merge(&mut self, window: &TimeWindow, state: &mut Tr::State, ctx: &mut TriggerContext) {
        self.0.on_merge(window, state, ctx);
    }
    fn clear(&mut self, window: &TimeWindow, state: &mut Tr::State, ctx: &mut TriggerContext) {
        self.0.clear(window, state, ctx);
    }
    fn name(&self) -> String {
        format!("purging({})", self.0.name())
    }
}

/// Never fires (global windows without a trigger of their own).
#[derive(Clone, Copy, Debug, Default)]
pub struct NeverTrigger;

impl<T> Trigger<T> for NeverTrigger {
    type State = ();
    fn on_element(
        &mut self,
        _record: &T,
        _ts: Timestamp,
        _window: &TimeWindow,
        _state: &mut (),
        _ctx: &mut TriggerContext,
    ) -> TriggerResult {
        TriggerResult::Continue
    }
    fn on_event_time(
        &mut self,
        _time: i64,
        _window: &TimeWindow,
        _state: &mut (),
        _ctx: &mut TriggerContext,
    ) -> TriggerResult {
        TriggerResult::Continue
    }
    fn on_processing_time(
        &mut self,
        _time: i64,
        _window: &TimeWindow,
        _state: &mut (),
        _ctx: &mut TriggerContext,
    ) -> TriggerResult {
        TriggerResult::Continue
    }
    fn clear(&mut self, _window: &TimeWindow, _state: &mut (), _ctx: &mut TriggerContext) {}
    fn name(&self) -> String {
        "never".to_owned()
    }
}

/// The assigner's own trigger: event time for event-time windows, processing time for
/// processing-time windows, never for global windows.
#[derive(Clone, Copy, Debug)]
pub enum DefaultTrigger {
    /// [`EventTimeTrigger`].
    EventTime,
    /// [`ProcessingTimeTrigger`].
    ProcessingTime,
    /// [`NeverTrigger`].
    Never,
}

impl DefaultTrigger {
    /// The default trigger of `assigner`.
    pub fn of(assigner: &WindowAssigner) -> DefaultTrigger {
        match (assigner, assigner.time()) {
            (WindowAssigner::Global, _) => DefaultTrigger::Never,
            (_, TimeCharacteristic::EventTime) => DefaultTrigger::EventTime,
            (_, TimeCharacteristic::ProcessingTime) => DefaultTrigger::ProcessingTime,
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $t:ident => $call:expr) => {
        match $self {
            DefaultTrigger::EventTime => {
                let $t = &mut EventTimeTrigger;
                $call
            }
            DefaultTrigger::ProcessingTime => {
                let $t = &mut ProcessingTimeTrigger;
                $call
            }
            DefaultTrigger::Never => {
                let $t = &mut NeverTrigger;
                $call
            }
        }
    };
}

impl<T> Trigger<T> for DefaultTrigger {
    type State = ();
    fn on_element(
        &mut self,
        record: &T,
        ts: Timestamp,
        window: &TimeWindow,
        state: &mut (),
        ctx: &mut TriggerContext,
    ) -> TriggerResult {
        dispatch!(self, t => Trigger::<T>::on_element(t, record, ts, window, state, ctx))
    }
    fn on_event_time(
        &mut self,
        time: i64,
        window: &TimeWindow,
        state: &mut (),
        ctx: &mut TriggerContext,
    ) -> TriggerResult {
        dispatch!(self, t => Trigger::<T>::on_event_time(t, time, window, state, ctx))
    }
    fn on_processing_time(
        &mut self,
        time: i64,
        window: &TimeWindow,
        state: &mut (),
        ctx: &mut TriggerContext,
    ) -> TriggerResult {
        dispatch!(self, t => Trigger::<T>::on_processing_time(t, time, window, state, ctx))
    }
    fn on_merge(&mut self, window: &TimeWindow, state: &mut (), ctx: &mut TriggerContext) {
        dispatch!(self, t => Trigger::<T>::on_merge(t, window, state, ctx))
    }
    fn clear(&mut self, window: &TimeWindow, state: &mut (), ctx: &mut TriggerContext) {
        dispatch!(self, t => Trigger::<T>::clear(t, window, state, ctx))
    }
    fn name(&self) -> String {
        match self {
            DefaultTrigger::EventTime => "event_time",
            DefaultTrigger::ProcessingTime => "processing_time",
            DefaultTrigger::Never => "never",
        }
        .to_owned()
    }
}
