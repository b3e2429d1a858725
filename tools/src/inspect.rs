//! `sluice inspect PATH [--json]`: describes a checkpoint or savepoint — its job, workers and
//! key groups, and per stage and worker the source positions, where the state is, and the
//! snapshot's synchronous pause, alignment time and duration. PATH is a checkpoint or
//! savepoint directory, or a directory of them (then the newest complete one, naming the
//! incomplete ones skipped).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sluice_core::checkpoint::metadata::{self, CheckpointMetadata};

use sluice::cli::input_path;

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
            let pause = format!(
                "sync {} µs (freeze {} µs, CPU {} µs)",
                i.sync_us, i.freeze_us, i.sync_cpu_us
            );
            out.push_str(&format!(
                "    worker {}: {pause}, align {} µs, total {} µs{}{}\n",
                i.worker,
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

#[cfg(test)]
mod tests {
    use sluice_core::checkpoint::SplitState;
    use sluice_core::checkpoint::metadata::{
        CheckpointMetadata, InstanceMetadata, METADATA_FORMAT, StageMetadata,
    };

    #[test]
    fn describes_each_instance_with_its_pause_and_positions() {
        let instance = |worker, splits, state: Option<&str>| InstanceMetadata {
            worker,
            splits,
            state: state.map(str::to_owned),
            sync_us: 130,
            freeze_us: 12,
            sync_cpu_us: 110,
            duration_us: 9000,
            align_us: 40,
        };
        let split = |position, done| SplitState {
            split: vec![1],
            position,
            done,
        };
        let meta = CheckpointMetadata {
            format: METADATA_FORMAT,
            checkpoint_id: 7,
            job: "wc".into(),
            savepoint: false,
            timestamp_ms: 1000,
            workers: 2,
            key_groups_max: 128,
            run: 0,
            stages: vec![StageMetadata {
                stage: 0,
                name: "Source: lines".into(),
                instances: vec![
                    instance(0, vec![split(Some(42), false)], None),
                    instance(1, vec![split(None, true)], Some("../state/w1")),
                ],
            }],
        };
        let text = super::describe(std::path::Path::new("/chk/chk-7"), &meta);
        assert_eq!(
            text,
            "checkpoint 7 of job 'wc' at /chk/chk-7\n  workers: 2, key groups: 128, triggered \
             at 1000 ms\n  stage 0: Source: lines\n    worker 0: sync 130 µs (freeze 12 µs, \
             CPU 110 µs), align 40 µs, total 9000 µs, splits: at 42\n    worker 1: sync 130 \
             µs (freeze 12 µs, CPU 110 µs), align 40 µs, total 9000 µs, splits: done, state: \
             ../state/w1\n"
        );
    }
}
