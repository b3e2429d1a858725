//! Errors of the transport: each names the operation and the peer.

use std::net::SocketAddr;

use crate::frame::FrameError;
use crate::wire::WireError;

/// A transport error. Anything a peer sends that is not valid closes that connection with one
/// of these; nothing a peer sends panics.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A socket operation failed.
    #[error("{op} {peer}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The peer (or local address for bind).
        peer: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A malformed frame header or payload checksum.
    #[error("peer {peer}: {source}")]
    Frame {
        /// The peer.
        peer: SocketAddr,
        /// What was wrong.
        source: FrameError,
    },
    /// A payload that does not validate.
    #[error("peer {peer}: {source}")]
    Malformed {
        /// The peer.
        peer: SocketAddr,
        /// What was wrong.
        source: WireError,
    },
    /// A frame that breaks the protocol (wrong channel, no credit, data after the end, ...).
    #[error("peer {peer}: protocol violation: {reason}")]
    Protocol {
        /// The peer.
        peer: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// The peer failed authentication.
    #[error("peer {peer}: authentication failed: {reason}")]
    Auth {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        reason: &'static str,
    },
    /// The handshake did not finish in time.
    #[error("peer {peer}: handshake timed out after {ms} ms")]
    HandshakeTimeout {
        /// The peer.
        peer: SocketAddr,
        /// The limit.
        ms: u64,
    },
    /// The connection closed (by the peer, or after an error reported earlier).
    #[error("peer {peer}: connection closed{reason}")]
    Disconnected {
        /// The peer.
        peer: SocketAddr,
        /// ": why", or empty.
        reason: String,
    },
    /// A wait was abandoned because the job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A frame larger than the peer accepts; nothing was sent.
    #[error("peer {peer}: a {len}-byte payload exceeds the peer's {max}-byte limit")]
    TooLarge {
        /// The peer.
        peer: SocketAddr,
        /// The payload's length.
        len: usize,
        /// The peer's limit.
        max: u32,
    },
    /// A bad configuration or use of the API.
    #[error("{0}")]
    Config(String),
}

impl NetError {
    /// Whether a peer caused this error by sending something invalid (as opposed to a local
    /// condition or a closed socket).
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            NetError::Frame { .. }
                | NetError::Malformed { .. }
                | NetError::Protocol { .. }
                | NetError::Auth { .. }
                | NetError::HandshakeTimeout { .. }
        )
    }
}
