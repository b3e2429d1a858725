//! Exchanges: how records leave one stage and reach the next, on the same or another worker.
//!
//! An [`Edge`] is the set of bounded channels between two stages: a full mesh for rebalance,
//! broadcast and hash exchanges, and one channel per worker for a forward exchange. Channels
//! are glommio shared channels carrying [`StreamElement`]s, so a batch moves by ownership (no
//! copy, no serialisation) and a full channel suspends the sender: backpressure reaches the
//! sources. A remote channel (issue "networking") implements the same two ends over TCP.
//!
//! The sending side is an [`ExchangeTail`], the chain's last collector, which routes each record
//! to a per-target batch; full batches go to the stage's [`Outbox`], which the driver drains
//! into the channels. The receiving side is an [`InputGate`], which merges a stage's input
//! channels fairly and tracks which inputs have ended.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use std::time::Duration;

use futures_lite::Stream;
use futures_lite::future::poll_once;
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::{GlommioError, ResourceType};

use crate::chain::{Collector, OutboxRef, Target, new_batch};
use crate::element::{
    BATCH_RECORDS_MAX, Batch, CheckpointBarrier, StreamElement, Timestamp, Watermark,
    WatermarkStatus,
};
use crate::error::{Error, Result};
use crate::key::{Key, KeyGroups};
use crate::remote::{CodecSource, RecordCodec};
use sluice_net::wire::{Element, WatermarkStatus as NetStatus, WireBarrier};
use sluice_net::{ChannelReceiver, ChannelSender, FrameKind, Received as NetReceived};

/// Batches a channel holds before its sender waits. With [`BATCH_RECORDS_MAX`] records per
/// batch this bounds the records in flight per channel.
pub const CHANNEL_BATCHES_MAX: usize = 8;

/// How an edge routes records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partitioning {
    /// To the same worker (no mesh; used by `union`).
    Forward,
    /// Round robin over all workers.
    Rebalance,
    /// A copy to every worker.
    Broadcast,
    /// To the worker owning the record's key group.
    Hash,
}

/// Which global workers run in this process, out of how many: all of them for a job run on
/// one machine, a contiguous range of them for a node of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartLayout {
    /// Workers of the whole job.
    pub workers: usize,
    /// The global indices of the workers in this process.
    pub local: std::ops::Range<usize>,
}

impl PartLayout {
    /// Every worker in this process.
    pub fn single(workers: usize) -> PartLayout {
        PartLayout {
            workers,
            local: 0..workers,
        }
    }

    /// Whether worker `w` runs in this process.
    pub fn is_local(&self, w: usize) -> bool {
        self.local.contains(&w)
    }
}

/// An edge as the runtime sees it before it knows the worker count.
pub trait AnyEdge: Send + Sync {
    /// Creates the channels for `workers` workers, all in this process.
    fn materialize(&self, workers: usize) {
        let layout = PartLayout::single(workers);
        // Nothing is remote, so no codec is looked up and nothing can fail.
        let _ = self.materialize_part(0, &layout);
    }
    /// Creates the channels of this process's workers in `layout`: in-process channels
    /// between them, remote ends (over channel `index` of the workers' connections, encoded
    /// by the edge's codec) to and from the others. Fails if the edge has remote ends and no
    /// codec for its records.
    fn materialize_part(&self, index: usize, layout: &PartLayout) -> Result<()>;
    /// How the edge routes.
    fn partitioning(&self) -> Partitioning;
}

type Chan<T> = StreamElement<T>;

/// The far end of a remote channel: the peer worker, the channel, the records' codec.
pub struct RemoteEnd<T> {
    /// The peer's global worker index.
    pub peer: usize,
    /// The channel on the connection to it (the edge's index in the job graph).
    pub channel: u32,
    /// How the edge's records become bytes.
    pub codec: Arc<dyn RecordCodec<T>>,
}

/// A sending end of an edge on one worker, to one target.
pub enum SendEnd<T: Send> {
    /// A channel to a worker of this process.
    Local(SharedSender<Chan<T>>),
    /// A channel to a worker of another node.
    Remote(RemoteEnd<T>),
}

/// A receiving end of an edge on one worker, from one source.
pub enum RecvEnd<T: Send> {
    /// A channel from a worker of this process.
    Local(SharedReceiver<Chan<T>>),
    /// A channel from a worker of another node.
    Remote(RemoteEnd<T>),
}

struct EdgeSlots<T: Send> {
    senders: Vec<Option<Vec<SendEnd<T>>>>,
    receivers: Vec<Option<Vec<RecvEnd<T>>>>,
}

/// The channels between two stages, created when the job starts and handed out to workers.
pub struct Edge<T: Send> {
    partitioning: Partitioning,
    codec: CodecSource<T>,
    slots: Mutex<Option<EdgeSlots<T>>>,
}

impl<T: Send + 'static> Edge<T> {
    /// A new edge, not yet materialized, whose records cross nodes with the codec registered
    /// for `T` (see [`crate::remote`]).
    pub fn new(partitioning: Partitioning) -> Edge<T> {
        Edge::with_codec(partitioning, crate::remote::codec_of::<T>())
    }

    /// A new edge whose records cross nodes with the codec `codec` finds.
    pub fn with_codec(partitioning: Partitioning, codec: CodecSource<T>) -> Edge<T> {
        Edge {
            partitioning,
            codec,
            slots: Mutex::new(None),
        }
    }

    fn take<R>(&self, f: impl FnOnce(&mut EdgeSlots<T>) -> Option<R>) -> Result<R> {
        let mut guard = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_mut().and_then(f).ok_or_else(|| {
            Error::Config("internal: edge endpoints taken twice or never made".into())
        })
    }

    /// Worker `w`'s senders, one per target (one in all for a forward edge).
    pub fn take_senders(&self, w: usize) -> Result<Vec<SendEnd<T>>> {
        self.take(|s| s.senders.get_mut(w).and_then(Option::take))
    }

    /// Worker `w`'s receivers, one per source worker (one for a forward edge).
    pub fn take_receivers(&self, w: usize) -> Result<Vec<RecvEnd<T>>> {
        self.take(|s| s.receivers.get_mut(w).and_then(Option::take))
    }
}

/// A receiving end and the worker it receives from.
type Sourced<T> = (usize, RecvEnd<T>);

/// Worker `w`'s list of ends in `slots`.
fn slot<E>(slots: &mut [Option<Vec<E>>], w: usize) -> Result<&mut Vec<E>> {
    slots
        .get_mut(w)
        .and_then(Option::as_mut)
        .ok_or_else(|| Error::Config(format!("internal: worker {w} is not in this process")))
}

impl<T: Send + 'static> AnyEdge for Edge<T> {
    fn materialize_part(&self, index: usize, layout: &PartLayout) -> Result<()> {
        let workers = layout.workers;
        let mut senders: Vec<Option<Vec<SendEnd<T>>>> = (0..workers).map(|_| None).collect();
        // Each receiving end with its source worker, sorted by it at the end.
        let mut receivers: Vec<Option<Vec<Sourced<T>>>> = (0..workers).map(|_| None).collect();
        for w in layout.local.clone() {
            senders[w] = Some(Vec::new());
            receivers[w] = Some(Vec::new());
        }
        if self.partitioning == Partitioning::Forward {
            for w in layout.local.clone() {
                let (tx, rx) = shared_channel::new_bounded(CHANNEL_BATCHES_MAX);
                slot(&mut senders, w)?.push(SendEnd::Local(tx));
                slot(&mut receivers, w)?.push((w, RecvEnd::Local(rx)));
            }
        } else {
            let remote = workers > layout.local.len();
            let codec = if remote { Some((self.codec)()?) } else { None };
            let channel = u32::try_from(index)
                .map_err(|_| Error::Config(format!("internal: edge index {index}")))?;
            let remote_end = |peer: usize| -> Result<RemoteEnd<T>> {
                let codec = codec.clone().ok_or_else(|| {
                    Error::Config("internal: a remote end without a codec".into())
                })?;
                Ok(RemoteEnd {
                    peer,
                    channel,
                    codec,
                })
            };
            // Channels between two workers of this process; remote ends to and from the rest.
            // A sender's targets and a receiver's sources are in global worker order.
            for source in layout.local.clone() {
                for target in 0..workers {
                    let end = if layout.is_local(target) {
                        let (tx, rx) = shared_channel::new_bounded(CHANNEL_BATCHES_MAX);
                        slot(&mut receivers, target)?.push((source, RecvEnd::Local(rx)));
                        SendEnd::Local(tx)
                    } else {
                        SendEnd::Remote(remote_end(target)?)
                    };
                    slot(&mut senders, source)?.push(end);
                }
            }
            for target in layout.local.clone() {
                let ends = slot(&mut receivers, target)?;
                for source in (0..workers).filter(|s| !layout.is_local(*s)) {
                    ends.push((source, RecvEnd::Remote(remote_end(source)?)));
                }
                ends.sort_by_key(|(source, _)| *source);
            }
        }
        let receivers = receivers
            .into_iter()
            .map(|r| r.map(|ends| ends.into_iter().map(|(_, end)| end).collect()))
            .collect();
        let slots = EdgeSlots { senders, receivers };
        *self.slots.lock().unwrap_or_else(|e| e.into_inner()) = Some(slots);
        Ok(())
    }
    fn partitioning(&self) -> Partitioning {
        self.partitioning
    }
}

/// Picks the target of each record.
pub trait Partitioner<T>: 'static {
    /// The target worker index (into the edge's senders) for `record`.
    fn target(&mut self, record: &T) -> usize;
}

/// Everything to the one channel of a forward edge.
pub struct ForwardPartitioner;

impl<T> Partitioner<T> for ForwardPartitioner {
    #[inline]
    fn target(&mut self, _record: &T) -> usize {
        0
    }
}

/// Round robin.
pub struct RebalancePartitioner {
    next: usize,
    targets: usize,
}

impl RebalancePartitioner {
    /// Starting at `start` (the sending worker, so workers do not all hit target 0 first).
    pub fn new(start: usize, targets: usize) -> Self {
        RebalancePartitioner {
            next: start % targets.max(1),
            targets: targets.max(1),
        }
    }
}

impl<T> Partitioner<T> for RebalancePartitioner {
    #[inline]
    fn target(&mut self, _record: &T) -> usize {
        let t = self.next;
        self.next += 1;
        if self.next == self.targets {
            self.next = 0;
        }
        t
    }
}

/// By key group of the key carried in the record's first field.
pub struct HashPartitioner {
    key_groups: KeyGroups,
}

impl HashPartitioner {
    /// Over the job's key groups.
    pub fn new(key_groups: KeyGroups) -> Self {
        HashPartitioner { key_groups }
    }
}

impl<K: Key, V> Partitioner<(K, V)> for HashPartitioner {
    #[inline]
    fn target(&mut self, record: &(K, V)) -> usize {
        self.key_groups.owner_of(&record.0)
    }
}

/// The last collector of a chain that ends in an exchange.
pub struct ExchangeTail<T, P> {
    partitioner: P,
    buffers: Vec<Batch<T>>,
    outbox: OutboxRef<T>,
}

impl<T, P: Partitioner<T>> ExchangeTail<T, P> {
    /// A tail with `targets` per-target batches.
    pub fn new(partitioner: P, targets: usize, outbox: OutboxRef<T>) -> Self {
        ExchangeTail {
            partitioner,
            buffers: (0..targets).map(|_| new_batch()).collect(),
            outbox,
        }
    }

    fn hand_on_partials(&mut self) {
        let mut outbox = self.outbox.borrow_mut();
        for (target, buf) in self.buffers.iter_mut().enumerate() {
            if !buf.is_empty() {
                let batch = std::mem::replace(buf, new_batch());
                outbox.push(Target::One(target), StreamElement::Records(batch));
            }
        }
    }

    fn control(&mut self, element: StreamElement<T>) {
        self.hand_on_partials();
        self.outbox.borrow_mut().push(Target::All, element);
    }
}

impl<T, P: Partitioner<T>> Collector<T> for ExchangeTail<T, P> {
    #[inline]
    fn collect(&mut self, record: T, ts: Timestamp) -> Result<()> {
        let target = self.partitioner.target(&record);
        debug_assert!(target < self.buffers.len(), "target={target}");
        let buf = &mut self.buffers[target];
        buf.push(record, ts);
        if buf.len() == BATCH_RECORDS_MAX {
            let batch = std::mem::replace(buf, new_batch());
            self.outbox
                .borrow_mut()
                .push(Target::One(target), StreamElement::Records(batch));
        }
        Ok(())
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        self.control(StreamElement::Watermark(watermark));
        Ok(())
    }
    fn on_status(&mut self, status: WatermarkStatus) -> Result<()> {
        self.control(StreamElement::Status(status));
        Ok(())
    }
    fn on_processing_time(&mut self, _now_ms: i64) -> Result<()> {
        Ok(())
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.control(StreamElement::Barrier(barrier));
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        self.hand_on_partials();
        Ok(())
    }
    fn on_end(&mut self) -> Result<()> {
        self.control(StreamElement::EndOfInput);
        Ok(())
    }
}

/// The last collector of a chain that ends in a broadcast: every batch goes to every target.
pub struct BroadcastTail<T> {
    buffer: Batch<T>,
    targets: usize,
    outbox: OutboxRef<T>,
}

impl<T: Clone> BroadcastTail<T> {
    /// A tail copying to `targets` targets.
    pub fn new(targets: usize, outbox: OutboxRef<T>) -> Self {
        BroadcastTail {
            buffer: new_batch(),
            targets,
            outbox,
        }
    }
    fn hand_on(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.buffer, new_batch());
        let mut outbox = self.outbox.borrow_mut();
        for target in 1..self.targets {
            outbox.push(Target::One(target), StreamElement::Records(batch.clone()));
        }
        outbox.push(Target::One(0), StreamElement::Records(batch));
    }
    fn control(&mut self, element: StreamElement<T>) {
        self.hand_on();
        self.outbox.borrow_mut().push(Target::All, element);
    }
}

impl<T: Clone> Collector<T> for BroadcastTail<T> {
    #[inline]
    fn collect(&mut self, record: T, ts: Timestamp) -> Result<()> {
        self.buffer.push(record, ts);
        if self.buffer.len() == BATCH_RECORDS_MAX {
            self.hand_on();
        }
        Ok(())
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        self.control(StreamElement::Watermark(watermark));
        Ok(())
    }
    fn on_status(&mut self, status: WatermarkStatus) -> Result<()> {
        self.control(StreamElement::Status(status));
        Ok(())
    }
    fn on_processing_time(&mut self, _now_ms: i64) -> Result<()> {
        Ok(())
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.control(StreamElement::Barrier(barrier));
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        self.hand_on();
        Ok(())
    }
    fn on_end(&mut self) -> Result<()> {
        self.control(StreamElement::EndOfInput);
        Ok(())
    }
}

/// How often a wait that may never end by itself (a send to a full channel, a read from a
/// socket) checks whether the job was cancelled.
const CANCEL_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Awaits `fut`, or fails with [`Error::Cancelled`] once `cancelled` is set while it waits. A
/// future that is ready at once costs no timer.
pub async fn unless_cancelled<T>(
    fut: impl Future<Output = Result<T>>,
    cancelled: &AtomicBool,
) -> Result<T> {
    let mut fut = std::pin::pin!(fut);
    if let Some(out) = poll_once(fut.as_mut()).await {
        return out;
    }
    let watch = async {
        loop {
            glommio::timer::sleep(CANCEL_POLL_INTERVAL).await;
            if cancelled.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
        }
    };
    futures_lite::future::or(fut, watch).await
}

/// How often a pending channel connection is polled again.
const CONNECT_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Awaits `fut`, polling it again every [`CONNECT_POLL_INTERVAL`] as well as on wake-ups.
///
/// For glommio's shared-channel `connect`: it waits for the peer executor to connect its end,
/// but the peer's connecting does not wake it; it is re-polled only when its executor's reactor
/// happens to run, so an executor that went to sleep meanwhile never notices and the job hangs
/// (seen here with 16 workers on 2 cores, a few runs in a hundred). The timer keeps it awake
/// while connecting, which happens once per channel at start-up.
async fn poll_until_ready<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Some(out) = poll_once(fut.as_mut()).await {
            return out;
        }
        glommio::timer::sleep(CONNECT_POLL_INTERVAL).await;
    }
}

/// Copies a control element (anything but records) for another target.
fn copy_control<T>(element: &StreamElement<T>) -> StreamElement<T> {
    match element {
        StreamElement::Watermark(w) => StreamElement::Watermark(*w),
        StreamElement::Status(s) => StreamElement::Status(*s),
        StreamElement::Barrier(b) => StreamElement::Barrier(*b),
        StreamElement::EndOfInput => StreamElement::EndOfInput,
        // Tails address every batch to one target (a broadcast copies it per target).
        StreamElement::Records(_) => unreachable!("a record batch addressed to all targets"),
    }
}

/// Where a stage's outbox is drained to: channels or a sink.
pub trait OutputDrain<T> {
    /// Sends or writes everything in `outbox`, waiting for capacity.
    fn drain(&mut self, outbox: &OutboxRef<T>) -> impl Future<Output = Result<()>>;
}

/// A connected sending end.
enum Out<T: Send> {
    Local(ConnectedSender<Chan<T>>),
    Remote(RemoteOut<T>),
}

/// The sending end of a remote channel: batches are encoded by the edge's codec, control
/// elements as the transport's own frames.
struct RemoteOut<T> {
    sender: ChannelSender<()>,
    codec: Arc<dyn RecordCodec<T>>,
}

impl<T: Send + 'static> RemoteOut<T> {
    async fn send(&mut self, element: Chan<T>) -> Result<()> {
        let sent = match element {
            StreamElement::Records(batch) => {
                let codec = self.codec.clone();
                self.sender
                    .send_payload(FrameKind::Records, move |buf| {
                        crate::remote::encode_batch(&*codec, batch, buf)
                    })
                    .await
            }
            StreamElement::Watermark(w) => self.sender.send(Element::Watermark(w.0)).await,
            StreamElement::Status(s) => {
                let s = match s {
                    WatermarkStatus::Active => NetStatus::Active,
                    WatermarkStatus::Idle => NetStatus::Idle,
                };
                self.sender.send(Element::Status(s)).await
            }
            StreamElement::Barrier(b) => {
                let b = WireBarrier {
                    checkpoint_id: b.checkpoint_id,
                    timestamp_ms: b.timestamp_ms,
                };
                self.sender.send(Element::Barrier(b)).await
            }
            StreamElement::EndOfInput => self.sender.send(Element::EndOfInput).await,
        };
        sent.map_err(|e| crate::remote::net_error("send to another node", &e))
    }
}

/// The connected sending ends of an edge on one worker.
pub struct ExchangeSender<T: Send> {
    senders: Vec<Out<T>>,
    stage: String,
    cancelled: Arc<AtomicBool>,
}

impl<T: Send + 'static> ExchangeSender<T> {
    /// Connects worker-local senders and opens remote ones (must run on the worker's
    /// executor).
    ///
    /// `cancelled` is the job's cancellation flag: a send waiting for room gives up when it is
    /// set.
    pub async fn connect(
        senders: Vec<SendEnd<T>>,
        stage: &str,
        cancelled: Arc<AtomicBool>,
    ) -> Result<Self> {
        let mut connected = Vec::with_capacity(senders.len());
        for s in senders {
            connected.push(match s {
                SendEnd::Local(s) => Out::Local(poll_until_ready(s.connect()).await),
                SendEnd::Remote(end) => {
                    let mut sender = crate::remote::links::sender(end.peer, end.channel)?;
                    sender.set_cancel(cancelled.clone());
                    Out::Remote(RemoteOut {
                        sender,
                        codec: end.codec,
                    })
                }
            });
        }
        Ok(ExchangeSender {
            senders: connected,
            stage: stage.to_owned(),
            cancelled,
        })
    }

    /// Number of targets.
    pub fn targets(&self) -> usize {
        self.senders.len()
    }

    async fn send(&mut self, target: usize, element: Chan<T>) -> Result<()> {
        let n = self.senders.len();
        let sender = self
            .senders
            .get_mut(target)
            .ok_or_else(|| Error::Config(format!("internal: target {target} out of {n}")))?;
        let sender = match sender {
            Out::Local(s) => s,
            Out::Remote(r) => return r.send(element).await,
        };
        let disconnected = || Error::Disconnected {
            stage: self.stage.clone(),
            what: "a downstream channel",
        };
        let element = match sender.try_send(element) {
            Ok(()) => return Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(element))) => element,
            Err(_) => return Err(disconnected()),
        };
        // The channel is full: wait for room. glommio's wait never ends if the receiving stage
        // fails meanwhile (it only checks the sending side for closure), so give up when the
        // job is cancelled, which a failing stage does.
        let send = async { sender.send(element).await.map_err(|_| disconnected()) };
        unless_cancelled(send, &self.cancelled).await
    }
}

impl<T: Send + 'static> OutputDrain<T> for ExchangeSender<T> {
    async fn drain(&mut self, outbox: &OutboxRef<T>) -> Result<()> {
        loop {
            // The borrow ends before the await: the chain may push while we wait.
            let Some((target, element)) = outbox.borrow_mut().pop() else {
                return Ok(());
            };
            match target {
                Target::One(t) => self.send(t, element).await?,
                Target::All => {
                    for t in 1..self.senders.len() {
                        self.send(t, copy_control(&element)).await?;
                    }
                    self.send(0, element).await?;
                }
            }
        }
    }
}

/// Tracks the watermark of a multi-input stage: the minimum over its *active* inputs (not
/// ended, not idle), as Flink's `StatusWatermarkValve` does. A plain struct, so its rules run
/// in a doctest.
///
/// An input that turns idle stops holding the watermark back; when it becomes active again
/// behind the current watermark, it is ignored until its own watermark catches up (its records
/// meanwhile are behind the watermark, hence late). When every input that has not ended is
/// idle, the stage itself is idle.
///
/// ```
/// use sluice_core::exchange::WatermarkTracker;
/// use sluice_core::element::WatermarkStatus::{Active, Idle};
/// use sluice_core::Watermark;
/// let mut t = WatermarkTracker::new(3);
/// assert_eq!(t.update(0, Watermark(10)), None); // inputs 1 and 2 still at MIN
/// assert_eq!(t.update(1, Watermark(5)), None);
/// assert_eq!(t.set_status(2, Idle), Some(Watermark(5))); // an idle input stops holding it
/// assert_eq!(t.end(1), Some(Watermark(10))); // so does an ended one
/// assert_eq!(t.set_status(2, Active), None); // back, but behind: ignored until it catches up
/// assert_eq!(t.update(0, Watermark(20)), Some(Watermark(20)));
/// assert_eq!(t.update(2, Watermark(15)), None);
/// assert_eq!(t.update(2, Watermark(30)), None); // aligned now, and it holds input 0 back
/// assert_eq!(t.update(0, Watermark(40)), Some(Watermark(30)));
/// ```
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    inputs: Vec<InputWatermark>,
    current: Watermark,
    idle: bool,
    status_changed: bool,
}

#[derive(Debug, Clone, Copy)]
struct InputWatermark {
    watermark: Watermark,
    idle: bool,
    ended: bool,
    /// Counts towards the minimum: its watermark has reached the stage's since it last became
    /// active.
    aligned: bool,
}

impl WatermarkTracker {
    /// `inputs` active inputs, all at [`Watermark::MIN`].
    pub fn new(inputs: usize) -> Self {
        let input = InputWatermark {
            watermark: Watermark::MIN,
            idle: false,
            ended: false,
            aligned: true,
        };
        WatermarkTracker {
            inputs: vec![input; inputs],
            current: Watermark::MIN,
            idle: false,
            status_changed: false,
        }
    }

    /// Input `i` reports `w`; returns the new combined watermark if it advanced. The final
    /// watermark counts as the input's end: it stops holding the stage back, but does not
    /// carry the stage past an idle input that may still send records.
    pub fn update(&mut self, i: usize, w: Watermark) -> Option<Watermark> {
        if w == Watermark::MAX {
            return self.end(i);
        }
        let current = self.current;
        let input = &mut self.inputs[i];
        input.watermark = input.watermark.max(w);
        if !input.aligned && input.watermark >= current {
            input.aligned = true;
        }
        self.advance()
    }

    /// Input `i` turns idle or active; returns the new combined watermark if it advanced.
    pub fn set_status(&mut self, i: usize, status: WatermarkStatus) -> Option<Watermark> {
        let current = self.current;
        let input = &mut self.inputs[i];
        match status {
            WatermarkStatus::Idle => input.idle = true,
            WatermarkStatus::Active if input.idle => {
                input.idle = false;
                input.aligned = input.watermark >= current;
            }
            WatermarkStatus::Active => {}
        }
        self.advance()
    }

    /// Input `i` ended; returns the new combined watermark if it advanced.
    pub fn end(&mut self, i: usize) -> Option<Watermark> {
        self.inputs[i].ended = true;
        self.advance()
    }

    /// The combined watermark.
    pub fn current(&self) -> Watermark {
        self.current
    }

    /// The watermark against which records of input `i` are judged late: its own, or the
    /// combined one if that is ahead (after idleness).
    pub fn lateness_watermark(&self, i: usize) -> Watermark {
        self.inputs[i].watermark.max(self.current)
    }

    /// Whether the stage became idle or active since the last call.
    pub fn take_status_change(&mut self) -> Option<WatermarkStatus> {
        if !std::mem::take(&mut self.status_changed) {
            return None;
        }
        Some(if self.idle {
            WatermarkStatus::Idle
        } else {
            WatermarkStatus::Active
        })
    }

    fn advance(&mut self) -> Option<Watermark> {
        let live = self.inputs.iter().filter(|i| !i.ended);
        let all_ended = live.clone().next().is_none();
        let idle = !all_ended && live.clone().all(|i| i.idle);
        if idle != self.idle {
            self.idle = idle;
            self.status_changed = true;
        }
        let min = if all_ended {
            Some(Watermark::MAX)
        } else {
            live.filter(|i| !i.idle && i.aligned)
                .map(|i| i.watermark)
                .min()
        };
        match min {
            Some(min) if min > self.current => {
                self.current = min;
                Some(min)
            }
            _ => None,
        }
    }
}

/// An element and the index of the input it arrived on.
pub type Received<T> = (usize, StreamElement<T>);

/// Wakes a gate's task when one of its input channels has something, and remembers which.
///
/// glommio's shared channel keeps every waker it is polled with until the channel is next
/// notified, so polling an idle input again and again (each time another input delivers)
/// would grow that list without bound. The gate therefore polls an input that returned
/// `Pending` again only after that input's own waker fired.
struct InputWaker {
    notified: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl InputWaker {
    fn set_task(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if !task.as_ref().is_some_and(|t| t.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

impl Wake for InputWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.notified.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            task.wake_by_ref();
        }
    }
}

/// A connected receiving end.
enum In<T: Send> {
    Local(ConnectedReceiver<Chan<T>>),
    Remote {
        receiver: ChannelReceiver<()>,
        codec: Arc<dyn RecordCodec<T>>,
    },
}

impl<T: Send + 'static> In<T> {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Chan<T>>>> {
        match self {
            In::Local(r) => Pin::new(r).poll_next(cx).map(|e| e.map(Ok)),
            In::Remote { receiver, codec } => match receiver.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(None)) => Poll::Ready(None),
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(crate::remote::net_error(
                    "receive from another node",
                    &e,
                )))),
                Poll::Ready(Ok(Some(received))) => Poll::Ready(Some(from_wire(received, &**codec))),
            },
        }
    }
}

/// A remote channel's element as a stream element: a batch decoded by the edge's codec (its
/// receive buffer, and so its credit, goes back at once).
fn from_wire<T: 'static>(received: NetReceived<()>, codec: &dyn RecordCodec<T>) -> Result<Chan<T>> {
    Ok(match received {
        NetReceived::Records(frame) => {
            let mut batch = Batch::default();
            crate::remote::decode_batch(codec, frame.payload(), &mut batch).map_err(|e| {
                Error::Network {
                    op: "decode records from another node",
                    message: e,
                }
            })?;
            StreamElement::Records(batch)
        }
        NetReceived::Watermark(w) => StreamElement::Watermark(Watermark(w)),
        NetReceived::Status(NetStatus::Active) => StreamElement::Status(WatermarkStatus::Active),
        NetReceived::Status(NetStatus::Idle) => StreamElement::Status(WatermarkStatus::Idle),
        NetReceived::Barrier(b) => StreamElement::Barrier(CheckpointBarrier {
            checkpoint_id: b.checkpoint_id,
            timestamp_ms: b.timestamp_ms,
        }),
        NetReceived::EndOfInput => StreamElement::EndOfInput,
    })
}

struct Input<T: Send> {
    receiver: In<T>,
    ended: bool,
    /// Not read until unblocked (its checkpoint barrier came before the others').
    blocked: bool,
    /// Returned `Pending` and has our waker registered: poll again only once it fired.
    armed: bool,
    wake: Arc<InputWaker>,
    waker: Waker,
}

/// The receiving side of a stage: its input channels, merged fairly.
pub struct InputGate<T: Send> {
    inputs: Vec<Input<T>>,
    live: usize,
    next: usize,
    stage: String,
}

impl<T: Send + 'static> InputGate<T> {
    /// Connects worker-local receivers and opens remote ones (must run on the worker's
    /// executor).
    pub async fn connect(receivers: Vec<RecvEnd<T>>, stage: &str) -> Result<Self> {
        let mut inputs = Vec::with_capacity(receivers.len());
        for r in receivers {
            let receiver = match r {
                RecvEnd::Local(r) => In::Local(poll_until_ready(r.connect()).await),
                RecvEnd::Remote(end) => In::Remote {
                    receiver: crate::remote::links::receiver(end.peer, end.channel)?,
                    codec: end.codec,
                },
            };
            let wake = Arc::new(InputWaker {
                notified: AtomicBool::new(false),
                task: Mutex::new(None),
            });
            let waker = Waker::from(wake.clone());
            inputs.push(Input {
                receiver,
                ended: false,
                blocked: false,
                armed: false,
                wake,
                waker,
            });
        }
        let live = inputs.len();
        Ok(InputGate {
            inputs,
            live,
            next: 0,
            stage: stage.into(),
        })
    }

    /// Number of inputs.
    pub fn inputs(&self) -> usize {
        self.inputs.len()
    }

    /// Stops (or resumes) reading input `i`: during barrier alignment, its later elements
    /// belong after the checkpoint.
    pub fn set_blocked(&mut self, i: usize, blocked: bool) {
        self.inputs[i].blocked = blocked;
    }

    /// Resumes reading every input.
    pub fn unblock_all(&mut self) {
        for input in &mut self.inputs {
            input.blocked = false;
        }
    }

    /// The next element and the input it came from; `None` once every input has ended. An
    /// input that closes without sending [`StreamElement::EndOfInput`] is an error: its sender
    /// failed.
    pub fn recv(&mut self) -> impl Future<Output = Result<Option<Received<T>>>> + '_ {
        std::future::poll_fn(move |cx| self.poll_recv(cx))
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Received<T>>>> {
        let n = self.inputs.len();
        if self.live == 0 {
            return Poll::Ready(Ok(None));
        }
        for k in 0..n {
            let i = (self.next + k) % n;
            let input = &mut self.inputs[i];
            if input.ended || input.blocked {
                continue;
            }
            input.wake.set_task(cx.waker());
            if input.armed && !input.wake.notified.swap(false, Ordering::AcqRel) {
                continue;
            }
            input.armed = false;
            let mut input_cx = Context::from_waker(&input.waker);
            match input.receiver.poll_next(&mut input_cx) {
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(element))) => {
                    if matches!(element, StreamElement::EndOfInput) {
                        input.ended = true;
                        self.live -= 1;
                    }
                    // Start after this input next time, so no input starves the others.
                    self.next = (i + 1) % n;
                    return Poll::Ready(Ok(Some((i, element))));
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Err(Error::Disconnected {
                        stage: self.stage.clone(),
                        what: "an upstream channel",
                    }));
                }
                Poll::Pending => input.armed = true,
            }
        }
        Poll::Pending
    }
}
