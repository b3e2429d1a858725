//! A worker node killed with SIGKILL in the middle of a checkpointed, throttled job (RELIABILITY
//! R4's worker kill, with Flink's per-key sequence oracle): the coordinator notices within
//! 3 s, cancels the run everywhere and restarts it from the newest complete checkpoint on the
//! workers still there (rescaling by key groups), and the committed output holds, per key,
//! every running count 1..n exactly once — nothing lost, nothing twice — with no pending file
//! left. When the only node dies, the job waits, and a node that joins later takes it over.
//!
//! The job is `running-count` of the example job binary (`api/examples/job_binary.rs`), so
//! this also runs a user's binary as every node of a cluster.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_tests::cluster::{Proc, TestCluster, WAIT_LIMIT, submit};
use sluice_tests::windows::read_lines;
use sluice_tests::{example_bin, hidden_dot_entries};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("create a temporary directory: {e}"))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The example's key of event `i` (splitmix64's finalizer), written out again here.
fn key_of(i: u64, keys: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % keys
}

/// The options of a checkpointed, throttled `running-count` run.
fn job_args(events: u64, keys: u64, output: &Path, checkpoints: &Path, rate: u32) -> Vec<String> {
    vec![
        "--events".into(),
        events.to_string(),
        "--keys".into(),
        keys.to_string(),
        "--output".into(),
        s(output),
        "--rate".into(),
        rate.to_string(),
        "--checkpoint-dir".into(),
        s(checkpoints),
        "--checkpoint-interval-ms".into(),
        "100".into(),
    ]
}

/// The job's newest complete checkpoint as `list` shows it (column 5 of its row).
fn checkpoint_of(cols: &[&str]) -> u64 {
    cols.get(4).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Per key, the counts in the output must be exactly 1..=n where n is the key's events.
fn check_sequences(events: u64, keys: u64, output: &Path, client: &Proc, cluster: &TestCluster) {
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..events {
        *expected.entry(key_of(i, keys)).or_default() += 1;
    }
    let mut seen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for line in read_lines(output) {
        let (k, n) = line
            .split_once(',')
            .and_then(|(k, n)| Some((k.parse().ok()?, n.parse().ok()?)))
            .unwrap_or_else(|| panic!("malformed output line {line:?}"));
        seen.entry(k).or_default().push(n);
    }
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for (key, &n) in &expected {
        let mut got = seen.remove(key).unwrap_or_default();
        got.sort_unstable();
        let before = got.len() as u64;
        got.dedup();
        duplicated += before - got.len() as u64;
        lost += (1..=n).filter(|c| got.binary_search(c).is_err()).count() as u64;
    }
    assert!(
        seen.is_empty(),
        "output for keys that have no events: {seen:?}"
    );
    assert!(
        lost == 0 && duplicated == 0,
        "lost {lost}, duplicated {duplicated}\nclient: {}\n{}",
        client.log(),
        cluster.logs()
    );
    let hidden = hidden_dot_entries(output);
    assert!(hidden.is_empty(), "pending files left: {hidden:?}");
}

#[test]
fn sigkill_of_a_worker_node_mid_job_restarts_from_a_checkpoint_exactly_once() {
    let dir = tempdir();
    let (events, keys) = (40_000, 60);
    let (output, checkpoints) = (dir.path().join("out"), dir.path().join("ck"));
    let mut cluster = TestCluster::start_of(&example_bin("job_binary"), &[1, 1, 1]);
    let args = job_args(events, keys, &output, &checkpoints, 8000);
    let mut client = submit(&cluster, "running-count", &args);
    client.wait_for_line("submitted ");
    cluster.wait_for_job("job-0001", "completed two checkpoints", |c| {
        checkpoint_of(c) >= 2
    });
    cluster.workers[1].kill();
    let killed = Instant::now();
    let line = client.wait_for_line("restarting from checkpoint");
    let detected = killed.elapsed();
    assert!(line.contains("lost"), "{line}");
    assert!(
        detected < Duration::from_secs(3),
        "the loss was noticed after {detected:?}"
    );
    let status = client.wait_exit(WAIT_LIMIT);
    assert!(status.success(), "{}\n{}", client.log(), cluster.logs());
    let log = client.log();
    assert!(log.contains("on 2 workers of 2 nodes"), "{log}");
    check_sequences(events, keys, &output, &client, &cluster);
}

#[test]
fn a_job_whose_only_node_died_waits_and_a_node_that_joins_takes_it_over() {
    let dir = tempdir();
    let (events, keys) = (16_000, 30);
    let (output, checkpoints) = (dir.path().join("out"), dir.path().join("ck"));
    let mut cluster = TestCluster::start_of(&example_bin("job_binary"), &[2]);
    let args = job_args(events, keys, &output, &checkpoints, 5000);
    let mut client = submit(&cluster, "running-count", &args);
    client.wait_for_line("submitted ");
    cluster.wait_for_job("job-0001", "completed a checkpoint", |c| {
        checkpoint_of(c) >= 1
    });
    cluster.workers[0].kill();
    client.wait_for_line("waiting for worker nodes");
    cluster.add_worker(2);
    let status = client.wait_exit(WAIT_LIMIT);
    assert!(status.success(), "{}\n{}", client.log(), cluster.logs());
    check_sequences(events, keys, &output, &client, &cluster);
}
