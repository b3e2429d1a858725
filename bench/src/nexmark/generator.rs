//! Event `n`, computed from `n` alone: its kind and ids by arithmetic on `n`, its time from the
//! event-time rate, and its other fields from a random sequence seeded with `n`. This is the
//! `nexmark` crate 0.2.0's `Event::new(n, config)` with the crate's defaults, ported draw for
//! draw; each step below names the crate's code it follows.

use sluice::{Error, Result};

use super::model::{Auction, Bid, Event, EventKind, FixedStr, LazyText, Person};
use super::rng::SmallRng;
use super::tables::{CHANNELS, LAST_NAMES, Tables, tables};

/// Persons, auctions and bids among every [`PROPORTION_DENOMINATOR`] events.
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
/// Events per round of one person, three auctions and 46 bids.
pub const PROPORTION_DENOMINATOR: u64 = 50;
/// The first person's and the first auction's id.
const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const FIRST_CATEGORY_ID: u64 = 10;
const NUM_CATEGORIES: u64 = 5;
/// People considered active for placing auctions or bids; auctions in flight.
const ACTIVE_PEOPLE: u64 = 1000;
const IN_FLIGHT_AUCTIONS: u64 = 100;
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
/// One in `ratio` auctions (bids) goes to an ordinary seller (auction, bidder, channel); the
/// rest go to a hot one.
const HOT_SELLER_RATIO: u64 = 4;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_BIDDER_RATIO: u64 = 4;
const HOT_CHANNEL_RATIO: u64 = 2;
/// Hot sellers, auctions and bidders are the first of each batch of 100.
const HOT_BATCH: u64 = 100;
/// Nominal event sizes in bytes; `extra` pads an event to about this size.
const AVG_PERSON_BYTES: u64 = 200;
const AVG_AUCTION_BYTES: u64 = 500;
const AVG_BID_BYTES: u64 = 100;
/// The crate's rate-shape constants: a sine over 10 steps, a period of 600 s.
const SINE_APPROX_STEPS: usize = 10;
const RATE_PERIOD_S: u64 = 600;
const US_PER_UNIT: u64 = 1_000_000;

/// What to generate. The defaults are the crate's, with a fixed base time and the Nexmark
/// suite's event-time rate of 10 M events/s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NexmarkConfig {
    /// Events in all; `None` for an unbounded stream. Default: 100 M, the suite's run.
    pub events: Option<u64>,
    /// Event 0's time, epoch milliseconds. Default: 1700000000000 (never the wall clock, so
    /// that every run produces the same events).
    pub base_time_ms: i64,
    /// Event-time rate at the start of each period, events per second. Default: 10 M.
    pub first_event_rate: u64,
    /// The rate the crate's sine shape moves towards, at most `first_event_rate`. Default:
    /// 10 M, a constant rate. As the crate computes the shape, the events of each 600 s epoch
    /// come at the first rate and the rest of the epoch is silent (see
    /// [`Generator::timestamp_ms`]).
    pub next_event_rate: u64,
}

impl Default for NexmarkConfig {
    fn default() -> NexmarkConfig {
        NexmarkConfig {
            events: Some(100_000_000),
            base_time_ms: 1_700_000_000_000,
            first_event_rate: 10_000_000,
            next_event_rate: 10_000_000,
        }
    }
}

/// Generates event `n` for any `n`, in any order, on any thread.
///
/// ```
/// use sluice_bench::nexmark::{Event, Generator, NexmarkConfig};
///
/// let generator = Generator::new(&NexmarkConfig::default())?;
/// let Event::Person(p) = generator.event(0) else { unreachable!() };
/// assert_eq!((p.id, p.date_time, p.state.as_str()), (1000, 1_700_000_000_000, "az"));
/// let Event::Bid(b) = generator.event(1_000_004) else { unreachable!() };
/// assert_eq!(b.date_time, 1_700_000_000_100);
/// # Ok::<(), sluice::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Generator {
    base_time_ms: i64,
    timing: Timing,
    tables: &'static Tables,
}

/// Event time as a function of the event number (the crate's `GeneratorConfig`).
#[derive(Clone, Debug)]
enum Timing {
    /// One rate: `n × delay_us / 1000` milliseconds after the base time, in `f32` arithmetic.
    Constant { delay_us: f32 },
    /// `first_event_rate != next_event_rate`: the crate's sine shape, as the crate computes it.
    Sine {
        first_delay_us: f32,
        events_per_epoch: u64,
        epoch_period_ms: f32,
    },
}

impl Generator {
    /// A generator for `cfg` (its `events` bound is the source's business, not the
    /// generator's). Fails on a rate of zero, or a `next_event_rate` above the first (the
    /// crate computes `first - next` in unsigned arithmetic).
    pub fn new(cfg: &NexmarkConfig) -> Result<Generator> {
        let (first, next) = (cfg.first_event_rate, cfg.next_event_rate);
        if first == 0 || next == 0 {
            return Err(Error::Config(format!(
                "nexmark event rates must be positive (first {first}, next {next})"
            )));
        }
        if next > first {
            return Err(Error::Config(format!(
                "nexmark next event rate {next} is above the first rate {first}: the reference \
                 generator supports only a rate that falls (or stays)"
            )));
        }
        let timing = if first == next {
            Timing::Constant {
                delay_us: rate_to_delay_us(first),
            }
        } else {
            sine_timing(first, next)?
        };
        Ok(Generator {
            base_time_ms: cfg.base_time_ms,
            timing,
            tables: tables(),
        })
    }

    /// The kind of event `n`.
    #[inline]
    pub fn kind(n: u64) -> EventKind {
        let rem = n % PROPORTION_DENOMINATOR;
        if rem < PERSON_PROPORTION {
            EventKind::Person
        } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
            EventKind::Auction
        } else {
            EventKind::Bid
        }
    }

    /// Event `n`'s time, epoch milliseconds (the crate's `event_timestamp`). Non-decreasing in
    /// `n`: every step rounds monotonically, and within an epoch the first rate is the highest.
    #[inline]
    pub fn timestamp_ms(&self, n: u64) -> i64 {
        match &self.timing {
            Timing::Constant { delay_us } => {
                let offset = round_to_u64((n as f32 * delay_us) / 1000.0);
                self.base_time_ms.saturating_add_unsigned(offset)
            }
            Timing::Sine {
                first_delay_us,
                events_per_epoch,
                epoch_period_ms,
            } => {
                let epoch = n / events_per_epoch;
                let event_i = n % events_per_epoch;
                // The crate's loop over the steps returns in the first step whenever it holds
                // more than one event — it compares the out-of-order group size (1) where the
                // Java generator compares `event_i` — and a step of 60 s at ≥ 1 event/s holds
                // at least 60. So within an epoch events follow the first rate, and the other
                // steps only lengthen the epoch.
                let offset_in_cycle = event_i as f32 * first_delay_us;
                let offset =
                    round_to_u64(epoch as f32 * epoch_period_ms + offset_in_cycle / 1000.0);
                self.base_time_ms.saturating_add_unsigned(offset)
            }
        }
    }

    /// Event `n`.
    #[inline]
    pub fn event(&self, n: u64) -> Event {
        let time = self.timestamp_ms(n);
        let rng = &mut SmallRng::seed_from_u64(n);
        match Generator::kind(n) {
            EventKind::Person => Event::Person(self.person(n, time, rng)),
            EventKind::Auction => Event::Auction(self.auction(n, time, rng)),
            EventKind::Bid => Event::Bid(self.bid(n, time, rng)),
        }
    }

    /// The crate's `Person::new`.
    #[inline(always)]
    fn person(&self, n: u64, time: i64, rng: &mut SmallRng) -> Person {
        let t = self.tables;
        let first = rng.below_u32(11) as usize;
        let last = rng.below_u32(9) as usize;
        let name = t.names[first * LAST_NAMES.len() + last];
        let mut email = *b"xxxxxxx@yyyyy.com";
        let (user, domain) = email.split_at_mut(8);
        for b in user[..7].iter_mut().chain(&mut domain[..5]) {
            *b = rng.letter();
        }
        let mut card = *b"0000 0000 0000 0000";
        for group in card.chunks_mut(5) {
            let mut v = rng.below_u32(10_000);
            for d in group[..4].iter_mut().rev() {
                *d = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        let city = t.cities[rng.below_u32(10) as usize];
        let state = t.states[rng.below_u32(6) as usize];
        let size = 8 + name.len() + email.len() + card.len() + city.len() + state.len();
        Person {
            id: person_last_id(n) + FIRST_PERSON_ID,
            name,
            email_address: FixedStr::from_ascii(email),
            credit_card: FixedStr::from_ascii(card),
            city,
            state,
            date_time: time,
            extra: next_extra(n, rng, size as u64, AVG_PERSON_BYTES),
        }
    }

    /// The crate's `Auction::new`.
    #[inline(always)]
    fn auction(&self, n: u64, time: i64, rng: &mut SmallRng) -> Auction {
        let mut item_name = [0u8; 20];
        for b in &mut item_name {
            *b = rng.letter();
        }
        let description = LazyText::new(n, rng.draws(), 100);
        rng.skip_letters(100);
        let initial_bid = price(rng);
        let reserve = initial_bid + price(rng);
        let expires = time.saturating_add_unsigned(self.auction_length_ms(n, rng, time));
        let seller = if rng.below_pow2(HOT_SELLER_RATIO) > 0 {
            (person_last_id(n) / HOT_BATCH) * HOT_BATCH
        } else {
            person_next_id(n, rng)
        };
        let category = FIRST_CATEGORY_ID + rng.below_u64(NUM_CATEGORIES);
        // id, item name, description, initial bid, reserve, date time, expires, seller,
        // category: the crate counts 8 + 20 + 100 + 5 × 8.
        let size = 8 + 20 + 100 + 5 * 8;
        Auction {
            id: auction_last_id(n) + FIRST_AUCTION_ID,
            item_name: FixedStr::from_ascii(item_name),
            description,
            initial_bid,
            reserve,
            date_time: time,
            expires,
            seller: seller + FIRST_PERSON_ID,
            category,
            extra: next_extra(n, rng, size, AVG_AUCTION_BYTES),
        }
    }

    /// The crate's `Auction::next_length`: 1 ms plus up to twice the event time that
    /// `IN_FLIGHT_AUCTIONS` more auctions take to arrive.
    fn auction_length_ms(&self, n: u64, rng: &mut SmallRng, time: i64) -> u64 {
        let events_for_auctions = IN_FLIGHT_AUCTIONS * PROPORTION_DENOMINATOR / AUCTION_PROPORTION;
        // Saturating where the crate would overflow: 2⁶⁴ events is 58,000 years at 10 M/s.
        let future = self.timestamp_ms(n.saturating_add(events_for_auctions));
        // Unsigned and wrapping, as the crate's `u64` arithmetic in a release build.
        let horizon = (future as u64).wrapping_sub(time as u64);
        1 + rng.below_u64(horizon.wrapping_mul(2).max(1))
    }

    /// The crate's `Bid::new`.
    #[inline(always)]
    fn bid(&self, n: u64, time: i64, rng: &mut SmallRng) -> Bid {
        let t = self.tables;
        // Each choice below goes either way at random; the ordinary way's draw is made
        // without a branch (`below_u64_if`), which a branch predictor could only guess.
        let hot_auction = 0 < rng.below_pow2(HOT_AUCTION_RATIO);
        let max_auction = auction_last_id(n);
        let min_auction = max_auction.saturating_sub(IN_FLIGHT_AUCTIONS);
        let range = max_auction - min_auction + 1 + AUCTION_ID_LEAD;
        let next_auction = min_auction + rng.below_u64_if(!hot_auction, range);
        let auction = if hot_auction {
            // The first auction of the batch of the last HOT_BATCH auctions.
            (max_auction / HOT_BATCH) * HOT_BATCH
        } else {
            next_auction
        };
        let hot_bidder = 0 < rng.below_pow2(HOT_BIDDER_RATIO);
        let people = person_last_id(n) + 1;
        let active = people.min(ACTIVE_PEOPLE);
        let next_bidder = people - active + rng.below_u64_if(!hot_bidder, active + PERSON_ID_LEAD);
        let bidder = if hot_bidder {
            // The second person of the batch, so that hot bidders are not hot sellers.
            (person_last_id(n) / HOT_BATCH) * HOT_BATCH + 1
        } else {
            next_bidder
        };
        let price = price(rng);
        let (channel, url) = if rng.below_pow2(HOT_CHANNEL_RATIO) > 0 {
            let i = rng.below_pow2(t.hot_channels.len() as u64) as usize;
            (t.hot_channels[i], t.hot_urls[i])
        } else {
            let i = rng.below_u32(CHANNELS as u32) as usize;
            (t.channels[i], t.urls[i])
        };
        Bid {
            auction: auction + FIRST_AUCTION_ID,
            bidder: bidder + FIRST_PERSON_ID,
            price,
            channel,
            url,
            date_time: time,
            extra: next_extra(n, rng, 4 * 8, AVG_BID_BYTES),
        }
    }
}

/// The crate's rate-to-period conversion: microseconds between events, in `f32`, times the
/// number of generators (1).
fn rate_to_delay_us(rate: u64) -> f32 {
    (US_PER_UNIT as f32 / rate as f32) * 1.0
}

/// The crate's sine shape: ten steps of `RATE_PERIOD_S / 10` seconds each, the rate moving from
/// `first` down to `next` and back.
fn sine_timing(first: u64, next: u64) -> Result<Timing> {
    let mid = (first + next) as f64 / 2.0;
    let amp = (first - next) as f64 / 2.0;
    let delays_us: Vec<f32> = (0..SINE_APPROX_STEPS)
        .map(|i| {
            let r = (2.0 * std::f64::consts::PI * i as f64) / SINE_APPROX_STEPS as f64;
            rate_to_delay_us((mid + amp * r.cos()).round() as u64)
        })
        .collect();
    let step_length_s = RATE_PERIOD_S.div_ceil(SINE_APPROX_STEPS as u64);
    let mut events_per_epoch = 0u64;
    let mut epoch_period_ms = 0.0f32;
    for delay in &delays_us {
        let events_in_cycle = (step_length_s * 1_000_000) as f32 / delay;
        events_per_epoch += events_in_cycle.round() as u64;
        epoch_period_ms += (events_in_cycle * delay) / 1000.0;
    }
    if events_per_epoch == 0 {
        return Err(Error::Config(format!(
            "nexmark event rates {first} and {next} give no events in a period"
        )));
    }
    Ok(Timing::Sine {
        first_delay_us: delays_us[0],
        events_per_epoch,
        epoch_period_ms,
    })
}

/// The crate's `gen_price`: `10^(6u) × 100` cents, rounded, for a uniform `u` in `[0, 1)`.
#[inline]
fn price(rng: &mut SmallRng) -> u64 {
    round_to_u64(10.0_f32.powf(rng.unit_f32() * 6.0) * 100.0)
}

/// `x.round() as u64`, without the call to `roundf` that `f32::round` compiles to on x86-64's
/// baseline. For `0 ≤ x < 2⁶³` the truncation is exact, and so is `x - trunc(x)` (below 2²³
/// both have at most 24 significant bits; above, `x` is an integer), so comparing it with one
/// half rounds halves away from zero as `round` does. Going through `i64` spares the
/// conversions' handling of the top half of `u64`.
#[inline]
fn round_to_u64(x: f32) -> u64 {
    const TWO_POW_63: f32 = 9_223_372_036_854_775_808.0;
    if (0.0..TWO_POW_63).contains(&x) {
        let t = x as i64;
        (t + i64::from(x - t as f32 >= 0.5)) as u64
    } else {
        // Negative, huge or NaN: never from the generator.
        x.round() as u64
    }
}

/// The crate's `gen_next_extra`: letters that bring an event of `size` bytes to about
/// `average` bytes, drawn last, so only their length is drawn now.
#[inline]
fn next_extra(n: u64, rng: &mut SmallRng, size: u64, average: u64) -> LazyText {
    if size > average {
        return LazyText::new(n, rng.draws(), 0);
    }
    let desired = average - size;
    let delta = (desired + 2) / 5;
    let min = desired - delta;
    let len = min
        + if delta == 0 {
            0
        } else {
            rng.below_u64(2 * delta)
        };
    LazyText::new(n, rng.draws(), len)
}

/// The id (less the first id) of the last person generated at or before event `n`.
#[inline]
fn person_last_id(n: u64) -> u64 {
    // The crate adds `min(n % 50, PERSON_PROPORTION - 1)`, which is 0 for one person a round.
    const _: () = assert!(PERSON_PROPORTION == 1);
    n / PROPORTION_DENOMINATOR * PERSON_PROPORTION
}

/// A person id among the last `ACTIVE_PEOPLE`, or up to `PERSON_ID_LEAD` beyond.
#[inline]
fn person_next_id(n: u64, rng: &mut SmallRng) -> u64 {
    let people = person_last_id(n) + 1;
    let active = people.min(ACTIVE_PEOPLE);
    people - active + rng.below_u64(active + PERSON_ID_LEAD)
}

/// The id (less the first id) of the last auction generated at or before event `n`.
#[inline]
fn auction_last_id(n: u64) -> u64 {
    let mut epoch = n / PROPORTION_DENOMINATOR;
    let mut offset = n % PROPORTION_DENOMINATOR;
    if offset < PERSON_PROPORTION {
        // Never for an auction or a bid (offset ≥ 1); wrapping as the crate in release.
        epoch = epoch.wrapping_sub(1);
        offset = AUCTION_PROPORTION - 1;
    } else if PERSON_PROPORTION + AUCTION_PROPORTION <= offset {
        offset = AUCTION_PROPORTION - 1;
    } else {
        offset -= PERSON_PROPORTION;
    }
    epoch.wrapping_mul(AUCTION_PROPORTION).wrapping_add(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_0_is_person_1000_at_the_base_time() {
        let g = Generator::new(&NexmarkConfig::default()).unwrap();
        let Event::Person(p) = g.event(0) else {
            panic!("event 0 is not a person");
        };
        assert_eq!(p.id, 1000);
        assert_eq!(p.date_time, 1_700_000_000_000);
        assert_eq!(p.name, "vicky noris");
        assert_eq!(p.email_address.as_str(), "yplkvgz@qbxfg.com");
        assert_eq!(p.credit_card.as_str(), "7878 5821 1864 2539");
        assert_eq!((p.city.as_str(), p.state.as_str()), ("cheyenne", "az"));
        assert!(
            p.extra
                .to_text()
                .starts_with("lwaiyhjhrkaruidlsjilvqccyedttedeyn")
        );
    }

    #[test]
    fn round_to_u64_rounds_as_f32_round() {
        let check = |x: f32| assert_eq!(round_to_u64(x), x.round() as u64, "x={x:e}");
        for bits in (0..0x7f80_0000u32).step_by(997) {
            check(f32::from_bits(bits));
        }
        for k in 0..100_000u32 {
            let half = k as f32 + 0.5;
            check(half);
            check(f32::from_bits(half.to_bits() - 1));
            check(f32::from_bits(half.to_bits() + 1));
        }
        for x in [
            0.0,
            0.5,
            8_388_607.5,
            8_388_608.0,
            16_777_217.0,
            1e19,
            2e19,
            f32::MAX,
        ] {
            check(x);
        }
        check(f32::INFINITY);
        assert_eq!(round_to_u64(f32::NAN), f32::NAN.round() as u64);
    }

    #[test]
    fn kinds_follow_the_1_3_46_proportions() {
        let counts = (0..PROPORTION_DENOMINATOR * 3).fold([0; 3], |mut c, n| {
            c[Generator::kind(n) as usize] += 1;
            c
        });
        assert_eq!(counts, [3, 9, 138]);
    }

    #[test]
    fn rising_rate_and_zero_rate_are_config_errors() {
        for (first, next) in [(10, 20), (0, 0), (10, 0)] {
            let cfg = NexmarkConfig {
                first_event_rate: first,
                next_event_rate: next,
                ..NexmarkConfig::default()
            };
            let err = Generator::new(&cfg).unwrap_err().to_string();
            assert!(err.contains("rate"), "{err}");
        }
    }
}
