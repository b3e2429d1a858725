//! [`BarrierAligner`]: the alignment rule of a stage with several inputs, as a plain struct.
//!
//! When barrier `n` arrives on an input, that input is blocked — its later records belong
//! after the checkpoint — until barrier `n` has arrived on every input that has not ended;
//! then the stage snapshots and forwards the barrier, and every input is released. A barrier
//! of a newer checkpoint while one is still aligning abandons the older (it was aborted); a
//! barrier of an older or already completed checkpoint is stale and ignored.

use crate::element::CheckpointBarrier;

/// What a barrier did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alignment {
    /// Wait for the barrier on the other inputs (this input is now blocked).
    Wait,
    /// The barrier has arrived on every input: snapshot and forward it.
    Aligned(CheckpointBarrier),
    /// A stale barrier: ignore it.
    Stale,
}

/// Aligns the barriers of one stage's inputs.
///
/// ```
/// use sluice_core::checkpoint::{Alignment, BarrierAligner};
/// use sluice_core::CheckpointBarrier;
/// let b = |id| CheckpointBarrier { checkpoint_id: id, timestamp_ms: 0 };
/// let mut a = BarrierAligner::new(3);
/// assert_eq!(a.on_barrier(0, b(1)), Alignment::Wait);
/// assert!(a.is_blocked(0) && !a.is_blocked(1));
/// assert_eq!(a.on_end(2), None); // an ended input no longer counts
/// assert_eq!(a.on_barrier(1, b(1)), Alignment::Aligned(b(1)));
/// assert!(!a.is_blocked(0));
/// assert_eq!(a.on_barrier(0, b(1)), Alignment::Stale);
/// ```
#[derive(Clone, Debug)]
pub struct BarrierAligner {
    ended: Vec<bool>,
    blocked: Vec<bool>,
    /// The checkpoint being aligned.
    pending: Option<CheckpointBarrier>,
    /// The newest checkpoint aligned or abandoned: older barriers are stale.
    last: u64,
}

impl BarrierAligner {
    /// Alignment over `inputs` inputs.
    pub fn new(inputs: usize) -> Self {
        BarrierAligner {
            ended: vec![false; inputs],
            blocked: vec![false; inputs],
            pending: None,
            last: 0,
        }
    }

    /// Whether input `i` is blocked (its barrier arrived; the others' have not).
    pub fn is_blocked(&self, i: usize) -> bool {
        self.blocked[i]
    }

    /// The checkpoint being aligned, if any.
    pub fn pending(&self) -> Option<CheckpointBarrier> {
        self.pending
    }

    /// Barrier `barrier` arrived on input `i`.
    pub fn on_barrier(&mut self, i: usize, barrier: CheckpointBarrier) -> Alignment {
        let id = barrier.checkpoint_id;
        if id <= self.last {
            return Alignment::Stale;
        }
        match self.pending {
            Some(p) if p.checkpoint_id > id => return Alignment::Stale,
            Some(p) if p.checkpoint_id < id => {
                // The pending checkpoint was aborted: a newer one started.
                self.release();
                self.pending = Some(barrier);
            }
            Some(_) => {}
            None => self.pending = Some(barrier),
        }
        assert!(!self.ended[i], "barrier on ended input {i}");
        self.blocked[i] = true;
        self.check()
    }

    /// Input `i` ended: it no longer holds alignment back. Returns the barrier if that
    /// completed an alignment.
    pub fn on_end(&mut self, i: usize) -> Option<CheckpointBarrier> {
        self.ended[i] = true;
        self.blocked[i] = false;
        match self.pending {
            Some(_) => match self.check() {
                Alignment::Aligned(b) => Some(b),
                _ => None,
            },
            None => None,
        }
    }

    fn check(&mut self) -> Alignment {
        let all = self
            .blocked
            .iter()
            .zip(&self.ended)
            .all(|(&blocked, &ended)| blocked || ended);
        match (all, self.pending) {
            (true, Some(barrier)) => {
                self.release();
                self.last = barrier.checkpoint_id;
                self.pending = None;
                Alignment::Aligned(barrier)
            }
            _ => Alignment::Wait,
        }
    }

    fn release(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(id: u64) -> CheckpointBarrier {
        CheckpointBarrier {
            checkpoint_id: id,
            timestamp_ms: 0,
        }
    }

    #[test]
    fn a_newer_barrier_abandons_the_pending_alignment() {
        let mut a = BarrierAligner::new(2);
        assert_eq!(a.on_barrier(0, b(1)), Alignment::Wait);
        assert_eq!(a.on_barrier(0, b(2)), Alignment::Wait);
        assert!(a.is_blocked(0));
        assert_eq!(a.on_barrier(1, b(1)), Alignment::Stale);
        assert_eq!(a.on_barrier(1, b(2)), Alignment::Aligned(b(2)));
    }

    #[test]
    fn one_input_aligns_at_once() {
        let mut a = BarrierAligner::new(1);
        assert_eq!(a.on_barrier(0, b(7)), Alignment::Aligned(b(7)));
        assert_eq!(a.on_barrier(0, b(7)), Alignment::Stale);
    }

    #[test]
    fn the_last_input_ending_completes_alignment() {
        let mut a = BarrierAligner::new(2);
        assert_eq!(a.on_barrier(0, b(3)), Alignment::Wait);
        assert_eq!(a.on_end(1), Some(b(3)));
        assert!(!a.is_blocked(0));
    }
}
