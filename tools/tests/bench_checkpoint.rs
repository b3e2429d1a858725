//! `sluice bench checkpoint` through the binary at toy size (a few thousand keys, a throttled
//! source so that a run lasts long enough for checkpoints every 20 and 50 ms): the JSON has
//! every part, the checkpointed variants measured checkpoints (and their sync pause and
//! duration percentiles), the skewed alignment waited, and the recovery runs reached running.

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn number(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

#[test]
fn checkpoint_bench_at_toy_size_reports_checkpoints_alignment_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "bench",
            "checkpoint",
            "--keys",
            "3000",
            "--events",
            "150000",
            "--rate",
            "500000",
            "--intervals-ms",
            "50,20",
            "--runs",
            "1",
            "--workers",
            "2",
            "--align-ms",
            "400",
            "--slow-pause-ms",
            "40",
            "--align-interval-ms",
            "30",
            "--recovery-keys",
            "2000",
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run the sluice binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(json["schema"], "sluice-bench/1");
    assert_eq!(json["bench"], "checkpoint");
    assert_eq!(
        json["load_average_before"].as_array().map(Vec::len),
        Some(3)
    );

    let t = &json["throughput"];
    assert_eq!(t["keys"], 3000);
    assert_eq!(t["dirty_keys"], 30, "1% of the keys by default");
    let variants = t["variants"].as_array().expect("variants");
    let names: Vec<&str> = variants
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["none", "every 50 ms", "every 20 ms"]);
    for v in variants {
        assert!(number(&v["events_per_s_median"], "events/s") > 0.0, "{v}");
        assert!(
            number(&v["events_per_cpu_s_median"], "events/cpu-s") > 0.0,
            "{v}"
        );
        number(&v["overhead"], "overhead");
    }
    assert_eq!(
        variants[0]["duration_us"]["count"], 0,
        "no checkpoints: none measured"
    );
    for v in &variants[1..] {
        let measured = v["duration_us"]["count"].as_u64().unwrap_or(0);
        assert!(measured > 0, "{}: no checkpoint completed: {v}", v["name"]);
        let sync = &v["sync_pause_us"];
        assert!(sync["count"].as_u64().unwrap_or(0) >= measured, "{v}");
        for q in ["p50", "p99", "p99_9", "max"] {
            number(&sync[q], q);
            number(&v["duration_us"][q], q);
        }
        assert!(number(&v["duration_us"]["p99"], "p99") <= number(&v["duration_us"]["max"], "max"));
    }

    let a = &json["alignment"];
    let skewed = &a["skewed"];
    assert!(
        skewed["duration_us"]["count"].as_u64().unwrap_or(0) > 0,
        "{a}"
    );
    // The slow input's barrier comes up to 40 ms after the fast one's.
    assert!(
        number(&skewed["align_us"]["max"], "align max") >= 5_000.0,
        "{a}"
    );
    assert!(a["balanced"]["completed"].as_u64().unwrap_or(0) > 0, "{a}");

    let sizes = json["recovery"]["sizes"]
        .as_array()
        .expect("recovery sizes");
    assert_eq!(sizes.len(), 1);
    assert_eq!(sizes[0]["keys"], 2000);
    for k in [
        "fresh_ms_median",
        "checkpoint_ms_median",
        "savepoint_ms_median",
    ] {
        assert!(number(&sizes[0][k], k) > 0.0, "{}", sizes[0]);
    }
    assert!(number(&sizes[0]["checkpoint_dir_bytes"], "bytes") > 0.0);

    // The scratch directory is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
