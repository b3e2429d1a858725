//! Incremental checkpoints in two steps the runtime drives: [`Store::freeze`] (synchronous,
//! O(tables): it moves each table's dirty-key list aside and bumps the epoch) and
//! [`Store::write`] (asynchronous: serializes the frozen entries in chunks while records
//! flow, writes them as one segment, syncs it, then writes the manifest atomically — temp
//! file, `fdatasync`, rename, directory sync — and deletes segments no retained checkpoint
//! refers to). Any write or sync error poisons the store: fsyncs are never retried.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::disk::{Disk, DiskReader, DiskWriter};
use crate::error::{CheckpointError, Fault, FaultResult};
use crate::manifest::{self, Manifest, SegmentRec};
use crate::segment::{self, EntryBatch, SegmentBuilder, Source};
use crate::store::{FrozenMeta, IDENTITY_FILE, Store, mem_bytes};
use crate::table::SERIALIZE_CHUNK;

/// Bytes per DMA write.
pub(crate) const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// A checkpoint whose dirty set is frozen; hand it to [`Store::write`].
#[derive(Debug)]
#[must_use = "a frozen checkpoint is written with Store::write"]
pub struct Frozen {
    checkpoint_id: u64,
}

impl Frozen {
    /// The checkpoint.
    pub fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }
}

/// What a checkpoint wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The checkpoint.
    pub checkpoint_id: u64,
    /// Entries written (puts and tombstones).
    pub entries: u64,
    /// Bytes written: the new segment (padded), evicted entries written for it, manifest.
    pub bytes_written: u64,
    /// Segments the manifest names.
    pub segments: usize,
}

impl<D: Disk> Store<D> {
    /// Step 1 of a checkpoint, at the barrier: freezes every table's dirty set. Writes after
    /// this do not change what the checkpoint writes (copy-on-write). O(number of tables).
    pub fn freeze(&self, checkpoint_id: u64) -> Result<Frozen, CheckpointError> {
        self.check()?;
        let mut core = self.shared.core.borrow_mut();
        if core.writing {
            let running = core.frozen.as_ref().map_or(0, |f| f.checkpoint_id);
            return Err(CheckpointError::InProgress {
                running,
                requested: checkpoint_id,
            });
        }
        if checkpoint_id <= core.last_frozen {
            return Err(CheckpointError::NotIncreasing {
                last: core.last_frozen,
                requested: checkpoint_id,
            });
        }
        let tables: Vec<_> = core
            .tables
            .iter()
            .filter_map(|(_, t)| t.upgrade())
            .collect();
        if core.frozen.take().is_some() {
            // The previous frozen checkpoint was never written: its entries stay dirty.
            for t in &tables {
                t.borrow_mut().abort_frozen();
            }
        }
        for t in &tables {
            t.borrow_mut().freeze(checkpoint_id);
        }
        let (order, segment_id) = (core.next_order, core.next_segment_id);
        core.next_order += 1;
        core.next_segment_id += 1;
        let meta = FrozenMeta {
            checkpoint_id,
            order,
            segment_id,
            epoch: core.epoch,
            segments: core.segments.iter().map(|s| s.meta.id).collect(),
            ns_drops: core.drops_vec(),
            states: core.states.iter().map(|(n, i)| (n.clone(), *i)).collect(),
        };
        core.epoch += 1;
        core.last_frozen = checkpoint_id;
        core.frozen = Some(meta);
        self.shared.counters.tag.set(checkpoint_id + 1);
        Ok(Frozen { checkpoint_id })
    }

    /// Step 2: writes the frozen checkpoint and returns when it is durable (its manifest
    /// renamed into place and the directory synced). Records keep flowing meanwhile.
    pub async fn write(&self, frozen: Frozen) -> Result<CheckpointInfo, CheckpointError> {
        self.check()?;
        {
            let mut core = self.shared.core.borrow_mut();
            match &core.frozen {
                Some(f) if f.checkpoint_id == frozen.checkpoint_id && !core.writing => {}
                _ => return Err(CheckpointError::Stale(frozen.checkpoint_id)),
            }
            core.writing = true;
        }
        let result = self.write_frozen().await;
        let mut core = self.shared.core.borrow_mut();
        core.writing = false;
        core.frozen = None;
        drop(core);
        // No merge starts while a checkpoint is frozen or written; one may be due now.
        self.merges_may_be_due();
        match result {
            Ok(info) => Ok(info),
            Err(f) => Err(self.fail(f).into()),
        }
    }

    /// Freezes and writes in one go.
    pub async fn checkpoint(&self, checkpoint_id: u64) -> Result<CheckpointInfo, CheckpointError> {
        let frozen = self.freeze(checkpoint_id)?;
        self.write(frozen).await
    }

    async fn write_frozen(&self) -> FaultResult<CheckpointInfo> {
        self.prepare_io().await?;
        let (id, order, segment_id, epoch, snapshot) = {
            let core = self.shared.core.borrow();
            let Some(f) = &core.frozen else {
                unreachable!("write() checked the frozen checkpoint")
            };
            (
                f.checkpoint_id,
                f.order,
                f.segment_id,
                f.epoch,
                f.segments.clone(),
            )
        };
        let mut info = CheckpointInfo {
            checkpoint_id: id,
            ..CheckpointInfo::default()
        };
        for seg in &snapshot {
            info.bytes_written += self.persist_segment(*seg, true).await?;
            self.sync_segment(*seg).await?;
        }
        let batch = self.serialize_tables().await?;
        info.entries = batch.len() as u64;
        let mut new_segment = None;
        if !batch.is_empty() {
            let mut b = SegmentBuilder::new(segment_id, order, batch.len() as u64);
            b.push_batch(batch);
            let seg = b.finish::<D::Reader>(&self.shared.dir);
            {
                let mut core = self.shared.core.borrow_mut();
                let at = core.segments.partition_point(|s| s.meta.order < order);
                core.segments.insert(at, seg);
                self.shared.counters.disk_empty.set(false);
            }
            let n = mem_bytes_of(self, segment_id);
            self.shared.counters.spill_add(n);
            new_segment = Some(segment_id);
        }
        let m = {
            let core = self.shared.core.borrow();
            let Some(f) = &core.frozen else {
                unreachable!("write() checked the frozen checkpoint")
            };
            // The frozen segments as they are now: a merge that finished meanwhile replaced
            // its inputs with its output (see `Store::compact`).
            let mut segments = f.segments.clone();
            segments.extend(new_segment);
            manifest_of(
                &core.segments,
                f,
                &segments,
                core.next_order,
                core.next_segment_id,
            )
        };
        info.segments = m.segments.len();
        // The new segment and the manifest's temporary file are written and synced side by
        // side (one sync's latency instead of two); the manifest is renamed into place, and
        // so takes effect, only once both are durable.
        let persist = async {
            match new_segment {
                Some(id) => self.persist_segment(id, true).await,
                None => Ok(0),
            }
        };
        let dir = &self.shared.dir;
        let staged = async {
            stage_manifest(&self.shared.disk, dir, &m)
                .await
                .map_err(|f| self.fail(f))
        };
        let (persisted, staged) = futures_lite::future::zip(persist, staged).await;
        info.bytes_written += persisted?;
        let (n, tmp) = staged?;
        publish_manifest(&self.shared.disk, dir, &tmp, m.checkpoint_id)
            .await
            .map_err(|f| self.fail(f))?;
        info.bytes_written += n;
        self.shared.counters.registered_epoch.set(epoch);
        let tables: Vec<_> = {
            let core = self.shared.core.borrow();
            core.tables
                .iter()
                .filter_map(|(_, t)| t.upgrade())
                .collect()
        };
        for t in tables {
            t.borrow_mut().finish_frozen();
        }
        self.shared.core.borrow_mut().last_checkpoint = id;
        self.retire(id, m.segments.iter().map(|s| s.id).collect())
            .await?;
        Ok(info)
    }

    /// Serializes the frozen entries of every table, a chunk per borrow, yielding between
    /// chunks so that the operators keep running.
    async fn serialize_tables(&self) -> FaultResult<EntryBatch> {
        let tables: Vec<_> = {
            let core = self.shared.core.borrow();
            core.tables
                .iter()
                .filter_map(|(_, t)| t.upgrade())
                .collect()
        };
        let mut batch = EntryBatch::default();
        for t in tables {
            loop {
                let done = match t.try_borrow_mut() {
                    Ok(mut t) => t.serialize_frozen(&mut batch, SERIALIZE_CHUNK)?,
                    Err(_) => false, // the operator holds it: try after yielding
                };
                if done {
                    break;
                }
                futures_lite::future::yield_now().await;
            }
        }
        Ok(batch)
    }

    /// Primes glommio's device probe and removes files left by crashed writes, once.
    pub(crate) async fn prepare_io(&self) -> FaultResult<()> {
        let (primed, garbage) = {
            let mut core = self.shared.core.borrow_mut();
            let g = std::mem::take(&mut core.garbage);
            let p = core.primed;
            core.primed = true;
            (p, g)
        };
        if !primed {
            let path = self.shared.dir.join(IDENTITY_FILE);
            self.shared
                .disk
                .prime(&path)
                .await
                .map_err(|e| self.fail(Fault::io("prime DMA probe with", &path, e)))?;
        }
        for path in &garbage {
            // A file written after the manifest (a crashed checkpoint) or no longer
            // referenced: removing it can only fail harmlessly, it is garbage either way.
            let _ = self.shared.disk.remove(path).await;
        }
        Ok(())
    }

    /// Syncs a segment that was written without a sync (evicted entries).
    async fn sync_segment(&self, id: u64) -> FaultResult<()> {
        let path = {
            let core = self.shared.core.borrow();
            match core.segments.iter().find(|s| s.meta.id == id) {
                Some(s) if !s.synced => s.path.clone(),
                _ => return Ok(()),
            }
        };
        self.shared
            .disk
            .sync_file(&path)
            .await
            .map_err(|e| self.fail(Fault::io("fdatasync segment", &path, e)))?;
        let mut core = self.shared.core.borrow_mut();
        if let Some(s) = core.segments.iter_mut().find(|s| s.meta.id == id) {
            s.synced = true;
        }
        Ok(())
    }

    /// Writes an in-memory segment to its file (and syncs it, with `sync`); returns the
    /// bytes written.
    pub(crate) async fn persist_segment(&self, id: u64, sync: bool) -> FaultResult<u64> {
        loop {
            let (bytes, path) = {
                let mut core = self.shared.core.borrow_mut();
                let Some(seg) = core.segments.iter_mut().find(|s| s.meta.id == id) else {
                    return Ok(0); // compacted away meanwhile
                };
                match &seg.source {
                    Source::Disk(_) => return Ok(0),
                    Source::Writing(_) => (None, seg.path.clone()),
                    Source::Mem(b) => {
                        let b = b.clone();
                        seg.source = Source::Writing(b.clone());
                        (Some(b), seg.path.clone())
                    }
                }
            };
            let Some(bytes) = bytes else {
                futures_lite::future::yield_now().await; // another task is writing it
                continue;
            };
            let written = write_file(&self.shared.disk, &path, &bytes, "segment", sync)
                .await
                .map_err(|f| self.fail(f))?;
            let reader = self
                .shared
                .disk
                .open(&path)
                .map_err(|e| self.fail(Fault::io("open segment", &path, e)))?;
            self.read_ahead_if_looked_up(&reader);
            let mut core = self.shared.core.borrow_mut();
            if let Some(seg) = core.segments.iter_mut().find(|s| s.meta.id == id) {
                seg.source = Source::Disk(Rc::new(reader));
                seg.synced = sync;
            }
            self.shared.counters.spill_done(bytes.len());
            return Ok(written);
        }
    }

    /// Retains the newest checkpoints and deletes what only older ones referred to.
    async fn retire(&self, id: u64, segments: Vec<u64>) -> FaultResult<()> {
        let (old_manifests, doomed) = {
            let mut core = self.shared.core.borrow_mut();
            core.retained.push_back((id, segments));
            let mut old = Vec::new();
            while core.retained.len() > self.shared.cfg.retained_checkpoints {
                if let Some((m, _)) = core.retained.pop_front() {
                    old.push(m);
                }
            }
            let live: Vec<u64> = core.segments.iter().map(|s| s.meta.id).collect();
            let retained: Vec<u64> = core.retained.iter().flat_map(|r| r.1.clone()).collect();
            let referenced = |s: &u64| live.contains(s) || retained.contains(s);
            let mut candidates: Vec<u64> = std::mem::take(&mut core.doomed);
            candidates.sort_unstable();
            candidates.dedup();
            let (gone, keep): (Vec<u64>, Vec<u64>) =
                candidates.into_iter().partition(|s| !referenced(s));
            core.doomed = keep;
            (old, gone)
        };
        let dir = &self.shared.dir;
        for m in old_manifests {
            let _ = self
                .shared
                .disk
                .remove(&dir.join(manifest::manifest_name(m)))
                .await;
        }
        self.remove_segments(doomed).await;
        Ok(())
    }

    /// Removes segment files no manifest needs. Removing one can only fail harmlessly: a
    /// file no manifest names is garbage, and the next open removes it.
    pub(crate) async fn remove_segments(&self, ids: Vec<u64>) {
        for s in ids {
            let path = self.shared.dir.join(segment::segment_name(s));
            let _ = self.shared.disk.remove(&path).await;
        }
    }

    /// Asks the kernel to read a newly written segment in, if lookups may read it: only once
    /// some entry is not in memory. Otherwise every entry in it is also in memory, and reading
    /// it back would only keep the disk busy (a full checkpoint of 1.6 GB delayed the next
    /// checkpoint's sync by 150-250 ms).
    pub(crate) fn read_ahead_if_looked_up(&self, reader: &D::Reader) {
        if self.shared.counters.evicted.get() {
            reader.will_need();
        }
    }
}

fn mem_bytes_of<D: Disk>(store: &Store<D>, id: u64) -> usize {
    let core = store.shared.core.borrow();
    core.segments
        .iter()
        .find(|s| s.meta.id == id)
        .map_or(0, mem_bytes)
}

fn manifest_of<R>(
    live: &[segment::SegIndex<R>],
    f: &FrozenMeta,
    ids: &[u64],
    next_order: u64,
    next_segment_id: u64,
) -> Manifest {
    let mut segments: Vec<SegmentRec> = live
        .iter()
        .filter(|s| ids.contains(&s.meta.id))
        .map(|s| SegmentRec::from_meta(&s.meta))
        .collect();
    segments.sort_by_key(|s| s.order);
    Manifest {
        checkpoint_id: f.checkpoint_id,
        next_order,
        next_segment_id,
        states: f.states.clone(),
        segments,
        ns_drops: f.ns_drops.clone(),
    }
}

/// Writes `bytes` to a new file at `path` (padded with zeros to the file's alignment),
/// syncs and closes it; returns the bytes written.
pub(crate) async fn write_file<D: Disk>(
    disk: &D,
    path: &Path,
    bytes: &[u8],
    what: &'static str,
    sync: bool,
) -> FaultResult<u64> {
    let (op_create, op_write, op_sync, op_close) = match what {
        "segment" => (
            "create segment",
            "write segment",
            "fdatasync segment",
            "close segment",
        ),
        _ => (
            "create manifest",
            "write manifest",
            "fdatasync manifest",
            "close manifest",
        ),
    };
    let mut w = disk
        .create(path)
        .await
        .map_err(|e| Fault::io(op_create, path, e))?;
    let align = w.alignment();
    let mut pos = 0usize;
    let whole = bytes.len() / align * align;
    while pos < whole {
        let n = (whole - pos).min(WRITE_CHUNK_BYTES / align * align);
        w.write_at(pos as u64, &bytes[pos..pos + n])
            .await
            .map_err(|e| Fault::io(op_write, path, e))?;
        pos += n;
    }
    if pos < bytes.len() {
        let mut tail = bytes[pos..].to_vec();
        tail.resize(align, 0);
        w.write_at(pos as u64, &tail)
            .await
            .map_err(|e| Fault::io(op_write, path, e))?;
        pos += align;
    }
    if sync {
        w.sync().await.map_err(|e| Fault::io(op_sync, path, e))?;
    }
    w.close().await.map_err(|e| Fault::io(op_close, path, e))?;
    Ok(pos as u64)
}

/// Writes a manifest into `dir`: temp file, `fdatasync`, rename, directory sync.
pub(crate) async fn write_manifest_in<D: Disk>(
    disk: &D,
    dir: &Path,
    m: &Manifest,
) -> FaultResult<u64> {
    let (n, tmp) = stage_manifest(disk, dir, m).await?;
    publish_manifest(disk, dir, &tmp, m.checkpoint_id).await?;
    Ok(n)
}

/// Writes a manifest to its temporary file in `dir` and syncs it; returns the bytes written
/// and the file. It takes effect only when [`publish_manifest`] renames it.
async fn stage_manifest<D: Disk>(
    disk: &D,
    dir: &Path,
    m: &Manifest,
) -> FaultResult<(u64, PathBuf)> {
    let name = manifest::manifest_name(m.checkpoint_id);
    let tmp: PathBuf = dir.join(format!("{name}.tmp"));
    // Padded to the file's own alignment by `write_file`.
    let bytes = manifest::encode(m, 1).map_err(|e| {
        Fault::io(
            "encode manifest",
            &dir.join(&name),
            std::io::Error::other(e),
        )
    })?;
    let n = write_file(disk, &tmp, &bytes, "manifest", true).await?;
    Ok((n, tmp))
}

/// Renames the staged manifest of checkpoint `checkpoint_id` into place and syncs `dir`.
async fn publish_manifest<D: Disk>(
    disk: &D,
    dir: &Path,
    tmp: &Path,
    checkpoint_id: u64,
) -> FaultResult<()> {
    let path = dir.join(manifest::manifest_name(checkpoint_id));
    disk.rename(tmp, &path)
        .await
        .map_err(|e| Fault::io("rename manifest", &path, e))?;
    disk.sync_dir(dir)
        .await
        .map_err(|e| Fault::io("fsync directory", dir, e))
}
