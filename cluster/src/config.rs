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

/// Parses a CPU list as Linux prints one (`0-3,6`): the CPUs in the order given, each once,
/// every one of them in `allowed` (the CPUs this process may run on).
pub fn parse_cpu_list(s: &str, flag: &str, allowed: &[usize]) -> Result<Vec<usize>, String> {
    let bad = |why: &str| format!("{flag} '{s}': {why}");
    let mut cpus = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (item, item),
        };
        let num = |t: &str| {
            t.parse::<usize>().map_err(|_| {
                bad(&format!(
                    "'{item}' is not a CPU or a range of CPUs (like 0-3)"
                ))
            })
        };
        let (first, last) = (num(first)?, num(last)?);
        if first > last {
            return Err(bad(&format!("the range '{item}' is empty")));
        }
        for cpu in first..=last {
            if cpus.contains(&cpu) {
                return Err(bad(&format!("CPU {cpu} is listed twice")));
            }
            if !allowed.contains(&cpu) {
                return Err(bad(&format!(
                    "CPU {cpu} is not one this process may use ({})",
                    cpu_list(allowed)
                )));
            }
            cpus.push(cpu);
        }
    }
    Ok(cpus)
}

/// `cpus` as a CPU list (`0-3,6`).
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_linux_prints_them() {
        let allowed: Vec<usize> = (0..8).collect();
        assert_eq!(
            parse_cpu_list("0-3,6", "--cpus", &allowed),
            Ok(vec![0, 1, 2, 3, 6])
        );
        assert_eq!(parse_cpu_list("5, 1", "--cpus", &allowed), Ok(vec![5, 1]));
        assert_eq!(parse_cpu_list("7", "--cpus", &allowed), Ok(vec![7]));
        for (list, why) in [
            ("", "'' is not a CPU"),
            ("a", "'a' is not a CPU"),
            ("1-", "'1-' is not a CPU"),
            ("3-1", "the range '3-1' is empty"),
            ("1,0-2", "CPU 1 is listed twice"),
            ("6-9", "CPU 8 is not one this process may use (0-7)"),
        ] {
            let err = parse_cpu_list(list, "--cpus", &allowed).unwrap_err();
            assert!(err.starts_with(&format!("--cpus '{list}': ")), "{err}");
            assert!(err.contains(why), "{list}: {err}");
        }
        assert_eq!(cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

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
