//! A harness that runs an operator chain without a runtime: push records and control elements
//! in, read what came out. For unit tests and doctests of operators.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::chain::{Collector, Outbox, OutboxRef, Pipe, SinkTail};
use crate::context::{ContextBuilder, OperatorContext};
use crate::element::{CheckpointBarrier, StreamElement, Timestamp, Watermark, WatermarkStatus};
use crate::error::Result;
use crate::key::{KEY_GROUPS_DEFAULT, KeyGroups};
use crate::metrics::JobMetrics;

/// A collector that keeps what it is given, for side outputs in tests.
#[derive(Debug)]
pub struct Captured<T> {
    /// The records and their timestamps, in order.
    pub records: Vec<(T, Timestamp)>,
}

impl<T> Default for Captured<T> {
    fn default() -> Self {
        Captured {
            records: Vec::new(),
        }
    }
}

impl<T> Collector<T> for Captured<T> {
    fn collect(&mut self, record: T, ts: Timestamp) -> Result<()> {
        self.records.push((record, ts));
        Ok(())
    }
    fn on_watermark(&mut self, _watermark: Watermark) -> Result<()> {
        Ok(())
    }
    fn on_status(&mut self, _status: WatermarkStatus) -> Result<()> {
        Ok(())
    }
    fn on_processing_time(&mut self, _now_ms: i64) -> Result<()> {
        Ok(())
    }
    fn on_barrier(&mut self, _barrier: CheckpointBarrier) -> Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn on_end(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A standalone context (worker 0 of 1) whose side output `tag_id` is captured.
pub fn context_capturing<T: 'static>(tag_id: u64) -> (OperatorContext, Rc<RefCell<Captured<T>>>) {
    let key_groups = KeyGroups::new(KEY_GROUPS_DEFAULT, 1)
        .unwrap_or_else(|_| unreachable!("128 key groups over 1 worker is valid"));
    let mut builder = ContextBuilder::new(0, key_groups, "test", Arc::new(JobMetrics::new(1)));
    builder.memory_state = true;
    let captured = Rc::new(RefCell::new(Captured::default()));
    let port: Rc<RefCell<dyn Collector<T>>> = captured.clone();
    builder.side_output(tag_id, port);
    (builder.build(), captured)
}

/// A chain `P` attached in front of a collecting tail.
pub struct Harness<In, P: Pipe<In>> {
    chain: P::Op<SinkTail<P::Out>>,
    outbox: OutboxRef<P::Out>,
    ctx: OperatorContext,
}

impl<In, P: Pipe<In>> Harness<In, P> {
    /// `pipe` on a standalone context (worker 0 of 1).
    pub fn new(pipe: P) -> Self {
        Harness::with_context(pipe, OperatorContext::standalone())
    }

    /// `pipe` on `ctx`.
    pub fn with_context(pipe: P, ctx: OperatorContext) -> Self {
        let outbox = Outbox::new_ref();
        let chain = pipe.attach(SinkTail::new(outbox.clone()), &ctx);
        Harness { chain, outbox, ctx }
    }

    /// The context the chain runs in.
    pub fn context(&self) -> &OperatorContext {
        &self.ctx
    }

    /// Pushes one record.
    pub fn record(&mut self, record: In, ts: Timestamp) -> Result<()> {
        self.chain.collect(record, ts)
    }

    /// Pushes a record that arrived on an input whose watermark is `input_watermark`.
    pub fn record_on(&mut self, record: In, ts: Timestamp, input_watermark: i64) -> Result<()> {
        self.ctx.set_input_watermark(Watermark(input_watermark));
        self.chain.collect(record, ts)
    }

    /// Advances the watermark.
    pub fn watermark(&mut self, w: i64) -> Result<()> {
        self.chain.on_watermark(Watermark(w))
    }

    /// Changes the watermark status.
    pub fn status(&mut self, status: WatermarkStatus) -> Result<()> {
        self.chain.on_status(status)
    }

    /// Signals processing time `now_ms`.
    pub fn processing_time(&mut self, now_ms: i64) -> Result<()> {
        self.chain.on_processing_time(now_ms)
    }

    /// Ends the input: the final watermark, then the end.
    pub fn end(&mut self) -> Result<()> {
        self.chain.on_watermark(Watermark::MAX)?;
        self.chain.on_end()
    }

    /// Everything the chain emitted since the last call, in order (partial batches flushed).
    pub fn take_elements(&mut self) -> Vec<StreamElement<P::Out>> {
        let _ = self.chain.flush();
        std::iter::from_fn(|| self.outbox.borrow_mut().pop())
            .map(|(_, e)| e)
            .collect()
    }

    /// The records emitted since the last call, with their timestamps.
    pub fn take_timestamped(&mut self) -> Vec<(P::Out, Timestamp)> {
        let mut out = Vec::new();
        for e in self.take_elements() {
            if let StreamElement::Records(mut b) = e {
                let _ = b.drain_each(|r, ts| {
                    out.push((r, ts));
                    Ok::<(), ()>(())
                });
            }
        }
        out
    }

    /// The records emitted since the last call.
    pub fn take_records(&mut self) -> Vec<P::Out> {
        self.take_timestamped()
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }
}
