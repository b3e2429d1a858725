//! [`NexmarkSource`]: the generator as a Sluice source. A job of `w` workers gets `w` splits,
//! interleaved: split `i` generates the events `n ≡ i (mod w)`. Every worker thus moves through
//! event time at the same pace as the others — the events of all splits at any moment cover a
//! prefix of the stream, give or take a batch — so per-worker watermarks stay together and
//! windows close everywhere at once; contiguous ranges would start worker 1 in the middle of
//! the run's event time, and an unbounded stream has no middle. Generating an event costs the
//! same wherever it is in the stream, so interleaving costs nothing.
//!
//! A reader's [`ReadPosition`] is the number of the next event it would generate, so a
//! checkpoint that records it replays from exactly there.

use sluice::{Batch, ReadPosition, ReadStatus, Result, Source, SourceContext, SourceReader};

use super::generator::{Generator, NexmarkConfig};
use super::model::Event;

/// Nexmark events as a source: `env.from_source(NexmarkSource::new(cfg))`.
#[derive(Clone, Debug)]
pub struct NexmarkSource {
    cfg: NexmarkConfig,
}

impl NexmarkSource {
    /// A source of the events `cfg` describes. An invalid rate fails the job at start-up.
    pub fn new(cfg: NexmarkConfig) -> NexmarkSource {
        NexmarkSource { cfg }
    }

    /// The configuration.
    pub fn config(&self) -> &NexmarkConfig {
        &self.cfg
    }
}

/// One worker's share of the stream: the events `first`, `first + step`, `first + 2 × step`…
/// below `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NexmarkSplit {
    /// The split's first event number (its index among the splits).
    pub first: u64,
    /// The number of splits.
    pub step: u64,
    /// One past the last event of the stream; `u64::MAX` for an unbounded one.
    pub end: u64,
}

impl NexmarkSplit {
    /// The split's next event number at or after `position`: `position` itself when it is one
    /// of the split's events, else the split's next one.
    pub fn align(&self, position: u64) -> u64 {
        if position <= self.first {
            return self.first;
        }
        let behind = (position - self.first) % self.step;
        if behind == 0 {
            position
        } else {
            position.saturating_add(self.step - behind)
        }
    }
}

/// The events of one split from a position on, in order. Also usable without a job, as an
/// iterator.
#[derive(Clone, Debug)]
pub struct NexmarkEvents {
    generator: Generator,
    next: u64,
    step: u64,
    end: u64,
}

impl NexmarkEvents {
    /// The events of `split` from `start` on (from the split's start when `None`).
    pub fn new(generator: Generator, split: NexmarkSplit, start: Option<u64>) -> NexmarkEvents {
        assert!(split.step > 0, "step=0");
        let next = split.align(start.unwrap_or(split.first));
        NexmarkEvents {
            generator,
            next,
            step: split.step,
            end: split.end,
        }
    }

    /// The number of the next event; the end when there is none.
    pub fn position(&self) -> u64 {
        self.next.min(self.end)
    }

    /// Appends up to `records_max` events to `out`; whether the split has more.
    #[inline]
    pub fn fill(&mut self, out: &mut Vec<Event>, records_max: usize) -> ReadStatus {
        let left = self.end.saturating_sub(self.next).div_ceil(self.step);
        let count = left.min(records_max as u64);
        let (first, step, generator) = (self.next, self.step, &self.generator);
        // A range's `map` is `TrustedLen`: `extend` reserves once and writes each event in
        // place.
        out.extend((0..count).map(|i| generator.event(first + i * step)));
        self.next = first.saturating_add(count.saturating_mul(step));
        if self.next >= self.end {
            ReadStatus::End
        } else {
            ReadStatus::More
        }
    }
}

impl NexmarkEvents {
    /// Like [`fill`](Self::fill), into a Sluice batch: each event stamped with its event time
    /// (`date_time`).
    #[inline]
    pub fn fill_batch(&mut self, out: &mut Batch<Event>, records_max: usize) -> ReadStatus {
        let left = self.end.saturating_sub(self.next).div_ceil(self.step);
        let count = left.min(records_max as u64);
        let (first, step) = (self.next, self.step);
        for i in 0..count {
            let event = self.generator.event(first + i * step);
            let ts = event.date_time();
            out.push(event, ts);
        }
        self.next = first.saturating_add(count.saturating_mul(step));
        if self.next >= self.end {
            ReadStatus::End
        } else {
            ReadStatus::More
        }
    }
}

impl Iterator for NexmarkEvents {
    type Item = Event;
    #[inline]
    fn next(&mut self) -> Option<Event> {
        if self.next >= self.end {
            return None;
        }
        let event = self.generator.event(self.next);
        self.next = self.next.saturating_add(self.step);
        Some(event)
    }
}

/// Reads one [`NexmarkSplit`].
pub struct NexmarkReader {
    events: NexmarkEvents,
}

impl Source for NexmarkSource {
    type Item = Event;
    type Split = NexmarkSplit;
    type Reader = NexmarkReader;

    fn name(&self) -> String {
        match self.cfg.events {
            Some(n) => format!("nexmark({n} events)"),
            None => "nexmark(unbounded)".into(),
        }
    }
    fn is_bounded(&self) -> bool {
        self.cfg.events.is_some()
    }
    fn splits(&self, workers: usize) -> Result<Vec<NexmarkSplit>> {
        Generator::new(&self.cfg)?;
        let step = workers.max(1) as u64;
        let end = self.cfg.events.unwrap_or(u64::MAX);
        Ok((0..step)
            .map(|first| NexmarkSplit { first, step, end })
            .collect())
    }
    async fn open(
        &self,
        split: NexmarkSplit,
        start: Option<ReadPosition>,
        _ctx: &SourceContext,
    ) -> Result<NexmarkReader> {
        let generator = Generator::new(&self.cfg)?;
        Ok(NexmarkReader {
            events: NexmarkEvents::new(generator, split, start.map(|p| p.0)),
        })
    }
}

impl SourceReader for NexmarkReader {
    type Item = Event;
    async fn read_batch(
        &mut self,
        out: &mut Batch<Event>,
        records_max: usize,
    ) -> Result<ReadStatus> {
        Ok(self.events.fill_batch(out, records_max))
    }
    fn position(&self) -> ReadPosition {
        ReadPosition(self.events.position())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_moves_a_position_to_the_splits_next_event() {
        let split = NexmarkSplit {
            first: 1,
            step: 3,
            end: 100,
        };
        let aligned: Vec<u64> = [0, 1, 2, 3, 4, 5, 7].map(|p| split.align(p)).to_vec();
        assert_eq!(aligned, [1, 1, 4, 4, 4, 7, 7]);
    }
}
