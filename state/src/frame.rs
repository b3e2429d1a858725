//! Segment entries on disk: an 80-byte little-endian header, then the namespace, key and
//! value archives, each padded to 16 bytes. The crc32 covers everything after the first
//! eight bytes, including the header fields that say where the frame belongs (segment id,
//! offset, checkpoint id), so a valid frame written to the wrong place is detected
//! (RELIABILITY R6b). `docs/state-format.md` has the byte table.

use xxhash_rust::xxh3::xxh3_64;

/// Bytes of a frame header.
pub const HEADER_BYTES: usize = 80;
/// Frames start at, and their parts are padded to, multiples of this.
pub const FRAME_ALIGN: usize = 16;
/// The largest frame the store writes or accepts (checked before any allocation).
pub const FRAME_BYTES_MAX: usize = 64 << 20;

const _: () = assert!(HEADER_BYTES % FRAME_ALIGN == 0);
const _: () = assert!(FRAME_BYTES_MAX % FRAME_ALIGN == 0);

/// What a frame records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The entry's value.
    Put = 1,
    /// The entry was removed.
    Tombstone = 2,
}

/// The order of entries inside a segment: state, then key group, then the hashes of
/// namespace and key (then the bytes, to break hash ties). State-major order makes one
/// state's key groups contiguous, so a key-group subset is a few byte ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SortKey {
    /// The state (table) id.
    pub state: u32,
    /// The key group.
    pub kg: u32,
    /// xxh3 of the namespace archive.
    pub ns_hash: u64,
    /// xxh3 of the key archive.
    pub key_hash: u64,
}

impl SortKey {
    /// The sort key of an entry.
    pub fn of(state: u32, kg: u32, ns: &[u8], key: &[u8]) -> SortKey {
        SortKey {
            state,
            kg,
            ns_hash: xxh3_64(ns),
            key_hash: xxh3_64(key),
        }
    }
}

/// The header fields of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    /// The segment the frame was written to.
    pub segment_id: u64,
    /// Its byte offset there.
    pub offset: u64,
    /// The checkpoint the entry belongs to (the first one that includes it).
    pub checkpoint_id: u64,
    /// Where it sorts.
    pub sort: SortKey,
    /// Expiry time in ms (0: never).
    pub expires_ms: u64,
    /// Put or tombstone.
    pub kind: Kind,
}

/// A decoded frame, borrowing its parts from the read buffer.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef<'a> {
    /// The header.
    pub head: FrameHead,
    /// The namespace archive.
    pub ns: &'a [u8],
    /// The key archive.
    pub key: &'a [u8],
    /// The value archive (empty for a tombstone).
    pub value: &'a [u8],
    /// Bytes of the whole frame.
    pub len: usize,
}

/// Rounds up to [`FRAME_ALIGN`].
#[inline]
pub fn pad(n: usize) -> usize {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// The size of a frame with these parts.
#[inline]
pub fn frame_len(ns: usize, key: usize, value: usize) -> usize {
    HEADER_BYTES + pad(ns) + pad(key) + pad(value)
}

/// Appends a frame to `out`, whose length must be a multiple of [`FRAME_ALIGN`].
pub fn encode(out: &mut Vec<u8>, head: &FrameHead, ns: &[u8], key: &[u8], value: &[u8]) {
    let start = out.len();
    debug_assert_eq!(start % FRAME_ALIGN, 0);
    let len = frame_len(ns.len(), key.len(), value.len());
    assert!(
        len <= FRAME_BYTES_MAX,
        "frame of {len} bytes exceeds the maximum"
    );
    out.resize(start + len, 0);
    let f = &mut out[start..start + len];
    f[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    f[8..16].copy_from_slice(&head.segment_id.to_le_bytes());
    f[16..24].copy_from_slice(&head.offset.to_le_bytes());
    f[24..32].copy_from_slice(&head.checkpoint_id.to_le_bytes());
    f[32..36].copy_from_slice(&head.sort.state.to_le_bytes());
    f[36..40].copy_from_slice(&head.sort.kg.to_le_bytes());
    f[40..48].copy_from_slice(&head.sort.ns_hash.to_le_bytes());
    f[48..56].copy_from_slice(&head.sort.key_hash.to_le_bytes());
    f[56..64].copy_from_slice(&head.expires_ms.to_le_bytes());
    f[64..68].copy_from_slice(&(value.len() as u32).to_le_bytes());
    f[68..70].copy_from_slice(&(ns.len() as u16).to_le_bytes());
    f[70] = head.kind as u8;
    f[72..76].copy_from_slice(&(key.len() as u32).to_le_bytes());
    let mut at = HEADER_BYTES;
    for part in [ns, key, value] {
        f[at..at + part.len()].copy_from_slice(part);
        at += pad(part.len());
    }
    let crc = crc32fast::hash(&f[8..]);
    f[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Rewrites the segment id and offset of an encoded frame (and its crc).
pub fn relocate(frame: &mut [u8], segment_id: u64, offset: u64) {
    frame[8..16].copy_from_slice(&segment_id.to_le_bytes());
    frame[16..24].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32fast::hash(&frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// What is at a position of a segment.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A valid frame.
    Frame(FrameRef<'a>),
    /// Zero bytes: the end of the written data (padding of the last block).
    End,
}

/// Decodes the frame at the start of `buf` (which holds at least the rest of the segment's
/// data, or at least one whole frame). Errors say what is wrong, in a few words.
pub fn decode(buf: &[u8]) -> Result<Decoded<'_>, String> {
    if buf.len() < 4 {
        return Err(format!(
            "{} bytes left, a frame needs {HEADER_BYTES}",
            buf.len()
        ));
    }
    let len = u32_at(buf, 0) as usize;
    if len == 0 {
        return Ok(Decoded::End);
    }
    if len < HEADER_BYTES || len % FRAME_ALIGN != 0 || len > FRAME_BYTES_MAX {
        return Err(format!("bad frame length {len}"));
    }
    if len > buf.len() {
        return Err(format!(
            "torn frame: length {len}, {} bytes left",
            buf.len()
        ));
    }
    let f = &buf[..len];
    let crc = crc32fast::hash(&f[8..]);
    if crc != u32_at(f, 4) {
        return Err(format!(
            "crc mismatch: stored {:#010x}, computed {crc:#010x}",
            u32_at(f, 4)
        ));
    }
    let kind = match f[70] {
        1 => Kind::Put,
        2 => Kind::Tombstone,
        k => return Err(format!("unknown frame kind {k}")),
    };
    let value_len = u32_at(f, 64) as usize;
    let ns_len = u16::from_le_bytes([f[68], f[69]]) as usize;
    let key_len = u32_at(f, 72) as usize;
    if frame_len(ns_len, key_len, value_len) != len {
        return Err(format!(
            "part lengths {ns_len}+{key_len}+{value_len} do not fill a frame of {len}"
        ));
    }
    let head = FrameHead {
        segment_id: u64_at(f, 8),
        offset: u64_at(f, 16),
        checkpoint_id: u64_at(f, 24),
        sort: SortKey {
            state: u32_at(f, 32),
            kg: u32_at(f, 36),
            ns_hash: u64_at(f, 40),
            key_hash: u64_at(f, 48),
        },
        expires_ms: u64_at(f, 56),
        kind,
    };
    let ns_at = HEADER_BYTES;
    let key_at = ns_at + pad(ns_len);
    let value_at = key_at + pad(key_len);
    Ok(Decoded::Frame(FrameRef {
        head,
        ns: &f[ns_at..ns_at + ns_len],
        key: &f[key_at..key_at + key_len],
        value: &f[value_at..value_at + value_len],
        len,
    }))
}

/// The length and sort key of the frame at the start of `buf`, read from its header without
/// checking its crc: `None` unless the length is a plausible frame length that fits in
/// `buf`. A point lookup steps over the frames before the one it wants with this and checks
/// in full (with [`decode`]) only the frame it returns; nothing it returns is unchecked.
#[inline]
pub fn peek(buf: &[u8]) -> Option<(usize, SortKey)> {
    if buf.len() < HEADER_BYTES {
        return None;
    }
    let len = u32_at(buf, 0) as usize;
    if len < HEADER_BYTES || len % FRAME_ALIGN != 0 || len > buf.len() {
        return None;
    }
    let sort = SortKey {
        state: u32_at(buf, 32),
        kg: u32_at(buf, 36),
        ns_hash: u64_at(buf, 40),
        key_hash: u64_at(buf, 48),
    };
    Some((len, sort))
}

/// Whether the frame `f` (whole, as [`peek`] found it, not checked) holds this namespace and
/// key: the parts its header's lengths place, compared without checking the crc.
#[inline]
pub fn names(f: &[u8], ns: &[u8], key: &[u8]) -> bool {
    let ns_len = u16::from_le_bytes([f[68], f[69]]) as usize;
    let key_len = u32_at(f, 72) as usize;
    let key_at = HEADER_BYTES + pad(ns_len);
    ns_len == ns.len()
        && key_len == key.len()
        && f.get(HEADER_BYTES..HEADER_BYTES + ns_len) == Some(ns)
        && f.get(key_at..key_at + key_len) == Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> FrameHead {
        FrameHead {
            segment_id: 3,
            offset: 0,
            checkpoint_id: 9,
            sort: SortKey::of(1, 2, b"ns", b"key"),
            expires_ms: 0,
            kind: Kind::Put,
        }
    }

    #[test]
    fn roundtrip_and_every_bit_flip_is_detected() {
        let mut out = Vec::new();
        encode(&mut out, &head(), b"ns", b"key", b"value");
        assert_eq!(out.len(), frame_len(2, 3, 5));
        let Ok(Decoded::Frame(f)) = decode(&out) else {
            panic!("valid frame did not decode")
        };
        assert_eq!(
            (f.ns, f.key, f.value),
            (&b"ns"[..], &b"key"[..], &b"value"[..])
        );
        assert_eq!(f.head, head());
        for bit in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            match decode(&bad) {
                Ok(Decoded::Frame(_)) => panic!("flip of bit {bit} not detected"),
                Ok(Decoded::End) | Err(_) => {}
            }
        }
    }

    #[test]
    fn truncations_are_torn_frames() {
        let mut out = Vec::new();
        encode(&mut out, &head(), b"", b"k", b"v");
        for cut in 0..out.len() {
            assert!(decode(&out[..cut]).is_err(), "cut at {cut} decoded");
        }
    }
}
