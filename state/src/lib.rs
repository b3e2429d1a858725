//! `sluice-state`: the per-core log-structured state store.
//!
//! One [`Store`] per worker, in its own directory. Operators register typed [`Table`]s
//! (state scoped by namespace and key) and work on them in memory; the store writes what
//! changed at each checkpoint as a new sorted, crc-framed segment (incremental by
//! construction), keeps memory within a budget by evicting cold entries into segments and
//! reading them back on access, compacts segments, writes savepoints, and restores any subset
//! of key groups. `docs/state-format.md` describes the bytes on disk; ARCHITECTURE.md the
//! design. The store never depends on `sluice-core`: it has its own I/O seam ([`Disk`]) and
//! errors.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod checkpoint;
pub mod codec;
pub mod disk;
mod error;
pub mod frame;
mod maintain;
pub mod manifest;
pub mod segment;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod states;
mod store;
mod table;
mod warm;

pub use checkpoint::{CheckpointInfo, Frozen};
pub use codec::Codec;
pub use disk::{Disk, DiskReader, DiskWriter, GlommioDisk};
pub use error::{AccessError, CheckpointError, Fault, MaintainError, OpenError};
pub use maintain::plan_compaction;
pub use states::{
    AggregateFunction, AggregatingState, ListState, MapState, ReducingState, TimerSet, ValueState,
};
pub use store::{IDENTITY_FILE, Store, StoreConfig, StoreStats, latest_checkpoint, state_id};
pub use table::{KeyGroupFn, Ns, Table, TableConfig, TableData};
pub use warm::{Restore, WARM_STEP_BYTES};
