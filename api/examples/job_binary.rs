//! A job binary: a program that links `sluice`, registers jobs of its own, and exposes the
//! whole `sluice` command line for them — run embedded, or start a cluster where every node
//! runs this same binary (a job travels to the nodes as its name and options).
//!
//! ```sh
//! cargo build --release -p sluice --example job_binary
//! B=target/release/examples/job_binary
//! $B jobs
//! $B run running-count --events 100000 --keys 50 --output /tmp/rc          # embedded
//! $B node coordinator --listen 127.0.0.1:6123 &                            # a cluster
//! $B node worker --coordinator 127.0.0.1:6123 --listen 127.0.0.2:0 --workers 2 &
//! $B node worker --coordinator 127.0.0.1:6123 --listen 127.0.0.3:0 --workers 2 &
//! $B run page-views --clicks 100000 --output /tmp/pv --coordinator 127.0.0.1:6123
//! ```
//!
//! `running-count` keeps a running count per key (keyed state, checkpointed) and writes
//! `key,count` after every event: per key the counts 1, 2, …, n each appear once in an
//! exactly-once run, whatever failed meanwhile. `page-views` moves a record type of its own
//! through a rebalance, which is why it registers the type for the wire.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice::cli::{self, clap};

/// Options of `running-count`.
#[derive(clap::Args)]
struct RunningCount {
    /// Events to generate (event `i` has key `hash(i) mod keys`).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 100)]
    keys: u64,
    /// The output directory.
    #[arg(long, value_hint = clap::ValueHint::DirPath)]
    output: PathBuf,
}

/// Options of `page-views`.
#[derive(clap::Args)]
struct PageViews {
    /// Clicks to generate.
    #[arg(long, default_value_t = 100_000)]
    clicks: u64,
    /// The output directory.
    #[arg(long, value_hint = clap::ValueHint::DirPath)]
    output: PathBuf,
}

/// A record type of this program that crosses nodes: it derives rkyv's traits.
#[derive(Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Click {
    user: u64,
    page: u32,
}

/// A well-mixed function of `i` (splitmix64's finalizer).
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn main() -> ExitCode {
    let running_count = cli::job(
        "running-count",
        "A running count per key of generated events; writes key,count after every event",
        |env, a: &RunningCount| {
            let keys = a.keys.max(1);
            env.from_iter(0..a.events)
                .map(move |i: u64| (mix(i) % keys, 1u64))
                .into_keyed()
                .sum()
                .map(|(key, count)| format!("{key},{count}"))
                .write_text(&a.output);
            Ok(None)
        },
    )
    .check(|a: &RunningCount, restoring| match restoring {
        true => Ok(()),
        false => cli::check_output_dir(&a.output),
    });
    let page_views = cli::job(
        "page-views",
        "Views per page of generated clicks, spread round robin before they are counted",
        |env, a: &PageViews| {
            sluice::register_wire_type::<Click>();
            env.from_iter(0..a.clicks)
                .map(|i: u64| Click {
                    user: mix(i) % 1000,
                    page: (mix(i ^ 0xABCD) % 64) as u32,
                })
                .rebalance()
                .filter(|c: &Click| c.user % 10 != 0)
                .map(|c: Click| (c.page, 1u64))
                .into_keyed()
                .emit_final()
                .sum()
                .map(|(page, views)| format!("{page},{views}"))
                .write_text(&a.output);
            Ok(None)
        },
    );
    cli::main(vec![running_count, page_views])
}
