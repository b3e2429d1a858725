//! `sluice inspect PATH [--json]`: describes a checkpoint or savepoint — its job, workers and
//! key groups, and per stage and worker the source positions, where the state is, and the
//! snapshot's synchronous pause, alignment time and duration. PATH is a checkpoint or
//! savepoint directory, or a directory of them (then the newest complete one, naming the
//! incomplete ones skipped).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sluice_core::checkpoint::metadata::{self, CheckpointMetadata};

use crate::cli::input_path;

/// Options of `sluice inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A checkpoint or savepoint directory, or a directory holding them.
    #[arg(value_name = "PATH", value_parser = input_path)]
    path: PathBuf,
    /// Print the metadata as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &InspectArgs) -> Result<()> {
    if !args.path.exists() {
        anyhow::bail!("no such checkpoint or directory: {}", args.path.display());
    }
    let (found, skipped) = metadata::latest(&args.path)
        .with_context(|| format!("read checkpoints at {}", args.path.display()))?;
    for s in &skipped {
        eprintln!("skipped an incomplete or corrupt checkpoint: {s}");
    }
    let (dir, meta) = found.with_context(|| {
        format!(
            "no complete checkpoint or savepoint at {}",
            args.path.display()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&meta)?);
    } else {
        print!("{}", describe(&dir, &meta));
    }
    Ok(())
}

/// The human description.
fn describe(dir: &std::path::Path, meta: &CheckpointMetadata) -> String {
    let mut out = format!(
        "{} {} of job '{}' at {}\n  workers: {}, key groups: {}, triggered at {} ms\n",
        if meta.savepoint {
            "savepoint"
        } else {
            "checkpoint"
        },
        meta.checkpoint_id,
        meta.job,
        dir.display(),
        meta.workers,
        meta.key_groups_max,
        meta.timestamp_ms
    );
    for stage in &meta.stages {
        out.push_str(&format!("  stage {}: {}\n", stage.stage, stage.name));
        for i in &stage.instances {
            let splits: Vec<String> = i
                .splits
                .iter()
                .map(|s| match (s.done, s.position) {
                    (true, _) => "done".to_owned(),
                    (false, Some(p)) => format!("at {p}"),
                    (false, None) => "not started".to_owned(),
                })
                .collect();
            out.push_str(&format!(
                "    worker {}: sync {} µs, align {} µs, total {} µs{}{}\n",
                i.worker,
                i.sync_us,
                i.align_us,
                i.duration_us,
                if splits.is_empty() {
                    String::new()
                } else {
                    format!(", splits: {}", splits.join(", "))
                },
                i.state
                    .as_ref()
                    .map_or(String::new(), |s| format!(", state: {s}"))
            ));
        }
    }
    out
}
