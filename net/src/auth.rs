//! Peer authentication: a challenge–response handshake over HMAC-SHA256 with a shared cluster
//! secret, fresh random nonces from both sides, and a cache of recent client nonces so that a
//! replayed hello is refused. The secret never crosses the wire; each side proves it knows it
//! by a MAC over a transcript that names its role (so a proof cannot be reflected back), the
//! cluster, and both nonces (so a recorded proof is useless on a new connection).
//!
//! | step | frame | the receiver checks |
//! | --- | --- | --- |
//! | 1 | C → S `Hello { version, cluster, node, nonce_c, .. }` | version, cluster, new `nonce_c` |
//! | 2 | S → C `Challenge { nonce_s, proof_s, .. }` | `proof_s`, `nonce_s ≠ nonce_c` |
//! | 3 | C → S `Response { proof_c }` | `proof_c` |
//! | 4 | S → C `Accepted` | — |
//!
//! with `proof_s = HMAC(secret, "sluice/1 server" ‖ cluster ‖ nonce_c ‖ nonce_s)` and
//! `proof_c = HMAC(secret, "sluice/1 client" ‖ cluster ‖ nonce_s ‖ nonce_c)`, compared in
//! constant time. Both sides also announce their receive buffer size and payload limit.
//!
//! This authenticates peers; it does not encrypt or protect the stream against an active
//! attacker on the path (that would need TLS), which is why nodes bind to loopback unless told
//! otherwise.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::NetError;

/// The handshake's protocol version.
pub const PROTOCOL_VERSION: u32 = 1;
/// Bytes in a nonce and in a proof.
pub const NONCE_BYTES: usize = 32;
/// The shortest secret accepted.
pub const SECRET_BYTES_MIN: usize = 16;
/// Cluster and node names are at most this long.
pub const NAME_BYTES_MAX: usize = 128;

const SERVER_LABEL: &[u8] = b"sluice/1 server";
const CLIENT_LABEL: &[u8] = b"sluice/1 client";

/// The shared cluster secret. Its `Debug` form never shows the bytes.
#[derive(Clone)]
pub struct ClusterSecret(Arc<[u8]>);

impl ClusterSecret {
    /// A secret of at least [`SECRET_BYTES_MIN`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<ClusterSecret, NetError> {
        let bytes: Vec<u8> = bytes.into();
        if bytes.len() < SECRET_BYTES_MIN {
            return Err(NetError::Config(format!(
                "the cluster secret has {} bytes; at least {SECRET_BYTES_MIN} are needed",
                bytes.len()
            )));
        }
        Ok(ClusterSecret(bytes.into()))
    }

    /// A fresh random secret (for tests and single-node runs).
    pub fn random() -> Result<ClusterSecret, NetError> {
        ClusterSecret::new(fresh_nonce()?.to_vec())
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret(<{} bytes>)", self.0.len())
    }
}

/// 32 bytes from the operating system's random source.
pub fn fresh_nonce() -> Result<[u8; NONCE_BYTES], NetError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::getrandom(&mut nonce)
        .map_err(|e| NetError::Config(format!("random source for nonces failed: {e}")))?;
    Ok(nonce)
}

fn mac(secret: &ClusterSecret, label: &[u8], cluster: &str, a: &[u8], b: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&secret.0)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(label);
    m.update(&(cluster.len() as u32).to_le_bytes());
    m.update(cluster.as_bytes());
    m.update(a);
    m.update(b);
    m
}

/// The server's proof for the client nonce `nonce_c` and its own nonce `nonce_s`.
pub fn server_proof(
    secret: &ClusterSecret,
    cluster: &str,
    nonce_c: &[u8; NONCE_BYTES],
    nonce_s: &[u8; NONCE_BYTES],
) -> [u8; NONCE_BYTES] {
    mac(secret, SERVER_LABEL, cluster, nonce_c, nonce_s)
        .finalize()
        .into_bytes()
        .into()
}

/// The client's proof.
pub fn client_proof(
    secret: &ClusterSecret,
    cluster: &str,
    nonce_c: &[u8; NONCE_BYTES],
    nonce_s: &[u8; NONCE_BYTES],
) -> [u8; NONCE_BYTES] {
    mac(secret, CLIENT_LABEL, cluster, nonce_s, nonce_c)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a server proof in constant time.
pub fn verify_server(
    secret: &ClusterSecret,
    cluster: &str,
    nonce_c: &[u8; NONCE_BYTES],
    nonce_s: &[u8; NONCE_BYTES],
    proof: &[u8; NONCE_BYTES],
) -> bool {
    mac(secret, SERVER_LABEL, cluster, nonce_c, nonce_s)
        .verify_slice(proof)
        .is_ok()
}

/// Checks a client proof in constant time.
pub fn verify_client(
    secret: &ClusterSecret,
    cluster: &str,
    nonce_c: &[u8; NONCE_BYTES],
    nonce_s: &[u8; NONCE_BYTES],
    proof: &[u8; NONCE_BYTES],
) -> bool {
    mac(secret, CLIENT_LABEL, cluster, nonce_s, nonce_c)
        .verify_slice(proof)
        .is_ok()
}

/// The most recent client nonces a listener has seen, to refuse a replayed hello. Bounded: the
/// oldest is forgotten first; a random 32-byte nonce repeats by chance with probability 0.
#[derive(Debug)]
pub struct ReplayCache {
    seen: HashSet<[u8; NONCE_BYTES]>,
    order: VecDeque<[u8; NONCE_BYTES]>,
    capacity: usize,
}

impl ReplayCache {
    /// A cache of the last `capacity` nonces.
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            seen: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    /// Records `nonce`; false if it was seen already (a replay).
    pub fn insert(&mut self, nonce: [u8; NONCE_BYTES]) -> bool {
        if !self.seen.insert(nonce) {
            return false;
        }
        self.order.push_back(nonce);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_secret_role_and_nonces() {
        let s = ClusterSecret::new(*b"0123456789abcdef").unwrap();
        let other = ClusterSecret::new(*b"0123456789abcdeX").unwrap();
        let (c, n) = ([1u8; 32], [2u8; 32]);
        let p = server_proof(&s, "c1", &c, &n);
        assert!(verify_server(&s, "c1", &c, &n, &p));
        assert!(!verify_server(&other, "c1", &c, &n, &p));
        assert!(!verify_server(&s, "c2", &c, &n, &p));
        assert!(!verify_server(&s, "c1", &n, &c, &p));
        // A server proof is not a client proof (no reflection).
        assert!(!verify_client(&s, "c1", &c, &n, &p));
        let q = client_proof(&s, "c1", &c, &n);
        assert!(verify_client(&s, "c1", &c, &n, &q));
        assert_ne!(p, q);
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert!(ClusterSecret::new(*b"short").is_err());
        let s = ClusterSecret::new(*b"a very secret value").unwrap();
        assert!(!format!("{s:?}").contains("secret value"));
    }

    #[test]
    fn replay_cache_refuses_repeats_and_forgets_the_oldest() {
        let mut r = ReplayCache::new(2);
        assert!(r.insert([1; 32]));
        assert!(!r.insert([1; 32]));
        assert!(r.insert([2; 32]));
        assert!(r.insert([3; 32]));
        assert!(r.insert([1; 32]), "forgotten after two newer nonces");
        assert!(fresh_nonce().unwrap() != fresh_nonce().unwrap());
    }
}
