//! `sluice::cli`: the `sluice` command line as a library, so that a program linking `sluice`
//! registers its own jobs and exposes the same commands — and every node of a cluster can
//! run that one binary (a job travels to the nodes as its name and options).
//!
//! ```no_run
//! use sluice::cli::{self, clap};
//!
//! #[derive(clap::Args)]
//! struct Squares {
//!     /// How many.
//!     #[arg(long, default_value_t = 10)]
//!     n: u64,
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     cli::main(vec![cli::job("squares", "prints squares", |env, a: &Squares| {
//!         env.from_iter(0..a.n).map(|x| x * x).print();
//!         Ok(None)
//!     })])
//! }
//! ```
//!
//! The commands (see `shared/CLI.md`): `jobs`; `run JOB [JOB OPTIONS] [--workers N]
//! [--checkpoint-dir DIR --checkpoint-interval-ms MS] [--restore latest|PATH]
//! [--savepoint-dir DIR] [--rate N] [--coordinator ADDR]`; `node coordinator`,
//! `node worker`; `list`, `cancel`, `savepoint` with `--coordinator`. A binary adds commands
//! of its own with [`Cli::command`]. Every error is one line on stderr and a non-zero exit
//! code (2 for usage errors).

mod node;
pub mod progress;
mod run;

use std::error::Error as StdError;
use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

pub use clap;
use clap::{ArgMatches, Args, FromArgMatches};

pub use run::{CommonRunArgs, check_output_dir, input_path};

use crate::{Env, JobReport};

/// The error type of commands.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// What a job's build may hand back for a run in this process: called with the report when
/// the job finished (to print what the job counted, say).
pub type Finish = Box<dyn FnOnce(&JobReport)>;

type BuildFn = dyn Fn(&Env, &ArgMatches) -> Result<Option<Finish>, String> + Send + Sync;
type CheckFn = dyn Fn(&ArgMatches, bool) -> Result<(), String> + Send + Sync;

/// A job the command line runs: its name, its options (a `clap::Args` type) and how to build
/// it on an [`Env`].
#[derive(Clone)]
pub struct JobDef {
    name: String,
    about: String,
    augment: fn(clap::Command) -> clap::Command,
    build: Arc<BuildFn>,
    check: Option<Arc<CheckFn>>,
}

/// A job named `name` (what `run` takes), described by `about`, whose options are `A`, built
/// on an [`Env`] by `build`. The build runs on every node of a cluster, so it must only build
/// the job: checks of the environment belong in [`JobDef::check`].
pub fn job<A, F>(name: &str, about: &str, build: F) -> JobDef
where
    A: Args + FromArgMatches + 'static,
    F: Fn(&Env, &A) -> Result<Option<Finish>, String> + Send + Sync + 'static,
{
    let build = move |env: &Env, m: &ArgMatches| {
        let args = A::from_arg_matches(m).map_err(|e| one_line(&e.to_string()))?;
        build(env, &args)
    };
    JobDef {
        name: name.to_owned(),
        about: about.to_owned(),
        augment: |cmd| A::augment_args(cmd),
        build: Arc::new(build),
        check: None,
    }
}

impl JobDef {
    /// A check run once, where the job is launched (before it runs in this process or is
    /// submitted to a cluster), with whether it resumes from a checkpoint: refuse an output
    /// directory that already holds output, say.
    pub fn check<A, F>(mut self, check: F) -> JobDef
    where
        A: Args + FromArgMatches + 'static,
        F: Fn(&A, bool) -> Result<(), String> + Send + Sync + 'static,
    {
        self.check = Some(Arc::new(move |m: &ArgMatches, restoring: bool| {
            let args = A::from_arg_matches(m).map_err(|e| one_line(&e.to_string()))?;
            check(&args, restoring)
        }));
        self
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `run` subcommand of the job: its options and every job's.
    fn command(&self) -> clap::Command {
        let cmd = clap::Command::new(self.name.clone());
        CommonRunArgs::augment_args((self.augment)(cmd)).about(self.about.clone())
    }

    fn run_check(&self, m: &ArgMatches, restoring: bool) -> Result<(), String> {
        match &self.check {
            Some(check) => check(m, restoring),
            None => Ok(()),
        }
    }

    fn build_on(&self, env: &Env, m: &ArgMatches) -> Result<Option<Finish>, String> {
        (self.build)(env, m)
    }
}

/// The jobs of a binary, as the cluster builds them: from a name and options.
struct Catalog {
    jobs: Vec<JobDef>,
}

impl sluice_cluster::JobCatalog for Catalog {
    fn build(&self, name: &str, args: &[String]) -> Result<sluice_cluster::BuiltJob, String> {
        let def = self
            .jobs
            .iter()
            .find(|j| j.name == name)
            .ok_or_else(|| format!("no job '{name}' in this binary (see `jobs`)"))?;
        let argv = std::iter::once(name.to_owned()).chain(args.iter().cloned());
        let m = def
            .command()
            .try_get_matches_from(argv)
            .map_err(|e| clap_one_line(&e))?;
        let common = CommonRunArgs::from_arg_matches(&m).map_err(|e| e.to_string())?;
        let env = Env::new();
        common.apply_job(&env)?;
        let _finish = def.build_on(&env, &m)?;
        let (graph, config) = env.take_job(name).map_err(|e| e.to_string())?;
        Ok(sluice_cluster::BuiltJob { graph, config })
    }
}

type CommandFn = Box<dyn Fn(&ArgMatches) -> Result<(), BoxError>>;

/// A command line: the standard commands, the registered jobs, and commands of the binary's
/// own.
pub struct Cli {
    name: String,
    about: String,
    jobs: Vec<JobDef>,
    commands: Vec<(clap::Command, CommandFn)>,
}

/// Runs the command line of a binary whose jobs are `jobs`: parses the process's arguments,
/// runs the command, and returns the exit code (0, 1 on failure, 2 on bad usage).
pub fn main(jobs: Vec<JobDef>) -> ExitCode {
    let name = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "sluice".into());
    Cli::new(&name).jobs(jobs).main()
}

impl Cli {
    /// A command line named `name` (as in its usage lines).
    pub fn new(name: &str) -> Cli {
        Cli {
            name: name.to_owned(),
            about: "Sluice: a thread-per-core stream processor".to_owned(),
            jobs: Vec::new(),
            commands: Vec::new(),
        }
    }

    /// Its description in `--help`.
    pub fn about(mut self, about: &str) -> Cli {
        self.about = about.to_owned();
        self
    }

    /// Registers jobs.
    pub fn jobs(mut self, jobs: impl IntoIterator<Item = JobDef>) -> Cli {
        self.jobs.extend(jobs);
        self
    }

    /// Adds a command of the binary's own: `cmd` (its name and options), run by `run` with
    /// its matches.
    pub fn command(
        mut self,
        cmd: clap::Command,
        run: impl Fn(&ArgMatches) -> Result<(), BoxError> + 'static,
    ) -> Cli {
        self.commands.push((cmd, Box::new(run)));
        self
    }

    fn clap(&self) -> clap::Command {
        let run = clap::Command::new("run")
            .about("Runs a job, embedded on this machine or (with --coordinator) on a cluster")
            .subcommand_required(true)
            .subcommands(self.jobs.iter().map(JobDef::command));
        let mut cmd = clap::Command::new(self.name.clone())
            .about(self.about.clone())
            .version(env!("CARGO_PKG_VERSION"))
            .propagate_version(true)
            .subcommand_required(true)
            .subcommand(clap::Command::new("jobs").about("Lists the jobs and their options"))
            .subcommand(run);
        for extra in self.commands.iter().map(|(c, _)| c.clone()) {
            cmd = cmd.subcommand(extra);
        }
        node::add_commands(cmd)
    }

    /// Parses the process's arguments and runs the command.
    pub fn main(self) -> ExitCode {
        self.main_from(std::env::args_os().collect())
    }

    /// Parses `argv` (the program's name first) and runs the command.
    pub fn main_from(self, argv: Vec<OsString>) -> ExitCode {
        let matches = match self.clap().try_get_matches_from(argv.clone()) {
            Ok(m) => m,
            Err(e) => return exit_on_clap_error(e, &self.name),
        };
        init_tracing();
        match self.dispatch(&matches, &argv) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", error_line(&*e));
                ExitCode::FAILURE
            }
        }
    }

    fn dispatch(self, matches: &ArgMatches, argv: &[OsString]) -> Result<(), BoxError> {
        let Some((command, m)) = matches.subcommand() else {
            return Err("no command (see --help)".into());
        };
        match command {
            "jobs" => {
                print!("{}", self.describe_jobs());
                Ok(())
            }
            "run" => {
                let Some((name, job_m)) = m.subcommand() else {
                    return Err("no job (see `jobs`)".into());
                };
                let def = self
                    .jobs
                    .iter()
                    .find(|j| j.name == name)
                    .ok_or_else(|| format!("no job '{name}'"))?;
                // What followed `run JOB`, for a job that travels to a cluster.
                let raw: Vec<OsString> = argv.iter().skip(3).cloned().collect();
                run::run_job(def, job_m, &raw)
            }
            other => {
                if let Some((_, run)) = self.commands.iter().find(|(c, _)| c.get_name() == other) {
                    return run(m);
                }
                let catalog = Arc::new(Catalog { jobs: self.jobs });
                node::dispatch(other, m, catalog)
            }
        }
    }

    /// `jobs`: every job, its description and its own options.
    fn describe_jobs(&self) -> String {
        let mut out = format!("Jobs ({} run JOB --help for details):\n", self.name);
        for def in &self.jobs {
            out.push_str(&format!("\n  {}\n", def.name));
            for line in wrap(&def.about, 74) {
                out.push_str(&format!("  {:<11}{line}\n", ""));
            }
            let cmd = (def.augment)(clap::Command::new(def.name.clone()));
            let options: Vec<String> = cmd
                .get_arguments()
                .filter_map(|a| {
                    let long = a.get_long()?;
                    let value = match a.get_action().takes_values() {
                        true => a
                            .get_value_names()
                            .and_then(|v| v.first())
                            .map_or(" VALUE".to_owned(), |v| format!(" {v}")),
                        false => String::new(),
                    };
                    let opt = format!("--{long}{value}");
                    Some(match a.is_required_set() {
                        true => opt,
                        false => format!("[{opt}]"),
                    })
                })
                .collect();
            if !options.is_empty() {
                out.push_str(&format!("  {:<11}{}\n", "", options.join(" ")));
            }
        }
        out.push_str(
            "\nOptions of every job:\n\
             \x20 --workers N  worker count (default: the cores available);\n\
             \x20              more workers than cores run unpinned\n\
             \x20 --quiet      no progress line on stderr\n\
             \x20 --checkpoint-dir DIR --checkpoint-interval-ms MS, --restore latest|PATH,\n\
             \x20 --savepoint-dir DIR, --rate N, --coordinator ADDR [--secret-file F]\n",
        );
        out
    }
}

/// `text` in lines of at most `width` columns (a longer word stays whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// One line for an error and its causes, leaving out a cause whose text the message before
/// it already ends with.
fn error_line(e: &(dyn StdError + 'static)) -> String {
    let mut line = String::new();
    let mut next: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = next {
        let cause = one_line(&err.to_string());
        if !line.ends_with(&cause) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&cause);
        }
        next = err.source();
    }
    line
}

fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn init_tracing() {
    // glommio warns (over several lines) when it cannot register io_uring buffers under a
    // tight memlock limit and falls back to unregistered ones; that only slows DMA I/O.
    // `RUST_LOG=warn` shows it.
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,glommio::sys::uring=error"));
    // Colours only on a terminal: a warning in a log file or a pipe stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

fn clap_one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    match message.is_empty() {
        true => "error: invalid arguments".to_owned(),
        false => message.join(" "),
    }
}

/// Prints a clap error as one line (help and version normally) and picks the exit code.
pub fn exit_on_clap_error(e: clap::Error, name: &str) -> ExitCode {
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
            eprintln!("{} (see `{name} --help`)", clap_one_line(&e));
            ExitCode::from(2)
        }
    }
}
