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

use std::time::{Duration, Instant};

use sluice_tests::cluster::running_count::{check_sequences, checkpoint_of, job_args};
use sluice_tests::cluster::{TestCluster, WAIT_LIMIT, submit};
use sluice_tests::example_bin;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("create a temporary directory: {e}"))
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
