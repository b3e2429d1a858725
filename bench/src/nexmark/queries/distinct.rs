//! The queries of distinct counts with filters: q15's bidding statistics per day and q16's per
//! channel and day — `count(*)`, `count(distinct bidder)` and `count(distinct auction)`, each
//! in total and `FILTER`ed to three price ranks. Both are unbounded `GROUP BY`s in the SQL;
//! over a bounded run each gives its final rows, one per group, when the input ends
//! ([`Due::AtEnd`]).
//!
//! # Two stages, as Flink splits distinct aggregates
//!
//! Each bid becomes two records: one keyed by its group and bidder, one by its group and
//! auction, each holding the price ranks the bid falls in (the bidder's also counts the bid).
//! A final reduce per such key (combined before its exchange) leaves one value per distinct
//! bidder or auction of a group, with every rank it bid in; a second final reduce per group
//! counts them. No set of bidders is ever built, and each stage sends one value per key and
//! worker.
//!
//! The price ranks are the SQL's filters: rank 1 `price < 10000`, rank 2 `price >= 10000 and
//! price < 1000000`, rank 3 `price >= 1000000`.

use std::fmt::{self, Display};

use sluice::ops::Pipe;
use sluice::{CompactString, DataStream, Head, Key};

use super::stateless::{epoch_day, write_date, write_hour_minute};
use super::{Due, RowOutput};
use crate::nexmark::model::{Bid, Event};

/// q15, bidding statistics per day:
///
/// ```sql
/// SELECT DATE_FORMAT(dateTime, 'yyyy-MM-dd') as `day`,
///      count(*) AS total_bids,
///      count(*) filter (where price < 10000) AS rank1_bids,
///      count(*) filter (where price >= 10000 and price < 1000000) AS rank2_bids,
///      count(*) filter (where price >= 1000000) AS rank3_bids,
///      count(distinct bidder) AS total_bidders,
///      count(distinct bidder) filter (where price < 10000) AS rank1_bidders,
///      ... (rank2_bidders, rank3_bidders, and the same four of auction)
/// FROM bid GROUP BY DATE_FORMAT(dateTime, 'yyyy-MM-dd');
/// ```
///
/// Its final rows, one per day (UTC), when the input ends.
pub fn q15<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    distinct_stats(
        events,
        |b: &Bid| epoch_day(b.date_time),
        |day, stats| Q15Row { day, stats },
        out,
    );
}

/// q16, channel statistics per day: q15's columns per channel and day, after the channel, the
/// day and `max(DATE_FORMAT(dateTime, 'HH:mm')) as minute` —
///
/// ```sql
/// SELECT channel, DATE_FORMAT(dateTime, 'yyyy-MM-dd') as `day`,
///     max(DATE_FORMAT(dateTime, 'HH:mm')) as `minute`,
///     count(*) AS total_bids, ... (as q15)
/// FROM bid GROUP BY channel, DATE_FORMAT(dateTime, 'yyyy-MM-dd');
/// ```
///
/// Its final rows, one per channel (its string, as it is) and day (UTC), when the input ends.
/// Within a day the greatest `HH:mm` is the latest bid's.
pub fn q16<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    distinct_stats(
        events,
        |b: &Bid| {
            (
                CompactString::new(b.channel.as_str()),
                epoch_day(b.date_time),
            )
        },
        |(channel, day), stats| Q16Row {
            channel,
            day,
            stats,
        },
        out,
    );
}

/// The two stages of q15 and q16 over the groups `group` gives each bid; `row` makes a group's
/// row of its statistics.
fn distinct_stats<H, P, G, R>(
    events: DataStream<H, P>,
    group: impl Fn(&Bid) -> G + Clone + Send + Sync + 'static,
    row: impl Fn(G, Stats) -> R + Clone + Send + Sync + 'static,
    out: &impl RowOutput,
) where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
    G: Key + Sync + 'static,
    R: Display + Send + 'static,
{
    let rows = events
        .flat_map_into(move |e: Event, out: &mut Vec<((G, u64), Seen)>| {
            let Some(b) = e.bid() else { return };
            let ranks = rank_bit(b.price);
            let mut bids = [0; 3];
            bids[ranks.trailing_zeros() as usize] = 1;
            let latest = b.date_time;
            let bidder = Seen {
                ranks,
                bids,
                latest,
            };
            let auction = Seen {
                bids: [0; 3],
                ..bidder
            };
            let g = group(&b);
            out.push(((g.clone(), b.bidder << 1), bidder));
            out.push(((g, (b.auction << 1) | 1), auction));
        })
        .into_keyed()
        .emit_final()
        .reduce(Seen::merge)
        .map(|((g, who), seen): ((G, u64), Seen)| (g, Stats::of(who & 1 == 1, seen)))
        .into_keyed()
        .emit_final()
        .reduce(Stats::merge)
        .map(move |(g, stats)| row(g, stats));
    out.rows(rows, Due::AtEnd);
}

/// The bit of the price rank `price` falls in: 1, 2 or 4 for ranks 1, 2 and 3.
#[inline]
fn rank_bit(price: u64) -> u8 {
    if price < 10_000 {
        1
    } else if price < 1_000_000 {
        2
    } else {
        4
    }
}

/// What a group holds of one of its bidders (or auctions): the price ranks of its bids, as
/// bits; its bids per rank (a bidder's only, so each bid counts once); its latest bid's time.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    sluice::rkyv::Archive,
    sluice::rkyv::Serialize,
    sluice::rkyv::Deserialize,
)]
#[rkyv(crate = sluice::rkyv)]
pub struct Seen {
    ranks: u8,
    bids: [u64; 3],
    latest: i64,
}

impl Seen {
    fn merge(a: Seen, b: Seen) -> Seen {
        Seen {
            ranks: a.ranks | b.ranks,
            bids: [
                a.bids[0] + b.bids[0],
                a.bids[1] + b.bids[1],
                a.bids[2] + b.bids[2],
            ],
            latest: a.latest.max(b.latest),
        }
    }
}

/// A group's statistics: its bids per rank; its distinct bidders and auctions, in total and
/// per rank; its latest bid's time.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    sluice::rkyv::Archive,
    sluice::rkyv::Serialize,
    sluice::rkyv::Deserialize,
)]
#[rkyv(crate = sluice::rkyv)]
pub struct Stats {
    bids: [u64; 3],
    bidders: [u64; 4],
    auctions: [u64; 4],
    latest: i64,
}

impl Stats {
    /// One distinct bidder's (or auction's) share of its group's statistics.
    fn of(auction: bool, seen: Seen) -> Stats {
        let bit = |i: u8| u64::from(seen.ranks >> i & 1);
        let counts = [1, bit(0), bit(1), bit(2)];
        let (bidders, auctions) = match auction {
            false => (counts, [0; 4]),
            true => ([0; 4], counts),
        };
        Stats {
            bids: seen.bids,
            bidders,
            auctions,
            latest: seen.latest,
        }
    }

    fn merge(a: Stats, b: Stats) -> Stats {
        let add = |x: [u64; 4], y: [u64; 4]| std::array::from_fn(|i| x[i] + y[i]);
        Stats {
            bids: std::array::from_fn(|i| a.bids[i] + b.bids[i]),
            bidders: add(a.bidders, b.bidders),
            auctions: add(a.auctions, b.auctions),
            latest: a.latest.max(b.latest),
        }
    }
}

impl Display for Stats {
    /// The twelve counts: `total_bids,rank1_bids,…,rank3_auctions`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r1, r2, r3] = self.bids;
        write!(f, "{},{r1},{r2},{r3}", r1 + r2 + r3)?;
        for [total, r1, r2, r3] in [self.bidders, self.auctions] {
            write!(f, ",{total},{r1},{r2},{r3}")?;
        }
        Ok(())
    }
}

/// A row of q15: `day,total_bids,rank1_bids,rank2_bids,rank3_bids,total_bidders,
/// rank1_bidders,rank2_bidders,rank3_bidders,total_auctions,rank1_auctions,rank2_auctions,
/// rank3_auctions`.
#[derive(Clone, Copy, Debug)]
pub struct Q15Row {
    day: i64,
    stats: Stats,
}

impl Display for Q15Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_date(f, self.day)?;
        write!(f, ",{}", self.stats)
    }
}

/// A row of q16: `channel,day,minute,` and q15's twelve counts.
#[derive(Clone, Debug)]
pub struct Q16Row {
    channel: CompactString,
    day: i64,
    stats: Stats,
}

impl Display for Q16Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},", self.channel)?;
        write_date(f, self.day)?;
        f.write_str(",")?;
        write_hour_minute(f, self.stats.latest)?;
        write!(f, ",{}", self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_ranks_follow_the_filters() {
        assert_eq!(rank_bit(0), 1);
        assert_eq!(rank_bit(9_999), 1);
        assert_eq!(rank_bit(10_000), 2);
        assert_eq!(rank_bit(999_999), 2);
        assert_eq!(rank_bit(1_000_000), 4);
    }

    #[test]
    fn a_group_counts_each_bidder_once_per_rank() {
        let seen = |ranks, bids, latest| Seen {
            ranks,
            bids,
            latest,
        };
        let bidder = Seen::merge(seen(1, [1, 0, 0], 5), seen(4, [0, 0, 2], 9));
        let auction = Seen::merge(seen(1, [0; 3], 5), seen(1, [0; 3], 7));
        let stats = Stats::merge(Stats::of(false, bidder), Stats::of(true, auction));
        assert_eq!(stats.to_string(), "3,1,0,2,1,1,0,1,1,1,0,0");
        assert_eq!(stats.latest, 9);
    }
}
