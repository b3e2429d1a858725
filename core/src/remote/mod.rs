//! Jobs spread over several nodes (issue "networking"): how records cross nodes
//! ([`codec`]), a worker's connections to the workers of other nodes ([`links`]), and one
//! node's part of a job ([`part`]).
//!
//! A job of `W` workers runs as parts on several nodes, each part a contiguous range of the
//! global worker indices; a worker's global index decides its key groups, its source splits
//! and its state, exactly as in a single process. An edge between two workers of the same
//! part stays an in-process channel (no serialization); an edge to a worker of another part
//! is a channel of a `sluice-net` connection between the two workers, with the same elements
//! in the same order (record batches, watermarks, watermark status, barriers, end of input)
//! and credit-based flow control, so backpressure still reaches the sources.

pub mod codec;
pub(crate) mod links;
pub mod part;

pub use codec::{
    CodecSource, RecordCodec, codec_of, combined_codec, decode_batch, either_codec, encode_batch,
    pair_codec, register_codec, register_wire_type,
};
pub use links::REMOTE_CHANNEL_CREDITS;
pub(crate) use links::net_error;
