//! The workers' random numbers: SplitMix64, seeded per worker (the hosted runner's
//! generator, so a seed draws the same sizes here as there).
//!
//! The kernel tests draw sizes, alignments and the test order from `get_random_*`; nothing
//! here needs cryptographic quality, only speed and reproducibility (a run is repeatable from
//! its printed seed). Ranges use a multiply-shift reduction (bias below 2^-32 for the small
//! ranges used here). No shared state: each worker owns its generator.

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `stream` (the worker index) of the run seeded with `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut r = Self(seed ^ stream.wrapping_mul(0xa076_1d64_78bd_642f));
        // Decorrelate neighbouring streams.
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `get_random_u8()`.
    pub fn u8(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    /// `get_random_u32_below(n)`: uniform in `0..n` (`n` = 0 gives 0).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    /// `get_random_u32_inclusive(lo, hi)`: uniform in `lo..=hi` (`lo <= hi`).
    pub fn inclusive(&mut self, lo: u32, hi: u32) -> u32 {
        let span = hi.saturating_sub(lo);
        if span == u32::MAX {
            return (self.next_u64() >> 32) as u32;
        }
        lo + self.below(span + 1)
    }
}

/// The kernel's `shuffle_array`: for `i` from the end down to 1, swap `a[i]` with `a[j]`,
/// `j` drawn below `i` (so every element moves: a Sattolo shuffle, as in the module).
pub fn shuffle<T>(a: &mut [T], rng: &mut Rng) {
    for i in (1..a.len()).rev() {
        let j = rng.below(i as u32) as usize;
        a.swap(i, j);
    }
}
