//! Inputs that stay open until a test lets them go, for tests of what happens *while* an input
//! is open: processing-time timers and windows that fire on a quiet stream, idle inputs that
//! stop holding back the watermark.
//!
//! - [`Gate`]: a flag a test releases — from the sink side, once the output it waits for has
//!   arrived, or from a watchdog after a generous time, which then makes the test fail;
//! - [`HeldSource`]: a source with one split that emits its first records, waits until its
//!   gate is released, then emits the rest and ends;
//! - [`WatchSink`]: a sink that keeps what arrives, with whether the gate was released by
//!   then, and releases the gate once what it holds satisfies a condition.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice::{
    Batch, ReadPosition, ReadStatus, Result, Sink, SinkContext, SinkWriter, Source, SourceContext,
    SourceReader,
};

/// A one-way flag: closed until released.
#[derive(Debug, Default)]
pub struct Gate {
    released: AtomicBool,
    by_watchdog: AtomicBool,
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }
    /// Opens the gate.
    pub fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }
    /// Whether the gate is open.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::SeqCst)
    }
    /// Whether the watchdog opened it (the awaited output never came).
    pub fn released_by_watchdog(&self) -> bool {
        self.by_watchdog.load(Ordering::SeqCst)
    }
    /// Starts a thread that opens the gate after `after` unless something else did first, and
    /// then records that the watchdog had to; the thread ends when the gate is open.
    pub fn watchdog(self: &Arc<Self>, after: Duration) -> std::thread::JoinHandle<()> {
        let gate = self.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !gate.is_released() {
                if started.elapsed() >= after {
                    gate.by_watchdog.store(true, Ordering::SeqCst);
                    gate.release();
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    }
    /// Opens the gate after `delay` on a thread of its own (not a failure).
    pub fn release_after(self: &Arc<Self>, delay: Duration) -> std::thread::JoinHandle<()> {
        let gate = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            gate.release();
        })
    }
}

/// A bounded source read by one worker: `first`, then a wait until `gate` is released, then
/// `rest`, then the end. Records carry no timestamp (assign them downstream).
pub struct HeldSource<T> {
    first: Arc<Vec<T>>,
    rest: Arc<Vec<T>>,
    gate: Arc<Gate>,
    done: Option<Arc<AtomicBool>>,
}

impl<T> HeldSource<T> {
    /// `first`, a wait for `gate`, then `rest`.
    pub fn new(first: Vec<T>, rest: Vec<T>, gate: Arc<Gate>) -> Self {
        HeldSource {
            first: Arc::new(first),
            rest: Arc::new(rest),
            gate,
            done: None,
        }
    }
    /// Also sets `done` once `first` has been handed to the job.
    pub fn signal_first_read(mut self, done: Arc<AtomicBool>) -> Self {
        self.done = Some(done);
        self
    }
}

/// Where a [`HeldReader`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    First,
    Waiting,
    Rest,
}

/// The reader of a [`HeldSource`].
pub struct HeldReader<T> {
    first: Arc<Vec<T>>,
    rest: Arc<Vec<T>>,
    gate: Arc<Gate>,
    done: Option<Arc<AtomicBool>>,
    phase: Phase,
    next: usize,
}

impl<T: Clone + Send + Sync + 'static> Source for HeldSource<T> {
    type Item = T;
    type Split = ();
    type Reader = HeldReader<T>;

    fn name(&self) -> String {
        "held".into()
    }
    fn is_bounded(&self) -> bool {
        true
    }
    fn splits(&self, _workers: usize) -> Result<Vec<()>> {
        Ok(vec![()])
    }
    async fn open(
        &self,
        _split: (),
        _start: Option<ReadPosition>,
        _ctx: &SourceContext,
    ) -> Result<HeldReader<T>> {
        Ok(HeldReader {
            first: self.first.clone(),
            rest: self.rest.clone(),
            gate: self.gate.clone(),
            done: self.done.clone(),
            phase: Phase::First,
            next: 0,
        })
    }
}

impl<T: Clone + 'static> HeldReader<T> {
    fn emit(items: &[T], next: &mut usize, out: &mut Batch<T>, records_max: usize) -> bool {
        let end = items.len().min(*next + records_max);
        out.extend_untimed(items[*next..end].iter().cloned());
        *next = end;
        end == items.len()
    }
}

impl<T: Clone + 'static> SourceReader for HeldReader<T> {
    type Item = T;
    async fn read_batch(&mut self, out: &mut Batch<T>, records_max: usize) -> Result<ReadStatus> {
        match self.phase {
            Phase::First => {
                if Self::emit(&self.first, &mut self.next, out, records_max) {
                    self.phase = Phase::Waiting;
                    self.next = 0;
                    if let Some(done) = &self.done {
                        done.store(true, Ordering::SeqCst);
                    }
                }
                Ok(ReadStatus::More)
            }
            Phase::Waiting => {
                while !self.gate.is_released() {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                self.phase = Phase::Rest;
                Ok(ReadStatus::More)
            }
            Phase::Rest => Ok(
                if Self::emit(&self.rest, &mut self.next, out, records_max) {
                    ReadStatus::End
                } else {
                    ReadStatus::More
                },
            ),
        }
    }
    fn position(&self) -> ReadPosition {
        ReadPosition(self.next as u64)
    }
}

/// The condition a [`WatchSink`] releases its gate on: it sees everything received so far.
pub type Until<T> = Arc<dyn Fn(&[T]) -> bool + Send + Sync>;

/// What a [`WatchSink`] received: each record, and whether the gate was open when it came.
pub type Received<T> = Arc<Mutex<Vec<(T, bool)>>>;

/// A sink that keeps what it receives and releases `gate` once `until` holds for it.
pub struct WatchSink<T> {
    received: Received<T>,
    gate: Arc<Gate>,
    until: Until<T>,
}

impl<T: Clone> WatchSink<T> {
    /// Releases `gate` when `until(everything received)` holds.
    pub fn new(gate: Arc<Gate>, until: Until<T>) -> Self {
        WatchSink {
            received: Arc::new(Mutex::new(Vec::new())),
            gate,
            until,
        }
    }
    /// What the sink received.
    pub fn received(&self) -> Received<T> {
        self.received.clone()
    }
}

/// Takes the records out of what a [`WatchSink`] received.
pub fn records<T: Clone>(received: &Received<T>) -> Vec<T> {
    let held = received.lock().unwrap_or_else(|e| e.into_inner());
    held.iter().map(|(r, _)| r.clone()).collect()
}

/// The writer of a [`WatchSink`].
pub struct WatchWriter<T> {
    received: Received<T>,
    gate: Arc<Gate>,
    until: Until<T>,
}

impl<T: Clone + Send + 'static> Sink<T> for WatchSink<T> {
    type Writer = WatchWriter<T>;
    fn name(&self) -> String {
        "watch".into()
    }
    async fn open(&self, _ctx: &SinkContext) -> Result<WatchWriter<T>> {
        Ok(WatchWriter {
            received: self.received.clone(),
            gate: self.gate.clone(),
            until: self.until.clone(),
        })
    }
}

impl<T: Clone + 'static> SinkWriter<T> for WatchWriter<T> {
    async fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<()> {
        let released = self.gate.is_released();
        let mut held = self.received.lock().unwrap_or_else(|e| e.into_inner());
        held.extend(batch.drain(..).map(|r| (r, released)));
        if !released {
            let records: Vec<T> = held.iter().map(|(r, _)| r.clone()).collect();
            if (self.until)(&records) {
                self.gate.release();
            }
        }
        Ok(())
    }
    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
