//! Activations quantized to 8 bits per value, 32 values a block, as candle (and ggml) quantize
//! them for a Q4_1 or Q8_0 product: one f32 scale `d = amax / 127` rounded to f16, the values
//! `round(x / d)` (half away from zero, saturating), and for Q4_1's Q8_1 the block sum scaled in
//! f16. Q8_0 and Q8_1 share the scale and values, so one quantization of an input serves every
//! product that reads it, whatever its weights' type.
//!
//! The rounding is done without `f32::round` (a library call on x86-64's baseline) by an exact
//! rule: truncate, then step away from zero when the dropped fraction is at least one half. The
//! fraction `v - trunc(v)` is exact in f32, so the rule equals `f32::round` for every input
//! (`tests` check it, halves and the largest float below one half included).

use half::f16;

/// Values per block.
pub const BLOCK: usize = 32;

/// `f32::round(v) as i8`, exactly, without a library call.
#[inline(always)]
pub fn round_to_i8(v: f32) -> i8 {
    // Saturating truncation toward zero; NaN gives 0, as `f32::round(NaN) as i8` does.
    let t = (v as i32).clamp(-256, 256);
    let frac = v - t as f32;
    let r = t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5);
    r.clamp(i32::from(i8::MIN), i32::from(i8::MAX)) as i8
}

/// Rows of activations in blocks of 32: per block the values, the scale `d` and the scaled sum
/// `s` as the f32 values candle converts their f16 forms to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Q8Rows {
    blocks: usize,
    values: Vec<[i8; BLOCK]>,
    scale: Vec<f32>,
    sum: Vec<f32>,
}

impl Q8Rows {
    /// Quantizes `x`, rows of `k` values (`k` a multiple of 32), reusing this buffer.
    #[inline(always)]
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        debug_assert!(
            k.is_multiple_of(BLOCK) && x.len().is_multiple_of(k),
            "{} by {k}",
            x.len()
        );
        self.blocks = k / BLOCK;
        let n = x.len() / BLOCK;
        self.values.resize(n, [0; BLOCK]);
        self.scale.resize(n, 0.0);
        self.sum.resize(n, 0.0);
        for (i, xs) in x.chunks_exact(BLOCK).enumerate() {
            let xs: &[f32; BLOCK] = xs.try_into().expect("a block");
            let (values, d, s) = quantize_block(xs);
            self.values[i] = values;
            self.scale[i] = d;
            self.sum[i] = s;
        }
    }

    /// `x` quantized: rows of `k` values.
    pub fn of(x: &[f32], k: usize) -> Self {
        let mut q = Self::default();
        q.quantize(x, k);
        q
    }

    /// How many rows.
    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.blocks).unwrap_or(0)
    }

    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// The values of block `b` of row `r`.
    #[inline(always)]
    pub fn values(&self, r: usize, b: usize) -> &[i8; BLOCK] {
        &self.values[r * self.blocks + b]
    }

    /// The scale `d` of block `b` of row `r`.
    #[inline(always)]
    pub fn scale(&self, r: usize, b: usize) -> f32 {
        self.scale[r * self.blocks + b]
    }

    /// The scaled sum `s` (Q8_1) of block `b` of row `r`.
    #[inline(always)]
    pub fn sum(&self, r: usize, b: usize) -> f32 {
        self.sum[r * self.blocks + b]
    }

    /// Test support: rows made of given values and scales (sums computed as candle does).
    #[cfg(test)]
    pub(crate) fn from_parts(blocks: usize, values: Vec<[i8; BLOCK]>, scale: Vec<f32>) -> Self {
        let sum = values
            .iter()
            .zip(&scale)
            .map(|(v, &d)| {
                let s: i32 = v.iter().map(|&q| i32::from(q)).sum();
                (f16::from_f32(s as f32) * f16::from_f32(d)).to_f32()
            })
            .collect();
        Self {
            blocks,
            values,
            scale,
            sum,
        }
    }
}

/// One block as candle's `BlockQ8_1::from_float` makes it: values, `d` and `s` (both through f16).
#[inline(always)]
fn quantize_block(xs: &[f32; BLOCK]) -> ([i8; BLOCK], f32, f32) {
    let mut amax = 0f32;
    for &v in xs {
        amax = amax.max(v.abs());
    }
    let d = amax / ((1 << 7) - 1) as f32;
    let id = if d != 0f32 { 1. / d } else { 0. };
    let d16 = f16::from_f32(d);
    let mut values = [0i8; BLOCK];
    for (q, &v) in values.iter_mut().zip(xs) {
        *q = round_to_i8(v * id);
    }
    let sum: i32 = values.iter().map(|&q| i32::from(q)).sum();
    let s = f16::from_f32(sum as f32) * d16;
    (values, d16.to_f32(), s.to_f32())
}

/// Eight f16 values (raw bits) to f32, exactly, on AVX2: the magnitude's bits moved into an f32
/// and scaled by 2^112 (exact for normal and subnormal values alike), infinities and NaNs given
/// the f32 exponent, the sign put back.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn f16x8_avx2(simd: pulp::x86::V3, h: [u16; 8]) -> core::arch::x86_64::__m256 {
    use core::arch::x86_64::{__m128i, __m256, __m256i};
    use pulp::bytemuck::cast;
    let h: __m128i = cast(h);
    let h = simd.avx2._mm256_cvtepu16_epi32(h);
    let sign = simd.avx2._mm256_slli_epi32::<16>(
        simd.avx2
            ._mm256_and_si256(h, simd.avx._mm256_set1_epi32(0x8000)),
    );
    let em = simd
        .avx2
        ._mm256_and_si256(h, simd.avx._mm256_set1_epi32(0x7fff));
    let shifted: __m256 = cast(simd.avx2._mm256_slli_epi32::<13>(em));
    let scaled: __m256i = cast(simd.avx._mm256_mul_ps(
        shifted,
        simd.avx._mm256_set1_ps(f32::from_bits(0x7780_0000)),
    ));
    let special = simd
        .avx2
        ._mm256_cmpgt_epi32(em, simd.avx._mm256_set1_epi32(0x7bff));
    let exp = simd
        .avx2
        ._mm256_and_si256(special, simd.avx._mm256_set1_epi32(0x7f80_0000));
    cast(
        simd.avx2
            ._mm256_or_si256(simd.avx2._mm256_or_si256(scaled, exp), sign),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ8_1, GgmlType};

    #[test]
    fn the_rounding_rule_is_f32_round_for_every_kind_of_input() {
        let mut cases = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            126.5,
            -127.5,
            127.49999,
            0.499_999_97,
            -0.499_999_97,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e10,
            -1e10,
            3e9,
            16_777_217.0,
            -128.0,
            -128.5,
            -129.0,
        ];
        let mut rng = fastrand::Rng::with_seed(3);
        cases.extend((0..200_000).map(|_| (rng.f32() - 0.5) * 300.0));
        cases.extend((0..2000).map(|i| i as f32 * 0.25 - 250.0));
        for v in cases {
            assert_eq!(round_to_i8(v), f32::round(v) as i8, "{v:e}");
        }
    }

    #[test]
    fn blocks_are_candles_q8_1_blocks() {
        let mut rng = fastrand::Rng::with_seed(5);
        for scale in [1e-30f32, 1e-6, 1.0, 70.0, 1e20] {
            let x: Vec<f32> = (0..256).map(|_| (rng.f32() - 0.5) * scale).collect();
            let mut want = vec![BlockQ8_1::zeros(); 8];
            BlockQ8_1::from_float(&x, &mut want);
            let mut dequant = vec![0f32; 256];
            BlockQ8_1::to_float(&want, &mut dequant);
            let ours = Q8Rows::of(&x, 128);
            assert_eq!(ours.rows(), 2);
            // candle's fields are private: compare what its dequantization shows, d * q,
            // and the products against Q8_1 blocks in the Q4_1 tests.
            for (i, chunk) in dequant.chunks_exact(BLOCK).enumerate() {
                let (r, b) = (i / 4, i % 4);
                for (j, &v) in chunk.iter().enumerate() {
                    let q = f32::from(ours.values(r, b)[j]) * ours.scale(r, b);
                    assert_eq!(q.to_bits(), v.to_bits(), "scale {scale}, block {i}, {j}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_f16_converts_exactly_on_avx2() {
        let Some(simd) = pulp::x86::V3::try_new() else {
            return;
        };
        for first in (0..=u16::MAX).step_by(8) {
            let h: [u16; 8] = core::array::from_fn(|i| first + i as u16);
            let got: [f32; 8] = pulp::bytemuck::cast(simd.vectorize(|| f16x8_avx2(simd, h)));
            for (bits, g) in h.iter().zip(got) {
                let want = f16::from_bits(*bits).to_f32();
                if want.is_nan() {
                    assert!(g.is_nan(), "{bits:#x}");
                } else {
                    assert_eq!(g.to_bits(), want.to_bits(), "{bits:#x}");
                }
            }
        }
    }
}
