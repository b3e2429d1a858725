//! A checkpoint's metadata on disk: what the coordinator writes to complete a checkpoint, and
//! what a restore reads.
//!
//! Layout: `DIR/chk-<id>/_metadata` for checkpoints, `DIR/savepoint-<id>-<ms>/_metadata` for
//! savepoints. The file is one line of JSON, then a line `crc32:<8 hex digits>` over the JSON's
//! bytes. It is written to `_metadata.inprogress`, synced, renamed, and the directory synced:
//! a checkpoint is complete exactly when its `_metadata` exists and its checksum matches. A
//! directory without one (a crash while writing) or with a bad one is incomplete and skipped,
//! with the reason, when looking for the newest complete checkpoint.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint::SplitState;
use crate::error::{Error, Result};

/// The metadata file's name in a checkpoint directory.
pub const METADATA_FILE: &str = "_metadata";
/// The version of the format.
pub const METADATA_FORMAT: u32 = 1;

/// A complete checkpoint or savepoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMetadata {
    /// [`METADATA_FORMAT`].
    pub format: u32,
    /// The checkpoint's id.
    pub checkpoint_id: u64,
    /// The job's name.
    pub job: String,
    /// Whether it is a savepoint (taken to stop the job).
    pub savepoint: bool,
    /// When it was triggered, in ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The workers of the job that took it.
    pub workers: usize,
    /// The job's key groups.
    pub key_groups_max: u32,
    /// The run (a cluster's deployment of the job) that took it; 0 in one process. A restore
    /// commits only the output files this run left pending (see `Sink::recover`).
    #[serde(default)]
    pub run: u64,
    /// Per stage of the job graph, in order.
    pub stages: Vec<StageMetadata>,
}

/// One stage's part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageMetadata {
    /// The stage's index in the job graph.
    pub stage: usize,
    /// Its name (checked on restore: the job must be the same).
    pub name: String,
    /// One per worker.
    pub instances: Vec<InstanceMetadata>,
}

/// One stage instance's part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceMetadata {
    /// The worker.
    pub worker: usize,
    /// Its sources' splits.
    pub splits: Vec<SplitState>,
    /// Where its operator state is.
    pub state: Option<String>,
    /// The pause in its record flow at the barrier, in µs (see [`crate::checkpoint::Ack`]).
    pub sync_us: u64,
    /// Of `sync_us`, the freeze of its state, in µs (absent in older metadata: 0).
    #[serde(default)]
    pub freeze_us: u64,
    /// The CPU time its thread spent in the pause, in µs (absent in older metadata: 0).
    #[serde(default)]
    pub sync_cpu_us: u64,
    /// From its barrier to its acknowledgement, in µs.
    pub duration_us: u64,
    /// How long its inputs were aligning, in µs (absent in older metadata: 0).
    #[serde(default)]
    pub align_us: u64,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_owned(),
        offset: 0,
        reason: reason.into(),
    }
}

/// The directory of checkpoint `id` under `dir`.
pub fn checkpoint_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("chk-{id}"))
}

/// Fsyncs a directory, so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}

impl CheckpointMetadata {
    /// Writes the metadata into `dir` (created if missing) atomically: temporary file, sync,
    /// rename, directory sync. The parent directory's sync (for a new `dir`) runs on a
    /// thread of its own while the temporary file is written and synced: both must be
    /// durable before the rename, in either order, and in parallel they cost one sync's
    /// latency instead of two (the completion of every checkpoint waits for them).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io("create checkpoint directory", dir))?;
        let json = serde_json::to_string(self)
            .map_err(|e| Error::Config(format!("internal: encode checkpoint metadata: {e}")))?;
        let crc = crc32fast::hash(json.as_bytes());
        let tmp = dir.join(format!("{METADATA_FILE}.inprogress"));
        let write_tmp = || -> Result<()> {
            let mut f = File::create(&tmp).map_err(io("create checkpoint metadata", &tmp))?;
            f.write_all(format!("{json}\ncrc32:{crc:08x}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io("write checkpoint metadata", &tmp))
        };
        let (parent_synced, written) = std::thread::scope(|s| {
            let parent_sync = std::thread::Builder::new()
                .name("sluice-meta-sync".into())
                .spawn_scoped(s, || sync_dir(parent));
            let written = write_tmp();
            let parent_synced = match parent_sync {
                Ok(handle) => handle.join().unwrap_or_else(|_| {
                    Err(Error::Config(
                        "internal: the directory sync thread panicked".into(),
                    ))
                }),
                // No thread to be had: sync the parent here, after the file.
                Err(_) => sync_dir(parent),
            };
            (parent_synced, written)
        });
        written?;
        parent_synced?;
        let target = dir.join(METADATA_FILE);
        std::fs::rename(&tmp, &target).map_err(io("rename checkpoint metadata", &target))?;
        sync_dir(dir)
    }

    /// Reads and checks the metadata of the checkpoint directory `dir`.
    pub fn read(dir: &Path) -> Result<CheckpointMetadata> {
        let path = dir.join(METADATA_FILE);
        let text = std::fs::read_to_string(&path).map_err(io("read checkpoint metadata", &path))?;
        let (json, trailer) = text
            .trim_end_matches('\n')
            .rsplit_once('\n')
            .ok_or_else(|| corrupt(&path, "truncated (no checksum line)"))?;
        let expected = trailer
            .strip_prefix("crc32:")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| corrupt(&path, "bad checksum line"))?;
        if crc32fast::hash(json.as_bytes()) != expected {
            return Err(corrupt(&path, "checksum mismatch"));
        }
        let meta: CheckpointMetadata = serde_json::from_str(json)
            .map_err(|e| corrupt(&path, format!("malformed metadata: {e}")))?;
        if meta.format != METADATA_FORMAT {
            return Err(corrupt(
                &path,
                format!(
                    "format {} (this version reads {METADATA_FORMAT})",
                    meta.format
                ),
            ));
        }
        Ok(meta)
    }
}

/// A checkpoint directory found under a checkpoint or savepoint root.
#[derive(Debug)]
pub struct Found {
    /// The directory.
    pub dir: PathBuf,
    /// Its id.
    pub id: u64,
    /// Its metadata, or why it is not a complete checkpoint.
    pub metadata: Result<CheckpointMetadata>,
}

/// The checkpoint and savepoint directories under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io("list checkpoints", root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("list checkpoints", root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = name
            .strip_prefix("chk-")
            .or_else(|| name.strip_prefix("savepoint-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|id| id.parse::<u64>().ok());
        if let Some(id) = id {
            let dir = entry.path();
            let metadata = CheckpointMetadata::read(&dir);
            found.push(Found { dir, id, metadata });
        }
    }
    found.sort_by_key(|f| f.id);
    Ok(found)
}

/// A complete checkpoint: its directory and metadata.
pub type Complete = (PathBuf, CheckpointMetadata);

/// The newest complete checkpoint under `root` (or `root` itself, if it is one), and the
/// incomplete or corrupt ones newer than it, each with its reason.
pub fn latest(root: &Path) -> Result<(Option<Complete>, Vec<String>)> {
    latest_before(root, u64::MAX)
}

/// Whether `path` is itself a checkpoint or savepoint directory (it holds a metadata file,
/// sound or not), rather than a directory of them.
pub fn is_checkpoint(path: &Path) -> bool {
    path.join(METADATA_FILE).exists()
}

/// [`latest`] among the checkpoints with an id below `before`: where a restore falls back to
/// when checkpoint `before` turned out to be unusable.
pub fn latest_before(root: &Path, before: u64) -> Result<(Option<Complete>, Vec<String>)> {
    if is_checkpoint(root) {
        let meta = CheckpointMetadata::read(root)?;
        let found = (meta.checkpoint_id < before).then(|| (root.to_owned(), meta));
        return Ok((found, Vec::new()));
    }
    let mut skipped = Vec::new();
    for found in list(root)?.into_iter().rev() {
        if found.id >= before {
            continue;
        }
        match found.metadata {
            Ok(meta) => return Ok((Some((found.dir, meta)), skipped)),
            Err(e) => skipped.push(format!("{}: {e}", found.dir.display())),
        }
    }
    Ok((None, skipped))
}

/// Deletes the checkpoints under `root` older than the newest `retain` complete ones, and
/// every incomplete one older than the newest complete one.
pub fn retain(root: &Path, retain: usize) -> Result<()> {
    let found = list(root)?;
    let complete: Vec<u64> = found
        .iter()
        .filter(|f| f.metadata.is_ok())
        .map(|f| f.id)
        .collect();
    let Some(&newest) = complete.last() else {
        return Ok(());
    };
    let keep_from = complete
        .len()
        .checked_sub(retain.max(1))
        .map_or(0, |i| complete[i]);
    for f in found {
        let old_complete = f.metadata.is_ok() && f.id < keep_from;
        let old_incomplete = f.metadata.is_err() && f.id < newest;
        if old_complete || old_incomplete {
            std::fs::remove_dir_all(&f.dir).map_err(io("delete old checkpoint", &f.dir))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64) -> CheckpointMetadata {
        CheckpointMetadata {
            format: METADATA_FORMAT,
            checkpoint_id: id,
            job: "j".into(),
            savepoint: false,
            timestamp_ms: 1,
            workers: 2,
            key_groups_max: 128,
            run: 0,
            stages: vec![StageMetadata {
                stage: 0,
                name: "Source: x".into(),
                instances: vec![InstanceMetadata {
                    worker: 0,
                    splits: vec![SplitState {
                        split: vec![1, 2, 255],
                        position: Some(7),
                        done: false,
                    }],
                    state: None,
                    sync_us: 3,
                    freeze_us: 1,
                    sync_cpu_us: 2,
                    duration_us: 9,
                    align_us: 0,
                }],
            }],
        }
    }

    #[test]
    fn round_trip_and_every_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let chk = checkpoint_dir(dir.path(), 1);
        meta(1).write(&chk).unwrap();
        assert_eq!(CheckpointMetadata::read(&chk).unwrap(), meta(1));
        let path = chk.join(METADATA_FILE);
        let bytes = std::fs::read(&path).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            std::fs::write(&path, &bad).unwrap();
            let err = CheckpointMetadata::read(&chk);
            assert!(err.is_err(), "flip at {i} undetected");
        }
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(CheckpointMetadata::read(&chk).is_err());
    }

    #[test]
    fn latest_skips_partial_and_corrupt_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        for id in 1..=3 {
            meta(id).write(&checkpoint_dir(dir.path(), id)).unwrap();
        }
        std::fs::create_dir_all(checkpoint_dir(dir.path(), 4)).unwrap(); // a crash mid-way
        std::fs::write(checkpoint_dir(dir.path(), 3).join(METADATA_FILE), "{}").unwrap();
        let (latest, skipped) = latest(dir.path()).unwrap();
        assert_eq!(latest.unwrap().1.checkpoint_id, 2);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        retain(dir.path(), 1).unwrap();
        let left: Vec<u64> = list(dir.path()).unwrap().iter().map(|f| f.id).collect();
        assert_eq!(
            left,
            vec![2, 3, 4],
            "incomplete newer ones stay; older ones go"
        );
    }

    #[test]
    fn latest_before_skips_the_unusable_checkpoint_and_newer_ones() {
        let dir = tempfile::tempdir().unwrap();
        for id in [2, 4, 5] {
            meta(id).write(&checkpoint_dir(dir.path(), id)).unwrap();
        }
        let id =
            |r: Result<(Option<Complete>, Vec<String>)>| r.unwrap().0.map(|c| c.1.checkpoint_id);
        assert_eq!(id(latest_before(dir.path(), 5)), Some(4));
        assert_eq!(id(latest_before(dir.path(), 4)), Some(2));
        assert_eq!(id(latest_before(dir.path(), 2)), None);
        assert_eq!(id(latest(dir.path())), Some(5));
        // A checkpoint directory itself: that one, if below the bound.
        let chk4 = checkpoint_dir(dir.path(), 4);
        assert!(is_checkpoint(&chk4) && !is_checkpoint(dir.path()));
        assert_eq!(id(latest_before(&chk4, 5)), Some(4));
        assert_eq!(id(latest_before(&chk4, 4)), None);
    }

    #[test]
    fn metadata_without_newer_measurements_reads_them_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let chk = checkpoint_dir(dir.path(), 1);
        std::fs::create_dir_all(&chk).unwrap();
        let mut old = meta(1);
        for i in old.stages.iter_mut().flat_map(|s| s.instances.iter_mut()) {
            (i.freeze_us, i.sync_cpu_us, i.align_us) = (0, 0, 0);
        }
        let mut json = serde_json::to_string(&old).unwrap();
        for field in ["freeze_us", "sync_cpu_us", "align_us"] {
            json = json.replace(&format!(",\"{field}\":0"), "");
            assert!(!json.contains(field), "{json}");
        }
        let crc = crc32fast::hash(json.as_bytes());
        std::fs::write(
            chk.join(METADATA_FILE),
            format!("{json}\ncrc32:{crc:08x}\n"),
        )
        .unwrap();
        assert_eq!(CheckpointMetadata::read(&chk).unwrap(), old);
    }
}
