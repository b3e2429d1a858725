//! Keys, their stable hash, and key groups.
//!
//! A keyed exchange sends a record to the worker that owns its key's *key group*. The key group
//! is derived from xxh3 over a canonical byte encoding of the key, never from
//! `std::hash::Hash`: the assignment is written into savepoints and crosses nodes, so it must
//! be the same on every platform, compiler and crate version.
//!
//! Canonical encoding: strings and byte strings are their bytes; integers are little-endian;
//! `bool` is one byte; `char` is its UTF-8; a tuple is each field's encoding preceded by its
//! length as a little-endian `u32`.

use compact_str::CompactString;
use sluice_state::Codec as StateCodec;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// Default number of key groups, like Flink's default max parallelism.
pub const KEY_GROUPS_DEFAULT: u32 = 128;
/// The most key groups a job may have (Flink's limit).
pub const KEY_GROUPS_MAX: u32 = 32_768;

/// Streaming form of the canonical hash, for composite keys.
pub struct StableHasher(Xxh3);

impl StableHasher {
    /// A fresh hasher (seed 0).
    pub fn new() -> StableHasher {
        StableHasher(Xxh3::new())
    }
    /// Feeds canonical bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// Feeds one field of a composite key: its length, then its bytes.
    pub fn write_field(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.update(&len.to_le_bytes());
        self.0.update(bytes);
    }
    /// The hash.
    pub fn finish(&self) -> u64 {
        self.0.digest()
    }
}

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher::new()
    }
}

/// A key of a keyed stream: comparable, ordered (timers fire in (time, key) order), hashable in
/// memory, storable (keyed state keeps it in
/// the state store, so it is an rkyv archive there: [`StateCodec`]), and with a stable, portable
/// hash ([`Key::stable_hash`]) that decides its key group.
///
/// Implemented for strings (`String`, `CompactString`), byte strings, integers, `bool`,
/// `char`, `()` and tuples of keys; a key type of your own derives `Ord` and rkyv's `Archive`,
/// `Serialize` and `Deserialize`, and implements [`Key::write_canonical`].
pub trait Key: StateCodec + Clone + Eq + Ord + std::hash::Hash + Send {
    /// Feeds the key's canonical bytes into `h` (as one field when part of a tuple).
    fn write_canonical(&self, h: &mut StableHasher);
    /// The stable hash of the key. The default streams [`Key::write_canonical`]; leaf types
    /// override it with one-shot xxh3 of their bytes.
    fn stable_hash(&self) -> u64 {
        let mut h = StableHasher::new();
        self.write_canonical(&mut h);
        h.finish()
    }
}

macro_rules! bytes_key {
    ($($t:ty => |$v:ident| $bytes:expr),* $(,)?) => {$(
        impl Key for $t {
            fn write_canonical(&self, h: &mut StableHasher) {
                let $v = self;
                h.write_field($bytes);
            }
            fn stable_hash(&self) -> u64 {
                let $v = self;
                xxh3_64($bytes)
            }
        }
    )*};
}

bytes_key! {
    String => |v| v.as_bytes(),
    CompactString => |v| v.as_bytes(),
    Vec<u8> => |v| v.as_slice(),
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn write_canonical(&self, h: &mut StableHasher) {
                h.write_field(&self.to_le_bytes());
            }
            fn stable_hash(&self) -> u64 {
                xxh3_64(&self.to_le_bytes())
            }
        }
    )*};
}
int_key!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128);

impl Key for bool {
    fn write_canonical(&self, h: &mut StableHasher) {
        h.write_field(&[u8::from(*self)]);
    }
}

impl Key for char {
    fn write_canonical(&self, h: &mut StableHasher) {
        let mut buf = [0u8; 4];
        h.write_field(self.encode_utf8(&mut buf).as_bytes());
    }
}

impl Key for () {
    fn write_canonical(&self, h: &mut StableHasher) {
        h.write_field(&[]);
    }
}

macro_rules! tuple_key {
    ($($name:ident)+) => {
        impl<$($name: Key),+> Key for ($($name,)+) {
            #[allow(non_snake_case)]
            fn write_canonical(&self, h: &mut StableHasher) {
                let ($($name,)+) = self;
                $($name.write_canonical(h);)+
            }
        }
    };
}
tuple_key!(A B);
tuple_key!(A B C);
tuple_key!(A B C D);

/// The key groups of a job and their assignment to workers: contiguous ranges, as in Flink, so
/// that rescaling moves whole ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyGroups {
    key_groups_max: u32,
    workers: u32,
    /// `log2(key_groups_max)` when it is a power of two (the default): the per-record key
    /// group and owner then need a mask and a shift instead of two divisions.
    pow2_shift: Option<u32>,
}

impl KeyGroups {
    /// `key_groups_max` groups spread over `workers` workers.
    ///
    /// ```
    /// use sluice_core::KeyGroups;
    /// let kg = KeyGroups::new(128, 4).unwrap();
    /// assert_eq!(kg.owner(0), 0);
    /// assert_eq!(kg.owner(127), 3);
    /// assert_eq!(kg.range_of(1), 32..64);
    /// ```
    pub fn new(key_groups_max: u32, workers: u32) -> crate::Result<KeyGroups> {
        if workers == 0 {
            return Err(crate::Error::Config(
                "a job needs at least one worker".into(),
            ));
        }
        if key_groups_max == 0 || key_groups_max > KEY_GROUPS_MAX {
            return Err(crate::Error::Config(format!(
                "key groups must be in 1..={KEY_GROUPS_MAX}, got {key_groups_max}"
            )));
        }
        if workers > key_groups_max {
            return Err(crate::Error::Config(format!(
                "{workers} workers exceed the job's {key_groups_max} key groups"
            )));
        }
        Ok(KeyGroups {
            key_groups_max,
            workers,
            pow2_shift: key_groups_max
                .is_power_of_two()
                .then(|| key_groups_max.trailing_zeros()),
        })
    }

    /// Number of key groups.
    pub fn key_groups_max(&self) -> u32 {
        self.key_groups_max
    }

    /// Number of workers.
    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// The key group of a stable hash.
    #[inline]
    pub fn key_group(&self, stable_hash: u64) -> u32 {
        // Mix the high bits in: xxh3's low bits are good, but this keeps a weak custom
        // `stable_hash` from collapsing onto a few groups.
        let mixed = stable_hash ^ (stable_hash >> 32);
        match self.pow2_shift {
            Some(_) => (mixed & u64::from(self.key_groups_max - 1)) as u32,
            None => (mixed % u64::from(self.key_groups_max)) as u32,
        }
    }

    /// The worker that owns key group `kg` (Flink's `kg * parallelism / max_parallelism`).
    #[inline]
    pub fn owner(&self, kg: u32) -> usize {
        debug_assert!(
            kg < self.key_groups_max,
            "kg={kg} max={}",
            self.key_groups_max
        );
        let scaled = u64::from(kg) * u64::from(self.workers);
        match self.pow2_shift {
            Some(shift) => (scaled >> shift) as usize,
            None => (scaled / u64::from(self.key_groups_max)) as usize,
        }
    }

    /// The worker that owns `key`.
    #[inline]
    pub fn owner_of<K: Key>(&self, key: &K) -> usize {
        self.owner(self.key_group(key.stable_hash()))
    }

    /// The contiguous range of key groups owned by `worker`.
    pub fn range_of(&self, worker: usize) -> std::ops::Range<u32> {
        let w = worker as u64;
        let (n, max) = (u64::from(self.workers), u64::from(self.key_groups_max));
        // The smallest kg with kg * n / max >= w is ceil(w * max / n).
        let start = (w * max).div_ceil(n) as u32;
        let end = ((w + 1) * max).div_ceil(n) as u32;
        start..end.min(self.key_groups_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stable_hash_is_pinned() {
        // These values are part of the savepoint format: changing them breaks restores.
        assert_eq!("hello".to_string().stable_hash(), xxh3_64(b"hello"));
        assert_eq!(42u64.stable_hash(), xxh3_64(&42u64.to_le_bytes()));
        assert_eq!(
            CompactString::from("hello").stable_hash(),
            "hello".to_string().stable_hash()
        );
        let kg = KeyGroups::new(128, 1).unwrap();
        assert_eq!(kg.key_group("hello".to_string().stable_hash()), 40);
    }

    #[test]
    fn tuple_fields_are_length_prefixed() {
        let a = ("ab".to_string(), "c".to_string()).stable_hash();
        let b = ("a".to_string(), "bc".to_string()).stable_hash();
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn ranges_partition_the_key_groups(max in 1u32..2000, workers in 1u32..64) {
            prop_assume!(workers <= max);
            let kg = KeyGroups::new(max, workers).unwrap();
            let mut next = 0;
            for w in 0..workers as usize {
                let r = kg.range_of(w);
                prop_assert_eq!(r.start, next);
                for g in r.clone() {
                    prop_assert_eq!(kg.owner(g), w);
                }
                next = r.end;
            }
            prop_assert_eq!(next, max);
        }
    }

    proptest! {
        #[test]
        fn power_of_two_fast_path_agrees_with_the_formula(
            hash in any::<u64>(),
            shift in 0u32..15,
            workers in 1u32..64,
        ) {
            let max = 1u32 << shift;
            prop_assume!(workers <= max);
            let kg = KeyGroups::new(max, workers).unwrap();
            let mixed = hash ^ (hash >> 32);
            let g = (mixed % u64::from(max)) as u32;
            prop_assert_eq!(kg.key_group(hash), g);
            let owner = (u64::from(g) * u64::from(workers) / u64::from(max)) as usize;
            prop_assert_eq!(kg.owner(g), owner);
        }
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(KeyGroups::new(128, 0).is_err());
        assert!(KeyGroups::new(0, 1).is_err());
        assert!(KeyGroups::new(4, 8).is_err());
    }
}
