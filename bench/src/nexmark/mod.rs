//! The Nexmark event generator: persons, auctions and bids, deterministic per event number,
//! splittable across workers and replayable from any position.
//!
//! # Event `n`
//!
//! The stream is the sequence of events numbered 0, 1, 2, … ("event `n`", which is also its
//! id). Event `n` is a function of `n` and the [`NexmarkConfig`] alone:
//!
//! - its kind is `n mod 50`: 0 a person, 1 to 3 an auction, 4 to 49 a bid (1:3:46);
//! - its ids come from arithmetic on `n`: the person of round `n / 50` has id `1000 + n / 50`,
//!   and auctions and bids refer to recent persons and auctions, to the first of each batch of
//!   100 most of the time (hot sellers, hot bidders, hot auctions);
//! - its time is `base_time_ms` plus `n` times the inter-event delay of the event-time rate,
//!   computed in `f32` as the reference does (at 10 M events/s, a millisecond holds 10,000
//!   events; timestamps never decrease);
//! - every other field comes from a random sequence seeded with `n` (rand 0.8's `SmallRng`, see
//!   `rng.rs`), so no event depends on another and no state carries from one to the next.
//!
//! # The determinism contract
//!
//! [`Generator::event`]`(n)` equals, field for field, event `n` of the `nexmark` crate 0.2.0 (a
//! Rust port of the Nexmark suite's Java generator) run with the crate's defaults, the same
//! base time and the same first and next event rates; `tests/nexmark_reference.rs` checks the
//! first 100,000 events and others further on. It is the same on every run, every thread and
//! every worker count, so any engine fed from the crate (or from this module) sees the very
//! same events. One caveat: prices go through `f32::powf`, which comes from the platform's
//! libm; glibc and musl share one implementation, other platforms could round a price
//! differently in rare cases, exactly as the crate would.
//!
//! Long strings (`description`, `extra`) are [`LazyText`]s: drawn only when asked for, always
//! the same letters; strings from fixed lists are interned [`Sym`]s. Every record type is
//! `Copy` and owns no heap memory: a [`Bid`] is 48 bytes, an [`Event`] 112.
//!
//! # What the defaults produce
//!
//! At 10 M events/s of event time, a millisecond holds 10,000 events (events 0 to 4,999 fall
//! on the base time itself), and an auction expires 1 or 2 ms after it opens: the crate sets
//! an auction's length from the time 1,666 more events take, as the Java generator does.
//! Names, cities and states are lower case (Java capitalises them; states are "az", "ca",
//! "id", "or", "wa", "wy"), item names and descriptions are exactly 20 and 100 letters with no
//! spaces (Java draws shorter ones with spaces).
//!
//! # Splitting and replay
//!
//! [`NexmarkSource`] gives each of `w` workers the events `n ≡ i (mod w)`; a reader's position
//! is the next event number, and reading from position `p` yields exactly the events `≥ p` of
//! its split.
//!
//! ```no_run
//! use sluice::Env;
//! use sluice_bench::nexmark::{Event, NexmarkConfig, NexmarkSource};
//!
//! let env = Env::new();
//! let cfg = NexmarkConfig {
//!     events: Some(10_000_000),
//!     ..NexmarkConfig::default()
//! };
//! env.from_source(NexmarkSource::new(cfg))
//!     .flat_map(Event::bid)
//!     .map(|b| (b.auction, b.price, b.channel.as_str(), b.date_time))
//!     .print();
//! env.execute("bids")?;
//! # Ok::<(), sluice::Error>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod generator;
mod model;
pub mod queries;
mod rng;
pub mod run;
mod source;
mod tables;

pub use generator::{Generator, NexmarkConfig, PROPORTION_DENOMINATOR};
pub use model::{Auction, Bid, Event, EventKind, FixedStr, LazyText, Person, Sym};
pub use source::{NexmarkEvents, NexmarkReader, NexmarkSource, NexmarkSplit};
