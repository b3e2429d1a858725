//! The generator's fixed lists — first and last names, cities, states, the four hot channels
//! and the 10,000 other channels with their URLs — as the `nexmark` crate 0.2.0 writes them
//! (lower-case names, cities and states; URLs drawn from `SmallRng`s seeded with the channel
//! number), interned once per process into one table of [`Sym`]s.
//!
//! Interning makes equal strings equal symbols: a channel's URL without a `channel_id` suffix
//! can equal a hot channel's URL, and both get the same symbol, so comparing two symbols is
//! comparing their strings.
//!
//! A string outside the lists (one that another process's symbol stood for, read from an
//! archive) is interned after them, into a table that only grows: its symbol numbers are this
//! process's own, which is why a symbol crosses processes as its string.

use std::sync::{LazyLock, RwLock};

use rustc_hash::FxHashMap;

use super::model::Sym;
use super::rng::SmallRng;

/// The crate's first names (`NexmarkConfig::first_names`).
pub(crate) const FIRST_NAMES: [&str; 11] = [
    "peter", "paul", "luke", "john", "saul", "vicky", "kate", "julie", "sarah", "deiter", "walter",
];
/// The crate's last names.
pub(crate) const LAST_NAMES: [&str; 9] = [
    "shultz", "abrams", "spencer", "white", "bartels", "walton", "smith", "jones", "noris",
];
/// The crate's cities.
pub(crate) const CITIES: [&str; 10] = [
    "phoenix",
    "los angeles",
    "san francisco",
    "boise",
    "portland",
    "bend",
    "redmond",
    "seattle",
    "kent",
    "cheyenne",
];
/// The crate's US states: two lower-case letters.
pub(crate) const STATES: [&str; 6] = ["az", "ca", "id", "or", "wa", "wy"];
/// The crate's hot channels; their URLs are the base URLs of seeds 0 to 3.
pub(crate) const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
/// Channels other than the hot ones (the crate's `CHANNEL_URL_MAP`).
pub(crate) const CHANNELS: usize = 10_000;

/// Every fixed string, interned, and the symbols of each list.
pub(crate) struct Tables {
    strings: Vec<Box<str>>,
    index: FxHashMap<Box<str>, Sym>,
    /// `names[first * LAST_NAMES.len() + last]` is "first last".
    pub(crate) names: Vec<Sym>,
    pub(crate) cities: Vec<Sym>,
    pub(crate) states: Vec<Sym>,
    pub(crate) hot_channels: Vec<Sym>,
    pub(crate) hot_urls: Vec<Sym>,
    pub(crate) channels: Vec<Sym>,
    pub(crate) urls: Vec<Sym>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tables({} strings)", self.strings.len())
    }
}

static TABLES: LazyLock<Tables> = LazyLock::new(Tables::build);

/// The process's tables, built on first use (about a millisecond).
pub(crate) fn tables() -> &'static Tables {
    &TABLES
}

impl Tables {
    /// The string of symbol `index`.
    #[inline]
    pub(crate) fn str(&'static self, index: u16) -> &'static str {
        match self.strings.get(usize::from(index)) {
            Some(s) => s,
            None => more_str(usize::from(index) - self.strings.len()),
        }
    }

    fn build() -> Tables {
        let mut interner = Interner::default();
        let mut names = Vec::with_capacity(FIRST_NAMES.len() * LAST_NAMES.len());
        for first in FIRST_NAMES {
            for last in LAST_NAMES {
                names.push(interner.intern(format!("{first} {last}")));
            }
        }
        let mut list = |items: &[&str]| -> Vec<Sym> {
            items
                .iter()
                .map(|s| interner.intern((*s).to_owned()))
                .collect()
        };
        let cities = list(&CITIES);
        let states = list(&STATES);
        let hot_channels = list(&HOT_CHANNELS);
        let hot_urls = (0..HOT_CHANNELS.len() as u64)
            .map(|seed| interner.intern(base_url(seed)))
            .collect();
        let mut channels = Vec::with_capacity(CHANNELS);
        let mut urls = Vec::with_capacity(CHANNELS);
        for i in 0..CHANNELS {
            let (channel, url) = channel_and_url(i);
            channels.push(interner.intern(channel));
            urls.push(interner.intern(url));
        }
        Tables {
            strings: interner.strings,
            index: interner.index,
            names,
            cities,
            states,
            hot_channels,
            hot_urls,
            channels,
            urls,
        }
    }
}

#[derive(Default)]
struct Interner {
    strings: Vec<Box<str>>,
    index: FxHashMap<Box<str>, Sym>,
}

impl Interner {
    fn intern(&mut self, s: String) -> Sym {
        if let Some(sym) = self.index.get(s.as_str()) {
            return *sym;
        }
        // About 20,000 strings in all; a symbol is 16 bits.
        let Ok(next) = u16::try_from(self.strings.len()) else {
            panic!("more than 65,536 interned strings");
        };
        let sym = Sym(next);
        let s: Box<str> = s.into_boxed_str();
        self.strings.push(s.clone());
        self.index.insert(s, sym);
        sym
    }
}

/// Strings interned after the tables, leaked (a few at most: only strings that the generator of
/// another build would draw), and their symbols.
#[derive(Default)]
struct More {
    strings: Vec<&'static str>,
    index: FxHashMap<&'static str, Sym>,
}

static MORE: LazyLock<RwLock<More>> = LazyLock::new(RwLock::default);

fn more_str(i: usize) -> &'static str {
    let more = MORE.read().unwrap_or_else(|e| e.into_inner());
    // A symbol is made only by interning, so its string is there.
    more.strings.get(i).copied().unwrap_or_default()
}

/// The symbol of `s`: the tables' when it is one of theirs, else one interned after them;
/// `None` when all 65,536 are taken.
pub(crate) fn intern(s: &str) -> Option<Sym> {
    let t = tables();
    if let Some(sym) = t.index.get(s) {
        return Some(*sym);
    }
    if let Some(sym) = MORE.read().unwrap_or_else(|e| e.into_inner()).index.get(s) {
        return Some(*sym);
    }
    let mut more = MORE.write().unwrap_or_else(|e| e.into_inner());
    if let Some(sym) = more.index.get(s) {
        return Some(*sym);
    }
    let sym = Sym(u16::try_from(t.strings.len() + more.strings.len()).ok()?);
    let s: &'static str = Box::leak(s.to_owned().into_boxed_str());
    more.strings.push(s);
    more.index.insert(s, sym);
    Some(sym)
}

/// Whether `s` has a symbol in this process yet.
#[cfg(test)]
pub(crate) fn is_interned(s: &str) -> bool {
    tables().index.contains_key(s)
        || MORE
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .index
            .contains_key(s)
}

/// The crate's `get_base_url(seed)`: three path segments of 3 or 4 characters, letters with an
/// occasional `_`.
fn base_url(seed: u64) -> String {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut segment = || {
        // `gen_string_with_delimiter(5, '_')`: a length in 3..5, then per character a 1 in 13
        // chance of the delimiter.
        let len = 3 + rng.below_u64(2);
        (0..len)
            .map(|_| {
                if rng.below_u32(13) == 0 {
                    '_'
                } else {
                    char::from(rng.letter())
                }
            })
            .collect::<String>()
    };
    let (a, b, c) = (segment(), segment(), segment());
    format!("https://www.nexmark.com/{a}/{b}/{c}/item.htm?query=1")
}

/// Entry `i` of the crate's `CHANNEL_URL_MAP`: `channel-i` and its URL, which nine times in ten
/// carries a `channel_id` (the bit-reversed channel number).
fn channel_and_url(i: usize) -> (String, String) {
    let mut url = base_url(i as u64);
    let mut rng = SmallRng::seed_from_u64(i as u64);
    if rng.below_u32(10) > 0 {
        let id = i64::from((i as i32).reverse_bits()).abs();
        url.push_str(&format!("&channel_id={id}"));
    }
    (format!("channel-{i}"), url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_gives_one_symbol_per_distinct_string() {
        let t = tables();
        assert_eq!(t.names.len(), 99);
        assert_eq!(t.channels.len(), CHANNELS);
        assert_eq!(t.names[0].as_str(), "peter shultz");
        assert_eq!(t.channels[9_999].as_str(), "channel-9999");
        let distinct: std::collections::HashSet<&str> = t.strings.iter().map(|s| &**s).collect();
        assert_eq!(distinct.len(), t.strings.len());
    }

    #[test]
    fn strings_outside_the_tables_get_new_symbols_that_stay() {
        let t = tables();
        assert_eq!(intern("channel-42"), Some(t.channels[42]));
        let a = intern("tables-test-a").unwrap();
        let b = intern("tables-test-b").unwrap();
        assert!(usize::from(a.0) >= t.strings.len() && a != b);
        assert_eq!((a.as_str(), b.as_str()), ("tables-test-a", "tables-test-b"));
        assert_eq!(intern("tables-test-a"), Some(a));
    }
}
