//! `sluice-state`: the per-core log-structured state store.
//!
//! Nothing lives here yet: until the state-store issue lands, keyed operators keep their state
//! in per-worker hash maps inside `sluice-core` (`keyed.rs`), behind the operators' own
//! interface, so that moving it here changes no user code. The planned shape — a hot tier in
//! memory indexed by (state id, key group, key), an append-only log of crc32-framed segment
//! files written with io_uring, incremental checkpoints through an atomically written manifest,
//! compaction, a memory budget with eviction, TTL, and key-group-range restores for
//! rescaling — is described in ARCHITECTURE.md and the project's DESIGN.md.
#![forbid(unsafe_code)]
