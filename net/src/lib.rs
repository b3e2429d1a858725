//! `sluice-net`: what crosses the network between Sluice nodes, and how.
//!
//! - [`frame`]: the frame — a 16-byte header and an rkyv payload padded to 16 bytes.
//! - [`wire`]: the payload types (record batches, watermarks, watermark status, barriers, end
//!   of input, credits, control and handshake messages) and their codec.
//! - [`auth`]: the challenge–response handshake (HMAC-SHA256, shared cluster secret).
//! - [`Listener`], [`connect`]: authenticated connections on glommio's io_uring TCP.
//! - [`Connection`], [`ChannelSender`], [`ChannelReceiver`]: channels multiplexed over a
//!   connection, with credit-based flow control.
//!
//! # Frames
//!
//! Header layout (little-endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 2 | magic `0x534C` ("SL") |
//! | 2 | 1 | kind ([`FrameKind`]) |
//! | 3 | 1 | flags (0; reserved, non-zero is an error) |
//! | 4 | 4 | payload length in bytes (≤ the receiver's limit ≤ [`FRAME_PAYLOAD_MAX`]) |
//! | 8 | 4 | channel (0 for connection-level frames) |
//! | 12 | 4 | crc32 (IEEE) of bytes 0..12 and the payload |
//! | 16 | len | payload: an rkyv archive |
//! | 16 + len | 0..15 | zero padding to a multiple of 16 |
//!
//! Payloads by kind:
//!
//! | kind | byte | payload | channel |
//! | --- | --- | --- | --- |
//! | Records | 1 | [`wire::WireBatch<T>`]: `records: Vec<T>`, `timestamps: Vec<i64>` | data |
//! | Watermark | 2 | `i64` | data |
//! | Barrier | 3 | [`wire::WireBarrier`]: `checkpoint_id: u64`, `timestamp_ms: u64` | data |
//! | EndOfInput | 4 | empty | data |
//! | Control | 5 | [`wire::Control`] (heartbeat, goodbye; the cluster adds its own) | 0 |
//! | Status | 6 | [`wire::WatermarkStatus`] (`Active`, `Idle`) | data |
//! | Credit | 7 | [`wire::WireCredit`]: `credits: u32`, `window: u32` | data |
//! | Handshake | 8 | [`wire::Handshake`] (hello, challenge, response, accepted) | 0 |
//!
//! A receiver checks the length against its limit before it allocates, the crc before it
//! looks at the payload, and reads the payload only through validated `rkyv::access`. Anything
//! invalid is an error on that connection — one `tracing` line, one count — never a panic.
//!
//! # Flow control
//!
//! Flink's credit-based scheme. The receiver of a channel grants credits, each one receive
//! buffer of its `buffer_bytes` (announced in the handshake); a frame costs
//! `max(1, ⌈payload / buffer_bytes⌉)` credits, and a sender sends only while it holds them
//! (a frame costing more than the whole window waits until the sender holds all of it). The
//! receiver returns a record batch's credits when the batch is dropped, a control element's
//! when it is taken. So a slow receiver stops its sender, whose sends wait (cancellably), and
//! the data of a channel held at the receiver never exceeds `credits × buffer_bytes` (or one
//! frame, if larger); the sender side holds at most `out_bytes_max` plus one frame per
//! connection. A peer that sends beyond its credit is closed.
//!
//! # Connections
//!
//! One connection per pair of workers (the sending worker's executor and the receiving
//! worker's), carrying every channel between them, one per edge (and direction): each end
//! belongs to one executor, so connections need no locks, and a job with E edges between W and
//! W' workers opens W × W' connections, not E × W × W'. Channels keep their order; a slow
//! channel does not hold up the others (credits are per channel and frames are decoded as they
//! arrive).
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
mod buf;
mod conn;
mod error;
pub mod frame;
mod listener;
pub mod wire;

pub use auth::ClusterSecret;
pub use buf::{RECV_ALIGN, RecvBuf};
pub use conn::{
    CHANNELS_MAX, CONTROL_QUEUE_BYTES_MAX, CONTROL_QUEUE_MAX, ChannelReceiver, ChannelSender,
    ConnStats, Connection, Received, RecvBatch, unless_cancelled,
};
pub use error::NetError;
pub use frame::{FRAME_ALIGN, FRAME_HEADER_BYTES, FRAME_PAYLOAD_MAX, FrameError, FrameKind};
pub use listener::{HANDSHAKE_PAYLOAD_MAX, Listener, NetConfig, NetStats, connect};
pub use wire::{Element, WatermarkStatus, WireBarrier, WireRecord};
