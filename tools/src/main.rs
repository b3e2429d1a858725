//! The `sluice` binary: the command line of `sluice::cli` (run a job embedded or on a
//! cluster, the cluster's nodes, list, cancel, savepoint) with the built-in jobs, plus the
//! demo, the benchmarks and `inspect`. Every failure is one line on stderr and a non-zero
//! exit code.
#![deny(unsafe_code)] // but for setting the allocator's options, in `allocator.rs`

mod allocator;
mod bench;
mod bench_checkpoint;
mod bench_net;
mod bench_net_latency;
mod bench_nexmark;
mod bench_state;
mod bench_window;
mod demo;
mod inspect;
mod jobs;
mod nexmark_job;

use std::process::ExitCode;

use clap::{Args, FromArgMatches, Subcommand};
use sluice::cli::{BoxError, Cli};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn boxed(e: anyhow::Error) -> BoxError {
    e.into()
}

fn main() -> ExitCode {
    allocator::configure();
    // `about` after `augment_*`, which would replace it with the type's doc comment.
    let demo = demo::DemoArgs::augment_args(clap::Command::new("demo")).about(
        "Runs word count on a generated corpus on every core and prints the top words and \
         the throughput",
    );
    let bench = bench::Bench::augment_subcommands(clap::Command::new("bench"))
        .about("Benchmarks, with their baselines run in the same invocation")
        .subcommand_required(true);
    let inspect = inspect::InspectArgs::augment_args(clap::Command::new("inspect")).about(
        "Describes a checkpoint or savepoint: job, key groups, source positions, state, pauses",
    );
    Cli::new("sluice")
        .jobs(jobs::builtin())
        .command(demo, |m| {
            demo::run(&demo::DemoArgs::from_arg_matches(m)?).map_err(boxed)
        })
        .command(bench, |m| {
            bench::run(bench::Bench::from_arg_matches(m)?).map_err(boxed)
        })
        .command(inspect, |m| {
            inspect::run(&inspect::InspectArgs::from_arg_matches(m)?).map_err(boxed)
        })
        .main()
}
