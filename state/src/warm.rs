//! Background loading of restored tables ([`Restore::Background`]): registering a table
//! loads nothing, and the store's maintenance task ([`Store::compactor`]) then reads its
//! extents, newest segment first, in steps of about [`WARM_STEP_BYTES`] between the job's
//! batches, and hands each frame to the table (`table/warm.rs` says which frames it keeps).
//! Until a table's load is done its misses read the disk, as in a lazy restore.
//!
//! A load gives up, leaving the table lazy (always correct), when the table evicts, when
//! the budget is full, or when a merge has replaced a segment it has still to read.

use std::cell::RefCell;
use std::rc::Weak;

use crate::disk::Disk;
use crate::error::AccessError;
use crate::store::Store;
use crate::table::WarmOps;

/// Bytes of a segment one step of a load reads by default: about a millisecond of work, so
/// that the job's batches wait no longer than that for it (`StoreConfig::warm_step_bytes`).
pub const WARM_STEP_BYTES: u64 = 256 << 10;

/// What registering a restored table loads into memory, and when (the runtime's
/// `StateLoading`, `--state-restore`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Restore {
    /// All of it, as far as the budget allows, before the table is returned: the job runs
    /// at in-memory speed from its first record (Flink's heap backend), and starts once
    /// every table is loaded.
    Eager,
    /// Nothing: the open only validates and indexes the segments, and entries are read from
    /// disk when first accessed (Flink's RocksDB backend): the job starts sooner, and its
    /// first access of each key pays a read.
    Lazy,
    /// Nothing before the table is returned; the store's maintenance task
    /// ([`Store::compactor`], which each worker runs, or [`Store::warm_step`]) then loads it
    /// between the job's batches, as far as the budget allows, and until it is done a miss
    /// reads the disk as in `Lazy`. The job resumes as soon as the segments are checked,
    /// and runs in memory once the load is done.
    #[default]
    Background,
}

impl Restore {
    /// Every mode.
    pub const ALL: [Restore; 3] = [Restore::Background, Restore::Eager, Restore::Lazy];

    /// The mode's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Restore::Background => "background",
            Restore::Eager => "eager",
            Restore::Lazy => "lazy",
        }
    }

    /// The mode named `name`, if any.
    pub fn from_name(name: &str) -> Option<Restore> {
        Restore::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// An extent a load reads: (segment id, start, end).
pub(crate) type Part = (u64, u64, u64);

/// One table's load.
pub(crate) struct WarmJob {
    table: Weak<RefCell<dyn WarmOps>>,
    /// The table's extents, newest segment first.
    parts: Vec<Part>,
    /// The part being read, and the offset of its next frame.
    at: usize,
    pos: u64,
}

impl WarmJob {
    pub(crate) fn new(table: Weak<RefCell<dyn WarmOps>>, parts: Vec<Part>) -> Self {
        let pos = parts.first().map_or(0, |p| p.1);
        WarmJob {
            table,
            parts,
            at: 0,
            pos,
        }
    }
}

/// What a step did.
enum Step {
    /// More of this table is left.
    More,
    /// The table's load is over (done, given up, or the table dropped).
    Over,
    /// The table is borrowed by its operator: try again later.
    Busy,
}

impl<D: Disk> Store<D> {
    /// Whether some restored table is still being loaded in the background.
    pub fn warming(&self) -> bool {
        !self.shared.warm.borrow().is_empty()
    }

    /// One step of the background load of the first table waiting for one: about
    /// [`WARM_STEP_BYTES`] of its segments. Returns whether any load is left. Fails on a
    /// frame that does not decode as the table's types (the segments were checked at open).
    pub fn warm_step(&self) -> Result<bool, AccessError> {
        let mut jobs = self.shared.warm.borrow_mut();
        let Some(job) = jobs.front_mut() else {
            return Ok(false);
        };
        let step = self.step(job);
        match step {
            Ok(Step::More | Step::Busy) => {}
            Ok(Step::Over) | Err(_) => {
                jobs.pop_front();
            }
        }
        step.map(|_| !jobs.is_empty())
    }

    /// Runs every pending load to its end (tests, benchmarks, and a caller that would rather
    /// wait than run its first records against the disk).
    pub fn warm_all(&self) -> Result<(), AccessError> {
        while self.warm_step()? {}
        Ok(())
    }

    fn step(&self, job: &mut WarmJob) -> Result<Step, AccessError> {
        let Some(table) = job.table.upgrade() else {
            return Ok(Step::Over);
        };
        let Ok(mut t) = table.try_borrow_mut() else {
            return Ok(Step::Busy);
        };
        let Some(&(id, _, end)) = job.parts.get(job.at) else {
            t.warm_end(true);
            return Ok(Step::Over);
        };
        let core = self.shared.core.borrow();
        let Some(seg) = core.segments.iter().find(|s| s.meta.id == id) else {
            // Merged away: the rest of the table stays on disk.
            t.warm_end(false);
            return Ok(Step::Over);
        };
        // The step ends at a frame boundary: the first fence past its bytes.
        let fences = &seg.index.fences;
        let want = job.pos + self.shared.cfg.warm_step_bytes;
        let k = fences.partition_point(|f| f.1 < want);
        let to = fences.get(k).map_or(end, |f| f.1.min(end));
        let no_drops = core.ns_drops.is_empty();
        let mut go = true;
        let mut failed = None;
        let mut buf = self.shared.warm_buf.borrow_mut();
        let scanned = seg
            .scan(job.pos, to, 0, &mut buf, |fr| {
                if !no_drops && core.killed(&fr.head.sort, fr.ns, seg.meta.order) {
                    return Ok(true);
                }
                match t.warm_frame(fr) {
                    Ok(more) => go = more,
                    Err(e) => failed = Some(e),
                }
                Ok(go && failed.is_none())
            })
            .map_err(AccessError::from);
        t.warm_apply();
        if let Some(e) = scanned.err().or(failed) {
            t.warm_end(false);
            return Err(e);
        }
        if !go {
            t.warm_end(false);
            return Ok(Step::Over);
        }
        job.pos = to;
        if to >= end {
            job.at += 1;
            match job.parts.get(job.at) {
                Some(p) => job.pos = p.1,
                None => {
                    t.warm_end(true);
                    return Ok(Step::Over);
                }
            }
        }
        Ok(Step::More)
    }
}
