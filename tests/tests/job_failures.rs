//! A failing job fails cleanly: an operator's error or panic makes [`Env::execute`] return an
//! `Err` that names the operator and the message, promptly (no hang, even when only one of
//! several busy workers fails), and the runtime stays usable for the next job in the process.
//!
//! Every job runs under [`within`], which fails the test if the job has not returned in 30 s
//! (a clean failure takes milliseconds).
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use sluice::{Env, Error, ErrorDomain};
use sluice_tests::{WORKER_COUNTS, reference_word_count, within, wordcount_collect};

const JOB_LIMIT: Duration = Duration::from_secs(30);

/// Items of the "busy" jobs: enough that every worker is mid-flight when one fails.
const ITEMS: u64 = 200_000;

/// The item the busy jobs fail on. `from_iter` gives each worker a contiguous slice, so the
/// last worker reads it (worker 1 of 2, worker 3 of 4): not worker 0, which starts first.
const BAD_ITEM: u64 = 150_001;

fn env(workers: usize) -> Env {
    let env = Env::new();
    env.set_workers(workers);
    env
}

/// Runs `build`'s job on a fresh environment of `workers` workers, under the time limit, and
/// returns the error it must fail with, with the time it took.
fn expect_failure(workers: usize, build: impl FnOnce(&Env) + Send + 'static) -> (Error, Duration) {
    let what = format!("failing job at {workers} workers");
    within(JOB_LIMIT, &what, move || {
        let env = env(workers);
        build(&env);
        let started = Instant::now();
        match env.execute("failing") {
            Ok(report) => panic!("the job succeeded at {workers} workers: {report:?}"),
            Err(e) => (e, started.elapsed()),
        }
    })
}

fn assert_mentions(err: &Error, needles: &[&str]) {
    let text = err.to_string();
    for needle in needles {
        assert!(
            text.contains(needle),
            "{text:?} does not mention {needle:?}"
        );
    }
    assert_eq!(text.lines().count(), 1, "not one line: {text:?}");
}

#[test]
fn try_map_error_fails_the_job_naming_operator_and_message() {
    for workers in WORKER_COUNTS {
        let (err, _) = expect_failure(workers, |env| {
            let _ = env
                .from_iter(0..1000u64)
                .try_map("parse_record", |x| {
                    if x == 617 {
                        Err(format!("record {x} is not a number"))
                    } else {
                        Ok(x)
                    }
                })
                .collect();
        });
        assert_mentions(&err, &["parse_record", "record 617 is not a number"]);
        assert!(matches!(err, Error::Operator { .. }), "{err:?}");
        assert_eq!(err.domain(), ErrorDomain::User);
    }
}

#[test]
fn panic_in_map_fails_the_job_with_panicked_and_the_message() {
    for workers in WORKER_COUNTS {
        let (err, _) = expect_failure(workers, |env| {
            let _ = env
                .from_iter(0..1000u64)
                .map(|x| {
                    if x == 411 {
                        panic!("boom at record {x}");
                    }
                    x
                })
                .collect();
        });
        assert_mentions(&err, &["panicked", "boom at record 411"]);
        assert!(matches!(err, Error::Panic { .. }), "{err:?}");
    }
}

/// Pairs `(x % 1000, 1)` summed per key after a hash exchange: a job whose workers all send to
/// each other, so a failure on one leaves the others blocked on or feeding channels.
#[test]
fn panic_on_one_of_2_and_4_busy_workers_before_the_exchange_fails_promptly() {
    for workers in [2, 4] {
        let (err, took) = expect_failure(workers, |env| {
            let _ = env
                .from_iter(0..ITEMS)
                .map(|x| {
                    if x == BAD_ITEM {
                        panic!("bad item {x}");
                    }
                    (x % 1000, 1u64)
                })
                .into_keyed()
                .sum()
                .collect();
        });
        assert_mentions(&err, &["panicked", &format!("bad item {BAD_ITEM}")]);
        eprintln!("{workers} workers: failed in {took:?}: {err}");
    }
}

#[test]
fn error_on_one_of_2_and_4_busy_workers_after_the_exchange_fails_promptly() {
    for workers in [2, 4] {
        let (err, took) = expect_failure(workers, |env| {
            let _ = env
                .from_iter(0..ITEMS)
                .map(|x| (x % 1000, 1u64))
                .into_keyed()
                .sum()
                .try_map("check_sum", |(key, sum)| {
                    if key == 7 && sum == 100 {
                        Err(format!("key {key} reached {sum}"))
                    } else {
                        Ok(sum)
                    }
                })
                .collect();
        });
        assert_mentions(&err, &["check_sum", "key 7 reached 100"]);
        assert!(matches!(err, Error::Operator { .. }), "{err:?}");
        eprintln!("{workers} workers: failed in {took:?}: {err}");
    }
}

/// One worker's consumer stalls (a blocking call in user code) and then fails: meanwhile the
/// other workers fill their channels to it and wait for room, and its failure drops the
/// receiving ends of those full channels. The waiting senders must see that and stop.
#[test]
fn failure_after_a_stall_on_one_of_2_and_4_workers_after_the_exchange_fails_promptly() {
    for workers in [2, 4] {
        let (err, took) = expect_failure(workers, |env| {
            let _ = env
                .from_iter(0..ITEMS)
                .map(|x| (x % 1000, 1u64))
                .into_keyed()
                .sum()
                .map(|(key, sum)| {
                    if key == 7 && sum == 1 {
                        std::thread::sleep(Duration::from_millis(300));
                        panic!("key {key} stalled, then failed");
                    }
                    sum
                })
                .collect();
        });
        assert_mentions(&err, &["panicked", "key 7 stalled, then failed"]);
        eprintln!("{workers} workers: failed in {took:?}: {err}");
    }
}

#[test]
fn panic_in_a_final_aggregation_result_on_one_worker_fails_promptly() {
    for workers in [2, 4] {
        let (err, _) = expect_failure(workers, |env| {
            let _ = env
                .from_iter(0..ITEMS)
                .map(|x| (x % 5000, 1u64))
                .into_keyed()
                .emit_final()
                .sum()
                .map(|(key, n)| {
                    if key == 4321 {
                        panic!("final value of key {key} is {n}");
                    }
                    n
                })
                .collect();
        });
        let count = ITEMS / 5000;
        assert_mentions(
            &err,
            &["panicked", &format!("final value of key 4321 is {count}")],
        );
    }
}

/// Runs word count in this process on a small file and checks the counts.
fn wordcount_still_works(dir: &Path, workers: usize) {
    let text = "after a failure the runtime still counts words\ncounts words\n";
    let input = dir.join(format!("after-{workers}.txt"));
    std::fs::write(&input, text).unwrap_or_else(|e| panic!("write input: {e}"));
    let what = format!("word count after failures at {workers} workers");
    let got = within(JOB_LIMIT, &what, move || wordcount_collect(&input, workers));
    assert_eq!(got, Ok(reference_word_count(text)), "{workers} workers");
}

#[test]
fn jobs_after_failed_jobs_in_the_same_process_and_env_run_fine() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    for workers in WORKER_COUNTS {
        // A failure, then a job on the same environment, then one on a new environment.
        let what = format!("failing job, then a good one, at {workers} workers");
        let sums = within(JOB_LIMIT, &what, move || {
            let env = env(workers);
            let _ = env
                .from_iter(0..ITEMS)
                .map(|x| {
                    // Worker 0 of 1 and 2, worker 1 of 4.
                    if x == 50_001 {
                        panic!("first job fails");
                    }
                    (x % 10, 1u64)
                })
                .into_keyed()
                .emit_final()
                .sum()
                .collect();
            match env.execute("fails") {
                Err(e) => assert_mentions(&e, &["first job fails"]),
                Ok(report) => panic!("the first job succeeded: {report:?}"),
            }
            let out = env
                .from_iter(0..ITEMS)
                .map(|x| (x % 10, 1u64))
                .into_keyed()
                .emit_final()
                .sum()
                .collect();
            env.execute("after")
                .unwrap_or_else(|e| panic!("job after a failure on the same env: {e}"));
            let mut sums = out.take();
            sums.sort();
            sums
        });
        let expected: Vec<(u64, u64)> = (0..10).map(|k| (k, ITEMS / 10)).collect();
        assert_eq!(sums, expected, "{workers} workers");
        wordcount_still_works(dir.path(), workers);
    }
}

#[test]
fn invalid_utf8_input_fails_the_job_with_path_and_byte_offset() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let input = dir.path().join("bad.txt");
    let mut bytes = "good line\n".repeat(500).into_bytes();
    let offset = bytes.len() - 37;
    bytes[offset] = 0xff;
    std::fs::write(&input, &bytes).unwrap_or_else(|e| panic!("write input: {e}"));
    for workers in WORKER_COUNTS {
        let i = input.clone();
        let what = format!("word count of invalid UTF-8 at {workers} workers");
        let got = within(JOB_LIMIT, &what, move || wordcount_collect(&i, workers));
        let err = got
            .err()
            .unwrap_or_else(|| panic!("{workers} workers: no error"));
        for needle in [
            input.display().to_string(),
            format!("byte offset {offset}"),
            "invalid UTF-8".to_owned(),
        ] {
            assert!(
                err.contains(&needle),
                "{workers} workers: {err:?} lacks {needle:?}"
            );
        }
    }
}
