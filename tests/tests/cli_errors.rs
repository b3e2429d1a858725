//! The `sluice` binary on bad input: every failure is exactly one non-empty line on stderr
//! (no panic message, no backtrace hint) and a non-zero exit code; the line names what is
//! wrong. Also: `sluice jobs` and `sluice --help` succeed, and a successful run exits 0 and
//! leaves only finished output (no file starting with `.`).
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use sluice_tests::{
    WORKER_COUNTS, assert_counts_eq, hidden_dot_entries, read_output_dir, reference_word_count,
    run_cli_wordcount, run_cli_wordcount_with, run_command, run_command_within, run_sluice,
    sluice_bin, stderr_text, text_split_points, visible_entries,
};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("create a temporary directory: {e}"))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Checks that `out` failed with one line on stderr containing every one of `needles`, and
/// returns the line.
#[track_caller]
fn assert_one_line_error(out: &Output, needles: &[&str]) -> String {
    let stderr = stderr_text(out);
    assert!(
        !out.status.success(),
        "exit {} (stderr {stderr:?})",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr is not one line: {stderr:?}");
    let line = lines[0];
    assert!(!line.trim().is_empty(), "empty error line: {stderr:?}");
    for bad in ["panicked", "RUST_BACKTRACE"] {
        assert!(!line.contains(bad), "{bad:?} in {line:?}");
    }
    for needle in needles {
        assert!(line.contains(needle), "{line:?} does not name {needle:?}");
    }
    line.to_owned()
}

/// Asserts that `dir` holds no output: it is missing, or holds no visible entry.
#[track_caller]
fn assert_no_output(dir: &Path) {
    if dir.exists() {
        let visible = visible_entries(dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(visible.is_empty(), "a failed run left output {visible:?}");
    }
}

#[test]
fn missing_input_file_is_one_line_naming_the_path() {
    let dir = tempdir();
    let input = dir.path().join("no-such-dir").join("input.txt");
    let output = dir.path().join("out");
    for workers in WORKER_COUNTS {
        let out = run_cli_wordcount(&input, &output, workers);
        let line = assert_one_line_error(&out, &[&input.display().to_string()]);
        assert!(line.contains("No such file"), "{line:?} does not say why");
        assert_no_output(&output);
    }
}

#[test]
fn unreadable_input_paths_are_one_line_naming_the_path() {
    // As root, permission bits do not stop a read; these paths fail to open for anyone.
    let dir = tempdir();
    let file = dir.path().join("file.txt");
    write(&file, b"a file, not a directory\n");
    let loop_link = dir.path().join("loop");
    std::os::unix::fs::symlink(&loop_link, &loop_link).unwrap_or_else(|e| panic!("symlink: {e}"));
    let dangling_dir = dir.path().join("dangling-in");
    std::fs::create_dir(&dangling_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let dangling = dangling_dir.join("gone.txt");
    std::os::unix::fs::symlink(dir.path().join("gone"), &dangling)
        .unwrap_or_else(|e| panic!("symlink: {e}"));
    for (input, named, why) in [
        (file.join("child"), file.join("child"), "Not a directory"),
        (loop_link.clone(), loop_link.clone(), "symbolic links"),
        // A directory input whose visible entry cannot be opened names that entry.
        (dangling_dir.clone(), dangling.clone(), "No such file"),
    ] {
        let output = dir.path().join("out");
        let out = run_cli_wordcount(&input, &output, 2);
        assert_one_line_error(&out, &[&named.display().to_string(), why]);
        assert_no_output(&output);
    }
}

#[test]
fn output_path_that_is_a_file_is_one_line_and_leaves_it_alone() {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    write(&input, b"some words\n");
    let output = dir.path().join("out.txt");
    write(&output, b"precious\n");
    let out = run_cli_wordcount(&input, &output, 2);
    assert_one_line_error(&out, &[&output.display().to_string(), "not a directory"]);
    let kept = std::fs::read(&output).unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(kept, b"precious\n");
}

#[test]
fn output_dir_already_holding_a_part_file_is_one_line_and_left_alone() {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    write(&input, b"some words\n");
    let output = dir.path().join("out");
    std::fs::create_dir(&output).unwrap_or_else(|e| panic!("mkdir: {e}"));
    write(&output.join("part-00000-earlier"), b"some\t1\n");
    let out = run_cli_wordcount(&input, &output, 2);
    assert_one_line_error(&out, &[&output.display().to_string(), "part-00000-earlier"]);
    let entries = visible_entries(&output).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entries, vec![output.join("part-00000-earlier")]);
    assert!(hidden_dot_entries(&output).is_empty());
    let counts = read_output_dir(&output).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(counts, reference_word_count("some"));
}

#[test]
fn output_dir_holding_only_hidden_files_is_accepted() {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    write(&input, b"some words\n");
    let output = dir.path().join("out");
    std::fs::create_dir(&output).unwrap_or_else(|e| panic!("mkdir: {e}"));
    write(&output.join("_SUCCESS"), b"");
    write(&output.join(".part-00000-old.inprogress"), b"some\t1\n");
    let out = run_cli_wordcount(&input, &output, 2);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        stderr_text(&out)
    );
    let counts = read_output_dir(&output).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(counts, reference_word_count("some words"));
}

#[test]
fn unknown_job_is_one_line_naming_it() {
    let out = run_sluice(["run", "nosuchjob"]);
    assert_one_line_error(&out, &["nosuchjob"]);
}

#[test]
fn unknown_flag_is_one_line_naming_it() {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    write(&input, b"x\n");
    let out = run_sluice([
        "run".as_ref(),
        "wordcount".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        dir.path().join("out").as_os_str(),
        "--frobnicate".as_ref(),
    ]);
    assert_one_line_error(&out, &["--frobnicate"]);
    assert_no_output(&dir.path().join("out"));
}

#[test]
fn zero_workers_is_one_line_naming_the_flag() {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    write(&input, b"x\n");
    let out = run_cli_wordcount(&input, &dir.path().join("out"), 0);
    assert_one_line_error(&out, &["--workers", "0"]);
    assert_no_output(&dir.path().join("out"));
}

#[test]
fn bad_state_options_are_one_line_naming_the_flag() {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    write(&input, b"x\n");
    for (flag, value) in [
        ("--state-restore", "sometimes"),
        ("--state-budget-mb", "0"),
        ("--state-budget-mb", "lots"),
    ] {
        let output = dir.path().join("out");
        let out = run_cli_wordcount_with(&input, &output, &[flag, value]);
        assert_one_line_error(&out, &[flag, value]);
        assert_no_output(&output);
    }
}

/// A word count whose state is 20× its 1 MiB budget per worker (entries evicted to disk
/// and read back) counts exactly, with each restore mode accepted.
#[test]
fn a_small_state_budget_evicts_and_still_counts_exactly() {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    let text = (0..200_000)
        .map(|i| format!("w{:06} common\n", i % 100_000))
        .collect::<String>();
    write(&input, text.as_bytes());
    let expected = reference_word_count(&text);
    for mode in ["background", "eager", "lazy"] {
        let output = dir.path().join(format!("out-{mode}"));
        let args = [
            "--workers",
            "2",
            "--quiet",
            "--state-budget-mb",
            "1",
            "--state-restore",
            mode,
        ];
        let out = run_cli_wordcount_with(&input, &output, &args);
        assert!(
            out.status.success(),
            "{}: {}",
            out.status,
            stderr_text(&out)
        );
        let counts = read_output_dir(&output).unwrap_or_else(|e| panic!("{e}"));
        assert_counts_eq(&expected, &counts, &format!("--state-restore {mode}"));
    }
}

#[test]
fn missing_required_flag_is_one_line_naming_it() {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    write(&input, b"x\n");
    let out = run_sluice([
        "run".as_ref(),
        "wordcount".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
    ]);
    assert_one_line_error(&out, &["--output"]);
}

/// `x\n` and 1000 lines `good line\n`: 10 002 bytes, so the lines start at `2 + 10k` and
/// the split points are 5001 (2 workers) and 2501, 5002, 7503 (4 workers).
fn good_text() -> Vec<u8> {
    let mut bytes = b"x\n".to_vec();
    bytes.extend("good line\n".repeat(1000).bytes());
    bytes
}

/// [`good_text`] with `bad` written at `offset`.
fn text_with_bad_bytes(offset: usize, bad: &[u8]) -> Vec<u8> {
    let mut bytes = good_text();
    bytes[offset..offset + bad.len()].copy_from_slice(bad);
    bytes
}

#[test]
fn invalid_utf8_is_one_line_naming_the_file_and_byte_offset() {
    let total = good_text().len();
    assert_eq!(text_split_points(total, 2), [5001]);
    assert_eq!(text_split_points(total, 4), [2501, 5002, 7503]);
    let truncated_at_end = {
        let mut b = good_text();
        b.pop();
        b.push(b'x');
        let offset = b.len();
        b.extend_from_slice(&[0xe6, 0x97]);
        (b, offset)
    };
    let cases: Vec<(Vec<u8>, usize)> = vec![
        // In the first line, read by worker 0.
        (text_with_bad_bytes(4, &[0xff]), 4),
        // In the line 4992..=5001, whose newline is the first byte of the range at 5001.
        (text_with_bad_bytes(4995, &[0x80]), 4995),
        // The first byte of the line that starts exactly at the range start 5002.
        (text_with_bad_bytes(5002, &[0xfe]), 5002),
        // In the line 7502..=7511, after the range edge 7503 that it crosses: read by the
        // range before the edge, past its end.
        (text_with_bad_bytes(7506, &[0xed, 0xa0, 0x80]), 7506),
        // In the last range.
        (text_with_bad_bytes(9871, &[0xc0, 0x20]), 9871),
        // A sequence cut off by the end of a file without a final newline.
        truncated_at_end,
    ];
    let dir = tempdir();
    for (i, (bytes, offset)) in cases.iter().enumerate() {
        let input = dir.path().join(format!("bad-{i}.txt"));
        write(&input, bytes);
        for workers in WORKER_COUNTS {
            let output = dir.path().join(format!("out-{i}-{workers}"));
            let out = run_cli_wordcount(&input, &output, workers);
            let line = assert_one_line_error(
                &out,
                &[
                    &input.display().to_string(),
                    &format!("byte offset {offset}:"),
                ],
            );
            assert!(line.contains("UTF-8"), "{line:?}");
            assert_no_output(&output);
        }
    }
}

#[test]
fn run_after_a_failed_run_into_the_same_output_dir_succeeds() {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    write(&input, &text_with_bad_bytes(5555, &[0xff]));
    let output = dir.path().join("out");
    let out = run_cli_wordcount(&input, &output, 2);
    assert_one_line_error(&out, &["byte offset 5555:"]);
    assert_no_output(&output);
    let good = String::from_utf8(good_text()).unwrap_or_else(|e| panic!("{e}"));
    write(&input, good.as_bytes());
    let out = run_cli_wordcount(&input, &output, 2);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        stderr_text(&out)
    );
    let counts = read_output_dir(&output).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(counts, reference_word_count(&good));
}

#[test]
fn jobs_lists_wordcount_and_exits_0() {
    let out = run_sluice(["jobs"]);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        stderr_text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some("wordcount")),
        "{stdout:?}"
    );
}

#[test]
fn help_exits_0_and_names_the_commands() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["run", "wordcount", "--help"],
    ] {
        let out = run_sluice(args);
        assert!(
            out.status.success(),
            "{args:?}: {}: {}",
            out.status,
            stderr_text(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout:?}");
    }
    let out = run_sluice(["run", "wordcount", "--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for flag in ["--input", "--output", "--workers", "--quiet"] {
        assert!(
            stdout.contains(flag),
            "help does not document {flag}: {stdout:?}"
        );
    }
}

#[test]
fn successful_run_exits_0_and_leaves_no_dot_files() {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    // 3.5 MB of output: more than the sink's 1 MiB write buffer per worker at 1 and 2
    // workers, so part files are written in several pieces before they are committed.
    let text = (0..250_000)
        .map(|i| format!("word{i:07} common\n"))
        .collect::<String>();
    write(&input, text.as_bytes());
    let expected = reference_word_count(&text);
    for workers in WORKER_COUNTS {
        let output = dir.path().join(format!("out-{workers}"));
        let out = run_cli_wordcount(&input, &output, workers);
        assert!(
            out.status.success(),
            "{}: {}",
            out.status,
            stderr_text(&out)
        );
        assert_eq!(out.status.code(), Some(0));
        assert!(
            hidden_dot_entries(&output).is_empty(),
            "{:?}",
            hidden_dot_entries(&output)
        );
        let counts = read_output_dir(&output).unwrap_or_else(|e| panic!("{e}"));
        assert_counts_eq(&expected, &counts, &format!("{workers} workers"));
    }
}

#[test]
fn relative_input_and_output_paths_work() {
    let dir = tempdir();
    write(
        &dir.path().join("in.txt"),
        b"Relative paths, relative PATHS\n",
    );
    let mut cmd = Command::new(sluice_bin());
    cmd.current_dir(dir.path()).args([
        "run",
        "wordcount",
        "--input",
        "in.txt",
        "--output",
        "out",
        "--workers",
        "2",
        "--quiet",
    ]);
    let out = run_command(cmd);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        stderr_text(&out)
    );
    let counts = read_output_dir(&dir.path().join("out")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        counts,
        reference_word_count("relative paths relative paths")
    );
}

/// Far more workers than cores (48 on this 2-core machine; the default 128 key groups allow up
/// to 128): each runs unpinned, and a two-line job must still finish promptly.
#[test]
fn workers_far_above_the_cores_48_finish_a_small_job() {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    write(&input, b"many workers\nfew words\n");
    let output = dir.path().join("out");
    let mut cmd = Command::new(sluice_bin());
    cmd.arg("run")
        .arg("wordcount")
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(["--workers", "48", "--quiet"]);
    let out = run_command_within(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        stderr_text(&out)
    );
    let counts = read_output_dir(&output).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(counts, reference_word_count("many workers few words"));
}
