//! Checkpoints of stateless pipelines through the API: replayable sources, the two-phase-commit
//! text sink, restarts after in-job failures, resuming from a checkpoint, stop with a
//! savepoint. The oracle is Flink's: the committed output equals the input, each record
//! exactly once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sluice::{CheckpointConfig, Env, RestoreFrom};
use sluice_tests::{hidden_dot_entries, visible_entries, within};

/// Every line of the committed output files of `dir`, sorted.
fn committed(dir: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    for f in visible_entries(dir).unwrap_or_default() {
        let text = std::fs::read_to_string(&f).unwrap();
        out.extend(text.lines().map(|l| l.parse::<u64>().unwrap()));
    }
    out.sort_unstable();
    out
}

fn env(workers: usize, checkpoints: &Path, interval_ms: u64) -> Env {
    let env = Env::new();
    env.set_workers(workers);
    let mut config = CheckpointConfig::new(checkpoints, Duration::from_millis(interval_ms));
    config.retain = 2;
    env.set_checkpoint_config(config);
    env.set_restart_strategy(5, Duration::from_millis(10));
    env
}

#[test]
fn a_failing_operator_restarts_from_the_checkpoint_with_exactly_once_output() {
    for workers in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
        let n = 60_000u64;
        // Fails once, at a record in the middle, after some checkpoints completed.
        let failures = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let out2 = out.clone();
        let (f, s) = (failures.clone(), seen.clone());
        let report = within(Duration::from_secs(60), "checkpointed job", move || {
            let env = env(workers, &chk, 20);
            env.set_source_rate(120_000.0);
            env.from_iter(0..n)
                .try_map("flaky", move |x: u64| {
                    let seen = s.fetch_add(1, Ordering::Relaxed);
                    if seen == 30_000 && f.fetch_add(1, Ordering::Relaxed) == 0 {
                        return Err(format!("injected failure at record {x}"));
                    }
                    Ok(x)
                })
                .write_text(&out2);
            env.execute("flaky").unwrap()
        });
        assert_eq!(failures.load(Ordering::Relaxed), 1);
        assert_eq!(report.restarts, 1, "{workers} workers");
        assert!(
            report.restored_from.is_some(),
            "restarted from a checkpoint"
        );
        assert_eq!(
            committed(&out),
            (0..n).collect::<Vec<_>>(),
            "{workers} workers"
        );
        assert!(hidden_dot_entries(&out).is_empty(), "no pending files left");
    }
}

#[test]
fn a_job_resumed_from_a_checkpoint_writes_only_what_was_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let n = 40_000u64;
    // The first run fails for good (no restarts) after a few checkpoints.
    let first = {
        let (out, chk) = (out.clone(), chk.clone());
        within(Duration::from_secs(60), "first run", move || {
            let env = env(2, &chk, 10);
            env.set_restart_strategy(0, Duration::ZERO);
            env.set_source_rate(100_000.0);
            env.from_iter(0..n)
                .try_map("dies", |x: u64| {
                    if x == 15_000 {
                        Err("the first run dies".to_owned())
                    } else {
                        Ok(x)
                    }
                })
                .write_text(&out);
            env.execute("resume").unwrap_err().to_string()
        })
    };
    assert!(first.contains("the first run dies"), "{first}");
    let before = committed(&out);
    assert!(!before.is_empty(), "some checkpoints committed output");
    assert!(before.len() < n as usize);
    let resumed = within(Duration::from_secs(60), "resumed run", move || {
        let env = env(3, &chk, 10);
        env.restore_from(RestoreFrom::Latest);
        // The same job (stage names match), its operator fixed.
        env.from_iter(0..n)
            .try_map("dies", Ok::<u64, String>)
            .write_text(&out);
        let report = env.execute("resume").unwrap();
        (report, committed(&out))
    });
    let (report, after) = resumed;
    assert!(report.restored_from.is_some());
    assert_eq!(
        after,
        (0..n).collect::<Vec<_>>(),
        "rescaled 2 → 3, exactly once"
    );
}

#[test]
fn a_stop_request_ends_the_job_with_a_savepoint_that_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (out, chk, sp) = (
        dir.path().join("out"),
        dir.path().join("chk"),
        dir.path().join("savepoints"),
    );
    let n = 50_000u64;
    let stop = Arc::new(AtomicBool::new(false));
    let report = {
        let (out, chk, sp, stop) = (out.clone(), chk.clone(), sp.clone(), stop.clone());
        let stopper = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            stopper.store(true, Ordering::Relaxed);
        });
        within(Duration::from_secs(60), "stopped run", move || {
            let env = env(2, &chk, 1_000);
            env.set_source_rate(50_000.0);
            env.stop_with_savepoint_on(stop, &sp);
            env.from_iter(0..n).write_text(&out);
            env.execute("stop").unwrap()
        })
    };
    let savepoint = report.savepoint.expect("stopped with a savepoint");
    assert!(savepoint.starts_with(&sp), "{}", savepoint.display());
    let before = committed(&out);
    assert!(
        !before.is_empty() && before.len() < n as usize,
        "{}",
        before.len()
    );
    let after = within(
        Duration::from_secs(60),
        "resumed from the savepoint",
        move || {
            let env = Env::new();
            env.set_workers(1);
            env.restore_from(RestoreFrom::Path(savepoint));
            env.from_iter(0..n).write_text(&out);
            env.execute("stop").unwrap();
            committed(&out)
        },
    );
    assert_eq!(
        after,
        (0..n).collect::<Vec<_>>(),
        "savepoint at 2 workers, resumed at 1"
    );
}

#[test]
fn restoring_a_checkpoint_of_another_job_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let env = env(1, &chk, 5);
    env.set_source_rate(20_000.0);
    env.from_iter(0..5_000u64).write_text(&out);
    env.execute("one").unwrap();
    let env = Env::new();
    env.restore_from(RestoreFrom::Path(chk.clone()));
    env.from_iter(0..5_000u64)
        .map(|x| x + 1)
        .write_text(dir.path().join("out2"));
    let err = env.execute("two").unwrap_err().to_string();
    assert!(err.contains("was taken by another job"), "{err}");
    let env = Env::new();
    env.restore_from(RestoreFrom::Path(dir.path().join("nothing")));
    env.from_iter(0..5u64).write_text(dir.path().join("out3"));
    let err = env.execute("three").unwrap_err().to_string();
    assert!(err.contains("no complete checkpoint or savepoint"), "{err}");
}
