//! Every Nexmark query against a reference computed here in plain Rust from the generator's
//! events (`Generator::event(n)`), independent of the engine's operators: the same rows, as the
//! same lines, on 1 and 2 workers, over a few thousand events at two event-time rates — a slow
//! one whose run spans several windows and sessions, and the suite's 10 M events/s from a base
//! time one millisecond before a window boundary (auctions open for 1–2 ms, bids on a window's
//! end). q12 (processing time) is checked for what does not depend on timing.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;

use sluice::ops::Pipe;
use sluice::{CollectHandle, DataStream, Env, Head};
use sluice_bench::nexmark::queries::{Due, Query, RowOutput};
use sluice_bench::nexmark::{Auction, Bid, Event, Generator, NexmarkConfig, NexmarkSource, Person};

/// Collects a query's rows as their lines.
#[derive(Default)]
struct Lines(RefCell<Option<CollectHandle<String>>>);

impl RowOutput for Lines {
    fn rows<H, P>(&self, rows: DataStream<H, P>, _due: Due)
    where
        H: Head,
        P: Pipe<H::Item>,
        P::Out: Display + Send + 'static,
    {
        *self.0.borrow_mut() = Some(rows.map(|r| r.to_string()).collect());
    }
}

fn run(query: Query, cfg: &NexmarkConfig, workers: usize) -> Vec<String> {
    let env = Env::new();
    env.set_workers(workers);
    let out = Lines::default();
    query.build(&env, NexmarkSource::new(cfg.clone()), &out);
    if let Err(e) = env.execute(query.name()) {
        panic!("{} on {workers} workers failed: {e}", query.name());
    }
    let handle = out
        .0
        .borrow_mut()
        .take()
        .expect("the query ends in its output");
    sorted(handle.take())
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A slow run: 333 events/s for 6,000 events (18 s of event time).
fn slow() -> NexmarkConfig {
    NexmarkConfig {
        events: Some(6_000),
        first_event_rate: 333,
        next_event_rate: 333,
        ..NexmarkConfig::default()
    }
}

/// The suite's rate from 1 ms before a 10 s boundary: 20,000 events over 2 ms.
fn fast() -> NexmarkConfig {
    NexmarkConfig {
        events: Some(20_000),
        base_time_ms: 1_700_000_009_999,
        ..NexmarkConfig::default()
    }
}

/// The slow rate from 5 s before midnight (UTC) of 2023-11-14: days and minutes change.
fn midnight() -> NexmarkConfig {
    NexmarkConfig {
        base_time_ms: 1_700_006_395_000,
        ..slow()
    }
}

fn events(cfg: &NexmarkConfig) -> Vec<Event> {
    let g = Generator::new(cfg).unwrap();
    (0..cfg.events.unwrap()).map(|n| g.event(n)).collect()
}

fn bids(events: &[Event]) -> impl Iterator<Item = &Bid> {
    events.iter().filter_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

fn auctions(events: &[Event]) -> impl Iterator<Item = &Auction> {
    events.iter().filter_map(|e| match e {
        Event::Auction(a) => Some(a),
        _ => None,
    })
}

fn persons(events: &[Event]) -> impl Iterator<Item = &Person> {
    events.iter().filter_map(|e| match e {
        Event::Person(p) => Some(p),
        _ => None,
    })
}

fn eur(price: u64) -> String {
    let t = price * 908;
    format!("{}.{:03}", t / 1000, t % 1000)
}

fn bid_line(b: &Bid) -> String {
    let x = b.extra.to_text();
    format!("{},{},{},{},{x}", b.auction, b.bidder, b.price, b.date_time)
}

fn reference(query: Query, ev: &[Event]) -> Vec<String> {
    sorted(match query {
        Query::Q0 => bids(ev).map(bid_line).collect(),
        Query::Q1 => bids(ev)
            .map(|b| {
                let (a, bi, t, x) = (b.auction, b.bidder, b.date_time, b.extra.to_text());
                format!("{a},{bi},{},{t},{x}", eur(b.price))
            })
            .collect(),
        Query::Q2 => bids(ev)
            .filter(|b| b.auction % 123 == 0)
            .map(|b| format!("{},{}", b.auction, b.price))
            .collect(),
        Query::Q3 => q3(ev),
        Query::Q4 => q4(ev),
        Query::Q5 | Query::Q5Inc => q5(ev),
        Query::Q7 => q7(ev),
        Query::Q8 => q8(ev),
        Query::Q9 => q9(ev),
        Query::Q10 => bids(ev)
            .map(|b| {
                let (t, day) = (b.date_time, date_of(b.date_time));
                let (h, m) = ((t / 3_600_000) % 24, (t / 60_000) % 60);
                format!("{},{day},{h:02}:{m:02}", bid_line(b))
            })
            .collect(),
        Query::Q11 => q11(ev),
        Query::Q12 => unreachable!("q12 depends on processing time"),
        Query::Q14 => q14(ev),
        Query::Q15 => {
            let per_day = group_bids(ev, |b| date_of(b.date_time));
            per_day
                .into_iter()
                .map(|(day, bids)| format!("{day},{}", distinct_counts(&bids)))
                .collect()
        }
        Query::Q16 => {
            let groups = group_bids(ev, |b| (b.channel.as_str(), date_of(b.date_time)));
            groups
                .into_iter()
                .map(|((channel, day), bids)| {
                    let t = bids.iter().map(|b| b.date_time).max().unwrap();
                    let (h, m) = ((t / 3_600_000) % 24, (t / 60_000) % 60);
                    let counts = distinct_counts(&bids);
                    format!("{channel},{day},{h:02}:{m:02},{counts}")
                })
                .collect()
        }
        Query::Q17 => q17(ev),
        Query::Q18 => q18(ev),
        Query::Q19 => q19(ev),
        Query::Q20 => q20(ev),
        Query::Q21 => q21(ev),
        Query::Q22 => bids(ev)
            .map(|b| {
                let parts: Vec<&str> = b.url.as_str().split('/').collect();
                let dir = |i: usize| parts.get(i).copied().unwrap_or("");
                let (a, bi, p, c) = (b.auction, b.bidder, b.price, b.channel);
                format!("{a},{bi},{p},{c},{},{},{}", dir(3), dir(4), dir(5))
            })
            .collect(),
    })
}

fn q3(ev: &[Event]) -> Vec<String> {
    let wanted = |s: &str| ["or", "id", "ca"].contains(&s.to_lowercase().as_str());
    let sellers: HashMap<u64, &Person> = persons(ev)
        .filter(|p| wanted(p.state.as_str()))
        .map(|p| (p.id, p))
        .collect();
    auctions(ev)
        .filter(|a| a.category == 10)
        .filter_map(|a| sellers.get(&a.seller).map(|p| (p, a)))
        .map(|(p, a)| format!("{},{},{},{}", p.name, p.city, p.state, a.id))
        .collect()
}

/// The qualifying bids of each auction: `B.dateTime BETWEEN A.dateTime AND A.expires`.
fn auction_bids(ev: &[Event]) -> Vec<(&Auction, Vec<&Bid>)> {
    auctions(ev)
        .map(|a| {
            let qualifying = bids(ev)
                .filter(|b| b.auction == a.id && a.date_time <= b.date_time)
                .filter(|b| b.date_time <= a.expires)
                .collect();
            (a, qualifying)
        })
        .collect()
}

fn q4(ev: &[Event]) -> Vec<String> {
    let mut per_category: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (a, bids) in auction_bids(ev) {
        if let Some(max) = bids.iter().map(|b| b.price).max() {
            let e = per_category.entry(a.category).or_default();
            e.0 += max;
            e.1 += 1;
        }
    }
    per_category
        .into_iter()
        .map(|(c, (sum, n))| format!("{c},{}", sum / n))
        .collect()
}

fn q5(ev: &[Event]) -> Vec<String> {
    // (window start, auction) → count, for sliding windows of 10 s every 2 s.
    let mut counts: BTreeMap<i64, HashMap<u64, u64>> = BTreeMap::new();
    for b in bids(ev) {
        let last = b.date_time - b.date_time.rem_euclid(2_000);
        let mut start = last;
        while start > b.date_time - 10_000 {
            *counts
                .entry(start)
                .or_default()
                .entry(b.auction)
                .or_default() += 1;
            start -= 2_000;
        }
    }
    let mut rows = Vec::new();
    for per_auction in counts.values() {
        let max = per_auction.values().copied().max().unwrap_or(0);
        for (auction, n) in per_auction {
            if *n == max {
                rows.push(format!("{auction},{n}"));
            }
        }
    }
    rows
}

fn q7(ev: &[Event]) -> Vec<String> {
    let mut max: BTreeMap<i64, u64> = BTreeMap::new();
    for b in bids(ev) {
        let start = b.date_time - b.date_time.rem_euclid(10_000);
        let m = max.entry(start).or_insert(0);
        *m = (*m).max(b.price);
    }
    let mut rows = Vec::new();
    for (&start, &maxprice) in &max {
        let end = start + 10_000;
        for b in bids(ev) {
            if (start..=end).contains(&b.date_time) && b.price == maxprice {
                let (a, p, bi, t, x) = (b.auction, b.price, b.bidder, b.date_time, b.extra);
                rows.push(format!("{a},{p},{bi},{t},{x}"));
            }
        }
    }
    rows
}

fn q8(ev: &[Event]) -> Vec<String> {
    let window = |t: i64| t - t.rem_euclid(10_000);
    let sellers: std::collections::HashSet<(u64, i64)> = auctions(ev)
        .map(|a| (a.seller, window(a.date_time)))
        .collect();
    persons(ev)
        .filter(|p| sellers.contains(&(p.id, window(p.date_time))))
        .map(|p| format!("{},{},{}", p.id, p.name, window(p.date_time)))
        .collect()
}

fn q9(ev: &[Event]) -> Vec<String> {
    let mut rows = Vec::new();
    for (a, mut bids) in auction_bids(ev) {
        bids.sort_by_key(|b| {
            let x = b.extra.to_text();
            (std::cmp::Reverse(b.price), b.date_time, b.bidder, x)
        });
        if let Some(b) = bids.first() {
            rows.push(format!(
                "{},{},{},{},{},{},{},{},{},{},{}",
                a.id,
                a.item_name,
                a.description.to_text(),
                a.initial_bid,
                a.reserve,
                a.date_time,
                a.expires,
                a.seller,
                a.category,
                a.extra.to_text(),
                bid_line(b)
            ));
        }
    }
    rows
}

fn q11(ev: &[Event]) -> Vec<String> {
    let mut times: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for b in bids(ev) {
        times.entry(b.bidder).or_default().push(b.date_time);
    }
    let mut rows = Vec::new();
    for (bidder, mut ts) in times {
        ts.sort();
        // Flink's sessions: a bid at most 10 s after the session's last one joins it.
        let mut first = ts[0];
        let mut last = ts[0];
        let mut count = 1;
        for &t in &ts[1..] {
            if t <= last + 10_000 {
                last = t;
                count += 1;
            } else {
                rows.push(format!("{bidder},{count},{first},{}", last + 10_000));
                (first, last, count) = (t, t, 1);
            }
        }
        rows.push(format!("{bidder},{count},{first},{}", last + 10_000));
    }
    rows
}

fn q14(ev: &[Event]) -> Vec<String> {
    bids(ev)
        .filter(|b| {
            let eur = b.price as f64 * 0.908;
            eur > 1_000_000.0 && eur < 50_000_000.0
        })
        .map(|b| {
            let hour = (b.date_time / 3_600_000) % 24;
            let kind = if (8..=18).contains(&hour) {
                "dayTime"
            } else if hour <= 6 || hour >= 20 {
                "nightTime"
            } else {
                "otherTime"
            };
            let x = b.extra.to_text();
            let c = x.matches('c').count();
            let (a, bi, t) = (b.auction, b.bidder, b.date_time);
            format!("{a},{bi},{},{kind},{t},{x},{c}", eur(b.price))
        })
        .collect()
}

/// `yyyy-MM-dd` of epoch milliseconds (UTC), for the days of the runs here.
fn date_of(ms: i64) -> &'static str {
    // 2023-11-14 is day 19,675; the runs here stay within a day or two of it.
    match ms / 86_400_000 {
        19_675 => "2023-11-14",
        19_676 => "2023-11-15",
        day => panic!("day {day} outside the reference's calendar"),
    }
}

/// The bids of each group that `group` gives them.
fn group_bids<G: Ord>(ev: &[Event], group: impl Fn(&Bid) -> G) -> BTreeMap<G, Vec<&Bid>> {
    let mut groups: BTreeMap<G, Vec<&Bid>> = BTreeMap::new();
    for b in bids(ev) {
        groups.entry(group(b)).or_default().push(b);
    }
    groups
}

/// q15's and q16's twelve counts of a group's bids: bids, distinct bidders and distinct
/// auctions, each in total and for the three price ranks of the filters.
fn distinct_counts(bids: &[&Bid]) -> String {
    let ranks: [fn(u64) -> bool; 4] = [
        |_| true,
        |p| p < 10_000,
        |p| (10_000..1_000_000).contains(&p),
        |p| p >= 1_000_000,
    ];
    let mut counts = Vec::new();
    for rank in ranks {
        counts.push(bids.iter().filter(|b| rank(b.price)).count());
    }
    for field in [|b: &Bid| b.bidder, |b: &Bid| b.auction] {
        for rank in ranks {
            let distinct: std::collections::HashSet<u64> = bids
                .iter()
                .filter(|b| rank(b.price))
                .map(|b| field(b))
                .collect();
            counts.push(distinct.len());
        }
    }
    let counts: Vec<String> = counts.iter().map(|c| c.to_string()).collect();
    counts.join(",")
}

fn q17(ev: &[Event]) -> Vec<String> {
    // (auction, day) → prices.
    let mut groups: BTreeMap<(u64, &str), Vec<u64>> = BTreeMap::new();
    for b in bids(ev) {
        let day = date_of(b.date_time);
        groups.entry((b.auction, day)).or_default().push(b.price);
    }
    groups
        .into_iter()
        .map(|((auction, date), prices)| {
            let n = prices.len() as u64;
            let r1 = prices.iter().filter(|&&p| p < 10_000).count();
            let r2 = prices
                .iter()
                .filter(|&&p| (10_000..1_000_000).contains(&p))
                .count();
            let r3 = prices.iter().filter(|&&p| p >= 1_000_000).count();
            let (min, max) = (prices.iter().min().unwrap(), prices.iter().max().unwrap());
            let sum: u64 = prices.iter().sum();
            format!(
                "{auction},{date},{n},{r1},{r2},{r3},{min},{max},{},{sum}",
                sum / n
            )
        })
        .collect()
}

/// Every bid with its place in the stream (its index here).
fn numbered_bids(ev: &[Event]) -> impl Iterator<Item = (usize, &Bid)> {
    ev.iter().enumerate().filter_map(|(n, e)| match e {
        Event::Bid(b) => Some((n, b)),
        _ => None,
    })
}

/// q18's and q19's `auction,bidder,price,channel,url,dateTime,extra`.
fn bid_details(b: &Bid) -> String {
    let (a, bi, p, c, u, t) = (b.auction, b.bidder, b.price, b.channel, b.url, b.date_time);
    format!("{a},{bi},{p},{c},{u},{t},{}", b.extra.to_text())
}

/// The last bid per bidder and auction: the latest `dateTime`, of equal ones the later event.
fn q18(ev: &[Event]) -> Vec<String> {
    let mut last: HashMap<(u64, u64), (i64, usize, &Bid)> = HashMap::new();
    for (n, b) in numbered_bids(ev) {
        let e = last
            .entry((b.bidder, b.auction))
            .or_insert((b.date_time, n, b));
        if (b.date_time, n) > (e.0, e.1) {
            *e = (b.date_time, n, b);
        }
    }
    last.values().map(|(_, _, b)| bid_details(b)).collect()
}

/// The ten highest bids per auction: price descending, of equal prices the earlier event first.
fn q19(ev: &[Event]) -> Vec<String> {
    let mut per_auction: HashMap<u64, Vec<(usize, &Bid)>> = HashMap::new();
    for (n, b) in numbered_bids(ev) {
        per_auction.entry(b.auction).or_default().push((n, b));
    }
    let mut rows = Vec::new();
    for mut bids in per_auction.into_values() {
        bids.sort_by_key(|&(n, b)| (std::cmp::Reverse(b.price), n));
        for (rank, (_, b)) in bids.iter().take(10).enumerate() {
            rows.push(format!("{},{}", bid_details(b), rank + 1));
        }
    }
    rows
}

fn q20(ev: &[Event]) -> Vec<String> {
    let cat10: HashMap<u64, &Auction> = auctions(ev)
        .filter(|a| a.category == 10)
        .map(|a| (a.id, a))
        .collect();
    bids(ev)
        .filter_map(|b| cat10.get(&b.auction).map(|a| (b, a)))
        .map(|(b, a)| {
            format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                b.auction,
                b.bidder,
                b.price,
                b.channel,
                b.url,
                b.date_time,
                b.extra.to_text(),
                a.item_name,
                a.description.to_text(),
                a.initial_bid,
                a.reserve,
                a.date_time,
                a.expires,
                a.seller,
                a.category,
                a.extra.to_text()
            )
        })
        .collect()
}

fn q21(ev: &[Event]) -> Vec<String> {
    bids(ev)
        .filter_map(|b| {
            let hot = match b.channel.as_str().to_lowercase().as_str() {
                "apple" => Some("0".to_owned()),
                "google" => Some("1".to_owned()),
                "facebook" => Some("2".to_owned()),
                "baidu" => Some("3".to_owned()),
                _ => None,
            };
            // The generator's URLs carry the parameter after `&` when at all.
            let param = b
                .url
                .as_str()
                .split_once("&channel_id=")
                .map(|(_, v)| v.split('&').next().unwrap_or("").to_owned());
            let id = hot.or(param)?;
            let (a, bi, p, c) = (b.auction, b.bidder, b.price, b.channel);
            Some(format!("{a},{bi},{p},{c},{id}"))
        })
        .collect()
}

fn check(query: Query) {
    check_at(query, [slow(), fast()]);
}

fn check_at(query: Query, configs: impl IntoIterator<Item = NexmarkConfig>) {
    for cfg in configs {
        let expected = reference(query, &events(&cfg));
        for workers in [1, 2] {
            let got = run(query, &cfg, workers);
            let missing = expected.iter().find(|r| got.binary_search(r).is_err());
            let extra = got.iter().find(|r| expected.binary_search(r).is_err());
            assert!(
                got == expected,
                "{} on {workers} workers at {} events/s from {}: {} rows, the reference {}; \
                 missing {missing:?}, extra {extra:?}",
                query.name(),
                cfg.first_event_rate,
                cfg.base_time_ms,
                got.len(),
                expected.len(),
            );
        }
    }
}

#[test]
fn every_query_has_a_reference_here() {
    for q in Query::ALL {
        if *q != Query::Q12 {
            let _ = reference(*q, &[]);
        }
    }
}

#[test]
fn q0_pass_through() {
    check(Query::Q0);
}

#[test]
fn q1_currency_conversion() {
    check(Query::Q1);
}

#[test]
fn q2_selection() {
    check(Query::Q2);
}

#[test]
fn q3_local_item_suggestion() {
    check(Query::Q3);
}

#[test]
fn q4_average_price_per_category() {
    check(Query::Q4);
}

#[test]
fn q5_hot_items() {
    check(Query::Q5);
}

#[test]
fn q5_inc_hot_items_incrementally() {
    check(Query::Q5Inc);
}

/// Long enough (90 s of event time) for the incremental operator's maintenance to rotate its
/// count tables several times, and for auctions to move from an old generation to a new one.
#[test]
fn q5_inc_across_generations_of_its_count_tables() {
    let cfg = NexmarkConfig {
        events: Some(30_000),
        ..slow()
    };
    let expected = reference(Query::Q5, &events(&cfg));
    assert!(expected.len() > 40, "{} rows", expected.len());
    for workers in [1, 2] {
        assert_eq!(
            run(Query::Q5Inc, &cfg, workers),
            expected,
            "{workers} workers"
        );
    }
}

#[test]
fn q7_highest_bid() {
    check(Query::Q7);
}

#[test]
fn q8_monitor_new_users() {
    check(Query::Q8);
}

#[test]
fn q9_winning_bids() {
    check(Query::Q9);
}

#[test]
fn q10_bids_with_day_and_minute() {
    check_at(Query::Q10, [slow(), fast(), midnight()]);
}

#[test]
fn q11_user_sessions() {
    check(Query::Q11);
}

#[test]
fn q14_bid_time_types() {
    check(Query::Q14);
}

#[test]
fn q15_bidding_statistics_per_day() {
    check_at(Query::Q15, [slow(), fast(), midnight()]);
}

#[test]
fn q16_channel_statistics_per_day() {
    check_at(Query::Q16, [slow(), fast(), midnight()]);
}

#[test]
fn q17_auction_statistics_per_day() {
    check(Query::Q17);
}

#[test]
fn q18_last_bid_per_bidder_and_auction() {
    check(Query::Q18);
}

#[test]
fn q19_ten_highest_bids_per_auction() {
    check(Query::Q19);
}

#[test]
fn q20_expanded_bids() {
    check(Query::Q20);
}

#[test]
fn q21_channel_ids() {
    check(Query::Q21);
}

#[test]
fn q22_url_directories() {
    check(Query::Q22);
}

/// q12's windows depend on processing time: each bid is counted once, per bidder, in a window
/// of 10 s aligned to the epoch.
#[test]
fn q12_processing_time_windows_count_every_bid_once() {
    let cfg = slow();
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    for b in bids(&events(&cfg)) {
        *expected.entry(b.bidder).or_default() += 1;
    }
    for workers in [1, 2] {
        let mut got: BTreeMap<u64, u64> = BTreeMap::new();
        for line in run(Query::Q12, &cfg, workers) {
            let f: Vec<i64> = line.split(',').map(|x| x.parse().unwrap()).collect();
            assert_eq!(f.len(), 4, "{line}");
            assert_eq!(
                (f[2].rem_euclid(10_000), f[3] - f[2]),
                (0, 10_000),
                "{line}"
            );
            *got.entry(f[0] as u64).or_default() += f[1] as u64;
        }
        assert_eq!(got, expected, "q12 on {workers} workers");
    }
}
