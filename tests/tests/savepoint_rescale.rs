//! A savepoint taken at 2 workers and resumed at 1, 3 and 4, through the command line: the
//! `sluice` binary runs a throttled job with `--savepoint-dir`; once a checkpoint completed, the
//! test sends SIGTERM; the job stops with a savepoint, prints `savepoint: PATH` on stdout and
//! exits 0. Then the same savepoint resumes three times, with `--restore PATH --workers N`,
//! each time in the output directory put back as the stopped job left it. Every resumed
//! output must equal the reference exactly: the keyed state moved by key groups to the new
//! workers, the sources' splits were spread over them, and nothing was written twice.
//!
//! Both jobs keep their state in the store: word count a keyed final sum, window-agg its
//! windows' accumulators and timers.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_core::checkpoint::metadata::CheckpointMetadata;
use sluice_tests::faults::{
    Sluice, WAIT_LIMIT, Waited, assert_same_lines, stage_has_state, wait_for_checkpoint,
};
use sluice_tests::windows::{Spec, reference_window_agg};
use sluice_tests::{
    assert_counts_eq, hidden_dot_entries, read_output_dir, reference_word_count, sluice_bin,
    visible_entries,
};

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Copies the directory `from` (files only, hidden ones too) to `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Runs `job_args` at 2 workers with checkpoints and `--savepoint-dir`, sends SIGTERM once a
/// checkpoint completed, and returns the savepoint's path and metadata.
fn stop_with_savepoint(dir: &Path, job_args: &[String]) -> (PathBuf, CheckpointMetadata) {
    let (chk, sp) = (dir.join("chk"), dir.join("savepoints"));
    let mut args = job_args.to_vec();
    args.extend(strings(&[
        "--workers",
        "2",
        "--quiet",
        "--checkpoint-dir",
        &path(&chk),
        "--checkpoint-interval-ms",
        "100",
        "--savepoint-dir",
        &path(&sp),
    ]));
    let mut job = Sluice::start(sluice_bin(), &args, &dir.join("logs"), "stopped");
    // A checkpoint completed: the job is well under way (and its signal handler installed).
    if let Waited::Exited(status) = wait_for_checkpoint(&mut job, &chk, 2) {
        panic!(
            "the job ended ({status}) before the test could stop it: {}",
            job.stderr()
        );
    }
    let pid = job.pid().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success(), "kill -TERM {pid}");
    let status = job.wait(WAIT_LIMIT);
    assert!(
        status.success(),
        "stop with a savepoint: {status}: {}",
        job.stderr()
    );
    let stdout = job.stdout();
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("savepoint: "))
        .unwrap_or_else(|| panic!("no `savepoint: PATH` line in {stdout:?}"));
    let savepoint = PathBuf::from(line);
    assert!(savepoint.starts_with(&sp), "{}", savepoint.display());
    assert!(job.stderr().contains("stopped:"), "{}", job.stderr());
    let meta = CheckpointMetadata::read(&savepoint).unwrap_or_else(|e| panic!("{e}"));
    assert!(meta.savepoint && meta.workers == 2, "{meta:?}");
    (savepoint, meta)
}

/// Resumes `job_args` (whose output is `out`) from `savepoint` at `workers` workers, in `out`
/// put back first as the stopped job left it (`saved`): the stage names, which a restore
/// checks, include the output path, so each resume writes to the same place.
fn resume(job_args: &[String], out: &Path, saved: &Path, savepoint: &Path, workers: usize) {
    let _ = std::fs::remove_dir_all(out);
    copy_dir(saved, out);
    let mut args = job_args.to_vec();
    args.extend(strings(&[
        "--workers",
        &workers.to_string(),
        "--quiet",
        "--restore",
        &path(savepoint),
    ]));
    let logs = out.with_file_name("logs");
    let mut job = Sluice::start(sluice_bin(), &args, &logs, &format!("resumed-{workers}"));
    let status = job.wait(WAIT_LIMIT);
    assert!(status.success(), "resume at {workers}: {}", job.stderr());
    assert!(
        job.stderr().contains("resumed from checkpoint"),
        "{}",
        job.stderr()
    );
    assert!(hidden_dot_entries(out).is_empty(), "pending files left");
}

#[test]
fn wordcount_savepoint_at_2_workers_resumes_at_1_3_and_4_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.txt"), dir.path().join("out"));
    // 16,000 lines of 8 words over 1,500 words, at 4,000 lines/s: about 4 s uninterrupted.
    let mut text = String::new();
    let mut x: u64 = 0x9E37_79B9;
    for i in 0..16_000u64 {
        let words: Vec<String> = (0..8)
            .map(|j| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("w{}", (x ^ (i * 8 + j)) % 1_500)
            })
            .collect();
        text.push_str(&words.join(" "));
        text.push('\n');
    }
    std::fs::write(&input, &text).unwrap();
    let job = strings(&[
        "run",
        "wordcount",
        "--input",
        &path(&input),
        "--output",
        &path(&out),
        "--rate",
        "4000",
    ]);
    let (savepoint, meta) = stop_with_savepoint(dir.path(), &job);
    assert!(
        stage_has_state(&meta, "reduce"),
        "the counts are in the savepoint"
    );
    let expected = reference_word_count(&text);
    let saved = dir.path().join("out-saved");
    copy_dir(&out, &saved);
    for workers in [1, 3, 4] {
        resume(&job, &out, &saved, &savepoint, workers);
        let got = read_output_dir(&out).unwrap_or_else(|e| panic!("{e}"));
        assert_counts_eq(&expected, &got, &format!("resumed at {workers} workers"));
    }
}

#[test]
fn window_agg_savepoint_at_2_workers_resumes_at_1_3_and_4_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.csv"), dir.path().join("out"));
    // One file in time order, cut into 2 byte ranges: each range is in time order, and a
    // worker that reads both reads them in time order too, so nothing is ever late.
    let (records, keys) = (20_000u64, 40u64);
    let mut csv = String::new();
    for i in 0..records {
        csv.push_str(&format!(
            "{},k{},{}\n",
            1_000_000 + i,
            i % keys,
            i / keys + 1
        ));
    }
    std::fs::write(&input, &csv).unwrap();
    let spec = Spec::Tumbling(100);
    let job = strings(&[
        "run",
        "window-agg",
        "--input",
        &path(&input),
        "--output",
        &path(&out),
        "--window",
        &spec.arg(),
        "--out-of-orderness-ms",
        "0",
        "--rate",
        "5000",
    ]);
    let (savepoint, meta) = stop_with_savepoint(dir.path(), &job);
    assert!(
        stage_has_state(&meta, "window("),
        "the windows are in the savepoint"
    );
    let (expected, late) = reference_window_agg(&csv, 1, spec, 0);
    assert!(late.is_empty());
    let saved = dir.path().join("out-saved");
    copy_dir(&out, &saved);
    for workers in [1, 3, 4] {
        resume(&job, &out, &saved, &savepoint, workers);
        let mut got: Vec<String> = visible_entries(&out)
            .unwrap()
            .iter()
            .flat_map(|f| {
                let text = std::fs::read_to_string(f).unwrap();
                text.lines().map(str::to_owned).collect::<Vec<_>>()
            })
            .collect();
        got.sort();
        assert_same_lines(&expected, &got, &format!("resumed at {workers} workers"));
    }
}
