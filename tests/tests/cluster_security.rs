//! Security basics of a cluster (RELIABILITY R12) and its user errors, on real processes: a
//! worker or client with the wrong secret is refused and the coordinator logs it; a peer
//! sending garbage, or a frame header announcing 4 GiB, is disconnected with a log line and
//! the coordinator goes on serving; a non-loopback address needs a secret file; and every
//! mistake a user can make — an unreachable coordinator, a bad address, an unknown job id —
//! is one line on stderr and a non-zero exit.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sluice_tests::cluster::{Proc, TestCluster, secret_file};
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
    assert!(
        cluster.list().contains("w1"),
        "the coordinator stopped serving"
    );
    let log = cluster.coordinator.log();
    assert!(!log.contains("panicked"), "{log}");
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
