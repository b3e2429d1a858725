//! `run JOB`: the options every job takes ([`CommonRunArgs`]), a run embedded in this
//! process, and a run submitted to a cluster (`--coordinator`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{ArgMatches, Args, FromArgMatches, ValueHint};

use super::{BoxError, JobDef, progress};
use crate::{CheckpointConfig, Env, JobReport, RestoreFrom};

/// Options every `run` job takes.
#[derive(Args, Debug, Clone)]
pub struct CommonRunArgs {
    /// Worker count (default: the cores available; on a cluster: every free worker slot).
    /// More than the cores runs unpinned.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    /// No progress line on stderr (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
    /// Take exactly-once checkpoints into this directory (with --checkpoint-interval-ms).
    #[arg(long, value_name = "DIR", requires = "checkpoint_interval_ms",
        value_hint = ValueHint::DirPath)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Time between two checkpoints (with --checkpoint-dir, or a coordinator's).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_interval_ms: Option<u64>,
    /// Complete checkpoints to keep (older ones are deleted).
    #[arg(long, value_name = "N", default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub checkpoints_retained: u32,
    /// Restarts after failures, each from the newest complete checkpoint (with checkpoints;
    /// default: 3, or what the job sets).
    #[arg(long, value_name = "N")]
    pub restart_attempts: Option<u32>,
    /// Resume: `latest` (the newest complete checkpoint in --checkpoint-dir, or a fresh start
    /// if there is none), or the path of a checkpoint or savepoint (or a directory holding
    /// them: the newest complete one).
    #[arg(long, value_name = "latest|PATH", value_parser = restore_arg,
        value_hint = ValueHint::AnyPath)]
    pub restore: Option<RestoreFrom>,
    /// On SIGTERM or Ctrl-C, stop with a savepoint in a new directory under DIR (printed),
    /// and exit 0 (embedded runs; on a cluster see `savepoint`).
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub savepoint_dir: Option<PathBuf>,
    /// Keyed state each stateful stage keeps in memory per worker before it evicts cold
    /// entries to disk, in MiB (default: 512).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub state_budget_mb: Option<u64>,
    /// What a restore loads into memory: `background` (the default: the job starts once the
    /// segments are checked, and each worker loads its entries, as far as the budget allows,
    /// between batches), `eager` (all of that before the job runs) or `lazy` (nothing:
    /// entries are read from disk when first used).
    #[arg(long, value_name = "background|eager|lazy", value_parser = state_loading_arg)]
    pub state_restore: Option<crate::StateLoading>,
    /// Throttle the sources to this many records per second in total.
    #[arg(long, value_name = "EVENTS_PER_S", value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Submit the job to the cluster of this coordinator (host:port) and wait for its end,
    /// instead of running it here.
    #[arg(long, value_name = "ADDR")]
    pub coordinator: Option<String>,
    /// The cluster's shared secret (with --coordinator; default: the development secret,
    /// loopback only).
    #[arg(long, value_name = "FILE", env = "SLUICE_SECRET_FILE",
        value_hint = ValueHint::FilePath)]
    pub secret_file: Option<PathBuf>,
}

fn restore_arg(s: &str) -> Result<RestoreFrom, String> {
    match s {
        "" => Err("empty --restore".into()),
        "latest" => Ok(RestoreFrom::Latest),
        path => Ok(RestoreFrom::Path(PathBuf::from(path))),
    }
}

fn state_loading_arg(s: &str) -> Result<crate::StateLoading, String> {
    crate::StateLoading::from_name(s)
        .ok_or_else(|| format!("'{s}' is not background, eager or lazy"))
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a positive number of records per second"
        )),
    }
}

/// An input path argument: not empty.
pub fn input_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        Err("empty path".into())
    } else {
        Ok(PathBuf::from(s))
    }
}

impl CommonRunArgs {
    /// The worker count to use in this process.
    pub fn workers(&self) -> usize {
        self.workers
            .map_or_else(|| crate::available_cpus().len().max(1), |w| w as usize)
    }

    /// Whether the job resumes from a checkpoint (its output directories then already hold
    /// the output committed before).
    pub fn restoring(&self) -> bool {
        self.restore.is_some()
    }

    /// Applies what shapes the job to `env`: checkpoints, restore, rate, restart attempts (what
    /// every node of a cluster applies too).
    pub fn apply_job(&self, env: &Env) -> Result<(), String> {
        if let (Some(dir), Some(ms)) = (&self.checkpoint_dir, self.checkpoint_interval_ms) {
            let mut config = CheckpointConfig::new(dir, Duration::from_millis(ms));
            config.retain = self.checkpoints_retained as usize;
            env.set_checkpoint_config(config);
        }
        if let Some(restore) = &self.restore {
            if *restore == RestoreFrom::Latest && self.checkpoint_dir.is_none() {
                return Err("--restore latest needs --checkpoint-dir (where to look)".into());
            }
            env.restore_from(restore.clone());
        }
        if let Some(rate) = self.rate {
            env.set_source_rate(rate);
        }
        if let Some(mb) = self.state_budget_mb {
            let bytes = usize::try_from(mb << 20).map_err(|_| "--state-budget-mb too large")?;
            env.set_state_budget_bytes(bytes);
        }
        if let Some(loading) = self.state_restore {
            env.set_state_loading(loading);
        }
        if let Some(attempts) = self.restart_attempts {
            let delay = sluice_core::runtime::RuntimeConfig::default().restart_delay;
            env.set_restart_strategy(attempts, delay);
        }
        Ok(())
    }

    /// Applies the options of a run in this process to `env`: workers, [`apply_job`]'s, and
    /// (with `--savepoint-dir`) a SIGTERM/SIGINT handler that stops the job with a savepoint.
    ///
    /// [`apply_job`]: Self::apply_job
    pub fn apply(&self, env: &Env) -> Result<(), String> {
        if self.checkpoint_interval_ms.is_some() && self.checkpoint_dir.is_none() {
            return Err("--checkpoint-interval-ms needs --checkpoint-dir".into());
        }
        env.set_workers(self.workers());
        self.apply_job(env)?;
        if let Some(dir) = &self.savepoint_dir {
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.clone())
                    .map_err(|e| format!("install a signal handler: {e}"))?;
            }
            env.stop_with_savepoint_on(stop, dir);
        }
        Ok(())
    }
}

/// Refuses an output path that is a file or a directory that already holds output: adding a
/// second run's part files beside the first's would double every count.
pub fn check_output_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(format!(
            "output path {} is a file, not a directory",
            dir.display()
        ));
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("read output directory {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') && !name.starts_with('_') {
            return Err(format!(
                "output directory {} already holds output ({name}); remove it or choose another",
                dir.display()
            ));
        }
    }
    Ok(())
}

/// `run JOB`: embedded, or submitted to a cluster.
pub(super) fn run_job(def: &JobDef, m: &ArgMatches, raw: &[OsString]) -> Result<(), BoxError> {
    let common = CommonRunArgs::from_arg_matches(m).map_err(|e| e.to_string())?;
    def.run_check(m, common.restoring())?;
    match &common.coordinator {
        Some(addr) => submit(def, &common, addr, raw),
        None => run_here(def, &common, m),
    }
}

fn run_here(def: &JobDef, common: &CommonRunArgs, m: &ArgMatches) -> Result<(), BoxError> {
    let env = Env::new();
    common.apply(&env)?;
    let finish = def.build_on(&env, m)?;
    let shown = progress::attach(&env, common.quiet);
    let report = env.execute(def.name());
    progress::finish(shown);
    let report = report.map_err(|e| format!("job '{}' failed: {e}", def.name()))?;
    print_summary(&report);
    if let Some(finish) = finish {
        finish(&report);
    }
    Ok(())
}

fn submit(
    def: &JobDef,
    common: &CommonRunArgs,
    addr: &str,
    raw: &[OsString],
) -> Result<(), BoxError> {
    if common.savepoint_dir.is_some() {
        return Err(
            "--savepoint-dir stops an embedded run; on a cluster, take savepoints with \
             `savepoint JOB_ID --coordinator ADDR`"
                .into(),
        );
    }
    let addr = sluice_cluster::config::parse_addr(addr, "--coordinator")?;
    let cluster =
        sluice_cluster::config::ClusterConfig::new(common.secret_file.as_deref(), "client")?;
    let args = shipped_args(&def.command(), raw)?;
    let quiet = common.quiet;
    let summary = sluice_cluster::client::submit_and_wait(
        addr,
        &cluster,
        def.name(),
        args,
        common.workers,
        |line| {
            if !quiet {
                eprintln!("{line}");
            }
        },
    )?;
    eprintln!("{summary}");
    Ok(())
}

/// The job's options as they travel to the cluster: what followed `run JOB`, without the
/// options that only concern this client, with every path made absolute (the nodes do not
/// share this process's working directory).
fn shipped_args(cmd: &clap::Command, raw: &[OsString]) -> Result<Vec<String>, String> {
    const LOCAL: [&str; 3] = ["coordinator", "secret-file", "quiet"];
    let cwd = std::env::current_dir().map_err(|e| format!("the working directory: {e}"))?;
    let mut out = Vec::new();
    let mut it = raw.iter();
    while let Some(token) = it.next() {
        let token = token
            .to_str()
            .ok_or_else(|| format!("an option that is not UTF-8: {token:?}"))?;
        let (name, inline) = match token.strip_prefix("--") {
            Some(rest) => match rest.split_once('=') {
                Some((n, v)) => (Some(n), Some(v.to_owned())),
                None => (Some(rest), None),
            },
            None => (None, None),
        };
        let arg = name.and_then(|n| cmd.get_arguments().find(|a| a.get_long() == Some(n)));
        let Some(arg) = arg else {
            out.push(token.to_owned());
            continue;
        };
        let long = arg.get_long().unwrap_or_default();
        let takes_value = arg.get_action().takes_values();
        let value = match (takes_value, inline) {
            (false, _) => None,
            (true, Some(v)) => Some(v),
            (true, None) => it.next().and_then(|v| v.to_str()).map(str::to_owned),
        };
        if LOCAL.contains(&long) {
            continue;
        }
        out.push(format!("--{long}"));
        if let Some(v) = value {
            let is_path = matches!(
                arg.get_value_hint(),
                ValueHint::AnyPath | ValueHint::FilePath | ValueHint::DirPath
            );
            let absolute = is_path && v != "latest" && Path::new(&v).is_relative();
            out.push(match absolute {
                true => cwd.join(&v).display().to_string(),
                false => v,
            });
        }
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_args_drop_local_options_and_make_paths_absolute() {
        #[derive(clap::Args)]
        struct JobArgs {
            #[arg(long, value_hint = ValueHint::FilePath)]
            input: PathBuf,
            #[arg(long)]
            window: String,
        }
        let cmd = CommonRunArgs::augment_args(JobArgs::augment_args(clap::Command::new("j")));
        let raw: Vec<OsString> = [
            "--input",
            "data/in.txt",
            "--window=tumbling:5",
            "--coordinator",
            "127.0.0.1:1",
            "--quiet",
            "--restore",
            "latest",
            "--checkpoint-dir=/abs/ck",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let got = shipped_args(&cmd, &raw).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            got,
            vec![
                "--input".to_owned(),
                cwd.join("data/in.txt").display().to_string(),
                "--window".into(),
                "tumbling:5".into(),
                "--restore".into(),
                "latest".into(),
                "--checkpoint-dir".into(),
                "/abs/ck".into(),
            ]
        );
    }
}
