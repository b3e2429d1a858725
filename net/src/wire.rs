//! Wire types: the rkyv payloads of frames, and how stream elements become frames and back.
//!
//! Every payload is an rkyv 0.8 archive read with validated access (`rkyv::access`), never
//! `access_unchecked`: a payload that does not validate is an error on its connection. The
//! types are deliberately simple — integers, `Vec`s, strings, small enums; no hash maps (rkyv
//! #685) — and `sluice-core` converts its `StreamElement<T>` to and from them.
//!
//! A record batch is sent from borrowed slices ([`Element::Records`]) without building an owned
//! [`WireBatch`] first, and arrives as an [`ArchivedWireBatch`] read in place. A receiver that
//! needs owned records deserializes a whole batch into a reused `Vec<T>` ([`read_batch_into`]):
//! per batch, not per record, and without allocating for records that own no heap memory.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::munge::munge;
use rkyv::rancor::{self, Fallible};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::{Allocator, Positional, Writer};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Deserialize, Place, Serialize};

use crate::frame::{self, FrameKind};

/// The error type of rkyv operations in this crate.
pub type RkyvError = rancor::Error;

/// A record type that can cross the network: rkyv-serializable, validatable and deserializable.
/// Implemented for every type that derives rkyv's `Archive`, `Serialize` and `Deserialize`
/// (with its default `bytecheck` validation).
pub trait WireRecord:
    Sized
    + Archive<
        Archived: for<'a> CheckBytes<HighValidator<'a, RkyvError>>
                      + Deserialize<Self, HighDeserializer<RkyvError>>,
    > + for<'a> Serialize<HighSerializer<PayloadWriter, ArenaHandle<'a>, RkyvError>>
{
}

impl<T> WireRecord for T where
    T: Archive<
            Archived: for<'a> CheckBytes<HighValidator<'a, RkyvError>>
                          + Deserialize<T, HighDeserializer<RkyvError>>,
        > + for<'a> Serialize<HighSerializer<PayloadWriter, ArenaHandle<'a>, RkyvError>>
{
}

/// A batch of records and their event-time timestamps: `timestamps` is empty (no record has
/// one) or exactly as long as `records`, as in `sluice_core::Batch`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireBatch<T> {
    /// The records.
    pub records: Vec<T>,
    /// Their timestamps, or nothing.
    pub timestamps: Vec<i64>,
}

/// A checkpoint barrier.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireBarrier {
    /// The checkpoint's id.
    pub checkpoint_id: u64,
    /// When it was triggered, in ms since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Whether a channel's watermark counts (Flink's `WatermarkStatus`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum WatermarkStatus {
    /// The sender emits records and watermarks.
    Active,
    /// The sender has no data for now.
    Idle,
}

/// Credits the receiver of a channel grants its sender: each credit is one receive buffer of
/// the receiver's `buffer_bytes` (announced in the handshake).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireCredit {
    /// Credits granted now (added to those the sender holds).
    pub credits: u32,
    /// The channel's whole window, in credits: a frame costing more than this may be sent
    /// when the sender holds the whole window.
    pub window: u32,
}

/// A connection-level control message. The cluster's control plane (registration, deployment,
/// checkpoint trigger and acknowledgement) adds its messages here as new variants, appended so
/// that existing discriminants keep their meaning.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Control {
    /// A liveness probe; `sequence` increases per connection.
    Heartbeat {
        /// Sequence number.
        sequence: u64,
    },
    /// The sender closes the connection, and says why.
    Goodbye {
        /// A short reason, for the peer's log.
        reason: String,
    },
    /// The first message on a data connection between two workers of a job run: who is
    /// connecting, so the accepting worker knows which of its peers the connection is, and
    /// whether it belongs to the run it serves.
    Data {
        /// The job run (deployment) the connecting worker belongs to.
        run: u64,
        /// The connecting worker's global index.
        worker: u32,
    },
    /// An application message (the cluster's control plane), encoded by its user and
    /// validated by it when decoded.
    App {
        /// The message's bytes.
        bytes: Vec<u8>,
    },
}

/// One step of the handshake (see `auth`). Strings are short: the handshake's frames are at
/// most `HANDSHAKE_PAYLOAD_MAX` bytes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Handshake {
    /// Client → server: who is asking, and the client's fresh nonce.
    Hello {
        /// Protocol version.
        version: u32,
        /// The cluster the client believes it joins.
        cluster: String,
        /// The client node's name, for logs.
        node: String,
        /// 32 fresh random bytes.
        nonce: [u8; 32],
        /// The client's receive buffer size (a credit's worth of bytes).
        buffer_bytes: u32,
        /// The largest payload the client accepts.
        frame_payload_max: u32,
    },
    /// Server → client: the server's fresh nonce and its proof that it knows the secret.
    Challenge {
        /// The server node's name, for logs.
        node: String,
        /// 32 fresh random bytes.
        nonce: [u8; 32],
        /// HMAC-SHA256 of the server's transcript.
        proof: [u8; 32],
        /// The server's receive buffer size.
        buffer_bytes: u32,
        /// The largest payload the server accepts.
        frame_payload_max: u32,
    },
    /// Client → server: the client's proof.
    Response {
        /// HMAC-SHA256 of the client's transcript.
        proof: [u8; 32],
    },
    /// Server → client: authenticated; stream elements may flow.
    Accepted,
}

/// A stream element to send, borrowing its records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Element<'a, T> {
    /// Records and their timestamps (empty, or one per record).
    Records {
        /// The records.
        records: &'a [T],
        /// Their timestamps, or nothing.
        timestamps: &'a [i64],
    },
    /// A watermark.
    Watermark(i64),
    /// A watermark status change.
    Status(WatermarkStatus),
    /// A checkpoint barrier.
    Barrier(WireBarrier),
    /// The end of the channel's input.
    EndOfInput,
}

impl<T> Element<'_, T> {
    /// The frame kind carrying this element.
    pub fn kind(&self) -> FrameKind {
        match self {
            Element::Records { .. } => FrameKind::Records,
            Element::Watermark(_) => FrameKind::Watermark,
            Element::Status(_) => FrameKind::Status,
            Element::Barrier(_) => FrameKind::Barrier,
            Element::EndOfInput => FrameKind::EndOfInput,
        }
    }
}

/// Why a payload is not a valid element.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// rkyv validation failed.
    #[error("{kind:?} payload of {len} bytes does not validate: {source}")]
    Invalid {
        /// The frame kind.
        kind: FrameKind,
        /// Payload length.
        len: usize,
        /// rkyv's reason.
        source: RkyvError,
    },
    /// A batch whose timestamps are neither empty nor one per record.
    #[error("batch of {records} records carries {timestamps} timestamps")]
    Timestamps {
        /// Records in the batch.
        records: usize,
        /// Timestamps in the batch.
        timestamps: usize,
    },
    /// A payload where none belongs, or a frame kind that is not an element.
    #[error("{kind:?} frame with a {len}-byte payload is not a stream element")]
    Unexpected {
        /// The frame kind.
        kind: FrameKind,
        /// Payload length.
        len: usize,
    },
}

/// An rkyv writer that appends to a `Vec<u8>` and counts positions from where the payload
/// starts, so an archive written after other frames is laid out as if it stood alone.
#[derive(Debug, Default)]
pub struct PayloadWriter {
    buf: Vec<u8>,
    base: usize,
}

impl PayloadWriter {
    /// A writer appending to `buf`, the payload starting at its current end.
    pub fn new(buf: Vec<u8>) -> Self {
        let base = buf.len();
        PayloadWriter { buf, base }
    }
    /// The buffer back.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

impl Positional for PayloadWriter {
    #[inline]
    fn pos(&self) -> usize {
        self.buf.len() - self.base
    }
}

impl<E> Writer<E> for PayloadWriter {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

/// A batch borrowed from its owner, archived exactly as a [`WireBatch`] is.
struct BatchRef<'a, T> {
    records: &'a [T],
    timestamps: &'a [i64],
}

impl<T: Archive> Archive for BatchRef<'_, T> {
    type Archived = ArchivedWireBatch<T>;
    type Resolver = (VecResolver, VecResolver);

    fn resolve(&self, (records_r, timestamps_r): Self::Resolver, out: Place<Self::Archived>) {
        munge!(let ArchivedWireBatch { records, timestamps } = out);
        ArchivedVec::resolve_from_len(self.records.len(), records_r, records);
        ArchivedVec::resolve_from_len(self.timestamps.len(), timestamps_r, timestamps);
    }
}

impl<T, S> Serialize<S> for BatchRef<'_, T>
where
    T: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok((
            ArchivedVec::serialize_from_slice(self.records, serializer)?,
            ArchivedVec::serialize_from_slice(self.timestamps, serializer)?,
        ))
    }
}

fn archive_into<V>(value: &V, out: Vec<u8>) -> Result<Vec<u8>, RkyvError>
where
    V: for<'a> Serialize<HighSerializer<PayloadWriter, ArenaHandle<'a>, RkyvError>>,
{
    rkyv::api::high::to_bytes_in(value, PayloadWriter::new(out)).map(PayloadWriter::into_inner)
}

/// Appends `value` as a frame of `kind` on `channel` to `out`, whose length must be a multiple
/// of [`frame::FRAME_ALIGN`]. Returns the buffer and the payload's length.
pub fn encode_archive<V>(
    kind: FrameKind,
    channel: u32,
    value: &V,
    mut out: Vec<u8>,
) -> Result<(Vec<u8>, u32), RkyvError>
where
    V: for<'a> Serialize<HighSerializer<PayloadWriter, ArenaHandle<'a>, RkyvError>>,
{
    let start = frame::begin(&mut out);
    let mut out = archive_into(value, out)?;
    let len = frame::finish(&mut out, start, kind, channel);
    Ok((out, len))
}

/// Appends `element` as a frame on `channel` to `out` (see [`encode_archive`]).
pub fn encode_element<T: WireRecord>(
    channel: u32,
    element: &Element<'_, T>,
    out: Vec<u8>,
) -> Result<(Vec<u8>, u32), RkyvError> {
    let kind = element.kind();
    match *element {
        Element::Records {
            records,
            timestamps,
        } => {
            assert!(
                timestamps.is_empty() || timestamps.len() == records.len(),
                "records={} timestamps={}",
                records.len(),
                timestamps.len()
            );
            encode_archive(
                kind,
                channel,
                &BatchRef {
                    records,
                    timestamps,
                },
                out,
            )
        }
        Element::Watermark(w) => encode_archive(kind, channel, &w, out),
        Element::Status(s) => encode_archive(kind, channel, &s, out),
        Element::Barrier(b) => encode_archive(kind, channel, &b, out),
        Element::EndOfInput => {
            let mut out = out;
            let start = frame::begin(&mut out);
            let len = frame::finish(&mut out, start, kind, channel);
            Ok((out, len))
        }
    }
}

/// A control element decoded from its payload (records stay in their buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlElement {
    /// A watermark.
    Watermark(i64),
    /// A watermark status change.
    Status(WatermarkStatus),
    /// A checkpoint barrier.
    Barrier(WireBarrier),
    /// The end of input.
    EndOfInput,
}

fn invalid(kind: FrameKind, len: usize) -> impl FnOnce(RkyvError) -> WireError {
    move |source| WireError::Invalid { kind, len, source }
}

/// Decodes the payload of an element frame other than [`FrameKind::Records`].
pub fn decode_control(kind: FrameKind, payload: &[u8]) -> Result<ControlElement, WireError> {
    let len = payload.len();
    Ok(match kind {
        FrameKind::Watermark => {
            let w = rkyv::access::<rkyv::Archived<i64>, RkyvError>(payload)
                .map_err(invalid(kind, len))?;
            ControlElement::Watermark(w.to_native())
        }
        FrameKind::Status => {
            let s = rkyv::access::<ArchivedWatermarkStatus, RkyvError>(payload)
                .map_err(invalid(kind, len))?;
            ControlElement::Status(match s {
                ArchivedWatermarkStatus::Active => WatermarkStatus::Active,
                ArchivedWatermarkStatus::Idle => WatermarkStatus::Idle,
            })
        }
        FrameKind::Barrier => {
            let b = rkyv::access::<ArchivedWireBarrier, RkyvError>(payload)
                .map_err(invalid(kind, len))?;
            ControlElement::Barrier(WireBarrier {
                checkpoint_id: b.checkpoint_id.to_native(),
                timestamp_ms: b.timestamp_ms.to_native(),
            })
        }
        FrameKind::EndOfInput if payload.is_empty() => ControlElement::EndOfInput,
        _ => return Err(WireError::Unexpected { kind, len }),
    })
}

/// Validates a record batch payload in place: the archive, and timestamps empty or one per
/// record.
pub fn access_batch<T: WireRecord>(payload: &[u8]) -> Result<&ArchivedWireBatch<T>, WireError> {
    let kind = FrameKind::Records;
    let batch = rkyv::access::<ArchivedWireBatch<T>, RkyvError>(payload)
        .map_err(invalid(kind, payload.len()))?;
    let (records, timestamps) = (batch.records.len(), batch.timestamps.len());
    if timestamps != 0 && timestamps != records {
        return Err(WireError::Timestamps {
            records,
            timestamps,
        });
    }
    Ok(batch)
}

/// Deserializes a validated batch into reused vectors (cleared first): one pass per batch, no
/// allocation once the vectors have grown to a batch's size, unless `T` owns heap memory.
pub fn read_batch_into<T: WireRecord>(
    batch: &ArchivedWireBatch<T>,
    records: &mut Vec<T>,
    timestamps: &mut Vec<i64>,
) -> Result<(), RkyvError> {
    records.clear();
    timestamps.clear();
    records.reserve(batch.records.len());
    for r in batch.records.iter() {
        records.push(rkyv::deserialize::<T, RkyvError>(r)?);
    }
    timestamps.extend(batch.timestamps.iter().map(|t| t.to_native()));
    Ok(())
}

/// Decodes a [`Control`] payload.
pub fn decode_control_message(payload: &[u8]) -> Result<Control, WireError> {
    let kind = FrameKind::Control;
    let c = rkyv::access::<ArchivedControl, RkyvError>(payload)
        .map_err(invalid(kind, payload.len()))?;
    rkyv::deserialize::<Control, RkyvError>(c).map_err(invalid(kind, payload.len()))
}

/// Decodes a [`WireCredit`] payload.
pub fn decode_credit(payload: &[u8]) -> Result<WireCredit, WireError> {
    let c = rkyv::access::<ArchivedWireCredit, RkyvError>(payload)
        .map_err(invalid(FrameKind::Credit, payload.len()))?;
    Ok(WireCredit {
        credits: c.credits.to_native(),
        window: c.window.to_native(),
    })
}

/// Decodes a [`Handshake`] payload.
pub fn decode_handshake(payload: &[u8]) -> Result<Handshake, WireError> {
    let kind = FrameKind::Handshake;
    let h = rkyv::access::<ArchivedHandshake, RkyvError>(payload)
        .map_err(invalid(kind, payload.len()))?;
    rkyv::deserialize::<Handshake, RkyvError>(h).map_err(invalid(kind, payload.len()))
}

/// Decodes every frame in `bytes` as a receiver would — header and limit, crc (skipped under
/// `cfg(fuzzing)`), payload by kind with validated access, record batches deserialized as
/// `T` — and returns how many frames were whole and valid, or the first error. For the fuzz
/// target and the mutation tests: it must return, never panic, whatever `bytes` holds.
pub fn decode_stream<T: WireRecord>(bytes: &[u8], max: u32) -> Result<usize, String> {
    // Network bytes arrive in aligned buffers; so do these.
    let mut aligned = crate::buf::AlignedBuf::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let (mut at, mut frames) = (0usize, 0usize);
    let (mut records, mut timestamps) = (Vec::new(), Vec::new());
    while at < aligned.len() {
        let Some((h, payload, used)) =
            frame::split_frame(&aligned[at..], at as u64, max).map_err(|e| e.to_string())?
        else {
            return Ok(frames);
        };
        match h.kind {
            FrameKind::Records => {
                let batch = access_batch::<T>(payload).map_err(|e| e.to_string())?;
                read_batch_into(batch, &mut records, &mut timestamps).map_err(|e| e.to_string())?;
            }
            FrameKind::Credit => {
                decode_credit(payload).map_err(|e| e.to_string())?;
            }
            FrameKind::Control => {
                decode_control_message(payload).map_err(|e| e.to_string())?;
            }
            FrameKind::Handshake => {
                decode_handshake(payload).map_err(|e| e.to_string())?;
            }
            kind => {
                decode_control(kind, payload).map_err(|e| e.to_string())?;
            }
        }
        at += used;
        frames += 1;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests;
