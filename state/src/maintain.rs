//! Background work the runtime drives between batches: writing evicted entries
//! ([`Store::flush`]), compaction ([`Store::compact`]), savepoints, and restoring a subset of
//! key groups from other stores (rescaling).
//!
//! Compaction merges the oldest segments (a prefix in order) into one: the newest version of
//! each entry wins, and because no older segment remains, tombstones, expired entries and
//! entries of dropped namespaces are purged. The output takes the highest order of its
//! inputs; the inputs are deleted once no retained checkpoint refers to them.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use rkyv::util::AlignedVec;

use crate::checkpoint::{CheckpointInfo, WRITE_CHUNK_BYTES, write_manifest_in};
use crate::codec::ARCHIVE_ALIGN;
use crate::disk::{Disk, DiskReader, DiskWriter};
use crate::error::{AccessError, CheckpointError, Fault, FaultResult, MaintainError, OpenError};
use crate::frame::{self, Decoded, FrameRef, Kind, SortKey};
use crate::manifest::{Manifest, NsDropRec, SegmentRec};
use crate::segment::{self, SegIndex, SegmentBuilder, SegmentMeta, Source};
use crate::store::{IDENTITY_FILE, Store, StoreConfig, read_manifest};

const CURSOR_CHUNK_BYTES: usize = 256 << 10;

/// The bytes of a segment being merged.
enum Bytes<R> {
    Mem(Rc<AlignedVec<ARCHIVE_ALIGN>>),
    Disk(Rc<R>),
}

/// Reads a segment's frames in order, a chunk at a time.
struct Cursor<R> {
    bytes: Bytes<R>,
    meta: SegmentMeta,
    path: PathBuf,
    buf: AlignedVec<ARCHIVE_ALIGN>,
    /// Segment offset of `buf[0]`.
    base: u64,
    /// Position of the current frame in `buf`.
    at: usize,
    /// The current frame, validated.
    cur: Head,
}

impl<R: DiskReader> Cursor<R> {
    fn new(bytes: Bytes<R>, meta: SegmentMeta, path: PathBuf) -> Self {
        Cursor {
            bytes,
            meta,
            path,
            buf: AlignedVec::new(),
            base: 0,
            at: 0,
            cur: Head::default(),
        }
    }
    fn offset(&self) -> u64 {
        self.base + self.at as u64
    }
    /// Makes sure the current frame is whole in the buffer and validates it (once); false
    /// at the end.
    fn fill(&mut self) -> FaultResult<bool> {
        let off = self.offset();
        if off >= self.meta.data_len {
            return Ok(false);
        }
        let rem = &self.buf[self.at.min(self.buf.len())..];
        let need = if rem.len() >= 4 {
            u32::from_le_bytes([rem[0], rem[1], rem[2], rem[3]]) as usize
        } else {
            frame::HEADER_BYTES
        };
        if need > frame::FRAME_BYTES_MAX {
            return Err(Fault::corrupt(
                &self.path,
                off,
                format!("bad frame length {need}"),
            ));
        }
        if rem.len() < need.max(4) {
            let left = (self.meta.data_len - off) as usize;
            let len = left.min(CURSOR_CHUNK_BYTES.max(need));
            self.buf.clear();
            self.buf.resize(len, 0);
            match &self.bytes {
                Bytes::Mem(b) => self
                    .buf
                    .as_mut_slice()
                    .copy_from_slice(&b[off as usize..off as usize + len]),
                Bytes::Disk(r) => r
                    .read_exact_at(off, self.buf.as_mut_slice())
                    .map_err(|e| Fault::io("read segment", &self.path, e))?,
            }
            self.base = off;
            self.at = 0;
        }
        let fr = match frame::decode(&self.buf[self.at..]) {
            Ok(Decoded::Frame(fr)) => fr,
            Ok(Decoded::End) => {
                return Err(Fault::corrupt(
                    &self.path,
                    off,
                    "zero bytes where a frame belongs",
                ));
            }
            Err(reason) => return Err(Fault::corrupt(&self.path, off, reason)),
        };
        segment::check_place(&self.path, &fr.head, self.meta.id, off)?;
        let base = self.buf.as_ptr() as usize;
        let ns_at = fr.ns.as_ptr() as usize - base;
        let key_at = fr.key.as_ptr() as usize - base;
        self.cur = Head {
            sort: fr.head.sort,
            ns: ns_at..ns_at + fr.ns.len(),
            key: key_at..key_at + fr.key.len(),
            len: fr.len,
        };
        Ok(true)
    }
    /// The current frame's identity, for comparisons.
    fn ident(&self) -> (SortKey, &[u8], &[u8]) {
        (
            self.cur.sort,
            &self.buf[self.cur.ns.clone()],
            &self.buf[self.cur.key.clone()],
        )
    }
    /// The current frame (after `fill` returned true) and its raw bytes.
    fn head(&self) -> FaultResult<(FrameRef<'_>, &[u8])> {
        let off = self.offset();
        let raw = &self.buf[self.at..self.at + self.cur.len];
        match frame::decode(raw) {
            Ok(Decoded::Frame(fr)) => Ok((fr, raw)),
            _ => Err(Fault::corrupt(&self.path, off, "frame changed in memory")),
        }
    }
    fn advance(&mut self) {
        self.at += self.cur.len;
    }
}

/// Where the current frame of a cursor is in its buffer.
#[derive(Clone, Default)]
struct Head {
    sort: SortKey,
    ns: std::ops::Range<usize>,
    key: std::ops::Range<usize>,
    len: usize,
}

/// Where merged frames go.
struct Output<'a, D: Disk> {
    builder: SegmentBuilder,
    writer: D::Writer,
    path: &'a Path,
    written: u64,
    /// Whether each chunk is advised into the page cache as it is written (a merge once
    /// lookups may read the output: [`DiskWriter::will_need_written`]).
    read_ahead: bool,
}

impl<D: Disk> Output<'_, D> {
    async fn drain(&mut self, all: bool) -> FaultResult<()> {
        let align = self.writer.alignment();
        let bytes = if all {
            self.builder.drain_padded(align)
        } else {
            self.builder.drain_aligned(align)
        };
        if !bytes.is_empty() {
            self.writer
                .write_at(self.written, &bytes)
                .await
                .map_err(|e| Fault::io("write segment", self.path, e))?;
            if self.read_ahead {
                self.writer
                    .will_need_written(self.written, bytes.len() as u64);
            }
            self.written += bytes.len() as u64;
        }
        Ok(())
    }

    /// Writes what is left, makes the file durable and closes it; the builder describes it.
    async fn finish(mut self) -> FaultResult<SegmentBuilder> {
        self.drain(true).await?;
        let path = self.path;
        self.writer
            .sync()
            .await
            .map_err(|e| Fault::io("fdatasync segment", path, e))?;
        self.writer
            .close()
            .await
            .map_err(|e| Fault::io("close segment", path, e))?;
        Ok(self.builder)
    }
}

/// What a merge drops.
struct Purge<'a> {
    drops: &'a [NsDropRec],
    now_ms: u64,
    /// The inputs include the oldest segment: no older version of anything remains, so
    /// tombstones and expired entries can go.
    oldest: bool,
}

impl Purge<'_> {
    fn keeps(&self, fr: &FrameRef<'_>, order: u64) -> bool {
        if self.oldest && fr.head.kind == Kind::Tombstone {
            return false;
        }
        if self.oldest && fr.head.expires_ms != 0 && fr.head.expires_ms <= self.now_ms {
            return false;
        }
        let s = fr.head.sort;
        !self.drops.iter().any(|d| {
            d.order > order
                && d.state == s.state
                && d.kg_lo <= s.kg
                && s.kg <= d.kg_hi
                && d.ns == fr.ns
        })
    }
}

/// Merges cursors (ascending order of precedence) into `out`: per entry the frame of the
/// highest order wins; `purge` decides what is dropped.
async fn merge<D: Disk>(
    cursors: &mut [Cursor<D::Reader>],
    out: &mut Output<'_, D>,
    purge: &Purge<'_>,
) -> FaultResult<()> {
    let mut live: Vec<bool> = Vec::with_capacity(cursors.len());
    for c in cursors.iter_mut() {
        live.push(c.fill()?);
    }
    loop {
        // The smallest entry; among equals the last cursor (highest order) wins.
        let mut best: Option<usize> = None;
        for i in 0..cursors.len() {
            if !live[i] {
                continue;
            }
            best = match best {
                Some(b) if cursors[i].ident() > cursors[b].ident() => Some(b),
                _ => Some(i),
            };
        }
        let Some(b) = best else {
            break;
        };
        {
            let (fr, raw) = cursors[b].head()?;
            if purge.keeps(&fr, cursors[b].meta.order) {
                out.builder.push_frame(&fr, raw);
            }
        }
        for i in 0..cursors.len() {
            if i != b && live[i] && cursors[i].ident() == cursors[b].ident() {
                cursors[i].advance();
                live[i] = cursors[i].fill()?;
            }
        }
        cursors[b].advance();
        live[b] = cursors[b].fill()?;
        if out.builder.buffered() >= WRITE_CHUNK_BYTES {
            out.drain(false).await?;
            // A turn for the worker's other tasks between chunks, on any executor (a write
            // to a page cache or the simulated disk may complete without yielding).
            futures_lite::future::yield_now().await;
        }
    }
    Ok(())
}

impl<D: Disk> Store<D> {
    /// Whether evicted entries wait in memory for [`Store::flush`].
    pub fn needs_flush(&self) -> bool {
        let core = self.shared.core.borrow();
        core.segments
            .iter()
            .any(|s| matches!(s.source, Source::Mem(_)))
    }

    /// Writes evicted entries (the spill segments eviction built in memory) to disk,
    /// releasing their memory (they are synced by the next checkpoint). The runtime calls
    /// this after every batch; it returns at once when there is nothing to write.
    ///
    /// Merges are then due. Where [`Store::compactor`] runs, this leaves them to it, unless
    /// the segments have piled up past twice `segments_max` (the compactor fell behind a
    /// worker that never waits): then this flush merges, after the compactor's running merge.
    /// Without a compactor, this flush runs the merges that are due itself.
    pub async fn flush(&self) -> Result<(), MaintainError> {
        self.check()?;
        let ids: Vec<u64> = {
            let core = self.shared.core.borrow();
            core.segments
                .iter()
                .filter(|s| matches!(s.source, Source::Mem(_)))
                .map(|s| s.meta.id)
                .collect()
        };
        if ids.is_empty() {
            return Ok(());
        }
        self.prepare_io().await?;
        for id in ids {
            self.persist_segment(id, false).await?;
        }
        if self.shared.compactor_running.get() {
            self.shared.compactor.raise();
            while self.behind() {
                if self.shared.core.borrow().compacting {
                    self.shared.merged.wait().await;
                } else if !self.compact(false).await? {
                    break;
                }
            }
            return Ok(());
        }
        // A few tiers may be due after a burst of evictions.
        for _ in 0..4 {
            if !self.compact(false).await? {
                break;
            }
        }
        Ok(())
    }

    /// Whether the segments on disk exceed twice `segments_max`.
    fn behind(&self) -> bool {
        self.shared.core.borrow().on_disk_prefix() > 2 * self.shared.cfg.segments_max
    }

    /// Runs the background loads of restored tables ([`Store::warm_step`]) and the merges
    /// that are due, as they become due, until [`Store::stop_compactor`] (or the first
    /// error, which fails the store). The runtime runs it as a task of each
    /// worker beside its operators: a merge yields between its chunks, so records keep
    /// flowing while it runs (the thread-per-core counterpart of RocksDB's background
    /// compaction threads). Flushes and checkpoints wake it.
    pub async fn compactor(&self) -> Result<(), MaintainError> {
        let shared = &self.shared;
        shared.compactor_stop.set(false);
        let _running = Running::set(&shared.compactor_running, &shared.merged);
        loop {
            // Restored tables first (they serve the job from disk until loaded), a step at
            // a time, yielding to the job's tasks after each.
            while !shared.compactor_stop.get() && self.warm_step().map_err(warm_error)? {
                futures_lite::future::yield_now().await;
            }
            // Each merge wakes a flush waiting for it as it ends (`Merging`).
            while !shared.compactor_stop.get() && self.compact(false).await? {}
            if shared.compactor_stop.get() {
                return Ok(());
            }
            shared.compactor.wait().await;
        }
    }

    /// Makes [`Store::compactor`] return once its running merge (if any) is done.
    pub fn stop_compactor(&self) {
        self.shared.compactor_stop.set(true);
        self.shared.compactor.raise();
    }

    /// Wakes [`Store::compactor`]: a merge may be due.
    pub(crate) fn merges_may_be_due(&self) {
        if self.shared.compactor_running.get() {
            self.shared.compactor.raise();
        }
    }

    /// Merges segments when there are too many: size-tiered (see [`plan_compaction`]), or
    /// every segment with `force`. Returns whether it merged. Does nothing while a
    /// checkpoint is frozen or being written.
    pub async fn compact(&self, force: bool) -> Result<bool, MaintainError> {
        self.check()?;
        let plan = {
            let mut core = self.shared.core.borrow_mut();
            if core.frozen.is_some() || core.writing || core.compacting {
                return Ok(false);
            }
            let n = core.on_disk_prefix();
            let sizes: Vec<u64> = core.segments[..n].iter().map(|s| s.meta.data_len).collect();
            let entries: u64 = core.segments[..n].iter().map(|s| s.meta.entries).sum();
            let dead = self.shared.counters.superseded.get();
            // Store-level live fraction: about half of what is on disk is superseded.
            let mostly_dead = n >= 2 && dead.saturating_mul(2) > entries;
            let range = if (force || mostly_dead) && n >= 2 {
                Some(0..n)
            } else {
                plan_compaction(&sizes, self.shared.cfg.segments_max)
            };
            let Some(range) = range else {
                return Ok(false);
            };
            core.compacting = true;
            let id = core.next_segment_id;
            core.next_segment_id += 1;
            let cursors = cursors_of(&core.segments[range.clone()]);
            let after = core
                .segments
                .get(range.end)
                .map_or(u64::MAX, |s| s.meta.order);
            let planned = core.next_order;
            (
                id,
                cursors,
                core.drops_vec(),
                after,
                range.start == 0,
                planned,
            )
        };
        let (id, mut cursors, drops, after, oldest, planned) = plan;
        // Should this future be dropped mid-merge, later merges may still run (its partial
        // output is no segment of the store: garbage for the next open).
        let merging = Merging(&self.shared);
        let order = cursors.last().map_or(0, |c| c.meta.order);
        let result = self
            .merge_into(&self.shared.dir, id, order, &mut cursors, &drops, oldest)
            .await;
        drop(merging);
        let unreferenced = {
            let mut core = self.shared.core.borrow_mut();
            let seg = result.map_err(|f| self.fail(f))?;
            core.compactions += 1;
            core.compacted_in += cursors.iter().map(|c| c.meta.data_len).sum::<u64>();
            core.compacted_out += seg.meta.data_len;
            let inputs: Vec<u64> = cursors.iter().map(|c| c.meta.id).collect();
            // A checkpoint frozen while the merge ran names its inputs (they were all live
            // then, since no merge starts while one is frozen): it names the output instead,
            // which holds the same entries and is synced, as its manifest must find what it
            // names among the live segments.
            if let Some(f) = core.frozen.as_mut() {
                if f.segments.iter().any(|s| inputs.contains(s)) {
                    f.segments.retain(|s| !inputs.contains(s));
                    f.segments.push(seg.meta.id);
                }
            }
            core.segments.retain(|s| !inputs.contains(&s.meta.id));
            let at = core.segments.partition_point(|s| s.meta.order < order);
            core.segments.insert(at, seg);
            // An input that no retained checkpoint names (a spill, or a merge written since the
            // last checkpoint) is needed by no recovery: it goes now, or a store without
            // checkpoints would keep every segment it ever merged. The others go once their
            // checkpoints are retired, and all of them do while a checkpoint is frozen or being
            // written (its manifest may name them).
            let busy = core.frozen.is_some() || core.writing;
            let (unreferenced, referenced): (Vec<u64>, Vec<u64>) = inputs
                .into_iter()
                .partition(|s| !busy && !core.retained.iter().any(|(_, ids)| ids.contains(s)));
            core.doomed.extend(referenced);
            if oldest {
                let left: u64 = core.segments.iter().skip(1).map(|s| s.meta.entries).sum();
                let c = &self.shared.counters.superseded;
                c.set(c.get().min(left));
                // A drop is still needed only by older segments that were not merged.
                // Drops made while the merge ran were not applied by it: they stay.
                for list in core.ns_drops.values_mut() {
                    list.retain(|d| d.order > after || d.order >= planned);
                }
                core.ns_drops.retain(|_, l| !l.is_empty());
            }
            unreferenced
        };
        self.remove_segments(unreferenced).await;
        Ok(true)
    }

    /// Merges `cursors` into a new synced segment file `id` in `dir`.
    async fn merge_into(
        &self,
        dir: &Path,
        id: u64,
        order: u64,
        cursors: &mut [Cursor<D::Reader>],
        drops: &[NsDropRec],
        oldest: bool,
    ) -> FaultResult<SegIndex<D::Reader>> {
        let path = dir.join(segment::segment_name(id));
        let entries: u64 = cursors.iter().map(|c| c.meta.entries).sum();
        let writer = self
            .shared
            .disk
            .create(&path)
            .await
            .map_err(|e| Fault::io("create segment", &path, e))?;
        // Once lookups may read the output, it is read in as it is written: advised whole at
        // the end, a merge of gigabytes left lookups waiting for the disk for seconds after it
        // replaced its inputs (whose cached pages go with their files).
        let read_ahead = self.shared.counters.evicted.get();
        let mut out: Output<'_, D> = Output {
            builder: SegmentBuilder::new(id, order, entries),
            writer,
            path: &path,
            written: 0,
            read_ahead,
        };
        let purge = Purge {
            drops,
            now_ms: self.shared.counters.now_ms.get(),
            oldest,
        };
        merge(cursors, &mut out, &purge).await?;
        let builder = out.finish().await?;
        let reader = self
            .shared
            .disk
            .open(&path)
            .map_err(|e| Fault::io("open segment", &path, e))?;
        if !read_ahead {
            // Not advised while written: advised whole now if entries were evicted meanwhile.
            self.read_ahead_if_looked_up(&reader);
        }
        let mut seg = builder.finish::<D::Reader>(dir);
        seg.source = Source::Disk(Rc::new(reader));
        seg.synced = true;
        Ok(seg)
    }

    /// A savepoint: checkpoints `checkpoint_id`, then writes a self-contained copy of the
    /// whole state into `target_dir` — one segment, ordered by state and key group, with no
    /// tombstones — and its manifest. A job restores it with any number of workers through
    /// [`Store::restore_key_groups`].
    pub async fn savepoint(
        &self,
        checkpoint_id: u64,
        target_dir: &Path,
    ) -> Result<CheckpointInfo, CheckpointError> {
        // No merge may replace the segments the checkpoint names until they are copied:
        // wait for a running one, then hold the mark merges check.
        let _merging = loop {
            if !self.shared.core.borrow().compacting {
                self.shared.core.borrow_mut().compacting = true;
                break Merging(&self.shared);
            }
            self.shared.merged.wait().await;
        };
        let mut info = self.checkpoint(checkpoint_id).await?;
        let (mut cursors, drops, states, ids) = {
            let core = self.shared.core.borrow();
            let Some((_, ids)) = core.retained.back() else {
                unreachable!("a checkpoint was just retained")
            };
            let segs: Vec<&SegIndex<D::Reader>> = core
                .segments
                .iter()
                .filter(|s| ids.contains(&s.meta.id))
                .collect();
            let states = core
                .states
                .iter()
                .map(|(n, i)| (n.clone(), *i))
                .collect::<Vec<_>>();
            (
                cursors_of_refs(&segs),
                core.drops_vec(),
                states,
                ids.clone(),
            )
        };
        debug_assert_eq!(cursors.len(), ids.len());
        self.shared
            .disk
            .create_dir_all(target_dir)
            .map_err(|e| Fault::io("create savepoint directory", target_dir, e))?;
        let seg = self
            .merge_into(target_dir, 1, 1, &mut cursors, &drops, true)
            .await
            .map_err(CheckpointError::from)?;
        let m = Manifest {
            checkpoint_id,
            next_order: 2,
            next_segment_id: 2,
            states,
            segments: vec![SegmentRec::from_meta(&seg.meta)],
            ns_drops: vec![],
        };
        info.bytes_written += seg.meta.data_len;
        info.bytes_written += write_manifest_in(&self.shared.disk, target_dir, &m)
            .await
            .map_err(CheckpointError::from)?;
        Ok(info)
    }

    /// Builds a new store in `target_dir` holding key groups `kgs` (inclusive) of the given
    /// checkpoints of other stores (or savepoints): reads only those key groups' byte ranges
    /// (the manifests' extents), copies their frames into new segments, and opens it.
    pub async fn restore_key_groups(
        disk: D,
        target_dir: &Path,
        cfg: StoreConfig,
        sources: &[(PathBuf, u64)],
        kgs: (u32, u32),
    ) -> Result<Store<D>, OpenError> {
        disk.create_dir_all(target_dir)
            .map_err(|e| Fault::io("create store directory", target_dir, e))?;
        if crate::store::latest_checkpoint(&disk, target_dir)?.is_some() {
            return Err(OpenError::Config(format!(
                "restore target {} already holds a store",
                target_dir.display()
            )));
        }
        let ident = target_dir.join(IDENTITY_FILE);
        let mut id_bytes = b"sluice-state store, format 1\n".to_vec();
        id_bytes.resize(4096, 0);
        disk.write_small(&ident, &id_bytes)
            .map_err(|e| Fault::io("write store identity", &ident, e))?;
        disk.prime(&ident)
            .await
            .map_err(|e| Fault::io("prime DMA probe with", &ident, e))?;
        let m = copy_key_groups(&disk, target_dir, sources, kgs).await?;
        write_manifest_in(&disk, target_dir, &m).await?;
        Store::open(disk, target_dir, cfg, Some(m.checkpoint_id))
    }
}

/// Marks a merge (or a savepoint's copy) as running; when dropped, clears the mark and
/// wakes a task waiting for it.
struct Merging<'a, D: Disk>(&'a crate::store::Shared<D>);

impl<D: Disk> Drop for Merging<'_, D> {
    fn drop(&mut self) {
        self.0.core.borrow_mut().compacting = false;
        self.0.merged.raise();
    }
}

/// Marks the compactor as running; when dropped, clears the mark and wakes a flush that
/// waits for it (which then merges itself).
struct Running<'a> {
    flag: &'a std::cell::Cell<bool>,
    merged: &'a crate::store::Signal,
}

impl<'a> Running<'a> {
    fn set(flag: &'a std::cell::Cell<bool>, merged: &'a crate::store::Signal) -> Self {
        flag.set(true);
        Running { flag, merged }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.flag.set(false);
        self.merged.raise();
    }
}

fn cursors_of<R: DiskReader>(segs: &[SegIndex<R>]) -> Vec<Cursor<R>> {
    cursors_of_refs(&segs.iter().collect::<Vec<_>>())
}

fn cursors_of_refs<R: DiskReader>(segs: &[&SegIndex<R>]) -> Vec<Cursor<R>> {
    segs.iter()
        .map(|s| {
            let bytes = match &s.source {
                Source::Mem(b) | Source::Writing(b) => Bytes::Mem(b.clone()),
                Source::Disk(r) => Bytes::Disk(r.clone()),
            };
            Cursor::new(bytes, s.meta.clone(), s.path.clone())
        })
        .collect()
}

/// Copies the frames of key groups `kgs` of every source into new segments of `target`.
async fn copy_key_groups<D: Disk>(
    disk: &D,
    target: &Path,
    sources: &[(PathBuf, u64)],
    kgs: (u32, u32),
) -> FaultResult<Manifest> {
    let mut m = Manifest {
        checkpoint_id: 0,
        next_order: 1,
        next_segment_id: 1,
        states: vec![],
        segments: vec![],
        ns_drops: vec![],
    };
    let mut order_base = 0u64;
    for (dir, ckpt) in sources {
        let src = read_manifest(disk, dir, *ckpt)?;
        m.checkpoint_id = m.checkpoint_id.max(*ckpt);
        for rec in &src.segments {
            let wanted: Vec<_> = rec
                .extents
                .iter()
                .filter(|e| kgs.0 <= e.kg && e.kg <= kgs.1)
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let path = dir.join(segment::segment_name(rec.id));
            let reader = disk
                .open(&path)
                .map_err(|e| Fault::io("open segment", &path, e))?;
            let id = m.next_segment_id;
            m.next_segment_id += 1;
            let out_path = target.join(segment::segment_name(id));
            let writer = disk
                .create(&out_path)
                .await
                .map_err(|e| Fault::io("create segment", &out_path, e))?;
            let n: u64 = wanted.iter().map(|e| e.entries).sum();
            let mut out: Output<'_, D> = Output {
                builder: SegmentBuilder::new(id, order_base + rec.order, n),
                writer,
                path: &out_path,
                written: 0,
                read_ahead: false,
            };
            let mut buf: AlignedVec<ARCHIVE_ALIGN> = AlignedVec::new();
            for e in wanted {
                buf.clear();
                buf.resize(e.len as usize, 0);
                reader
                    .read_exact_at(e.offset, buf.as_mut_slice())
                    .map_err(|x| Fault::io("read segment", &path, x))?;
                let mut at = 0usize;
                segment::for_each_frame(&path, rec.id, e.offset, &buf, |fr| {
                    if fr.head.checkpoint_id > *ckpt {
                        return Err(Fault::corrupt(
                            &path,
                            fr.head.offset,
                            "frame newer than its manifest",
                        ));
                    }
                    out.builder.push_frame(&fr, &buf[at..at + fr.len]);
                    at += fr.len;
                    Ok(true)
                })?;
                if out.builder.buffered() >= WRITE_CHUNK_BYTES {
                    out.drain(false).await?;
                }
            }
            let builder = out.finish().await?;
            let seg = builder.finish::<D::Reader>(target);
            m.segments.push(SegmentRec::from_meta(&seg.meta));
        }
        for d in &src.ns_drops {
            let (lo, hi) = (d.kg_lo.max(kgs.0), d.kg_hi.min(kgs.1));
            if lo <= hi {
                m.ns_drops.push(NsDropRec {
                    order: order_base + d.order,
                    kg_lo: lo,
                    kg_hi: hi,
                    ..d.clone()
                });
            }
        }
        for s in src.states {
            if !m.states.contains(&s) {
                m.states.push(s);
            }
        }
        order_base += src.next_order;
    }
    m.next_order = order_base + 1;
    m.segments.sort_by_key(|s| s.order);
    Ok(m)
}

/// Size-tiered compaction: given the sizes of the on-disk segments, oldest first, picks the
/// newest run of at least 4 consecutive segments whose sizes are within 4× of each other
/// and merges it; once there are more than `segments_max` segments (each tier holding fewer
/// than 4), it merges all of them. So the number of segments grows with the logarithm of the
/// state size and each byte is rewritten a logarithmic number of times.
///
/// ```
/// use sluice_state::plan_compaction;
/// assert_eq!(plan_compaction(&[1000, 10, 10, 10], 8), None);
/// assert_eq!(plan_compaction(&[1000, 10, 12, 9, 11], 8), Some(1..5));
/// assert_eq!(plan_compaction(&[4000, 900, 200, 50, 12, 3, 1, 1, 1], 8), Some(5..9));
/// assert_eq!(plan_compaction(&[4000, 900, 200, 50, 12], 4), Some(0..5));
/// ```
pub fn plan_compaction(sizes: &[u64], segments_max: usize) -> Option<std::ops::Range<usize>> {
    const TIER: usize = 4;
    let mut end = sizes.len();
    while end >= TIER {
        let mut start = end - 1;
        let (mut lo, mut hi) = (sizes[start].max(1), sizes[start].max(1));
        while start > 0 {
            let s = sizes[start - 1].max(1);
            if s > lo.saturating_mul(4) || hi > s.saturating_mul(4) {
                break;
            }
            lo = lo.min(s);
            hi = hi.max(s);
            start -= 1;
        }
        if end - start >= TIER {
            return Some(start..end);
        }
        end = start;
    }
    (sizes.len() > segments_max).then_some(0..sizes.len())
}

/// A background load's failure, as the maintenance task reports it.
fn warm_error(e: AccessError) -> MaintainError {
    match e {
        AccessError::Io { op, path, source } => MaintainError::Io { op, path, source },
        AccessError::Corrupt {
            path,
            offset,
            reason,
        } => MaintainError::Corrupt {
            path,
            offset,
            reason,
        },
        AccessError::Poisoned(p) => MaintainError::Poisoned(p),
        AccessError::Decode {
            state,
            what,
            reason,
        } => MaintainError::Decode {
            state,
            what,
            reason,
        },
    }
}
