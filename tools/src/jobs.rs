//! The built-in jobs of `sluice run`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sluice::{Env, JobReport};

use crate::cli::{CommonRunArgs, input_path};
use crate::progress;

/// A built-in job.
#[derive(Subcommand, Debug)]
pub enum Job {
    /// Counts words: a word is a maximal run of alphanumeric characters, lowercased. At the end
    /// of input writes one line `word<TAB>count` per distinct word. Text must be UTF-8: invalid
    /// UTF-8 fails the job with an error naming the file and byte offset.
    Wordcount(WordcountArgs),
}

/// Options of `sluice run wordcount`.
#[derive(Args, Debug, Clone)]
pub struct WordcountArgs {
    /// A text file, or a directory of them (names starting with `.` or `_` are skipped).
    #[arg(long, value_name = "PATH", value_parser = input_path)]
    pub input: PathBuf,
    /// The output directory: part files, in no order; created if missing; must hold no
    /// output yet.
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    #[command(flatten)]
    pub common: CommonRunArgs,
}

/// `sluice jobs`.
pub fn describe_jobs() -> String {
    "Built-in jobs (sluice run JOB --help for details):\n\
     \n  wordcount  --input PATH --output DIR\n\
     \x20            counts words (maximal alphanumeric runs, lowercased); writes word<TAB>count\n\
     \nOptions of every job:\n\
     \x20 --workers N  worker count (default: the cores available);\n\
     \x20              more workers than cores run unpinned\n\
     \x20 --quiet      no progress line on stderr\n"
        .to_owned()
}

pub fn run(job: Job) -> Result<()> {
    match job {
        Job::Wordcount(args) => {
            check_output_dir(&args.output)?;
            let env = Env::new();
            env.set_workers(args.common.workers());
            wordcount(&env, &args.input, &args.output);
            let shown = progress::attach(&env, args.common.quiet);
            let report = env.execute("wordcount");
            progress::finish(shown);
            let report = report.context("job 'wordcount' failed")?;
            print_summary(&report);
            Ok(())
        }
    }
}

pub use sluice_tools::wordcount;

/// Refuses an output path that is a file or a directory that already holds output: adding a
/// second run's part files beside the first's would double every count.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        bail!("output path {} is a file, not a directory", dir.display());
    }
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("read output directory {}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') && !name.starts_with('_') {
            bail!(
                "output directory {} already holds output ({name}); remove it or choose another",
                dir.display()
            );
        }
    }
    Ok(())
}

fn print_summary(report: &JobReport) {
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
        "done: {} records ({} MB) in {:.2}s on {} workers{}",
        report.progress.records_in,
        report.progress.bytes_in / 1_000_000,
        secs,
        report.workers,
        if report.pinned { " (pinned)" } else { "" }
    );
}
