//! The Nexmark event model — [`Person`], [`Auction`], [`Bid`] and their union [`Event`] —
//! laid out for a streaming engine that moves records by value in batches: every type is
//! `Copy`, owns no heap memory and has no drop glue.
//!
//! - Strings drawn from small fixed lists (names, cities, states, channels, URLs) are [`Sym`]s:
//!   two bytes, interned once per process. A symbol's number is this process's: it never
//!   leaves it: archived (in keyed state, or between nodes) a symbol is its string, interned
//!   again when read.
//! - Short generated strings of a fixed length (an e-mail address, a credit card number, an
//!   item name) are [`FixedStr`]s, inline.
//! - Long generated strings (`description`, `extra`: 54 to 398 random letters) are
//!   [`LazyText`]s: the event's seed and where its letters start in the seed's random
//!   sequence, 12 bytes. The letters are drawn only when asked for, and are always the same.
//!
//! A [`Bid`] is 48 bytes; an [`Event`] is 112 (its largest variant, [`Auction`], is 104).
//!
//! Every type derives rkyv's traits, so keyed state can hold them (the join of q4 and q9 keeps
//! auctions and bids in the state store) and they can cross nodes (they are registered as wire
//! types with the queries, [`super::queries::register_wire_types`]).

use std::fmt;
use std::ops::Deref;

use sluice::rkyv::rancor::{Fallible, Source};
use sluice::rkyv::ser::Writer;
use sluice::rkyv::string::{ArchivedString, StringResolver};
use sluice::rkyv::{Archive, Deserialize, Place, Serialize};

use super::rng::SmallRng;
use super::tables::{intern, tables};

/// A string from one of the generator's fixed lists, interned: equal symbols are equal
/// strings. It dereferences to `&'static str`; it orders as its string does.
///
/// Its number is this process's own, so rkyv archives it as its string (an `ArchivedString`)
/// and deserializing interns the string again: a symbol means the same string in every
/// process, and any type holding symbols can derive rkyv's traits as it would for a `String`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sym(pub(crate) u16);

impl Sym {
    /// The string.
    #[inline]
    pub fn as_str(self) -> &'static str {
        tables().str(self.0)
    }

    /// The symbol of `s`: the generator's own when `s` is in its lists, else a new one (for
    /// a string that another process interned), or `None` when every symbol is taken.
    pub fn intern(s: &str) -> Option<Sym> {
        intern(s)
    }
}

impl Archive for Sym {
    type Archived = ArchivedString;
    type Resolver = StringResolver;

    fn resolve(&self, resolver: StringResolver, out: Place<ArchivedString>) {
        ArchivedString::resolve_from_str(self.as_str(), resolver, out);
    }
}

impl<S> Serialize<S> for Sym
where
    S: Fallible + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<StringResolver, S::Error> {
        ArchivedString::serialize_from_str(self.as_str(), serializer)
    }
}

impl<D> Deserialize<Sym, D> for ArchivedString
where
    D: Fallible + ?Sized,
    D::Error: Source,
{
    fn deserialize(&self, _: &mut D) -> Result<Sym, D::Error> {
        Sym::intern(self.as_str()).ok_or_else(|| {
            D::Error::new(SymbolsExhausted {
                len: self.as_str().len(),
            })
        })
    }
}

/// Every 16-bit symbol is taken: a string read from an archive cannot be interned.
#[derive(Debug)]
struct SymbolsExhausted {
    len: usize,
}

impl fmt::Display for SymbolsExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot intern a string of {} bytes: all 65,536 symbols are taken",
            self.len
        )
    }
}

impl std::error::Error for SymbolsExhausted {}

impl Deref for Sym {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialOrd for Sym {
    fn partial_cmp(&self, other: &Sym) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sym {
    fn cmp(&self, other: &Sym) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialEq<str> for Sym {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Sym {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// An ASCII string of exactly `N` bytes, inline. It dereferences to `&str`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
#[rkyv(crate = sluice::rkyv)]
pub struct FixedStr<const N: usize>([u8; N]);

impl<const N: usize> FixedStr<N> {
    /// `s` when it is exactly `N` ASCII bytes.
    pub fn new(s: &str) -> Option<FixedStr<N>> {
        let bytes: [u8; N] = s.as_bytes().try_into().ok()?;
        bytes.is_ascii().then_some(FixedStr(bytes))
    }

    /// From bytes the generator wrote: ASCII by construction.
    #[inline]
    pub(crate) fn from_ascii(bytes: [u8; N]) -> FixedStr<N> {
        debug_assert!(bytes.is_ascii());
        FixedStr(bytes)
    }

    /// The string.
    #[inline]
    pub fn as_str(&self) -> &str {
        // Always ASCII (both constructors check or guarantee it), so this never fails.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> Deref for FixedStr<N> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> PartialEq<str> for FixedStr<N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> fmt::Display for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A string of random lower-case letters, drawn when asked for: the seed of the event's random
/// sequence (its event id), how many 64-bit draws precede the letters, and how many letters.
/// Replaying the sequence gives the same letters every time, on every machine.
///
/// Two texts are equal when their letters are (compared without drawing when their seeds and
/// offsets agree). `LazyText::default()` is the empty text.
#[derive(Clone, Copy, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = sluice::rkyv)]
pub struct LazyText {
    /// The seed, as two halves so that the type aligns to 4 bytes and packs into 12.
    seed: [u32; 2],
    skip: u16,
    len: u16,
}

impl LazyText {
    /// `len` letters after `skip` draws of the sequence seeded with `seed`.
    #[inline]
    pub(crate) fn new(seed: u64, skip: u32, len: u64) -> LazyText {
        // Both are bounded by the generator: `len` below 400; `skip` about 130 at most, unless
        // a sampler rejected tens of thousands of draws in a row (each rejection has a
        // probability of at most 1/2).
        assert!(skip <= u32::from(u16::MAX), "skip={skip}");
        assert!(len <= u64::from(u16::MAX), "len={len}");
        LazyText {
            seed: [seed as u32, (seed >> 32) as u32],
            skip: skip as u16,
            len: len as u16,
        }
    }

    /// The number of letters (and of bytes).
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether there are no letters.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the letters to `out`.
    pub fn write_to(&self, out: &mut String) {
        out.reserve(self.len());
        self.for_each_letter(|b| out.push(char::from(b)));
    }

    /// The seed of the letters' random sequence: for the generator's texts, the number of
    /// the event they belong to.
    #[inline]
    pub(crate) fn seed(&self) -> u64 {
        u64::from(self.seed[0]) | (u64::from(self.seed[1]) << 32)
    }

    /// The letters as a `String`.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(self.len());
        self.write_to(&mut s);
        s
    }

    fn for_each_letter(&self, mut f: impl FnMut(u8)) {
        if self.len == 0 {
            return;
        }
        let mut rng = SmallRng::seed_from_u64(self.seed());
        for _ in 0..self.skip {
            rng.next_u64();
        }
        for _ in 0..self.len {
            f(rng.letter());
        }
    }
}

impl PartialEq for LazyText {
    fn eq(&self, other: &LazyText) -> bool {
        if self.len != other.len {
            return false;
        }
        if (self.seed, self.skip) == (other.seed, other.skip) || self.len == 0 {
            return true;
        }
        self.to_text() == other.to_text()
    }
}

impl Eq for LazyText {}

impl fmt::Display for LazyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        let mut n = 0;
        let mut result = Ok(());
        self.for_each_letter(|b| {
            buf[n] = b;
            n += 1;
            if n == buf.len() {
                result = result.and_then(|()| f.write_str(ascii(&buf)));
                n = 0;
            }
        });
        result.and_then(|()| f.write_str(ascii(&buf[..n])))
    }
}

fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

impl fmt::Debug for LazyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_text(), f)
    }
}

/// A person who sells items or bids for them.
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
pub struct Person {
    /// The person's id, unique among persons; the first is 1000.
    pub id: u64,
    /// First and last name, lower case: "vicky noris".
    pub name: Sym,
    /// Seven letters, `@`, five letters, `.com`.
    pub email_address: FixedStr<17>,
    /// Four groups of four digits separated by spaces.
    pub credit_card: FixedStr<19>,
    /// One of ten US cities, lower case.
    pub city: Sym,
    /// One of six US states, as two lower-case letters: "az", "ca", "id", "or", "wa", "wy".
    pub state: Sym,
    /// Event time, epoch milliseconds.
    pub date_time: i64,
    /// Padding letters that bring the event to its nominal size (200 bytes).
    pub extra: LazyText,
}

/// An item put up for auction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(crate = sluice::rkyv)]
pub struct Auction {
    /// The auction's id, unique among auctions; the first is 1000.
    pub id: u64,
    /// Twenty random letters.
    pub item_name: FixedStr<20>,
    /// A hundred random letters.
    pub description: LazyText,
    /// The opening price, in cents.
    pub initial_bid: u64,
    /// The lowest price at which the item sells, in cents (at least `initial_bid`).
    pub reserve: u64,
    /// Event time, epoch milliseconds.
    pub date_time: i64,
    /// When the auction closes, epoch milliseconds (after `date_time`).
    pub expires: i64,
    /// The seller: a [`Person`] id.
    pub seller: u64,
    /// The item's category, 10 to 14.
    pub category: u64,
    /// Padding letters that bring the event to its nominal size (500 bytes).
    pub extra: LazyText,
}

/// A bid for an auction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(crate = sluice::rkyv)]
pub struct Bid {
    /// The [`Auction`] id bid for.
    pub auction: u64,
    /// The bidder: a [`Person`] id.
    pub bidder: u64,
    /// The price offered, in cents.
    pub price: u64,
    /// Where the bid came from: a hot channel ("Google", "Facebook", "Baidu", "Apple") or one
    /// of 10,000 others ("channel-42").
    pub channel: Sym,
    /// The channel's URL.
    pub url: Sym,
    /// Event time, epoch milliseconds.
    pub date_time: i64,
    /// Padding letters that bring the event to its nominal size (100 bytes).
    pub extra: LazyText,
}

impl Bid {
    /// The number of the event this bid is (for a bid from [`Generator::event`], whose texts
    /// are drawn from the random sequence seeded with it): its place in the stream, which
    /// orders bids of equal `date_time` (q18's last bid, q19's ranks).
    ///
    /// [`Generator::event`]: super::Generator::event
    #[inline]
    pub fn event_number(&self) -> u64 {
        self.extra.seed()
    }
}

/// The kind of an event, chosen by its number: of every 50 events, 1 person, 3 auctions and
/// 46 bids.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    sluice::rkyv::Archive,
    sluice::rkyv::Serialize,
    sluice::rkyv::Deserialize,
)]
#[rkyv(crate = sluice::rkyv)]
pub enum EventKind {
    /// A [`Person`].
    Person,
    /// An [`Auction`].
    Auction,
    /// A [`Bid`].
    Bid,
}

/// One Nexmark event.
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
pub enum Event {
    /// A new person.
    Person(Person),
    /// A new auction.
    Auction(Auction),
    /// A bid.
    Bid(Bid),
}

impl Event {
    /// The event's kind.
    #[inline]
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Person(_) => EventKind::Person,
            Event::Auction(_) => EventKind::Auction,
            Event::Bid(_) => EventKind::Bid,
        }
    }

    /// The event time (epoch milliseconds): its `date_time`.
    #[inline]
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// The person, if it is one.
    #[inline]
    pub fn person(self) -> Option<Person> {
        match self {
            Event::Person(p) => Some(p),
            _ => None,
        }
    }

    /// The auction, if it is one.
    #[inline]
    pub fn auction(self) -> Option<Auction> {
        match self {
            Event::Auction(a) => Some(a),
            _ => None,
        }
    }

    /// The bid, if it is one.
    #[inline]
    pub fn bid(self) -> Option<Bid> {
        match self {
            Event::Bid(b) => Some(b),
            _ => None,
        }
    }
}

const _: () = assert!(size_of::<Bid>() == 48);
const _: () = assert!(size_of::<Event>() <= 112);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexmark::tables::is_interned;
    use sluice::rkyv::{self, rancor};

    /// A bid as a process that interned other strings sends it: its symbols' strings, with
    /// the layout of an archived [`Bid`] (a symbol archives as a `String` does).
    #[derive(Archive, Serialize)]
    #[rkyv(crate = sluice::rkyv)]
    struct SentBid {
        auction: u64,
        bidder: u64,
        price: u64,
        channel: String,
        url: String,
        date_time: i64,
        extra: LazyText,
    }

    fn bid(channel: Sym, url: Sym) -> Bid {
        Bid {
            auction: 1001,
            bidder: 1002,
            price: 1234,
            channel,
            url,
            date_time: 1_700_000_000_123,
            extra: LazyText::new(7, 2, 60),
        }
    }

    #[test]
    fn a_symbol_crosses_as_its_string_through_the_wire_codec() {
        let t = tables();
        sluice::register_wire_type::<Bid>();
        let codec = sluice_core::remote::codec_of::<Bid>()().unwrap();
        let sent = vec![
            bid(t.hot_channels[2], t.urls[9_999]),
            bid(t.channels[7], t.urls[7]),
        ];
        let mut section = Vec::new();
        codec.encode(sent.clone(), &mut section).unwrap();
        // The archive holds the strings, not this process's symbol numbers.
        let needle = t.urls[9_999].as_bytes();
        assert!(section.windows(needle.len()).any(|w| w == needle));
        let len = u64::from_le_bytes(section[..8].try_into().unwrap()) as usize;
        let mut got = Vec::new();
        codec.decode(&section[16..16 + len], &mut got).unwrap();
        assert_eq!(got, sent);
        assert_eq!(got[0].channel.as_str(), "Baidu");
    }

    #[test]
    fn a_symbol_unknown_to_the_receiver_is_interned_when_decoded() {
        let (channel, url) = ("channel-from-another-build", "https://example.com/not-ours");
        assert!(!is_interned(channel) && !is_interned(url));
        let bytes = rkyv::to_bytes::<rancor::Error>(&SentBid {
            auction: 1001,
            bidder: 1002,
            price: 1234,
            channel: channel.into(),
            url: url.into(),
            date_time: 1_700_000_000_123,
            extra: LazyText::new(7, 2, 60),
        })
        .unwrap();
        let got = rkyv::from_bytes::<Bid, rancor::Error>(&bytes).unwrap();
        assert_eq!((got.channel.as_str(), got.url.as_str()), (channel, url));
        assert!(usize::from(got.channel.0) >= tables().channels.len());
        assert!(is_interned(channel) && is_interned(url));
        // Decoded again, the same strings are the same symbols.
        let again = rkyv::from_bytes::<Bid, rancor::Error>(&bytes).unwrap();
        assert_eq!((again.channel.0, again.url.0), (got.channel.0, got.url.0));
        assert_eq!(again, bid(got.channel, got.url));
    }

    #[test]
    fn lazy_text_is_reproducible_and_compares_by_content() {
        let a = LazyText::new(42, 3, 70);
        let text = a.to_text();
        assert_eq!(text.len(), 70);
        assert!(text.bytes().all(|b| b.is_ascii_lowercase()));
        assert_eq!(a.to_string(), text);
        assert_eq!(a, LazyText::new(42, 3, 70));
        assert_ne!(a, LazyText::new(42, 4, 70));
        // The letters from draw 4 on are the tail of those from draw 3 on.
        assert_eq!(LazyText::new(42, 4, 69).to_text(), text[1..]);
        assert_eq!(LazyText::new(1, 0, 0), LazyText::default());
    }

    #[test]
    fn fixed_str_takes_exactly_n_ascii_bytes() {
        assert_eq!(
            FixedStr::<3>::new("abc").map(|s| s.to_string()),
            Some("abc".into())
        );
        assert!(FixedStr::<3>::new("ab").is_none());
        assert!(FixedStr::<2>::new("é").is_none());
    }
}
