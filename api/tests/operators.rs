//! The DataStream API end to end, on real workers: every source, exchange, keyed aggregation
//! and sink kind, each compared with what a plain loop computes.

use std::io::Write;
use std::net::TcpListener;

use sluice::prelude::*;
use sluice::testing::run_local;
use sluice::{Batch, PrintSink, ReadPosition, ReadStatus, SinkContext, SourceContext};

#[test]
fn from_iter_splits_across_workers_without_loss() {
    for workers in [1, 2, 3] {
        let out = run_local(workers, |env| env.from_iter(0..10_000u32).collect());
        assert_eq!(out, (0..10_000).collect::<Vec<_>>(), "workers={workers}");
    }
}

#[test]
fn map_filter_flat_map_chain() {
    let out = run_local(2, |env| {
        env.from_iter(1..=100u64)
            .map(|x| x * 3)
            .filter(|x| x % 2 == 0)
            .flat_map(|x| vec![x, x + 1])
            .collect()
    });
    let mut expected: Vec<u64> = (1..=100u64)
        .map(|x| x * 3)
        .filter(|x| x % 2 == 0)
        .flat_map(|x| [x, x + 1])
        .collect();
    expected.sort();
    assert_eq!(out, expected);
}

#[test]
fn running_sum_emits_every_prefix() {
    // Per key, the running sums are the prefix sums of that key's values in input order
    // (one worker reads the collection in order, so the order per key is fixed).
    let input: Vec<(u32, u64)> = (0..2_000u64).map(|i| ((i % 7) as u32, i)).collect();
    let env = Env::new();
    env.set_workers(1);
    let out = env.from_iter(input.clone()).into_keyed().sum().collect();
    env.execute("running").unwrap();
    let mut got = out.take();
    got.sort();
    let mut expected = Vec::new();
    let mut sums = [0u64; 7];
    for (k, v) in input {
        sums[k as usize] += v;
        expected.push((k, sums[k as usize]));
    }
    expected.sort();
    assert_eq!(got, expected);
}

#[test]
fn final_reduce_by_key_selector_on_four_workers() {
    let words = ["a", "b", "c", "d", "e"];
    let input: Vec<(String, u64)> = (0..50_000u64)
        .map(|i| (words[(i % 5) as usize].to_owned(), i))
        .collect();
    let out = run_local(4, |env| {
        env.from_iter(input.clone())
            .key_by(|(w, _): &(String, u64)| w.clone())
            .emit_final()
            .sum(|(_, n): &mut (String, u64)| n)
            .collect()
    });
    let expected: Vec<(String, u64)> = words
        .iter()
        .enumerate()
        .map(|(k, w)| {
            (
                w.to_string(),
                (0..50_000u64).filter(|i| i % 5 == k as u64).sum(),
            )
        })
        .collect();
    assert_eq!(out, expected);
}

#[derive(Clone)]
struct Average;

impl AggregateFunction<(u8, f64)> for Average {
    type Acc = (f64, u64);
    type Out = u64;
    fn create_accumulator(&self) -> (f64, u64) {
        (0.0, 0)
    }
    fn add(&self, acc: &mut (f64, u64), value: (u8, f64)) {
        acc.0 += value.1;
        acc.1 += 1;
    }
    fn merge(&self, acc: &mut (f64, u64), other: (f64, u64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn get_result(&self, acc: &(f64, u64)) -> u64 {
        (acc.0 / acc.1 as f64).round() as u64
    }
}

#[test]
fn aggregate_running_and_final() {
    let input: Vec<(u8, f64)> = (0..1_000u32)
        .map(|i| ((i % 4) as u8, f64::from(i)))
        .collect();
    let finals = run_local(2, |env| {
        env.from_iter(input.clone())
            .key_by(|r: &(u8, f64)| r.0)
            .emit_final()
            .aggregate(Average)
            .collect()
    });
    // Keys 0..4 hold i ≡ k (mod 4): averages 498, 499, 500, 501.
    assert_eq!(finals, vec![498, 499, 500, 501]);
    let running = run_local(2, |env| {
        env.from_iter(input.clone())
            .key_by(|r: &(u8, f64)| r.0)
            .aggregate(Average)
            .collect()
    });
    assert_eq!(running.len(), input.len());
}

#[test]
fn union_rebalance_and_broadcast() {
    let out = run_local(2, |env| {
        let a = env.from_iter(0..100u32);
        let b = env.from_iter(100..150u32).map(|x| x);
        a.union(b).rebalance().map(|x| x + 1).collect()
    });
    assert_eq!(out, (1..151).collect::<Vec<_>>());
    let out = run_local(3, |env| env.from_iter(0..10u32).broadcast().collect());
    let expected: Vec<u32> = (0..10).flat_map(|x| [x, x, x]).collect::<Vec<_>>();
    let mut expected = expected;
    expected.sort();
    assert_eq!(out, expected);
}

#[test]
fn socket_text_stream_reads_lines_until_the_peer_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        for i in 0..5_000 {
            write!(conn, "line {i}\r\n").unwrap();
        }
        conn.write_all(b"last without newline").unwrap();
    });
    let out = run_local(2, |env| env.socket_text_stream(addr).collect());
    server.join().unwrap();
    let mut expected: Vec<String> = (0..5_000).map(|i| format!("line {i}")).collect();
    expected.push("last without newline".into());
    expected.sort();
    assert_eq!(out, expected);
}

#[test]
fn socket_text_stream_refused_connection_is_an_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = Env::new();
    env.set_workers(1);
    let _ = env
        .socket_text_stream(format!("127.0.0.1:{port}"))
        .collect();
    let err = env.execute("refused").unwrap_err().to_string();
    assert!(err.contains("connect to 127.0.0.1"), "{err}");
}

/// A custom source: counts from a split's start, replayable from a position.
struct Counter {
    n: u64,
}

struct CounterReader {
    next: u64,
    end: u64,
}

impl Source for Counter {
    type Item = u64;
    type Split = (u64, u64);
    type Reader = CounterReader;
    fn name(&self) -> String {
        "counter".into()
    }
    fn is_bounded(&self) -> bool {
        true
    }
    fn splits(&self, workers: usize) -> sluice::Result<Vec<(u64, u64)>> {
        let w = workers as u64;
        Ok((0..w)
            .map(|i| (i * self.n / w, (i + 1) * self.n / w))
            .collect())
    }
    async fn open(
        &self,
        split: (u64, u64),
        start: Option<ReadPosition>,
        _ctx: &SourceContext,
    ) -> sluice::Result<CounterReader> {
        Ok(CounterReader {
            next: start.map_or(split.0, |p| p.0),
            end: split.1,
        })
    }
}

impl SourceReader for CounterReader {
    type Item = u64;
    async fn read_batch(&mut self, out: &mut Batch<u64>, max: usize) -> sluice::Result<ReadStatus> {
        let end = self.end.min(self.next + max as u64);
        out.extend_untimed(self.next..end);
        self.next = end;
        Ok(if self.next == self.end {
            ReadStatus::End
        } else {
            ReadStatus::More
        })
    }
    fn position(&self) -> ReadPosition {
        ReadPosition(self.next)
    }
}

/// A custom sink that sums what it receives into a shared total.
struct SumSink(std::sync::Arc<std::sync::atomic::AtomicU64>);

struct SumWriter(std::sync::Arc<std::sync::atomic::AtomicU64>, u64);

impl Sink<u64> for SumSink {
    type Writer = SumWriter;
    fn name(&self) -> String {
        "sum".into()
    }
    async fn open(&self, _ctx: &SinkContext) -> sluice::Result<SumWriter> {
        Ok(SumWriter(self.0.clone(), 0))
    }
}

impl SinkWriter<u64> for SumWriter {
    async fn write_batch(&mut self, batch: &mut Vec<u64>) -> sluice::Result<()> {
        self.1 += batch.drain(..).sum::<u64>();
        Ok(())
    }
    async fn finish(&mut self) -> sluice::Result<()> {
        self.0
            .fetch_add(self.1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

#[test]
fn custom_source_and_sink() {
    let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let env = Env::new();
    env.set_workers(2);
    env.from_source(Counter { n: 100_000 })
        .rebalance()
        .sink(SumSink(total.clone()));
    let report = env.execute("custom").unwrap();
    assert_eq!(
        total.load(std::sync::atomic::Ordering::Relaxed),
        (0..100_000u64).sum::<u64>()
    );
    assert_eq!(report.progress.records_in, 100_000);
}

#[test]
fn a_stream_left_unconsumed_after_an_exchange_is_an_error() {
    let env = Env::new();
    env.set_workers(1);
    let _dangling = env.from_iter(0..10u32).rebalance();
    let err = env.execute("dangling").unwrap_err().to_string();
    assert!(err.contains("never consumed"), "{err}");
}

#[test]
fn write_text_commits_part_files_and_leaves_no_pending_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let env = Env::new();
    env.set_workers(2);
    env.from_iter(0..5_000u32).rebalance().write_text(&out);
    env.execute("text").unwrap();
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(name.starts_with("part-"), "unexpected file {name}");
        lines.extend(
            std::fs::read_to_string(entry.path())
                .unwrap()
                .lines()
                .map(|l| l.parse::<u32>().unwrap()),
        );
    }
    lines.sort();
    assert_eq!(lines, (0..5_000).collect::<Vec<_>>());
}

#[test]
fn write_text_into_a_file_path_fails_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let env = Env::new();
    env.set_workers(1);
    env.from_iter(0..5u32).write_text(&file);
    let err = env.execute("text").unwrap_err().to_string();
    assert!(err.contains("is a file"), "{err}");
}

#[test]
fn many_unpinned_workers_connect_and_finish_repeatedly() {
    // glommio's channel connect is not woken by the peer's connect; without re-polling, a
    // worker that slept meanwhile hung the job (a few runs in a hundred at 16 workers on 2
    // cores). Each run here has a watchdog, so a hang fails instead of stalling the suite.
    for run in 0..50 {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let out = run_local(16, |env| {
                env.from_iter(vec![('a', 1u32), ('b', 1), ('a', 1)])
                    .into_keyed()
                    .emit_final()
                    .sum()
                    .collect()
            });
            let _ = done_tx.send(out);
        });
        let out = done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("run {run} of 16 workers did not finish within 60 s"));
        assert_eq!(out, vec![('a', 2), ('b', 1)]);
    }
}

/// Runs `job` on a thread and fails the test if it takes longer than `secs`.
fn within<T: Send + 'static>(secs: u64, job: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(job());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("the job did not end within {secs} s"))
}

#[test]
fn a_failed_job_leaves_no_output_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out2 = out.clone();
    let err = within(60, move || {
        let env = Env::new();
        env.set_workers(2);
        // Worker-local output reaches its sink and finishes on one worker while the other
        // fails: nothing may be committed.
        env.from_iter(0..20_000u32)
            .rebalance()
            .map(|x| {
                assert!(x != 19_999, "boom at {x}");
                x
            })
            .write_text(&out2);
        env.execute("fails").unwrap_err().to_string()
    });
    assert!(err.contains("boom at 19999"), "{err}");
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "files left after a failed job: {left:?}");
}

#[test]
fn panic_messages_are_one_line() {
    let err = within(60, || {
        let env = Env::new();
        env.set_workers(2);
        let _ = env
            .from_iter(0..100u32)
            .map(|x| {
                assert_eq!(x, 1000, "never equal");
                x
            })
            .collect();
        env.execute("multi-line panic").unwrap_err().to_string()
    });
    assert!(!err.contains('\n'), "{err:?}");
    assert!(
        err.contains("panicked") && err.contains("never equal"),
        "{err}"
    );
}

#[test]
fn a_failure_downstream_of_a_quiet_socket_ends_the_job() {
    // The peer sends two lines and then stays connected without sending: the source waits in
    // a read that never completes by itself, and must still notice the job's failure.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"one\ntwo\n").unwrap();
        let _ = hold_rx.recv_timeout(std::time::Duration::from_secs(120));
    });
    let err = within(60, move || {
        let env = Env::new();
        env.set_workers(2);
        env.socket_text_stream(addr)
            .rebalance()
            .map(|line: String| -> String { panic!("cannot handle {line}") })
            .sink(PrintSink);
        env.execute("quiet socket").unwrap_err().to_string()
    });
    drop(hold_tx);
    server.join().unwrap();
    assert!(err.contains("cannot handle"), "{err}");
}

#[test]
fn a_line_longer_than_the_limit_is_an_error_naming_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.txt");
    let mut text = b"short line\n".to_vec();
    text.resize(text.len() + sluice::LINE_BYTES_MAX + 2 * 1024 * 1024, b'x');
    std::fs::write(&path, &text).unwrap();
    let env = Env::new();
    env.set_workers(1);
    let _ = env.read_text_file(&path).collect();
    let err = env.execute("long line").unwrap_err().to_string();
    assert!(err.contains("a line longer than 64 MiB"), "{err}");
    assert!(err.contains("at byte offset 11"), "{err}");
}
