//! Start-up in a hostile environment (RELIABILITY.md suite R13, glommio pitfalls 1, 2 and 11):
//! a locked-memory limit too low for io_uring is a one-line error naming memlock, for root and
//! for an unprivileged user, never a half-started job; a CPU set smaller than the worker count
//! runs the extra workers unpinned; an unprivileged user with the README's 8 MiB limit runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A scratch directory everyone may write (the unprivileged runs need it), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("sluice-startup-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Command::new("chmod").arg("777").arg(&dir).status().unwrap();
        let input = dir.join("in.txt");
        std::fs::write(&input, "one two two\nthree three three\n").unwrap();
        Command::new("chmod")
            .arg("644")
            .arg(&input)
            .status()
            .unwrap();
        Scratch(dir)
    }
    fn input(&self) -> PathBuf {
        self.0.join("in.txt")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `sluice run wordcount` through `bash -c` with a memlock limit, optionally as `nobody`.
fn run_limited(memlock_kib: u32, unprivileged: bool, input: &Path, output: &Path) -> Output {
    let script = format!(
        "ulimit -l {memlock_kib} && exec {BIN} run wordcount --input {} --output {} \
         --workers 2 --quiet",
        input.display(),
        output.display()
    );
    let mut cmd = if unprivileged {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ]);
        c.args(["bash", "-c", &script]);
        c
    } else {
        let mut c = Command::new("bash");
        c.args(["-c", &script]);
        c
    };
    cmd.output().expect("run sluice")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_memlock_error(out: &Output, what: &str) {
    let lines = stderr_lines(out);
    assert_eq!(out.status.code(), Some(1), "{what}: stderr={lines:?}");
    assert_eq!(lines.len(), 1, "{what}: expected one line, got {lines:?}");
    assert!(
        lines[0].contains("locked-memory limit"),
        "{what}: {lines:?}"
    );
    assert!(lines[0].contains("ulimit -l"), "{what}: {lines:?}");
}

#[test]
fn memlock_64_kib_is_a_one_line_error() {
    let s = Scratch::new("memlock64");
    let out = run_limited(64, false, &s.input(), &s.0.join("out"));
    assert_memlock_error(&out, "root, 64 KiB");
    assert!(!s.0.join("out").join("part-00000").exists());
}

#[test]
fn memlock_limits_for_an_unprivileged_user() {
    if !is_root() {
        // setpriv needs root to switch users; the root cases above still run.
        return;
    }
    let s = Scratch::new("nobody");
    let out = run_limited(64, true, &s.input(), &s.0.join("out64"));
    assert_memlock_error(&out, "nobody, 64 KiB");
    // At glommio's floor the kernel's per-user accounting decides, run by run: either the job
    // runs whole or it fails whole with the memlock error, never half-started.
    let out_dir = s.0.join("out512");
    let out = run_limited(512, true, &s.input(), &out_dir);
    if out.status.success() {
        assert_eq!(read_output(&out_dir), ["one\t1", "three\t3", "two\t2"]);
    } else {
        assert_memlock_error(&out, "nobody, 512 KiB");
    }
    // The README's limit is enough for a few workers.
    let out_dir = s.0.join("out8192");
    let out = run_limited(8192, true, &s.input(), &out_dir);
    assert!(
        out.status.success(),
        "nobody, 8192 KiB: {:?}",
        stderr_lines(&out)
    );
    assert_eq!(read_output(&out_dir), ["one\t1", "three\t3", "two\t2"]);
}

fn read_output(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "leftover in-progress file {name}");
        lines.extend(
            std::fs::read_to_string(entry.path())
                .unwrap()
                .lines()
                .map(str::to_owned),
        );
    }
    lines.sort();
    lines
}

#[test]
fn more_workers_than_allowed_cpus_run_unpinned() {
    let s = Scratch::new("taskset");
    for workers in ["1", "2", "3"] {
        let out_dir = s.0.join(format!("out{workers}"));
        let out = Command::new("taskset")
            .args([
                "-c",
                "0",
                BIN,
                "run",
                "wordcount",
                "--workers",
                workers,
                "--input",
            ])
            .arg(s.input())
            .arg("--output")
            .arg(&out_dir)
            .output()
            .expect("run sluice under taskset");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "workers={workers}: {err}");
        let pinned = err.contains("(pinned)");
        assert_eq!(pinned, workers == "1", "workers={workers}: {err}");
    }
}
