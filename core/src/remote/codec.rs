//! How records cross nodes: a [`RecordCodec`] per edge, found when a job runs distributed.
//!
//! Records move between workers of one process by ownership, never serialized; only an edge
//! between workers on different nodes needs its records as bytes. So the record types of a
//! job carry no serialization bound in the API. Instead each edge knows how to *find* its
//! codec ([`CodecSource`]), and the distributed runtime asks for it only for edges that
//! have a remote end: a single-process job never touches a codec.
//!
//! Codecs come from a process-wide registry keyed by type: [`register_wire_type`] adds the
//! rkyv codec of a type that derives rkyv's `Archive`, `Serialize` and `Deserialize` (the
//! same bound as keyed state, [`StateCodec`]). The API registers what its bounds already
//! prove (every key type, the values of keyed aggregations); a job registers the record types
//! it moves through other exchanges. Composite records the API builds itself — `(key,
//! value)` pairs, window partials ([`Combined`]), join sides ([`Either`]) — get composite
//! codecs made of their parts' codecs ([`pair_codec`], [`combined_codec`], [`either_codec`]).
//! Every node runs the same binary and builds the same job, so every node registers the same
//! types.
//!
//! # Bytes
//!
//! A record frame's payload (offsets relative to it; it starts 16-aligned):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | records `n`, u32 LE |
//! | 4 | 4 | flags: bit 0 set when timestamps follow |
//! | 8 | 8 | zero |
//! | 16 | … | with timestamps: a section of `n` i64 LE |
//! | … | … | a section: the records, as the codec lays them out |
//!
//! A *section* is a 16-byte header (body length as u64 LE, 8 zero bytes), the body, and zero
//! padding to 16, so every body starts 16-aligned. An rkyv codec's body is the archive of a
//! `Vec<T>`, read with validated `rkyv::access`; a composite's body is its parts' sections.
//! Every length is checked before it is used; bytes that do not decode are an error on that
//! channel, never a panic.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::FastMap;
use crate::element::{Batch, Timestamp};
use crate::error::{Error, Result};
use crate::join::Either;
use crate::state::StateCodec;
use crate::window::Combined;

/// Bytes of a section header, and the alignment of every section.
const SECTION_ALIGN: usize = 16;
/// Bytes of the payload header.
const PAYLOAD_HEADER_BYTES: usize = 16;
/// Records in one frame at most: a count above it is corrupt.
const RECORDS_MAX: usize = 1 << 20;

/// Encodes and decodes a batch of records of one type (see the module's byte layout).
pub trait RecordCodec<T>: Send + Sync + 'static {
    /// Appends one section holding `records` (consumed) to `out`, whose length is a multiple
    /// of 16.
    fn encode(&self, records: Vec<T>, out: &mut Vec<u8>) -> std::result::Result<(), String>;
    /// Appends the records of a section's body (16-aligned) to `out`.
    fn decode(&self, body: &[u8], out: &mut Vec<T>) -> std::result::Result<(), String>;
}

/// Where an edge finds its codec when it has a remote end: usually the registry.
pub type CodecSource<T> = Arc<dyn Fn() -> Result<Arc<dyn RecordCodec<T>>> + Send + Sync>;

type Registry = Mutex<FastMap<TypeId, Box<dyn Any + Send + Sync>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(FastMap::default()))
}

/// Lets records of type `T` cross nodes, as rkyv archives: call it for every record type a
/// job moves through an exchange that the API cannot prove serializable itself (keys and the
/// values of keyed aggregations are registered by the API). Idempotent; cheap.
///
/// ```
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone)]
/// struct Click { user: u64, page: String }
/// sluice_core::remote::register_wire_type::<Click>();
/// assert!(sluice_core::remote::codec_of::<Click>()().is_ok());
/// ```
pub fn register_wire_type<T: StateCodec + Send>() {
    let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
    map.entry(TypeId::of::<T>()).or_insert_with(|| {
        let codec: Arc<dyn RecordCodec<T>> = Arc::new(RkyvCodec::<T>(PhantomData));
        Box::new(codec)
    });
}

/// Registers a codec of your own for `T` (replacing any registered before).
pub fn register_codec<T: 'static>(codec: Arc<dyn RecordCodec<T>>) {
    let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
    map.insert(TypeId::of::<T>(), Box::new(codec));
}

fn lookup<T: 'static>() -> Result<Arc<dyn RecordCodec<T>>> {
    let map = registry().lock().unwrap_or_else(|e| e.into_inner());
    map.get(&TypeId::of::<T>())
        .and_then(|c| c.downcast_ref::<Arc<dyn RecordCodec<T>>>())
        .cloned()
        .ok_or_else(|| {
            Error::Config(format!(
                "records of type `{}` cross nodes, but no wire codec is registered for them: \
                 derive rkyv's Archive, Serialize and Deserialize for the type and call \
                 sluice::register_wire_type::<{}>() before building the job",
                std::any::type_name::<T>(),
                short_type_name::<T>()
            ))
        })
}

fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    // `a::b::C<d::E>` → `C<E>`: enough to paste into code that imports the type.
    let mut out = String::new();
    let mut word = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            out.push_str(word.rsplit("::").next().unwrap_or(&word));
            word.clear();
            out.push(c);
        }
    }
    out.push_str(word.rsplit("::").next().unwrap_or(&word));
    out
}

/// The registry's codec for `T`, looked up when asked.
pub fn codec_of<T: 'static>() -> CodecSource<T> {
    Arc::new(lookup::<T>)
}

/// The codec of `(K, V)` pairs from its parts' codecs.
pub fn pair_codec<K: 'static, V: 'static>(
    k: CodecSource<K>,
    v: CodecSource<V>,
) -> CodecSource<(K, V)> {
    Arc::new(move || {
        let codec: Arc<dyn RecordCodec<(K, V)>> = Arc::new(PairCodec(k()?, v()?));
        Ok(codec)
    })
}

/// The codec of window partials ([`Combined`]) from the codecs of records and accumulators.
pub fn combined_codec<T: 'static, A: 'static>(
    t: CodecSource<T>,
    a: CodecSource<A>,
) -> CodecSource<Combined<T, A>> {
    Arc::new(move || {
        let codec: Arc<dyn RecordCodec<Combined<T, A>>> = Arc::new(CombinedCodec(t()?, a()?));
        Ok(codec)
    })
}

/// The codec of join inputs ([`Either`]) from the codecs of both sides.
pub fn either_codec<A: 'static, B: 'static>(
    a: CodecSource<A>,
    b: CodecSource<B>,
) -> CodecSource<Either<A, B>> {
    Arc::new(move || {
        let codec: Arc<dyn RecordCodec<Either<A, B>>> = Arc::new(EitherCodec(a()?, b()?));
        Ok(codec)
    })
}

/// Starts a section at the end of `out`; returns where its header is.
fn begin_section(out: &mut Vec<u8>) -> usize {
    debug_assert!(out.len() % SECTION_ALIGN == 0, "len={}", out.len());
    let at = out.len();
    out.resize(at + SECTION_ALIGN, 0);
    at
}

/// Ends the section whose header is at `at`: writes its length, pads it.
fn end_section(out: &mut Vec<u8>, at: usize) {
    let len = (out.len() - at - SECTION_ALIGN) as u64;
    out[at..at + 8].copy_from_slice(&len.to_le_bytes());
    let padded = out.len().next_multiple_of(SECTION_ALIGN);
    out.resize(padded, 0);
}

/// Splits the section at the start of `bytes`: its body, and what follows it.
fn split_section(bytes: &[u8]) -> std::result::Result<(&[u8], &[u8]), String> {
    let header: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("a section header in {} bytes", bytes.len()))?;
    if bytes.len() < SECTION_ALIGN {
        return Err(format!("a section header in {} bytes", bytes.len()));
    }
    let len = u64::from_le_bytes(header);
    let rest = &bytes[SECTION_ALIGN..];
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= rest.len())
        .ok_or_else(|| format!("a section of {len} bytes in {} bytes", rest.len()))?;
    let padded = len.next_multiple_of(SECTION_ALIGN).min(rest.len());
    Ok((&rest[..len], &rest[padded..]))
}

fn section_with(out: &mut Vec<u8>, body: &[u8]) {
    let at = begin_section(out);
    out.extend_from_slice(body);
    end_section(out, at);
}

/// Encodes a batch as a record frame's payload, appended to `out` (whose length is a
/// multiple of 16).
pub fn encode_batch<T: 'static>(
    codec: &dyn RecordCodec<T>,
    batch: Batch<T>,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let (records, timestamps) = batch.into_parts();
    let n = u32::try_from(records.len()).map_err(|_| "too many records".to_owned())?;
    let flags: u32 = u32::from(!timestamps.is_empty());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    if !timestamps.is_empty() {
        let at = begin_section(out);
        for ts in &timestamps {
            out.extend_from_slice(&ts.to_le_bytes());
        }
        end_section(out, at);
    }
    codec.encode(records, out)
}

/// Decodes a record frame's payload into `batch` (emptied first, its buffers reused).
pub fn decode_batch<T: 'static>(
    codec: &dyn RecordCodec<T>,
    payload: &[u8],
    batch: &mut Batch<T>,
) -> std::result::Result<(), String> {
    let header = payload
        .get(..PAYLOAD_HEADER_BYTES)
        .ok_or_else(|| format!("a record payload of {} bytes", payload.len()))?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (n, flags) = (word(0) as usize, word(4));
    if n > RECORDS_MAX || flags > 1 || header[8..].iter().any(|&b| b != 0) {
        return Err(format!(
            "a record payload header of {n} records, flags {flags:#x}"
        ));
    }
    let mut rest = &payload[PAYLOAD_HEADER_BYTES..];
    let (mut records, mut timestamps) = std::mem::take(batch).into_parts();
    records.clear();
    timestamps.clear();
    if flags & 1 == 1 {
        let (body, after) = split_section(rest)?;
        if body.len() != n * 8 {
            return Err(format!("{} timestamp bytes for {n} records", body.len()));
        }
        timestamps.extend(
            body.chunks_exact(8)
                .map(|c| Timestamp::from_le_bytes(c.try_into().unwrap_or_default())),
        );
        rest = after;
    }
    let (body, after) = split_section(rest)?;
    if !after.is_empty() {
        return Err(format!("{} bytes after the records", after.len()));
    }
    codec.decode(body, &mut records)?;
    if records.len() != n {
        return Err(format!(
            "{} records where the header says {n}",
            records.len()
        ));
    }
    *batch = Batch::from_parts(records, timestamps)
        .ok_or_else(|| "timestamps do not match the records".to_owned())?;
    Ok(())
}

thread_local! {
    /// The rkyv codecs' serialization buffer, reused batch after batch.
    static SCRATCH: RefCell<AlignedVec<16>> = RefCell::new(AlignedVec::new());
}

/// rkyv archives of `Vec<T>`.
struct RkyvCodec<T>(PhantomData<fn() -> T>);

impl<T: StateCodec + Send> RecordCodec<T> for RkyvCodec<T> {
    fn encode(&self, records: Vec<T>, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        SCRATCH.with(|scratch| {
            let mut buf = std::mem::take(&mut *scratch.borrow_mut());
            buf.clear();
            let result = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&records, buf);
            match result {
                Ok(buf) => {
                    section_with(out, &buf);
                    *scratch.borrow_mut() = buf;
                    Ok(())
                }
                Err(e) => Err(format!("serialize {}: {e}", std::any::type_name::<T>())),
            }
        })
    }

    fn decode(&self, body: &[u8], out: &mut Vec<T>) -> std::result::Result<(), String> {
        let archived = rkyv::access::<rkyv::Archived<Vec<T>>, rancor::Error>(body)
            .map_err(|e| format!("records do not validate: {e}"))?;
        out.reserve(archived.len());
        for r in archived.iter() {
            let record = rkyv::deserialize::<T, rancor::Error>(r)
                .map_err(|e| format!("records do not deserialize: {e}"))?;
            out.push(record);
        }
        Ok(())
    }
}

/// `(K, V)` as a section of keys and a section of values.
struct PairCodec<K, V>(Arc<dyn RecordCodec<K>>, Arc<dyn RecordCodec<V>>);

impl<K: 'static, V: 'static> RecordCodec<(K, V)> for PairCodec<K, V> {
    fn encode(&self, records: Vec<(K, V)>, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        let (ks, vs): (Vec<K>, Vec<V>) = records.into_iter().unzip();
        let at = begin_section(out);
        self.0.encode(ks, out)?;
        self.1.encode(vs, out)?;
        end_section(out, at);
        Ok(())
    }

    fn decode(&self, body: &[u8], out: &mut Vec<(K, V)>) -> std::result::Result<(), String> {
        let (keys, rest) = split_section(body)?;
        let (values, rest) = split_section(rest)?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after a pair's values", rest.len()));
        }
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        self.0.decode(keys, &mut ks)?;
        self.1.decode(values, &mut vs)?;
        if ks.len() != vs.len() {
            return Err(format!("{} keys for {} values", ks.len(), vs.len()));
        }
        out.extend(ks.into_iter().zip(vs));
        Ok(())
    }
}

/// Two-variant records as a section of tags (one byte each, 0 or 1) and a section per
/// variant.
fn encode_tagged<A: 'static, B: 'static>(
    tags: &[u8],
    a: (&dyn RecordCodec<A>, Vec<A>),
    b: (&dyn RecordCodec<B>, Vec<B>),
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let at = begin_section(out);
    section_with(out, tags);
    a.0.encode(a.1, out)?;
    b.0.encode(b.1, out)?;
    end_section(out, at);
    Ok(())
}

/// A tagged batch decoded: the tags, and each variant's records.
type Tagged<'a, A, B> = (&'a [u8], Vec<A>, Vec<B>);

fn decode_tagged<'a, A: 'static, B: 'static>(
    body: &'a [u8],
    a: &dyn RecordCodec<A>,
    b: &dyn RecordCodec<B>,
) -> std::result::Result<Tagged<'a, A, B>, String> {
    let (tags, rest) = split_section(body)?;
    let (a_body, rest) = split_section(rest)?;
    let (b_body, rest) = split_section(rest)?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after a tagged batch", rest.len()));
    }
    let (mut av, mut bv) = (Vec::new(), Vec::new());
    a.decode(a_body, &mut av)?;
    b.decode(b_body, &mut bv)?;
    let ones = tags.iter().filter(|&&t| t == 1).count();
    if tags.iter().any(|&t| t > 1) || ones != bv.len() || tags.len() - ones != av.len() {
        return Err(format!(
            "{} tags for {} and {} records",
            tags.len(),
            av.len(),
            bv.len()
        ));
    }
    Ok((tags, av, bv))
}

/// [`Combined`]: a section of tags (one byte each: 0 a record, 1 a slice's partial, 2 a
/// partial session), a section of the records, a section of the accumulators (both kinds of
/// partial, in order), and a section of the partial sessions' windows (start and end, i64 LE).
struct CombinedCodec<T, A>(Arc<dyn RecordCodec<T>>, Arc<dyn RecordCodec<A>>);

impl<T: 'static, A: 'static> RecordCodec<Combined<T, A>> for CombinedCodec<T, A> {
    fn encode(
        &self,
        records: Vec<Combined<T, A>>,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        let (mut tags, mut raws, mut accs) = (Vec::new(), Vec::new(), Vec::new());
        let mut windows = Vec::new();
        for r in records {
            match r {
                Combined::Raw(t) => {
                    tags.push(0);
                    raws.push(t);
                }
                Combined::Partial(a) => {
                    tags.push(1);
                    accs.push(a);
                }
                Combined::Session(w, a) => {
                    tags.push(2);
                    accs.push(a);
                    windows.extend_from_slice(&w.start.to_le_bytes());
                    windows.extend_from_slice(&w.end.to_le_bytes());
                }
            }
        }
        let at = begin_section(out);
        section_with(out, &tags);
        self.0.encode(raws, out)?;
        self.1.encode(accs, out)?;
        section_with(out, &windows);
        end_section(out, at);
        Ok(())
    }

    fn decode(
        &self,
        body: &[u8],
        out: &mut Vec<Combined<T, A>>,
    ) -> std::result::Result<(), String> {
        let (tags, rest) = split_section(body)?;
        let (raw_body, rest) = split_section(rest)?;
        let (acc_body, rest) = split_section(rest)?;
        let (window_body, rest) = split_section(rest)?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after window partials", rest.len()));
        }
        let (mut raws, mut accs) = (Vec::new(), Vec::new());
        self.0.decode(raw_body, &mut raws)?;
        self.1.decode(acc_body, &mut accs)?;
        let count = |tag: u8| tags.iter().filter(|&&t| t == tag).count();
        let sessions = count(2);
        if tags.iter().any(|&t| t > 2)
            || count(0) != raws.len()
            || count(1) + sessions != accs.len()
            || sessions * 16 != window_body.len()
        {
            return Err(format!(
                "{} tags for {} records, {} accumulators and {} bytes of windows",
                tags.len(),
                raws.len(),
                accs.len(),
                window_body.len()
            ));
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&window_body[i * 8..i * 8 + 8]);
            i64::from_le_bytes(b)
        };
        let (mut raws, mut accs) = (raws.into_iter(), accs.into_iter());
        let mut next_window = 0;
        for &t in tags {
            let next = match t {
                0 => raws.next().map(Combined::Raw),
                1 => accs.next().map(Combined::Partial),
                _ => {
                    let (start, end) = (word(2 * next_window), word(2 * next_window + 1));
                    next_window += 1;
                    if start >= end {
                        return Err(format!("a partial session [{start}, {end})"));
                    }
                    let window = crate::window::TimeWindow { start, end };
                    accs.next().map(|a| Combined::Session(window, a))
                }
            };
            out.push(next.ok_or("tags and records disagree")?);
        }
        Ok(())
    }
}

/// [`Either`]: the two sides of a join, tagged.
struct EitherCodec<A, B>(Arc<dyn RecordCodec<A>>, Arc<dyn RecordCodec<B>>);

impl<A: 'static, B: 'static> RecordCodec<Either<A, B>> for EitherCodec<A, B> {
    fn encode(
        &self,
        records: Vec<Either<A, B>>,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        let (mut tags, mut left, mut right) = (Vec::new(), Vec::new(), Vec::new());
        for r in records {
            match r {
                Either::Left(a) => {
                    tags.push(0);
                    left.push(a);
                }
                Either::Right(b) => {
                    tags.push(1);
                    right.push(b);
                }
            }
        }
        encode_tagged(&tags, (&*self.0, left), (&*self.1, right), out)
    }

    fn decode(&self, body: &[u8], out: &mut Vec<Either<A, B>>) -> std::result::Result<(), String> {
        let (tags, left, right) = decode_tagged(body, &*self.0, &*self.1)?;
        let (mut left, mut right) = (left.into_iter(), right.into_iter());
        for &t in tags {
            let next = match t {
                0 => left.next().map(Either::Left),
                _ => right.next().map(Either::Right),
            };
            out.push(next.ok_or("tags and records disagree")?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compact_str::CompactString;

    fn round_trip<T: Clone + PartialEq + std::fmt::Debug + 'static>(
        codec: &dyn RecordCodec<T>,
        records: Vec<T>,
        timestamps: Vec<i64>,
    ) {
        let batch = Batch::from_parts(records.clone(), timestamps.clone()).unwrap();
        let mut out = Vec::new();
        encode_batch(codec, batch, &mut out).unwrap();
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&out);
        let mut back = Batch::default();
        decode_batch(codec, &aligned, &mut back).unwrap();
        assert_eq!(back.records(), &records[..]);
        assert_eq!(back.timestamps(), &timestamps[..]);
    }

    #[test]
    fn pairs_partials_and_join_sides_round_trip() {
        register_wire_type::<CompactString>();
        register_wire_type::<u64>();
        register_wire_type::<String>();
        let pairs = pair_codec(codec_of::<CompactString>(), codec_of::<u64>())().unwrap();
        let recs: Vec<(CompactString, u64)> =
            (0..100).map(|i| (format!("word{i}").into(), i)).collect();
        round_trip(&*pairs, recs.clone(), Vec::new());
        round_trip(&*pairs, recs, (0..100).collect());
        round_trip(&*pairs, Vec::new(), Vec::new());
        let combined = combined_codec(codec_of::<String>(), codec_of::<u64>())().unwrap();
        let session = crate::window::TimeWindow::new(-5, 20);
        let recs = vec![
            Combined::Raw("a".to_owned()),
            Combined::Partial(7),
            Combined::Session(session, 9),
            Combined::Raw("b".to_owned()),
        ];
        let got = {
            let mut out = Vec::new();
            let batch = Batch::from_records(recs);
            encode_batch(&*combined, batch, &mut out).unwrap();
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(&out);
            let mut back = Batch::default();
            decode_batch(&*combined, &aligned, &mut back).unwrap();
            back.into_parts().0
        };
        assert!(
            matches!(&got[..], [Combined::Raw(a), Combined::Partial(7), Combined::Session(w, 9),
                Combined::Raw(b)] if a == "a" && b == "b" && *w == session)
        );
        let either = either_codec(codec_of::<u64>(), codec_of::<String>())().unwrap();
        round_trip(
            &*either,
            vec![
                Either::Left(1),
                Either::Right("x".to_owned()),
                Either::Left(2),
            ],
            vec![5, 6, 7],
        );
    }

    #[test]
    fn a_missing_codec_names_the_type_and_the_fix() {
        struct NotRegistered;
        let err = codec_of::<NotRegistered>()().err().unwrap().to_string();
        assert!(err.contains("NotRegistered"), "{err}");
        assert!(
            err.contains("register_wire_type::<NotRegistered>()"),
            "{err}"
        );
    }

    #[test]
    fn mangled_payloads_are_errors_never_panics() {
        register_wire_type::<CompactString>();
        register_wire_type::<u64>();
        let pairs = pair_codec(codec_of::<CompactString>(), codec_of::<u64>())().unwrap();
        let recs: Vec<(CompactString, u64)> =
            (0..50).map(|i| (format!("w{i}").into(), i)).collect();
        let mut good = Vec::new();
        encode_batch(
            &*pairs,
            Batch::from_parts(recs, (0..50).collect()).unwrap(),
            &mut good,
        )
        .unwrap();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000 {
            let mut bad = good.clone();
            match round % 3 {
                0 => {
                    let i = next() as usize % bad.len();
                    bad[i] ^= 1 << (next() % 8);
                }
                1 => bad.truncate(next() as usize % bad.len()),
                _ => {
                    let i = (next() as usize % (bad.len() / 8)) * 8;
                    bad[i..i + 8].copy_from_slice(&next().to_le_bytes());
                }
            }
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(&bad);
            let mut back = Batch::default();
            let _ = decode_batch(&*pairs, &aligned, &mut back);
        }
    }
}
