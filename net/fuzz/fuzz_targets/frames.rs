//! Fuzz target: arbitrary bytes as a stream of frames, decoded as a receiver would — header,
//! length limit, (under `cfg(fuzzing)` no) crc, then each payload by kind with validated rkyv
//! access: record batches of a record with heap fields, watermarks, status, barriers, credits,
//! control and handshake messages. Any panic, abort or sanitizer report is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rkyv::{Archive, Deserialize, Serialize};

/// The record type: integers, a string, a vector and an option, as jobs send them.
#[derive(Archive, Serialize, Deserialize)]
struct Rec {
    key: u64,
    value: i32,
    name: String,
    tags: Vec<u16>,
    flag: Option<bool>,
}

fuzz_target!(|data: &[u8]| {
    let _ = sluice_net::wire::decode_stream::<Rec>(data, sluice_net::FRAME_PAYLOAD_MAX);
    let _ = sluice_net::wire::decode_stream::<(u64, u64)>(data, sluice_net::FRAME_PAYLOAD_MAX);
});
