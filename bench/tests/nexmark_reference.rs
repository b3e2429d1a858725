//! Sluice's Nexmark generator against its oracle, the `nexmark` crate 0.2.0: every field of
//! every event of the first 100,000, samples far into the stream and in the sine rate shape;
//! then the source's contract: its splits partition the stream (each event exactly once, equal
//! to the single stream's), reading from a position replays the tail, and a job reads it.

use std::sync::Arc;

use nexmark::event as reference;
use sluice::{ReadPosition, ReadStatus, Source, SourceContext, SourceReader};
use sluice_bench::nexmark::{
    Event, Generator, NexmarkConfig, NexmarkEvents, NexmarkSource, NexmarkSplit,
};

/// The crate's configuration for `cfg`: its defaults, our base time and rates.
fn crate_config(cfg: &NexmarkConfig) -> nexmark::config::NexmarkConfig {
    nexmark::config::NexmarkConfig {
        base_time: cfg.base_time_ms as u64,
        first_rate: cfg.first_event_rate as usize,
        next_rate: cfg.next_event_rate as usize,
        ..Default::default()
    }
}

/// Our event as the crate's type, every string drawn.
fn as_reference(e: &Event) -> reference::Event {
    match e {
        Event::Person(p) => reference::Event::Person(reference::Person {
            id: p.id as usize,
            name: p.name.to_string(),
            email_address: p.email_address.to_string(),
            credit_card: p.credit_card.to_string(),
            city: p.city.to_string(),
            state: p.state.to_string(),
            date_time: p.date_time as u64,
            extra: p.extra.to_text(),
        }),
        Event::Auction(a) => reference::Event::Auction(reference::Auction {
            id: a.id as usize,
            item_name: a.item_name.to_string(),
            description: a.description.to_text(),
            initial_bid: a.initial_bid as usize,
            reserve: a.reserve as usize,
            date_time: a.date_time as u64,
            expires: a.expires as u64,
            seller: a.seller as usize,
            category: a.category as usize,
            extra: a.extra.to_text(),
        }),
        Event::Bid(b) => reference::Event::Bid(reference::Bid {
            auction: b.auction as usize,
            bidder: b.bidder as usize,
            price: b.price as usize,
            channel: b.channel.to_string(),
            url: b.url.to_string(),
            date_time: b.date_time as u64,
            extra: b.extra.to_text(),
        }),
    }
}

fn check_range(cfg: &NexmarkConfig, start: u64, count: u64) {
    let ours = Generator::new(cfg).unwrap();
    let theirs = nexmark::EventGenerator::new(crate_config(cfg)).with_offset(start);
    for (n, expected) in (start..start + count).zip(theirs) {
        let got = as_reference(&ours.event(n));
        assert_eq!(got, expected, "event {n}");
        assert_eq!(ours.event(n).date_time() as u64, expected.timestamp());
    }
}

#[test]
fn first_100k_events_equal_the_crates() {
    check_range(&NexmarkConfig::default(), 0, 100_000);
}

#[test]
fn event_0_is_person_1000_at_the_base_time() {
    let cfg = NexmarkConfig::default();
    let Event::Person(p) = Generator::new(&cfg).unwrap().event(0) else {
        panic!("event 0 is not a person");
    };
    assert_eq!((p.id, p.date_time), (1000, 1_700_000_000_000));
}

/// Far into the stream `f32` timestamps lose precision and ids grow: both must still agree.
#[test]
fn events_far_into_the_stream_equal_the_crates() {
    let cfg = NexmarkConfig::default();
    for start in [
        16_777_000,
        1_000_000_000,
        123_456_789_012,
        1_000_000_000_000_000,
    ] {
        check_range(&cfg, start, 300);
    }
    let slow = NexmarkConfig {
        base_time_ms: 0,
        first_event_rate: 1,
        next_event_rate: 1,
        ..NexmarkConfig::default()
    };
    check_range(&slow, 0, 1_000);
    check_range(&slow, 50_000_000_000, 100);
}

/// `first_event_rate > next_event_rate`: the crate's sine shape, across epoch boundaries.
#[test]
fn sine_rate_shape_equals_the_crates() {
    let cfg = NexmarkConfig {
        first_event_rate: 10_000,
        next_event_rate: 5_000,
        ..NexmarkConfig::default()
    };
    check_range(&cfg, 0, 2_000);
    let ours = Generator::new(&cfg).unwrap();
    let crate_cfg = crate_config(&cfg);
    // An epoch is the events of ten 60-second steps, at rates from 10,000 down to 5,000/s.
    let epoch = (0..10)
        .map(|i| {
            let r = 7_500.0 + 2_500.0 * (2.0 * std::f64::consts::PI * i as f64 / 10.0).cos();
            (60_000_000f32 / (1_000_000f32 / r.round() as f32)).round() as u64
        })
        .sum::<u64>();
    for k in 1..4u64 {
        let start = k * epoch - 100;
        check_range(&cfg, start, 200);
        for n in start..start + 200 {
            let theirs = nexmark::EventGenerator::new(crate_cfg.clone()).with_offset(n);
            assert_eq!(ours.timestamp_ms(n) as u64, theirs.timestamp(), "event {n}");
            assert!(
                ours.timestamp_ms(n) <= ours.timestamp_ms(n + 1),
                "event {n}"
            );
        }
    }
}

/// Reads every split of a `workers`-way run to the end, each event with its number.
fn read_splits(cfg: &NexmarkConfig, workers: usize) -> Vec<(u64, Event)> {
    let source = NexmarkSource::new(cfg.clone());
    let mut all = Vec::new();
    for split in source.splits(workers).unwrap() {
        let mut events = NexmarkEvents::new(Generator::new(cfg).unwrap(), split, None);
        loop {
            let n = events.position();
            let Some(e) = events.next() else { break };
            all.push((n, e));
        }
    }
    all
}

#[test]
fn splits_cover_each_event_once_for_1_to_4_workers() {
    let g = Generator::new(&NexmarkConfig::default()).unwrap();
    // Also streams shorter than the number of workers, down to none: some splits are empty.
    for events in [10_007, 2, 0] {
        let cfg = NexmarkConfig {
            events: Some(events),
            ..NexmarkConfig::default()
        };
        for workers in 1..=4 {
            let mut all = read_splits(&cfg, workers);
            all.sort_by_key(|(n, _)| *n);
            let numbers: Vec<u64> = all.iter().map(|(n, _)| *n).collect();
            assert_eq!(
                numbers,
                (0..events).collect::<Vec<_>>(),
                "workers={workers}"
            );
            for (n, e) in &all {
                assert_eq!(*e, g.event(*n), "workers={workers} event {n}");
            }
        }
    }
}

#[test]
fn an_unbounded_source_reads_on_and_ends_at_the_last_event_number() {
    let cfg = NexmarkConfig {
        events: None,
        ..NexmarkConfig::default()
    };
    let source = NexmarkSource::new(cfg.clone());
    assert!(!source.is_bounded());
    let split = source.splits(2).unwrap()[1];
    assert_eq!(split.end, u64::MAX);
    let g = Generator::new(&cfg).unwrap();
    let mut events = NexmarkEvents::new(g.clone(), split, Some(1_000_000_000_001));
    let mut batch = Vec::new();
    assert_eq!(events.fill(&mut batch, 3), ReadStatus::More);
    let expected: Vec<Event> = [1_000_000_000_001, 1_000_000_000_003, 1_000_000_000_005]
        .map(|n| g.event(n))
        .to_vec();
    assert_eq!(batch, expected);
    assert_eq!(events.position(), 1_000_000_000_007);
    // At the very end of the number space the split stops rather than wrapping around.
    let mut last = NexmarkEvents::new(g, split, Some(u64::MAX - 4));
    batch.clear();
    assert_eq!(last.fill(&mut batch, 10), ReadStatus::End);
    assert_eq!(batch.len(), 2);
    assert_eq!(last.position(), u64::MAX);
}

#[test]
fn reading_from_a_position_replays_the_splits_tail() {
    let cfg = NexmarkConfig {
        events: Some(5_000),
        ..NexmarkConfig::default()
    };
    let source = NexmarkSource::new(cfg.clone());
    let ctx = SourceContext::new(0, 1, Arc::new(sluice_core::metrics::JobMetrics::new(1)));
    let split: NexmarkSplit = source.splits(3).unwrap()[1];
    let full = read_all(&source, split, None, &ctx);
    assert_eq!(full.len(), 1_667);
    for p in [0, 1, 2, 3, 1_000, 1_001, 4_999, 5_000, 9_000] {
        let tail: Vec<(u64, Event)> = full.iter().filter(|(n, _)| *n >= p).copied().collect();
        let replay = read_all(&source, split, Some(ReadPosition(p)), &ctx);
        assert_eq!(replay, tail, "from position {p}");
    }
}

/// Reads a split through the `Source` API in batches of 100, each event with its number
/// (the position before it, in a batch of one event per position step).
fn read_all(
    source: &NexmarkSource,
    split: NexmarkSplit,
    start: Option<ReadPosition>,
    ctx: &SourceContext,
) -> Vec<(u64, Event)> {
    futures_lite::future::block_on(async {
        let mut reader = source.open(split, start, ctx).await.unwrap();
        let mut out = Vec::new();
        let mut batch = sluice::Batch::with_capacity();
        loop {
            let first = reader.position().0;
            let status = reader.read_batch(&mut batch, 100).await.unwrap();
            assert!(
                batch
                    .records()
                    .iter()
                    .zip(batch.timestamps())
                    .all(|(e, &ts)| e.date_time() == ts),
                "every event is stamped with its date_time"
            );
            let numbers = (0..).map(|i| first + i * split.step);
            out.extend(numbers.zip(batch.records_mut().drain(..)));
            batch = sluice::Batch::with_capacity();
            if status == ReadStatus::End {
                assert_eq!(reader.position().0, split.end);
                return out;
            }
        }
    })
}

/// A summary that tells events apart, for comparing sorted job output.
fn key(e: &Event) -> (i64, u64, u64, u64) {
    match e {
        Event::Person(p) => (p.date_time, 0, p.id, 0),
        Event::Auction(a) => (a.date_time, 1, a.id, a.seller),
        Event::Bid(b) => (b.date_time, b.auction, b.bidder, b.price),
    }
}

#[test]
fn a_two_worker_job_reads_every_event_once() {
    let cfg = NexmarkConfig {
        events: Some(20_000),
        ..NexmarkConfig::default()
    };
    let source_cfg = cfg.clone();
    let got = sluice::testing::run_local(2, move |env| {
        env.from_source(NexmarkSource::new(source_cfg))
            .map(|e: Event| key(&e))
            .collect()
    });
    let g = Generator::new(&cfg).unwrap();
    let mut expected: Vec<_> = (0..20_000).map(|n| key(&g.event(n))).collect();
    expected.sort();
    assert_eq!(got, expected);
}
