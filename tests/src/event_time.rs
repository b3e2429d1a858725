//! Brute-force references for the event-time surface as the public API runs it — windows of
//! every kind, window and interval joins, bounded joins — written from the definitions in
//! `core/src/window/mod.rs`, `core/src/time.rs` and `core/src/join.rs`, sharing no code with
//! the engine.
//!
//! The definitions:
//! - `Env::from_iter` over `n` items on `W` workers: worker `w` reads items
//!   `[w·n/W, (w+1)·n/W)`, in order;
//! - a bounded-out-of-orderness strategy with delay `d` that emits every `k` records: after
//!   every `k`-th record a worker reads, its watermark becomes `max timestamp so far − d − 1`
//!   if that is higher. A record's *horizon* is its worker's watermark before it: lateness is
//!   judged against it alone, whatever the other inputs do;
//! - event times lie strictly between `i64::MIN` and `i64::MAX`; a window's end is shown
//!   clamped to `i64::MAX`;
//! - a tumbling or sliding window holds a record if the window's largest timestamp (`end − 1`,
//!   with `end` clamped) plus the allowed lateness is above the record's horizon; a record in
//!   no such window is late;
//! - a session record is late when its timestamp plus the allowed lateness is at or below its
//!   horizon; the others form, per key, the sessions `[first, last + gap)` of records less
//!   than `gap` apart;
//! - a window join emits every (left, right) pair of a key and window, at the window's
//!   largest timestamp; an interval join every pair of a key whose `right.ts − left.ts` is in
//!   `[lower, upper]` and neither of which is late (at or below its horizon), at the later
//!   timestamp of the two; a bounded join every pair of a key, and per join type the records
//!   of keys that the other side lacks.

use std::collections::BTreeMap;
use std::fmt::Debug;

use sluice::rkyv::{Archive, Deserialize, Serialize};
use sluice::{Either, JoinType, WindowAssigner};

/// A test record: its key, its event time, and an id unique within its input. Storable
/// (rkyv), since windows and joins keep records in the state store.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize,
)]
#[rkyv(crate = sluice::rkyv)]
pub struct Ev {
    /// The key.
    pub key: u8,
    /// The event time.
    pub ts: i64,
    /// Unique within the input it belongs to (its index there).
    pub id: u32,
}

/// A small xorshift generator, so that a test's stream follows from one seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number in `0..=max`.
    pub fn upto(&mut self, max: u64) -> u64 {
        self.next_u64() % (max + 1)
    }
}

/// `n` events of keys `0..keys` whose timestamps start at `base`, advance by up to `step` and,
/// one time in eight, jump back by up to `back` (beyond any out-of-orderness bound when `back`
/// is large). Ids are the indexes.
pub fn events(n: usize, keys: u8, seed: u64, base: i64, step: i64, back: i64) -> Vec<Ev> {
    let mut rng = Rng::new(seed);
    let mut t = base;
    (0..n)
        .map(|i| {
            t += rng.upto(step as u64) as i64;
            let ts = if rng.upto(7) == 0 {
                t - rng.upto(back as u64) as i64
            } else {
                t
            };
            Ev {
                key: rng.upto(u64::from(keys.max(1)) - 1) as u8,
                ts,
                id: i as u32,
            }
        })
        .collect()
}

/// How a `from_iter` source with a bounded-out-of-orderness strategy makes watermarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    /// Workers the job runs on (each reads one contiguous slice of the items).
    pub workers: usize,
    /// The out-of-orderness bound, in ms.
    pub delay: i64,
    /// Records between two watermarks of a worker.
    pub interval: usize,
}

impl Watermarks {
    /// Each item's horizon: its worker's watermark before the item (`i64::MIN` for none).
    pub fn horizons(&self, timestamps: &[i64]) -> Vec<i64> {
        let n = timestamps.len();
        let workers = self.workers.max(1);
        let mut out = vec![i64::MIN; n];
        for w in 0..workers {
            let (mut max, mut wm) = (i64::MIN, i64::MIN);
            for (k, i) in (w * n / workers..(w + 1) * n / workers).enumerate() {
                out[i] = wm;
                max = max.max(timestamps[i]);
                if (k + 1) % self.interval == 0 {
                    wm = wm.max(max.saturating_sub(self.delay).saturating_sub(1));
                }
            }
        }
        out
    }
}

/// A window kind with its sizes, in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Windows {
    /// Windows of `size` starting every `slide` ms at `offset` modulo `slide` (tumbling when
    /// `slide == size`).
    Fixed {
        /// Length.
        size: i64,
        /// Distance between starts.
        slide: i64,
        /// Alignment of starts.
        offset: i64,
    },
    /// Sessions closed by a gap of `gap` ms.
    Session {
        /// The gap.
        gap: i64,
    },
}

impl Windows {
    /// Tumbling windows of `size`.
    pub fn tumbling(size: i64) -> Windows {
        Windows::Fixed {
            size,
            slide: size,
            offset: 0,
        }
    }
    /// Sliding windows of `size` every `slide`.
    pub fn sliding(size: i64, slide: i64) -> Windows {
        Windows::Fixed {
            size,
            slide,
            offset: 0,
        }
    }
    /// Sessions with gap `gap`.
    pub fn session(gap: i64) -> Windows {
        Windows::Session { gap }
    }

    /// The engine's assigner for these windows (event time).
    pub fn assigner(&self) -> WindowAssigner {
        match *self {
            Windows::Fixed {
                size,
                slide,
                offset,
            } if slide == size => WindowAssigner::tumbling(size).with_offset(offset),
            Windows::Fixed {
                size,
                slide,
                offset,
            } => WindowAssigner::sliding(size, slide).with_offset(offset),
            Windows::Session { gap } => WindowAssigner::session(gap),
        }
    }

    /// The fixed windows holding `ts`, as their true (unclamped) `[start, end)`.
    pub fn fixed(&self, ts: i64) -> Vec<(i128, i128)> {
        let Windows::Fixed {
            size,
            slide,
            offset,
        } = *self
        else {
            panic!("sessions are not fixed windows");
        };
        let (ts, size, slide, offset) = (ts as i128, size as i128, slide as i128, offset as i128);
        let mut start = ts - (ts - offset).rem_euclid(slide);
        let mut out = Vec::new();
        while start + size > ts {
            out.push((start, start + size));
            start -= slide;
        }
        out
    }
}

/// `x` clamped into `i64`.
pub fn clamp(x: i128) -> i64 {
    x.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The largest timestamp of a window `[start, end)` as the engine shows it (`end` clamped).
pub fn max_timestamp(end: i64) -> i64 {
    end - 1
}

/// One input record as the references see it: key, timestamp, horizon, payload.
#[derive(Clone, Debug)]
pub struct Placed<K, T> {
    /// The key.
    pub key: K,
    /// The event time.
    pub ts: i64,
    /// Its worker's watermark before it.
    pub horizon: i64,
    /// What the window holds.
    pub item: T,
}

/// Each record with its horizon under `watermarks`: `key`, `ts` and `item` are read from the
/// record.
pub fn place<R, K, T>(
    records: &[R],
    watermarks: Watermarks,
    mut key: impl FnMut(&R) -> K,
    mut ts: impl FnMut(&R) -> i64,
    mut item: impl FnMut(&R) -> T,
) -> Vec<Placed<K, T>> {
    let timestamps: Vec<i64> = records.iter().map(&mut ts).collect();
    let horizons = watermarks.horizons(&timestamps);
    records
        .iter()
        .zip(horizons)
        .map(|(r, horizon)| Placed {
            key: key(r),
            ts: ts(r),
            horizon,
            item: item(r),
        })
        .collect()
}

/// A window as the engine shows it: `(start, end)`, clamped into `i64`.
pub type Span = (i64, i64);

/// Window contents: per key and window, the items it holds, in input order.
pub type Contents<K, T> = BTreeMap<(K, Span), Vec<T>>;

/// What windows of kind `windows` with allowed lateness `lateness` hold, and the late
/// records.
pub fn window_contents<K: Ord + Clone, T: Clone>(
    windows: Windows,
    records: &[Placed<K, T>],
    lateness: i64,
) -> (Contents<K, T>, Vec<T>) {
    let mut contents: Contents<K, T> = BTreeMap::new();
    let mut late = Vec::new();
    match windows {
        Windows::Fixed { .. } => {
            for r in records {
                let open: Vec<_> = windows
                    .fixed(r.ts)
                    .into_iter()
                    .filter(|&(_, end)| {
                        i128::from(clamp(end - 1)) + i128::from(lateness) > i128::from(r.horizon)
                    })
                    .collect();
                if open.is_empty() {
                    late.push(r.item.clone());
                }
                for (start, end) in open {
                    contents
                        .entry((r.key.clone(), (clamp(start), clamp(end))))
                        .or_default()
                        .push(r.item.clone());
                }
            }
        }
        Windows::Session { gap } => {
            let mut per_key: BTreeMap<K, Vec<(i64, usize)>> = BTreeMap::new();
            for (i, r) in records.iter().enumerate() {
                if i128::from(r.ts) + i128::from(lateness) <= i128::from(r.horizon) {
                    late.push(r.item.clone());
                } else {
                    per_key.entry(r.key.clone()).or_default().push((r.ts, i));
                }
            }
            for (key, mut recs) in per_key {
                recs.sort();
                let mut current: Option<(i64, i64, Vec<usize>)> = None;
                for (ts, i) in recs {
                    let end = ts.saturating_add(gap);
                    current = match current {
                        Some((s, e, mut held)) if ts < e => {
                            held.push(i);
                            Some((s, e.max(end), held))
                        }
                        Some((s, e, held)) => {
                            close_session(&mut contents, records, &key, (s, e), held);
                            Some((ts, end, vec![i]))
                        }
                        None => Some((ts, end, vec![i])),
                    };
                }
                if let Some((s, e, held)) = current {
                    close_session(&mut contents, records, &key, (s, e), held);
                }
            }
        }
    }
    (contents, late)
}

fn close_session<K: Ord + Clone, T: Clone>(
    contents: &mut Contents<K, T>,
    records: &[Placed<K, T>],
    key: &K,
    span: Span,
    mut held: Vec<usize>,
) {
    held.sort_unstable();
    contents.insert(
        (key.clone(), span),
        held.into_iter().map(|i| records[i].item.clone()).collect(),
    );
}

/// The window join: `(key, left, right, timestamp)` for every pair of a key and window.
pub fn window_join<K: Ord + Clone, A: Clone, B: Clone>(
    windows: Windows,
    left: &[Placed<K, A>],
    right: &[Placed<K, B>],
) -> Vec<(K, A, B, i64)> {
    let tagged: Vec<Placed<K, Either<A, B>>> = left
        .iter()
        .map(|p| retag(p, Either::Left(p.item.clone())))
        .chain(
            right
                .iter()
                .map(|p| retag(p, Either::Right(p.item.clone()))),
        )
        .collect();
    let (contents, _) = window_contents(windows, &tagged, 0);
    let mut out = Vec::new();
    for ((key, (_, end)), items) in contents {
        for a in items.iter().filter_map(|e| match e {
            Either::Left(a) => Some(a),
            Either::Right(_) => None,
        }) {
            for b in items.iter().filter_map(|e| match e {
                Either::Left(_) => None,
                Either::Right(b) => Some(b),
            }) {
                out.push((key.clone(), a.clone(), b.clone(), max_timestamp(end)));
            }
        }
    }
    out
}

fn retag<K: Clone, T, U>(p: &Placed<K, T>, item: U) -> Placed<K, U> {
    Placed {
        key: p.key.clone(),
        ts: p.ts,
        horizon: p.horizon,
        item,
    }
}

/// The interval join: `(key, left, right, timestamp)` for every pair of a key with
/// `right.ts − left.ts` in `[lower, upper]`, neither late.
pub fn interval_join<K: Ord + Clone, A: Clone, B: Clone>(
    lower: i64,
    upper: i64,
    left: &[Placed<K, A>],
    right: &[Placed<K, B>],
) -> Vec<(K, A, B, i64)> {
    let mut out = Vec::new();
    for l in left.iter().filter(|l| l.ts > l.horizon) {
        for r in right.iter().filter(|r| r.ts > r.horizon && r.key == l.key) {
            let d = i128::from(r.ts) - i128::from(l.ts);
            if i128::from(lower) <= d && d <= i128::from(upper) {
                out.push((
                    l.key.clone(),
                    l.item.clone(),
                    r.item.clone(),
                    l.ts.max(r.ts),
                ));
            }
        }
    }
    out
}

/// A bounded join's rows: `(key, left, right)`, with `None` for the side a kept unmatched
/// record lacks.
pub fn bounded_join<K: Ord + Clone, A: Clone, B: Clone>(
    join_type: JoinType,
    left: &[(K, A)],
    right: &[(K, B)],
) -> Vec<(K, Option<A>, Option<B>)> {
    let keep_left = matches!(join_type, JoinType::LeftOuter | JoinType::FullOuter);
    let keep_right = matches!(join_type, JoinType::RightOuter | JoinType::FullOuter);
    let mut out = Vec::new();
    for (k, a) in left {
        let matches: Vec<&B> = right
            .iter()
            .filter(|(k2, _)| k2 == k)
            .map(|(_, b)| b)
            .collect();
        for b in &matches {
            out.push((k.clone(), Some(a.clone()), Some((*b).clone())));
        }
        if matches.is_empty() && keep_left {
            out.push((k.clone(), Some(a.clone()), None));
        }
    }
    for (k, b) in right {
        if keep_right && !left.iter().any(|(k2, _)| k2 == k) {
            out.push((k.clone(), None, Some(b.clone())));
        }
    }
    out
}

/// Fails with a short report of what is missing and what is extra if the multisets `expected`
/// and `got` differ.
#[track_caller]
pub fn assert_same<T: Ord + Debug>(mut expected: Vec<T>, mut got: Vec<T>, what: &str) {
    expected.sort();
    got.sort();
    if expected == got {
        return;
    }
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < expected.len() || j < got.len() {
        match (expected.get(i), got.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x > y => {
                extra.push(y);
                j += 1;
            }
            (Some(x), _) => {
                missing.push(x);
                i += 1;
            }
            (None, Some(y)) => {
                extra.push(y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    panic!(
        "{what}: {} expected, {} got; {} missing, e.g. {:?}; {} extra, e.g. {:?}",
        expected.len(),
        got.len(),
        missing.len(),
        &missing[..missing.len().min(8)],
        extra.len(),
        &extra[..extra.len().min(8)],
    );
}

/// Fails with the entries that differ (at most 8) if the maps `expected` and `got` differ.
#[track_caller]
pub fn assert_same_map<K: Ord + Debug, V: PartialEq + Debug>(
    expected: &BTreeMap<K, V>,
    got: &BTreeMap<K, V>,
    what: &str,
) {
    if expected == got {
        return;
    }
    let keys: std::collections::BTreeSet<&K> = expected.keys().chain(got.keys()).collect();
    let differing: Vec<String> = keys
        .into_iter()
        .filter(|k| expected.get(*k) != got.get(*k))
        .map(|k| {
            format!(
                "  {k:?}: expected {:?}, got {:?}",
                expected.get(k),
                got.get(k)
            )
        })
        .collect();
    panic!(
        "{what}: {} entries differ ({} expected, {} got):\n{}",
        differing.len(),
        expected.len(),
        got.len(),
        differing[..differing.len().min(8)].join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizons_follow_each_workers_slice_and_interval() {
        let ts = [10, 30, 20, 50, 5, 7, 100, 90];
        let wm = Watermarks {
            workers: 2,
            delay: 5,
            interval: 2,
        };
        // Worker 0 reads 10 30 20 50, worker 1 reads 5 7 100 90.
        assert_eq!(
            wm.horizons(&ts),
            vec![i64::MIN, i64::MIN, 24, 24, i64::MIN, i64::MIN, 1, 1]
        );
    }

    #[test]
    fn sliding_windows_and_sessions_by_the_definition() {
        let w = Windows::sliding(10, 4);
        assert_eq!(w.fixed(13), vec![(12, 22), (8, 18), (4, 14)]);
        let recs: Vec<Placed<u8, i64>> = [0, 13, 6, 40, 23]
            .iter()
            .map(|&ts| Placed {
                key: 1,
                ts,
                horizon: if ts == 23 { 23 } else { i64::MIN },
                item: ts,
            })
            .collect();
        let (contents, late) = window_contents(Windows::session(10), &recs, 0);
        assert_eq!(late, vec![23]);
        let got: Vec<_> = contents.into_iter().collect();
        assert_eq!(
            got,
            vec![((1, (0, 23)), vec![0, 13, 6]), ((1, (40, 50)), vec![40])]
        );
    }

    #[test]
    fn joins_by_the_definition() {
        let p = |key: u8, ts: i64, item: u32| Placed {
            key,
            ts,
            horizon: i64::MIN,
            item,
        };
        let left = [p(1, 0, 1), p(1, 9, 2), p(2, 0, 3)];
        let right = [p(1, 5, 10), p(1, 10, 11)];
        let mut got = interval_join(0, 5, &left, &right);
        got.sort();
        assert_eq!(got, vec![(1, 1, 10, 5), (1, 2, 11, 10)]);
        let mut got = window_join(Windows::tumbling(10), &left, &right);
        got.sort();
        assert_eq!(got, vec![(1, 1, 10, 9), (1, 2, 10, 9)]);
        let rows = bounded_join(
            JoinType::FullOuter,
            &[(1, 'a'), (2, 'b')],
            &[(1, 'x'), (3, 'y')],
        );
        assert_eq!(
            rows,
            vec![
                (1, Some('a'), Some('x')),
                (2, Some('b'), None),
                (3, None, Some('y'))
            ]
        );
    }
}
