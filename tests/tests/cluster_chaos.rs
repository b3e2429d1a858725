//! Multi-node chaos on loopback (RELIABILITY R4): a coordinator and worker processes on
//! 127.0.0.x run a checkpointed, throttled `running-count` job (the example job binary's) while
//! the test kills and pauses them; the committed output must pass Flink's per-key sequence
//! oracle — per key, every running count 1..n exactly once, no pending file left — and the job
//! must finish within the wait limit after the last fault.
//!
//! - `a_paused_worker_node_is_fenced_and_its_stale_messages_rejected`: zombie fencing. A
//!   worker node stopped (SIGSTOP) past the heartbeat timeout is declared lost and the job
//!   restarts on the others; once it is continued (SIGCONT), its stale messages (its stopped
//!   part's end, of a run that is over) are rejected and counted by the coordinator — at
//!   least one — and the output is still exactly once.
//! - `chaos_of_worker_kills_coordinator_kills_and_a_pause_keeps_exactly_once`: SIGKILL of a
//!   worker node after a new completed checkpoint (twice), SIGKILL of the coordinator (twice;
//!   a new one on the same address and `--checkpoint-dir` recovers the job from its job
//!   store), SIGSTOP/SIGCONT of a worker node; the client reconnects to each new coordinator.
//!
//! - `a_restarted_coordinator_keeps_its_jobs_and_a_client_without_its_job_fails`: a
//!   finished job is still listed after a restart and job ids go on; a coordinator without a
//!   job store comes back without the job, and its waiting client exits non-zero, in one line.
//!
//! CI figures: 40,000 events and 5 faults (the pause test: 30,000 events, 1 pause). For a
//! longer run, `SLUICE_CHAOS_ROUNDS=N` repeats the chaos test's coordinator kill and pause
//! N times (the events grow with N), e.g.
//! `SLUICE_CHAOS_ROUNDS=10 cargo test -p sluice-tests --test cluster_chaos -- chaos`.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use sluice_tests::cluster::running_count::{check_sequences, checkpoint_of, job_args};
use sluice_tests::cluster::{Proc, TestCluster, WAIT_LIMIT, submit};
use sluice_tests::example_bin;

/// Long enough past the default heartbeat timeout (3 s) for the coordinator to declare a
/// stopped node lost.
const PAUSE: Duration = Duration::from_millis(4500);

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("create a temporary directory: {e}"))
}

/// A coordinator with a job store under `root`, and worker nodes of `slots` slots.
fn cluster_with_store(root: &Path, slots: &[u32]) -> TestCluster {
    let root = root.display().to_string();
    let mut cluster =
        TestCluster::coordinator_of(&example_bin("job_binary"), &["--checkpoint-dir", &root]);
    for &s in slots {
        cluster.add_worker(s);
    }
    cluster
}

/// Waits until `job-0001`'s newest complete checkpoint is past `after`; returns it.
fn checkpoint_past(cluster: &TestCluster, after: u64) -> u64 {
    let what = format!("completed a checkpoint past {after}");
    cluster.wait_for_job("job-0001", &what, |c| checkpoint_of(c) > after);
    // Read again (checkpoints only grow).
    let list = cluster.list();
    list.lines()
        .find(|l| l.split_whitespace().next() == Some("job-0001"))
        .map(|l| checkpoint_of(&l.split_whitespace().collect::<Vec<_>>()))
        .unwrap_or(after + 1)
        .max(after + 1)
}

/// A live worker node the job's current run uses (its `list` row has used slots). A run may
/// be between deployments right after a checkpoint: the list is read again until one shows.
fn busy_worker(cluster: &TestCluster) -> usize {
    let started = std::time::Instant::now();
    loop {
        let list = cluster.list();
        let mut busy = list.lines().filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let used: u32 = cols.get(3)?.parse().ok()?;
            let index: usize = cols.first()?.strip_prefix('w')?.parse().ok()?;
            (used > 0).then_some(index - 1)
        });
        if let Some(index) = busy.next_back() {
            return index;
        }
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "no worker node runs the job:\n{list}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits until `proc` has said `needle` at least `n` times.
fn wait_for_lines(proc: &mut Proc, needle: &str, n: usize) {
    let started = std::time::Instant::now();
    while proc.log().matches(needle).count() < n {
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "{} said {needle:?} fewer than {n} times: {}",
            proc.name,
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the client to exit (the job ended), within the wait limit after the last fault;
/// its exit status. A failure shows every process's log and the job's row.
fn job_end(client: &mut Proc, cluster: &TestCluster) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = client.exited() {
            return status;
        }
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "the job did not end within {}s of the last fault\nlist:\n{}\nclient:\n{}\n{}",
            WAIT_LIMIT.as_secs(),
            cluster.list(),
            client.log(),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The stale messages the coordinators rejected: per coordinator process, the count in its
/// last "rejected a stale message" line, summed.
fn stale_rejections(cluster: &TestCluster) -> u64 {
    let count = |log: &str| {
        log.lines()
            .filter(|l| l.contains("rejected a stale message of run"))
            .filter_map(|l| {
                let (_, tail) = l.rsplit_once('(')?;
                tail.split_whitespace().next()?.parse::<u64>().ok()
            })
            .max()
            .unwrap_or(0)
    };
    let old: u64 = cluster
        .old_coordinators
        .iter()
        .map(|c| count(&c.log()))
        .sum();
    old + count(&cluster.coordinator.log())
}

/// Waits for the job's end and checks it: the client exits 0, the output holds every key's
/// sequence exactly once, and the coordinators rejected at least one stale message; how many.
fn ends_exactly_once_with_stale_rejections(
    client: &mut Proc,
    cluster: &TestCluster,
    events: u64,
    keys: u64,
    output: &Path,
) -> u64 {
    let status = job_end(client, cluster);
    assert!(status.success(), "{}\n{}", client.log(), cluster.logs());
    check_sequences(events, keys, output, client, cluster);
    let rejected = stale_rejections(cluster);
    assert!(
        rejected >= 1,
        "no stale message rejected\n{}",
        cluster.logs()
    );
    rejected
}

#[test]
fn a_paused_worker_node_is_fenced_and_its_stale_messages_rejected() {
    let dir = tempdir();
    let (events, keys) = (30_000, 40);
    let (output, checkpoints) = (dir.path().join("out"), dir.path().join("ck"));
    let mut cluster = cluster_with_store(&dir.path().join("coord"), &[1, 1, 1]);
    let args = job_args(events, keys, &output, &checkpoints, 2500);
    let mut client = submit(&cluster, "running-count", &args);
    client.wait_for_line("submitted ");
    let before = checkpoint_past(&cluster, 1);
    cluster.workers[1].signal("STOP");
    let line = client.wait_for_line("restarting from checkpoint");
    assert!(line.contains("lost"), "{line}");
    // The new run settled the output and completed a checkpoint of its own: whatever the
    // paused node still writes is a zombie's.
    wait_for_lines(&mut client, "deploying on 2 workers", 1);
    checkpoint_past(&cluster, before);
    cluster.workers[1].signal("CONT");
    cluster
        .coordinator
        .wait_for_line("rejected a stale message of run 1 from node w2");
    cluster.workers[1].wait_for_line("lost the coordinator");
    let rejected =
        ends_exactly_once_with_stale_rejections(&mut client, &cluster, events, keys, &output);
    eprintln!("stale messages rejected: {rejected}");
}

#[test]
fn chaos_of_worker_kills_coordinator_kills_and_a_pause_keeps_exactly_once() {
    let rounds: u64 = std::env::var("SLUICE_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    let dir = tempdir();
    // A round of faults takes about 10 s: the job grows by about that much per round, so
    // that it outlasts the faults and its tail after the last one stays as short.
    let (events, keys) = (40_000 + 15_000 * (rounds - 1), 50);
    let (output, checkpoints) = (dir.path().join("out"), dir.path().join("ck"));
    let mut cluster = cluster_with_store(&dir.path().join("coord"), &[1, 1, 1]);
    let mut args = job_args(events, keys, &output, &checkpoints, 1500);
    // The faults restart the job 2 + rounds times; the rest is headroom for a loaded machine
    // (a node that misses its heartbeat timeout is failed over like a paused one).
    args.extend(["--restart-attempts".into(), (2 * (2 + rounds)).to_string()]);
    let mut client = submit(&cluster, "running-count", &args);
    client.wait_for_line("submitted ");
    let mut newest = checkpoint_past(&cluster, 1);
    let mut restarts = 0;
    let mut reconnects = 0;

    // A worker node killed after a new completed checkpoint; a fresh node keeps the slots.
    cluster.workers[0].kill();
    restarts += 1;
    wait_for_lines(&mut client, "restarting from checkpoint", restarts);
    newest = checkpoint_past(&cluster, newest);
    cluster.add_worker(1);

    for _ in 0..rounds {
        // The coordinator killed: a new one on its address recovers the job.
        cluster.restart_coordinator();
        reconnects += 1;
        wait_for_lines(&mut client, "reconnected to the coordinator", reconnects);
        cluster
            .coordinator
            .wait_for_line("recovered after a coordinator restart");
        newest = checkpoint_past(&cluster, newest);

        // A worker node paused past the heartbeat timeout, then continued.
        let paused = busy_worker(&cluster);
        cluster.workers[paused].signal("STOP");
        std::thread::sleep(PAUSE);
        cluster.workers[paused].signal("CONT");
        restarts += 1;
        wait_for_lines(&mut client, "restarting from checkpoint", restarts);
        newest = checkpoint_past(&cluster, newest);
    }

    // The coordinator killed again, then a worker node after a new checkpoint.
    cluster.restart_coordinator();
    reconnects += 1;
    wait_for_lines(&mut client, "reconnected to the coordinator", reconnects);
    newest = checkpoint_past(&cluster, newest);
    let killed = busy_worker(&cluster);
    cluster.workers[killed].kill();
    restarts += 1;
    wait_for_lines(&mut client, "restarting from checkpoint", restarts);
    checkpoint_past(&cluster, newest);

    let rejected =
        ends_exactly_once_with_stale_rejections(&mut client, &cluster, events, keys, &output);
    eprintln!("stale messages rejected: {rejected}, restarts: {restarts}");
}

#[test]
fn a_restarted_coordinator_keeps_its_jobs_and_a_client_without_its_job_fails() {
    let dir = tempdir();
    let out = |n: &str| dir.path().join(n);
    // With a job store: a finished job survives the restart, and ids go on.
    let mut cluster = cluster_with_store(&out("coord"), &[1]);
    let args = job_args(2_000, 10, &out("out1"), &out("ck1"), 100_000);
    let mut client = submit(&cluster, "running-count", &args);
    let status = client.wait_exit(WAIT_LIMIT);
    assert!(status.success(), "{}\n{}", client.log(), cluster.logs());
    cluster.restart_coordinator();
    cluster.wait_for_job("job-0001", "listed as finished", |c| {
        c.last() == Some(&"finished")
    });
    let args = job_args(2_000, 10, &out("out2"), &out("ck2"), 100_000);
    let mut client = submit(&cluster, "running-count", &args);
    client.wait_for_line("submitted job-0002");
    let status = client.wait_exit(WAIT_LIMIT);
    assert!(status.success(), "{}\n{}", client.log(), cluster.logs());
    check_sequences(2_000, 10, &out("out2"), &client, &cluster);

    // Without one: the job is gone with the coordinator, and its client says so.
    let mut bare = TestCluster::coordinator_of(&example_bin("job_binary"), &[]);
    bare.add_worker(1);
    let args = job_args(100_000, 10, &out("out3"), &out("ck3"), 1_000);
    let mut client = submit(&bare, "running-count", &args);
    client.wait_for_line("deploying on 1 workers");
    bare.restart_coordinator();
    let status = client.wait_exit(WAIT_LIMIT);
    assert!(!status.success(), "{}", client.log());
    let log = client.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("came back without job-0001") && last.contains("no job 'job-0001'"),
        "{log}"
    );
}
