//! Jobs on a cluster of real `sluice` processes on loopback — a coordinator and two or three worker
//! nodes on 127.0.0.x — give exactly the output of the same job in one process: word count against
//! the reference (and, its final checkpoint taken before the commit, a rerun from the newest
//! checkpoint adds nothing), and window-agg (tumbling, sliding, session, with late records) line
//! for line against a single-process run on as many workers and against the brute-force reference.
//! A savepoint taken and the job cancelled through the coordinator resume in one process, on
//! another worker count, with exact counts. The Nexmark queries whose records cross nodes
//! (joins, windows; interned strings among them) give on two nodes exactly the rows of a
//! single-process run. A worker node given `--cpus` pins each worker of its part to its own
//! CPU, and the job's output is still exact.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use sluice_bench::nexmark::queries::Query;
use sluice_tests::cluster::running_count::{check_sequences, job_args};
use sluice_tests::cluster::{TestCluster, WAIT_LIMIT, submit};
use sluice_tests::windows::{Spec, read_lines, reference_window_agg};
use sluice_tests::{
    assert_counts_eq, example_bin, read_output_dir, reference_word_count, run_sluice,
};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("create a temporary directory: {e}"))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Seeded xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn cluster_wordcount_on_two_nodes_equals_the_reference() {
    let dir = tempdir();
    let input = dir.path().join("input.txt");
    let mut rng = Rng(42);
    let mut text = String::new();
    for _ in 0..20_000 {
        for _ in 0..8 {
            let w = rng.next() % 3000;
            text.push_str(&format!("word{w} "));
        }
        text.push('\n');
    }
    std::fs::write(&input, &text).unwrap();
    let cluster = TestCluster::start(&[2, 2]);
    let output = dir.path().join("out");
    let checkpoints = dir.path().join("chk");
    let args = vec![
        "--input".into(),
        s(&input),
        "--output".into(),
        s(&output),
        "--checkpoint-dir".into(),
        s(&checkpoints),
        "--checkpoint-interval-ms".into(),
        "100".into(),
    ];
    let mut client = submit(&cluster, "wordcount", &args);
    let status = client.wait_exit(Duration::from_secs(120));
    assert!(
        status.success(),
        "client: {}\n{}",
        client.log(),
        cluster.logs()
    );
    assert!(
        client.log().contains("on 4 workers of 2 nodes"),
        "{}",
        client.log()
    );
    let got = read_output_dir(&output).unwrap_or_else(|e| panic!("{e}"));
    assert_counts_eq(&reference_word_count(&text), &got, "cluster word count");

    // The job's final checkpoint (every split read) completed before its commit: resuming
    // from the newest checkpoint, in one process, adds nothing to the output.
    let mut rerun = vec!["run".into(), "wordcount".into()];
    rerun.extend(args);
    rerun.extend(["--restore", "latest", "--workers", "4", "--quiet"].map(String::from));
    let out = run_sluice(&rerun);
    assert!(
        out.status.success(),
        "rerun: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = read_output_dir(&output).unwrap_or_else(|e| panic!("after the rerun: {e}"));
    assert_counts_eq(&reference_word_count(&text), &again, "after a rerun");
}

/// The CPUs a process's thread named `name` may run on (`Cpus_allowed_list` of its status),
/// if it has one.
fn cpus_of_thread(pid: u32, name: &str) -> Option<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).ok()?;
        return status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|l| l.trim().to_owned());
    }
    None
}

#[test]
fn a_worker_node_given_cpus_pins_its_workers_and_the_output_is_exact() {
    let dir = tempdir();
    let cpu = *sluice::available_cpus().last().expect("a CPU to run on");
    let (events, keys) = (6_000, 20);
    let (output, checkpoints) = (dir.path().join("out"), dir.path().join("ck"));
    let mut cluster = TestCluster::coordinator_of(&example_bin("job_binary"), &[]);
    cluster.worker_args = vec!["--cpus".into(), cpu.to_string()];
    cluster.add_worker(1);
    let args = job_args(events, keys, &output, &checkpoints, 4000);
    let mut client = submit(&cluster, "running-count", &args);
    client.wait_for_line("submitted ");
    let node = cluster.workers[0].pid();
    let pinned = loop {
        if let Some(cpus) = cpus_of_thread(node, "sluice-worker-0") {
            break cpus;
        }
        assert!(
            client.exited().is_none(),
            "the job ended before its worker was seen: {}\n{}",
            client.log(),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(pinned, cpu.to_string(), "the worker's CPUs");
    let status = client.wait_exit(WAIT_LIMIT);
    assert!(status.success(), "{}\n{}", client.log(), cluster.logs());
    check_sequences(events, keys, &output, &client, &cluster);
}

/// Events with keys, values and timestamps out of order by up to `jitter` ms.
fn events(lines: usize, keys: u64, jitter: i64, seed: u64) -> String {
    let mut rng = Rng(seed);
    let mut csv = String::new();
    for i in 0..lines as i64 {
        let j = (rng.next() % (2 * jitter as u64 + 1)) as i64 - jitter;
        let key = rng.next() % keys;
        let value = (rng.next() % 201) as i64 - 100;
        csv.push_str(&format!("{},k{key},{value}\n", i * 7 + j));
    }
    csv
}

#[test]
fn cluster_window_agg_equals_a_single_process_run_line_for_line() {
    let dir = tempdir();
    let csv = events(30_000, 40, 400, 7);
    let input = dir.path().join("events.csv");
    std::fs::write(&input, &csv).unwrap();
    let cluster = TestCluster::start(&[1, 1, 1]);
    let specs = [
        Spec::Tumbling(1000),
        Spec::Sliding(2000, 500),
        Spec::Session(30),
    ];
    for spec in specs {
        let window = spec.arg();
        let job = |out: &Path, late: &Path| -> Vec<String> {
            vec![
                "--input".into(),
                s(&input),
                "--output".into(),
                s(out),
                "--late-output".into(),
                s(late),
                "--window".into(),
                window.clone(),
                "--out-of-orderness-ms".into(),
                "100".into(),
                "--quiet".into(),
            ]
        };
        let tag = window.replace(':', "-");
        let (out, late) = (
            dir.path().join(format!("c-{tag}")),
            dir.path().join(format!("cl-{tag}")),
        );
        let mut client = submit(&cluster, "window-agg", &job(&out, &late));
        let status = client.wait_exit(Duration::from_secs(120));
        assert!(
            status.success(),
            "{window}: {}\n{}",
            client.log(),
            cluster.logs()
        );
        let (one, one_late) = (
            dir.path().join(format!("e-{tag}")),
            dir.path().join(format!("el-{tag}")),
        );
        let mut args = vec!["run".to_owned(), "window-agg".into()];
        args.extend(job(&one, &one_late));
        args.extend(["--workers".into(), "3".into()]);
        let embedded = run_sluice(&args);
        assert!(
            embedded.status.success(),
            "{window}: {}",
            String::from_utf8_lossy(&embedded.stderr)
        );
        let (expected, expected_late) = reference_window_agg(&csv, 3, spec, 100);
        if let Spec::Tumbling(_) = spec {
            assert!(
                !expected_late.is_empty(),
                "{window}: the input should have late records"
            );
        }
        assert_eq!(
            read_lines(&one),
            expected,
            "{window}: single process vs reference"
        );
        assert_eq!(read_lines(&out), expected, "{window}: cluster vs reference");
        assert_eq!(
            read_lines(&late),
            expected_late,
            "{window}: late records on the cluster"
        );
        assert_eq!(
            read_lines(&one_late),
            expected_late,
            "{window}: late records, one process"
        );
    }
}

#[test]
fn savepoint_and_cancel_through_the_coordinator_then_resume_in_one_process() {
    let dir = tempdir();
    let input = dir.path().join("input.txt");
    let mut rng = Rng(7);
    let mut text = String::new();
    // At --rate 2000 the cluster's run would take half a minute: it is still running when
    // the savepoint is taken and when it is cancelled.
    for _ in 0..60_000 {
        for _ in 0..4 {
            text.push_str(&format!("k{} ", rng.next() % 500));
        }
        text.push('\n');
    }
    std::fs::write(&input, &text).unwrap();
    let cluster = TestCluster::start(&[1, 1]);
    let output = dir.path().join("out");
    let job = vec![
        "--input".into(),
        s(&input),
        "--output".into(),
        s(&output),
        "--checkpoint-dir".into(),
        s(&dir.path().join("chk")),
        "--checkpoint-interval-ms".into(),
        "100".into(),
        "--rate".into(),
        "2000".into(),
    ];
    let mut client = submit(&cluster, "wordcount", &job);
    client.wait_for_line("submitted ");
    cluster.wait_for_job("job-0001", "completed a checkpoint", |c| {
        c.get(4).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) >= 1
    });
    // A savepoint: the job goes on; stdout names its directory.
    let savepoints = dir.path().join("sp");
    let out = cluster.sluice(
        &["savepoint", "job-0001", &s(&savepoints)],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "savepoint: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let path = stdout
        .trim()
        .strip_prefix("savepoint: ")
        .unwrap_or_else(|| panic!("no savepoint path in {stdout:?}"))
        .to_owned();
    assert!(
        Path::new(&path).join("_metadata").is_file(),
        "{path} holds no metadata"
    );
    // Cancelled: the client ends with a failure naming the cancellation.
    let out = cluster.sluice(&["cancel", "job-0001"], Duration::from_secs(30));
    assert!(
        out.status.success(),
        "cancel: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = client.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "a cancelled job's client exited 0");
    assert!(client.log().contains("cancel"), "{}", client.log());
    // Resumed from the savepoint in one process, on another worker count: exact counts.
    let mut resume = vec!["run".to_owned(), "wordcount".to_owned()];
    resume.extend(job[..4].iter().cloned());
    resume.extend(["--restore", &path, "--workers", "3", "--quiet"].map(String::from));
    let out = run_sluice(&resume);
    assert!(
        out.status.success(),
        "resume: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("resumed from checkpoint"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = read_output_dir(&output).unwrap_or_else(|e| panic!("{e}"));
    assert_counts_eq(
        &reference_word_count(&text),
        &got,
        "resumed from a cluster savepoint",
    );
}

/// Every Nexmark query — their exchanges move Nexmark's own types across the two nodes:
/// events, join inputs, window partials holding interned strings — gives exactly the rows of
/// one process on as many workers (all but q12, whose processing-time windows depend on
/// timing).
#[test]
fn cluster_nexmark_queries_equal_a_single_process_run_row_for_row() {
    let dir = tempdir();
    let cluster = TestCluster::start(&[1, 1]);
    for q in Query::ALL.iter().filter(|&&q| q != Query::Q12) {
        let (query, job_name) = (q.name(), q.job_name());
        let job = |out: &Path| -> Vec<String> {
            [
                "--events",
                "40000",
                "--event-rate",
                "2000",
                "--output",
                &s(out),
                "--quiet",
            ]
            .map(String::from)
            .to_vec()
        };
        let on_cluster = dir.path().join(format!("c-{query}"));
        let mut client = submit(&cluster, job_name, &job(&on_cluster));
        let status = client.wait_exit(Duration::from_secs(120));
        assert!(
            status.success(),
            "{query}: {}\n{}",
            client.log(),
            cluster.logs()
        );
        assert!(
            client.log().contains("on 2 workers of 2 nodes"),
            "{query}: {}",
            client.log()
        );
        let one = dir.path().join(format!("e-{query}"));
        let mut args = vec!["run".to_owned(), job_name.to_owned()];
        args.extend(job(&one));
        args.extend(["--workers".into(), "2".into()]);
        let embedded = run_sluice(&args);
        assert!(
            embedded.status.success(),
            "{query}: {}",
            String::from_utf8_lossy(&embedded.stderr)
        );
        let expected = read_lines(&one);
        assert!(!expected.is_empty(), "{query}: no rows");
        assert_eq!(
            read_lines(&on_cluster),
            expected,
            "{query}: cluster vs one process"
        );
    }
}
