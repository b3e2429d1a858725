//! Opening connections: [`NetConfig`], [`Listener`] (bind, accept, authenticate) and
//! [`connect`], with the handshake of `auth` under a timeout.
//!
//! A listener binds to loopback unless its configuration allows another address. It runs the
//! handshakes of incoming streams concurrently, at most `handshakes_pending_max` at a time (a
//! stream beyond that is closed at once), each within `handshake_timeout`, in frames of at most
//! [`HANDSHAKE_PAYLOAD_MAX`] bytes: half-open or slow peers cost a bounded amount of memory
//! and file descriptors. Every refused peer is one `tracing` line and one count in
//! [`NetStats`].

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;

use crate::auth::{
    self, ClusterSecret, NAME_BYTES_MAX, PROTOCOL_VERSION, ReplayCache, fresh_nonce,
};
use crate::conn::{Connection, Params};
use crate::error::NetError;
use crate::frame::{self, FRAME_HEADER_BYTES, FRAME_PAYLOAD_MAX, FrameKind};
use crate::wire::{self, Handshake};

/// The largest handshake payload accepted: a peer that has not authenticated can make the
/// listener allocate no more than this per connection.
pub const HANDSHAKE_PAYLOAD_MAX: u32 = 1024;
/// Client nonces remembered per listener, to refuse replays.
const REPLAY_CACHE_NONCES: usize = 65_536;

/// How a node's transport is set up.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The shared cluster secret.
    pub secret: ClusterSecret,
    /// The cluster's name; peers of another cluster are refused.
    pub cluster: String,
    /// This node's name, for the peer's logs.
    pub node: String,
    /// Bytes per receive buffer, i.e. per credit (default 64 KiB).
    pub buffer_bytes: u32,
    /// The largest payload this side accepts (default 16 MiB, at most 64 MiB).
    pub frame_payload_max: u32,
    /// Bytes queued for a connection's writer before its senders wait (default 1 MiB).
    pub out_bytes_max: usize,
    /// The reader's staging buffer (default 256 KiB).
    pub read_chunk_bytes: usize,
    /// Time a peer has to complete the handshake (default 5 s).
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once per listener (default 64).
    pub handshakes_pending_max: usize,
    /// Whether a listener may bind to an address other than loopback (default false).
    pub allow_non_loopback: bool,
}

impl NetConfig {
    /// Defaults for a cluster named `cluster` with `secret`, this node named `node`.
    pub fn new(secret: ClusterSecret, cluster: &str, node: &str) -> NetConfig {
        NetConfig {
            secret,
            cluster: cluster.into(),
            node: node.into(),
            buffer_bytes: 64 << 10,
            frame_payload_max: 16 << 20,
            out_bytes_max: 1 << 20,
            read_chunk_bytes: 256 << 10,
            handshake_timeout: Duration::from_secs(5),
            handshakes_pending_max: 64,
            allow_non_loopback: false,
        }
    }

    fn validate(&self) -> Result<(), NetError> {
        let bad = |what: String| Err(NetError::Config(what));
        if self.cluster.len() > NAME_BYTES_MAX || self.node.len() > NAME_BYTES_MAX {
            return bad(format!(
                "cluster and node names are at most {NAME_BYTES_MAX} bytes"
            ));
        }
        if self.buffer_bytes < 4096 || self.frame_payload_max > FRAME_PAYLOAD_MAX {
            return bad(format!(
                "buffer_bytes {} must be at least 4096 and frame_payload_max {} at most {}",
                self.buffer_bytes, self.frame_payload_max, FRAME_PAYLOAD_MAX
            ));
        }
        if self.read_chunk_bytes < 4 * FRAME_HEADER_BYTES || self.read_chunk_bytes % 16 != 0 {
            return bad(format!(
                "read_chunk_bytes {} must be a multiple of 16 of at least 64",
                self.read_chunk_bytes
            ));
        }
        Ok(())
    }

    fn params(&self, peer: SocketAddr, peer_node: String, buffer: u32, max: u32) -> Params {
        Params {
            peer,
            peer_node,
            buffer_bytes: self.buffer_bytes,
            frame_payload_max: self.frame_payload_max,
            peer_buffer_bytes: buffer,
            peer_frame_payload_max: max,
            out_bytes_max: self.out_bytes_max,
            read_chunk_bytes: self.read_chunk_bytes,
            pool_buffers_max: 1024,
        }
    }
}

/// Counts of refused peers and connection failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Connections authenticated.
    pub accepted: u64,
    /// Peers that failed authentication (wrong secret, wrong cluster, replayed nonce).
    pub auth_failures: u64,
    /// Peers that sent malformed frames or broke the protocol (garbage, frames before the
    /// handshake, oversized lengths, bad payloads, credit violations).
    pub protocol_errors: u64,
    /// Peers that did not finish the handshake in time.
    pub handshake_timeouts: u64,
    /// Streams closed at once because too many handshakes were in progress.
    pub refused_busy: u64,
}

/// Shared counters of a listener (or of one outgoing connection).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    stats: Cell<NetStats>,
}

impl Counters {
    fn update(&self, f: impl FnOnce(&mut NetStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    pub(crate) fn peer_fault(&self, err: &NetError) {
        self.update(|s| match err {
            NetError::Auth { .. } => s.auth_failures += 1,
            NetError::HandshakeTimeout { .. } => s.handshake_timeouts += 1,
            _ => s.protocol_errors += 1,
        });
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// A bound listener that authenticates its peers. Must be used on the executor that bound it;
/// dropping it stops accepting.
pub struct Listener {
    local: SocketAddr,
    incoming: LocalReceiver<Connection>,
    counters: Rc<Counters>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Listener({})", self.local)
    }
}

impl Listener {
    /// Binds `addr` (use port 0 for any free port). A non-loopback address is refused unless
    /// `config.allow_non_loopback` is set.
    pub fn bind(addr: SocketAddr, config: &NetConfig) -> Result<Listener, NetError> {
        config.validate()?;
        if !is_loopback(addr.ip()) && !config.allow_non_loopback {
            return Err(NetError::Config(format!(
                "refusing to listen on {addr}: not a loopback address (allow it explicitly)"
            )));
        }
        // Bound here rather than by glommio, which sets SO_REUSEPORT: a second listener on a
        // taken address would succeed and share its connections. The standard library binds
        // exclusively, with SO_REUSEADDR, so a process restarted on its address (a coordinator
        // after a crash) is not refused for the connections of its predecessor still in
        // TIME_WAIT.
        let std_listener = std::net::TcpListener::bind(addr).map_err(|e| NetError::Io {
            op: "bind",
            peer: addr.to_string(),
            source: e,
        })?;
        let fd = std::os::fd::IntoRawFd::into_raw_fd(std_listener);
        // SAFETY: `fd` is a bound, listening TCP socket this function owns (just taken out of
        // the standard library's listener, which no longer closes it); glommio's listener
        // takes it over and closes it when dropped.
        #[allow(unsafe_code)]
        let listener = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let local = listener.local_addr().map_err(|e| NetError::Io {
            op: "local address of",
            peer: addr.to_string(),
            source: e.into(),
        })?;
        let (tx, rx) = local_channel::new_bounded(config.handshakes_pending_max.max(1));
        let counters = Rc::new(Counters::default());
        let task = glommio::spawn_local(accept_loop(
            listener,
            config.clone(),
            Rc::new(tx),
            counters.clone(),
        ))
        .detach();
        Ok(Listener {
            local,
            incoming: rx,
            counters,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next authenticated connection.
    pub async fn accept(&self) -> Result<Connection, NetError> {
        self.incoming
            .recv()
            .await
            .ok_or_else(|| NetError::Config(format!("listener {} stopped", self.local)))
    }

    /// Counts of accepted and refused peers so far.
    pub fn stats(&self) -> NetStats {
        self.counters.stats.get()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.cancel();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: NetConfig,
    tx: Rc<local_channel::LocalSender<Connection>>,
    counters: Rc<Counters>,
) {
    let pending = Rc::new(Cell::new(0usize));
    let replay = Rc::new(RefCell::new(ReplayCache::new(REPLAY_CACHE_NONCES)));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept on {:?}: {e}", listener.local_addr().ok());
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        if pending.get() >= config.handshakes_pending_max {
            counters.update(|s| s.refused_busy += 1);
            tracing::warn!(%peer, "refusing connection: {} handshakes in progress", pending.get());
            drop(stream);
            continue;
        }
        pending.set(pending.get() + 1);
        let (config, tx, counters, pending, replay) = (
            config.clone(),
            tx.clone(),
            counters.clone(),
            pending.clone(),
            replay.clone(),
        );
        glommio::spawn_local(async move {
            let result = with_timeout(
                config.handshake_timeout,
                peer,
                server_handshake(stream, peer, &config, &replay),
            )
            .await;
            pending.set(pending.get() - 1);
            match result {
                Ok((stream, params)) => {
                    counters.update(|s| s.accepted += 1);
                    let conn = Connection::start(stream, params, counters.clone());
                    let _ = tx.send(conn).await;
                }
                Err(e) => {
                    counters.peer_fault(&e);
                    tracing::warn!(%peer, "refusing connection: {e}");
                }
            }
        })
        .detach();
    }
}

async fn with_timeout<T>(
    limit: Duration,
    peer: SocketAddr,
    fut: impl Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    let timeout = async {
        glommio::timer::sleep(limit).await;
        Err(NetError::HandshakeTimeout {
            peer,
            ms: limit.as_millis() as u64,
        })
    };
    futures_lite::future::or(fut, timeout).await
}

fn io(op: &'static str, peer: SocketAddr) -> impl FnOnce(std::io::Error) -> NetError {
    move |source| NetError::Io {
        op,
        peer: peer.to_string(),
        source,
    }
}

async fn write_handshake(
    stream: &mut TcpStream,
    peer: SocketAddr,
    msg: &Handshake,
) -> Result<(), NetError> {
    let (buf, _) = wire::encode_archive(FrameKind::Handshake, 0, msg, Vec::new())
        .map_err(|e| NetError::Config(format!("serialize a handshake: {e}")))?;
    stream.write_all(&buf).await.map_err(io("write to", peer))
}

/// Reads exactly one handshake frame: anything else — another kind, a length over
/// [`HANDSHAKE_PAYLOAD_MAX`], a bad crc, a payload that does not validate — is an error
/// before anything larger than a header is allocated.
async fn read_handshake(stream: &mut TcpStream, peer: SocketAddr) -> Result<Handshake, NetError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .await
        .map_err(io("read handshake from", peer))?;
    let frame_err = |source| NetError::Frame { peer, source };
    let h = frame::decode_header(&header, 0, HANDSHAKE_PAYLOAD_MAX)
        .map_err(frame_err)?
        .ok_or_else(|| NetError::Protocol {
            peer,
            reason: "short handshake header".into(),
        })?;
    if h.kind != FrameKind::Handshake {
        return Err(NetError::Protocol {
            peer,
            reason: format!("a {:?} frame before the handshake finished", h.kind),
        });
    }
    let mut body = crate::buf::AlignedBuf::with_capacity(h.padded_len());
    body.resize(h.padded_len(), 0);
    stream
        .read_exact(&mut body)
        .await
        .map_err(io("read handshake from", peer))?;
    let (payload, padding) = body.split_at(h.payload_len as usize);
    frame::check_payload(&h, payload, padding, 0).map_err(frame_err)?;
    wire::decode_handshake(payload).map_err(|source| NetError::Malformed { peer, source })
}

fn auth_failed(peer: SocketAddr, reason: &'static str) -> NetError {
    NetError::Auth { peer, reason }
}

fn unexpected(peer: SocketAddr, step: &str, got: &Handshake) -> NetError {
    let got = match got {
        Handshake::Hello { .. } => "hello",
        Handshake::Challenge { .. } => "challenge",
        Handshake::Response { .. } => "response",
        Handshake::Accepted => "accepted",
    };
    NetError::Protocol {
        peer,
        reason: format!("expected a handshake {step}, got a {got}"),
    }
}

fn check_limits(peer: SocketAddr, buffer: u32, max: u32) -> Result<(), NetError> {
    if buffer < 4096 || max > FRAME_PAYLOAD_MAX || max < buffer.min(FRAME_PAYLOAD_MAX) {
        return Err(NetError::Protocol {
            peer,
            reason: format!("announced buffer of {buffer} bytes and payload limit of {max}"),
        });
    }
    Ok(())
}

async fn server_handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: &NetConfig,
    replay: &RefCell<ReplayCache>,
) -> Result<(TcpStream, Params), NetError> {
    let hello = read_handshake(&mut stream, peer).await?;
    let Handshake::Hello {
        version,
        cluster,
        node,
        nonce: nonce_c,
        buffer_bytes,
        frame_payload_max,
    } = hello
    else {
        return Err(unexpected(peer, "hello", &hello));
    };
    if version != PROTOCOL_VERSION {
        return Err(NetError::Protocol {
            peer,
            reason: format!("protocol version {version}, expected {PROTOCOL_VERSION}"),
        });
    }
    if node.len() > NAME_BYTES_MAX {
        return Err(NetError::Protocol {
            peer,
            reason: format!("a node name of {} bytes", node.len()),
        });
    }
    if cluster != config.cluster {
        return Err(auth_failed(peer, "wrong cluster name"));
    }
    check_limits(peer, buffer_bytes, frame_payload_max)?;
    if !replay.borrow_mut().insert(nonce_c) {
        return Err(auth_failed(peer, "replayed nonce"));
    }
    let nonce_s = fresh_nonce()?;
    let challenge = Handshake::Challenge {
        node: config.node.clone(),
        nonce: nonce_s,
        proof: auth::server_proof(&config.secret, &config.cluster, &nonce_c, &nonce_s),
        buffer_bytes: config.buffer_bytes,
        frame_payload_max: config.frame_payload_max,
    };
    write_handshake(&mut stream, peer, &challenge).await?;
    let response = read_handshake(&mut stream, peer).await?;
    let Handshake::Response { proof } = response else {
        return Err(unexpected(peer, "response", &response));
    };
    if !auth::verify_client(&config.secret, &config.cluster, &nonce_c, &nonce_s, &proof) {
        return Err(auth_failed(peer, "wrong secret"));
    }
    write_handshake(&mut stream, peer, &Handshake::Accepted).await?;
    let _ = stream.set_nodelay(true);
    let params = config.params(peer, node, buffer_bytes, frame_payload_max);
    Ok((stream, params))
}

async fn client_handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: &NetConfig,
) -> Result<(TcpStream, Params), NetError> {
    let nonce_c = fresh_nonce()?;
    let hello = Handshake::Hello {
        version: PROTOCOL_VERSION,
        cluster: config.cluster.clone(),
        node: config.node.clone(),
        nonce: nonce_c,
        buffer_bytes: config.buffer_bytes,
        frame_payload_max: config.frame_payload_max,
    };
    write_handshake(&mut stream, peer, &hello).await?;
    let challenge = read_handshake(&mut stream, peer).await?;
    let Handshake::Challenge {
        node,
        nonce: nonce_s,
        proof,
        buffer_bytes,
        frame_payload_max,
    } = challenge
    else {
        return Err(unexpected(peer, "challenge", &challenge));
    };
    if nonce_s == nonce_c {
        return Err(auth_failed(peer, "server reflected the client's nonce"));
    }
    if !auth::verify_server(&config.secret, &config.cluster, &nonce_c, &nonce_s, &proof) {
        return Err(auth_failed(peer, "server does not know the secret"));
    }
    check_limits(peer, buffer_bytes, frame_payload_max)?;
    let response = Handshake::Response {
        proof: auth::client_proof(&config.secret, &config.cluster, &nonce_c, &nonce_s),
    };
    write_handshake(&mut stream, peer, &response).await?;
    let accepted = read_handshake(&mut stream, peer).await?;
    if accepted != Handshake::Accepted {
        return Err(unexpected(peer, "acceptance", &accepted));
    }
    let _ = stream.set_nodelay(true);
    if node.len() > NAME_BYTES_MAX {
        return Err(NetError::Protocol {
            peer,
            reason: format!("a node name of {} bytes", node.len()),
        });
    }
    let params = config.params(peer, node, buffer_bytes, frame_payload_max);
    Ok((stream, params))
}

/// Connects to `addr` and authenticates both ways, within `config.handshake_timeout`.
pub async fn connect(addr: SocketAddr, config: &NetConfig) -> Result<Connection, NetError> {
    config.validate()?;
    let counters = Rc::new(Counters::default());
    let result = with_timeout(config.handshake_timeout, addr, async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| io("connect to", addr)(e.into()))?;
        client_handshake(stream, addr, config).await
    })
    .await;
    match result {
        Ok((stream, params)) => Ok(Connection::start(stream, params, counters)),
        Err(e) => {
            if e.is_peer_fault() {
                tracing::warn!(peer = %addr, "connection refused: {e}");
            }
            Err(e)
        }
    }
}
