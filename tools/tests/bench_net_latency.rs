//! `sluice bench net --latency` through the binary at toy size, pinned and unpinned: the bench
//! fails unless every record of every run reached a latency sink, and its JSON gives the
//! machine's floor, the three levels with ordered percentiles, and where the nodes ran.

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn latency_bench(extra: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args([
            "bench",
            "net",
            "--latency",
            "--latency-events",
            "50000",
            "--latency-secs",
            "0.1",
            "--keys",
            "100",
            "--runs",
            "1",
            "--json",
        ])
        .args(extra)
        .output()
        .expect("run the sluice binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the machine: a thread spinning"),
        "{stderr}"
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn check(json: &Value) {
    assert_eq!(json["bench"], "net-latency");
    assert!(json["max_rate_rps"].as_f64().unwrap() > 0.0, "{json}");
    let pauses = json["machine_pauses"]
        .as_array()
        .expect("the machine's floor");
    assert!(!pauses.is_empty());
    for p in pauses {
        let share = |k: &str| p[k].as_f64().unwrap_or(-1.0);
        let (s50, s200, s1000) = (
            share("time_in_pauses_over_50us"),
            share("time_in_pauses_over_200us"),
            share("time_in_pauses_over_1ms"),
        );
        assert!((0.0..=1.0).contains(&s50), "{p}");
        assert!(s50 >= s200 && s200 >= s1000 && s1000 >= 0.0, "{p}");
    }
    let levels = json["levels"].as_array().expect("levels");
    let fractions: Vec<f64> = levels
        .iter()
        .map(|l| l["fraction"].as_f64().unwrap())
        .collect();
    assert_eq!(fractions, [0.1, 0.5, 0.9]);
    for l in levels {
        for which in ["remote_latency_us", "local_latency_us"] {
            let p = &l[which];
            let at = |k: &str| p[k].as_f64().unwrap();
            assert!(at("p50") >= 1.0, "{l}");
            assert!(
                at("p50") <= at("p99") && at("p99") <= at("p999") && at("p999") <= at("max"),
                "{l}"
            );
        }
        assert!(l["worker_runqueue_wait_ms_per_s"].as_f64().unwrap() >= 0.0);
        let runs = l["sched_runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1);
        // The two workers ran: some CPU time was read on their threads.
        assert!(
            runs[0]["worker_cpu_ms_per_s"].as_f64().unwrap() > 0.0,
            "{l}"
        );
    }
}

#[test]
fn latency_bench_at_toy_size_pinned_and_unpinned() {
    let pinned = latency_bench(&[]);
    check(&pinned);
    let cpus = pinned["node_cpus"].as_array().unwrap();
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(cpus.len(), if available >= 2 { 2 } else { 0 }, "{pinned}");
    let unpinned = latency_bench(&["--unpinned"]);
    check(&unpinned);
    assert_eq!(unpinned["node_cpus"].as_array().unwrap().len(), 0);
    assert_eq!(unpinned["machine_pauses"].as_array().unwrap().len(), 1);
}
