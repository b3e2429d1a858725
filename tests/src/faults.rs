//! Fault-injection helpers for the checkpoint tests (RELIABILITY.md suites R1 and R3): a seed
//! that is printed and can be replayed, iteration counts for the CI and extended tiers, the
//! `sluice` binary run as a child process that can be killed with SIGKILL, and waits on the
//! checkpoint directory that poll with generous timeouts instead of sleeping a fixed time.
//!
//! - `SLUICE_FAULT_SEED=N` replays a run's fault schedule (kill delays); process interleavings
//!   still differ between runs, so real-process runs are seeded, not deterministic.
//! - `SLUICE_RELIABILITY=extended` runs the extended tier's counts ([`iterations`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sluice_core::checkpoint::metadata::{self, CheckpointMetadata};

/// How long a wait on a child process or the checkpoint directory may take before the test
/// fails: generous, for a loaded 2-core machine and debug builds.
pub const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// Whether the extended tier runs (`SLUICE_RELIABILITY=extended`).
pub fn extended() -> bool {
    std::env::var("SLUICE_RELIABILITY").is_ok_and(|v| v == "extended")
}

/// An iteration count: `SLUICE_KILLS` if set, else `extended` in the extended tier, else `ci`.
pub fn iterations(ci: u32, extended_count: u32) -> u32 {
    match std::env::var("SLUICE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => n,
        None if extended() => extended_count,
        None => ci,
    }
}

/// A seeded pseudo-random sequence (xorshift64*), for fault schedules.
#[derive(Clone, Debug)]
pub struct Rng {
    seed: u64,
    state: u64,
}

impl Rng {
    /// The generator of `SLUICE_FAULT_SEED`, or of a fresh seed; prints the seed first, as
    /// `SLUICE_FAULT_SEED=… (what)`, so a failure can be replayed.
    pub fn from_env(what: &str) -> Rng {
        let seed = std::env::var("SLUICE_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64);
                t ^ u64::from(std::process::id()).rotate_left(32)
            });
        eprintln!("SLUICE_FAULT_SEED={seed} ({what})");
        Rng::new(seed)
    }

    /// The generator of `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng {
            seed,
            state: seed.max(1),
        }
    }

    /// The seed it started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A running `sluice` process, its output going to files (so it never blocks on a pipe).
pub struct Sluice {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Sluice {
    /// Starts `bin` with `args`; its stdout and stderr go to `log_dir/<name>.{out,err}`.
    pub fn start(bin: &Path, args: &[String], log_dir: &Path, name: &str) -> Sluice {
        std::fs::create_dir_all(log_dir).unwrap_or_else(|e| panic!("create log dir: {e}"));
        let stdout = log_dir.join(format!("{name}.out"));
        let stderr = log_dir.join(format!("{name}.err"));
        let file = |p: &Path| {
            std::fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
        };
        let child = Command::new(bin)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(file(&stdout))
            .stderr(file(&stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        Sluice {
            child,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("wait for sluice: {e}"))
    }

    /// Kills it with SIGKILL (if it still runs) and reaps it. Returns whether it was still
    /// running, and so was killed.
    pub fn kill9(&mut self) -> bool {
        if self.try_exit().is_some() {
            return false;
        }
        // `Child::kill` sends SIGKILL on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
        true
    }

    /// Waits for it to exit within `limit`; kills it and fails the test otherwise.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if self.started.elapsed() > limit {
                self.kill9();
                panic!(
                    "sluice still running after {}s: killed; stderr: {}",
                    limit.as_secs(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Time since it started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        // A failing test must not leave a job running.
        self.kill9();
    }
}

/// The newest complete checkpoint in `dir` (its id and metadata), if any.
pub fn latest_checkpoint(dir: &Path) -> Option<CheckpointMetadata> {
    metadata::latest(dir)
        .ok()
        .and_then(|(found, _)| found.map(|(_, m)| m))
}

/// What a wait for a checkpoint saw.
#[derive(Debug)]
pub enum Waited {
    /// A checkpoint newer than the one waited past completed: its metadata.
    Checkpoint(Box<CheckpointMetadata>),
    /// The process exited first.
    Exited(ExitStatus),
}

/// Waits until `dir` holds a complete checkpoint newer than `after`, or `job` exits; fails the
/// test after [`WAIT_LIMIT`].
pub fn wait_for_checkpoint(job: &mut Sluice, dir: &Path, after: u64) -> Waited {
    let started = Instant::now();
    loop {
        if let Some(m) = latest_checkpoint(dir).filter(|m| m.checkpoint_id > after) {
            return Waited::Checkpoint(Box::new(m));
        }
        if let Some(status) = job.try_exit() {
            return Waited::Exited(status);
        }
        if started.elapsed() > WAIT_LIMIT {
            job.kill9();
            panic!(
                "no checkpoint after {after} in {} within {}s; stderr: {}",
                dir.display(),
                WAIT_LIMIT.as_secs(),
                job.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether the stages whose names contain `name` kept state in checkpoint `meta` (a stage
/// without keyed state in the store names none).
pub fn stage_has_state(meta: &CheckpointMetadata, name: &str) -> bool {
    meta.stages
        .iter()
        .filter(|s| s.name.contains(name))
        .any(|s| s.instances.iter().any(|i| i.state.is_some()))
}

/// Fails the test if the sorted lines `got` are not `expected`, with how many lines are
/// missing and how many extra (lost and duplicated output), and the first few of each.
#[track_caller]
pub fn assert_same_lines(expected: &[String], got: &[String], what: &str) {
    if expected == got {
        return;
    }
    let (want, have) = (line_counts(expected), line_counts(got));
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    for (line, &n) in &want {
        let d = n - have.get(line).copied().unwrap_or(0);
        (0..d).for_each(|_| missing.push(*line));
    }
    for (line, &n) in &have {
        let d = n - want.get(line).copied().unwrap_or(0);
        (0..d).for_each(|_| extra.push(*line));
    }
    panic!(
        "{what}: {} lines expected, {} got; {} missing (first: {:?}), {} extra or duplicated \
         (first: {:?})",
        expected.len(),
        got.len(),
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)]
    );
}

fn line_counts(lines: &[String]) -> std::collections::BTreeMap<&str, i64> {
    let mut counts = std::collections::BTreeMap::new();
    for l in lines {
        *counts.entry(l.as_str()).or_default() += 1;
    }
    counts
}

/// The `p`-th percentile (0..=100) of `values` (nearest rank), or 0 when empty.
pub fn percentile(values: &[u64], p: u64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (p as usize * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_replays_its_seed_and_stays_in_range() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..100 {
            let x = a.below(7);
            assert_eq!(x, b.below(7));
            assert!(x < 7);
        }
    }

    #[test]
    fn line_differences_name_missing_and_extra_lines() {
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_same_lines(&lines(&["a", "b"]), &lines(&["a", "b"]), "same");
        let err = std::panic::catch_unwind(|| {
            assert_same_lines(&lines(&["a", "b"]), &lines(&["a", "a", "c"]), "x")
        })
        .unwrap_err();
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("1 missing (first: [\"b\"])"), "{msg}");
        assert!(
            msg.contains("2 extra or duplicated (first: [\"a\", \"c\"])"),
            "{msg}"
        );
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        assert_eq!(percentile(&[], 50), 0);
        assert_eq!(percentile(&[5, 1, 3], 50), 3);
        assert_eq!(percentile(&[5, 1, 3], 100), 5);
        assert_eq!(percentile(&[5, 1, 3], 1), 1);
    }
}
