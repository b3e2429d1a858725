//! The queries of distinct counts with filters: q15's bidding statistics per day and q16's per
//! channel and day — `count(*)`, `count(distinct bidder)` and `count(distinct auction)`, each
//! in total and `FILTER`ed to three price ranks. Both are unbounded `GROUP BY`s in the SQL;
//! over a bounded run each gives its final rows, one per group, when the input ends
//! ([`Due::AtEnd`]).
//!
//! # One set per group
//!
//! A final aggregate per group keeps, beside the group's bid counts and latest time, every
//! distinct bidder and auction of the group in a hash map, each with the price ranks of its
//! bids as bits; the counts come from one pass over the map when the input ends. Each worker
//! builds its groups' maps before the exchange and the owning worker merges them, so a bid
//! costs a few hash-map probes, and only the partial maps cross the exchange. (Splitting the
//! distinct counts into a keyed reduce per group and bidder, as Flink's planner does, puts
//! every distinct pair in the state store as its own entry: q16's pairs at 20 M events
//! outgrew the store's memory budget, and the run slowed fivefold as entries were evicted and
//! read back.)
//!
//! The price ranks are the SQL's filters: rank 1 `price < 10000`, rank 2 `price >= 10000 and
//! price < 1000000`, rank 3 `price >= 1000000`.

use std::collections::HashMap;
use std::fmt::{self, Display};

use rustc_hash::FxBuildHasher;
use sluice::ops::Pipe;
use sluice::{AggregateFunction, CompactString, DataStream, Head, Key, StateCodec};

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

/// q15's and q16's aggregate over the groups `group` gives each bid; `row` makes a group's
/// row of its statistics.
fn distinct_stats<H, P, G, F, R>(
    events: DataStream<H, P>,
    group: F,
    row: impl Fn(G, Stats) -> R + Clone + Send + Sync + 'static,
    out: &impl RowOutput,
) where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
    G: Key + StateCodec + Sync + 'static,
    F: Fn(&Bid) -> G + Clone + Send + Sync + 'static,
    R: Display + Send + 'static,
{
    let key = group.clone();
    let rows = events
        .flat_map(Event::bid)
        .key_by(move |b: &Bid| key(b))
        .emit_final()
        .aggregate(DistinctAgg(group))
        .flat_map(move |stats: Option<(G, Stats)>| stats.map(|(g, s)| row(g, s)));
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

/// A group's bids so far: the group (from its first bid), its bids per price rank, its latest
/// bid's time, and each of its bidders (`id << 1`) and auctions (`id << 1 | 1`) with the ranks
/// of its bids as bits.
#[derive(
    Clone, Debug, sluice::rkyv::Archive, sluice::rkyv::Serialize, sluice::rkyv::Deserialize,
)]
#[rkyv(crate = sluice::rkyv)]
pub struct Distinct<G> {
    group: Option<G>,
    bids: [u64; 3],
    latest: i64,
    seen: HashMap<u64, u8, FxBuildHasher>,
}

/// The aggregate of [`Distinct`] groups; `F` gives a bid's group.
#[derive(Clone)]
pub struct DistinctAgg<F>(F);

impl<G, F> AggregateFunction<Bid> for DistinctAgg<F>
where
    G: Clone + Send + 'static,
    F: Fn(&Bid) -> G + Clone + Send + Sync + 'static,
{
    type Acc = Distinct<G>;
    type Out = Option<(G, Stats)>;

    fn create_accumulator(&self) -> Distinct<G> {
        Distinct {
            group: None,
            bids: [0; 3],
            latest: i64::MIN,
            seen: HashMap::default(),
        }
    }

    #[inline]
    fn add(&self, acc: &mut Distinct<G>, b: Bid) {
        if acc.group.is_none() {
            acc.group = Some((self.0)(&b));
        }
        let rank = rank_bit(b.price);
        acc.bids[rank.trailing_zeros() as usize] += 1;
        acc.latest = acc.latest.max(b.date_time);
        *acc.seen.entry(b.bidder << 1).or_insert(0) |= rank;
        *acc.seen.entry((b.auction << 1) | 1).or_insert(0) |= rank;
    }

    fn merge(&self, acc: &mut Distinct<G>, mut other: Distinct<G>) {
        if other.seen.len() > acc.seen.len() {
            std::mem::swap(&mut acc.seen, &mut other.seen);
        }
        for (who, ranks) in other.seen {
            *acc.seen.entry(who).or_insert(0) |= ranks;
        }
        acc.group = acc.group.take().or(other.group);
        for (n, m) in acc.bids.iter_mut().zip(other.bids) {
            *n += m;
        }
        acc.latest = acc.latest.max(other.latest);
    }

    fn get_result(&self, acc: &Distinct<G>) -> Option<(G, Stats)> {
        let mut stats = Stats {
            bids: acc.bids,
            bidders: [0; 4],
            auctions: [0; 4],
            latest: acc.latest,
        };
        for (&who, &ranks) in &acc.seen {
            let counts = match who & 1 {
                0 => &mut stats.bidders,
                _ => &mut stats.auctions,
            };
            counts[0] += 1;
            for (i, n) in counts[1..].iter_mut().enumerate() {
                *n += u64::from(ranks >> i & 1);
            }
        }
        Some((acc.group.clone()?, stats))
    }
}

/// A group's statistics: its bids per rank; its distinct bidders and auctions, in total and
/// per rank; its latest bid's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    bids: [u64; 3],
    bidders: [u64; 4],
    auctions: [u64; 4],
    latest: i64,
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
    use crate::nexmark::model::{LazyText, Sym};

    #[test]
    fn price_ranks_follow_the_filters() {
        assert_eq!(rank_bit(0), 1);
        assert_eq!(rank_bit(9_999), 1);
        assert_eq!(rank_bit(10_000), 2);
        assert_eq!(rank_bit(999_999), 2);
        assert_eq!(rank_bit(1_000_000), 4);
    }

    fn bid(bidder: u64, auction: u64, price: u64, date_time: i64) -> Bid {
        Bid {
            auction,
            bidder,
            price,
            channel: Sym(0),
            url: Sym(0),
            date_time,
            extra: LazyText::default(),
        }
    }

    /// Any split of the bids into merged partials gives the same counts.
    #[test]
    fn a_group_counts_each_bidder_and_auction_once_per_rank() {
        let agg = DistinctAgg(|_: &Bid| 7_i64);
        let bids = [
            bid(1, 10, 5, 3),
            bid(1, 10, 50_000, 9),
            bid(2, 10, 5_000_000, 4),
            bid(1, 11, 7, 2),
            bid(3, 11, 70_000, 1),
        ];
        for split in 0..=bids.len() {
            let (mut a, mut b) = (agg.create_accumulator(), agg.create_accumulator());
            bids[..split].iter().for_each(|x| agg.add(&mut a, *x));
            bids[split..].iter().for_each(|x| agg.add(&mut b, *x));
            agg.merge(&mut a, b);
            let (group, stats) = agg.get_result(&a).unwrap();
            assert_eq!(group, 7);
            assert_eq!(
                stats.to_string(),
                "5,2,2,1,3,1,2,1,2,2,2,1",
                "split at {split}"
            );
            assert_eq!(stats.latest, 9);
        }
        assert_eq!(agg.get_result(&agg.create_accumulator()), None);
    }
}
