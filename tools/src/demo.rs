//! `sluice demo`: the README's first command. Generates a corpus, counts its words on every
//! core, and prints the top words and the throughput.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use sluice::Env;

use crate::{bench, jobs};
use sluice::cli::progress;

/// Options of `sluice demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Size of the generated corpus in MB.
    #[arg(
        long,
        value_name = "MB",
        default_value_t = 64,
        value_parser = clap::value_parser!(u64).range(1..=100_000)
    )]
    pub mb: u64,
    #[command(flatten)]
    pub common: sluice::cli::CommonRunArgs,
}

/// A scratch directory under the system's temp dir, removed on drop.
pub fn scratch_dir(tag: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("sluice-{tag}-"))
        .tempdir()
        .context("create a scratch directory")
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let tmp = scratch_dir("demo")?;
    let input = tmp.path().join("corpus.txt");
    eprintln!(
        "generating a {} MB corpus in {} ...",
        args.mb,
        tmp.path().display()
    );
    bench::generate(&input, args.mb)?;
    let output = tmp.path().join("counts");
    let workers = args.common.workers();
    eprintln!("counting its words on {workers} workers ...");
    let env = Env::new();
    env.set_workers(workers);
    jobs::wordcount(&env, &input, &output);
    let shown = progress::attach(&env, args.common.quiet);
    let start = Instant::now();
    let report = env.execute("demo wordcount");
    progress::finish(shown);
    let report = report.context("job 'wordcount' failed")?;
    let secs = start.elapsed().as_secs_f64();
    let counts = bench::read_counts(&output)?;
    let total: u64 = counts.values().sum();
    let mut top: Vec<_> = counts.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    println!(
        "top words of {} ({} distinct):",
        progress::human(total as f64),
        counts.len()
    );
    for (word, count) in top.iter().take(10) {
        println!("  {word:<14} {count:>12}");
    }
    println!(
        "{} lines, {} words, {} MB in {:.2}s on {} workers: {} words/s, {:.0} MB/s",
        report.progress.records_in,
        total,
        report.progress.bytes_in / 1_000_000,
        secs,
        report.workers,
        progress::human(total as f64 / secs),
        report.progress.bytes_in as f64 / 1e6 / secs
    );
    Ok(())
}
