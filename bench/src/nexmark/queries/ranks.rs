//! The queries that rank bids with `ROW_NUMBER()`: q18's last bid per bidder and auction (a
//! deduplication). It is an updating result over an unbounded stream in the SQL; over a
//! bounded run it gives its final rows when the input ends ([`Due::AtEnd`]), from a final
//! aggregation whose values are combined per key before the exchange.
//!
//! # Ties
//!
//! `ROW_NUMBER()` numbers rows with equal `ORDER BY` values in no defined order, so the SQL's
//! result is not determined by its input when two bids tie. Here the stream order decides, as
//! it does in Flink's operators for these queries on one partition: the later event of two
//! bids with equal `dateTime` is q18's last bid (Flink's keep-last-row deduplication replaces
//! its row on an equal time). An event's place in the
//! stream is its number ([`Bid::event_number`]), the same on any number of workers.

use std::fmt::{self, Display};

use sluice::ops::Pipe;
use sluice::{DataStream, Head};

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
        .key_by(|b: &Bid| (b.bidder, b.auction))
        .emit_final()
        .reduce(later)
        .map(BidDetails);
    out.rows(rows, Due::AtEnd);
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

    #[test]
    fn the_later_event_of_equal_times_is_the_last_bid() {
        let (a, b, c) = (bid(4, 1, 10), bid(9, 2, 10), bid(2, 3, 11));
        assert_eq!(later(a, b).event_number(), 9);
        assert_eq!(later(b, a).event_number(), 9);
        assert_eq!(later(later(a, c), b).event_number(), 2);
    }
}
