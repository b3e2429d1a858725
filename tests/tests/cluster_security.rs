//! Security basics of a cluster (RELIABILITY R12) and its user errors, on real processes: a
//! worker or client with the wrong secret is refused and the coordinator logs it; a peer
//! sending garbage, or a frame header announcing 4 GiB, is disconnected with a log line and
//! the coordinator goes on serving; a recorded handshake replayed (its hello, or its response
//! to a fresh challenge) and data or control frames before a handshake are refused; nodes
//! started with the default addresses listen on loopback only, as the kernel's socket tables
//! (`/proc/PID/net/tcp{,6}`) show; a non-loopback address needs a secret file; and every
//! mistake a user can make — an unreachable coordinator, a bad address, an unknown job id —
//! is one line on stderr and a non-zero exit.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sluice_net::wire::{Handshake, encode_archive};
use sluice_net::{ClusterSecret, FrameKind};
use sluice_tests::cluster::{Proc, TestCluster, WAIT_LIMIT, secret_file};
use sluice_tests::{run_sluice, sluice_bin, stderr_text};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("create a temporary directory: {e}"))
}

/// Checks that `out` failed with one line on stderr containing every one of `needles`.
#[track_caller]
fn assert_one_line_error(out: &std::process::Output, needles: &[&str]) {
    let stderr = stderr_text(out);
    assert!(!out.status.success(), "exit {} ({stderr:?})", out.status);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr is not one line: {stderr:?}");
    assert!(!lines[0].contains("panicked"), "{stderr:?}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{:?} does not name {needle:?}",
            lines[0]
        );
    }
}

/// After the refusals: the coordinator still serves its nodes and never panicked.
fn assert_still_serving(cluster: &TestCluster) {
    assert!(
        cluster.list().contains("w1"),
        "the coordinator stopped serving"
    );
    let log = cluster.coordinator.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_worker_and_a_client_with_the_wrong_secret_are_refused_and_logged() {
    let dir = tempdir();
    let good = secret_file(
        dir.path(),
        "good",
        "the cluster's own secret, 40 bytes long",
    );
    let bad = secret_file(dir.path(), "bad", "another secret, long enough to be valid");
    let mut cluster = TestCluster::coordinator(&["--secret-file", &good]);
    let args: Vec<String> = [
        "node",
        "worker",
        "--coordinator",
        &cluster.addr,
        "--listen",
        "127.0.0.2:0",
        "--workers",
        "1",
        "--secret-file",
        &bad,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut worker = Proc::spawn(sluice_bin(), "bad worker", &args, &[]);
    let status = worker.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{}", worker.log());
    let log = worker.log();
    assert!(log.contains("authentication failed"), "{log}");
    assert_eq!(
        log.lines().count(),
        2,
        "a log line and the error line: {log}"
    );
    // The worker judged the coordinator's proof first and hung up; the coordinator logs the
    // handshake it did not finish.
    cluster.coordinator.wait_for_line("refusing connection");
    let mut list = std::process::Command::new(sluice_bin());
    list.args([
        "list",
        "--coordinator",
        &cluster.addr,
        "--secret-file",
        &bad,
    ]);
    let out = sluice_tests::run_command(list);
    assert!(!out.status.success());
    assert!(
        stderr_text(&out).contains("authentication failed"),
        "{}",
        stderr_text(&out)
    );
    // The cluster still works for those who know the secret.
    cluster.add_worker(1);
    assert!(cluster.list().contains("w1"));
}

#[test]
fn garbage_and_a_4_gib_frame_header_are_disconnected_and_logged() {
    let cluster = TestCluster::start(&[1]);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let garbage: Vec<u8> = (0..200)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    // magic "SL", kind 8 (handshake), flags 0, length 0xFFFF_FFFF, channel 0, crc 0.
    let mut huge = vec![0x4C, 0x53, 8, 0, 0xFF, 0xFF, 0xFF, 0xFF];
    huge.extend([0u8; 8]);
    for bytes in [garbage, huge] {
        let mut s = TcpStream::connect(&cluster.addr).expect("connect to the coordinator");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = s.write_all(&bytes);
        let mut buf = [0u8; 64];
        // The coordinator closes the connection: end of stream (or a reset).
        let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
        assert!(closed, "the coordinator answered garbage");
    }
    let refused = |log: &str| log.matches("refusing connection").count();
    let started = std::time::Instant::now();
    while refused(&cluster.coordinator.log()) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            cluster.coordinator.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_still_serving(&cluster);
}

#[test]
fn a_non_loopback_address_needs_a_secret_file() {
    for args in [
        &["node", "coordinator", "--listen", "10.11.12.13:7000"][..],
        &[
            "node",
            "worker",
            "--coordinator",
            "127.0.0.1:1",
            "--listen",
            "10.11.12.13:0",
        ][..],
    ] {
        assert_one_line_error(&run_sluice(args), &["10.11.12.13", "--secret-file"]);
    }
}

#[test]
fn a_wrong_cpu_list_is_a_one_line_error() {
    let worker = |extra: &[&str]| {
        let mut args = vec!["node", "worker", "--coordinator", "127.0.0.1:1"];
        args.extend_from_slice(extra);
        run_sluice(args)
    };
    let out = worker(&["--cpus", "0-100000"]);
    assert_one_line_error(&out, &["--cpus '0-100000'", "not one this process may use"]);
    let out = worker(&["--cpus", "zero"]);
    assert_one_line_error(&out, &["--cpus 'zero'", "not a CPU"]);
    let out = worker(&["--cpus", "0", "--workers", "2"]);
    assert_one_line_error(&out, &["--cpus lists 1 CPU for 2 workers"]);
}

#[test]
fn user_errors_against_a_cluster_are_one_line() {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a b c\n").unwrap();
    let input = input.display().to_string();
    let output = dir.path().join("out").display().to_string();
    let down = "127.0.0.1:1";
    let out = run_sluice([
        "run",
        "wordcount",
        "--input",
        &input,
        "--output",
        &output,
        "--coordinator",
        down,
    ]);
    assert_one_line_error(&out, &["cannot reach the coordinator", down]);
    assert_one_line_error(&run_sluice(["list", "--coordinator", down]), &[down]);
    assert_one_line_error(
        &run_sluice(["list", "--coordinator", "no-such-host-or-port"]),
        &["--coordinator", "no-such-host-or-port"],
    );
    let worker = run_sluice([
        "node",
        "worker",
        "--coordinator",
        down,
        "--connect-timeout-ms",
        "300",
    ]);
    assert_one_line_error(&worker, &["cannot reach the coordinator", down]);
    let cluster = TestCluster::start(&[1]);
    let out = cluster.sluice(&["cancel", "job-9999"], Duration::from_secs(30));
    assert_one_line_error(&out, &["job-9999"]);
    let out = cluster.sluice(&["savepoint", "job-9999"], Duration::from_secs(30));
    assert_one_line_error(&out, &["job-9999"]);
    let missing = dir.path().join("missing.txt").display().to_string();
    let out = cluster.sluice(
        &["run", "wordcount", "--input", &missing, "--output", &output],
        Duration::from_secs(60),
    );
    assert_one_line_error(&out, &["missing.txt"]);
}

/// A listening TCP socket of a process: its local address, as `/proc/PID/net/tcp{,6}` show it.
#[derive(Debug)]
struct ListeningSocket {
    inode: u64,
    addr: std::net::IpAddr,
    port: u16,
}

/// Decodes the `local_address` column of `/proc/net/tcp` (`0100007F:17EB`) or `tcp6` (four
/// 32-bit words in host byte order, then the port): each 32-bit word is printed as the
/// kernel's native-endian `u32`.
fn proc_net_addr(field: &str) -> Option<(std::net::IpAddr, u16)> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<[u8; 4]> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<Vec<u32>>>()?
        .into_iter()
        .map(u32::to_ne_bytes)
        .collect();
    let addr = match (ip.len(), words.as_slice()) {
        (8, [w]) => std::net::IpAddr::from(*w),
        (32, [a, b, c, d]) => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(w);
            }
            std::net::IpAddr::from(bytes)
        }
        _ => return None,
    };
    Some((addr, port))
}

/// Every listening TCP socket (state `0A`) process `pid` holds open: the sockets of
/// `/proc/PID/net/tcp{,6}` (its network namespace) whose inodes its `/proc/PID/fd` links name.
fn listening_sockets(pid: u32) -> Vec<ListeningSocket> {
    let fd_dir = format!("/proc/{pid}/fd");
    let mut inodes = std::collections::BTreeSet::new();
    let entries = std::fs::read_dir(&fd_dir).unwrap_or_else(|e| panic!("read {fd_dir}: {e}"));
    for entry in entries.flatten() {
        // A descriptor closed since the listing is gone: skip it.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        {
            inodes.insert(inode);
        }
    }
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
        // inode ...
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                panic!("{path}: a line of too few columns: {line:?}");
            };
            let inode: u64 = inode
                .parse()
                .unwrap_or_else(|_| panic!("{path}: inode {inode:?} in {line:?}"));
            if *state != "0A" || !inodes.contains(&inode) {
                continue;
            }
            let (addr, port) =
                proc_net_addr(local).unwrap_or_else(|| panic!("{path}: address in {line:?}"));
            found.push(ListeningSocket { inode, addr, port });
        }
    }
    found
}

fn is_loopback(addr: std::net::IpAddr) -> bool {
    match addr {
        std::net::IpAddr::V4(a) => a.is_loopback(),
        // ::1, or 127.x as an IPv4-mapped address of a dual-stack socket.
        std::net::IpAddr::V6(a) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[test]
fn proc_net_addresses_decode() {
    let v4 = proc_net_addr("0100007F:17EB").unwrap();
    let v6 = proc_net_addr("00000000000000000000000001000000:0050").unwrap();
    let any = proc_net_addr("00000000:1F90").unwrap();
    let mapped = proc_net_addr("0000000000000000FFFF00000100007F:0001").unwrap();
    if cfg!(target_endian = "little") {
        assert_eq!(v4, ("127.0.0.1".parse().unwrap(), 6123));
        assert_eq!(v6, ("::1".parse().unwrap(), 80));
        assert_eq!(mapped, ("::ffff:127.0.0.1".parse().unwrap(), 1));
        assert!(is_loopback(mapped.0));
    }
    assert_eq!(any, ("0.0.0.0".parse().unwrap(), 8080));
    assert!(!is_loopback(any.0));
    assert!(proc_net_addr("0100007F").is_none());
    assert!(proc_net_addr("0100007F0:0050").is_none());
}

/// RELIABILITY R12: a coordinator and worker nodes started with the default addresses
/// listen on loopback only — checked on the kernel's socket tables, not on the nodes' word.
/// A worker's data listeners live only from its part's preparation until its peers have
/// connected, so the test holds a run there: the second node is stopped (SIGSTOP) before the
/// job is submitted, and the coordinator's heartbeat timeout is long, so the first node's
/// part waits, listening, for a peer that never prepares.
#[test]
fn every_listening_socket_of_a_default_cluster_is_on_loopback() {
    let dir = tempdir();
    let bin = sluice_tests::example_bin("job_binary");
    let start_coordinator = |listen: Option<&str>| {
        let mut args = vec!["node", "coordinator", "--heartbeat-timeout-ms", "120000"];
        args.extend(listen.map(|l| ["--listen", l]).into_iter().flatten());
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        Proc::spawn(&bin, "coordinator", &args, &[])
    };
    // The defaults: no --listen. The coordinator's default port (6123) may be taken on a
    // shared machine; then only the port is chosen, on the default loopback address.
    let mut coordinator = start_coordinator(None);
    let started = std::time::Instant::now();
    let addr = loop {
        let log = coordinator.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("coordinator listening on "))
        {
            break line.rsplit(' ').next().unwrap_or_default().to_owned();
        }
        if log.contains("6123") && log.contains("in use") {
            coordinator.wait_exit(Duration::from_secs(30));
            eprintln!("the default port 6123 is taken: the coordinator listens on a free one");
            coordinator = start_coordinator(Some("127.0.0.1:0"));
            let line = coordinator.wait_for_line("coordinator listening on ");
            break line.rsplit(' ').next().unwrap_or_default().to_owned();
        }
        assert!(started.elapsed() < WAIT_LIMIT, "coordinator: {log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let worker = |name: &str| {
        let args = [
            "node",
            "worker",
            "--coordinator",
            &addr,
            "--workers",
            "1",
            "--name",
            name,
        ];
        let mut w = Proc::spawn(&bin, name, &args.map(String::from), &[]);
        w.wait_for_line("registered with the coordinator");
        w
    };
    let (w1, w2) = (worker("w1"), worker("w2"));
    let signal = |sig: &str, p: &Proc| {
        let status = std::process::Command::new("kill")
            .args([sig, &p.pid().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("run kill {sig}: {e}"));
        assert!(status.success(), "kill {sig} {}", p.pid());
    };
    signal("-STOP", &w2);
    let output = dir.path().join("out").display().to_string();
    let run_args = [
        "run",
        "running-count",
        "--events",
        "1000",
        "--output",
        &output,
        "--coordinator",
        &addr,
    ]
    .map(String::from);
    let mut client = Proc::spawn(&bin, "client", &run_args, &[]);
    client.wait_for_line("deploying on 2 workers of 2 nodes");
    let started = std::time::Instant::now();
    while listening_sockets(w1.pid()).is_empty() {
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "w1 never bound its data listener: {}\n{}",
            client.log(),
            w1.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut seen = Vec::new();
    for p in [&coordinator, &w1, &w2, &client] {
        let sockets = listening_sockets(p.pid());
        for s in &sockets {
            assert!(
                is_loopback(s.addr),
                "{} listens on {}:{} (socket {})",
                p.name,
                s.addr,
                s.port,
                s.inode
            );
        }
        seen.push((p.name.clone(), sockets.len()));
    }
    // The coordinator's listener and w1's data listener; w2 has not prepared (stopped), and
    // the client listens not.
    let counts: Vec<usize> = seen.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [1, 1, 0, 0], "{seen:?}");
    eprintln!("listening sockets, all on loopback: {seen:?}");
    // Let the run go on to its end: the listeners were those of a working cluster.
    signal("-CONT", &w2);
    let status = client.wait_exit(WAIT_LIMIT);
    assert!(status.success(), "{}", client.log());
}

/// Reads one frame from `s`: its kind byte and its payload.
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 16];
    s.read_exact(&mut header)
        .unwrap_or_else(|e| panic!("read a frame header: {e}"));
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let mut body = vec![0u8; len.div_ceil(16) * 16];
    s.read_exact(&mut body)
        .unwrap_or_else(|e| panic!("read a frame body: {e}"));
    body.truncate(len);
    (header[2], body)
}

fn handshake_frame(msg: &Handshake) -> Vec<u8> {
    encode_archive(FrameKind::Handshake, 0, msg, Vec::new())
        .unwrap_or_else(|e| panic!("encode {msg:?}: {e}"))
        .0
}

fn hello(nonce: [u8; 32]) -> Vec<u8> {
    handshake_frame(&Handshake::Hello {
        version: sluice_net::auth::PROTOCOL_VERSION,
        cluster: "sluice".into(),
        node: "raw-peer".into(),
        nonce,
        buffer_bytes: 64 << 10,
        frame_payload_max: 1 << 20,
    })
}

/// Sends `hello` and returns the coordinator's challenge: its nonce.
fn challenge_after(s: &mut TcpStream, hello: &[u8]) -> [u8; 32] {
    s.write_all(hello).unwrap();
    let (kind, payload) = read_frame(s);
    assert_eq!(kind, FrameKind::Handshake as u8);
    match sluice_net::wire::decode_handshake(&payload) {
        Ok(Handshake::Challenge { nonce, .. }) => nonce,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// Whether the peer closed `s` (end of stream or a reset) without answering anything more.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

/// RELIABILITY R12 against a real coordinator: a peer that knows the secret completes the
/// handshake, but a recording of it is worthless — its hello replayed is refused (the nonce
/// was seen), and its response replayed on a fresh hello is refused (it proves knowledge of
/// the secret for another server nonce). Data and control frames before the handshake are
/// refused too. Each refusal closes the connection and is one log line.
#[test]
fn a_replayed_handshake_and_frames_before_one_are_refused_by_the_coordinator() {
    let dir = tempdir();
    let text = "the cluster's own secret, 40 bytes long";
    let file = secret_file(dir.path(), "secret", text);
    let mut cluster = TestCluster::coordinator(&["--secret-file", &file]);
    cluster.add_worker(1);
    let secret = ClusterSecret::new(text.as_bytes().to_vec()).unwrap();
    let connect = || {
        let s = TcpStream::connect(&cluster.addr).expect("connect to the coordinator");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    // A genuine handshake, recorded.
    let nonce_c = sluice_net::auth::fresh_nonce().unwrap();
    let recorded_hello = hello(nonce_c);
    let mut genuine = connect();
    let nonce_s = challenge_after(&mut genuine, &recorded_hello);
    let proof = sluice_net::auth::client_proof(&secret, "sluice", &nonce_c, &nonce_s);
    let recorded_response = handshake_frame(&Handshake::Response { proof });
    genuine.write_all(&recorded_response).unwrap();
    let (kind, payload) = read_frame(&mut genuine);
    assert_eq!(kind, FrameKind::Handshake as u8);
    assert_eq!(
        sluice_net::wire::decode_handshake(&payload).ok(),
        Some(Handshake::Accepted),
        "the genuine handshake"
    );
    drop(genuine);
    // The recorded hello again.
    let mut s = connect();
    s.write_all(&recorded_hello).unwrap();
    assert!(closed_by_peer(&mut s), "a replayed hello was answered");
    // A fresh hello, then the recorded response.
    let mut s = connect();
    let other_nonce_s = challenge_after(&mut s, &hello(sluice_net::auth::fresh_nonce().unwrap()));
    assert_ne!(other_nonce_s, nonce_s, "the coordinator's nonce repeated");
    s.write_all(&recorded_response).unwrap();
    assert!(closed_by_peer(&mut s), "a replayed response was accepted");
    // A record batch and a control frame before any handshake.
    for kind in [FrameKind::Records, FrameKind::Control] {
        let mut frame = Vec::new();
        sluice_net::frame::encode(kind, 0, &[0u8; 32], &mut frame);
        let mut s = connect();
        s.write_all(&frame).unwrap();
        assert!(
            closed_by_peer(&mut s),
            "a {kind:?} frame before the handshake"
        );
    }
    let started = std::time::Instant::now();
    let wanted = [
        "replayed nonce",
        "wrong secret",
        "Records frame before",
        "Control frame before",
    ];
    loop {
        let log = cluster.coordinator.log();
        let refusals: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("refusing connection"))
            .collect();
        if wanted
            .iter()
            .all(|w| refusals.iter().any(|l| l.contains(w)))
        {
            assert_eq!(refusals.len(), wanted.len(), "{log}");
            break;
        }
        assert!(started.elapsed() < WAIT_LIMIT, "{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_still_serving(&cluster);
}
