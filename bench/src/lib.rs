//! `sluice-bench`: what Sluice's benchmarks measure against and with.
//!
//! - [`corpus`]: a deterministic, seeded text corpus with a Zipf word distribution, for word
//!   count runs of any size;
//! - [`baseline`]: the hand-written single-threaded word count that stands for the machine's
//!   limit, run beside the engine in the same invocation;
//! - [`stats`]: medians and ratios for reports;
//! - [`state`]: the state store's workloads, with a hash map and (feature `rocksdb`) RocksDB
//!   on the same keys.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod corpus;
pub mod state;
pub mod stats;
