//! A worker's connections to the workers of other nodes, for the stages running on it.
//!
//! One authenticated `sluice-net` connection per pair of workers on different nodes carries
//! every edge between them, one channel per edge (its index in the job graph) and direction.
//! The worker's executor opens them before its stages start ([`connect_peers`]: the lower
//! worker index connects to the higher one's listener and names itself in a
//! `Control::Data` message) and installs them for this thread ([`install`]); the stages' ends
//! of remote channels come from here. Connections are `Rc`s of one executor, hence the
//! thread-local: a stage task runs on the thread that installed them.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_net::wire::Control;
use sluice_net::{ChannelReceiver, ChannelSender, Connection, Listener, NetConfig, NetError};

use crate::FastMap;
use crate::error::{Error, Result};

/// Credits (receive buffers) granted per remote channel: like a local channel's
/// [`CHANNEL_BATCHES_MAX`](crate::exchange::CHANNEL_BATCHES_MAX) batches.
pub const REMOTE_CHANNEL_CREDITS: u32 = 8;

/// A worker's connections, by the peer's global worker index.
pub(crate) struct Links {
    conns: FastMap<usize, Connection>,
}

thread_local! {
    static LINKS: RefCell<Option<Rc<Links>>> = const { RefCell::new(None) };
}

/// Makes `links` this thread's connections.
pub(crate) fn install(links: Links) {
    LINKS.with(|l| *l.borrow_mut() = Some(Rc::new(links)));
}

/// Removes this thread's connections (closed when their last user drops them).
pub(crate) fn uninstall() -> Option<Rc<Links>> {
    LINKS.with(|l| l.borrow_mut().take())
}

/// Fails this thread's connections at once (see `Connection::abort`): the part is being
/// stopped, and a peer that does not read must not hold its stages.
pub(crate) fn abort_installed() {
    LINKS.with(|l| {
        if let Some(links) = l.borrow().as_ref() {
            links.abort();
        }
    });
}

fn with_conn<R>(peer: usize, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
    LINKS.with(|l| {
        let links = l.borrow();
        let conn = links
            .as_ref()
            .and_then(|links| links.conns.get(&peer))
            .ok_or_else(|| {
                Error::Config(format!(
                    "internal: no connection to worker {peer} on this worker"
                ))
            })?;
        f(conn)
    })
}

/// The sending end of `channel` to worker `peer`.
pub(crate) fn sender(peer: usize, channel: u32) -> Result<ChannelSender<()>> {
    with_conn(peer, |c| {
        c.sender(channel)
            .map_err(|e| net_error("open a remote channel", &e))
    })
}

/// The receiving end of `channel` from worker `peer`.
pub(crate) fn receiver(peer: usize, channel: u32) -> Result<ChannelReceiver<()>> {
    with_conn(peer, |c| {
        c.receiver(channel, REMOTE_CHANNEL_CREDITS)
            .map_err(|e| net_error("open a remote channel", &e))
    })
}

/// A transport error as a job error: a closed connection or a cancelled wait is a
/// consequence of a failure elsewhere; anything else is a failure of its own.
pub(crate) fn net_error(op: &'static str, e: &NetError) -> Error {
    match e {
        NetError::Cancelled => Error::Cancelled,
        NetError::Disconnected { .. } => Error::Disconnected {
            stage: op.to_owned(),
            what: "a connection to another node",
        },
        other => Error::Network {
            op,
            message: crate::runtime::one_line(&other.to_string()),
        },
    }
}

impl Links {
    /// Fails every connection at once.
    pub(crate) fn abort(&self) {
        for conn in self.conns.values() {
            conn.abort();
        }
    }

    /// Starts closing every connection and waits until each has flushed what was queued.
    pub(crate) async fn close_and_flush(&self) {
        for conn in self.conns.values() {
            conn.close_and_flush().await;
        }
    }
}

/// How long a worker waits for its peers to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens worker `me`'s connections to every worker in `peers` (global indices, other nodes):
/// connects to the higher ones at `endpoints[peer]`, accepts the lower ones on `listener`.
/// Gives up after a timeout or when `cancelled` is set.
pub(crate) async fn connect_peers(
    me: usize,
    run: u64,
    peers: &[usize],
    endpoints: &[SocketAddr],
    listener: &Listener,
    net: &NetConfig,
    cancelled: &Arc<AtomicBool>,
) -> Result<Links> {
    let work = async {
        let expected: Vec<usize> = peers.iter().copied().filter(|&p| p < me).collect();
        let accepting = accept_peers(me, run, expected, listener);
        let connecting = async {
            let mut conns = FastMap::default();
            for &peer in peers.iter().filter(|&&p| p > me) {
                let addr = *endpoints.get(peer).ok_or_else(|| {
                    Error::Config(format!("internal: no endpoint for worker {peer}"))
                })?;
                let conn = sluice_net::connect(addr, net)
                    .await
                    .map_err(|e| net_error("connect to a peer worker", &e))?;
                let hello = Control::Data {
                    run,
                    worker: me as u32,
                };
                conn.send_control(&hello)
                    .map_err(|e| net_error("connect to a peer worker", &e))?;
                conns.insert(peer, conn);
            }
            Ok::<_, Error>(conns)
        };
        let (accepted, connected) = futures_lite::future::zip(accepting, connecting).await;
        let mut conns = connected?;
        conns.extend(accepted?);
        Ok(Links { conns })
    };
    let timeout = async {
        let mut waited = Duration::ZERO;
        let step = Duration::from_millis(5);
        loop {
            glommio::timer::sleep(step).await;
            waited += step;
            if cancelled.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            if waited >= CONNECT_TIMEOUT {
                return Err(Error::Network {
                    op: "connect to the peer workers",
                    message: format!(
                        "worker {me} did not reach all of them within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                });
            }
        }
    };
    futures_lite::future::or(work, timeout).await
}

/// Accepts the connections of the workers in `expected`; a connection that does not name a
/// worker of this run it expects is closed (and logged) and the wait goes on.
async fn accept_peers(
    me: usize,
    run: u64,
    mut expected: Vec<usize>,
    listener: &Listener,
) -> Result<FastMap<usize, Connection>> {
    let mut conns = FastMap::default();
    while !expected.is_empty() {
        let conn = listener
            .accept()
            .await
            .map_err(|e| net_error("accept a peer worker", &e))?;
        let first = conn.recv_control().await;
        let peer = match first {
            Ok(Some(Control::Data { run: r, worker })) if r == run => worker as usize,
            Ok(Some(Control::Data { run: r, worker })) => {
                tracing::warn!(
                    peer = %conn.peer_addr(),
                    "worker {me}: refusing worker {worker} of another job run ({r}, not {run})"
                );
                conn.close();
                continue;
            }
            other => {
                tracing::warn!(
                    peer = %conn.peer_addr(),
                    "worker {me}: refusing a connection that did not name its worker: {other:?}"
                );
                conn.close();
                continue;
            }
        };
        let Some(i) = expected.iter().position(|&p| p == peer) else {
            tracing::warn!(
                peer = %conn.peer_addr(),
                "worker {me}: refusing unexpected or duplicate worker {peer}"
            );
            conn.close();
            continue;
        };
        expected.swap_remove(i);
        conns.insert(peer, conn);
    }
    Ok(conns)
}
