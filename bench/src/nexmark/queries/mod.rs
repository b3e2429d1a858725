//! The Nexmark queries on the DataStream API, each a function that builds its pipeline from a
//! stream of [`Event`]s and hands its result rows to a [`RowOutput`], so that the tests, the
//! benchmark runner and `--output` all run the same code.
//!
//! Each query follows the SQL of the nexmark repository (`nexmark-flink/src/main/resources/
//! queries/qN.sql`), as its doc comment says; rows are written with their fields in the order
//! of the query's SELECT list (see [`Query::columns`]), comma-separated, timestamps as epoch
//! milliseconds, decimals plainly.
//!
//! # Event time
//!
//! As in the suite's DDL, every query reads one table of events whose watermark is
//! `dateTime - INTERVAL '4' SECOND`: the watermark is the largest `dateTime` seen less 4,000 ms,
//! and a record at or behind it is late ([`nexmark_watermarks`]). The generator's splits are
//! each in time order, so no record is ever late.
//!
//! # Bounded runs and changelogs
//!
//! A query whose SQL is an unbounded `GROUP BY` (q4's average per category, q15's and q16's
//! statistics per day) or a ranking over an unbounded stream (q18's last bid, q19's Top-N)
//! produces a changelog in Flink: a new value per group after every input. Over a bounded run
//! it is represented here by its final rows only, emitted when the input ends — the rows the
//! changelog's last state holds. Joins and windows emit as the watermark allows, the same rows
//! the SQL produces, each once.
//!
//! # On a cluster
//!
//! [`Query::build`] registers every record type its exchanges move with
//! [`register_wire_types`], so each query runs across nodes too. Symbols cross as their
//! strings (see [`Sym`]).

pub mod distinct;
pub mod hot_items;
pub mod joins;
pub mod ranks;
pub mod stateless;
pub mod windows;

use std::fmt::Display;

use sluice::ops::Pipe;
use sluice::{
    BoundedOutOfOrderness, DataStream, Env, Head, Source, TimestampAssigner, WatermarkStrategy,
};

use super::model::{Auction, Bid, Event, Person, Sym};
use joins::{AuctionOrBid, PriceAt, Q3In, Q4Auction};
use windows::{Highest, Q7Bid};

/// Registers, with `sluice::register_wire_type`, the record types that the queries move
/// through exchanges and window partials beyond those the API registers itself (keys, values
/// of keyed aggregations): what lets a query run on a cluster. Idempotent; [`Query::build`]
/// calls it.
pub fn register_wire_types() {
    use sluice::register_wire_type as wire;
    wire::<Event>();
    wire::<Person>();
    wire::<Auction>();
    wire::<Bid>();
    wire::<Sym>();
    wire::<()>();
    wire::<u64>();
    wire::<(u64, u64)>();
    // q3
    wire::<Q3In>();
    // q4, q9 and q20
    wire::<(u64, AuctionOrBid<Q4Auction, PriceAt>)>();
    wire::<(u64, AuctionOrBid<Auction, Bid>)>();
    // q5 (and its incremental variant): the most bids per window and its auctions
    wire::<(u64, Vec<u64>)>();
    // q7
    wire::<Q7Bid>();
    wire::<Highest>();
    // q8
    wire::<Option<Sym>>();
    wire::<(Option<Sym>, bool)>();
}

/// How far the watermark trails the largest `dateTime` seen: the DDL's `INTERVAL '4' SECOND`.
pub const WATERMARK_DELAY_MS: i64 = 4_000;

/// The DDL's watermark, `dateTime - INTERVAL '4' SECOND`: the largest timestamp seen less
/// 4,000 ms. Sluice's (and Flink's DataStream) bounded out-of-orderness generator emits
/// `max − d − 1`, so `d` is 3,999. Timestamps are the source's (each event's `date_time`).
pub fn nexmark_watermarks()
-> WatermarkStrategy<impl TimestampAssigner<Event>, BoundedOutOfOrderness> {
    WatermarkStrategy::for_bounded_out_of_orderness(WATERMARK_DELAY_MS - 1)
        .with_timestamp_assigner(|e: &Event| e.date_time())
}

/// When a query's row is *due*: the earliest moment the engine could produce it, from which the
/// benchmark's latency is measured. A row's timestamp (which the engine carries beside every
/// record) says which event made it due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Computed from records alone (a projection, a regular join): due when the event with the
    /// row's timestamp (the latest of its inputs) is generated.
    OnRecord,
    /// Fired by the watermark (a window, a timer): the row's timestamp is the window's last
    /// instant (or the timer's time), and the watermark passes it once an event
    /// [`WATERMARK_DELAY_MS`] later is generated.
    OnWatermark,
    /// Fired by processing time (q12): the row's timestamp is the window's last millisecond on
    /// the wall clock.
    OnProcessingTime,
    /// A final value of an unbounded aggregation, emitted when the input ends: no latency.
    AtEnd,
}

/// Where a query's rows go: the benchmark's counting, latency and file sinks, or a test's
/// collection. `due` says how the rows become due (for latency).
pub trait RowOutput {
    /// Ends the query's stream of rows.
    fn rows<H, P>(&self, rows: DataStream<H, P>, due: Due)
    where
        H: Head,
        P: Pipe<H::Item>,
        P::Out: Display + Send + 'static;
}

/// A Nexmark query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Query {
    /// Pass-through.
    Q0,
    /// Currency conversion.
    Q1,
    /// Selection.
    Q2,
    /// Local item suggestion: a regular join of persons and auctions.
    Q3,
    /// Average price per category.
    Q4,
    /// Hot items: sliding windows.
    Q5,
    /// Hot items (q5's rows), with an incremental operator instead of the window operator.
    Q5Inc,
    /// Highest bid: tumbling windows.
    Q7,
    /// Monitor new users: a window join.
    Q8,
    /// Winning bids.
    Q9,
    /// Log to a file system: bids with their day and minute.
    Q10,
    /// User sessions: session windows.
    Q11,
    /// Processing-time windows.
    Q12,
    /// Bidding statistics per time of day (filter and projection).
    Q14,
    /// Bidding statistics per day: distinct counts with filters.
    Q15,
    /// Channel statistics per day: q15's counts per channel.
    Q16,
    /// Auction statistics per day.
    Q17,
    /// The last bid of each bidder on each auction: a deduplication.
    Q18,
    /// The ten highest bids of each auction: a Top-N.
    Q19,
    /// Expanded bids: a regular join of bids and auctions.
    Q20,
    /// Channel ids from URLs.
    Q21,
    /// URL directories.
    Q22,
}

impl Query {
    /// Every implemented query, in order.
    pub const ALL: &'static [Query] = &[
        Query::Q0,
        Query::Q1,
        Query::Q2,
        Query::Q3,
        Query::Q4,
        Query::Q5,
        Query::Q5Inc,
        Query::Q7,
        Query::Q8,
        Query::Q9,
        Query::Q10,
        Query::Q11,
        Query::Q12,
        Query::Q14,
        Query::Q15,
        Query::Q16,
        Query::Q17,
        Query::Q18,
        Query::Q19,
        Query::Q20,
        Query::Q21,
        Query::Q22,
    ];

    /// Its name: `q0`, `q1`, …
    pub fn name(self) -> &'static str {
        match self {
            Query::Q0 => "q0",
            Query::Q1 => "q1",
            Query::Q2 => "q2",
            Query::Q3 => "q3",
            Query::Q4 => "q4",
            Query::Q5 => "q5",
            Query::Q5Inc => "q5-inc",
            Query::Q7 => "q7",
            Query::Q8 => "q8",
            Query::Q9 => "q9",
            Query::Q10 => "q10",
            Query::Q11 => "q11",
            Query::Q12 => "q12",
            Query::Q14 => "q14",
            Query::Q15 => "q15",
            Query::Q16 => "q16",
            Query::Q17 => "q17",
            Query::Q18 => "q18",
            Query::Q19 => "q19",
            Query::Q20 => "q20",
            Query::Q21 => "q21",
            Query::Q22 => "q22",
        }
    }

    /// Its built-in job's name for `sluice run`: `nexmark-q0`, `nexmark-q1`, …
    pub fn job_name(self) -> &'static str {
        match self {
            Query::Q0 => "nexmark-q0",
            Query::Q1 => "nexmark-q1",
            Query::Q2 => "nexmark-q2",
            Query::Q3 => "nexmark-q3",
            Query::Q4 => "nexmark-q4",
            Query::Q5 => "nexmark-q5",
            Query::Q5Inc => "nexmark-q5-inc",
            Query::Q7 => "nexmark-q7",
            Query::Q8 => "nexmark-q8",
            Query::Q9 => "nexmark-q9",
            Query::Q10 => "nexmark-q10",
            Query::Q11 => "nexmark-q11",
            Query::Q12 => "nexmark-q12",
            Query::Q14 => "nexmark-q14",
            Query::Q15 => "nexmark-q15",
            Query::Q16 => "nexmark-q16",
            Query::Q17 => "nexmark-q17",
            Query::Q18 => "nexmark-q18",
            Query::Q19 => "nexmark-q19",
            Query::Q20 => "nexmark-q20",
            Query::Q21 => "nexmark-q21",
            Query::Q22 => "nexmark-q22",
        }
    }

    /// The query named `name` (`q5` or `Q5`).
    pub fn parse(name: &str) -> Option<Query> {
        Query::ALL
            .iter()
            .copied()
            .find(|q| q.name().eq_ignore_ascii_case(name))
    }

    /// The columns of its rows, in order: the SELECT list.
    pub fn columns(self) -> &'static str {
        match self {
            Query::Q0 => "auction,bidder,price,dateTime,extra",
            Query::Q1 => "auction,bidder,price,dateTime,extra",
            Query::Q2 => "auction,price",
            Query::Q3 => "name,city,state,id",
            Query::Q4 => "category,avg",
            Query::Q5 | Query::Q5Inc => "auction,num",
            Query::Q7 => "auction,price,bidder,dateTime,extra",
            Query::Q8 => "id,name,starttime",
            Query::Q9 => {
                "id,itemName,description,initialBid,reserve,dateTime,expires,seller,category,\
                 extra,auction,bidder,price,bid_dateTime,bid_extra"
            }
            Query::Q10 => "auction,bidder,price,dateTime,extra,dt,hm",
            Query::Q11 | Query::Q12 => "bidder,bid_count,starttime,endtime",
            Query::Q14 => "auction,bidder,price,bidTimeType,dateTime,extra,c_counts",
            Query::Q15 => {
                "day,total_bids,rank1_bids,rank2_bids,rank3_bids,total_bidders,rank1_bidders,\
                 rank2_bidders,rank3_bidders,total_auctions,rank1_auctions,rank2_auctions,\
                 rank3_auctions"
            }
            Query::Q16 => {
                "channel,day,minute,total_bids,rank1_bids,rank2_bids,rank3_bids,total_bidders,\
                 rank1_bidders,rank2_bidders,rank3_bidders,total_auctions,rank1_auctions,\
                 rank2_auctions,rank3_auctions"
            }
            Query::Q17 => {
                "auction,day,total_bids,rank1_bids,rank2_bids,rank3_bids,min_price,max_price,\
                 avg_price,sum_price"
            }
            Query::Q18 => "auction,bidder,price,channel,url,dateTime,extra",
            Query::Q19 => "auction,bidder,price,channel,url,dateTime,extra,rank_number",
            Query::Q20 => {
                "auction,bidder,price,channel,url,bid_dateTime,bid_extra,itemName,description,\
                 initialBid,reserve,auction_dateTime,expires,seller,category,auction_extra"
            }
            Query::Q21 => "auction,bidder,price,channel,channel_id",
            Query::Q22 => "auction,bidder,price,channel,dir1,dir2,dir3",
        }
    }

    /// How its rows become due.
    pub fn due(self) -> Due {
        match self {
            Query::Q0
            | Query::Q1
            | Query::Q2
            | Query::Q3
            | Query::Q10
            | Query::Q14
            | Query::Q20
            | Query::Q21
            | Query::Q22 => Due::OnRecord,
            Query::Q4 | Query::Q15 | Query::Q16 | Query::Q17 | Query::Q18 | Query::Q19 => {
                Due::AtEnd
            }
            Query::Q5 | Query::Q5Inc | Query::Q7 | Query::Q8 | Query::Q9 | Query::Q11 => {
                Due::OnWatermark
            }
            Query::Q12 => Due::OnProcessingTime,
        }
    }

    /// Builds the query on `env`: `source`'s events, stamped with their `date_time` and
    /// given the DDL's watermarks, through the query's operators into `out`; registers the
    /// record types that cross nodes ([`register_wire_types`]).
    pub fn build<S: Source<Item = Event>>(self, env: &Env, source: S, out: &impl RowOutput) {
        register_wire_types();
        let events = env
            .from_source(source)
            .assign_timestamps_and_watermarks(nexmark_watermarks());
        match self {
            Query::Q0 => stateless::q0(events, out),
            Query::Q1 => stateless::q1(events, out),
            Query::Q2 => stateless::q2(events, out),
            Query::Q3 => joins::q3(events, out),
            Query::Q4 => joins::q4(events, out),
            Query::Q5 => windows::q5(events, out),
            Query::Q5Inc => hot_items::q5_incremental(events, out),
            Query::Q7 => windows::q7(events, out),
            Query::Q8 => windows::q8(events, out),
            Query::Q9 => joins::q9(events, out),
            Query::Q10 => stateless::q10(events, out),
            Query::Q11 => windows::q11(events, out),
            Query::Q12 => windows::q12(events, out),
            Query::Q14 => stateless::q14(events, out),
            Query::Q15 => distinct::q15(events, out),
            Query::Q16 => distinct::q16(events, out),
            Query::Q17 => stateless::q17(events, out),
            Query::Q18 => ranks::q18(events, out),
            Query::Q19 => ranks::q19(events, out),
            Query::Q20 => joins::q20(events, out),
            Query::Q21 => stateless::q21(events, out),
            Query::Q22 => stateless::q22(events, out),
        }
    }
}

/// Writes a price in cents times 0.908 — `DECIMAL(23, 3)` in the SQL — plainly, exactly: the
/// integer part, a point and three decimals (`0.908 * 1234` is `1120.472`).
pub fn write_price_eur(f: &mut std::fmt::Formatter<'_>, price: u64) -> std::fmt::Result {
    let thousandths = u128::from(price) * 908;
    write!(f, "{}.{:03}", thousandths / 1000, thousandths % 1000)
}

/// A `COUNT(*)` per key and window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Count;

impl<T> sluice::AggregateFunction<T> for Count {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    #[inline]
    fn add(&self, acc: &mut u64, _value: T) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for q in Query::ALL {
            assert_eq!(Query::parse(q.name()), Some(*q));
            assert_eq!(Query::parse(&q.name().to_uppercase()), Some(*q));
            assert_eq!(q.job_name().strip_prefix("nexmark-"), Some(q.name()));
        }
        assert_eq!(Query::parse("q6"), None);
    }

    #[test]
    fn euro_prices_are_exact_decimals() {
        struct P(u64);
        impl Display for P {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write_price_eur(f, self.0)
            }
        }
        assert_eq!(P(1234).to_string(), "1120.472");
        assert_eq!(P(1).to_string(), "0.908");
        assert_eq!(P(1000).to_string(), "908.000");
        assert_eq!(P(0).to_string(), "0.000");
    }
}
