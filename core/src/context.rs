//! [`OperatorContext`]: what an operator instance sees of the stage and worker it runs in.
//!
//! A stage's driver makes one context per stage instance and hands it to every operator of the
//! chain when the chain is attached ([`Pipe::attach`](crate::chain::Pipe::attach)). Through it
//! an operator reads processing time and asks to be called back at a processing-time instant,
//! learns the watermark of the input the current records arrived on (so that lateness is
//! judged per input, independently of how fast other inputs are), writes side outputs, and
//! counts what it drops.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::FastMap;
use crate::chain::Collector;
use crate::clock::{Clock, SystemClock};
use crate::element::{Timestamp, Watermark};
use crate::error::Result;
use crate::key::KeyGroups;
use crate::metrics::JobMetrics;
use crate::state::StageState;

/// Processing-time callbacks one stage instance may have pending at once (Flink keeps one
/// timer per key and window; Sluice coalesces per instant, so this bounds distinct instants).
pub const PROCESSING_DEADLINES_MAX: usize = 1 << 20;

/// Names a side output of an operator, and the type of its records (Flink's `OutputTag`).
///
/// ```
/// use sluice_core::context::OutputTag;
/// let late: OutputTag<String> = OutputTag::new("late");
/// assert_eq!(late.name(), "late");
/// assert_ne!(late.id(), OutputTag::<String>::new("late").id()); // every tag is distinct
/// ```
pub struct OutputTag<T> {
    id: u64,
    name: Arc<str>,
    _t: PhantomData<fn(T)>,
}

impl<T> Clone for OutputTag<T> {
    fn clone(&self) -> Self {
        OutputTag {
            id: self.id,
            name: self.name.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for OutputTag<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutputTag({})", self.name)
    }
}

impl<T> OutputTag<T> {
    /// A new tag; two tags are never equal, even with the same name.
    pub fn new(name: impl Into<Arc<str>>) -> OutputTag<T> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        OutputTag {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            _t: PhantomData,
        }
    }
    /// The tag's unique id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The tag's name, for plans.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// An operator's handle on one of its side outputs. Emitting to a side output that no stream
/// reads drops the record (and counts it, for late data).
pub struct SideOutput<T> {
    port: Option<Rc<RefCell<dyn Collector<T>>>>,
}

impl<T> Clone for SideOutput<T> {
    fn clone(&self) -> Self {
        SideOutput {
            port: self.port.clone(),
        }
    }
}

impl<T> SideOutput<T> {
    /// A side output that drops what it is given.
    pub fn discard() -> SideOutput<T> {
        SideOutput { port: None }
    }
    /// Whether some stream reads this side output.
    pub fn is_connected(&self) -> bool {
        self.port.is_some()
    }
    /// Emits a record with its timestamp; returns whether it went anywhere.
    #[inline]
    pub fn emit(&self, record: T, ts: Timestamp) -> Result<bool> {
        match &self.port {
            Some(port) => port.borrow_mut().collect(record, ts).map(|()| true),
            None => Ok(false),
        }
    }
}

struct Inner {
    worker: usize,
    workers: usize,
    key_groups: KeyGroups,
    stage: String,
    input_watermark: Cell<Watermark>,
    /// Distinct pending instants: requests for one instant (every key of a processing-time
    /// window asks for its end) share an entry.
    deadlines: RefCell<BTreeSet<i64>>,
    clock: SystemClock,
    sides: FastMap<u64, Rc<dyn Any>>,
    metrics: Arc<JobMetrics>,
    periodic_watermarks: bool,
    state: Option<Rc<StageState>>,
    /// A standalone context's store in memory, opened at first use.
    memory_state: Option<std::cell::OnceCell<Rc<StageState>>>,
}

/// What an operator instance sees of where it runs. Cheap to clone: operators that need it
/// while running keep a clone.
#[derive(Clone)]
pub struct OperatorContext {
    inner: Rc<Inner>,
}

/// How a stage's driver builds an [`OperatorContext`].
pub struct ContextBuilder {
    /// This worker's index.
    pub worker: usize,
    /// The job's key groups over its workers.
    pub key_groups: KeyGroups,
    /// The stage's name, for errors.
    pub stage: String,
    /// The job's counters.
    pub metrics: Arc<JobMetrics>,
    /// Whether watermark generators should also emit on a wall-clock period (a stage fed by an
    /// unbounded source, where records may trickle).
    pub periodic_watermarks: bool,
    /// The stage instance's state store, if its operators keep keyed state.
    pub state: Option<Rc<StageState>>,
    /// Without a store, keep state in memory (operators tested on their own) instead of
    /// treating state access as a bug.
    pub memory_state: bool,
    sides: FastMap<u64, Rc<dyn Any>>,
}

impl ContextBuilder {
    /// A builder for worker `worker`'s instance of stage `stage`.
    pub fn new(
        worker: usize,
        key_groups: KeyGroups,
        stage: &str,
        metrics: Arc<JobMetrics>,
    ) -> Self {
        ContextBuilder {
            worker,
            key_groups,
            stage: stage.to_owned(),
            metrics,
            periodic_watermarks: false,
            state: None,
            memory_state: false,
            sides: FastMap::default(),
        }
    }

    /// Connects side output `tag_id` to `port`, where the records emitted to it go.
    pub fn side_output<T: 'static>(&mut self, tag_id: u64, port: Rc<RefCell<dyn Collector<T>>>) {
        // Stored as `Rc<dyn Any>` holding the typed port, so operators can recover its type.
        self.sides.insert(tag_id, Rc::new(port));
    }

    /// The context.
    pub fn build(self) -> OperatorContext {
        OperatorContext {
            inner: Rc::new(Inner {
                worker: self.worker,
                workers: self.key_groups.workers() as usize,
                key_groups: self.key_groups,
                stage: self.stage,
                input_watermark: Cell::new(Watermark::MIN),
                deadlines: RefCell::new(BTreeSet::new()),
                clock: SystemClock::new(),
                sides: self.sides,
                metrics: self.metrics,
                periodic_watermarks: self.periodic_watermarks,
                state: self.state,
                memory_state: self.memory_state.then(std::cell::OnceCell::new),
            }),
        }
    }
}

impl OperatorContext {
    /// A context for tests and examples that run a chain without a runtime: worker 0 of 1.
    pub fn standalone() -> OperatorContext {
        let key_groups = KeyGroups::new(crate::key::KEY_GROUPS_DEFAULT, 1)
            .unwrap_or_else(|_| unreachable!("128 key groups over 1 worker is valid"));
        let mut builder =
            ContextBuilder::new(0, key_groups, "standalone", Arc::new(JobMetrics::new(1)));
        builder.memory_state = true;
        builder.build()
    }

    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.inner.worker
    }
    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }
    /// The job's key groups over its workers.
    pub fn key_groups(&self) -> KeyGroups {
        self.inner.key_groups
    }
    /// The stage's name.
    pub fn stage(&self) -> &str {
        &self.inner.stage
    }

    /// Processing time: milliseconds since the Unix epoch.
    pub fn processing_time_ms(&self) -> i64 {
        self.inner.clock.now_ms() as i64
    }

    /// Microseconds since the stage instance started, from a monotonic clock: for durations.
    pub fn monotonic_us(&self) -> u64 {
        self.inner.clock.elapsed().as_micros() as u64
    }

    /// Asks for a call of [`Collector::on_processing_time`] on the chain once processing time
    /// reaches `at_ms`. Calls for the same instant are coalesced into one; spurious calls are
    /// harmless (operators check their own deadlines).
    pub fn request_processing_time(&self, at_ms: i64) {
        let mut deadlines = self.inner.deadlines.borrow_mut();
        if deadlines.contains(&at_ms) {
            return;
        }
        assert!(
            deadlines.len() < PROCESSING_DEADLINES_MAX,
            "pending processing-time deadlines={} max={PROCESSING_DEADLINES_MAX}",
            deadlines.len()
        );
        deadlines.insert(at_ms);
    }

    /// The earliest pending processing-time deadline (for the driver).
    pub fn next_deadline(&self) -> Option<i64> {
        self.inner.deadlines.borrow().first().copied()
    }

    /// Removes every deadline at or before `now_ms`; returns whether there was one (for the
    /// driver, which then calls `on_processing_time`).
    pub fn take_due(&self, now_ms: i64) -> bool {
        let mut deadlines = self.inner.deadlines.borrow_mut();
        let mut due = false;
        while deadlines.first().is_some_and(|t| *t <= now_ms) {
            deadlines.pop_first();
            due = true;
        }
        due
    }

    /// The watermark that preceded the current records on the input they arrived on (set by
    /// the driver before each batch; never below the operator's combined watermark). Lateness
    /// is judged against it, so that it does not depend on how far other inputs have got.
    pub fn input_watermark(&self) -> Watermark {
        self.inner.input_watermark.get()
    }

    /// Sets [`input_watermark`](Self::input_watermark) (for the driver).
    pub fn set_input_watermark(&self, watermark: Watermark) {
        self.inner.input_watermark.set(watermark);
    }

    /// Whether watermark generators in this stage should also emit on a wall-clock period.
    pub fn periodic_watermarks(&self) -> bool {
        self.inner.periodic_watermarks
    }

    /// The stage instance's state store. Present in a job when the chain's
    /// [`Pipe::uses_state`](crate::chain::Pipe::uses_state) said so; a
    /// [standalone](Self::standalone) context keeps its state in memory.
    ///
    /// # Panics
    /// If the chain uses state but did not say so (a bug in the operator).
    pub fn state(&self) -> &StageState {
        if let Some(state) = self.inner.state.as_deref() {
            return state;
        }
        let Some(memory) = &self.inner.memory_state else {
            panic!("an operator uses keyed state without declaring it (Pipe::uses_state)")
        };
        memory.get_or_init(|| {
            let state = StageState::in_memory(self.inner.key_groups)
                .unwrap_or_else(|e| panic!("a state store in memory: {e}"));
            Rc::new(state)
        })
    }

    /// The side output `tag` of this stage, or a discarding one if no stream reads it.
    ///
    /// # Panics
    /// If the tag was connected with a different record type (a bug in the API layer: tags
    /// are typed).
    pub fn side_output<T: 'static>(&self, tag_id: u64) -> SideOutput<T> {
        let Some(any) = self.inner.sides.get(&tag_id) else {
            return SideOutput::discard();
        };
        let port = any
            .clone()
            .downcast::<Rc<RefCell<dyn Collector<T>>>>()
            .unwrap_or_else(|_| panic!("side output {tag_id} connected with another type"));
        SideOutput {
            port: Some((*port).clone()),
        }
    }

    /// Counts records dropped because they were late and no side output took them.
    pub fn count_late_dropped(&self, records: u64) {
        self.inner
            .metrics
            .worker(self.inner.worker)
            .add_late_dropped(records);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of a processing-time window asks for the window's end: a million keys must
    /// not fill the bounded deadline queue (q12 of Nexmark on 20 M events did).
    #[test]
    fn processing_time_requests_for_one_instant_share_an_entry() {
        let ctx = OperatorContext::standalone();
        for _ in 0..2 * PROCESSING_DEADLINES_MAX {
            ctx.request_processing_time(1_000);
        }
        ctx.request_processing_time(500);
        assert_eq!(ctx.inner.deadlines.borrow().len(), 2);
        assert_eq!(ctx.next_deadline(), Some(500));
        assert!(ctx.take_due(999));
        assert_eq!(ctx.next_deadline(), Some(1_000));
        assert!(!ctx.take_due(999));
        assert!(ctx.take_due(1_000));
        assert_eq!(ctx.next_deadline(), None);
        // Asked again after it was taken, the instant is pending again.
        ctx.request_processing_time(1_000);
        assert_eq!(ctx.next_deadline(), Some(1_000));
    }
}
