//! An authenticated connection: channels multiplexed over one TCP stream, credit-based flow
//! control per channel, one reader task and one writer task on the connection's executor.
//!
//! The state lives in one `Rc<Shared>` (a connection belongs to one executor; nothing here is
//! `Send`). The reader task parses frames out of an aligned staging buffer, copies each record
//! batch into a pooled aligned buffer (or reads a large one straight into it) and queues it on
//! its channel; the writer task writes what senders queued, coalescing small frames, plus the
//! credit announcements of receivers. A peer that sends anything invalid closes the connection:
//! one `tracing` line, one count, and every waiting sender and receiver gets the error.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::buf::{AlignedBuf, BufPool, RecvBuf};
use crate::error::NetError;
use crate::frame::{self, FRAME_HEADER_BYTES, FrameHeader, FrameKind};
use crate::listener::Counters;
use crate::wire::{
    self, ArchivedWireBatch, Control, ControlElement, Element, WatermarkStatus, WireBarrier,
    WireCredit, WireRecord,
};

/// Channel ids are below this.
pub const CHANNELS_MAX: u32 = 4096;
/// Control messages queued unread before the peer is judged to flood the connection.
pub const CONTROL_QUEUE_MAX: usize = 1024;
/// Payload bytes of control messages queued unread, at most (control messages are not
/// flow-controlled, so this bounds what a peer can make a connection hold).
pub const CONTROL_QUEUE_BYTES_MAX: usize = 8 << 20;
/// A big record frame's reads may read this much of what follows it (see `read_loop`).
const READ_AHEAD_BYTES: usize = 4096;
/// Frames smaller than this are coalesced into one write.
const COALESCE_BYTES: usize = 64 << 10;
/// How long a locally closed connection keeps reading for the peer's end of stream.
const LINGER: Duration = Duration::from_millis(500);
/// How often a blocked send checks its cancellation flag.
const CANCEL_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// What both ends agreed on in the handshake, and local limits.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) peer: SocketAddr,
    pub(crate) peer_node: String,
    /// A credit's worth of bytes for what we receive.
    pub(crate) buffer_bytes: u32,
    /// The largest payload we accept.
    pub(crate) frame_payload_max: u32,
    /// A credit's worth of bytes for what the peer receives.
    pub(crate) peer_buffer_bytes: u32,
    /// The largest payload the peer accepts.
    pub(crate) peer_frame_payload_max: u32,
    /// Bytes queued for the writer before senders wait.
    pub(crate) out_bytes_max: usize,
    /// The reader's staging buffer.
    pub(crate) read_chunk_bytes: usize,
    /// Free receive buffers kept for reuse.
    pub(crate) pool_buffers_max: usize,
}

fn cost(len: usize, buffer_bytes: u32) -> u32 {
    let units = len.div_ceil(buffer_bytes.max(1) as usize).max(1);
    u32::try_from(units).unwrap_or(u32::MAX)
}

enum Inbound {
    Records(RecvBuf, u32),
    Control(ControlElement),
}

#[derive(Default)]
struct InChan {
    queue: VecDeque<Inbound>,
    waker: Option<Waker>,
    window: u32,
    /// Credits the peer holds according to what we announced.
    peer_credits: u32,
    /// Credits freed and not announced yet.
    pending_return: u32,
    ended: bool,
    /// The receiver was dropped: frames are discarded, credits no longer returned.
    dropped: bool,
    queued_bytes: usize,
    queued_bytes_max: usize,
}

#[derive(Default)]
struct OutChan {
    opened: bool,
    credits: u32,
    window: u32,
    waker: Option<Waker>,
}

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Frames received.
    pub frames_in: u64,
    /// Bytes received (headers, payloads, padding).
    pub bytes_in: u64,
    /// Frames queued to send.
    pub frames_out: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Write system calls (`send`).
    pub writes: u64,
    /// Receive buffers allocated (the rest were reused).
    pub recv_buffers_allocated: u64,
    /// Most bytes ever queued for the writer.
    pub out_bytes_max_seen: usize,
}

#[derive(Default)]
struct State {
    inbound: Vec<InChan>,
    outbound: Vec<OutChan>,
    out_queue: VecDeque<Vec<u8>>,
    out_bytes: usize,
    spare: Vec<Vec<u8>>,
    credit_dirty: Vec<u32>,
    credit_dirty_spare: Vec<u32>,
    control_in: VecDeque<(Control, usize)>,
    control_in_bytes: usize,
    control_waker: Option<Waker>,
    writer_waker: Option<Waker>,
    reader_waker: Option<Waker>,
    /// Why the connection closed: `Some("")` for a clean end of stream.
    closed: Option<String>,
    closing: bool,
    stop_reading: bool,
    /// The writer flushed everything and ended our direction (or gave up).
    write_done: bool,
    flush_wakers: Vec<Waker>,
    stats: ConnStats,
}

pub(crate) struct Shared {
    params: Params,
    stream: RefCell<TcpStream>,
    st: RefCell<State>,
    pool: Rc<BufPool>,
    counters: Rc<Counters>,
}

impl Shared {
    fn disconnected(&self, st: &State) -> NetError {
        let reason = match st.closed.as_deref() {
            None | Some("") => String::new(),
            Some(r) => format!(": {r}"),
        };
        NetError::Disconnected {
            peer: self.params.peer,
            reason,
        }
    }

    fn wake_all(st: &mut State) {
        for c in &mut st.inbound {
            if let Some(w) = c.waker.take() {
                w.wake();
            }
        }
        for c in &mut st.outbound {
            if let Some(w) = c.waker.take() {
                w.wake();
            }
        }
        for w in [
            st.control_waker.take(),
            st.writer_waker.take(),
            st.reader_waker.take(),
        ]
        .into_iter()
        .flatten()
        {
            w.wake();
        }
        for w in st.flush_wakers.drain(..) {
            w.wake();
        }
    }

    /// Closes the connection because of `err`: one log line, one count (if the peer is to
    /// blame), and every waiter gets the error.
    pub(crate) fn fail(&self, err: &NetError) {
        let mut st = self.st.borrow_mut();
        if st.closed.is_some() {
            return;
        }
        if err.is_peer_fault() {
            self.counters.peer_fault(err);
            tracing::warn!(peer = %self.params.peer, "closing connection: {err}");
        } else {
            tracing::debug!(peer = %self.params.peer, "connection closed: {err}");
        }
        st.closed = Some(err.to_string());
        st.stop_reading = true;
        Self::wake_all(&mut st);
    }

    fn end_of_stream(&self) {
        let mut st = self.st.borrow_mut();
        if st.closed.is_none() {
            st.closed = Some(String::new());
        }
        Self::wake_all(&mut st);
    }

    fn request_close(&self) {
        let mut st = self.st.borrow_mut();
        st.closing = true;
        if let Some(w) = st.writer_waker.take() {
            w.wake();
        }
    }

    fn protocol(&self, reason: String) -> NetError {
        NetError::Protocol {
            peer: self.params.peer,
            reason,
        }
    }

    fn return_credit(&self, channel: u32, credits: u32) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let Some(chan) = st.inbound.get_mut(channel as usize) else {
            return;
        };
        if chan.dropped || st.closed.is_some() {
            return;
        }
        if chan.pending_return == 0 {
            st.credit_dirty.push(channel);
        }
        chan.pending_return = chan.pending_return.saturating_add(credits);
        if let Some(w) = st.writer_waker.take() {
            w.wake();
        }
    }

    fn take_spare(&self) -> Vec<u8> {
        self.st.borrow_mut().spare.pop().unwrap_or_default()
    }

    /// Handles one checked frame from the reader.
    fn dispatch(&self, h: &FrameHeader, payload: Payload<'_>) -> Result<(), NetError> {
        let bytes = payload.bytes();
        match h.kind {
            FrameKind::Credit => {
                let c = wire::decode_credit(bytes).map_err(|e| self.malformed(e))?;
                self.on_credit(h.channel, c)
            }
            FrameKind::Control => {
                let msg = wire::decode_control_message(bytes).map_err(|e| self.malformed(e))?;
                let mut st = self.st.borrow_mut();
                let full = st.control_in.len() >= CONTROL_QUEUE_MAX
                    || st.control_in_bytes + bytes.len() > CONTROL_QUEUE_BYTES_MAX;
                if full {
                    return Err(self.protocol(format!(
                        "more than {CONTROL_QUEUE_MAX} control messages or \
                         {CONTROL_QUEUE_BYTES_MAX} bytes of them unread"
                    )));
                }
                st.control_in_bytes += bytes.len();
                st.control_in.push_back((msg, bytes.len()));
                if let Some(w) = st.control_waker.take() {
                    w.wake();
                }
                Ok(())
            }
            FrameKind::Handshake => {
                Err(self.protocol("a handshake frame after the handshake".into()))
            }
            _ => self.on_element(h, payload),
        }
    }

    fn malformed(&self, source: wire::WireError) -> NetError {
        NetError::Malformed {
            peer: self.params.peer,
            source,
        }
    }

    fn on_credit(&self, channel: u32, c: WireCredit) -> Result<(), NetError> {
        if channel >= CHANNELS_MAX || c.window == 0 {
            return Err(self.protocol(format!(
                "credit for channel {channel} with window {}",
                c.window
            )));
        }
        let mut st = self.st.borrow_mut();
        let i = channel as usize;
        if st.outbound.len() <= i {
            st.outbound.resize_with(i + 1, OutChan::default);
        }
        let chan = &mut st.outbound[i];
        chan.credits = chan.credits.saturating_add(c.credits);
        chan.window = c.window;
        if let Some(w) = chan.waker.take() {
            w.wake();
        }
        Ok(())
    }

    fn on_element(&self, h: &FrameHeader, payload: Payload<'_>) -> Result<(), NetError> {
        let len = h.payload_len as usize;
        let cost = cost(len, self.params.buffer_bytes);
        let mut st = self.st.borrow_mut();
        let Some(chan) = st
            .inbound
            .get_mut(h.channel as usize)
            .filter(|c| c.window > 0)
        else {
            return Err(self.protocol(format!(
                "{:?} frame on channel {}, which is not open",
                h.kind, h.channel
            )));
        };
        if chan.ended {
            return Err(self.protocol(format!(
                "{:?} frame on channel {} after its end of input",
                h.kind, h.channel
            )));
        }
        if chan.peer_credits < cost.min(chan.window) {
            return Err(self.protocol(format!(
                "a frame costing {cost} credits on channel {} with {} granted",
                h.channel, chan.peer_credits
            )));
        }
        chan.peer_credits = chan.peer_credits.saturating_sub(cost);
        let item = if h.kind == FrameKind::Records {
            Inbound::Records(payload.into_buf(&self.pool), cost)
        } else {
            let e =
                wire::decode_control(h.kind, payload.bytes()).map_err(|e| NetError::Malformed {
                    peer: self.params.peer,
                    source: e,
                })?;
            if e == ControlElement::EndOfInput {
                chan.ended = true;
            }
            Inbound::Control(e)
        };
        if chan.dropped {
            // Nobody reads this channel any more: drop the frame, keep the peer's credit.
            chan.peer_credits = chan.peer_credits.saturating_add(cost);
            return Ok(());
        }
        chan.queue.push_back(item);
        chan.queued_bytes += len;
        chan.queued_bytes_max = chan.queued_bytes_max.max(chan.queued_bytes);
        if let Some(w) = chan.waker.take() {
            w.wake();
        }
        Ok(())
    }
}

/// A frame's payload as the reader has it: in its staging buffer, or already in its own.
enum Payload<'a> {
    Staged(&'a [u8]),
    Own(RecvBuf),
}

impl Payload<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Staged(b) => b,
            Payload::Own(b) => b.bytes(),
        }
    }
    fn into_buf(self, pool: &Rc<BufPool>) -> RecvBuf {
        match self {
            Payload::Own(b) => b,
            Payload::Staged(bytes) => {
                let mut buf = pool.take(bytes.len());
                buf.storage_mut()[..bytes.len()].copy_from_slice(bytes);
                buf.set_len(bytes.len());
                buf
            }
        }
    }
}

async fn read_some(sh: &Shared, buf: &mut [u8]) -> Result<usize, NetError> {
    poll_fn(|cx| {
        {
            let mut st = sh.st.borrow_mut();
            if st.stop_reading {
                return Poll::Ready(Ok(0));
            }
            st.reader_waker = Some(cx.waker().clone());
        }
        let mut stream = sh.stream.borrow_mut();
        Pin::new(&mut *stream).poll_read(cx, buf)
    })
    .await
    .map_err(|source| NetError::Io {
        op: "read from",
        peer: sh.params.peer.to_string(),
        source,
    })
}

async fn reader(sh: Rc<Shared>) {
    match read_loop(&sh).await {
        Ok(()) => sh.end_of_stream(),
        Err(e) => sh.fail(&e),
    }
}

/// Reads into `buf` until at least `min` bytes are there; returns how many are.
async fn read_at_least(sh: &Shared, buf: &mut [u8], min: usize) -> Result<usize, NetError> {
    let mut have = 0;
    while have < min {
        let n = read_some(sh, &mut buf[have..]).await?;
        if n == 0 {
            return Err(sh.protocol("the stream ended inside a frame".into()));
        }
        have += n;
    }
    Ok(have)
}

/// Parses frames out of an aligned staging buffer; record frames larger than a quarter of it
/// are read straight into their own buffer.
///
/// Such a frame's reads may also fill the slack at the end of its buffer (up to
/// [`READ_AHEAD_BYTES`]), so that the next frame's header usually comes with them; what they
/// read beyond the frame is moved to the stage. Without that, the stage read that fetches the
/// next header would, in a stream of big batches, fetch most of the next batch with it, only
/// for it to be copied out of the stage again. For when the header did not come along, the
/// stage reads at most a quarter of itself while the last record frame was a big one.
async fn read_loop(sh: &Shared) -> Result<(), NetError> {
    let cap = sh.params.read_chunk_bytes;
    let max = sh.params.frame_payload_max;
    let mut stage = AlignedBuf::with_capacity(cap);
    stage.resize(cap, 0);
    let (mut start, mut end, mut offset) = (0usize, 0usize, 0u64);
    // Whether the last record frame was a big one.
    let mut bulk = false;
    loop {
        while let Some(h) =
            frame::decode_header(&stage[start..end], offset, max).map_err(|source| {
                NetError::Frame {
                    peer: sh.params.peer,
                    source,
                }
            })?
        {
            let total = FRAME_HEADER_BYTES + h.padded_len();
            let have = end - start;
            let len = h.payload_len as usize;
            if h.kind == FrameKind::Records {
                bulk = total > cap / 4;
            }
            if have >= total {
                let body = &stage[start + FRAME_HEADER_BYTES..start + total];
                let (payload, padding) = body.split_at(len);
                check(sh, &h, payload, padding, offset)?;
                sh.dispatch(&h, Payload::Staged(payload))?;
                start += total;
                offset += total as u64;
                count_in(sh, total);
                continue;
            }
            let direct = total > cap || (h.kind == FrameKind::Records && total > cap / 4);
            if !direct {
                break;
            }
            // Straight into the payload's own buffer: copy what the stage holds, read the rest
            // (and perhaps the start of what follows, moved to the stage).
            let body_len = h.padded_len();
            let mut buf = sh.pool.take(body_len);
            let staged = have - FRAME_HEADER_BYTES;
            buf.storage_mut()[..staged].copy_from_slice(&stage[start + FRAME_HEADER_BYTES..end]);
            let storage = buf.storage_mut();
            let ahead = (storage.len() - body_len).min(READ_AHEAD_BYTES).min(cap);
            let got = read_at_least(
                sh,
                &mut storage[staged..body_len + ahead],
                body_len - staged,
            )
            .await?;
            let beyond = staged + got - body_len;
            stage[..beyond].copy_from_slice(&storage[body_len..body_len + beyond]);
            (start, end) = (0, beyond);
            {
                let body = &buf.storage_mut()[..h.padded_len()];
                let (payload, padding) = body.split_at(len);
                check(sh, &h, payload, padding, offset)?;
            }
            buf.set_len(len);
            sh.dispatch(&h, Payload::Own(buf))?;
            offset += total as u64;
            count_in(sh, total);
        }
        if start == end {
            (start, end) = (0, 0);
        } else if start > 0 {
            stage.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        let limit = if bulk { (end + cap / 4).min(cap) } else { cap };
        let n = read_some(sh, &mut stage[end..limit]).await?;
        if n == 0 {
            if end == start {
                return Ok(());
            }
            return Err(sh.protocol("the stream ended inside a frame".into()));
        }
        end += n;
    }
}

fn check(
    sh: &Shared,
    h: &FrameHeader,
    payload: &[u8],
    padding: &[u8],
    offset: u64,
) -> Result<(), NetError> {
    frame::check_payload(h, payload, padding, offset).map_err(|source| NetError::Frame {
        peer: sh.params.peer,
        source,
    })
}

fn count_in(sh: &Shared, total: usize) {
    let mut st = sh.st.borrow_mut();
    st.stats.frames_in += 1;
    st.stats.bytes_in += total as u64;
}

enum WriteJob {
    Own(Vec<u8>),
    Coalesced,
    Stop,
}

impl Shared {
    /// The writer's next job: credit announcements and small frames coalesced into `batch`, or
    /// a large frame on its own.
    fn next_write(&self, cx: &mut Context<'_>, batch: &mut Vec<u8>) -> Poll<WriteJob> {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        if st.closed.is_some() {
            return Poll::Ready(WriteJob::Stop);
        }
        // Swapped with a spare list rather than taken, so that neither ever reallocates.
        std::mem::swap(&mut st.credit_dirty, &mut st.credit_dirty_spare);
        for k in 0..st.credit_dirty_spare.len() {
            let channel = st.credit_dirty_spare[k];
            let chan = &mut st.inbound[channel as usize];
            let credits = std::mem::take(&mut chan.pending_return);
            if credits == 0 || chan.dropped {
                continue;
            }
            chan.peer_credits = chan.peer_credits.saturating_add(credits);
            let credit = WireCredit {
                credits,
                window: chan.window,
            };
            let out = std::mem::take(batch);
            match wire::encode_archive(FrameKind::Credit, channel, &credit, out) {
                Ok((out, _)) => *batch = out,
                Err(e) => unreachable!("a credit always serializes: {e}"),
            }
        }
        st.credit_dirty_spare.clear();
        let mut popped = false;
        while let Some(front) = st.out_queue.front() {
            if batch.is_empty() && front.len() >= COALESCE_BYTES {
                let Some(v) = st.out_queue.pop_front() else {
                    break;
                };
                st.out_bytes -= v.len();
                Self::wake_senders(st);
                return Poll::Ready(WriteJob::Own(v));
            }
            if batch.len() + front.len() > COALESCE_BYTES {
                break;
            }
            let Some(mut v) = st.out_queue.pop_front() else {
                break;
            };
            st.out_bytes -= v.len();
            batch.extend_from_slice(&v);
            v.clear();
            st.spare.push(v);
            popped = true;
        }
        if popped {
            Self::wake_senders(st);
        }
        if !batch.is_empty() {
            return Poll::Ready(WriteJob::Coalesced);
        }
        if st.closing && st.out_queue.is_empty() {
            return Poll::Ready(WriteJob::Stop);
        }
        st.writer_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn wake_senders(st: &mut State) {
        for c in &mut st.outbound {
            if let Some(w) = c.waker.take() {
                w.wake();
            }
        }
    }
}

async fn write_all(sh: &Shared, mut buf: &[u8]) -> Result<(), NetError> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| {
            if sh.st.borrow().closed.is_some() {
                return Poll::Ready(Ok(0));
            }
            let mut stream = sh.stream.borrow_mut();
            Pin::new(&mut *stream).poll_write(cx, buf)
        })
        .await
        .map_err(|source| NetError::Io {
            op: "write to",
            peer: sh.params.peer.to_string(),
            source,
        })?;
        if n == 0 {
            return Err(sh.disconnected(&sh.st.borrow()));
        }
        buf = &buf[n..];
        let mut st = sh.st.borrow_mut();
        st.stats.bytes_out += n as u64;
        st.stats.writes += 1;
    }
    Ok(())
}

async fn writer(sh: Rc<Shared>) {
    let mut batch = Vec::with_capacity(COALESCE_BYTES * 2);
    loop {
        let job = poll_fn(|cx| sh.next_write(cx, &mut batch)).await;
        let result = match job {
            WriteJob::Stop => break,
            WriteJob::Coalesced => write_all(&sh, &batch).await,
            WriteJob::Own(mut v) => {
                let r = write_all(&sh, &v).await;
                v.clear();
                sh.st.borrow_mut().spare.push(v);
                r
            }
        };
        batch.clear();
        if let Err(e) = result {
            sh.fail(&e);
            return;
        }
    }
    // Flushed: end our direction, give the peer a moment to end its own, then stop reading.
    let _ = poll_fn(|cx| Pin::new(&mut *sh.stream.borrow_mut()).poll_close(cx)).await;
    {
        let mut st = sh.st.borrow_mut();
        st.write_done = true;
        for w in st.flush_wakers.drain(..) {
            w.wake();
        }
    }
    glommio::timer::sleep(LINGER).await;
    let mut st = sh.st.borrow_mut();
    st.stop_reading = true;
    if st.closed.is_none() {
        st.closed = Some("closed locally".into());
    }
    Shared::wake_all(&mut st);
}

/// Closes the connection (after flushing) when the last user handle is dropped.
struct Guard(Rc<Shared>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.request_close();
    }
}

/// An authenticated connection to a peer node's worker. Cheap to clone; the connection closes
/// (flushing what was queued) when the last `Connection`, `ChannelSender` and
/// `ChannelReceiver` of it are dropped.
#[derive(Clone)]
pub struct Connection {
    sh: Rc<Shared>,
    guard: Rc<Guard>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.sh.params.peer)
            .field("peer_node", &self.sh.params.peer_node)
            .finish()
    }
}

impl Connection {
    /// Starts the reader and writer tasks of an authenticated stream on this executor.
    pub(crate) fn start(stream: TcpStream, params: Params, counters: Rc<Counters>) -> Self {
        let pool = BufPool::new(params.buffer_bytes as usize, params.pool_buffers_max);
        let sh = Rc::new(Shared {
            params,
            stream: RefCell::new(stream),
            st: RefCell::new(State::default()),
            pool,
            counters,
        });
        glommio::spawn_local(reader(sh.clone())).detach();
        glommio::spawn_local(writer(sh.clone())).detach();
        Connection {
            guard: Rc::new(Guard(sh.clone())),
            sh,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.sh.params.peer
    }

    /// The peer's node name, as it announced it.
    pub fn peer_node(&self) -> &str {
        &self.sh.params.peer_node
    }

    /// The sending end of `channel`; it sends once the peer opened the channel's receiving end
    /// and granted credits. Each channel has one sender.
    pub fn sender<T>(&self, channel: u32) -> Result<ChannelSender<T>, NetError> {
        check_channel(channel)?;
        let mut st = self.sh.st.borrow_mut();
        let i = channel as usize;
        if st.outbound.len() <= i {
            st.outbound.resize_with(i + 1, OutChan::default);
        }
        if std::mem::replace(&mut st.outbound[i].opened, true) {
            return Err(NetError::Config(format!(
                "channel {channel}: sender opened twice"
            )));
        }
        Ok(ChannelSender {
            sh: self.sh.clone(),
            _guard: self.guard.clone(),
            channel,
            scratch: None,
            cancel: None,
            _t: PhantomData,
        })
    }

    /// The receiving end of `channel`, granting its sender `credits` buffers of this side's
    /// `buffer_bytes`: at most that much of the channel's data is ever held here.
    pub fn receiver<T>(&self, channel: u32, credits: u32) -> Result<ChannelReceiver<T>, NetError> {
        check_channel(channel)?;
        if credits == 0 {
            return Err(NetError::Config(format!("channel {channel}: zero credits")));
        }
        let mut st = self.sh.st.borrow_mut();
        let st = &mut *st;
        let i = channel as usize;
        if st.inbound.len() <= i {
            st.inbound.resize_with(i + 1, InChan::default);
        }
        let chan = &mut st.inbound[i];
        if chan.window != 0 {
            return Err(NetError::Config(format!(
                "channel {channel}: receiver opened twice"
            )));
        }
        chan.window = credits;
        chan.pending_return = credits;
        chan.queue.reserve(credits.min(1 << 16) as usize);
        st.credit_dirty.push(channel);
        if let Some(w) = st.writer_waker.take() {
            w.wake();
        }
        Ok(ChannelReceiver {
            sh: self.sh.clone(),
            _guard: self.guard.clone(),
            channel,
            done: false,
            _t: PhantomData,
        })
    }

    /// Queues a control message (not flow-controlled: the control plane's messages are few).
    pub fn send_control(&self, msg: &Control) -> Result<(), NetError> {
        let buf = self.sh.take_spare();
        let (buf, len) = wire::encode_archive(FrameKind::Control, 0, msg, buf)
            .map_err(|e| NetError::Config(format!("serialize a control message: {e}")))?;
        if len > self.sh.params.peer_frame_payload_max {
            return Err(NetError::TooLarge {
                peer: self.sh.params.peer,
                len: len as usize,
                max: self.sh.params.peer_frame_payload_max,
            });
        }
        let mut st = self.sh.st.borrow_mut();
        if st.closed.is_some() {
            return Err(self.sh.disconnected(&st));
        }
        push_frame(&mut st, buf);
        Ok(())
    }

    /// The next control message; `None` once the connection ended cleanly.
    pub async fn recv_control(&self) -> Result<Option<Control>, NetError> {
        poll_fn(|cx| {
            let mut st = self.sh.st.borrow_mut();
            if let Some((m, len)) = st.control_in.pop_front() {
                st.control_in_bytes -= len;
                return Poll::Ready(Ok(Some(m)));
            }
            match st.closed.as_deref() {
                Some("") => Poll::Ready(Ok(None)),
                Some(_) => Poll::Ready(Err(self.sh.disconnected(&st))),
                None => {
                    st.control_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The connection's counters.
    pub fn stats(&self) -> ConnStats {
        let mut s = self.sh.st.borrow().stats;
        s.recv_buffers_allocated = self.sh.pool.allocated();
        s
    }

    /// Whether the connection has closed (cleanly or not).
    pub fn is_closed(&self) -> bool {
        self.sh.st.borrow().closed.is_some()
    }

    /// Starts closing: what is queued is still sent.
    pub fn close(&self) {
        self.sh.request_close();
    }

    /// Fails the connection at once: every waiting sender and receiver gets
    /// [`NetError::Cancelled`], nothing queued is flushed. For a part that is stopped while a
    /// peer no longer reads (paused, say), whose graceful close would wait for it.
    pub fn abort(&self) {
        self.sh.fail(&NetError::Cancelled);
    }

    /// Starts closing and waits until everything queued has been written and our direction
    /// of the stream ended (or the connection failed): what a worker awaits before its
    /// executor stops, so that its last frames are not lost with it.
    pub async fn close_and_flush(&self) {
        self.sh.request_close();
        poll_fn(|cx| {
            let mut st = self.sh.st.borrow_mut();
            if st.write_done || st.closed.is_some() {
                return Poll::Ready(());
            }
            st.flush_wakers.push(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

fn check_channel(channel: u32) -> Result<(), NetError> {
    if channel >= CHANNELS_MAX {
        return Err(NetError::Config(format!(
            "channel {channel} is not below {CHANNELS_MAX}"
        )));
    }
    Ok(())
}

fn push_frame(st: &mut State, buf: Vec<u8>) {
    st.out_bytes += buf.len();
    st.stats.out_bytes_max_seen = st.stats.out_bytes_max_seen.max(st.out_bytes);
    st.stats.frames_out += 1;
    st.out_queue.push_back(buf);
    if let Some(w) = st.writer_waker.take() {
        w.wake();
    }
}

/// The sending end of one channel. Sends keep their order; a send waits for the channel's
/// credit and for room in the connection's write queue, and gives up when the connection
/// closes or (with [`ChannelSender::set_cancel`]) when the job is cancelled.
pub struct ChannelSender<T> {
    sh: Rc<Shared>,
    _guard: Rc<Guard>,
    channel: u32,
    scratch: Option<Vec<u8>>,
    cancel: Option<Arc<AtomicBool>>,
    _t: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for ChannelSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChannelSender({} #{})",
            self.sh.params.peer, self.channel
        )
    }
}

impl<T> ChannelSender<T> {
    /// A blocked send checks `cancelled` every few milliseconds and fails with
    /// [`NetError::Cancelled`] once it is set (the job's cancellation flag).
    pub fn set_cancel(&mut self, cancelled: Arc<AtomicBool>) {
        self.cancel = Some(cancelled);
    }

    /// The channel's id.
    pub fn channel(&self) -> u32 {
        self.channel
    }

    /// Credits held now (for tests and metrics).
    pub fn credits(&self) -> u32 {
        let st = self.sh.st.borrow();
        st.outbound
            .get(self.channel as usize)
            .map_or(0, |c| c.credits)
    }

    /// Sends a frame of element kind `kind` whose payload `payload` appends to the buffer it
    /// is given (at an offset that is a multiple of 16): for a sender whose records are
    /// encoded by its own codec rather than as a [`wire::WireBatch`]. The receiver gets a
    /// [`Received::Records`] for [`FrameKind::Records`] (read it with
    /// [`RecvBatch::payload`]); other kinds must carry their usual payloads. Waits for credit
    /// and room like [`ChannelSender::send`]; cancel-safe.
    pub async fn send_payload(
        &mut self,
        kind: FrameKind,
        payload: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), NetError> {
        let mut buf = self.scratch.take().unwrap_or_else(|| self.sh.take_spare());
        let start = frame::begin(&mut buf);
        if let Err(e) = payload(&mut buf) {
            buf.clear();
            self.scratch = Some(buf);
            return Err(NetError::Config(format!("encode a {kind:?} payload: {e}")));
        }
        if buf.len() - start - FRAME_HEADER_BYTES > frame::FRAME_PAYLOAD_MAX as usize {
            let len = buf.len() - start - FRAME_HEADER_BYTES;
            buf.clear();
            self.scratch = Some(buf);
            return Err(NetError::TooLarge {
                peer: self.sh.params.peer,
                len,
                max: self.sh.params.peer_frame_payload_max,
            });
        }
        let len = frame::finish(&mut buf, start, kind, self.channel);
        self.enqueue(buf, len).await
    }

    /// Waits for credit and room, then queues the encoded frame `buf` (payload `len` bytes).
    async fn enqueue(&mut self, mut buf: Vec<u8>, len: u32) -> Result<(), NetError> {
        let max = self.sh.params.peer_frame_payload_max;
        if len > max {
            buf.clear();
            self.scratch = Some(buf);
            return Err(NetError::TooLarge {
                peer: self.sh.params.peer,
                len: len as usize,
                max,
            });
        }
        let cost = cost(len as usize, self.sh.params.peer_buffer_bytes);
        let mut frame = Some(buf);
        let sh = &self.sh;
        let channel = self.channel;
        let enqueue = poll_fn(|cx| sh.poll_enqueue(cx, channel, &mut frame, cost));
        match &self.cancel {
            None => enqueue.await,
            Some(flag) => unless_cancelled(enqueue, flag).await,
        }
    }
}

impl<T: WireRecord> ChannelSender<T> {
    /// Sends `element`: encodes it, waits for credit and room, queues it for the writer.
    /// Cancel-safe: dropping the future before it completes sends nothing.
    pub async fn send(&mut self, element: Element<'_, T>) -> Result<(), NetError> {
        let buf = self.scratch.take().unwrap_or_else(|| self.sh.take_spare());
        let (buf, len) = wire::encode_element(self.channel, &element, buf)
            .map_err(|e| NetError::Config(format!("serialize a {:?}: {e}", element.kind())))?;
        self.enqueue(buf, len).await
    }
}

impl Shared {
    fn poll_enqueue(
        &self,
        cx: &mut Context<'_>,
        channel: u32,
        frame: &mut Option<Vec<u8>>,
        cost: u32,
    ) -> Poll<Result<(), NetError>> {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        if st.closed.is_some() || st.closing {
            return Poll::Ready(Err(self.disconnected(st)));
        }
        let room = st.out_bytes < self.params.out_bytes_max;
        let chan = &mut st.outbound[channel as usize];
        let need = cost.min(chan.window);
        if chan.window == 0 || chan.credits < need || !room {
            chan.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        chan.credits = chan.credits.saturating_sub(cost);
        if let Some(buf) = frame.take() {
            push_frame(st, buf);
        }
        Poll::Ready(Ok(()))
    }
}

/// Awaits `fut`, or fails with [`NetError::Cancelled`] once `cancelled` is set while it waits
/// (the same contract as `sluice_core::exchange::unless_cancelled`).
pub async fn unless_cancelled<T>(
    fut: impl Future<Output = Result<T, NetError>>,
    cancelled: &AtomicBool,
) -> Result<T, NetError> {
    let mut fut = std::pin::pin!(fut);
    if let Some(out) = futures_lite::future::poll_once(fut.as_mut()).await {
        return out;
    }
    let watch = async {
        loop {
            if cancelled.load(Ordering::Relaxed) {
                return Err(NetError::Cancelled);
            }
            glommio::timer::sleep(CANCEL_POLL_INTERVAL).await;
        }
    };
    futures_lite::future::or(fut, watch).await
}

/// What a channel delivers, in the order it was sent.
#[derive(Debug)]
pub enum Received<T> {
    /// A batch of records, in its receive buffer.
    Records(RecvBatch<T>),
    /// A watermark.
    Watermark(i64),
    /// A watermark status change.
    Status(WatermarkStatus),
    /// A checkpoint barrier.
    Barrier(WireBarrier),
    /// The sender's end of input: nothing follows.
    EndOfInput,
}

/// A received record batch. Its buffer — and the channel's credit for it — is held until it
/// is dropped: read it ([`RecvBatch::archived`] in place, or [`RecvBatch::read_into`] owned
/// records), then drop it.
pub struct RecvBatch<T> {
    buf: RecvBuf,
    cost: u32,
    channel: u32,
    sh: Rc<Shared>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for RecvBatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecvBatch({} bytes)", self.buf.bytes().len())
    }
}

impl<T> RecvBatch<T> {
    /// The payload's length in bytes.
    pub fn payload_len(&self) -> usize {
        self.buf.bytes().len()
    }

    /// The payload's bytes, 16-aligned: for a channel whose sender encodes records with its
    /// own codec ([`ChannelSender::send_payload`]); nothing has validated them.
    pub fn payload(&self) -> &[u8] {
        self.buf.bytes()
    }
}

impl<T: WireRecord> RecvBatch<T> {
    /// The batch, validated, read in place. A batch that does not validate closes the
    /// connection and is an error.
    pub fn archived(&self) -> Result<&ArchivedWireBatch<T>, NetError> {
        wire::access_batch::<T>(self.buf.bytes()).map_err(|source| {
            let e = NetError::Malformed {
                peer: self.sh.params.peer,
                source,
            };
            self.sh.fail(&e);
            e
        })
    }

    /// Validates the batch and deserializes it into reused vectors (cleared first): no
    /// allocation per record for records without heap memory.
    pub fn read_into(
        &self,
        records: &mut Vec<T>,
        timestamps: &mut Vec<i64>,
    ) -> Result<(), NetError> {
        let batch = self.archived()?;
        wire::read_batch_into(batch, records, timestamps).map_err(|source| {
            let e = NetError::Malformed {
                peer: self.sh.params.peer,
                source: wire::WireError::Invalid {
                    kind: FrameKind::Records,
                    len: self.buf.bytes().len(),
                    source,
                },
            };
            self.sh.fail(&e);
            e
        })
    }
}

impl<T> Drop for RecvBatch<T> {
    fn drop(&mut self) {
        self.sh.return_credit(self.channel, self.cost);
    }
}

/// The receiving end of one channel.
pub struct ChannelReceiver<T> {
    sh: Rc<Shared>,
    _guard: Rc<Guard>,
    channel: u32,
    done: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ChannelReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChannelReceiver({} #{})",
            self.sh.params.peer, self.channel
        )
    }
}

impl<T> ChannelReceiver<T> {
    /// The next element; `None` after [`Received::EndOfInput`]. A connection that closes
    /// before the channel's end of input is an error (its sender failed).
    pub fn recv(&mut self) -> impl Future<Output = Result<Option<Received<T>>, NetError>> + '_ {
        poll_fn(move |cx| self.poll_recv(cx))
    }

    /// Polls for the next element (for a gate that merges several inputs). Keeps only the
    /// latest waker.
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Received<T>>, NetError>> {
        if self.done {
            return Poll::Ready(Ok(None));
        }
        let mut st = self.sh.st.borrow_mut();
        let closed = st.closed.is_some();
        let chan = &mut st.inbound[self.channel as usize];
        let Some(item) = chan.queue.pop_front() else {
            if closed {
                return Poll::Ready(Err(self.sh.disconnected(&st)));
            }
            chan.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let out = match item {
            Inbound::Records(buf, cost) => {
                chan.queued_bytes -= buf.bytes().len();
                Received::Records(RecvBatch {
                    buf,
                    cost,
                    channel: self.channel,
                    sh: self.sh.clone(),
                    _t: PhantomData,
                })
            }
            Inbound::Control(e) => {
                drop(st);
                self.sh.return_credit(self.channel, 1);
                match e {
                    ControlElement::Watermark(w) => Received::Watermark(w),
                    ControlElement::Status(s) => Received::Status(s),
                    ControlElement::Barrier(b) => Received::Barrier(b),
                    ControlElement::EndOfInput => {
                        self.done = true;
                        Received::EndOfInput
                    }
                }
            }
        };
        Poll::Ready(Ok(Some(out)))
    }

    /// The most payload bytes this channel ever held queued (bounded by its credits).
    pub fn queued_bytes_max(&self) -> usize {
        let st = self.sh.st.borrow();
        st.inbound[self.channel as usize].queued_bytes_max
    }
}

impl<T> Drop for ChannelReceiver<T> {
    fn drop(&mut self) {
        let queue = {
            let mut st = self.sh.st.borrow_mut();
            let chan = &mut st.inbound[self.channel as usize];
            chan.dropped = true;
            std::mem::take(&mut chan.queue)
        };
        drop(queue);
    }
}
