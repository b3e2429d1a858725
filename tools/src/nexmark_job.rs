//! The built-in jobs `sluice run nexmark-qN`: a Nexmark query on generated events, its rows
//! written into part files (the same pipelines and rows as `sluice bench nexmark --output`).
//! One subcommand per implemented query, made from the list of queries, so the jobs and the
//! queries cannot drift apart.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{ArgMatches, Args, Command, FromArgMatches};
use sluice::Env;
use sluice_bench::nexmark::queries::Query;
use sluice_bench::nexmark::run::BenchOutput;
use sluice_bench::nexmark::{NexmarkConfig, NexmarkSource};

use crate::cli::CommonRunArgs;
use crate::jobs::check_output_dir;
use crate::progress;

/// `sluice run nexmark-qN`: which query, and its options.
#[derive(Debug, Clone)]
pub struct NexmarkJob {
    query: Query,
    args: NexmarkJobArgs,
}

/// Options of `sluice run nexmark-qN`.
#[derive(Args, Debug, Clone)]
pub struct NexmarkJobArgs {
    /// The output directory: part files, one line per result row (the SELECT list's fields,
    /// comma-separated), in no order; created if missing; must hold no output yet.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// Events to generate.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Events per second of event time.
    #[arg(long, value_name = "R", default_value_t = 10_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    event_rate: u64,
    /// Event 0's time, epoch milliseconds.
    #[arg(long, value_name = "T", default_value_t = 1_700_000_000_000)]
    base_time_ms: i64,
    #[command(flatten)]
    common: CommonRunArgs,
}

impl FromArgMatches for NexmarkJob {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        use clap::error::ErrorKind;
        let Some((name, sub)) = matches.subcommand() else {
            return Err(clap::Error::raw(
                ErrorKind::MissingSubcommand,
                "no job named",
            ));
        };
        let query = name
            .strip_prefix("nexmark-")
            .and_then(Query::parse)
            .ok_or_else(|| {
                clap::Error::raw(
                    ErrorKind::InvalidSubcommand,
                    format!("unknown job '{name}'"),
                )
            })?;
        let args = NexmarkJobArgs::from_arg_matches(sub)?;
        Ok(NexmarkJob { query, args })
    }
    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = NexmarkJob::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Subcommand for NexmarkJob {
    fn augment_subcommands(mut cmd: Command) -> Command {
        for q in Query::ALL {
            let about = format!(
                "Nexmark {} on generated events; writes {}",
                q.name(),
                q.columns()
            );
            // After the arguments: their struct's doc would otherwise be the about.
            let sub = NexmarkJobArgs::augment_args(Command::new(q.job_name())).about(about);
            cmd = cmd.subcommand(sub);
        }
        cmd
    }
    fn augment_subcommands_for_update(cmd: Command) -> Command {
        NexmarkJob::augment_subcommands(cmd)
    }
    fn has_subcommand(name: &str) -> bool {
        Query::ALL.iter().any(|q| q.job_name() == name)
    }
}

/// The `sluice jobs` lines of the Nexmark jobs.
pub fn describe() -> String {
    let names: Vec<&str> = Query::ALL.iter().map(|q| q.name()).collect();
    format!(
        "\n  nexmark-QN --output DIR [--events N] [--event-rate R] [--base-time-ms T]\n\
         \x20            Nexmark query QN on generated events; writes its rows, the SELECT\n\
         \x20            list comma-separated; QN: {}\n",
        names.join(", ")
    )
}

/// Runs the job.
pub fn run(job: NexmarkJob) -> Result<()> {
    let args = &job.args;
    if !args.common.restoring() {
        check_output_dir(&args.output)?;
    }
    let env = Env::new();
    args.common.apply(&env)?;
    let cfg = NexmarkConfig {
        events: Some(args.events),
        base_time_ms: args.base_time_ms,
        first_event_rate: args.event_rate,
        next_event_rate: args.event_rate,
    };
    let out = BenchOutput::new(Some(args.output.clone()), None);
    job.query.build(&env, NexmarkSource::new(cfg), &out);
    let shown = progress::attach(&env, args.common.quiet);
    let report = env.execute(job.query.job_name());
    progress::finish(shown);
    let report = report.with_context(|| format!("job '{}' failed", job.query.job_name()))?;
    eprintln!(
        "done: {} events, {} rows in {:.2}s on {} workers",
        args.events,
        out.rows.load(std::sync::atomic::Ordering::Relaxed),
        report.elapsed.as_secs_f64(),
        report.workers
    );
    Ok(())
}
