//! `sluice-cluster`: Sluice on several machines — a coordinator node (Flink's JobManager
//! role) and worker nodes (TaskManagers), their control protocol, and the client the command
//! line uses to submit, list, cancel and savepoint jobs.
//!
//! Every node runs the same binary, so a job travels as its registered name and options: the
//! coordinator and each worker node build the same job graph locally through a
//! [`JobCatalog`] (the command line's job registry). The coordinator assigns each run's global
//! worker indices (hence key-group ranges and source splits) to the nodes' worker slots,
//! settles the outputs before a run starts, drives checkpoints across the nodes (the
//! checkpoint coordinator of `sluice-core`, fed by the nodes' acknowledgements), and fails a
//! run over when a node is lost: cancelled everywhere, restarted from the newest complete
//! checkpoint on the workers available.
//!
//! - [`protocol`]: the messages.
//! - [`config`]: secret, names, addresses.
//! - [`coordinator`]: the coordinator node.
//! - [`worker`]: the worker node.
//! - [`client`]: requests to a coordinator.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod coordinator;
pub mod protocol;
pub mod worker;

use sluice_core::graph::JobGraph;
use sluice_core::runtime::RuntimeConfig;

/// A job built from its name and options: its graph and the configuration it runs with.
pub struct BuiltJob {
    /// The graph.
    pub graph: JobGraph,
    /// Checkpoints, restore, rate, restarts, state — as the options set them.
    pub config: RuntimeConfig,
}

/// The jobs a node can build: the command line's registry.
pub trait JobCatalog: Send + Sync + 'static {
    /// Builds job `name` from its options `args` (as on the command line after `run NAME`,
    /// paths absolute). An unknown job or bad options is an error, one line.
    fn build(&self, name: &str, args: &[String]) -> Result<BuiltJob, String>;
}
