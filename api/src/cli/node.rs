//! The cluster's commands: `node coordinator`, `node worker`, and `list`, `cancel`,
//! `savepoint` against a coordinator.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgMatches, Args, FromArgMatches, Subcommand, ValueHint};
use sluice_cluster::config::{ClusterConfig, parse_addr, parse_cpu_list};
use sluice_cluster::{JobCatalog, client, coordinator, worker};

use super::BoxError;

/// `node coordinator` / `node worker`.
#[derive(Subcommand, Debug)]
enum Node {
    /// Runs a coordinator: accepts worker nodes and jobs, drives checkpoints, fails runs over
    /// when a node is lost.
    ///
    /// With --checkpoint-dir DIR, the jobs it accepts survive its restart: it keeps them in
    /// DIR/jobs (name, options, runs, newest announced checkpoint, how each ended), and a
    /// coordinator started again on the same DIR (and address) restarts every unfinished job
    /// from its newest complete checkpoint, with run ids above all its predecessor used, so
    /// that late messages of the old runs are rejected. Worker nodes reconnect on their own,
    /// and a waiting `run --coordinator` client reconnects for up to 60 s. Not kept: the
    /// registry of nodes (they register again), savepoints under way, and jobs that take no
    /// checkpoints (they fail at the restart).
    Coordinator(CoordinatorArgs),
    /// Runs a worker node: offers --workers worker slots to the coordinator and runs the
    /// parts of jobs it is given.
    Worker(WorkerArgs),
}

/// The secret and heartbeat options of every node.
#[derive(Args, Debug, Clone)]
struct Membership {
    /// The cluster's shared secret, at least 16 bytes (default: the development secret,
    /// which only loopback addresses may use).
    #[arg(long, value_name = "FILE", env = "SLUICE_SECRET_FILE",
        value_hint = ValueHint::FilePath)]
    secret_file: Option<PathBuf>,
    /// Silence after which a peer counts as lost.
    #[arg(long, value_name = "MS", default_value_t = 3000,
        value_parser = clap::value_parser!(u64).range(500..))]
    heartbeat_timeout_ms: u64,
}

impl Membership {
    fn config(&self, node: &str) -> Result<ClusterConfig, String> {
        let mut c = ClusterConfig::new(self.secret_file.as_deref(), node)?;
        c.heartbeat_timeout = Duration::from_millis(self.heartbeat_timeout_ms);
        Ok(c)
    }
}

#[derive(Args, Debug)]
struct CoordinatorArgs {
    /// Where to listen for nodes and clients (loopback unless a secret file is given).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6123")]
    listen: String,
    /// Default root of checkpoints (for jobs with --checkpoint-interval-ms but no
    /// --checkpoint-dir: DIR/JOB_ID) and of savepoints (DIR/savepoints), and the job store
    /// (DIR/jobs) that lets jobs survive a coordinator restart; every node must reach it at
    /// the same path.
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    checkpoint_dir: Option<PathBuf>,
    #[command(flatten)]
    membership: Membership,
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// The coordinator's address (host:port).
    #[arg(long, value_name = "ADDR")]
    coordinator: String,
    /// Where this node's workers listen for their peers: the IP, and the first worker's
    /// port (worker i listens on port + i; port 0: ports the system picks).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,
    /// Worker slots this node offers (default: as many as --cpus lists, or the cores
    /// available).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Pin the workers to these CPUs, one each, as a Linux CPU list (0-3,6): worker i of a
    /// job runs on the i-th and spins briefly before it sleeps, as an embedded run's workers
    /// do. For a node that has its CPUs to itself; by default the workers are not pinned,
    /// since nodes may share a machine.
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// This node's name in logs (default: worker-PID).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// How long to keep trying to reach the coordinator at start-up.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    connect_timeout_ms: u64,
    #[command(flatten)]
    membership: Membership,
}

/// How a client command reaches the coordinator.
#[derive(Args, Debug)]
struct Target {
    /// The coordinator's address (host:port).
    #[arg(long, value_name = "ADDR")]
    coordinator: String,
    /// The cluster's shared secret (default: the development secret, loopback only).
    #[arg(long, value_name = "FILE", env = "SLUICE_SECRET_FILE",
        value_hint = ValueHint::FilePath)]
    secret_file: Option<PathBuf>,
}

impl Target {
    fn resolve(&self) -> Result<(std::net::SocketAddr, ClusterConfig), String> {
        let addr = parse_addr(&self.coordinator, "--coordinator")?;
        Ok((
            addr,
            ClusterConfig::new(self.secret_file.as_deref(), "client")?,
        ))
    }
}

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct CancelArgs {
    /// The job's id (see `list`).
    #[arg(value_name = "JOB_ID")]
    job_id: String,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct SavepointArgs {
    /// The job's id (see `list`).
    #[arg(value_name = "JOB_ID")]
    job_id: String,
    /// Where to create the savepoint (default: the coordinator's checkpoint directory's
    /// `savepoints`, or the job's); every node must reach it at the same path.
    #[arg(value_name = "DIR", value_hint = ValueHint::DirPath)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    target: Target,
}

/// Adds the cluster's commands to `cmd`.
pub(super) fn add_commands(cmd: clap::Command) -> clap::Command {
    // `about` after `augment_*`, which would replace it with the type's doc comment.
    let node = Node::augment_subcommands(clap::Command::new("node"))
        .about("Runs a node of a cluster: a coordinator or a worker")
        .subcommand_required(true);
    cmd.subcommand(node)
        .subcommand(
            ListArgs::augment_args(clap::Command::new("list")).about("Lists the jobs of a cluster"),
        )
        .subcommand(
            CancelArgs::augment_args(clap::Command::new("cancel"))
                .about("Cancels a job of a cluster"),
        )
        .subcommand(
            SavepointArgs::augment_args(clap::Command::new("savepoint")).about(
                "Takes a savepoint of a running job of a cluster (the job goes on) and prints its \
             path",
            ),
        )
}

/// Runs cluster command `command`.
pub(super) fn dispatch(
    command: &str,
    m: &ArgMatches,
    catalog: Arc<dyn JobCatalog>,
) -> Result<(), BoxError> {
    let parse_err = |e: clap::Error| e.to_string();
    match command {
        "node" => match Node::from_arg_matches(m).map_err(parse_err)? {
            Node::Coordinator(args) => run_coordinator(args, catalog),
            Node::Worker(args) => run_worker(args, catalog),
        },
        "list" => {
            let args = ListArgs::from_arg_matches(m).map_err(parse_err)?;
            let (addr, cluster) = args.target.resolve()?;
            let (jobs, nodes) = client::list(addr, &cluster)?;
            println!(
                "{:<16} {:<22} {:>5} {:>5}",
                "NODE", "ADDRESS", "SLOTS", "USED"
            );
            for n in nodes {
                println!("{:<16} {:<22} {:>5} {:>5}", n.name, n.addr, n.slots, n.used);
            }
            println!(
                "{:<10} {:<14} {:>7} {:>8} {:>10}  STATE",
                "JOB_ID", "NAME", "WORKERS", "RESTARTS", "CHECKPOINT"
            );
            for j in jobs {
                println!(
                    "{:<10} {:<14} {:>7} {:>8} {:>10}  {}",
                    j.id, j.name, j.workers, j.restarts, j.last_checkpoint, j.state
                );
            }
            Ok(())
        }
        "cancel" => {
            let args = CancelArgs::from_arg_matches(m).map_err(parse_err)?;
            let (addr, cluster) = args.target.resolve()?;
            eprintln!("{}", client::cancel(addr, &cluster, &args.job_id)?);
            Ok(())
        }
        "savepoint" => {
            let args = SavepointArgs::from_arg_matches(m).map_err(parse_err)?;
            let (addr, cluster) = args.target.resolve()?;
            let dir = match args.dir {
                Some(d) if d.is_relative() => Some(std::env::current_dir()?.join(d)),
                other => other,
            };
            let dir = dir.map(|d| d.display().to_string());
            println!("{}", client::savepoint(addr, &cluster, &args.job_id, dir)?);
            Ok(())
        }
        other => Err(format!("unknown command '{other}'").into()),
    }
}

fn run_coordinator(args: CoordinatorArgs, catalog: Arc<dyn JobCatalog>) -> Result<(), BoxError> {
    let listen = parse_addr(&args.listen, "--listen")?;
    let checkpoint_dir = match args.checkpoint_dir {
        Some(d) if d.is_relative() => Some(std::env::current_dir()?.join(d)),
        other => other,
    };
    let opts = coordinator::CoordinatorOptions {
        listen,
        checkpoint_dir,
        cluster: args.membership.config("coordinator")?,
    };
    coordinator::run(opts, catalog, |addr| {
        // The line scripts and tests wait for: where the coordinator listens.
        eprintln!("coordinator listening on {addr}");
    })?;
    Ok(())
}

fn run_worker(args: WorkerArgs, catalog: Arc<dyn JobCatalog>) -> Result<(), BoxError> {
    let name = args
        .name
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let allowed = crate::available_cpus();
    let cpus = match &args.cpus {
        Some(list) => parse_cpu_list(list, "--cpus", &allowed)?,
        None => Vec::new(),
    };
    let slots = match (args.workers, cpus.len()) {
        (Some(n), _) => n,
        (None, 0) => allowed.len().max(1) as u32,
        (None, listed) => listed as u32,
    };
    let opts = worker::WorkerOptions {
        coordinator: parse_addr(&args.coordinator, "--coordinator")?,
        listen: parse_addr(&args.listen, "--listen")?,
        slots,
        cluster: args.membership.config(&name)?,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        cpus,
    };
    worker::run(opts, catalog)?;
    Ok(())
}
