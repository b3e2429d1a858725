//! The manifest: which segments (and which byte ranges of them per state and key group) make
//! up a checkpoint, the state names, and the namespaces dropped. Written atomically: a temp
//! file, `fdatasync`, rename, directory sync. A 32-byte header with its own crc32, then an
//! rkyv archive read back with validated `access`. `docs/state-format.md` has the bytes.

use std::path::Path;

use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::codec::{ARCHIVE_ALIGN, Codec, Scratch};
use crate::error::{Fault, FaultResult};
use crate::segment::{Extent, SegmentMeta};

/// The manifest file's magic bytes.
pub const MAGIC: &[u8; 8] = b"SLUICEMF";
/// The format version.
pub const VERSION: u32 = 1;
/// Header bytes before the archive.
pub const HEADER_BYTES: usize = 32;
/// The largest manifest accepted (checked before allocating).
pub const MANIFEST_BYTES_MAX: usize = 256 << 20;

/// The file name of checkpoint `id`'s manifest.
pub fn manifest_name(id: u64) -> String {
    format!("MANIFEST-{id:020}")
}

/// The checkpoint id in a manifest file name.
pub fn parse_manifest_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("MANIFEST-")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// An extent, as archived.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentRec {
    /// State id.
    pub state: u32,
    /// Key group.
    pub kg: u32,
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Frames.
    pub entries: u64,
}

/// A segment, as archived.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SegmentRec {
    /// File id.
    pub id: u64,
    /// Precedence.
    pub order: u64,
    /// Bytes of frames.
    pub data_len: u64,
    /// Frames.
    pub entries: u64,
    /// Extents in file order.
    pub extents: Vec<ExtentRec>,
}

/// A dropped namespace: entries of `state` in namespace `ns` in segments of lower order and
/// key groups in `kg_lo..=kg_hi` are gone.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NsDropRec {
    /// State id.
    pub state: u32,
    /// The namespace archive.
    pub ns: Vec<u8>,
    /// Its order.
    pub order: u64,
    /// First key group it applies to.
    pub kg_lo: u32,
    /// Last key group it applies to.
    pub kg_hi: u32,
}

/// A checkpoint's manifest.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The checkpoint.
    pub checkpoint_id: u64,
    /// The next segment order to hand out.
    pub next_order: u64,
    /// The next segment file id to hand out.
    pub next_segment_id: u64,
    /// State names and ids.
    pub states: Vec<(String, u32)>,
    /// Live segments, in order.
    pub segments: Vec<SegmentRec>,
    /// Dropped namespaces still relevant to older segments.
    pub ns_drops: Vec<NsDropRec>,
}

impl SegmentRec {
    /// From the in-memory form.
    pub fn from_meta(m: &SegmentMeta) -> SegmentRec {
        SegmentRec {
            id: m.id,
            order: m.order,
            data_len: m.data_len,
            entries: m.entries,
            extents: m
                .extents
                .iter()
                .map(|e| ExtentRec {
                    state: e.state,
                    kg: e.kg,
                    offset: e.offset,
                    len: e.len,
                    entries: e.entries,
                })
                .collect(),
        }
    }
    /// To the in-memory form.
    pub fn to_meta(&self) -> SegmentMeta {
        SegmentMeta {
            id: self.id,
            order: self.order,
            data_len: self.data_len,
            entries: self.entries,
            extents: self
                .extents
                .iter()
                .map(|e| Extent {
                    state: e.state,
                    kg: e.kg,
                    offset: e.offset,
                    len: e.len,
                    entries: e.entries,
                })
                .collect(),
        }
    }
}

/// Encodes a manifest file, padded with zeros to a multiple of `alignment`.
pub fn encode(m: &Manifest, alignment: usize) -> Result<Vec<u8>, String> {
    let mut scratch = Scratch::new();
    m.encode(&mut scratch)?;
    let payload = scratch.as_slice();
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len() + alignment);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let head_crc = crc32fast::hash(&out[0..20]);
    out.extend_from_slice(&head_crc.to_le_bytes());
    out.extend_from_slice(&m.checkpoint_id.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().div_ceil(alignment) * alignment, 0);
    Ok(out)
}

/// Decodes and validates a manifest file's bytes.
pub fn decode(path: &Path, bytes: &[u8]) -> FaultResult<Manifest> {
    let bad = |offset: u64, reason: String| Fault::corrupt(path, offset, reason);
    if bytes.len() < HEADER_BYTES {
        return Err(bad(
            0,
            format!(
                "manifest of {} bytes is shorter than its header",
                bytes.len()
            ),
        ));
    }
    if &bytes[0..8] != MAGIC {
        return Err(bad(0, "not a manifest (bad magic)".into()));
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if crc32fast::hash(&bytes[0..20]) != word(20) {
        return Err(bad(0, "manifest header crc mismatch".into()));
    }
    if word(8) != VERSION {
        return Err(bad(
            8,
            format!("manifest version {} is not {VERSION}", word(8)),
        ));
    }
    let len = word(12) as usize;
    if len > MANIFEST_BYTES_MAX || HEADER_BYTES + len > bytes.len() {
        return Err(bad(
            12,
            format!("manifest payload of {len} bytes is torn or too large"),
        ));
    }
    let payload = &bytes[HEADER_BYTES..HEADER_BYTES + len];
    if crc32fast::hash(payload) != word(16) {
        return Err(bad(HEADER_BYTES as u64, "manifest crc mismatch".into()));
    }
    let mut aligned: AlignedVec<ARCHIVE_ALIGN> = AlignedVec::with_capacity(len);
    aligned.extend_from_slice(payload);
    let m = Manifest::decode(aligned.as_slice()).map_err(|e| {
        bad(
            HEADER_BYTES as u64,
            format!("manifest does not validate: {e}"),
        )
    })?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[24..32]);
    if u64::from_le_bytes(id) != m.checkpoint_id {
        return Err(bad(
            24,
            "manifest header and body disagree on the checkpoint".into(),
        ));
    }
    Ok(m)
}
