//! Helpers for Sluice's end-to-end tests (the files in `tests/tests/`).
//!
//! Every check here is independent of the engine's own code, so that a test compares Sluice
//! against something Sluice did not compute:
//!
//! - [`reference_word_count`]: word count by the definition, in a few lines of plain Rust;
//! - [`read_output_dir`]: the output of a job per the output directory contract
//!   (`shared/CLI.md`), strict about malformed lines and words that appear twice;
//! - [`sluice_bin`] and [`run_sluice`]: the `sluice` binary, built if needed;
//! - [`wordcount_to_dir`] and [`wordcount_collect`]: the word count job built in this process
//!   with the public `sluice` API, as `tools/src/jobs.rs` builds it for the binary;
//! - [`within`]: runs a job on another thread and fails the test if it hangs;
//! - [`windows`]: a brute-force reference for the `window-agg` job;
//! - [`event_time`]: brute-force references for windows, window and interval joins and bounded
//!   joins built with the API, and [`run_job`] to run such a job;
//! - [`faults`]: seeds, iteration counts, the `sluice` binary as a child killed with SIGKILL,
//!   and waits on checkpoint directories, for the checkpoint tests;
//! - [`held`]: a source that stays open until the test releases it, and a sink that releases
//!   it once the output it waits for has arrived;
//! - [`cluster`]: a coordinator and worker nodes as real `sluice` processes on 127.0.0.x.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod event_time;
pub mod faults;
pub mod held;
pub mod windows;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice::{Env, JobReport};

/// Word counts: word → count, sorted by word so failures print readably.
pub type Counts = BTreeMap<String, u64>;

/// The worker counts every job-level test runs at: 4 is more than the 2 cores of the test
/// machine, so it also exercises unpinned placement.
pub const WORKER_COUNTS: [usize; 3] = [1, 2, 4];

/// Word count by the definition: a word is a maximal run of characters for which
/// [`char::is_alphanumeric`] holds, lowercased as a whole with [`str::to_lowercase`].
///
/// ```
/// let counts = sluice_tests::reference_word_count("A a, B!\r\nΣΟΦΟΣ");
/// assert_eq!(counts["a"], 2);
/// assert_eq!(counts["b"], 1);
/// assert_eq!(counts["σοφος"], 1);
/// ```
pub fn reference_word_count(text: &str) -> Counts {
    let mut counts = Counts::new();
    add_reference_word_count(&mut counts, text);
    counts
}

/// Adds the words of `text` to `counts` (for inputs made of several files).
pub fn add_reference_word_count(counts: &mut Counts, text: &str) {
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
    {
        *counts.entry(word).or_insert(0) += 1;
    }
}

/// Reads the output of a word count job from `dir`, per the output directory contract: the
/// output is every file whose name starts with neither `.` nor `_`; each of its lines is
/// `word<TAB>count`, newline-terminated, in any order and spread over files in any way.
///
/// Fails with a message naming the file and line on anything else: a line without exactly one
/// tab, an empty word, a count that is not a positive integer, a last line without its
/// newline (a truncated file), a word that appears twice (in one file or across files), or a
/// visible entry that is not a regular file.
pub fn read_output_dir(dir: &Path) -> Result<Counts, String> {
    // Each word's count, and the file and line it was read from, to name both places of a
    // duplicate.
    let mut found: BTreeMap<String, (u64, usize, usize)> = BTreeMap::new();
    let files = visible_entries(dir)?;
    for (f, file) in files.iter().enumerate() {
        let meta = std::fs::metadata(file)
            .map_err(|e| format!("stat output file {}: {e}", file.display()))?;
        if !meta.is_file() {
            return Err(format!(
                "output entry {} is not a regular file",
                file.display()
            ));
        }
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("read output file {}: {e}", file.display()))?;
        if !text.is_empty() && !text.ends_with('\n') {
            return Err(format!(
                "output file {} does not end with a newline (truncated?)",
                file.display()
            ));
        }
        for (i, line) in text.split_terminator('\n').enumerate() {
            let (word, count) = parse_output_line(line)
                .map_err(|e| format!("{}:{}: {e}", file.display(), i + 1))?;
            if let Some(&(_, first_file, first_line)) = found.get(&word) {
                return Err(format!(
                    "{}:{}: word {word:?} appears twice (first at {}:{})",
                    file.display(),
                    i + 1,
                    files[first_file].display(),
                    first_line + 1
                ));
            }
            found.insert(word, (count, f, i));
        }
    }
    Ok(found
        .into_iter()
        .map(|(word, (count, _, _))| (word, count))
        .collect())
}

/// Parses one output line `word<TAB>count`.
pub fn parse_output_line(line: &str) -> Result<(String, u64), String> {
    let mut fields = line.split('\t');
    let (Some(word), Some(count), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(format!("line {line:?} is not word<TAB>count"));
    };
    if word.is_empty() {
        return Err(format!("line {line:?} has an empty word"));
    }
    match count.parse::<u64>() {
        Ok(n) if n > 0 => Ok((word.to_owned(), n)),
        _ => Err(format!(
            "line {line:?}: count {count:?} is not a positive integer"
        )),
    }
}

/// The entries of `dir` that are output per the contract (names starting with neither `.` nor
/// `_`), sorted.
pub fn visible_entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let list_err = |e: std::io::Error| format!("list output directory {}: {e}", dir.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') && !name.starts_with('_') {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// The names of the entries of `dir` that start with `.` (files still being written, or left
/// behind by one that never finished).
pub fn hidden_dot_entries(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The first byte of each byte range but the first, when text inputs of `total` bytes are
/// split for `workers` workers: `k * ceil(total / workers)`, as `text_splits` in
/// `api/src/sources.rs` does for a single file. Tests use it to put the bytes they mean to
/// test at range edges.
pub fn text_split_points(total: usize, workers: usize) -> Vec<usize> {
    let size = total.div_ceil(workers.max(1));
    (1..workers)
        .map(|k| k * size)
        .filter(|&p| p < total)
        .collect()
}

/// Builds the word count job of `sluice run wordcount` on `env`: the binary's own pipeline,
/// from the `sluice_tools` library.
pub fn build_wordcount(env: &Env, input: &Path, output: &Path) {
    sluice_tools::wordcount(env, input, output);
}

/// Runs the word count job in this process on `workers` workers, reading `input` (a file or
/// a directory) and writing part files into `output`.
pub fn wordcount_to_dir(input: &Path, output: &Path, workers: usize) -> sluice::Result<JobReport> {
    let env = Env::new();
    env.set_workers(workers);
    build_wordcount(&env, input, output);
    env.execute("wordcount")
}

/// Runs the word count pipeline in this process on `workers` workers and returns its counts
/// from a collect sink instead of files. A word emitted twice is an error, not a merge: the
/// final sum must emit each key once.
pub fn wordcount_collect(input: &Path, workers: usize) -> Result<Counts, String> {
    let env = Env::new();
    env.set_workers(workers);
    let out = sluice_tools::word_counts(&env, input).collect();
    env.execute("wordcount")
        .map_err(|e| format!("job failed: {e}"))?;
    let mut counts = Counts::new();
    for (word, count) in out.take() {
        if counts.insert(word.to_string(), count).is_some() {
            return Err(format!("word {word:?} emitted twice"));
        }
    }
    Ok(counts)
}

/// Runs `f` on a new thread and returns its result, failing the test (with `what` in the
/// message) if it has not finished within `limit` (the job hung) or panicked. A hung thread is
/// left behind; the test fails.
#[track_caller]
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("test-job".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap_or_else(|e| panic!("spawn test thread: {e}"));
    match rx.recv_timeout(limit) {
        Ok(value) => {
            let _ = worker.join();
            value
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: not finished within {}s: hung", limit.as_secs())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(payload) => std::panic::resume_unwind(payload),
            Ok(()) => panic!("test thread ended without a result"),
        },
    }
}

/// Builds a job with `build` on an environment of `workers` workers, runs it on another thread
/// (failing the test if it takes longer than a minute or fails), and returns what the function
/// that `build` returned reads afterwards (the collect sinks' records, say).
#[track_caller]
pub fn run_job<B, T, R>(workers: usize, what: &str, build: B) -> R
where
    B: FnOnce(&Env) -> T + Send + 'static,
    T: FnOnce() -> R,
    R: Send + 'static,
{
    let name = what.to_owned();
    within(Duration::from_secs(60), what, move || {
        let env = Env::new();
        env.set_workers(workers);
        let take = build(&env);
        if let Err(e) = env.execute(&name) {
            panic!("{name}: job failed on {workers} workers: {e}");
        }
        take()
    })
}

/// Cases per property test: `default`, or `SLUICE_PROPTEST_CASES` when set (the extended
/// tier runs many more).
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("SLUICE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `sluice` binary to test.
///
/// A test of another package cannot use `env!("CARGO_BIN_EXE_sluice")`, and Cargo does not
/// build `sluice-tools` for `cargo test -p sluice-tests`, so this finds it itself, once per
/// test process:
///
/// 1. `SLUICE_BIN`, if set, names the binary to use; nothing is built.
/// 2. Otherwise the binary is `<target>/<profile>/sluice`, found from this test executable's
///    path (`<target>/<profile>/deps/<test>-<hash>`). Before it is used,
///    `cargo build -p sluice-tools --bin sluice` runs once with the same target directory and
///    profile (`debug` → dev, `release` → `--release`, any other → `--profile NAME`), so the
///    binary is never older than the engine sources the tests were built from. When nothing
///    changed, that build is a no-op of about a second.
///
/// Panics with the build's output if the build fails.
pub fn sluice_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("SLUICE_BIN") {
        Some(path) => PathBuf::from(path),
        None => build_sluice_bin(),
    })
}

fn build_sluice_bin() -> PathBuf {
    build_bin(&["-p", "sluice-tools", "--bin", "sluice"], "sluice")
}

/// The example `name` of the `sluice` crate (a job binary), built like [`sluice_bin`] (at
/// most once per test process).
pub fn example_bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<BTreeMap<String, PathBuf>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built
        .entry(name.to_owned())
        .or_insert_with(|| {
            build_bin(
                &["-p", "sluice", "--example", name],
                &format!("examples/{name}"),
            )
        })
        .clone()
}

/// Runs `cargo build --quiet ARGS` into this test's target directory and profile, and returns
/// `<target>/<profile>/<out>`.
fn build_bin(args: &[&str], out: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("locate the test binary: {e}"));
    // <target>/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .filter(|deps| deps.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .unwrap_or_else(|| {
            panic!(
                "test binary {} is not in <target>/<profile>/deps; set SLUICE_BIN",
                exe.display()
            )
        });
    let target_dir = profile_dir
        .parent()
        .unwrap_or_else(|| panic!("no target directory above {}", profile_dir.display()));
    let profile = profile_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("no workspace above {}", env!("CARGO_MANIFEST_DIR")));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--quiet"])
        .args(args)
        .arg("--target-dir")
        .arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out_path = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out_path.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out_path.status,
        String::from_utf8_lossy(&out_path.stderr)
    );
    let bin = profile_dir.join(format!("{out}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{cmd:?} succeeded but {} is missing",
        bin.display()
    );
    bin
}

/// How long one run of the `sluice` binary may take before the test fails (and the process is
/// killed).
pub const CLI_RUN_LIMIT: Duration = Duration::from_secs(120);

/// Runs the `sluice` binary with `args` and returns what it did (see [`run_command`]).
pub fn run_sluice<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(sluice_bin());
    cmd.args(args);
    run_command(cmd)
}

/// Runs `cmd` (without `RUST_LOG` and `RUST_BACKTRACE` from the environment, with stdin
/// closed) and returns what it did. Kills it and fails the test if it runs longer than
/// [`CLI_RUN_LIMIT`].
#[track_caller]
pub fn run_command(cmd: Command) -> Output {
    run_command_within(cmd, CLI_RUN_LIMIT)
}

/// [`run_command`] with another time limit.
#[track_caller]
pub fn run_command_within(mut cmd: Command, limit: Duration) -> Output {
    cmd.env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    // Drain both pipes on their own threads, so a chatty child never blocks on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} still running after {}s: killed", limit.as_secs());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("wait for {cmd:?}: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// `sluice run wordcount --input INPUT --output OUTPUT --workers N --quiet`.
pub fn run_cli_wordcount(input: &Path, output: &Path, workers: usize) -> Output {
    let workers = workers.to_string();
    run_cli_wordcount_with(input, output, &["--workers", &workers, "--quiet"])
}

/// `sluice run wordcount --input INPUT --output OUTPUT` followed by `extra` arguments.
pub fn run_cli_wordcount_with(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let head = [
        "run".as_ref(),
        "wordcount".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        output.as_os_str(),
    ];
    run_sluice(head.into_iter().chain(extra.iter().map(|a| a.as_ref())))
}

/// A process's stderr as text, for messages.
pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Where two word counts differ, as a short report (at most 10 words), or `None` if equal.
pub fn diff_counts(expected: &Counts, got: &Counts) -> Option<String> {
    if expected == got {
        return None;
    }
    let mut lines = Vec::new();
    let words: std::collections::BTreeSet<&String> = expected.keys().chain(got.keys()).collect();
    let total = words
        .iter()
        .filter(|w| expected.get(**w) != got.get(**w))
        .count();
    for w in words {
        let (e, g) = (expected.get(w), got.get(w));
        if e != g && lines.len() < 10 {
            lines.push(format!("  {w:?}: expected {e:?}, got {g:?}"));
        }
    }
    Some(format!(
        "{total} words differ ({} expected, {} got):\n{}",
        expected.len(),
        got.len(),
        lines.join("\n")
    ))
}

/// Fails the test with a readable diff if `got` is not `expected`.
pub fn assert_counts_eq(expected: &Counts, got: &Counts, what: &str) {
    if let Some(diff) = diff_counts(expected, got) {
        panic!("{what}: {diff}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
    }

    #[test]
    fn reference_splits_on_non_alphanumerics_and_lowercases_whole_words() {
        let counts = reference_word_count("Hello, hello! x_y ΟΔΟΣ 日本 e\u{301}\r\n42 ½");
        let expected: Counts = [
            ("hello", 2),
            ("x", 1),
            ("y", 1),
            ("οδος", 1),
            ("日本", 1),
            ("e", 1),
            ("42", 1),
            ("½", 1),
        ]
        .into_iter()
        .map(|(w, n)| (w.to_owned(), n))
        .collect();
        assert_eq!(counts, expected);
        assert!(reference_word_count(" \n\r\t,.").is_empty());
    }

    #[test]
    fn output_reader_merges_visible_files_and_skips_hidden_ones() {
        let dir = tempdir();
        write(dir.path(), "part-0", "a\t1\nb\t2\n");
        write(dir.path(), "part-1", "c\t3\n");
        write(dir.path(), "empty", "");
        write(dir.path(), ".part-2.inprogress", "a\t100\n");
        write(dir.path(), "_SUCCESS", "garbage");
        let counts = read_output_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(counts, reference_word_count("a b b c c c"));
    }

    #[test]
    fn output_reader_rejects_malformed_lines_duplicates_and_truncation() {
        for (files, needle) in [
            (vec![("p", "a 1\n")], "not word<TAB>count"),
            (vec![("p", "a\t1\t2\n")], "not word<TAB>count"),
            (vec![("p", "\t1\n")], "empty word"),
            (vec![("p", "a\tx\n")], "not a positive integer"),
            (vec![("p", "a\t0\n")], "not a positive integer"),
            (vec![("p", "a\t-1\n")], "not a positive integer"),
            (vec![("p", "a\t1")], "does not end with a newline"),
            (vec![("p", "a\t1\r\n")], "not a positive integer"),
            (vec![("p", "a\t1\na\t2\n")], "appears twice"),
            (vec![("p", "a\t1\n"), ("q", "a\t1\n")], "appears twice"),
        ] {
            let dir = tempdir();
            for (name, text) in &files {
                write(dir.path(), name, text);
            }
            match read_output_dir(dir.path()) {
                Ok(counts) => panic!("{files:?} accepted as {counts:?}"),
                Err(e) => assert!(e.contains(needle), "{files:?}: {e:?} lacks {needle:?}"),
            }
        }
    }

    #[test]
    fn output_reader_rejects_a_visible_subdirectory() {
        let dir = tempdir();
        std::fs::create_dir(dir.path().join("sub")).unwrap_or_else(|e| panic!("mkdir: {e}"));
        let err = read_output_dir(dir.path()).err();
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("not a regular file")),
            "{err:?}"
        );
    }

    #[test]
    fn diff_counts_names_the_differing_words() {
        let a = reference_word_count("x y y");
        let b = reference_word_count("x y z");
        assert_eq!(diff_counts(&a, &a), None);
        let diff = diff_counts(&a, &b).unwrap_or_default();
        assert!(diff.starts_with("2 words differ"), "{diff}");
        assert!(
            diff.contains("\"y\": expected Some(2), got Some(1)"),
            "{diff}"
        );
        assert!(diff.contains("\"z\": expected None, got Some(1)"), "{diff}");
    }
}
