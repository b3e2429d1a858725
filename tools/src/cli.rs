//! The command line: `sluice demo | jobs | run JOB | bench wordcount`. The whole planned
//! surface is in `shared/CLI.md`; the flags here are its first part and keep its names.

use std::path::PathBuf;
use std::process::ExitCode;

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
}

impl CommonRunArgs {
    /// The worker count to use.
    pub fn workers(&self) -> usize {
        self.workers
            .map_or_else(|| sluice::available_cpus().len().max(1), |w| w as usize)
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
