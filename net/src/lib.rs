//! `sluice-net`: what crosses the network between Sluice nodes.
//!
//! This first part is the frame: a fixed 12-byte header (kind, flags, payload length, crc32 of
//! the header's first 8 bytes and the payload) followed by the payload (an rkyv archive once
//! the transport lands). A receiver
//! checks the length against [`FRAME_PAYLOAD_MAX`] *before* it allocates anything and the crc
//! before it looks at the payload, so a corrupt or hostile frame is an error on its
//! connection, never a panic or an oversized allocation. The io_uring transport, credit-based
//! flow control and the control plane build on this (see ARCHITECTURE.md).
//!
//! Header layout (little-endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 2 | magic `0x534C` ("SL") |
//! | 2 | 1 | kind ([`FrameKind`]) |
//! | 3 | 1 | flags (0; reserved) |
//! | 4 | 4 | payload length in bytes |
//! | 8 | 4 | crc32 (IEEE) of bytes 0..8 and the payload |
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use bytes::{BufMut, BytesMut};

/// Bytes in a frame header.
pub const FRAME_HEADER_BYTES: usize = 12;
/// The largest payload a peer may announce: 64 MiB. A larger length closes the connection.
pub const FRAME_PAYLOAD_MAX: u32 = 64 << 20;
const MAGIC: u16 = 0x534C;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A batch of records.
    Records = 1,
    /// A watermark.
    Watermark = 2,
    /// A checkpoint barrier.
    Barrier = 3,
    /// The sender's input ended.
    EndOfInput = 4,
    /// A control-plane message.
    Control = 5,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<FrameKind> {
        Some(match b {
            1 => FrameKind::Records,
            2 => FrameKind::Watermark,
            3 => FrameKind::Barrier,
            4 => FrameKind::EndOfInput,
            5 => FrameKind::Control,
            _ => return None,
        })
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the payload is.
    pub kind: FrameKind,
    /// Payload length in bytes, at most [`FRAME_PAYLOAD_MAX`].
    pub payload_len: u32,
    /// crc32 of the header's first 8 bytes and the payload.
    pub crc: u32,
    prefix: [u8; 8],
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
}

/// Appends a frame of `kind` with `payload` to `out`.
pub fn encode(kind: FrameKind, payload: &[u8], out: &mut BytesMut) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    assert!(
        len <= FRAME_PAYLOAD_MAX,
        "payload of {len} bytes exceeds {FRAME_PAYLOAD_MAX}"
    );
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    let start = out.len();
    out.put_u16_le(MAGIC);
    out.put_u8(kind as u8);
    out.put_u8(0);
    out.put_u32_le(len);
    let crc = frame_crc(&out[start..start + 8], payload);
    out.put_u32_le(crc);
    out.put_slice(payload);
}

/// Decodes the header at the start of `buf`: `Ok(None)` when fewer than
/// [`FRAME_HEADER_BYTES`] are there yet. `offset` is the header's position in the stream,
/// for error messages.
pub fn decode_header(buf: &[u8], offset: u64) -> Result<Option<FrameHeader>, FrameError> {
    let Some(h) = buf.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    let magic = u16::from_le_bytes([h[0], h[1]]);
    if magic != MAGIC {
        return Err(FrameError::BadMagic {
            offset,
            found: magic,
        });
    }
    let kind = FrameKind::from_u8(h[2]).ok_or(FrameError::UnknownKind { offset, kind: h[2] })?;
    let payload_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if payload_len > FRAME_PAYLOAD_MAX {
        return Err(FrameError::TooLarge {
            offset,
            len: payload_len,
            max: FRAME_PAYLOAD_MAX,
        });
    }
    let crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let prefix = [h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]];
    Ok(Some(FrameHeader {
        kind,
        payload_len,
        crc,
        prefix,
    }))
}

/// Checks a received payload against its header.
pub fn check_payload(header: &FrameHeader, payload: &[u8], offset: u64) -> Result<(), FrameError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        encode(kind, payload, &mut out);
        out
    }

    #[test]
    fn round_trip() {
        let buf = frame(FrameKind::Records, b"hello");
        let h = decode_header(&buf, 0).unwrap().unwrap();
        assert_eq!(h.kind, FrameKind::Records);
        assert_eq!(h.payload_len, 5);
        check_payload(&h, &buf[FRAME_HEADER_BYTES..], 0).unwrap();
    }

    #[test]
    fn short_header_waits_for_more() {
        let buf = frame(FrameKind::Control, b"x");
        assert_eq!(decode_header(&buf[..FRAME_HEADER_BYTES - 1], 0), Ok(None));
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut buf = frame(FrameKind::Records, b"");
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_header(&buf, 7),
            Err(FrameError::TooLarge { offset: 7, .. })
        ));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let buf = frame(FrameKind::Barrier, b"checkpoint 42");
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let detected = match decode_header(&bad, 0) {
                    Err(_) => true,
                    Ok(Some(h)) => {
                        let end = FRAME_HEADER_BYTES + h.payload_len as usize;
                        match bad.get(FRAME_HEADER_BYTES..end) {
                            Some(p) => check_payload(&h, p, 0).is_err(),
                            None => true, // a longer announced length: waits, then mismatches
                        }
                    }
                    Ok(None) => true,
                };
                assert!(detected, "undetected flip at byte {byte} bit {bit}");
            }
        }
    }
}
