//! `sluice bench nexmark` through the binary: the whole suite at CI size (100,000 events, a
//! table row and a `sluice-bench/1` JSON object per query), `--output` and the built-in jobs
//! `sluice run nexmark-qN` writing exactly the rows the query's pipeline produces (the output
//! directory contract), rate mode's latency figures, and one-line errors for bad flags.

use std::cell::RefCell;
use std::fmt::Display;
use std::path::Path;
use std::process::{Command, Output};

use sluice::ops::Pipe;
use sluice::{CollectHandle, DataStream, Env, Head};
use sluice_bench::nexmark::queries::{Due, Query, RowOutput};
use sluice_bench::nexmark::{NexmarkConfig, NexmarkSource};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn sluice(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run the sluice binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect()
}

#[test]
fn the_suite_at_100k_events_reports_every_query() {
    let out = sluice(&["bench", "nexmark", "--all", "--events", "100000", "--json"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for q in Query::ALL {
        let row = format!("| {:<6} |      100000 |", q.name());
        assert!(
            stderr.contains(&row),
            "no table row for {}:\n{stderr}",
            q.name()
        );
    }
    let objects = json_lines(&out);
    assert_eq!(objects.len(), Query::ALL.len());
    for (o, q) in objects.iter().zip(Query::ALL) {
        assert_eq!(o["schema"], "sluice-bench/1");
        assert_eq!(o["query"], q.name());
        assert_eq!(o["mode"], "events");
        assert_eq!(o["events"], 100_000);
        assert!(o["throughput_rps"].as_f64().unwrap() > 0.0, "{o}");
        assert!(o["rows"].as_u64().unwrap() > 0, "{o}");
        assert!(o["latency_us"].is_null());
    }
}

/// Collects a query's rows as lines.
#[derive(Default)]
struct Lines(RefCell<Option<CollectHandle<String>>>);

impl RowOutput for Lines {
    fn rows<H, P>(&self, rows: DataStream<H, P>, _due: Due)
    where
        H: Head,
        P: Pipe<H::Item>,
        P::Out: Display + Send + 'static,
    {
        *self.0.borrow_mut() = Some(rows.map(|r| r.to_string()).collect());
    }
}

/// The lines of an output directory's visible files, sorted.
fn output_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        lines.extend(text.lines().map(str::to_owned));
    }
    lines.sort();
    lines
}

/// The query's rows, sorted, from an uncheckpointed run on one worker in this process.
fn reference_rows(query: Query, events: u64, event_rate: u64) -> Vec<String> {
    let env = Env::new();
    env.set_workers(1);
    let lines = Lines::default();
    let cfg = NexmarkConfig {
        events: Some(events),
        first_event_rate: event_rate,
        next_event_rate: event_rate,
        ..NexmarkConfig::default()
    };
    query.build(&env, NexmarkSource::new(cfg), &lines);
    env.execute(query.name()).unwrap();
    let mut expected = lines.0.borrow_mut().take().unwrap().take();
    expected.sort();
    assert!(!expected.is_empty(), "{}: no rows to compare", query.name());
    expected
}

#[test]
fn output_holds_every_row_of_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let events = "30000";
    for q in ["q3", "q7", "q11"] {
        let args = [
            "bench",
            "nexmark",
            "--query",
            q,
            "--events",
            events,
            "--event-rate",
            "2000",
        ];
        let out_arg = out_dir.to_str().unwrap();
        let out = sluice(&[&args[..], &["--workers", "2", "--output", out_arg]].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let expected = reference_rows(Query::parse(q).unwrap(), 30_000, 2_000);
        assert_eq!(output_lines(&out_dir.join(q)), expected, "{q}");
    }
    // A second run into the same directory would mix its rows with the first's.
    let again = sluice(&[
        "bench",
        "nexmark",
        "--query",
        "q3",
        "--events",
        "10",
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already holds output"));
}

#[test]
fn run_nexmark_jobs_write_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("q9");
    let args = [
        "run",
        "nexmark-q9",
        "--events",
        "30000",
        "--event-rate",
        "2000",
    ];
    let out = sluice(
        &[
            &args[..],
            &["--quiet", "--output", out_dir.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        output_lines(&out_dir),
        reference_rows(Query::Q9, 30_000, 2_000)
    );
    let jobs = text(&sluice(&["jobs"]).stdout);
    for q in Query::ALL {
        assert!(
            jobs.contains(q.job_name()),
            "{} missing from {jobs}",
            q.job_name()
        );
    }
    assert_eq!(
        sluice(&["run", "nexmark-q6", "--output", "x"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn checkpointed_runs_report_their_checkpoints_and_write_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (out_dir, ckpt_dir) = (dir.path().join("out"), dir.path().join("ckpt"));
    // q7: a tumbling window and a join, both keeping their state in the checkpoints.
    let out = sluice(&[
        "bench",
        "nexmark",
        "--query",
        "q7",
        "--events",
        "30000",
        "--event-rate",
        "2000",
        "--workers",
        "2",
        "--checkpoint-interval-ms",
        "10",
        "--checkpoint-dir",
        ckpt_dir.to_str().unwrap(),
        "--output",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Ckpt p99(ms)"), "{stderr}");
    let o = &json_lines(&out)[0];
    let c = &o["checkpoints"];
    assert_eq!(c["interval_ms"], 10, "{o}");
    // A bounded job takes a final checkpoint before its sinks commit.
    let completed = c["completed"].as_u64().unwrap();
    assert!(completed >= 1, "{o}");
    // Every periodic one is measured; the final one is not (every instance had finished).
    let measured = c["duration_us"]["count"].as_u64().unwrap_or(0);
    assert!(measured + 1 >= completed && measured <= completed, "{o}");
    assert_eq!(
        c["sync_pause_max_us"]["count"].as_u64(),
        Some(completed),
        "{o}"
    );
    assert_eq!(
        output_lines(&out_dir.join("q7")),
        reference_rows(Query::Q7, 30_000, 2_000)
    );
    // Each run's checkpoints are removed after it.
    assert_eq!(std::fs::read_dir(&ckpt_dir).unwrap().count(), 0);
    // A checkpoint directory without an interval is a usage error.
    let bad = sluice(&["bench", "nexmark", "--query", "q0", "--checkpoint-dir", "x"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn rate_mode_reports_latency_percentiles() {
    let args = [
        "bench", "nexmark", "--query", "q2", "--rate", "100000", "--events", "100000",
    ];
    let out = sluice(&[&args[..], &["--json"]].concat());
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("p99(ms)"), "{stderr}");
    let o = &json_lines(&out)[0];
    assert_eq!(o["mode"], "rate");
    assert_eq!(o["event_rate"], 100_000);
    let latency = &o["latency_us"];
    let (p50, p99, max) = (&latency["p50"], &latency["p99"], &latency["max"]);
    assert!(p50.as_u64().unwrap() <= p99.as_u64().unwrap(), "{latency}");
    assert!(p99.as_u64().unwrap() <= max.as_u64().unwrap(), "{latency}");
    assert_eq!(latency["count"], o["rows"]);
    assert!(!o["hdr"].as_str().unwrap().is_empty());
    // The run is paced: 100,000 events at 100,000 events/s take about a second.
    assert!(o["duration_s"].as_f64().unwrap() >= 0.9, "{o}");
}

#[test]
fn bad_flags_are_one_line_errors() {
    let out = sluice(&["bench", "nexmark", "--query", "q6"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown query 'q6'"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let args = [
        "bench",
        "nexmark",
        "--query",
        "q1",
        "--rate",
        "100",
        "--event-rate",
        "200",
    ];
    let out = sluice(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--event-rate 200 differs from --rate 100"));
    let out = sluice(&["bench", "nexmark"]);
    assert_eq!(out.status.code(), Some(2));
}
