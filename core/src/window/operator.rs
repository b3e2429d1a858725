//! [`WindowOperator`]: the pipe of a windowed keyed stream, which picks the implementation
//! that fits its assigner and trigger when it is attached — sliced, session, or general — and
//! dispatches to it once per call (a predictable branch). Its input is `(key, Combined)`:
//! records, or partial accumulators from a [`WindowCombiner`](crate::window::WindowCombiner)
//! before the exchange.

use std::marker::PhantomData;

use crate::chain::{Collector, Pipe};
use crate::context::OperatorContext;
use crate::element::{CheckpointBarrier, Timestamp, Watermark, WatermarkStatus};
use crate::error::Result;
use crate::key::Key;
use crate::window::combine::Combined;
use crate::window::function::WindowFunction;
use crate::window::general::{GeneralWindow, GeneralWindowOp};
use crate::window::session::{SessionWindow, SessionWindowOp};
use crate::window::sliced::{SliceSpec, SlicedWindow, SlicedWindowOp};
use crate::window::trigger::Trigger;
use crate::window::{TimeCharacteristic, WindowAssigner};

/// A window operator: assigner, trigger, window function, lateness and late-data output.
pub struct WindowOperator<W, Tr, K, T> {
    function: W,
    trigger: Tr,
    /// Whether `trigger` is the assigner's default (then the fast implementations apply).
    default_trigger: bool,
    assigner: WindowAssigner,
    allowed_lateness: i64,
    late_tag: Option<u64>,
    _p: PhantomData<fn(K, T)>,
}

impl<W: Clone, Tr: Clone, K, T> Clone for WindowOperator<W, Tr, K, T> {
    fn clone(&self) -> Self {
        WindowOperator {
            function: self.function.clone(),
            trigger: self.trigger.clone(),
            default_trigger: self.default_trigger,
            assigner: self.assigner,
            allowed_lateness: self.allowed_lateness,
            late_tag: self.late_tag,
            _p: PhantomData,
        }
    }
}

impl<W, Tr, K, T> WindowOperator<W, Tr, K, T> {
    /// Windows of `assigner` computed by `function`, fired by `trigger` (`default_trigger`:
    /// it is the assigner's own), keeping windows `allowed_lateness` ms after they fire, late
    /// records to side output `late_tag`.
    pub fn new(
        assigner: WindowAssigner,
        function: W,
        trigger: Tr,
        default_trigger: bool,
        allowed_lateness: i64,
        late_tag: Option<u64>,
    ) -> Self {
        assert!(allowed_lateness >= 0, "allowed_lateness={allowed_lateness}");
        WindowOperator {
            function,
            trigger,
            default_trigger,
            assigner,
            allowed_lateness,
            late_tag,
            _p: PhantomData,
        }
    }
}

/// Which implementation a window operator gets.
enum FastPath {
    Sliced(SliceSpec),
    Session(i64),
    None,
}

fn fast_path(default_trigger: bool, assigner: &WindowAssigner) -> FastPath {
    use TimeCharacteristic::EventTime;
    match *assigner {
        _ if !default_trigger || assigner.time() != EventTime => FastPath::None,
        WindowAssigner::Tumbling { size, offset, .. } => {
            FastPath::Sliced(SliceSpec::new(size, size, offset))
        }
        WindowAssigner::Sliding {
            size,
            slide,
            offset,
            ..
        } => FastPath::Sliced(SliceSpec::new(size, slide, offset)),
        WindowAssigner::Session { gap, .. } => FastPath::Session(gap),
        WindowAssigner::Global => FastPath::None,
    }
}

/// The instantiated [`WindowOperator`].
pub enum WindowOperatorOp<W: WindowFunction<K, T>, Tr: Trigger<T>, K, T, C> {
    /// Tumbling and sliding event-time windows.
    Sliced(SlicedWindowOp<W, K, T, C>),
    /// Event-time sessions.
    Session(SessionWindowOp<W, K, T, C>),
    /// Anything else.
    General(GeneralWindowOp<W, Tr, K, T, C>),
}

macro_rules! each {
    ($self:ident, $op:ident => $call:expr) => {
        match $self {
            WindowOperatorOp::Sliced($op) => $call,
            WindowOperatorOp::Session($op) => $call,
            WindowOperatorOp::General($op) => $call,
        }
    };
}

impl<W, Tr, K, T, C> Collector<(K, Combined<T, W::Acc>)> for WindowOperatorOp<W, Tr, K, T, C>
where
    W: WindowFunction<K, T>,
    Tr: Trigger<T>,
    K: Key,
    T: Clone,
    C: Collector<W::Out>,
{
    #[inline]
    fn collect(&mut self, record: (K, Combined<T, W::Acc>), ts: Timestamp) -> Result<()> {
        each!(self, op => op.collect(record, ts))
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        each!(self, op => op.on_watermark(watermark))
    }
    fn on_status(&mut self, status: WatermarkStatus) -> Result<()> {
        each!(self, op => op.on_status(status))
    }
    fn on_processing_time(&mut self, now_ms: i64) -> Result<()> {
        each!(self, op => op.on_processing_time(now_ms))
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        each!(self, op => op.on_barrier(barrier))
    }
    fn flush(&mut self) -> Result<()> {
        each!(self, op => op.flush())
    }
    fn on_end(&mut self) -> Result<()> {
        each!(self, op => op.on_end())
    }
    #[inline]
    fn prefetch(&mut self, records: &[(K, Combined<T, W::Acc>)], timestamps: &[Timestamp]) {
        each!(self, op => op.prefetch(records, timestamps))
    }
    #[inline]
    fn prefetches(&self) -> bool {
        each!(self, op => op.prefetches())
    }
}

impl<W, Tr, K, T> Pipe<(K, Combined<T, W::Acc>)> for WindowOperator<W, Tr, K, T>
where
    W: WindowFunction<K, T>,
    Tr: Trigger<T>,
    K: Key,
    T: Clone + 'static,
{
    type Out = W::Out;
    type Op<C: Collector<W::Out>> = WindowOperatorOp<W, Tr, K, T, C>;

    fn attach<C: Collector<W::Out>>(self, next: C, ctx: &OperatorContext) -> Self::Op<C> {
        let (function, allowed_lateness, late_tag) =
            (self.function, self.allowed_lateness, self.late_tag);
        match fast_path(self.default_trigger, &self.assigner) {
            FastPath::Sliced(spec) => {
                let op = SlicedWindow {
                    function,
                    spec,
                    allowed_lateness,
                    late_tag,
                    _p: PhantomData,
                };
                WindowOperatorOp::Sliced(op.instantiate(next, ctx))
            }
            FastPath::Session(gap) => {
                let op = SessionWindow {
                    function,
                    gap,
                    allowed_lateness,
                    late_tag,
                    _p: PhantomData,
                };
                WindowOperatorOp::Session(op.instantiate(next, ctx))
            }
            FastPath::None => {
                let op = GeneralWindow {
                    function,
                    trigger: self.trigger,
                    assigner: self.assigner,
                    allowed_lateness,
                    late_tag,
                    _p: PhantomData,
                };
                WindowOperatorOp::General(op.instantiate(next, ctx))
            }
        }
    }

    fn names(&self, out: &mut Vec<String>) {
        let trigger = if self.default_trigger {
            String::new()
        } else {
            format!(", trigger {}", self.trigger.name())
        };
        out.push(format!("window({}{trigger})", self.assigner.describe()));
    }

    fn uses_state(&self) -> bool {
        true
    }
}
