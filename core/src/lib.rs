//! `sluice-core`: the runtime under the DataStream API.
//!
//! What lives here: the stream elements that travel on channels ([`element`]), stable key
//! hashing and key groups ([`key`]), the operator chain ([`chain`]), exchanges between workers
//! ([`exchange`]), the job graph ([`graph`]), sources and sinks as the runtime sees them
//! ([`source`], [`sink`]), the seams through which time and I/O enter ([`clock`], [`io`]), and
//! the thread-per-core worker runtime ([`runtime`]) and its guard against a glommio executor
//! that sleeps with work to do ([`nudge`]).
//!
//! Invariant: no module but [`clock`] reads the wall clock. `sluice-state` (the store) and
//! `sluice-net` (the transport) sit below this crate and never depend on it.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod chain;
pub mod checkpoint;
pub mod clock;
pub mod context;
pub mod element;
pub mod error;
pub mod exchange;
pub mod graph;
pub mod io;
pub mod join;
pub mod key;
pub mod keyed;
pub mod keyed_state;
pub mod metrics;
pub mod nudge;
pub mod process;
pub mod remote;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod stage;
pub mod state;
pub mod testkit;
pub mod time;
pub mod window;

pub use element::{
    BATCH_RECORDS_MAX, Batch, CheckpointBarrier, NO_TIMESTAMP, StreamElement, Timestamp, Watermark,
    WatermarkStatus,
};
pub use error::{Error, ErrorDomain, Result};
pub use key::{Key, KeyGroups, StableHasher};

/// A hash map with a fixed hasher: iteration order does not depend on a random seed, so runs
/// (and a future deterministic simulator) are repeatable. Never used for anything persisted or
/// sent between nodes: that is what [`Key::stable_hash`] is for.
pub type FastMap<K, V> = std::collections::HashMap<K, V, rustc_hash::FxBuildHasher>;

/// A hash set with a fixed hasher, like [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, rustc_hash::FxBuildHasher>;
