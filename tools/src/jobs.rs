//! The built-in jobs of `sluice run`, registered with `sluice::cli`.

use std::path::PathBuf;

use clap::{Args, ValueHint};
use sluice::WindowAssigner;
use sluice::cli::{JobDef, check_output_dir, input_path, job};
use sluice_tools::window_agg::{WindowAggConfig, parse_window_spec, paths_overlap, window_agg};

/// Options of `sluice run wordcount`.
#[derive(Args, Debug, Clone)]
pub struct WordcountArgs {
    /// A text file, or a directory of them (names starting with `.` or `_` are skipped).
    #[arg(long, value_name = "PATH", value_parser = input_path, value_hint = ValueHint::AnyPath)]
    pub input: PathBuf,
    /// The output directory: part files, in no order; created if missing; must hold no
    /// output yet.
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub output: PathBuf,
}

/// Options of `sluice run window-agg`.
#[derive(Args, Debug, Clone)]
pub struct WindowAggArgs {
    /// A CSV file, or a directory of them (names starting with `.` or `_` are skipped).
    #[arg(long, value_name = "CSV", value_parser = input_path, value_hint = ValueHint::AnyPath)]
    pub input: PathBuf,
    /// The output directory: part files, in no order; created if missing; must hold no
    /// output yet.
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
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
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub late_output: Option<PathBuf>,
    /// Counts, reports and skips malformed lines instead of failing on the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
}

impl WindowAggArgs {
    fn config(&self) -> WindowAggConfig {
        WindowAggConfig {
            input: self.input.clone(),
            output: self.output.clone(),
            window: self.window,
            out_of_orderness_ms: self.out_of_orderness_ms,
            late_output: self.late_output.clone(),
            skip_bad_lines: self.skip_bad_lines,
        }
    }
}

/// The built-in jobs.
pub fn builtin() -> Vec<JobDef> {
    let wordcount = job(
        "wordcount",
        "Counts words: a word is a maximal run of alphanumeric characters, lowercased. At the \
         end of input writes one line `word<TAB>count` per distinct word. Text must be UTF-8: \
         invalid UTF-8 fails the job with an error naming the file and byte offset.",
        |env, a: &WordcountArgs| {
            sluice_tools::wordcount(env, &a.input, &a.output);
            Ok(None)
        },
    )
    .check(|a: &WordcountArgs, restoring| match restoring {
        true => Ok(()),
        false => check_output_dir(&a.output),
    });
    let window_agg = job(
        "window-agg",
        "Per key and event-time window, the count and sum of the values of CSV lines \
         `ts,key,value` (ts: i64 milliseconds; key: text without commas; value: i64). Writes \
         `key,window_start,window_end,count,sum` for every window that holds a record. A \
         session window starts at its first record's time and ends at its last record's time \
         + gap.",
        |env, a: &WindowAggArgs| {
            let cfg = a.config();
            let counts = window_agg(env, &cfg);
            Ok(Some(Box::new(move |report: &sluice::JobReport| {
                let bad = counts.bad_lines.count();
                if bad > 0 {
                    eprintln!("skipped {bad} malformed lines");
                    for line in counts.bad_lines.quoted() {
                        eprintln!("  {line}");
                    }
                }
                let late = counts
                    .late_written
                    .load(std::sync::atomic::Ordering::Relaxed);
                match &cfg.late_output {
                    Some(dir) => eprintln!("late records: {late} (written to {})", dir.display()),
                    None => eprintln!("late records: {} (dropped)", report.progress.late_dropped),
                }
            })))
        },
    )
    .check(|a: &WindowAggArgs, restoring| {
        if !restoring {
            check_output_dir(&a.output)?;
        }
        if let Some(late) = &a.late_output {
            if !restoring {
                check_output_dir(late)?;
            }
            if paths_overlap(late, &a.output) {
                return Err(format!(
                    "--late-output {} and --output {} must be separate directories",
                    late.display(),
                    a.output.display()
                ));
            }
        }
        Ok(())
    });
    let mut jobs = vec![wordcount, window_agg];
    jobs.extend(crate::nexmark_job::jobs());
    jobs
}

pub use sluice_tools::wordcount;
