//! The frame: a fixed 16-byte header (magic, kind, flags, payload length, channel, crc32)
//! followed by the payload and zero padding up to a multiple of [`FRAME_ALIGN`] bytes.
//!
//! A receiver checks the length against its limit *before* it allocates anything and the crc
//! before it looks at the payload, so a corrupt or hostile frame is an error on its
//! connection, never a panic or an oversized allocation. The padding keeps every header — and
//! so every payload — of a stream at a 16-byte offset, so a payload read into an aligned buffer
//! is aligned for rkyv wherever it lands. Under `cfg(fuzzing)` the crc is not checked, so that a
//! fuzzer's mutations reach the rkyv validation behind it (RELIABILITY.md §6.5).

use bytes::BufMut;

/// Bytes in a frame header.
pub const FRAME_HEADER_BYTES: usize = 16;
/// Frames start, and payloads start, at multiples of this many bytes of the stream.
pub const FRAME_ALIGN: usize = 16;
/// The largest payload a peer may ever announce: 64 MiB. A larger length closes the connection
/// before anything is allocated. A connection may set a lower limit (see `NetConfig`).
pub const FRAME_PAYLOAD_MAX: u32 = 64 << 20;
const MAGIC: u16 = 0x534C;

const _: () = assert!(FRAME_HEADER_BYTES % FRAME_ALIGN == 0);
const _: () = assert!(FRAME_PAYLOAD_MAX as usize % FRAME_ALIGN == 0);

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A batch of records (`WireBatch<T>`), on a data channel.
    Records = 1,
    /// A watermark (`i64`), on a data channel.
    Watermark = 2,
    /// A checkpoint barrier (`WireBarrier`), on a data channel.
    Barrier = 3,
    /// The sender's input on the channel ended (empty payload).
    EndOfInput = 4,
    /// A control-plane message (`Control`); channel 0.
    Control = 5,
    /// A watermark status change (`WireStatus`), on a data channel.
    Status = 6,
    /// Credits the receiver of a channel grants its sender (`WireCredit`).
    Credit = 7,
    /// One step of the authentication handshake (`Handshake`); channel 0.
    Handshake = 8,
}

impl FrameKind {
    /// The kind with this byte, if any.
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        Some(match b {
            1 => FrameKind::Records,
            2 => FrameKind::Watermark,
            3 => FrameKind::Barrier,
            4 => FrameKind::EndOfInput,
            5 => FrameKind::Control,
            6 => FrameKind::Status,
            7 => FrameKind::Credit,
            8 => FrameKind::Handshake,
            _ => return None,
        })
    }

    /// Whether the frame is a stream element of a data channel (and so costs credit).
    pub fn is_element(self) -> bool {
        matches!(
            self,
            FrameKind::Records
                | FrameKind::Watermark
                | FrameKind::Barrier
                | FrameKind::EndOfInput
                | FrameKind::Status
        )
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the payload is.
    pub kind: FrameKind,
    /// Payload length in bytes, at most the receiver's limit.
    pub payload_len: u32,
    /// The channel the frame belongs to (0 for connection-level frames).
    pub channel: u32,
    /// crc32 of the header's first 12 bytes and the payload.
    pub crc: u32,
    prefix: [u8; 12],
}

impl FrameHeader {
    /// Bytes the payload and its padding take on the wire.
    pub fn padded_len(&self) -> usize {
        padded(self.payload_len as usize)
    }
}

/// `len` rounded up to a multiple of [`FRAME_ALIGN`].
#[inline]
pub fn padded(len: usize) -> usize {
    len.div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

fn frame_crc(prefix: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(prefix);
    h.update(payload);
    h.finalize()
}

/// Why bytes are not a valid frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header does not start with the magic number.
    #[error("frame header at byte {offset}: bad magic {found:#06x}")]
    BadMagic {
        /// Stream offset of the header.
        offset: u64,
        /// What was there.
        found: u16,
    },
    /// An unknown kind byte.
    #[error("frame header at byte {offset}: unknown kind {kind}")]
    UnknownKind {
        /// Stream offset of the header.
        offset: u64,
        /// The kind byte.
        kind: u8,
    },
    /// Reserved flag bits are set.
    #[error("frame header at byte {offset}: reserved flags {flags:#04x}")]
    BadFlags {
        /// Stream offset of the header.
        offset: u64,
        /// The flags byte.
        flags: u8,
    },
    /// The announced payload is larger than allowed.
    #[error("frame header at byte {offset}: payload of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Stream offset of the header.
        offset: u64,
        /// Announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The payload's crc does not match the header's.
    #[error("frame at byte {offset}: crc mismatch (header {expected:#010x}, data {actual:#010x})")]
    CrcMismatch {
        /// Stream offset of the header.
        offset: u64,
        /// crc in the header.
        expected: u32,
        /// crc of the payload received.
        actual: u32,
    },
    /// Padding after the payload is not zero.
    #[error("frame at byte {offset}: non-zero padding")]
    BadPadding {
        /// Stream offset of the header.
        offset: u64,
    },
}

/// Appends a frame of `kind` on `channel` with `payload` (and its padding) to `out`.
pub fn encode(kind: FrameKind, channel: u32, payload: &[u8], out: &mut Vec<u8>) {
    let start = begin(out);
    out.extend_from_slice(payload);
    finish(out, start, kind, channel);
}

/// Starts a frame at the end of `out`: reserves its header and returns where it starts. The
/// caller appends the payload, then calls [`finish`]. `out`'s length must be a multiple of
/// [`FRAME_ALIGN`], so that the payload's offset in it is too.
pub fn begin(out: &mut Vec<u8>) -> usize {
    assert!(
        out.len() % FRAME_ALIGN == 0,
        "frame at unaligned offset {}",
        out.len()
    );
    let start = out.len();
    out.resize(start + FRAME_HEADER_BYTES, 0);
    start
}

/// Completes the frame [`begin`] started at `start`: writes its header (length, channel,
/// crc) and pads the payload. Returns the payload's length.
pub fn finish(out: &mut Vec<u8>, start: usize, kind: FrameKind, channel: u32) -> u32 {
    let payload_start = start + FRAME_HEADER_BYTES;
    let len = out.len() - payload_start;
    assert!(
        len <= FRAME_PAYLOAD_MAX as usize,
        "payload of {len} bytes exceeds {FRAME_PAYLOAD_MAX}"
    );
    let len = len as u32;
    let mut prefix = [0u8; 12];
    {
        let mut p = &mut prefix[..];
        p.put_u16_le(MAGIC);
        p.put_u8(kind as u8);
        p.put_u8(0);
        p.put_u32_le(len);
        p.put_u32_le(channel);
    }
    let crc = frame_crc(&prefix, &out[payload_start..]);
    out[start..start + 12].copy_from_slice(&prefix);
    out[start + 12..payload_start].copy_from_slice(&crc.to_le_bytes());
    out.resize(payload_start + padded(len as usize), 0);
    len
}

/// Decodes the header at the start of `buf`: `Ok(None)` when fewer than
/// [`FRAME_HEADER_BYTES`] are there yet. `offset` is the header's position in the stream,
/// for error messages; `max` the largest payload accepted (at most [`FRAME_PAYLOAD_MAX`]).
pub fn decode_header(buf: &[u8], offset: u64, max: u32) -> Result<Option<FrameHeader>, FrameError> {
    let Some(h) = buf.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let magic = u16::from_le_bytes([h[0], h[1]]);
    if magic != MAGIC {
        return Err(FrameError::BadMagic {
            offset,
            found: magic,
        });
    }
    let kind = FrameKind::from_u8(h[2]).ok_or(FrameError::UnknownKind { offset, kind: h[2] })?;
    if h[3] != 0 {
        return Err(FrameError::BadFlags {
            offset,
            flags: h[3],
        });
    }
    let payload_len = word(4);
    let max = max.min(FRAME_PAYLOAD_MAX);
    if payload_len > max {
        return Err(FrameError::TooLarge {
            offset,
            len: payload_len,
            max,
        });
    }
    let mut prefix = [0u8; 12];
    prefix.copy_from_slice(&h[..12]);
    Ok(Some(FrameHeader {
        kind,
        payload_len,
        channel: word(8),
        crc: word(12),
        prefix,
    }))
}

/// Checks a received payload against its header, and its padding (`padding`, the bytes after
/// the payload up to the next frame) for zeros.
pub fn check_payload(
    header: &FrameHeader,
    payload: &[u8],
    padding: &[u8],
    offset: u64,
) -> Result<(), FrameError> {
    if padding.iter().any(|&b| b != 0) {
        return Err(FrameError::BadPadding { offset });
    }
    if cfg!(fuzzing) {
        return Ok(());
    }
    let actual = frame_crc(&header.prefix, payload);
    if actual != header.crc {
        return Err(FrameError::CrcMismatch {
            offset,
            expected: header.crc,
            actual,
        });
    }
    Ok(())
}

/// A whole frame split off a buffer: its header, its payload, and the bytes it took in all.
pub type SplitFrame<'a> = (FrameHeader, &'a [u8], usize);

/// Splits the first complete frame off `buf`: its header, payload and the bytes it takes in
/// all, checked; `Ok(None)` if `buf` does not hold a whole frame yet.
pub fn split_frame(
    buf: &[u8],
    offset: u64,
    max: u32,
) -> Result<Option<SplitFrame<'_>>, FrameError> {
    let Some(header) = decode_header(buf, offset, max)? else {
        return Ok(None);
    };
    let end = FRAME_HEADER_BYTES + header.padded_len();
    let Some(body) = buf.get(FRAME_HEADER_BYTES..end) else {
        return Ok(None);
    };
    let (payload, padding) = body.split_at(header.payload_len as usize);
    check_payload(&header, payload, padding, offset)?;
    Ok(Some((header, payload, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(kind, 3, payload, &mut out);
        out
    }

    #[test]
    fn round_trip() {
        let buf = frame(FrameKind::Records, b"hello");
        assert_eq!(buf.len(), FRAME_HEADER_BYTES + FRAME_ALIGN);
        let h = decode_header(&buf, 0, FRAME_PAYLOAD_MAX).unwrap().unwrap();
        assert_eq!(h.kind, FrameKind::Records);
        assert_eq!(h.payload_len, 5);
        assert_eq!(h.channel, 3);
        let (h2, payload, used) = split_frame(&buf, 0, FRAME_PAYLOAD_MAX).unwrap().unwrap();
        assert_eq!((h2, payload, used), (h, &b"hello"[..], buf.len()));
    }

    #[test]
    fn short_header_waits_for_more() {
        let buf = frame(FrameKind::Control, b"x");
        assert_eq!(
            decode_header(&buf[..FRAME_HEADER_BYTES - 1], 0, FRAME_PAYLOAD_MAX),
            Ok(None)
        );
        assert_eq!(
            split_frame(&buf[..buf.len() - 1], 0, FRAME_PAYLOAD_MAX),
            Ok(None)
        );
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut buf = frame(FrameKind::Records, b"");
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_header(&buf, 7, FRAME_PAYLOAD_MAX),
            Err(FrameError::TooLarge { offset: 7, .. })
        ));
        // A connection's own lower limit applies the same way.
        let buf = frame(FrameKind::Records, &[0; 100]);
        assert!(matches!(
            decode_header(&buf, 0, 99),
            Err(FrameError::TooLarge {
                len: 100,
                max: 99,
                ..
            })
        ));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let buf = frame(FrameKind::Barrier, b"checkpoint 42");
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let detected = match split_frame(&bad, 0, FRAME_PAYLOAD_MAX) {
                    Err(_) => true,
                    // A longer announced length: waits, then mismatches.
                    Ok(None) => true,
                    Ok(Some((h, payload, _))) => {
                        // A shorter length that still checks out would be a miss.
                        h.payload_len as usize != 13 || payload != b"checkpoint 42"
                    }
                };
                assert!(detected, "undetected flip at byte {byte} bit {bit}");
            }
        }
    }
}
