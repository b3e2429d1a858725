//! `sluice-bench`: what Sluice's benchmarks measure against and with.
//!
//! - [`checkpoint`]: the checkpoint benchmark's workload: a warm-up over every key, then hot
//!   keys only (the dirty fraction per checkpoint), and a probe that says when a job runs;
//! - [`corpus`]: a deterministic, seeded text corpus with a Zipf word distribution, for word
//!   count runs of any size;
//! - [`baseline`]: the hand-written single-threaded word count that stands for the machine's
//!   limit, run beside the engine in the same invocation;
//! - [`nexmark`]: the Nexmark event generator and source, equal event for event to the
//!   `nexmark` crate's;
//! - [`paced`]: a replayable source of numbers read at a set pace, for inputs of different
//!   speeds (checkpoint alignment);
//! - [`state`]: the state store's workloads, with a hash map and (feature `rocksdb`) RocksDB
//!   on the same keys;
//! - [`stats`]: medians and ratios for reports;
//! - [`window`]: the windowed-aggregation benchmark's event generator, its hand-written
//!   tumbling-window loop, and a digest sink that checks the engine against it.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod checkpoint;
pub mod corpus;
pub mod nexmark;
pub mod paced;
pub mod state;
pub mod stats;
pub mod window;
