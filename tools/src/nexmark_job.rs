//! The built-in jobs `sluice run nexmark-qN`: a Nexmark query on generated events, its rows
//! written into part files (the same pipelines and rows as `sluice bench nexmark --output`).
//! One job per implemented query, made from the list of queries, so the jobs and the queries
//! cannot drift apart.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use clap::{Args, ValueHint};
use sluice::cli::{JobDef, check_output_dir, job};
use sluice_bench::nexmark::queries::Query;
use sluice_bench::nexmark::run::BenchOutput;
use sluice_bench::nexmark::{NexmarkConfig, NexmarkSource};

/// Options of `sluice run nexmark-qN`.
#[derive(Args, Debug, Clone)]
pub struct NexmarkJobArgs {
    /// The output directory: part files, one line per result row (the SELECT list's fields,
    /// comma-separated), in no order; created if missing; must hold no output yet.
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    output: PathBuf,
    /// Events to generate.
    #[arg(long, value_name = "N", default_value_t = 10_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Events per second of event time.
    #[arg(long, value_name = "R", default_value_t = 10_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    event_rate: u64,
    /// Event 0's time, epoch milliseconds.
    #[arg(long, value_name = "T", default_value_t = 1_700_000_000_000)]
    base_time_ms: i64,
}

/// One job per implemented query.
pub fn jobs() -> Vec<JobDef> {
    Query::ALL.iter().map(|&q| query_job(q)).collect()
}

fn query_job(query: Query) -> JobDef {
    let about = format!(
        "Nexmark {} on generated events; writes its rows ({}), comma-separated.",
        query.name(),
        query.columns()
    );
    job(query.job_name(), &about, move |env, a: &NexmarkJobArgs| {
        let cfg = NexmarkConfig {
            events: Some(a.events),
            base_time_ms: a.base_time_ms,
            first_event_rate: a.event_rate,
            next_event_rate: a.event_rate,
        };
        let out = BenchOutput::new(Some(a.output.clone()), None);
        query.build(env, NexmarkSource::new(cfg), &out);
        let (events, rows) = (a.events, out.rows);
        Ok(Some(Box::new(move |_: &sluice::JobReport| {
            eprintln!("{events} events, {} rows", rows.load(Ordering::Relaxed));
        })))
    })
    .check(|a: &NexmarkJobArgs, restoring| match restoring {
        true => Ok(()),
        false => check_output_dir(&a.output),
    })
}
