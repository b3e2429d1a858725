//! The windowed queries: q5 (sliding windows, then the hottest auctions of each window), q7
//! (tumbling windows: the bids at each window's highest price), q8 (a window join of persons
//! and auctions), q11 (session windows) and q12 (processing-time windows). Every window
//! aggregation here is incremental and pre-aggregated before its exchange.

use sluice::rkyv;
use std::fmt::{self, Display};

use sluice::ops::Pipe;
use sluice::{AggregateFunction, DataStream, Head, WatermarkStrategy, WindowAssigner};

use super::{Count, Due, RowOutput, WATERMARK_DELAY_MS};
use crate::nexmark::model::{Bid, Event, Sym};

/// q5, hot items: per sliding window of 10 s every 2 s, the auctions with the most bids —
/// every one of them when several tie:
///
/// ```sql
/// SELECT AuctionBids.auction, AuctionBids.num FROM (
///   SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
///   FROM TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
///   GROUP BY auction, window_start, window_end) AS AuctionBids
/// JOIN (SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime
///   FROM (…the same counts…) AS CountBids
///   GROUP BY CountBids.starttime, CountBids.endtime) AS MaxBids
/// ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime
///    AND AuctionBids.num >= MaxBids.maxn;
/// ```
///
/// Counts per auction and window (sliced: one update per bid, pre-aggregated per slice before
/// the exchange), then per window the largest count and the auctions that reach it: the
/// counts of window `[s, s + 10 s)` carry its last instant `s + 9,999` as their time, so a
/// tumbling window of 2 s holds exactly one sliding window's counts, and fires on the same
/// watermark. The SELECT list has no window columns: one row per hot auction and window.
pub fn q5<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events
        .flat_map(|e: Event| e.bid().map(|b| (b.auction, ())))
        .into_keyed()
        .window(WindowAssigner::sliding(10_000, 2_000))
        .aggregate(Count)
        .map(|w| (w.key, w.value))
        .window_all(WindowAssigner::tumbling(2_000))
        .aggregate(MaxTies)
        .flat_map(|w| {
            let (num, auctions) = w.value;
            auctions
                .into_iter()
                .map(move |auction| Q5Row { auction, num })
        });
    out.rows(rows, Due::OnWatermark);
}

/// The largest count of a window and the auctions that have it.
#[derive(Clone, Copy, Debug, Default)]
pub struct MaxTies;

impl AggregateFunction<(u64, u64)> for MaxTies {
    /// The largest count so far, and its auctions.
    type Acc = (u64, Vec<u64>);
    type Out = (u64, Vec<u64>);
    fn create_accumulator(&self) -> (u64, Vec<u64>) {
        (0, Vec::new())
    }
    #[inline]
    fn add(&self, acc: &mut (u64, Vec<u64>), (auction, count): (u64, u64)) {
        if count > acc.0 {
            acc.0 = count;
            acc.1.clear();
        }
        if count == acc.0 {
            acc.1.push(auction);
        }
    }
    fn merge(&self, acc: &mut (u64, Vec<u64>), other: (u64, Vec<u64>)) {
        if other.0 > acc.0 {
            *acc = other;
        } else if other.0 == acc.0 {
            acc.1.extend(other.1);
        }
    }
    fn get_result(&self, acc: &(u64, Vec<u64>)) -> (u64, Vec<u64>) {
        acc.clone()
    }
}

/// A row of q5: `auction,num`.
#[derive(Clone, Copy, Debug)]
pub struct Q5Row {
    auction: u64,
    num: u64,
}

impl Q5Row {
    pub(crate) fn new(auction: u64, num: u64) -> Q5Row {
        Q5Row { auction, num }
    }
}

impl Display for Q5Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.auction, self.num)
    }
}

/// Tumbling windows of q7.
const Q7_WINDOW_MS: i64 = 10_000;

/// q7, highest bid: per tumbling window of 10 s, every bid at the window's highest price
/// whose time lies in the window *or on its end* (`BETWEEN` is inclusive at both ends):
///
/// ```sql
/// SELECT B.auction, B.price, B.bidder, B.dateTime, B.extra FROM bid B
/// JOIN (SELECT MAX(price) AS maxprice, window_end as dateTime
///       FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
///       GROUP BY window_start, window_end) B1
/// ON B.price = B1.maxprice
/// WHERE B.dateTime BETWEEN B1.dateTime - INTERVAL '10' SECOND AND B1.dateTime;
/// ```
///
/// One windowed aggregation (all bids to one window operator, pre-aggregated per worker
/// before the exchange) keeps per window the highest price of its bids and the bids at it.
/// A bid exactly on a window's end — the first instant of the next window — also takes part
/// in the window before as a *boundary* bid: a copy stamped one millisecond earlier, which
/// counts for that window's rows but not for its maximum. Rows follow the SELECT list:
/// `auction,price,bidder,dateTime,extra`.
pub fn q7<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let restamp = WatermarkStrategy::for_bounded_out_of_orderness(WATERMARK_DELAY_MS - 1)
        .with_timestamp_assigner(|b: &Q7Bid| b.bid.date_time - i64::from(b.boundary));
    let rows = events
        .flat_map_into(|e: Event, out: &mut Vec<Q7Bid>| {
            if let Event::Bid(bid) = e {
                out.push(Q7Bid {
                    bid,
                    boundary: false,
                });
                if bid.date_time.rem_euclid(Q7_WINDOW_MS) == 0 {
                    out.push(Q7Bid {
                        bid,
                        boundary: true,
                    });
                }
            }
        })
        .assign_timestamps_and_watermarks(restamp)
        .window_all(WindowAssigner::tumbling(Q7_WINDOW_MS))
        .aggregate(HighestBids)
        .flat_map(|w| w.value.into_iter().map(Q7Row));
    out.rows(rows, Due::OnWatermark);
}

/// A bid for q7: in its own window, or a boundary bid of the window before.
#[derive(Clone, Copy, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = sluice::rkyv)]
pub struct Q7Bid {
    bid: Bid,
    boundary: bool,
}

/// q7's accumulator: the highest price of the window's own bids, the bids at it, and the
/// boundary bids that may still match it (those not below it).
#[derive(Clone, Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = sluice::rkyv)]
pub struct Highest {
    max: Option<u64>,
    at_max: Vec<Bid>,
    boundary: Vec<Bid>,
}

impl Highest {
    fn add_own(&mut self, bid: Bid) {
        match self.max {
            Some(m) if bid.price < m => return,
            Some(m) if bid.price == m => {}
            _ => {
                self.max = Some(bid.price);
                self.at_max.clear();
                self.boundary.retain(|b| b.price >= bid.price);
            }
        }
        self.at_max.push(bid);
    }

    fn add_boundary(&mut self, bid: Bid) {
        if self.max.is_none_or(|m| bid.price >= m) {
            self.boundary.push(bid);
        }
    }
}

/// The aggregate function of q7.
#[derive(Clone, Copy, Debug, Default)]
pub struct HighestBids;

impl AggregateFunction<Q7Bid> for HighestBids {
    type Acc = Highest;
    type Out = Vec<Bid>;
    fn create_accumulator(&self) -> Highest {
        Highest::default()
    }
    #[inline]
    fn add(&self, acc: &mut Highest, value: Q7Bid) {
        if value.boundary {
            acc.add_boundary(value.bid);
        } else {
            acc.add_own(value.bid);
        }
    }
    fn merge(&self, acc: &mut Highest, other: Highest) {
        for bid in other.at_max {
            acc.add_own(bid);
        }
        for bid in other.boundary {
            acc.add_boundary(bid);
        }
    }
    fn get_result(&self, acc: &Highest) -> Vec<Bid> {
        let Some(max) = acc.max else {
            return Vec::new();
        };
        let boundary = acc.boundary.iter().filter(|b| b.price == max);
        acc.at_max.iter().chain(boundary).copied().collect()
    }
}

/// A row of q7: `auction,price,bidder,dateTime,extra`.
#[derive(Clone, Copy, Debug)]
pub struct Q7Row(pub Bid);

impl Display for Q7Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        let (a, p, bidder, t, x) = (b.auction, b.price, b.bidder, b.date_time, &b.extra);
        write!(f, "{a},{p},{bidder},{t},{x}")
    }
}

/// q8, monitor new users: persons who opened an auction in the 10 s tumbling window in which
/// they registered.
///
/// ```sql
/// SELECT P.id, P.name, P.starttime FROM (
///   SELECT id, name, window_start AS starttime, window_end AS endtime
///   FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
///   GROUP BY id, name, window_start, window_end) P
/// JOIN (SELECT seller, window_start AS starttime, window_end AS endtime
///   FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
///   GROUP BY seller, window_start, window_end) A
/// ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime;
/// ```
///
/// A window join on `id = seller` of two sides that are each grouped per window first (a
/// person once, a seller once however many auctions), so each (key, window) yields at most one
/// row: the join is one keyed tumbling-window aggregation over the persons and auctions
/// together — the person's name, and whether the seller opened an auction — pre-aggregated
/// before the exchange, instead of a cross product to deduplicate.
pub fn q8<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events
        .flat_map(|e: Event| match e {
            Event::Person(p) => Some((p.id, Some(p.name))),
            Event::Auction(a) => Some((a.seller, None)),
            Event::Bid(_) => None,
        })
        .into_keyed()
        .window(WindowAssigner::tumbling(10_000))
        .aggregate(PersonAndAuction)
        .flat_map(|w| {
            w.value.map(|name| Q8Row {
                id: w.key,
                name,
                start: w.window.start,
            })
        });
    out.rows(rows, Due::OnWatermark);
}

/// q8's join per key and window: the person's name (`Some` records) and whether an auction
/// (`None` records) came; the name when both did.
#[derive(Clone, Copy, Debug, Default)]
pub struct PersonAndAuction;

impl AggregateFunction<Option<Sym>> for PersonAndAuction {
    type Acc = (Option<Sym>, bool);
    type Out = Option<Sym>;
    fn create_accumulator(&self) -> (Option<Sym>, bool) {
        (None, false)
    }
    #[inline]
    fn add(&self, acc: &mut (Option<Sym>, bool), value: Option<Sym>) {
        match value {
            Some(name) => acc.0 = Some(name),
            None => acc.1 = true,
        }
    }
    fn merge(&self, acc: &mut (Option<Sym>, bool), other: (Option<Sym>, bool)) {
        acc.0 = acc.0.or(other.0);
        acc.1 |= other.1;
    }
    fn get_result(&self, acc: &(Option<Sym>, bool)) -> Option<Sym> {
        acc.0.filter(|_| acc.1)
    }
}

/// A row of q8: `id,name,starttime`.
#[derive(Clone, Copy, Debug)]
pub struct Q8Row {
    id: u64,
    name: Sym,
    start: i64,
}

impl Display for Q8Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.id, self.name, self.start)
    }
}

/// q11, user sessions: bids per bidder and session, a session ending after 10 s without a
/// bid:
///
/// ```sql
/// SELECT B.bidder, count(*) as bid_count,
///     SESSION_START(B.dateTime, INTERVAL '10' SECOND) as starttime,
///     SESSION_END(B.dateTime, INTERVAL '10' SECOND) as endtime
/// FROM bid B GROUP BY B.bidder, SESSION(B.dateTime, INTERVAL '10' SECOND);
/// ```
///
/// Flink merges session windows that touch: two bids exactly 10 s apart are one session.
/// Sluice's sessions merge when they overlap, so a gap of 10 s + 1 ms gives Flink's sessions,
/// and `endtime` (`SESSION_END`: the last bid + 10 s) is the window's end less 1 ms.
pub fn q11<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events
        .flat_map(|e: Event| e.bid().map(|b| (b.bidder, ())))
        .into_keyed()
        .window(WindowAssigner::session(10_001))
        .aggregate(Count)
        .map(|w| BidderCount {
            bidder: w.key,
            count: w.value,
            start: w.window.start,
            end: w.window.end - 1,
        });
    out.rows(rows, Due::OnWatermark);
}

/// q12, processing-time windows: bids per bidder in tumbling windows of 10 s of processing
/// time (`TUMBLE(TABLE B, DESCRIPTOR(p_time), INTERVAL '10' SECOND)` with `p_time AS
/// PROCTIME()`). Which window a bid falls in depends on when it is processed: only the counts
/// per bidder over all windows are deterministic. At the end of a bounded run the open windows
/// fire.
pub fn q12<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events
        .flat_map(|e: Event| e.bid().map(|b| (b.bidder, ())))
        .into_keyed()
        .window(WindowAssigner::tumbling(10_000).on_processing_time())
        .aggregate(Count)
        .map(|w| BidderCount {
            bidder: w.key,
            count: w.value,
            start: w.window.start,
            end: w.window.end,
        });
    out.rows(rows, Due::OnProcessingTime);
}

/// A row of q11 and q12: `bidder,bid_count,starttime,endtime`.
#[derive(Clone, Copy, Debug)]
pub struct BidderCount {
    bidder: u64,
    count: u64,
    start: i64,
    end: i64,
}

impl Display for BidderCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (b, c, s, e) = (self.bidder, self.count, self.start, self.end);
        write!(f, "{b},{c},{s},{e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexmark::model::LazyText;

    fn bid(auction: u64, price: u64) -> Bid {
        Bid {
            auction,
            bidder: 1,
            price,
            channel: Sym(0),
            url: Sym(0),
            date_time: 0,
            extra: LazyText::default(),
        }
    }

    fn add(acc: &mut Highest, auction: u64, price: u64, boundary: bool) {
        let bid = bid(auction, price);
        HighestBids.add(acc, Q7Bid { bid, boundary });
    }

    /// Two workers' partial accumulators of one window: the rows are the window's own bids at
    /// the highest own price and the boundary bids at exactly that price, whatever the order.
    #[test]
    fn q7_keeps_ties_and_boundary_bids_at_the_window_maximum() {
        let mut one = HighestBids.create_accumulator();
        add(&mut one, 1, 9, true);
        add(&mut one, 2, 5, false);
        add(&mut one, 3, 7, true);
        add(&mut one, 4, 7, false);
        add(&mut one, 5, 3, true);
        let mut two = HighestBids.create_accumulator();
        add(&mut two, 6, 7, false);
        add(&mut two, 7, 6, true);
        HighestBids.merge(&mut one, two);
        let mut got: Vec<u64> = HighestBids
            .get_result(&one)
            .iter()
            .map(|b| b.auction)
            .collect();
        got.sort();
        assert_eq!(got, vec![3, 4, 6]);
        // Boundary bids alone make no window: B1 has a row only for a window with bids.
        let mut lone = HighestBids.create_accumulator();
        add(&mut lone, 8, 7, true);
        assert!(HighestBids.get_result(&lone).is_empty());
    }

    #[test]
    fn q5_keeps_every_auction_at_the_largest_count() {
        let mut one = MaxTies.create_accumulator();
        for (auction, count) in [(1, 2), (2, 4), (3, 4), (4, 1)] {
            MaxTies.add(&mut one, (auction, count));
        }
        let mut two = MaxTies.create_accumulator();
        MaxTies.add(&mut two, (5, 4));
        MaxTies.merge(&mut one, two);
        let (max, mut auctions) = MaxTies.get_result(&one);
        auctions.sort();
        assert_eq!((max, auctions), (4, vec![2, 3, 5]));
    }
}
