//! The built-in jobs of `sluice run`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sluice::{Env, JobReport, WindowAssigner};
use sluice_tools::window_agg::{WindowAggConfig, parse_window_spec, paths_overlap, window_agg};

use crate::cli::{CommonRunArgs, input_path};
use crate::progress;

/// A built-in job.
#[derive(Subcommand, Debug)]
pub enum Job {
    /// Counts words: a word is a maximal run of alphanumeric characters, lowercased. At the end
    /// of input writes one line `word<TAB>count` per distinct word. Text must be UTF-8: invalid
    /// UTF-8 fails the job with an error naming the file and byte offset.
    Wordcount(WordcountArgs),
    /// Per key and event-time window, the count and sum of the values of CSV lines
    /// `ts,key,value` (ts: i64 milliseconds; key: text without commas; value: i64). Writes
    /// `key,window_start,window_end,count,sum` for every window that holds a record. A session
    /// window starts at its first record's time and ends at its last record's time + gap.
    #[command(name = "window-agg")]
    WindowAgg(WindowAggArgs),
    /// `nexmark-qN`: a Nexmark query on generated events, its rows into part files.
    #[command(flatten)]
    Nexmark(crate::nexmark_job::NexmarkJob),
}

/// Options of `sluice run window-agg`.
#[derive(Args, Debug, Clone)]
pub struct WindowAggArgs {
    /// A CSV file, or a directory of them (names starting with `.` or `_` are skipped).
    #[arg(long, value_name = "CSV", value_parser = input_path)]
    pub input: PathBuf,
    /// The output directory: part files, in no order; created if missing; must hold no
    /// output yet.
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// The windows: tumbling:SIZE_MS, sliding:SIZE_MS:SLIDE_MS or session:GAP_MS.
    #[arg(long, value_name = "SPEC", value_parser = parse_window_spec)]
    pub window: WindowAssigner,
    /// How far behind the largest timestamp seen the watermark trails: a record at most this
    /// much older than the newest one is on time.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(i64).range(0..))]
    pub out_of_orderness_ms: i64,
    /// Writes late records (late for every window they belong to) here, as their input lines;
    /// without it they are counted and reported.
    #[arg(long, value_name = "DIR")]
    pub late_output: Option<PathBuf>,
    /// Counts, reports and skips malformed lines instead of failing on the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
    #[command(flatten)]
    pub common: CommonRunArgs,
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
    let nexmark = crate::nexmark_job::describe();
    format!(
        "Built-in jobs (sluice run JOB --help for details):\n\
     \n  wordcount  --input PATH --output DIR\n\
     \x20            counts words (maximal alphanumeric runs, lowercased); writes word<TAB>count\n\
     \n  window-agg --input CSV --output DIR --window SPEC --out-of-orderness-ms MS\n\
     \x20            [--late-output DIR] [--skip-bad-lines]\n\
     \x20            count and sum per key and event-time window of ts,key,value lines;\n\
     \x20            SPEC: tumbling:SIZE_MS | sliding:SIZE_MS:SLIDE_MS | session:GAP_MS;\n\
     \x20            writes key,window_start,window_end,count,sum\n\
     {nexmark}\
     \nOptions of every job:\n\
     \x20 --workers N  worker count (default: the cores available);\n\
     \x20              more workers than cores run unpinned\n\
     \x20 --quiet      no progress line on stderr\n"
    )
}

pub fn run(job: Job) -> Result<()> {
    match job {
        Job::WindowAgg(args) => run_window_agg(args),
        Job::Nexmark(job) => crate::nexmark_job::run(job),
        Job::Wordcount(args) => {
            if !args.common.restoring() {
                check_output_dir(&args.output)?;
            }
            let env = Env::new();
            args.common.apply(&env)?;
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

fn run_window_agg(args: WindowAggArgs) -> Result<()> {
    let restoring = args.common.restoring();
    if !restoring {
        check_output_dir(&args.output)?;
    }
    if let Some(late) = &args.late_output {
        if !restoring {
            check_output_dir(late)?;
        }
        if paths_overlap(late, &args.output) {
            bail!(
                "--late-output {} and --output {} must be separate directories",
                late.display(),
                args.output.display()
            );
        }
    }
    let cfg = WindowAggConfig {
        input: args.input,
        output: args.output,
        window: args.window,
        out_of_orderness_ms: args.out_of_orderness_ms,
        late_output: args.late_output,
        skip_bad_lines: args.skip_bad_lines,
    };
    let env = Env::new();
    args.common.apply(&env)?;
    let counts = window_agg(&env, &cfg);
    let shown = progress::attach(&env, args.common.quiet);
    let report = env.execute("window-agg");
    progress::finish(shown);
    let report = report.context("job 'window-agg' failed")?;
    print_summary(&report);
    let bad = counts.bad_lines.count();
    if bad > 0 {
        eprintln!("skipped {bad} malformed lines");
        for line in counts.bad_lines.quoted() {
            eprintln!("  {line}");
        }
    }
    match &cfg.late_output {
        Some(dir) => eprintln!(
            "late records: {} (written to {})",
            counts
                .late_written
                .load(std::sync::atomic::Ordering::Relaxed),
            dir.display()
        ),
        None => eprintln!("late records: {} (dropped)", report.progress.late_dropped),
    }
    Ok(())
}

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
    let what = if report.savepoint.is_some() {
        "stopped"
    } else {
        "done"
    };
    eprintln!(
        "{what}: {} records ({} MB) in {:.2}s on {} workers{}",
        report.progress.records_in,
        report.progress.bytes_in / 1_000_000,
        secs,
        report.workers,
        if report.pinned { " (pinned)" } else { "" }
    );
    if let Some(id) = report.restored_from {
        eprintln!("resumed from checkpoint {id}");
    }
    if report.restarts > 0 {
        eprintln!("restarted {} times after failures", report.restarts);
    }
    let c = &report.checkpoints;
    if c.completed + c.aborted > 0 {
        eprintln!(
            "checkpoints: {} completed (last {}), {} aborted",
            c.completed, c.last_completed, c.aborted
        );
    }
    if let Some(dir) = &report.savepoint {
        // The one line a script reads: the savepoint's path, on stdout.
        println!("savepoint: {}", dir.display());
    }
}
