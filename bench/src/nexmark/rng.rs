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
    /// `SmallRng::seed_from_u64(seed)`: rand_core 0.6's default seeding through PCG32. The
    /// eight PCG states are computed each straight from the seed (`MUL^k × seed + C_k`), so
    /// that their multiplications run in parallel instead of in a chain.
    #[inline]
    pub(crate) fn seed_from_u64(seed: u64) -> SmallRng {
        let output = |k: usize| {
            let state = PCG_JUMPS[k]
                .0
                .wrapping_mul(seed)
                .wrapping_add(PCG_JUMPS[k].1);
            let xorshifted = (((state >> 18) ^ state) >> 27) as u32;
            let rot = (state >> 59) as u32;
            u64::from(xorshifted.rotate_right(rot))
        };
        let mut s = [0u64; 4];
        for (i, word) in s.iter_mut().enumerate() {
            *word = output(2 * i) | (output(2 * i + 1) << 32);
        }
        if s[0] | s[1] | s[2] | s[3] == 0 {
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
        self.draws = self.draws.wrapping_add(1);
        step(&mut self.s)
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

    /// `below_u64(n)` for a power of two `n` ≥ 2, without a branch on a coin flip. The
    /// conservative zone of a power of two is 2⁶³ − 1, so a draw is accepted when its bit
    /// `63 − log2(n)` is clear — half of the time, which a branch would mispredict half of the
    /// time. Two draws are made and the first accepted one is selected by masks; both are
    /// rejected one time in four, and the loop goes on from there.
    #[inline]
    pub(crate) fn below_pow2(&mut self, n: u64) -> u64 {
        debug_assert!(n.is_power_of_two() && n >= 2, "n={n}");
        let bits = n.trailing_zeros();
        let mut s1 = self.s;
        let v1 = step(&mut s1);
        let mut s2 = s1;
        let v2 = step(&mut s2);
        let ok1 = (v1 >> (63 - bits)) & 1 == 0;
        let ok2 = (v2 >> (63 - bits)) & 1 == 0;
        if !(ok1 | ok2) {
            self.s = s2;
            self.draws = self.draws.wrapping_add(2);
            return self.below_u64(n);
        }
        // All ones when the first draw is taken.
        let first = u64::from(ok1).wrapping_neg();
        for (s, (a, b)) in self.s.iter_mut().zip(s1.into_iter().zip(s2)) {
            *s = (a & first) | (b & !first);
        }
        self.draws = self.draws.wrapping_add(2 - u32::from(ok1));
        ((v1 & first) | (v2 & !first)) >> (64 - bits)
    }

    /// `below_u64(n)` when `take`, else no draw at all (and a meaningless result), without a
    /// branch on `take`: for the crate's "hot or not" choices, which go either way at random.
    /// The draw is made on a copy of the state, kept only when `take`; a taken draw that is
    /// rejected goes on in the loop.
    #[inline]
    pub(crate) fn below_u64_if(&mut self, take: bool, n: u64) -> u64 {
        debug_assert!(n > 0, "empty range");
        let zone = (n << n.leading_zeros()).wrapping_sub(1);
        let mut s1 = self.s;
        let wide = u128::from(step(&mut s1)) * u128::from(n);
        if take & (wide as u64 > zone) {
            self.s = s1;
            self.draws = self.draws.wrapping_add(1);
            return self.below_u64(n);
        }
        // All ones when the draw is taken.
        let keep = u64::from(take).wrapping_neg();
        for (s, a) in self.s.iter_mut().zip(s1) {
            *s = (a & keep) | (*s & !keep);
        }
        self.draws = self.draws.wrapping_add(u32::from(take));
        (wide >> 64) as u64
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

/// One xoshiro256++ step: the output, and the state advanced.
#[inline(always)]
fn step(s: &mut [u64; 4]) -> u64 {
    let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
    let t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3].rotate_left(45);
    result
}

const PCG_MUL: u64 = 6364136223846793005;
const PCG_INC: u64 = 11634580027462260723;

/// `(MUL^k, C_k)` for k = 1 to 8, with which PCG32's k-th state after `seed` is
/// `MUL^k × seed + C_k` (the state advances before each output).
const PCG_JUMPS: [(u64, u64); 8] = {
    let mut jumps = [(0u64, 0u64); 8];
    let (mut mul, mut add) = (PCG_MUL, PCG_INC);
    let mut k = 0;
    while k < 8 {
        jumps[k] = (mul, add);
        mul = mul.wrapping_mul(PCG_MUL);
        add = add.wrapping_mul(PCG_MUL).wrapping_add(PCG_INC);
        k += 1;
    }
    jumps
};

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

    /// rand_core 0.6's `seed_from_u64`, as it is written: PCG32 in a chain.
    fn chained_pcg_seed(mut state: u64) -> [u64; 4] {
        let mut pcg32 = || {
            state = state.wrapping_mul(PCG_MUL).wrapping_add(PCG_INC);
            let xorshifted = (((state >> 18) ^ state) >> 27) as u32;
            u64::from(xorshifted.rotate_right((state >> 59) as u32))
        };
        [(); 4].map(|()| pcg32() | (pcg32() << 32))
    }

    #[test]
    fn jumped_pcg_seeding_equals_the_chained_one() {
        for seed in (0..1000).chain([u64::MAX, 1 << 63, 0x9e37_79b9_7f4a_7c15]) {
            assert_eq!(
                SmallRng::seed_from_u64(seed).s,
                chained_pcg_seed(seed),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn below_pow2_draws_as_below_u64() {
        for seed in 0..20_000 {
            for n in [2, 4, 1 << 20] {
                let (mut a, mut b) = (SmallRng::seed_from_u64(seed), SmallRng::seed_from_u64(seed));
                assert_eq!(a.below_pow2(n), b.below_u64(n), "seed {seed} n {n}");
                assert_eq!((a.s, a.draws), (b.s, b.draws), "seed {seed} n {n}");
            }
        }
    }

    #[test]
    fn below_u64_if_draws_as_below_u64_or_not_at_all() {
        for seed in 0..20_000 {
            for n in [3, 111, 1010, 1 << 63] {
                let (mut a, mut b) = (SmallRng::seed_from_u64(seed), SmallRng::seed_from_u64(seed));
                assert_eq!(a.below_u64_if(true, n), b.below_u64(n), "seed {seed} n {n}");
                assert_eq!((a.s, a.draws), (b.s, b.draws), "seed {seed} n {n}");
                a.below_u64_if(false, n);
                assert_eq!((a.s, a.draws), (b.s, b.draws), "seed {seed} n {n}");
            }
        }
    }

    #[test]
    fn letters_are_lowercase_ascii() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..10_000 {
            assert!(rng.letter().is_ascii_lowercase());
        }
    }
}
