//! The reference generator's random numbers, reproduced bit for bit: the `nexmark` crate 0.2.0
//! draws every event from rand 0.8's `SmallRng` seeded with the event's id, and Sluice must
//! draw the very same numbers. On 64-bit targets `SmallRng` is xoshiro256++; its
//! `seed_from_u64` is rand_core 0.6's default (eight PCG32 outputs, little-endian), not
//! xoshiro's own SplitMix64 seeding. The samplers below are rand 0.8.8's for the types the crate
//! uses: `gen_range` over `usize`/`u64`, over `i32`/`u32` (also `choose` on a slice), over
//! `u8` (`b'a'..=b'z'`), and `gen::<f32>()`.
//!
//! The generator counts its raw 64-bit draws, rejected ones included, so a [`LazyText`] can
//! record where its letters start and replay them later without the event's other fields.
//!
//! [`LazyText`]: super::LazyText

/// rand 0.8's `SmallRng` on a 64-bit target, counting its draws.
#[derive(Clone, Debug)]
pub(crate) struct SmallRng {
    s: [u64; 4],
    /// Raw 64-bit outputs drawn since seeding.
    draws: u32,
}

/// The acceptance zone of rand 0.8's `u8` sampler over 26 values, computed by modulus: a
/// 32-bit draw is rejected when the low half of `draw × 26` exceeds it.
const LETTER_ZONE: u32 = u32::MAX - (u32::MAX - 26 + 1) % 26;

impl SmallRng {
    /// `SmallRng::seed_from_u64(seed)`: rand_core 0.6's default seeding through PCG32.
    #[inline]
    pub(crate) fn seed_from_u64(mut state: u64) -> SmallRng {
        const MUL: u64 = 6364136223846793005;
        const INC: u64 = 11634580027462260723;
        let mut pcg32 = || {
            state = state.wrapping_mul(MUL).wrapping_add(INC);
            let xorshifted = (((state >> 18) ^ state) >> 27) as u32;
            let rot = (state >> 59) as u32;
            u64::from(xorshifted.rotate_right(rot))
        };
        let mut s = [0u64; 4];
        for word in &mut s {
            let lo = pcg32();
            let hi = pcg32();
            *word = lo | (hi << 32);
        }
        if s == [0; 4] {
            // xoshiro's `from_seed` replaces an all-zero seed by its own SplitMix64 seeding
            // of 0. PCG32 never yields eight zeros in a row, but the rule costs nothing.
            s = splitmix_seed(0);
        }
        SmallRng { s, draws: 0 }
    }

    /// Raw 64-bit draws so far.
    #[inline]
    pub(crate) fn draws(&self) -> u32 {
        self.draws
    }

    /// xoshiro256++'s next output.
    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        self.draws = self.draws.wrapping_add(1);
        result
    }

    /// The upper half of a 64-bit draw, as xoshiro's `next_u32`.
    #[inline]
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// `gen_range(0..n)` over `usize`/`u64`: Lemire's widening multiply with rand 0.8's
    /// conservative zone (`n << leading_zeros(n)`, minus one).
    #[inline]
    pub(crate) fn below_u64(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "empty range");
        let zone = (n << n.leading_zeros()).wrapping_sub(1);
        loop {
            let wide = u128::from(self.next_u64()) * u128::from(n);
            if wide as u64 <= zone {
                return (wide >> 64) as u64;
            }
        }
    }

    /// `gen_range(0..n)` over `i32`/`u32`, and `slice.choose` (which samples a `u32` index for
    /// slices shorter than 2³²): the same method on 32-bit draws.
    #[inline]
    pub(crate) fn below_u32(&mut self, n: u32) -> u32 {
        debug_assert!(n > 0, "empty range");
        let zone = (n << n.leading_zeros()).wrapping_sub(1);
        loop {
            let wide = u64::from(self.next_u32()) * u64::from(n);
            if wide as u32 <= zone {
                return (wide >> 32) as u32;
            }
        }
    }

    /// `gen_range(b'a'..=b'z')`: a `u8` range is sampled on 32-bit draws with an exact
    /// modulus zone.
    #[inline]
    pub(crate) fn letter(&mut self) -> u8 {
        loop {
            let wide = u64::from(self.next_u32()) * 26;
            if wide as u32 <= LETTER_ZONE {
                return b'a' + (wide >> 32) as u8;
            }
        }
    }

    /// Advances past `len` letters without keeping them.
    #[inline]
    pub(crate) fn skip_letters(&mut self, len: usize) {
        for _ in 0..len {
            self.letter();
        }
    }

    /// `gen::<f32>()`: the upper 24 bits of a 32-bit draw, scaled to `[0, 1)`.
    #[inline]
    pub(crate) fn unit_f32(&mut self) -> f32 {
        const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
        SCALE * (self.next_u32() >> 8) as f32
    }
}

/// xoshiro's own `seed_from_u64`: four SplitMix64 outputs.
fn splitmix_seed(mut state: u64) -> [u64; 4] {
    const PHI: u64 = 0x9e3779b97f4a7c15;
    let mut s = [0u64; 4];
    for word in &mut s {
        state = state.wrapping_add(PHI);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        *word = z ^ (z >> 31);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published xoshiro256++ reference sequence for the state (1, 2, 3, 4).
    #[test]
    fn xoshiro256plusplus_reference_sequence() {
        let mut rng = SmallRng {
            s: [1, 2, 3, 4],
            draws: 0,
        };
        let expected = [
            41943041,
            58720359,
            3588806011781223,
            3591011842654386,
            9228616714210784205,
            9973669472204895162,
        ];
        for e in expected {
            assert_eq!(rng.next_u64(), e);
        }
        assert_eq!(rng.draws(), 6);
    }

    #[test]
    fn letters_are_lowercase_ascii() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..10_000 {
            assert!(rng.letter().is_ascii_lowercase());
        }
    }
}
