//! The queries that rank bids with `ROW_NUMBER()`: q18's last bid per bidder and auction (a
//! deduplication) and q19's ten highest bids per auction (a Top-N). Both are updating results
//! over an unbounded stream in the SQL; over a bounded run each gives its final rows when the
//! input ends ([`Due::AtEnd`]), from a final aggregate whose accumulators are built before the
//! exchange and merged after it: per bidder, a hash map of its last bid on each auction (q18);
//! per auction, its ten best bids (q19).
//!
//! q18 keys its state by bidder, not by bidder and auction: the pairs are nearly as many as
//! the bids' third (29 M at 100 M events), and as state-store entries of their own they outgrew
//! the store's memory budget, which slowed the run threefold as entries were evicted and read
//! back; one map per bidder holds them in a fraction of the memory.
//!
//! # Ties
//!
//! `ROW_NUMBER()` numbers rows with equal `ORDER BY` values in no defined order, so the SQL's
//! result is not determined by its input when two bids tie. Here the stream order decides, as
//! it does in Flink's operators for these queries on one partition: the later event of two
//! bids with equal `dateTime` is q18's last bid (Flink's keep-last-row deduplication replaces
//! its row on an equal time), and the earlier event of two bids with equal prices ranks first
//! in q19 (Flink's Top-N keeps earlier rows ahead of equal ones). An event's place in the
//! stream is its number ([`Bid::event_number`]), the same on any number of workers.

use std::collections::HashMap;
use std::fmt::{self, Display};

use rustc_hash::FxBuildHasher;
use sluice::ops::Pipe;
use sluice::{AggregateFunction, DataStream, Head};

use super::{Due, RowOutput};
use crate::nexmark::model::{Bid, Event};

/// q18, the last bid of each bidder on each auction:
///
/// ```sql
/// SELECT auction, bidder, price, channel, url, dateTime, extra
/// FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY dateTime DESC)
///       AS rank_number FROM bid)
/// WHERE rank_number <= 1;
/// ```
///
/// Its final rows, one per bidder and auction, when the input ends; of bids with the same
/// latest `dateTime`, the later event is the last (see the module's *Ties*).
pub fn q18<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events
        .flat_map(Event::bid)
        .key_by(|b: &Bid| b.bidder)
        .emit_final()
        .aggregate(LastBids)
        .flat_map(|last: Vec<Bid>| last.into_iter().map(BidDetails));
    out.rows(rows, Due::AtEnd);
}

/// A bidder's last bid on each auction, by auction.
#[derive(Clone, Copy, Debug, Default)]
pub struct LastBids;

impl LastBids {
    #[inline]
    fn insert(last: &mut HashMap<u64, Bid, FxBuildHasher>, bid: Bid) {
        last.entry(bid.auction)
            .and_modify(|b| *b = later(*b, bid))
            .or_insert(bid);
    }
}

impl AggregateFunction<Bid> for LastBids {
    type Acc = HashMap<u64, Bid, FxBuildHasher>;
    type Out = Vec<Bid>;
    fn create_accumulator(&self) -> Self::Acc {
        HashMap::default()
    }
    #[inline]
    fn add(&self, acc: &mut Self::Acc, bid: Bid) {
        LastBids::insert(acc, bid);
    }
    fn merge(&self, acc: &mut Self::Acc, mut other: Self::Acc) {
        if other.len() > acc.len() {
            std::mem::swap(acc, &mut other);
        }
        for bid in other.into_values() {
            LastBids::insert(acc, bid);
        }
    }
    fn get_result(&self, acc: &Self::Acc) -> Vec<Bid> {
        acc.values().copied().collect()
    }
}

/// The later of two bids: the greater `dateTime`, then the later event.
fn later(a: Bid, b: Bid) -> Bid {
    if (b.date_time, b.event_number()) > (a.date_time, a.event_number()) {
        b
    } else {
        a
    }
}

/// A row of q18: a bid's `auction,bidder,price,channel,url,dateTime,extra`.
#[derive(Clone, Copy, Debug)]
pub struct BidDetails(pub Bid);

impl Display for BidDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        let (a, bidder, p, c, u) = (b.auction, b.bidder, b.price, b.channel, b.url);
        write!(f, "{a},{bidder},{p},{c},{u},{},{}", b.date_time, b.extra)
    }
}

/// How many bids per auction q19 keeps.
pub const Q19_TOP: usize = 10;

/// q19, the ten highest bids of each auction:
///
/// ```sql
/// SELECT * FROM
/// (SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number
///  FROM bid)
/// WHERE rank_number <= 10;
/// ```
///
/// Its final rows when the input ends: each auction's ten highest bids (all of them when it
/// has fewer), numbered 1 to 10; of bids with equal prices, the earlier event ranks first
/// (see the module's *Ties*).
pub fn q19<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events
        .flat_map(Event::bid)
        .key_by(|b: &Bid| b.auction)
        .emit_final()
        .aggregate(TopBids)
        .flat_map(|top: Vec<Bid>| {
            top.into_iter()
                .zip(1..)
                .map(|(bid, rank)| Q19Row { bid, rank })
        });
    out.rows(rows, Due::AtEnd);
}

/// An auction's highest bids, at most [`Q19_TOP`], in rank order: price descending, then
/// event number ascending.
#[derive(Clone, Copy, Debug, Default)]
pub struct TopBids;

/// Whether `a` ranks ahead of `b` in q19.
#[inline]
fn ranks_ahead(a: &Bid, b: &Bid) -> bool {
    a.price > b.price || (a.price == b.price && a.event_number() < b.event_number())
}

impl TopBids {
    #[inline]
    fn insert(top: &mut Vec<Bid>, bid: Bid) {
        if top.len() == Q19_TOP && top.last().is_some_and(|last| !ranks_ahead(&bid, last)) {
            return;
        }
        let at = top.partition_point(|x| ranks_ahead(x, &bid));
        top.insert(at, bid);
        top.truncate(Q19_TOP);
    }
}

impl AggregateFunction<Bid> for TopBids {
    type Acc = Vec<Bid>;
    type Out = Vec<Bid>;
    fn create_accumulator(&self) -> Vec<Bid> {
        Vec::new()
    }
    #[inline]
    fn add(&self, acc: &mut Vec<Bid>, bid: Bid) {
        TopBids::insert(acc, bid);
    }
    fn merge(&self, acc: &mut Vec<Bid>, other: Vec<Bid>) {
        for bid in other {
            TopBids::insert(acc, bid);
        }
    }
    fn get_result(&self, acc: &Vec<Bid>) -> Vec<Bid> {
        acc.clone()
    }
}

/// A row of q19: `auction,bidder,price,channel,url,dateTime,extra,rank_number`.
#[derive(Clone, Copy, Debug)]
pub struct Q19Row {
    /// The bid.
    pub bid: Bid,
    /// Its rank in its auction, from 1.
    pub rank: u64,
}

impl Display for Q19Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", BidDetails(self.bid), self.rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexmark::model::{LazyText, Sym};

    fn bid(n: u64, price: u64, date_time: i64) -> Bid {
        Bid {
            auction: 1,
            bidder: 2,
            price,
            channel: Sym(0),
            url: Sym(0),
            date_time,
            extra: LazyText::new(n, 0, 0),
        }
    }

    /// Any order of adding and merging gives the same ten, ties by event number.
    #[test]
    fn top_bids_rank_ties_by_the_earlier_event() {
        let prices = [7, 3, 7, 9, 7, 1, 9, 7, 7, 3, 7, 7, 2, 7, 9];
        let bids: Vec<Bid> = (0..).zip(prices).map(|(n, p)| bid(n, p, 0)).collect();
        let mut expected = bids.clone();
        expected.sort_by_key(|b| (std::cmp::Reverse(b.price), b.event_number()));
        expected.truncate(Q19_TOP);
        let ranked = |top: Vec<Bid>| -> Vec<(u64, u64)> {
            top.iter().map(|b| (b.price, b.event_number())).collect()
        };
        for split in 0..bids.len() {
            let (mut a, mut b) = (TopBids.create_accumulator(), TopBids.create_accumulator());
            for x in bids[..split].iter().rev() {
                TopBids.add(&mut a, *x);
            }
            for x in &bids[split..] {
                TopBids.add(&mut b, *x);
            }
            TopBids.merge(&mut b, a);
            assert_eq!(ranked(b), ranked(expected.clone()), "split at {split}");
        }
    }

    #[test]
    fn last_bids_keep_one_per_auction_whatever_the_merges() {
        let mut bids: Vec<Bid> = (0..12).map(|n| bid(n, n, (n % 3) as i64)).collect();
        for (n, b) in bids.iter_mut().enumerate() {
            b.auction = n as u64 % 2;
        }
        for split in 0..=bids.len() {
            let (mut a, mut b) = (LastBids.create_accumulator(), LastBids.create_accumulator());
            bids[..split].iter().for_each(|x| LastBids.add(&mut a, *x));
            bids[split..]
                .iter()
                .rev()
                .for_each(|x| LastBids.add(&mut b, *x));
            LastBids.merge(&mut a, b);
            let mut last: Vec<(u64, u64)> = LastBids
                .get_result(&a)
                .iter()
                .map(|b| (b.auction, b.event_number()))
                .collect();
            last.sort();
            // Auction 0's bids are the even events, at times 0, 2, 1, 0, 2, 1: the latest
            // time, 2, is events 2 and 8; auction 1's, times 1, 0, 2, …: events 5 and 11.
            assert_eq!(last, vec![(0, 8), (1, 11)], "split at {split}");
        }
    }

    #[test]
    fn the_later_event_of_equal_times_is_the_last_bid() {
        let (a, b, c) = (bid(4, 1, 10), bid(9, 2, 10), bid(2, 3, 11));
        assert_eq!(later(a, b).event_number(), 9);
        assert_eq!(later(b, a).event_number(), 9);
        assert_eq!(later(later(a, c), b).event_number(), 2);
    }
}
