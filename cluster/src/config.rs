//! How a node joins a cluster: the shared secret, names, addresses, the heartbeat timeout.
//!
//! Security defaults (RELIABILITY.md R12): nodes listen on loopback unless told otherwise,
//! and a node listens on another address only with a secret file (`--secret-file`, at least
//! 16 bytes; surrounding whitespace is ignored). Without one, a development secret known to
//! every Sluice binary is used, which is why it is accepted on loopback only: any local user
//! could join such a cluster.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use sluice_net::{ClusterSecret, NetConfig};

use crate::protocol::HEARTBEAT_TIMEOUT_DEFAULT;

/// The secret of clusters started without `--secret-file`: for loopback only.
const DEVELOPMENT_SECRET: &[u8] = b"sluice development secret: loopback only";
/// The cluster name every node announces.
pub const CLUSTER_NAME: &str = "sluice";

/// A node's cluster settings.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The shared secret.
    pub secret: ClusterSecret,
    /// Whether the secret came from a file (then non-loopback addresses are allowed).
    pub secret_from_file: bool,
    /// This node's name, for peers' logs.
    pub node: String,
    /// Silence after which a peer counts as lost.
    pub heartbeat_timeout: Duration,
}

impl ClusterConfig {
    /// Settings for node `node`, with the secret in `secret_file` (or the development
    /// secret).
    pub fn new(secret_file: Option<&Path>, node: &str) -> Result<ClusterConfig, String> {
        let (secret, from_file) = match secret_file {
            Some(path) => (read_secret(path)?, true),
            None => {
                let s =
                    ClusterSecret::new(DEVELOPMENT_SECRET.to_vec()).map_err(|e| e.to_string())?;
                (s, false)
            }
        };
        Ok(ClusterConfig {
            secret,
            secret_from_file: from_file,
            node: node.to_owned(),
            heartbeat_timeout: HEARTBEAT_TIMEOUT_DEFAULT,
        })
    }

    /// Transport settings for this node's connections.
    pub fn net(&self) -> NetConfig {
        let mut net = NetConfig::new(self.secret.clone(), CLUSTER_NAME, &self.node);
        net.allow_non_loopback = self.secret_from_file;
        net
    }

    /// Refuses to listen on `addr` when that would expose the node without a real secret.
    pub fn check_listen(&self, addr: SocketAddr, flag: &str) -> Result<(), String> {
        if addr.ip().is_unspecified() {
            return Err(format!(
                "{flag} {addr}: give the address peers reach this node at, not an unspecified one"
            ));
        }
        if !addr.ip().is_loopback() && !self.secret_from_file {
            return Err(format!(
                "refusing to listen on {addr} ({flag}) without --secret-file: \
                 only loopback addresses may use the development secret"
            ));
        }
        Ok(())
    }
}

fn read_secret(path: &Path) -> Result<ClusterSecret, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("read the secret file {}: {e}", path.display()))?;
    let text = bytes.trim_ascii();
    ClusterSecret::new(text.to_vec())
        .map_err(|e| format!("the secret file {}: {e}", path.display()))
}

/// Parses `host:port` into one address (the first the name resolves to).
pub fn parse_addr(s: &str, flag: &str) -> Result<SocketAddr, String> {
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("{flag} '{s}' is not an address (host:port): {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{flag} '{s}' resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_secret_file_only_loopback_is_allowed() {
        let c = ClusterConfig::new(None, "n").unwrap();
        assert!(
            c.check_listen("127.0.0.2:0".parse().unwrap(), "--listen")
                .is_ok()
        );
        let err = c
            .check_listen("10.1.2.3:7000".parse().unwrap(), "--listen")
            .unwrap_err();
        assert!(err.contains("--secret-file"), "{err}");
        assert!(
            c.check_listen("0.0.0.0:1".parse().unwrap(), "--listen")
                .is_err()
        );
    }

    #[test]
    fn secret_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "tiny\n").unwrap();
        let err = ClusterConfig::new(Some(&short), "n").unwrap_err();
        assert!(err.contains("16"), "{err}");
        let good = dir.path().join("good");
        std::fs::write(&good, "a secret of more than sixteen bytes\n").unwrap();
        let c = ClusterConfig::new(Some(&good), "n").unwrap();
        assert!(
            c.check_listen("10.1.2.3:7000".parse().unwrap(), "--listen")
                .is_ok()
        );
        let missing = ClusterConfig::new(Some(&dir.path().join("nope")), "n").unwrap_err();
        assert!(missing.contains("nope"), "{missing}");
        assert!(parse_addr("not an address", "--coordinator").is_err());
        assert!(parse_addr("127.0.0.1:6123", "--coordinator").is_ok());
    }
}
