//! The regular (unwindowed) joins: q3 (persons and auctions), and q4 and q9 (auctions and
//! their bids). Both sides come from the one event stream, so each join is a keyed process
//! function over the events of both tables, keyed by the join key: one hash exchange, keyed
//! state for each side, and — for q4 and q9 — an event-time timer that ends an auction.

use std::fmt::{self, Display};

use sluice::ops::Pipe;
use sluice::rkyv::{Archive, Deserialize, Serialize};
use sluice::{
    DataStream, Head, KeyedProcessFunction, KeyedState, ListState, ProcessContext, Result,
    StateCodec, TimeDomain, Timestamp, ValueState,
};

use super::{Due, RowOutput};
use crate::nexmark::model::{Auction, Bid, Event, Sym};

/// q3, local item suggestion:
///
/// ```sql
/// SELECT P.name, P.city, P.state, A.id
/// FROM auction AS A INNER JOIN person AS P on A.seller = P.id
/// WHERE A.category = 10 and (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA');
/// ```
///
/// The generator writes states in lower case ("or"; Java writes "OR"), so states compare
/// case-insensitively. A regular join keeps both sides for ever: the person of each seller id
/// (at most one: ids are unique) and the auctions that came before their seller (a seller may be
/// a person generated a little later). A row is emitted when its second side arrives, with the
/// later of the two `dateTime`s.
pub fn q3<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events
        .flat_map(|e: Event| match e {
            Event::Person(p) if q3_state(p.state) => Some(Q3In::Person(PersonInfo {
                id: p.id,
                name: p.name,
                city: p.city,
                state: p.state,
                date_time: p.date_time,
            })),
            Event::Auction(a) if a.category == 10 => Some(Q3In::Auction {
                id: a.id,
                seller: a.seller,
                date_time: a.date_time,
            }),
            _ => None,
        })
        .key_by(Q3In::person_id)
        .process(Q3Join::default());
    out.rows(rows, Due::OnRecord);
}

fn q3_state(state: Sym) -> bool {
    let s = state.as_str();
    ["OR", "ID", "CA"].iter().any(|x| s.eq_ignore_ascii_case(x))
}

/// What q3 keeps of a person.
#[derive(Clone, Copy, Debug, Archive, Serialize, Deserialize)]
#[rkyv(crate = sluice::rkyv)]
pub struct PersonInfo {
    id: u64,
    name: Sym,
    city: Sym,
    state: Sym,
    date_time: i64,
}

/// q3's input: a person of the right state or an auction of category 10.
#[derive(Clone, Copy, Debug, Archive, Serialize, Deserialize)]
#[rkyv(crate = sluice::rkyv)]
pub enum Q3In {
    /// A person.
    Person(PersonInfo),
    /// An auction: its id, seller and time.
    Auction {
        /// The auction's id.
        id: u64,
        /// Its seller.
        seller: u64,
        /// Its `dateTime`.
        date_time: i64,
    },
}

impl Q3In {
    fn person_id(&self) -> u64 {
        match self {
            Q3In::Person(p) => p.id,
            Q3In::Auction { seller, .. } => *seller,
        }
    }
}

/// q3's join: per seller id, the person and the auctions still waiting for it.
#[derive(Clone, Default)]
pub struct Q3Join {
    person: ValueState<PersonInfo>,
    waiting: ListState<(u64, i64)>,
}

impl KeyedProcessFunction<u64, Q3In, Q3Row> for Q3Join {
    fn open(&mut self, state: &mut KeyedState<u64>) -> Result<()> {
        self.person = state.value_state("person");
        self.waiting = state.list_state("waiting auctions");
        Ok(())
    }
    fn process_element(
        &mut self,
        value: Q3In,
        ctx: &mut ProcessContext<'_, u64, Q3Row>,
    ) -> Result<()> {
        match value {
            Q3In::Person(p) => {
                self.person.update(ctx.state(), p)?;
                for (id, at) in self.waiting.take(ctx.state())? {
                    ctx.output_at(Q3Row::new(&p, id), at.max(p.date_time));
                }
            }
            Q3In::Auction { id, date_time, .. } => match self.person.value(ctx.state())? {
                Some(p) => ctx.output_at(Q3Row::new(&p, id), date_time.max(p.date_time)),
                None => self.waiting.add(ctx.state(), (id, date_time))?,
            },
        }
        Ok(())
    }
}

/// A row of q3: `name,city,state,id`.
#[derive(Clone, Copy, Debug)]
pub struct Q3Row {
    name: Sym,
    city: Sym,
    state: Sym,
    id: u64,
}

impl Q3Row {
    fn new(p: &PersonInfo, auction: u64) -> Q3Row {
        Q3Row {
            name: p.name,
            city: p.city,
            state: p.state,
            id: auction,
        }
    }
}

impl Display for Q3Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{},{}", self.name, self.city, self.state, self.id)
    }
}

/// An auction or a bid, keyed by the auction's id: the input of q4's and q9's join.
#[derive(Clone, Copy, Debug, Archive, Serialize, Deserialize)]
#[rkyv(crate = sluice::rkyv)]
pub enum AuctionOrBid<A, B> {
    /// The auction.
    Auction(A),
    /// A bid for it.
    Bid(B),
}

/// What the auction–bid join needs of an auction (kept in keyed state, so storable).
pub trait AuctionSide: Copy + Send + StateCodec {
    /// Its `dateTime`.
    fn opens(&self) -> i64;
    /// Its `expires`.
    fn expires(&self) -> i64;
}

/// What the auction–bid join needs of a bid (kept in keyed state, so storable).
pub trait BidSide: Copy + Send + StateCodec {
    /// Its `dateTime`.
    fn time(&self) -> i64;
    /// Whether it ranks before `other` (the join keeps the first-ranked bid).
    fn beats(&self, other: &Self) -> bool;
}

/// The join of q4 and q9, per auction id: `A.id = B.auction AND B.dateTime BETWEEN
/// A.dateTime AND A.expires`, keeping the best bid (by [`BidSide::beats`]). When the
/// watermark passes `expires` no more bid can qualify (one that did would be late), so the
/// auction and its best bid are emitted — at `expires` — and the state is dropped; an auction
/// without a qualifying bid emits nothing. Bids that come before their auction (a bid may name
/// an auction generated a little later, in the same millisecond) wait, each until the
/// watermark passes its time: an auction not yet seen then opens after it.
#[derive(Clone)]
pub struct AuctionBids<A, B> {
    auction: ValueState<A>,
    best: ValueState<B>,
    waiting: ListState<B>,
}

impl<A, B> Default for AuctionBids<A, B> {
    fn default() -> Self {
        AuctionBids {
            auction: ValueState::default(),
            best: ValueState::default(),
            waiting: ListState::default(),
        }
    }
}

impl<A: AuctionSide, B: BidSide> AuctionBids<A, B> {
    fn offer(&self, state: &mut KeyedState<u64>, bid: B) -> Result<()> {
        let offered = self.best.value_mut(state, |best| {
            if bid.beats(best) {
                *best = bid;
            }
        })?;
        match offered {
            Some(()) => Ok(()),
            None => self.best.update(state, bid),
        }
    }
}

impl<A: AuctionSide, B: BidSide> KeyedProcessFunction<u64, AuctionOrBid<A, B>, (A, B)>
    for AuctionBids<A, B>
{
    fn open(&mut self, state: &mut KeyedState<u64>) -> Result<()> {
        self.auction = state.value_state("auction");
        self.best = state.value_state("best bid");
        self.waiting = state.list_state("bids before the auction");
        Ok(())
    }
    fn process_element(
        &mut self,
        value: AuctionOrBid<A, B>,
        ctx: &mut ProcessContext<'_, u64, (A, B)>,
    ) -> Result<()> {
        match value {
            AuctionOrBid::Auction(a) => {
                let qualifies = |b: &B| (a.opens()..=a.expires()).contains(&b.time());
                for bid in self.waiting.take(ctx.state())? {
                    if qualifies(&bid) {
                        self.offer(ctx.state(), bid)?;
                    }
                }
                self.auction.update(ctx.state(), a)?;
                ctx.register_event_time_timer(a.expires())?;
            }
            AuctionOrBid::Bid(b) => match self.auction.value(ctx.state())? {
                Some(a) if (a.opens()..=a.expires()).contains(&b.time()) => {
                    self.offer(ctx.state(), b)?;
                }
                Some(_) => {}
                None => {
                    self.waiting.add(ctx.state(), b)?;
                    ctx.register_event_time_timer(b.time())?;
                }
            },
        }
        Ok(())
    }
    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        _domain: TimeDomain,
        ctx: &mut ProcessContext<'_, u64, (A, B)>,
    ) -> Result<()> {
        match self.auction.value(ctx.state())? {
            Some(a) if timestamp >= a.expires() => {
                self.auction.clear(ctx.state())?;
                if let Some(best) = self.best.take(ctx.state())? {
                    ctx.output((a, best));
                }
            }
            // A waiting bid's timer that the auction's arrival made moot.
            Some(_) => {}
            None => self.waiting.retain(ctx.state(), |b| b.time() > timestamp)?,
        }
        Ok(())
    }
}

/// What q4 keeps of an auction.
#[derive(Clone, Copy, Debug, Archive, Serialize, Deserialize)]
#[rkyv(crate = sluice::rkyv)]
pub struct Q4Auction {
    opens: i64,
    expires: i64,
    category: u64,
}

impl AuctionSide for Q4Auction {
    fn opens(&self) -> i64 {
        self.opens
    }
    fn expires(&self) -> i64 {
        self.expires
    }
}

/// What q4 keeps of a bid: its price and time.
#[derive(Clone, Copy, Debug, Archive, Serialize, Deserialize)]
#[rkyv(crate = sluice::rkyv)]
pub struct PriceAt {
    price: u64,
    time: i64,
}

impl BidSide for PriceAt {
    fn time(&self) -> i64 {
        self.time
    }
    fn beats(&self, other: &PriceAt) -> bool {
        self.price > other.price
    }
}

/// q4, average price per category:
///
/// ```sql
/// SELECT Q.category, AVG(Q.final) FROM (
///     SELECT MAX(B.price) AS final, A.category FROM auction A, bid B
///     WHERE A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires
///     GROUP BY A.id, A.category) Q
/// GROUP BY Q.category;
/// ```
///
/// The inner query is the auction–bid join ([`AuctionBids`]): an auction's final price is
/// known once the watermark passes its `expires`. The outer `GROUP BY` is unbounded: its
/// changelog is represented by its final rows, one per category when the input ends. `AVG` of
/// a `BIGINT` is a `BIGINT` in Flink: the sum divided by the count, truncated.
///
/// At the suite's 10 M events/s an auction is open for 1 or 2 ms (the generator sizes its
/// length from the time the next 1,666 events take) and its bids come within a fraction of a
/// millisecond, so most bids qualify and a final price is known 4 s (the watermark's delay)
/// after its auction closes; the join's state stays at a few thousand auctions.
pub fn q4<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events
        .flat_map(|e: Event| match e {
            Event::Auction(a) => Some((
                a.id,
                AuctionOrBid::Auction(Q4Auction {
                    opens: a.date_time,
                    expires: a.expires,
                    category: a.category,
                }),
            )),
            Event::Bid(b) => Some((
                b.auction,
                AuctionOrBid::Bid(PriceAt {
                    price: b.price,
                    time: b.date_time,
                }),
            )),
            Event::Person(_) => None,
        })
        .key_by(|(id, _): &(u64, AuctionOrBid<Q4Auction, PriceAt>)| *id)
        .process(KeyedValue(AuctionBids::default()))
        .map(|(a, best): (Q4Auction, PriceAt)| (a.category, (best.price, 1u64)))
        .into_keyed()
        .emit_final()
        .reduce(|(s1, n1): (u64, u64), (s2, n2)| (s1 + s2, n1 + n2))
        .map(|(category, (sum, count))| Q4Row {
            category,
            avg: sum / count.max(1),
        });
    out.rows(rows, Due::AtEnd);
}

/// A process function over `(key, value)` records that hands the value to `F`.
#[derive(Clone)]
pub struct KeyedValue<F>(pub F);

impl<K, T, O, F> KeyedProcessFunction<u64, (K, T), O> for KeyedValue<F>
where
    F: KeyedProcessFunction<u64, T, O>,
    K: Send + 'static,
    T: 'static,
{
    fn open(&mut self, state: &mut KeyedState<u64>) -> Result<()> {
        self.0.open(state)
    }
    fn process_element(
        &mut self,
        (_, value): (K, T),
        ctx: &mut ProcessContext<'_, u64, O>,
    ) -> Result<()> {
        self.0.process_element(value, ctx)
    }
    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        domain: TimeDomain,
        ctx: &mut ProcessContext<'_, u64, O>,
    ) -> Result<()> {
        self.0.on_timer(timestamp, domain, ctx)
    }
}

/// A row of q4: `category,avg`.
#[derive(Clone, Copy, Debug)]
pub struct Q4Row {
    category: u64,
    avg: u64,
}

impl Display for Q4Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.category, self.avg)
    }
}

impl AuctionSide for Auction {
    fn opens(&self) -> i64 {
        self.date_time
    }
    fn expires(&self) -> i64 {
        self.expires
    }
}

impl BidSide for Bid {
    fn time(&self) -> i64 {
        self.date_time
    }
    /// q9's order: `B.price DESC, B.dateTime ASC`; then, for a deterministic choice where the
    /// SQL's `ROW_NUMBER` picks either, the lower bidder, then the smaller `extra`.
    fn beats(&self, other: &Bid) -> bool {
        let key = |b: &Bid| (std::cmp::Reverse(b.price), b.date_time, b.bidder);
        match key(self).cmp(&key(other)) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => self.extra.to_text() < other.extra.to_text(),
        }
    }
}

/// An auction or a bid, with the auction id the join of q9 and q20 is keyed by.
fn auction_or_bid(e: Event) -> Option<(u64, AuctionOrBid<Auction, Bid>)> {
    match e {
        Event::Auction(a) => Some((a.id, AuctionOrBid::Auction(a))),
        Event::Bid(b) => Some((b.auction, AuctionOrBid::Bid(b))),
        Event::Person(_) => None,
    }
}

/// q9, winning bids: every auction with its highest qualifying bid (`ROW_NUMBER() OVER
/// (PARTITION BY A.id ORDER BY B.price DESC, B.dateTime ASC)` ≤ 1) among the bids with
/// `A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires` — the auction–bid join
/// ([`AuctionBids`]) emitting each auction once, when the watermark passes its `expires`
/// (the SQL's top-1 changelog at its final state). Ties in price and time go to the lower
/// bidder, then the smaller `extra`.
pub fn q9<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events
        .flat_map(auction_or_bid)
        .key_by(|(id, _): &(u64, AuctionOrBid<Auction, Bid>)| *id)
        .process(KeyedValue(AuctionBids::default()))
        .map(|(a, b)| Q9Row(a, b));
    out.rows(rows, Due::OnWatermark);
}

/// A row of q9: the auction's ten columns, then the bid's `auction,bidder,price,dateTime,
/// extra`.
#[derive(Clone, Copy, Debug)]
pub struct Q9Row(pub Auction, pub Bid);

impl Display for Q9Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (&self.0, &self.1);
        write!(
            f,
            "{},{},{},{},{},{},{},{},{},{},",
            a.id,
            a.item_name,
            a.description,
            a.initial_bid,
            a.reserve,
            a.date_time,
            a.expires,
            a.seller,
            a.category,
            a.extra
        )?;
        write!(
            f,
            "{},{},{},{},{}",
            b.auction, b.bidder, b.price, b.date_time, b.extra
        )
    }
}

/// q20, expanded bids: every bid with its auction, for auctions of category 10:
///
/// ```sql
/// SELECT auction, bidder, price, channel, url, B.dateTime, B.extra,
///     itemName, description, initialBid, reserve, A.dateTime, expires, seller, category,
///     A.extra
/// FROM bid AS B INNER JOIN auction AS A on B.auction = A.id WHERE A.category = 10;
/// ```
///
/// A regular join keyed by auction id, with no time bound: a category-10 auction is kept for
/// ever, an auction of another category leaves a marker so that its bids are dropped, and
/// bids that come before their auction wait for it. A row carries the later of the two
/// `dateTime`s.
pub fn q20<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events
        .flat_map(auction_or_bid)
        .key_by(|(id, _): &(u64, AuctionOrBid<Auction, Bid>)| *id)
        .process(KeyedValue(Q20Join::default()));
    out.rows(rows, Due::OnRecord);
}

/// q20's join: per auction id, the category-10 auction, or a marker for another category,
/// and the bids waiting for their auction.
#[derive(Clone, Default)]
pub struct Q20Join {
    auction: ValueState<Auction>,
    other_category: ValueState<()>,
    waiting: ListState<Bid>,
}

impl KeyedProcessFunction<u64, AuctionOrBid<Auction, Bid>, Q20Row> for Q20Join {
    fn open(&mut self, state: &mut KeyedState<u64>) -> Result<()> {
        self.auction = state.value_state("category-10 auction");
        self.other_category = state.value_state("auction of another category");
        self.waiting = state.list_state("bids before the auction");
        Ok(())
    }
    fn process_element(
        &mut self,
        value: AuctionOrBid<Auction, Bid>,
        ctx: &mut ProcessContext<'_, u64, Q20Row>,
    ) -> Result<()> {
        match value {
            AuctionOrBid::Auction(a) if a.category == 10 => {
                for b in self.waiting.take(ctx.state())? {
                    ctx.output_at(Q20Row(b, a), a.date_time.max(b.date_time));
                }
                self.auction.update(ctx.state(), a)?;
            }
            AuctionOrBid::Auction(_) => {
                self.waiting.clear(ctx.state())?;
                self.other_category.update(ctx.state(), ())?;
            }
            AuctionOrBid::Bid(b) => match self.auction.value(ctx.state())? {
                Some(a) => ctx.output_at(Q20Row(b, a), a.date_time.max(b.date_time)),
                None if self.other_category.value(ctx.state())?.is_some() => {}
                None => self.waiting.add(ctx.state(), b)?,
            },
        }
        Ok(())
    }
}

/// A row of q20: the bid's seven columns, then the auction's nine after its id.
#[derive(Clone, Copy, Debug)]
pub struct Q20Row(pub Bid, pub Auction);

impl Display for Q20Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (b, a) = (&self.0, &self.1);
        write!(
            f,
            "{},{},{},{},{},{},{},",
            b.auction, b.bidder, b.price, b.channel, b.url, b.date_time, b.extra
        )?;
        write!(
            f,
            "{},{},{},{},{},{},{},{},{}",
            a.item_name,
            a.description,
            a.initial_bid,
            a.reserve,
            a.date_time,
            a.expires,
            a.seller,
            a.category,
            a.extra
        )
    }
}
