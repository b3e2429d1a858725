//! A cluster of real `sluice` processes on loopback for the multi-node tests: a coordinator
//! and worker nodes on 127.0.0.x, each a child process this test started (and kills, by its
//! own handle, when dropped). Their stderr is collected, so a test can wait for a line (a
//! node registered) or check one (a refused peer was logged).
//!
//! For the fault tests: [`TestCluster::restart_coordinator`] (SIGKILL, and a new one on the
//! same address and options), [`Proc::signal`] (SIGSTOP, SIGCONT), and the `running-count`
//! job of the example job binary with Flink's per-key sequence oracle ([`running_count`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{run_command_within, sluice_bin};

/// How long a test waits for a condition it polls (the machine may be loaded).
pub const WAIT_LIMIT: Duration = Duration::from_secs(90);

/// A child process and what it wrote to stderr so far.
pub struct Proc {
    /// The name it goes by in the test.
    pub name: String,
    child: Child,
    log: Arc<Mutex<String>>,
    /// The thread collecting stderr: it ends at end of file, after the process exits.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `BIN ARGS` (the `sluice` binary or a job binary) with stderr collected.
    pub fn spawn(bin: &Path, name: &str, args: &[String], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_remove("RUST_BACKTRACE")
            .env_remove("SLUICE_SECRET_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            log,
            reader: Some(reader),
        }
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until its stderr has a line containing `needle`; returns that line.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before saying {needle:?}: {}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                started.elapsed() < WAIT_LIMIT,
                "{} did not say {needle:?} within {}s: {}",
                self.name,
                WAIT_LIMIT.as_secs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to exit, within `limit`; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Its last lines may still be in the pipe: the log is whole once the reader
                // has reached end of file.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "{} still running after {}s: {}",
                self.name,
                limit.as_secs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its exit status if it has exited (its log is then whole), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.try_wait().ok()??;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Some(status)
    }

    /// SIGKILLs it (this test's own child) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it signal `sig` (`STOP`, `CONT`, ...) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill -{sig} {}: {e}", self.name));
        assert!(status.success(), "kill -{sig} {} failed", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A coordinator and its worker nodes.
pub struct TestCluster {
    /// The binary every node runs.
    pub bin: PathBuf,
    /// The coordinator.
    pub coordinator: Proc,
    /// Its address.
    pub addr: String,
    /// The worker nodes, in the order they were added.
    pub workers: Vec<Proc>,
    /// Options every worker node added from now on gets.
    pub worker_args: Vec<String>,
    /// Coordinators killed by [`TestCluster::restart_coordinator`], for their logs.
    pub old_coordinators: Vec<Proc>,
    secret: Option<String>,
    /// The coordinator's options after its address.
    extra: Vec<String>,
}

impl TestCluster {
    /// A coordinator of the `sluice` binary on 127.0.0.1 (a free port), with `extra`
    /// options, and no workers yet.
    pub fn coordinator(extra: &[&str]) -> TestCluster {
        TestCluster::coordinator_of(sluice_bin(), extra)
    }

    /// A coordinator of binary `bin` on 127.0.0.1 (a free port), with `extra` options, and no
    /// workers yet.
    pub fn coordinator_of(bin: &Path, extra: &[&str]) -> TestCluster {
        let mut args: Vec<String> = ["node", "coordinator", "--listen", "127.0.0.1:0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let secret = extra
            .iter()
            .position(|a| *a == "--secret-file")
            .and_then(|i| extra.get(i + 1))
            .map(|s| s.to_string());
        let mut coordinator = Proc::spawn(bin, "coordinator", &args, &[]);
        let line = coordinator.wait_for_line("coordinator listening on ");
        let addr = line
            .rsplit(' ')
            .next()
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        TestCluster {
            bin: bin.to_owned(),
            coordinator,
            addr,
            workers: Vec::new(),
            worker_args: Vec::new(),
            old_coordinators: Vec::new(),
            secret,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// SIGKILLs the coordinator and starts a new one on the same address with the same
    /// options; returns once it listens.
    pub fn restart_coordinator(&mut self) {
        self.coordinator.kill();
        let mut args: Vec<String> = vec![
            "node".into(),
            "coordinator".into(),
            "--listen".into(),
            self.addr.clone(),
        ];
        args.extend(self.extra.iter().cloned());
        let n = self.old_coordinators.len() + 2;
        let mut next = Proc::spawn(&self.bin, &format!("coordinator {n}"), &args, &[]);
        next.wait_for_line("coordinator listening on ");
        let old = std::mem::replace(&mut self.coordinator, next);
        self.old_coordinators.push(old);
    }

    /// A coordinator and worker nodes of `slots` slots each, on 127.0.0.2, 127.0.0.3, ...,
    /// all registered.
    pub fn start(slots: &[u32]) -> TestCluster {
        TestCluster::start_of(sluice_bin(), slots)
    }

    /// [`TestCluster::start`] with the nodes running binary `bin`.
    pub fn start_of(bin: &Path, slots: &[u32]) -> TestCluster {
        let mut c = TestCluster::coordinator_of(bin, &[]);
        for &s in slots {
            c.add_worker(s);
        }
        c
    }

    /// Starts a worker node of `slots` slots on the next 127.0.0.x and waits until it has
    /// registered; returns its index.
    pub fn add_worker(&mut self, slots: u32) -> usize {
        let i = self.workers.len();
        let name = format!("w{}", i + 1);
        let mut args: Vec<String> = vec![
            "node".into(),
            "worker".into(),
            "--coordinator".into(),
            self.addr.clone(),
            "--listen".into(),
            format!("127.0.0.{}:0", i + 2),
            "--workers".into(),
            slots.to_string(),
            "--name".into(),
            name.clone(),
        ];
        if let Some(secret) = &self.secret {
            args.extend(["--secret-file".into(), secret.clone()]);
        }
        args.extend(self.worker_args.iter().cloned());
        let mut worker = Proc::spawn(&self.bin, &name, &args, &[]);
        worker.wait_for_line("registered with the coordinator");
        self.workers.push(worker);
        i
    }

    /// `sluice ARGS --coordinator ADDR`, run to its end (within `limit`).
    pub fn sluice(&self, args: &[&str], limit: Duration) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).args(["--coordinator", &self.addr]);
        if let Some(secret) = &self.secret {
            cmd.args(["--secret-file", secret]);
        }
        cmd.env_remove("SLUICE_SECRET_FILE");
        run_command_within(cmd, limit)
    }

    /// `sluice list`'s stdout.
    pub fn list(&self) -> String {
        let out = self.sluice(&["list"], Duration::from_secs(30));
        assert!(
            out.status.success(),
            "list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `list` until `done` holds for a job's row (split into its columns).
    pub fn wait_for_job(&self, job_id: &str, what: &str, done: impl Fn(&[&str]) -> bool) {
        let started = Instant::now();
        loop {
            let list = self.list();
            let row = list
                .lines()
                .find(|l| l.split_whitespace().next() == Some(job_id));
            if let Some(row) = row {
                let cols: Vec<&str> = row.split_whitespace().collect();
                if done(&cols) {
                    return;
                }
            }
            assert!(
                started.elapsed() < WAIT_LIMIT,
                "{job_id} never {what}; list:\n{list}\ncoordinator:\n{}",
                self.coordinator.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every process's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for c in &self.old_coordinators {
            out.push_str(&format!("--- {} (killed):\n{}", c.name, c.log()));
        }
        out.push_str(&format!("--- coordinator:\n{}", self.coordinator.log()));
        for w in &self.workers {
            out.push_str(&format!("--- {}:\n{}", w.name, w.log()));
        }
        out
    }
}

/// `sluice run JOB ARGS --coordinator ADDR` started in the background (a client process
/// that waits for the job's end).
pub fn submit(cluster: &TestCluster, job: &str, args: &[String]) -> Proc {
    let mut all = vec!["run".to_owned(), job.to_owned()];
    all.extend(args.iter().cloned());
    all.extend(["--coordinator".to_owned(), cluster.addr.clone()]);
    if let Some(secret) = &cluster.secret {
        all.extend(["--secret-file".to_owned(), secret.clone()]);
    }
    Proc::spawn(&cluster.bin, "client", &all, &[])
}

/// Writes a secret file of `text` in `dir`.
pub fn secret_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.display().to_string()
}

/// The `running-count` job of the example job binary (`api/examples/job_binary.rs`) — per key,
/// a running count written after every event — and Flink's per-key sequence oracle for its
/// output: per key, the counts 1..n exactly once.
pub mod running_count {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::{Proc, TestCluster};
    use crate::hidden_dot_entries;
    use crate::windows::read_lines;

    /// The example's key of event `i` (splitmix64's finalizer), written out again here.
    pub fn key_of(i: u64, keys: u64) -> u64 {
        let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % keys
    }

    /// The options of a checkpointed (every 100 ms), throttled run.
    pub fn job_args(
        events: u64,
        keys: u64,
        output: &Path,
        checkpoints: &Path,
        rate: u32,
    ) -> Vec<String> {
        let s = |p: &Path| p.display().to_string();
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
    pub fn checkpoint_of(cols: &[&str]) -> u64 {
        cols.get(4).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    /// Per key, the counts in the output must be exactly 1..=n where n is the key's events;
    /// no pending file may be left. A failure shows the client's and the cluster's logs.
    pub fn check_sequences(
        events: u64,
        keys: u64,
        output: &Path,
        client: &Proc,
        cluster: &TestCluster,
    ) {
        check_sequences_with(events, keys, output, || {
            format!("client: {}\n{}", client.log(), cluster.logs())
        });
    }

    /// [`check_sequences`], with `logs()` shown on a failure.
    pub fn check_sequences_with(events: u64, keys: u64, output: &Path, logs: impl Fn() -> String) {
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
            "lost {lost}, duplicated {duplicated}\n{}",
            logs()
        );
        let hidden = hidden_dot_entries(output);
        assert!(
            hidden.is_empty(),
            "pending files left: {hidden:?}\n{}",
            logs()
        );
    }
}
