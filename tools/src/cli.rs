//! The command line: `sluice demo | jobs | run JOB | bench wordcount`. The whole planned
//! surface is in `shared/CLI.md`; the flags here are its first part and keep its names.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sluice::RestoreFrom;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::{bench, demo, jobs};

/// Sluice: a thread-per-core stream processor.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs word count on a generated corpus on every core and prints the top words and the
    /// throughput.
    Demo(demo::DemoArgs),
    /// Lists the built-in jobs and their options.
    Jobs,
    /// Runs a built-in job embedded on this machine.
    Run {
        #[command(subcommand)]
        job: jobs::Job,
    },
    /// Benchmarks, with their baselines run in the same invocation.
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
    /// Describes a checkpoint or savepoint: job, key groups, source positions, state, pauses.
    Inspect(crate::inspect::InspectArgs),
}

/// Options every `sluice run` job takes.
#[derive(Args, Debug, Clone)]
pub struct CommonRunArgs {
    /// Worker count (default: the cores available). More than the cores runs unpinned.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    /// No progress line on stderr (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
    /// Take exactly-once checkpoints into this directory (with --checkpoint-interval-ms).
    #[arg(long, value_name = "DIR", requires = "checkpoint_interval_ms")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Time between two checkpoints.
    #[arg(long, value_name = "MS", requires = "checkpoint_dir",
        value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_interval_ms: Option<u64>,
    /// Complete checkpoints to keep (older ones are deleted).
    #[arg(long, value_name = "N", default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub checkpoints_retained: u32,
    /// Resume: `latest` (the newest complete checkpoint in --checkpoint-dir, or a fresh start
    /// if there is none), or the path of a checkpoint or savepoint (or a directory holding
    /// them: the newest complete one).
    #[arg(long, value_name = "latest|PATH", value_parser = restore_arg)]
    pub restore: Option<RestoreFrom>,
    /// On SIGTERM or Ctrl-C, stop with a savepoint in a new directory under DIR (printed),
    /// and exit 0.
    #[arg(long, value_name = "DIR")]
    pub savepoint_dir: Option<PathBuf>,
    /// Throttle the sources to this many records per second in total.
    #[arg(long, value_name = "EVENTS_PER_S", value_parser = positive_rate)]
    pub rate: Option<f64>,
}

fn restore_arg(s: &str) -> Result<RestoreFrom, String> {
    match s {
        "" => Err("empty --restore".into()),
        "latest" => Ok(RestoreFrom::Latest),
        path => Ok(RestoreFrom::Path(PathBuf::from(path))),
    }
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a positive number of records per second"
        )),
    }
}

impl CommonRunArgs {
    /// The worker count to use.
    pub fn workers(&self) -> usize {
        self.workers
            .map_or_else(|| sluice::available_cpus().len().max(1), |w| w as usize)
    }

    /// Whether the job resumes from a checkpoint (its output directories then already hold
    /// the output committed before).
    pub fn restoring(&self) -> bool {
        self.restore.is_some()
    }

    /// Applies the options to `env`: workers, checkpoints, restore, rate, and (with
    /// `--savepoint-dir`) a SIGTERM/SIGINT handler that stops the job with a savepoint.
    pub fn apply(&self, env: &sluice::Env) -> Result<()> {
        env.set_workers(self.workers());
        if let (Some(dir), Some(ms)) = (&self.checkpoint_dir, self.checkpoint_interval_ms) {
            let mut config = sluice::CheckpointConfig::new(dir, Duration::from_millis(ms));
            config.retain = self.checkpoints_retained as usize;
            env.set_checkpoint_config(config);
        }
        if let Some(restore) = &self.restore {
            if *restore == RestoreFrom::Latest && self.checkpoint_dir.is_none() {
                anyhow::bail!("--restore latest needs --checkpoint-dir (where to look)");
            }
            env.restore_from(restore.clone());
        }
        if let Some(rate) = self.rate {
            env.set_source_rate(rate);
        }
        if let Some(dir) = &self.savepoint_dir {
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.clone())
                    .map_err(|e| anyhow::anyhow!("install a signal handler: {e}"))?;
            }
            env.stop_with_savepoint_on(stop, dir);
        }
        Ok(())
    }
}

/// An input path argument.
pub fn input_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        Err("empty path".into())
    } else {
        Ok(PathBuf::from(s))
    }
}

pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Jobs => {
            print!("{}", jobs::describe_jobs());
            Ok(())
        }
        Command::Run { job } => jobs::run(job),
        Command::Bench { bench } => bench::run(bench),
        Command::Inspect(args) => crate::inspect::run(&args),
    }
}

/// Prints a clap error as one line (help and version normally) and picks the exit code.
pub fn exit_on_clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            // clap's message may continue on further lines (the missing flags); keep them, in
            // one line, and leave out its usage and help hints.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            let message = match message.is_empty() {
                true => "error: invalid arguments".to_owned(),
                false => message.join(" "),
            };
            eprintln!("{message} (see `sluice --help`)");
            ExitCode::from(2)
        }
    }
}
