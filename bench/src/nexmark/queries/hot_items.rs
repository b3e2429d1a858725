//! q5 computed incrementally (`q5-inc`): the same rows as [`q5`](super::windows::q5), with a
//! keyed process function in place of the sliding-window operator, so that almost no work is
//! left for the moment a window closes.
//!
//! The window operator computes every auction's count in a window when the watermark passes
//! the window's end — 1.2 M auctions per 10 s window at 1 M bids/s per core — and only then
//! the largest. Here each worker keeps, for every open window, the largest count among its own
//! auctions (bids are hashed by auction, so an auction's count is complete on one worker) and
//! the auctions at it, updated with every bid: a count only grows, so a running maximum with
//! its ties stays exact. When the watermark passes a window's end the worker emits its few
//! tied auctions, and the same `window_all` step as q5's merges the workers' maxima.
//!
//! Per auction the worker keeps its bid counts in the last [`RING_SLICES`] slices of 2 s; an
//! auction is forgotten, a generation at a time, once its newest slice has left every open
//! window. Bids behind the
//! watermark for every window they belong to are late and dropped, as the window operator
//! drops them; the counts are exact while the operator's inputs are less than
//! `(RING_SLICES − 5) × 2 s` apart in event time (the generator's splits move together).
//!
//! # Nothing slow when a window is due
//!
//! The count tables hold about a million auctions per worker at 1 M bids/s. Two things stop
//! a worker for 50–200 ms at that size: a table that grows rehashes every entry into fresh
//! memory, and the first table of a new generation takes a page fault on nearly every insert
//! until its memory is touched. Rows waiting behind either are the run's p99. So both happen
//! on a *maintenance* timer half a slide away from the instants at which windows are due:
//! there the generations rotate, and the table reserves room for a quarter more auctions than
//! the last slide added, so that it does not grow on the insert path before the next
//! maintenance. A stall there is over long before the next window is due. The end of the input
//! fires every timer at once, so nothing is maintained then.

use std::collections::VecDeque;

use sluice::ops::Pipe;
use sluice::{
    DataStream, Head, KeyedProcessFunction, ProcessContext, Result, TimeDomain, Timestamp,
    Watermark, WindowAssigner,
};

use super::windows::{MaxTies, Q5Row};
use super::{Due, RowOutput};
use crate::nexmark::model::Event;

/// The slide, and the slices of a window (10 s / 2 s).
const SLIDE_MS: i64 = 2_000;
const WINDOW_SLICES: i64 = 5;
/// Slices of counts kept per auction: a window's five and three more for disorder.
pub const RING_SLICES: usize = 8;

/// q5 with an incremental hot-items operator; see the module docs.
pub fn q5_incremental<H, P>(events: DataStream<H, P>, out: &impl RowOutput)
where
    H: Head,
    P: Pipe<H::Item, Out = Event>,
{
    let rows = events
        .flat_map(|e: Event| e.bid().map(|b| b.auction))
        .key_by(|auction: &u64| *auction)
        .process(HotItems::default())
        .window_all(WindowAssigner::tumbling(SLIDE_MS))
        .aggregate(MaxTies)
        .flat_map(|w| {
            let (num, auctions) = w.value;
            auctions
                .into_iter()
                .map(move |auction| Q5Row::new(auction, num))
        });
    out.rows(rows, Due::OnWatermark);
}

/// An auction's bid counts per slice: slot `i mod RING_SLICES` holds slice `i`'s count when
/// its tag is `i` (its low 32 bits: tags of slices in one ring never collide). 72 bytes.
#[derive(Clone, Copy, Debug)]
struct Counts {
    slots: [(u32, u32); RING_SLICES],
    newest: i64,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            slots: [(u32::MAX, 0); RING_SLICES],
            newest: i64::MIN,
        }
    }

    fn slot(slice: i64) -> usize {
        slice.rem_euclid(RING_SLICES as i64) as usize
    }

    fn count(&self, slice: i64) -> u64 {
        let (tag, n) = self.slots[Counts::slot(slice)];
        if tag == slice as u32 { u64::from(n) } else { 0 }
    }

    fn add(&mut self, slice: i64) {
        let slot = &mut self.slots[Counts::slot(slice)];
        if slot.0 != slice as u32 {
            *slot = (slice as u32, 0);
        }
        slot.1 = slot.1.saturating_add(1);
        self.newest = self.newest.max(slice);
    }

    /// The count in the window made of slices `first..first + WINDOW_SLICES`.
    fn window(&self, first: i64) -> u64 {
        (first..first + WINDOW_SLICES).map(|s| self.count(s)).sum()
    }
}

/// A window's largest count so far on this worker, and its auctions.
#[derive(Clone, Debug, Default)]
struct Running {
    max: u64,
    auctions: Vec<u64>,
}

impl Running {
    /// `auction`'s count in the window rose to `count`. Counts only grow, so an auction is
    /// among the tied at most once: it leaves them only when it (or another) rises above.
    fn offer(&mut self, auction: u64, count: u64) {
        if count > self.max {
            self.max = count;
            self.auctions.clear();
        }
        if count == self.max {
            self.auctions.push(auction);
        }
    }
}

/// The operator: per worker, the counts of its auctions and the running maxima of the open
/// windows, by their first slice. Emits `(auction, count)` for each tied auction when the
/// watermark passes a window's end, stamped with the window's last instant.
///
/// Counts are kept in two generations: an auction's entry is in `counts` if it got a bid
/// since the last rotation, else perhaps in `older`, with its newest slice at most
/// `generation_start`. Once every window that could need `older` has been emitted, `older` is
/// dropped whole — without a scan of its entries — at the next maintenance (see the module
/// docs), so forgetting old auctions never stalls a window's rows.
#[derive(Clone, Debug)]
pub struct HotItems {
    counts: rustc_hash::FxHashMap<u64, Counts>,
    older: rustc_hash::FxHashMap<u64, Counts>,
    generation_start: i64,
    /// The open windows, by first slice from `first_window` on.
    windows: VecDeque<Running>,
    first_window: i64,
    /// Windows whose first slice is below this have been emitted.
    emitted_below: i64,
    /// The first slice of the last window a timer was registered for on this worker.
    timer_registered: i64,
    /// Auctions added to `counts` since the last maintenance.
    added: usize,
}

impl Default for HotItems {
    fn default() -> HotItems {
        HotItems {
            counts: rustc_hash::FxHashMap::default(),
            older: rustc_hash::FxHashMap::default(),
            generation_start: i64::MIN,
            windows: VecDeque::new(),
            first_window: i64::MIN,
            emitted_below: i64::MIN,
            timer_registered: i64::MIN,
            added: 0,
        }
    }
}

/// The window whose first slice is `first`: its last instant.
fn window_last_ms(first: i64) -> i64 {
    (first + WINDOW_SLICES) * SLIDE_MS - 1
}

/// The maintenance instant half a slide before the window whose first slice is `first` is due.
fn maintenance_ms(first: i64) -> i64 {
    window_last_ms(first) - SLIDE_MS / 2
}

/// Whether a timer at `timestamp` is a maintenance timer (one of [`maintenance_ms`]'s).
fn is_maintenance(timestamp: Timestamp) -> bool {
    timestamp.rem_euclid(SLIDE_MS) == SLIDE_MS / 2 - 1
}

impl HotItems {
    /// The running maximum of the window whose first slice is `w` (not yet emitted).
    fn window(&mut self, w: i64) -> &mut Running {
        if self.windows.is_empty() {
            self.first_window = w;
        }
        while w < self.first_window {
            self.windows.push_front(Running::default());
            self.first_window -= 1;
        }
        let i = (w - self.first_window) as usize;
        if i >= self.windows.len() {
            self.windows.resize_with(i + 1, Running::default);
        }
        &mut self.windows[i]
    }
}

impl KeyedProcessFunction<u64, u64, (u64, u64)> for HotItems {
    fn process_element(
        &mut self,
        auction: u64,
        ctx: &mut ProcessContext<'_, u64, (u64, u64)>,
    ) -> Result<()> {
        let slice = ctx.timestamp().div_euclid(SLIDE_MS);
        let first = (slice - WINDOW_SLICES + 1).max(self.emitted_below);
        if first > slice {
            // Late for every window it belongs to.
            return Ok(());
        }
        let counts = match self.counts.get_mut(&auction) {
            Some(counts) => counts,
            None => {
                let moved = self.older.remove(&auction).unwrap_or_else(Counts::new);
                self.added += 1;
                self.counts.entry(auction).or_insert(moved)
            }
        };
        counts.add(slice);
        let counts = *counts;
        if self.generation_start == i64::MIN {
            self.generation_start = slice;
        }
        for w in first..=slice {
            self.window(w).offer(auction, counts.window(w));
        }
        // One timer per window on this worker, on whichever key gets there first (the timer of
        // the latest window stands for all before it), and one for its maintenance.
        if slice > self.timer_registered {
            for w in self.timer_registered.saturating_add(1).max(first)..=slice {
                ctx.register_event_time_timer(window_last_ms(w))?;
                ctx.register_event_time_timer(maintenance_ms(w))?;
            }
            self.timer_registered = slice;
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        _domain: TimeDomain,
        ctx: &mut ProcessContext<'_, u64, (u64, u64)>,
    ) -> Result<()> {
        while !self.windows.is_empty() && window_last_ms(self.first_window) <= timestamp {
            let first = self.first_window;
            let running = self.windows.pop_front().unwrap_or_default();
            self.first_window += 1;
            for auction in running.auctions {
                ctx.output_at((auction, running.max), window_last_ms(first));
            }
            self.emitted_below = self.emitted_below.max(first + 1);
        }
        // The end of the input fires every timer: nothing follows to maintain for.
        if is_maintenance(timestamp) && ctx.current_watermark() != Watermark::MAX {
            self.maintain();
        }
        Ok(())
    }
}

impl HotItems {
    /// The work that may stall the worker, done half a slide away from any window's rows.
    fn maintain(&mut self) {
        // Entries untouched since `generation_start` are in `older`, their newest slice at most
        // that: once every window holding that slice is emitted, none is needed. The dropped
        // table is cleared (its control bytes, not a scan of entries) and reused with room
        // for as many auctions as the generation ending now had, so the new generation does
        // not grow its table again.
        if self.generation_start != i64::MIN && self.emitted_below > self.generation_start {
            let mut recycled = std::mem::take(&mut self.older);
            recycled.clear();
            recycled.reserve(self.counts.len());
            self.older = std::mem::replace(&mut self.counts, recycled);
            self.generation_start = self.timer_registered;
        }
        // Room for a quarter more auctions than the last slide added: growing while full would
        // rehash every entry on the insert path, whenever the table happens to fill.
        let added = std::mem::take(&mut self.added);
        let room = added + added / 4;
        if self.counts.capacity() - self.counts.len() < room {
            self.counts.reserve(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_counts_per_slice_and_window() {
        let mut c = Counts::new();
        for s in [3, 3, 4, 7, 11] {
            c.add(s);
        }
        assert_eq!(
            (c.count(3), c.count(4), c.count(7), c.count(11)),
            (0, 1, 1, 1)
        );
        // Slice 11 took slice 3's slot.
        assert_eq!(c.window(3), 2);
        assert_eq!(c.window(7), 2);
        assert_eq!(c.newest, 11);
    }

    #[test]
    fn running_maximum_keeps_each_tied_auction_once() {
        let mut r = Running::default();
        r.offer(1, 1);
        r.offer(2, 1);
        r.offer(1, 2);
        r.offer(2, 2);
        r.offer(3, 1);
        assert_eq!((r.max, r.auctions.clone()), (2, vec![1, 2]));
        r.offer(3, 3);
        assert_eq!((r.max, r.auctions), (3, vec![3]));
    }
}
