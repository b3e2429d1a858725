//! `sluice bench state --only recovery` through the binary at toy size: each run writes the
//! stores, restores them in a child process (a fresh one, and one that restored them once
//! before) in the background, eagerly and lazily, and the child checks that every restored
//! table serves its first and last keys (and, loaded, holds every key), so a recovery that
//! loses or garbles state fails the bench instead of reporting a speed.

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[test]
fn recovery_bench_at_toy_size_restores_in_each_mode() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "bench",
            "state",
            "--only",
            "recovery",
            "--recovery-keys",
            "20000",
            "--recovery-stores",
            "1,2",
            "--runs",
            "1",
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run the sluice binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(json["bench"], "state");
    let rows = json["recovery"].as_array().expect("recovery rows");
    let shape: Vec<(u64, &str, &str)> = rows
        .iter()
        .map(|r| {
            let s = |f: &str| r[f].as_str().unwrap();
            (r["stores"].as_u64().unwrap(), s("process"), s("mode"))
        })
        .collect();
    let mut want = Vec::new();
    for stores in [1, 2] {
        for process in ["new", "same"] {
            for mode in ["background", "eager", "lazy"] {
                want.push((stores, process, mode));
            }
        }
    }
    assert_eq!(shape, want);
    for r in rows {
        assert_eq!(r["keys"], 20000, "{r}");
        // 20k frames of a 16-byte key and a 64-byte value, with their headers.
        let bytes = r["bytes"].as_u64().unwrap();
        assert!(bytes > 20000 * 80, "{r}");
        assert!(r["mb_per_s"].as_f64().unwrap() > 0.0, "{r}");
        // Until the table is resident in full: none for a lazy restore, the whole restore
        // for an eager one, after the job could run for a background one.
        let (ms, loaded) = (r["ms"].as_f64().unwrap(), &r["loaded_ms"]);
        match r["mode"].as_str().unwrap() {
            "lazy" => assert!(loaded.is_null(), "{r}"),
            "eager" => assert_eq!(loaded.as_f64(), Some(ms), "{r}"),
            _ => assert!(loaded.as_f64().unwrap() >= ms, "{r}"),
        }
    }
}
