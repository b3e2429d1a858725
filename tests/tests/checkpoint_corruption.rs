//! Corrupted and partial checkpoint directories, through the `sluice` binary. A throttled,
//! checkpointed word count is killed with SIGKILL after a few checkpoints; then, on a copy of
//! its checkpoint directory each time, the newest checkpoint (N) is damaged:
//!
//! - its `_metadata` truncated, or overwritten with garbage;
//! - its state missing (the store manifest of N deleted in one worker's store);
//! - a segment of its state corrupted (one byte of an entry written for N);
//!
//! and `--restore latest` must name the problem in one line and resume from N − 1, with the
//! word counts exact (word count commits its output only at the end, so falling back commits
//! nothing twice). With a worker's whole store gone no checkpoint is usable: the job fails
//! with a one-line error and a non-zero exit instead of starting afresh. `--restore PATH`
//! naming a damaged checkpoint fails the same way, without falling back.

use std::path::{Path, PathBuf};

use sluice_core::checkpoint::metadata::{self, METADATA_FILE};
use sluice_tests::faults::{Sluice, WAIT_LIMIT, Waited, wait_for_checkpoint};
use sluice_tests::{assert_counts_eq, read_output_dir, reference_word_count, sluice_bin};

/// The killed job's leftovers: its input and output, its checkpoint directory and newest
/// checkpoint, and the word count's reference.
struct Base {
    dir: tempfile::TempDir,
    input: PathBuf,
    out: PathBuf,
    saved_out: PathBuf,
    chk: PathBuf,
    newest: u64,
    expected: sluice_tests::Counts,
}

fn job_args(input: &Path, out: &Path, chk: &Path) -> Vec<String> {
    [
        "run",
        "wordcount",
        "--input",
        &input.display().to_string(),
        "--output",
        &out.display().to_string(),
        "--workers",
        "2",
        "--quiet",
        "--checkpoint-dir",
        &chk.display().to_string(),
        "--checkpoint-interval-ms",
        "100",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// Runs the word count until its fourth checkpoint completed, then kills it.
fn killed_job() -> Base {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, chk) = (
        dir.path().join("in.txt"),
        dir.path().join("out"),
        dir.path().join("chk"),
    );
    let mut text = String::new();
    for i in 0..12_000u64 {
        let line: Vec<String> = (0..6)
            .map(|j| format!("w{}", (i * 7 + j * 13) % 997))
            .collect();
        text.push_str(&line.join(" "));
        text.push('\n');
    }
    std::fs::write(&input, &text).unwrap();
    let mut args = job_args(&input, &out, &chk);
    args.extend(["--rate".into(), "3000".into()]);
    let mut job = Sluice::start(sluice_bin(), &args, &dir.path().join("logs"), "killed");
    let newest = match wait_for_checkpoint(&mut job, &chk, 3) {
        Waited::Checkpoint(_) => {
            job.kill9();
            metadata::latest(&chk).unwrap().0.unwrap().1.checkpoint_id
        }
        Waited::Exited(status) => panic!("ended ({status}) before it was killed"),
    };
    let retained: Vec<u64> = metadata::list(&chk)
        .unwrap()
        .iter()
        .filter(|f| f.metadata.is_ok())
        .map(|f| f.id)
        .collect();
    assert!(
        retained.len() >= 2,
        "checkpoints to fall back to: {retained:?}"
    );
    let saved_out = dir.path().join("out-saved");
    copy_tree(&out, &saved_out);
    Base {
        input,
        out,
        saved_out,
        chk,
        newest,
        expected: reference_word_count(&text),
        dir,
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of the killed job's checkpoint directory, named `name`, with the output directory
/// put back as the killed job left it (the output path is part of the job's identity).
fn scenario(base: &Base, name: &str) -> PathBuf {
    let chk = base.dir.path().join(format!("chk-{name}"));
    copy_tree(&base.chk, &chk);
    let _ = std::fs::remove_dir_all(&base.out);
    copy_tree(&base.saved_out, &base.out);
    chk
}

/// The store directories (one per stateful stage instance) under a checkpoint directory.
fn store_dirs(chk: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let subdirs = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    for run in subdirs(&chk.join("state")) {
        for stage in subdirs(&run) {
            dirs.extend(subdirs(&stage));
        }
    }
    dirs
}

/// Flips a byte in the first entry written for checkpoint `id` in every segment that holds
/// one (frames: `[len u32][crc u32][segment u64][offset u64][checkpoint u64]…`, little
/// endian; docs/state-format.md). Returns how many segments it damaged.
fn corrupt_entries_of(chk: &Path, id: u64) -> usize {
    let mut damaged = 0;
    for store in store_dirs(chk) {
        for entry in std::fs::read_dir(&store).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "seg") {
                continue;
            }
            let mut bytes = std::fs::read(&path).unwrap();
            let mut at = 0usize;
            while at + 80 <= bytes.len() {
                let word = |o: usize, n: usize| {
                    bytes[o..o + n]
                        .iter()
                        .rev()
                        .fold(0u64, |acc, b| acc << 8 | u64::from(*b))
                };
                let len = word(at, 4) as usize;
                if len == 0 {
                    break;
                }
                if word(at + 24, 8) == id {
                    bytes[at + 80] ^= 0xFF;
                    std::fs::write(&path, &bytes).unwrap();
                    damaged += 1;
                    break;
                }
                at += len;
            }
        }
    }
    damaged
}

/// Runs the job with `extra` arguments on the checkpoint directory `chk`.
fn run(base: &Base, chk: &Path, extra: &[&str], name: &str) -> (bool, String) {
    let mut args = job_args(&base.input, &base.out, chk);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let mut job = Sluice::start(sluice_bin(), &args, &base.dir.path().join("logs"), name);
    let status = job.wait(WAIT_LIMIT);
    let stderr = job.stderr();
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    (status.success(), stderr)
}

/// `--restore latest` must warn about checkpoint `bad` in one line containing `reason`, resume
/// from the checkpoint before it, and count exactly.
fn falls_back(base: &Base, chk: &Path, name: &str, reason: &str) {
    let (ok, stderr) = run(base, chk, &["--restore", "latest"], name);
    assert!(ok, "{name}: {stderr}");
    let bad = base.newest;
    let warning = stderr
        .lines()
        .find(|l| l.contains(reason))
        .unwrap_or_else(|| panic!("{name}: no line names {reason:?}: {stderr}"));
    assert!(
        warning.contains(&format!("chk-{bad}")) || warning.contains(&format!("checkpoint {bad}")),
        "{name}: the warning does not name checkpoint {bad}: {warning}"
    );
    let previous = metadata::list(chk)
        .unwrap()
        .iter()
        .map(|f| f.id)
        .filter(|&id| id < bad)
        .max();
    assert!(previous.is_some(), "{name}: nothing older");
    assert!(
        stderr.contains(&format!("resumed from checkpoint {}", bad - 1)),
        "{name}: did not resume from {}: {stderr}",
        bad - 1
    );
    let got = read_output_dir(&base.out).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_counts_eq(&base.expected, &got, name);
}

/// The run must fail with one `error:` line containing every one of `needles`.
fn fails_in_one_line(ok: bool, stderr: &str, name: &str, needles: &[&str]) {
    assert!(!ok, "{name}: succeeded: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{name}: {stderr}");
    assert_eq!(
        stderr.lines().last(),
        errors.first().copied(),
        "{name}: {stderr}"
    );
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "{name}: {needle:?} not in {}",
            errors[0]
        );
    }
}

#[test]
fn damaged_newest_checkpoints_are_named_and_the_previous_one_is_restored() {
    let base = killed_job();
    let n = base.newest;
    let metadata_of = |chk: &Path| chk.join(format!("chk-{n}")).join(METADATA_FILE);

    let chk = scenario(&base, "truncated-metadata");
    let bytes = std::fs::read(metadata_of(&chk)).unwrap();
    std::fs::write(metadata_of(&chk), &bytes[..bytes.len() / 2]).unwrap();
    falls_back(
        &base,
        &chk,
        "truncated _metadata",
        "skipping an incomplete or corrupt checkpoint",
    );

    let chk = scenario(&base, "garbled-metadata");
    std::fs::write(metadata_of(&chk), b"{\"format\":1,\"garbage\nnot json").unwrap();
    falls_back(
        &base,
        &chk,
        "garbled _metadata",
        "skipping an incomplete or corrupt checkpoint",
    );

    let chk = scenario(&base, "missing-state");
    let manifest = store_dirs(&chk)[0].join(format!("MANIFEST-{n:020}"));
    std::fs::remove_file(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    falls_back(&base, &chk, "missing state", "falling back to checkpoint");

    let chk = scenario(&base, "corrupt-segment");
    assert!(corrupt_entries_of(&chk, n) > 0, "no entry of {n} found");
    falls_back(&base, &chk, "corrupt segment", "crc mismatch");
}

#[test]
fn unusable_checkpoints_fail_in_one_line_without_falling_back_or_starting_afresh() {
    let base = killed_job();
    let n = base.newest;

    // A worker's whole store is gone: no checkpoint can be restored.
    let chk = scenario(&base, "store-gone");
    std::fs::remove_dir_all(&store_dirs(&chk)[0]).unwrap();
    let (ok, stderr) = run(&base, &chk, &["--restore", "latest"], "store gone");
    fails_in_one_line(ok, &stderr, "store gone", &["no usable checkpoint"]);
    assert!(
        read_output_dir(&base.out).unwrap().is_empty(),
        "nothing was written"
    );

    // --restore PATH naming a checkpoint with a corrupt segment: no fall-back.
    let chk = scenario(&base, "path-corrupt-segment");
    assert!(corrupt_entries_of(&chk, n) > 0);
    let path = chk.join(format!("chk-{n}")).display().to_string();
    let (ok, stderr) = run(&base, &chk, &["--restore", &path], "PATH, corrupt segment");
    fails_in_one_line(
        ok,
        &stderr,
        "PATH, corrupt segment",
        &[&format!("cannot restore checkpoint {n}"), "crc mismatch"],
    );

    // --restore PATH naming a checkpoint with truncated metadata.
    let chk = scenario(&base, "path-truncated-metadata");
    let meta = chk.join(format!("chk-{n}")).join(METADATA_FILE);
    let bytes = std::fs::read(&meta).unwrap();
    std::fs::write(&meta, &bytes[..bytes.len() / 3]).unwrap();
    let path = chk.join(format!("chk-{n}")).display().to_string();
    let (ok, stderr) = run(
        &base,
        &chk,
        &["--restore", &path],
        "PATH, truncated metadata",
    );
    fails_in_one_line(
        ok,
        &stderr,
        "PATH, truncated metadata",
        &[&format!("chk-{n}"), "_metadata"],
    );
}
