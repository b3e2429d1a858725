//! The queries over bids alone: projections and filters, one row per input bid at most (q0,
//! q1, q2, q10, q14, q21, q22: each a chain of one `flat_map` after the source, with no
//! exchange), and q17's statistics per auction and day (a final aggregation).

use std::fmt::{self, Display};

use sluice::ops::Pipe;
use sluice::{DataStream, Head};

use super::{Due, RowOutput, write_price_eur};
use crate::nexmark::model::{Bid, Event, LazyText};

/// q0, pass-through: `SELECT auction, bidder, price, dateTime, extra FROM bid`.
pub fn q0<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    out.rows(
        events.flat_map(|e: Event| e.bid().map(BidRow)),
        Due::OnRecord,
    );
}

/// A row of q0: a bid's `auction,bidder,price,dateTime,extra`.
#[derive(Clone, Copy, Debug)]
pub struct BidRow(pub Bid);

impl Display for BidRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        let (a, bidder, p, t, x) = (b.auction, b.bidder, b.price, b.date_time, &b.extra);
        write!(f, "{a},{bidder},{p},{t},{x}")
    }
}

/// q1, currency conversion: `SELECT auction, bidder, 0.908 * price as price, dateTime, extra
/// FROM bid`. The price is `DECIMAL(23, 3)`, written with three decimals, exactly.
pub fn q1<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    out.rows(
        events.flat_map(|e: Event| e.bid().map(EuroRow)),
        Due::OnRecord,
    );
}

/// A row of q1: the bid with its price in euros.
#[derive(Clone, Copy, Debug)]
pub struct EuroRow(pub Bid);

impl Display for EuroRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(f, "{},{},", b.auction, b.bidder)?;
        write_price_eur(f, b.price)?;
        write!(f, ",{},{}", b.date_time, b.extra)
    }
}

/// q2, selection: `SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0`.
pub fn q2<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events.flat_map(|e: Event| {
        e.bid()
            .filter(|b| b.auction % 123 == 0)
            .map(|b| Q2Row(b.auction, b.price))
    });
    out.rows(rows, Due::OnRecord);
}

/// A row of q2: `auction,price`.
#[derive(Clone, Copy, Debug)]
pub struct Q2Row(pub u64, pub u64);

impl Display for Q2Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.0, self.1)
    }
}

/// q10, log to a file system: `SELECT auction, bidder, price, dateTime, extra,
/// DATE_FORMAT(dateTime, 'yyyy-MM-dd'), DATE_FORMAT(dateTime, 'HH:mm') FROM bid`, every bid
/// with the day and the minute it falls in (UTC), the columns the SQL's file sink partitions
/// by. The rows go to the run's sink (part files with `--output`) as they come; the SQL's
/// rolling and partition commits are the file sink's business, not the rows'.
pub fn q10<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    out.rows(
        events.flat_map(|e: Event| e.bid().map(Q10Row)),
        Due::OnRecord,
    );
}

/// A row of q10: `auction,bidder,price,dateTime,extra,dt,hm`; `dt` and `hm` are formatted
/// when the row is written.
#[derive(Clone, Copy, Debug)]
pub struct Q10Row(pub Bid);

impl Display for Q10Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        BidRow(self.0).fmt(f)?;
        f.write_str(",")?;
        write_date(f, epoch_day(self.0.date_time))?;
        f.write_str(",")?;
        write_hour_minute(f, self.0.date_time)
    }
}

/// `DATE_FORMAT(t, 'HH:mm')` of epoch milliseconds, in UTC.
pub(super) fn write_hour_minute(f: &mut fmt::Formatter<'_>, ms: i64) -> fmt::Result {
    let minute = ms.div_euclid(60_000).rem_euclid(24 * 60);
    write!(f, "{:02}:{:02}", minute / 60, minute % 60)
}

/// q14, a filter and projection with a UDF: bids with `0.908 * price` strictly between
/// 1,000,000 and 50,000,000, with the price in euros, `bidTimeType` from `HOUR(dateTime)`
/// ('dayTime' for hours 8 to 18, 'nightTime' for 0 to 6 and 20 to 23, else 'otherTime'), and
/// `c_counts`, the number of `c`s in `extra` (the suite's `count_char` UDF). Hours are UTC: the
/// connector turns epoch milliseconds into a `TIMESTAMP` without a zone.
pub fn q14<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events.flat_map(|e: Event| {
        let b = e.bid()?;
        // In thousandths of a cent, exactly: 0.908 × price.
        let eur = u128::from(b.price) * 908;
        (1_000_000_000 < eur && eur < 50_000_000_000).then(|| Q14Row {
            bid: b,
            c_counts: count_char(&b.extra, b'c'),
        })
    });
    out.rows(rows, Due::OnRecord);
}

/// `count_char(extra, 'c')`: the letters are drawn to count them.
fn count_char(text: &LazyText, c: u8) -> u64 {
    struct Counter(u8, u64);
    impl fmt::Write for Counter {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.1 += s.bytes().filter(|&b| b == self.0).count() as u64;
            Ok(())
        }
    }
    let mut counter = Counter(c, 0);
    let _ = fmt::Write::write_fmt(&mut counter, format_args!("{text}"));
    counter.1
}

/// `HOUR(dateTime)` of epoch milliseconds, in UTC.
fn hour_utc(ms: i64) -> i64 {
    ms.div_euclid(3_600_000).rem_euclid(24)
}

/// The `bidTimeType` of q14.
fn bid_time_type(ms: i64) -> &'static str {
    match hour_utc(ms) {
        8..=18 => "dayTime",
        h if h <= 6 || h >= 20 => "nightTime",
        _ => "otherTime",
    }
}

/// A row of q14: `auction,bidder,price,bidTimeType,dateTime,extra,c_counts`.
#[derive(Clone, Copy, Debug)]
pub struct Q14Row {
    /// The bid.
    pub bid: Bid,
    /// The `c`s in its `extra`.
    pub c_counts: u64,
}

impl Display for Q14Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.bid;
        write!(f, "{},{},", b.auction, b.bidder)?;
        write_price_eur(f, b.price)?;
        let kind = bid_time_type(b.date_time);
        write!(f, ",{kind},{},{},{}", b.date_time, b.extra, self.c_counts)
    }
}

/// q21, channel ids: bids whose URL has a `channel_id` parameter (`REGEXP_EXTRACT(url,
/// '(&|^)channel_id=([^&]*)', 2)` is not null) or whose channel is one of the four hot ones
/// (compared in lower case), with `channel_id` '0' to '3' for Apple, Google, Facebook and
/// Baidu, else the URL's parameter.
pub fn q21<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events.flat_map(|e: Event| {
        let b = e.bid()?;
        let id = hot_channel_id(b.channel.as_str()).or_else(|| channel_id(b.url.as_str()))?;
        Some(Q21Row { bid: b, id })
    });
    out.rows(rows, Due::OnRecord);
}

/// The `CASE` of q21 for the hot channels, `lower(channel)` compared.
fn hot_channel_id(channel: &str) -> Option<&'static str> {
    [
        ("apple", "0"),
        ("google", "1"),
        ("facebook", "2"),
        ("baidu", "3"),
    ]
    .into_iter()
    .find(|(name, _)| channel.eq_ignore_ascii_case(name))
    .map(|(_, id)| id)
}

/// `REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2)`: the value of the first `channel_id`
/// parameter that starts the URL or follows a `&`.
pub fn channel_id(url: &str) -> Option<&str> {
    const KEY: &str = "channel_id=";
    let mut from = 0;
    while let Some(i) = url[from..].find(KEY) {
        let at = from + i;
        if at == 0 || url.as_bytes()[at - 1] == b'&' {
            let value = &url[at + KEY.len()..];
            return Some(value.split('&').next().unwrap_or(value));
        }
        from = at + 1;
    }
    None
}

/// A row of q21: `auction,bidder,price,channel,channel_id`.
#[derive(Clone, Copy, Debug)]
pub struct Q21Row {
    /// The bid.
    pub bid: Bid,
    /// Its channel id: a URL's symbol lives as long as the process.
    pub id: &'static str,
}

impl Display for Q21Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.bid;
        let (a, bidder, p, c) = (b.auction, b.bidder, b.price, b.channel);
        write!(f, "{a},{bidder},{p},{c},{}", self.id)
    }
}

/// q22, URL directories: `SPLIT_INDEX(url, '/', 3)`, `…4)` and `…5)` of every bid — the three
/// path segments of the generator's URLs.
pub fn q22<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events.flat_map(|e: Event| {
        let b = e.bid()?;
        let mut parts = b.url.as_str().split('/').skip(3);
        let dirs = [parts.next(), parts.next(), parts.next()];
        Some(Q22Row { bid: b, dirs })
    });
    out.rows(rows, Due::OnRecord);
}

/// A row of q22: `auction,bidder,price,channel,dir1,dir2,dir3` (a missing segment, SQL's
/// NULL, is an empty field).
#[derive(Clone, Copy, Debug)]
pub struct Q22Row {
    /// The bid.
    pub bid: Bid,
    /// Segments 3, 4 and 5 of its URL split at `/`.
    pub dirs: [Option<&'static str>; 3],
}

impl Display for Q22Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.bid;
        write!(f, "{},{},{},{}", b.auction, b.bidder, b.price, b.channel)?;
        for dir in self.dirs {
            write!(f, ",{}", dir.unwrap_or(""))?;
        }
        Ok(())
    }
}

/// q17, auction statistics per day:
///
/// ```sql
/// SELECT auction, DATE_FORMAT(dateTime, 'yyyy-MM-dd') as day, count(*) AS total_bids,
///      count(*) filter (where price < 10000) AS rank1_bids,
///      count(*) filter (where price >= 10000 and price < 1000000) AS rank2_bids,
///      count(*) filter (where price >= 1000000) AS rank3_bids,
///      min(price) AS min_price, max(price) AS max_price, avg(price) AS avg_price,
///      sum(price) AS sum_price
/// FROM bid GROUP BY auction, DATE_FORMAT(dateTime, 'yyyy-MM-dd');
/// ```
///
/// An unbounded `GROUP BY`: its final rows, one per auction and day (UTC), when the input
/// ends; statistics are combined per key before the exchange. `avg` of a `BIGINT` is the
/// truncated quotient, as in Flink.
pub fn q17<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events
        .flat_map(|e: Event| {
            e.bid()
                .map(|b| ((b.auction, epoch_day(b.date_time)), PriceStats::of(b.price)))
        })
        .into_keyed()
        .emit_final()
        .reduce(PriceStats::merge)
        .map(|((auction, day), stats)| Q17Row {
            auction,
            day,
            stats,
        });
    out.rows(rows, Due::AtEnd);
}

/// The days since 1970-01-01 of epoch milliseconds, in UTC.
pub(super) fn epoch_day(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// `yyyy-MM-dd` of a day since 1970-01-01 (the proleptic Gregorian calendar).
pub(super) fn write_date(f: &mut fmt::Formatter<'_>, days: i64) -> fmt::Result {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    write!(f, "{year:04}-{month:02}-{day:02}")
}

/// q17's statistics of a group's prices (kept in the state store: an rkyv archive).
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
pub struct PriceStats {
    total: u64,
    rank1: u64,
    rank2: u64,
    rank3: u64,
    min: u64,
    max: u64,
    sum: u64,
}

impl PriceStats {
    fn of(price: u64) -> PriceStats {
        PriceStats {
            total: 1,
            rank1: u64::from(price < 10_000),
            rank2: u64::from((10_000..1_000_000).contains(&price)),
            rank3: u64::from(price >= 1_000_000),
            min: price,
            max: price,
            sum: price,
        }
    }

    fn merge(a: PriceStats, b: PriceStats) -> PriceStats {
        PriceStats {
            total: a.total + b.total,
            rank1: a.rank1 + b.rank1,
            rank2: a.rank2 + b.rank2,
            rank3: a.rank3 + b.rank3,
            min: a.min.min(b.min),
            max: a.max.max(b.max),
            sum: a.sum + b.sum,
        }
    }
}

/// A row of q17: `auction,day,total_bids,rank1_bids,rank2_bids,rank3_bids,min_price,
/// max_price,avg_price,sum_price`.
#[derive(Clone, Copy, Debug)]
pub struct Q17Row {
    auction: u64,
    day: i64,
    stats: PriceStats,
}

impl Display for Q17Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(f, "{},", self.auction)?;
        write_date(f, self.day)?;
        let avg = s.sum / s.total.max(1);
        write!(
            f,
            ",{},{},{},{},{},{},{avg},{}",
            s.total, s.rank1, s.rank2, s.rank3, s.min, s.max, s.sum
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_id_follows_the_regular_expression() {
        assert_eq!(
            channel_id("https://x/a/b/c/item.htm?query=1&channel_id=42"),
            Some("42")
        );
        assert_eq!(channel_id("channel_id=7&x=1"), Some("7"));
        assert_eq!(channel_id("https://x?query=1&channel_id="), Some(""));
        assert_eq!(channel_id("https://x?mychannel_id=3"), None);
        assert_eq!(
            channel_id("https://x?mychannel_id=3&channel_id=4"),
            Some("4")
        );
        assert_eq!(channel_id("https://x/a/b/c/item.htm?query=1"), None);
    }

    #[test]
    fn bid_time_types_by_utc_hour() {
        let at = |h: i64| h * 3_600_000 + 59_000;
        assert_eq!(bid_time_type(at(8)), "dayTime");
        assert_eq!(bid_time_type(at(18)), "dayTime");
        assert_eq!(bid_time_type(at(7)), "otherTime");
        assert_eq!(bid_time_type(at(19)), "otherTime");
        assert_eq!(bid_time_type(at(6)), "nightTime");
        assert_eq!(bid_time_type(at(20)), "nightTime");
        // The default base time, 1700000000000, is 22:13 UTC.
        assert_eq!(hour_utc(1_700_000_000_000), 22);
    }

    #[test]
    fn dates_of_epoch_days() {
        struct D(i64);
        impl Display for D {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_date(f, self.0)
            }
        }
        let date = |ms: i64| D(epoch_day(ms)).to_string();
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_700_000_000_000), "2023-11-14");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(date(-1), "1969-12-31");
    }

    #[test]
    fn hours_and_minutes_of_the_day() {
        struct Hm(i64);
        impl Display for Hm {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hour_minute(f, self.0)
            }
        }
        assert_eq!(Hm(0).to_string(), "00:00");
        // The default base time, 1700000000000, is 22:13:20 UTC.
        assert_eq!(Hm(1_700_000_000_000).to_string(), "22:13");
        assert_eq!(Hm(86_399_999).to_string(), "23:59");
        assert_eq!(Hm(-1).to_string(), "23:59");
        assert_eq!(Hm(3_600_000 * 9 + 60_000 * 5 + 59_999).to_string(), "09:05");
    }
}
