//! Keys, namespaces and values as bytes: rkyv 0.8 archives, written at checkpoints and on
//! eviction only (the hot tier holds typed Rust values), and read back with validated
//! `rkyv::access` — bytes from disk are never trusted (RELIABILITY §6).
//!
//! [`Codec`] is implemented for every type whose archive can be validated and deserialized,
//! so tables accept any `#[derive(Archive, Serialize, Deserialize)]` type and the primitives.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// The alignment of every archive inside a frame and of every read buffer.
pub const ARCHIVE_ALIGN: usize = 16;

/// A reusable, aligned serialization buffer.
pub type Scratch = AlignedVec<ARCHIVE_ALIGN>;

/// A type the store can write to and read from disk.
///
/// The rkyv bounds are supertraits, so generic code that knows `T: Codec` also knows that
/// `Option<T>`, `Vec<T>`, `(i64, T)` and any `#[derive(Archive, …)]` struct of `T` are `Codec`.
pub trait Codec:
    Archive<
        Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
                      + Deserialize<Self, HighDeserializer<rancor::Error>>,
    > + for<'a> Serialize<HighSerializer<Scratch, ArenaHandle<'a>, rancor::Error>>
    + Sized
    + 'static
{
    /// Serializes `self` into `scratch` (cleared first).
    fn encode(&self, scratch: &mut Scratch) -> Result<(), String>;
    /// Validates and deserializes an archive; `bytes` must start at an address aligned to
    /// [`ARCHIVE_ALIGN`].
    fn decode(bytes: &[u8]) -> Result<Self, String>;
}

impl<T> Codec for T
where
    T: Archive + 'static,
    T: for<'a> Serialize<HighSerializer<Scratch, ArenaHandle<'a>, rancor::Error>>,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    fn encode(&self, scratch: &mut Scratch) -> Result<(), String> {
        let mut buf = std::mem::take(scratch);
        buf.clear();
        match rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, buf) {
            Ok(buf) => {
                *scratch = buf;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        rkyv::from_bytes::<T, rancor::Error>(bytes).map_err(|e| e.to_string())
    }
}

/// Encodes into a fresh vector (tests, rare paths).
pub fn to_vec<T: Codec>(value: &T) -> Result<Vec<u8>, String> {
    let mut scratch = Scratch::new();
    value.encode(&mut scratch)?;
    Ok(scratch.as_slice().to_vec())
}

/// Decodes bytes at any address: copies them into an aligned buffer first.
pub fn decode_unaligned<T: Codec>(bytes: &[u8]) -> Result<T, String> {
    if (bytes.as_ptr() as usize) % ARCHIVE_ALIGN == 0 {
        return T::decode(bytes);
    }
    let mut aligned = Scratch::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    T::decode(aligned.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_primitives_and_containers() {
        let v: (u64, String, Vec<u32>) = (7, "seven".into(), vec![1, 2, 3]);
        let bytes = to_vec(&v).unwrap();
        assert_eq!(
            decode_unaligned::<(u64, String, Vec<u32>)>(&bytes).unwrap(),
            v
        );
    }

    #[test]
    fn garbage_never_panics_and_truncation_is_an_error() {
        let good = to_vec(&(7u64, "seven".to_string(), vec![1u32, 2, 3])).unwrap();
        for cut in 0..good.len() {
            let _ = decode_unaligned::<(u64, String, Vec<u32>)>(&good[..cut]);
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..32)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_unaligned::<(u64, String, Vec<u32>)>(&bytes);
            let _ = decode_unaligned::<String>(&bytes);
        }
        assert!(decode_unaligned::<Vec<u64>>(&[0xff; 3]).is_err());
    }
}
