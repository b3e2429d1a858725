//! `sluice bench`: job-level benchmarks with their baselines run in the same invocation, on the
//! same input. Human tables go to stderr, JSON to stdout.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rustc_hash::FxHashMap;
use sluice::Env;
use sluice_bench::{baseline, corpus, stats::median};

use crate::demo::scratch_dir;
use crate::jobs;
use sluice::cli::progress::human;

/// A benchmark.
#[derive(Subcommand, Debug)]
pub enum Bench {
    /// Word count: the hand-written single-threaded loop, the engine on 1 worker, and the
    /// engine on N workers, interleaved run by run on the same file; medians and ratios.
    Wordcount(WordcountBench),
    /// Windowed count and sum per key over generated events: the hand-written tumbling-window
    /// loop, the engine on 1 worker and on N workers, interleaved; medians and ratios.
    Window(crate::bench_window::WindowBench),
    /// Record-batch throughput through the network transport against raw TCP on loopback.
    Net(crate::bench_net::NetBench),
    /// The state store against a hash map and RocksDB: point updates and reads, checkpoints,
    /// recovery.
    State(crate::bench_state::StateBench),
    /// The Nexmark queries on generated events: throughput, or latency at a fixed rate; one
    /// query or the suite (`--all`), in a table like the suite's runner.
    Nexmark(crate::bench_nexmark::NexmarkBench),
    /// What checkpoints cost: the window job's throughput with 1M keys without checkpoints and
    /// with them every 1 s and 100 ms, interleaved; synchronous pause, duration and alignment
    /// percentiles; alignment under skewed inputs; recovery time against state size.
    Checkpoint(crate::bench_checkpoint::CheckpointBench),
}

/// Options of `sluice bench wordcount`.
#[derive(Args, Debug)]
pub struct WordcountBench {
    /// Count this text file.
    #[arg(long, value_name = "PATH", conflicts_with = "generate")]
    input: Option<PathBuf>,
    /// Generate a corpus of this many MB (default 200).
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    generate: Option<u64>,
    /// Workers of the parallel engine run (default: the cores available).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Runs of each variant.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Print a JSON record to stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Wordcount(args) => wordcount(&args),
        Bench::Window(args) => crate::bench_window::window(&args),
        Bench::Net(args) => crate::bench_net::net(&args),
        Bench::State(args) => crate::bench_state::run(&args),
        Bench::Nexmark(args) => crate::bench_nexmark::nexmark(&args),
        Bench::Checkpoint(args) => crate::bench_checkpoint::run(&args),
    }
}

/// Writes a generated corpus of `mb` MB to `path`.
pub fn generate(path: &Path, mb: u64) -> Result<u64> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let n = corpus::write_corpus(&mut out, mb * 1_000_000, 0x5EED)?;
    out.flush()?;
    Ok(n)
}

/// Reads a word count output directory (`word<TAB>count` lines in its visible files).
pub fn read_counts(dir: &Path) -> Result<FxHashMap<String, u64>> {
    let mut counts = FxHashMap::default();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())?;
        for line in text.lines() {
            let (word, count) = line.rsplit_once('\t').context("malformed output line")?;
            *counts.entry(word.to_owned()).or_default() += count.parse::<u64>()?;
        }
    }
    Ok(counts)
}

struct Variant {
    name: String,
    workers: usize,
    words_per_s: Vec<f64>,
}

fn run_engine(
    input: &Path,
    tmp: &Path,
    run: u32,
    workers: usize,
    expect: &baseline::Counts,
) -> Result<f64> {
    let output = tmp.join(format!("out-{workers}-{run}"));
    let env = Env::new();
    env.set_workers(workers);
    jobs::wordcount(&env, input, &output);
    let start = Instant::now();
    env.execute("bench wordcount")
        .context("job 'wordcount' failed")?;
    let secs = start.elapsed().as_secs_f64();
    let counts = read_counts(&output)?;
    let total: u64 = counts.values().sum();
    if let Some((word, n)) = counts.iter().find(|(w, n)| expect.words.get(*w) != Some(n)) {
        bail!(
            "engine on {workers} workers counted {word:?} {n} times, the baseline {:?}",
            expect.words.get(word)
        );
    }
    if total != expect.total || counts.len() != expect.words.len() {
        bail!(
            "engine on {workers} workers counted {total} words ({} distinct), the baseline {} ({})",
            counts.len(),
            expect.total,
            expect.words.len()
        );
    }
    let _ = std::fs::remove_dir_all(&output);
    Ok(secs)
}

fn wordcount(args: &WordcountBench) -> Result<()> {
    let tmp = scratch_dir("bench")?;
    let input = match &args.input {
        Some(path) => path.clone(),
        None => {
            let path = tmp.path().join("corpus.txt");
            let mb = args.generate.unwrap_or(200);
            eprintln!("generating a {mb} MB corpus ...");
            generate(&path, mb)?;
            path
        }
    };
    let bytes = std::fs::metadata(&input)
        .with_context(|| format!("open input {}", input.display()))?
        .len();
    let n = args
        .workers
        .map_or_else(|| sluice::available_cpus().len().max(1), |w| w as usize);
    // A warm-up run: fills the page cache and gives the reference counts.
    let expect = baseline::word_count(&input)?;
    let mut variants = vec![Variant {
        name: "baseline (1 thread)".into(),
        workers: 1,
        words_per_s: vec![],
    }];
    let mut worker_counts = vec![1];
    if n != 1 {
        worker_counts.push(n);
    }
    for &w in &worker_counts {
        variants.push(Variant {
            name: format!("sluice {w} worker(s)"),
            workers: w,
            words_per_s: vec![],
        });
    }
    for run in 0..args.runs {
        let start = Instant::now();
        let counts = baseline::word_count(&input)?;
        let secs = start.elapsed().as_secs_f64();
        if counts.total != expect.total {
            bail!("baseline runs disagree");
        }
        variants[0].words_per_s.push(expect.total as f64 / secs);
        for v in variants.iter_mut().skip(1) {
            let secs = run_engine(&input, tmp.path(), run, v.workers, &expect)?;
            v.words_per_s.push(expect.total as f64 / secs);
        }
        eprintln!("run {}/{} done", run + 1, args.runs);
    }
    let medians: Vec<f64> = variants.iter().map(|v| median(&v.words_per_s)).collect();
    let one = medians.get(1).copied().unwrap_or(0.0);
    let many = medians.last().copied().unwrap_or(0.0);
    let ratio_one_vs_baseline = one / medians[0];
    let ratio_many_vs_one = if worker_counts.len() > 1 {
        many / one
    } else {
        1.0
    };
    eprintln!(
        "\nword count of {} ({:.0} MB, {} words, {} distinct), {} runs each, medians:",
        input.display(),
        bytes as f64 / 1e6,
        expect.total,
        expect.words.len(),
        args.runs
    );
    eprintln!("{:<22} {:>14} {:>10}", "variant", "words/s", "MB/s");
    for (v, m) in variants.iter().zip(&medians) {
        let mbps = bytes as f64 / 1e6 / (expect.total as f64 / m);
        eprintln!("{:<22} {:>14} {:>10.0}", v.name, human(*m), mbps);
    }
    eprintln!("sluice 1 worker / baseline: {ratio_one_vs_baseline:.2}");
    if worker_counts.len() > 1 {
        eprintln!("sluice {n} workers / 1 worker: {ratio_many_vs_one:.2}");
    }
    if args.json {
        let json = serde_json::json!({
            "schema": "sluice-bench/1",
            "bench": "wordcount",
            "input_bytes": bytes,
            "words": expect.total,
            "distinct_words": expect.words.len(),
            "runs": args.runs,
            "variants": variants.iter().zip(&medians).map(|(v, m)| serde_json::json!({
                "name": v.name,
                "workers": v.workers,
                "words_per_s_median": m,
                "words_per_s": v.words_per_s,
            })).collect::<Vec<_>>(),
            "ratio_1_worker_vs_baseline": ratio_one_vs_baseline,
            "ratio_n_workers_vs_1_worker": ratio_many_vs_one,
            "n_workers": n,
            "machine": { "cpus": sluice::available_cpus().len() },
        });
        println!("{json}");
    }
    Ok(())
}
