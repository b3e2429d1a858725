//! Tests of the wire codec: round trips of every payload type as properties (encode → frame →
//! validated access → deserialize equals the input), and seeded mutations of valid frames (bit
//! flips, byte changes, truncation, lying lengths, with and without a repaired crc) through
//! [`decode_stream`], which must never panic. By default 200,000 mutations in a debug build
//! (about a second) and 1,000,000 in release; `SLUICE_NET_MUTATIONS=N` sets the count and
//! `SLUICE_NET_SEED=S` the seed.

use proptest::prelude::*;
use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};

use super::*;
use crate::buf::AlignedBuf;
use crate::frame::{FRAME_HEADER_BYTES, FRAME_PAYLOAD_MAX, split_frame};

/// A record with heap fields, options and enums: more for validation to check than plain
/// integers.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Rec {
    key: u64,
    value: i32,
    name: String,
    tags: Vec<u16>,
    flag: Option<bool>,
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        any::<u64>(),
        any::<i32>(),
        ".{0,12}",
        prop::collection::vec(any::<u16>(), 0..5),
        any::<Option<bool>>(),
    )
        .prop_map(|(key, value, name, tags, flag)| Rec {
            key,
            value,
            name,
            tags,
            flag,
        })
}

fn batch<T: std::fmt::Debug + Clone>(
    records: impl Strategy<Value = Vec<T>>,
) -> impl Strategy<Value = (Vec<T>, Vec<i64>)> {
    records.prop_flat_map(|records| {
        let n = records.len();
        let ts = prop_oneof![Just(Vec::new()), prop::collection::vec(any::<i64>(), n..=n)];
        (Just(records), ts)
    })
}

/// Splits the single frame in `buf` and copies its payload into an aligned buffer.
fn payload_of(buf: &[u8], kind: FrameKind, channel: u32) -> AlignedBuf {
    let (h, payload, used) = split_frame(buf, 0, FRAME_PAYLOAD_MAX).unwrap().unwrap();
    assert_eq!((h.kind, h.channel, used), (kind, channel, buf.len()));
    assert_eq!(buf.len() % frame::FRAME_ALIGN, 0);
    let mut out = AlignedBuf::new();
    out.extend_from_slice(payload);
    out
}

fn round_trip_batch<T: WireRecord + Clone + PartialEq + std::fmt::Debug>(
    records: &[T],
    timestamps: &[i64],
) {
    let element = Element::Records {
        records,
        timestamps,
    };
    // After another frame, as in a connection's write queue: offsets must not matter.
    let mut out = Vec::new();
    frame::encode(FrameKind::Control, 0, b"x", &mut out);
    let prefix = out.len();
    let (out, len) = encode_element(7, &element, out).unwrap();
    let payload = payload_of(&out[prefix..], FrameKind::Records, 7);
    assert_eq!(payload.len(), len as usize);
    let archived = access_batch::<T>(&payload).unwrap();
    assert_eq!(archived.records.len(), records.len());
    let (mut r, mut t) = (vec![], vec![]);
    read_batch_into(archived, &mut r, &mut t).unwrap();
    assert_eq!(r, records);
    assert_eq!(t, timestamps);
    let owned: WireBatch<T> = rkyv::deserialize::<_, RkyvError>(archived).unwrap();
    assert_eq!(owned.records, records);
}

proptest! {
    #[test]
    fn record_batches_round_trip(
        (records, timestamps) in batch(prop::collection::vec(rec(), 0..40))
    ) {
        round_trip_batch(&records, &timestamps);
    }

    #[test]
    fn pair_batches_round_trip(
        (records, timestamps) in batch(prop::collection::vec(any::<(u64, u64)>(), 0..300))
    ) {
        round_trip_batch(&records, &timestamps);
    }

    #[test]
    fn control_elements_round_trip(w in any::<i64>(), id in any::<u64>(), ts in any::<u64>(),
                                   idle in any::<bool>()) {
        let status = if idle { WatermarkStatus::Idle } else { WatermarkStatus::Active };
        let barrier = WireBarrier { checkpoint_id: id, timestamp_ms: ts };
        let cases: [(Element<'_, u64>, ControlElement); 4] = [
            (Element::Watermark(w), ControlElement::Watermark(w)),
            (Element::Status(status), ControlElement::Status(status)),
            (Element::Barrier(barrier), ControlElement::Barrier(barrier)),
            (Element::EndOfInput, ControlElement::EndOfInput),
        ];
        for (element, expected) in cases {
            let (buf, _) = encode_element(3, &element, Vec::new()).unwrap();
            let payload = payload_of(&buf, element.kind(), 3);
            prop_assert_eq!(decode_control(element.kind(), &payload).unwrap(), expected);
        }
    }

    #[test]
    fn connection_messages_round_trip(credits in any::<u32>(), window in 1..u32::MAX,
                                      seq in any::<u64>(), reason in ".{0,40}",
                                      nonce in any::<[u8; 32]>(), name in "[a-z]{0,20}") {
        let credit = WireCredit { credits, window };
        let (buf, _) = encode_archive(FrameKind::Credit, 9, &credit, Vec::new()).unwrap();
        prop_assert_eq!(decode_credit(&payload_of(&buf, FrameKind::Credit, 9)).unwrap(), credit);
        let goodbye = Control::Goodbye { reason: reason.clone() };
        let data = Control::Data { run: seq, worker: credits };
        let app = Control::App { bytes: reason.clone().into_bytes() };
        for msg in [Control::Heartbeat { sequence: seq }, goodbye, data, app] {
            let (buf, _) = encode_archive(FrameKind::Control, 0, &msg, Vec::new()).unwrap();
            let payload = payload_of(&buf, FrameKind::Control, 0);
            prop_assert_eq!(decode_control_message(&payload).unwrap(), msg);
        }
        let steps = [
            Handshake::Hello { version: 1, cluster: name.clone(), node: reason.clone(), nonce,
                               buffer_bytes: credits, frame_payload_max: window },
            Handshake::Challenge { node: name.clone(), nonce, proof: nonce, buffer_bytes: 1,
                                   frame_payload_max: 2 },
            Handshake::Response { proof: nonce },
            Handshake::Accepted,
        ];
        for step in steps {
            let (buf, _) = encode_archive(FrameKind::Handshake, 0, &step, Vec::new()).unwrap();
            let payload = payload_of(&buf, FrameKind::Handshake, 0);
            prop_assert_eq!(decode_handshake(&payload).unwrap(), step);
        }
    }
}

#[test]
fn batches_with_a_wrong_number_of_timestamps_are_refused() {
    let batch = WireBatch {
        records: vec![1u64, 2, 3],
        timestamps: vec![5i64],
    };
    let (buf, _) = encode_archive(FrameKind::Records, 1, &batch, Vec::new()).unwrap();
    let payload = payload_of(&buf, FrameKind::Records, 1);
    assert!(matches!(
        access_batch::<u64>(&payload),
        Err(WireError::Timestamps {
            records: 3,
            timestamps: 1
        })
    ));
}

#[test]
fn an_archive_of_another_type_does_not_validate_as_a_batch() {
    let (buf, _) = encode_element::<u64>(1, &Element::Watermark(-1), Vec::new()).unwrap();
    let payload = payload_of(&buf, FrameKind::Watermark, 1);
    assert!(access_batch::<Rec>(&payload).is_err());
    assert!(decode_control(FrameKind::Barrier, &payload).is_err());
    assert!(decode_control(FrameKind::EndOfInput, &payload).is_err());
}

/// Valid frames of every kind, concatenated: the mutation corpus.
fn corpus() -> Vec<Vec<u8>> {
    let recs: Vec<Rec> = (0..20)
        .map(|i| Rec {
            key: i,
            value: -(i as i32),
            name: "ab".repeat(i as usize % 5),
            tags: vec![i as u16; i as usize % 3],
            flag: (i % 3 == 0).then_some(i % 2 == 0),
        })
        .collect();
    let ts: Vec<i64> = (0..20).collect();
    let elements: Vec<Element<'_, Rec>> = vec![
        Element::Records {
            records: &recs,
            timestamps: &ts,
        },
        Element::Records {
            records: &recs[..3],
            timestamps: &[],
        },
        Element::Watermark(42),
        Element::Status(WatermarkStatus::Idle),
        Element::Barrier(WireBarrier {
            checkpoint_id: 7,
            timestamp_ms: 9,
        }),
        Element::EndOfInput,
    ];
    let mut frames: Vec<Vec<u8>> = elements
        .iter()
        .map(|e| encode_element(1, e, Vec::new()).unwrap().0)
        .collect();
    let credit = WireCredit {
        credits: 3,
        window: 8,
    };
    frames.push(
        encode_archive(FrameKind::Credit, 1, &credit, Vec::new())
            .unwrap()
            .0,
    );
    let goodbye = Control::Goodbye {
        reason: "done".into(),
    };
    frames.push(
        encode_archive(FrameKind::Control, 0, &goodbye, Vec::new())
            .unwrap()
            .0,
    );
    let hello = Handshake::Hello {
        version: 1,
        cluster: "c".into(),
        node: "n".into(),
        nonce: [7; 32],
        buffer_bytes: 65536,
        frame_payload_max: 1 << 20,
    };
    frames.push(
        encode_archive(FrameKind::Handshake, 0, &hello, Vec::new())
            .unwrap()
            .0,
    );
    frames
}

/// Recomputes the crc of the frame at the start of `buf`, if its header is readable, so that
/// a mutated payload reaches rkyv's validation.
fn repair_crc(buf: &mut [u8]) {
    if buf.len() < FRAME_HEADER_BYTES {
        return;
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    let Some(payload) = buf.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len) else {
        return;
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[..12]);
    h.update(payload);
    let crc = h.finalize();
    buf[12..16].copy_from_slice(&crc.to_le_bytes());
}

fn mutate(rng: &mut Xoshiro256PlusPlus, frame: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(frame);
    let r = rng.next_u64();
    let pick = |n: usize, x: u64| (x % n.max(1) as u64) as usize;
    match r % 8 {
        0 | 1 => {
            // Flip 1..4 bits anywhere.
            for k in 0..=(r >> 8) % 4 {
                let bit = pick(out.len() * 8, rng.next_u64().wrapping_add(k));
                out[bit / 8] ^= 1 << (bit % 8);
            }
        }
        2 => {
            // Set a payload byte to an interesting value.
            let at = FRAME_HEADER_BYTES + pick(out.len() - FRAME_HEADER_BYTES, rng.next_u64());
            let values = [0u8, 0xFF, 0x7F, 0x80, 1];
            if at < out.len() {
                out[at] = values[pick(values.len(), r >> 16)];
            }
        }
        3 => out.truncate(pick(out.len(), rng.next_u64())),
        4 => {
            // Lie about the length.
            let lies = [
                0u32,
                1,
                15,
                16,
                u32::MAX,
                FRAME_PAYLOAD_MAX,
                FRAME_PAYLOAD_MAX + 1,
            ];
            let lie = lies[pick(lies.len(), r >> 16)];
            out[4..8].copy_from_slice(&lie.to_le_bytes());
        }
        5 => {
            // Overwrite a 4-byte word of the payload with a random one (relative pointers,
            // lengths).
            let at = FRAME_HEADER_BYTES + pick(out.len() - FRAME_HEADER_BYTES, rng.next_u64());
            let word = rng.next_u32().to_le_bytes();
            for (i, b) in word.iter().enumerate() {
                if let Some(x) = out.get_mut(at + i) {
                    *x = *b;
                }
            }
        }
        6 => {
            // Change the kind byte, so one type's archive is read as another's.
            out[2] = 1 + pick(8, r >> 16) as u8;
        }
        _ => {
            // Garbage of random length.
            let n = pick(200, r >> 16);
            out.clear();
            out.extend((0..n).map(|_| rng.next_u32() as u8));
        }
    }
    // Half the time, make the crc agree, so that the payload reaches validation.
    if (r >> 40) % 2 == 0 {
        repair_crc(out);
    }
}

fn mutations() -> u64 {
    std::env::var("SLUICE_NET_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            200_000
        } else {
            1_000_000
        })
}

#[test]
fn seeded_mutations_of_valid_frames_never_panic() {
    let seed = std::env::var("SLUICE_NET_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_u64);
    let n = mutations();
    let corpus = corpus();
    for f in &corpus {
        assert_eq!(decode_stream::<Rec>(f, FRAME_PAYLOAD_MAX), Ok(1));
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut buf = Vec::new();
    let (mut ok, mut refused) = (0u64, 0u64);
    let start = std::time::Instant::now();
    for i in 0..n {
        let frame = &corpus[(i % corpus.len() as u64) as usize];
        mutate(&mut rng, frame, &mut buf);
        // Sometimes behind a valid frame, so the second frame's offset is not 0.
        if i % 5 == 0 {
            let mut two = corpus[0].clone();
            two.extend_from_slice(&buf);
            std::mem::swap(&mut buf, &mut two);
        }
        match decode_stream::<Rec>(&buf, FRAME_PAYLOAD_MAX) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!(
        "{{\"suite\":\"R9-net-mutations\",\"seed\":{seed},\"mutations\":{n},\"accepted\":{ok},\
         \"refused\":{refused},\"panics\":0,\"secs\":{:.1}}}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        refused > n / 4,
        "most mutations must be refused: {refused} of {n}"
    );
}
