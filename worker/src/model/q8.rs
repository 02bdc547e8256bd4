//! Activations quantized to 8 bits per value, 32 values a block, as candle (and ggml) quantize
//! them for a Q4_1 or Q8_0 product: one f32 scale `d = amax / 127` rounded to f16, the values
//! `round(x / d)` (half away from zero, saturating), and for Q4_1's Q8_1 the block sum scaled in
//! f16. Q8_0 and Q8_1 share the scale and values, so one quantization of an input serves every
//! product that reads it, whatever its weights' type.
//!
//! The rounding is done without `f32::round` (which does not vectorize) by an exact rule:
//! truncate (one instruction on the vector paths), then step away from zero when the dropped
//! fraction is at least one half. The fraction `v - trunc(v)` is exact in f32, so the rule
//! equals `f32::round` for every input (`tests` check it, halves and the largest float below one
//! half included). The AVX-512 path runs the same rule on intrinsics, sixteen lanes at a time
//! (`avx512`), and sixteen blocks at a time where it can: each block's largest magnitude and
//! integer sum gathered into a lane of one vector, its scale, inverse and f16 roundings
//! computed for all sixteen at once. Every path's bits are checked against the plain one.

use super::expf::exact_int;
use super::kernel::{Autovectorized, Kernel, Threads};
use half::f16;
use rayon::prelude::*;

/// Values per block.
pub const BLOCK: usize = 32;

/// `f32::round(v) as i8`, exactly, without a library call.
#[inline(always)]
pub fn round_to_i8(v: f32) -> i8 {
    // Within a vector context `trunc` is one instruction (`vroundps`); the fraction is exact.
    let t = v.trunc();
    let frac = v - t;
    let r = t + f32::from(u8::from(frac >= 0.5)) - f32::from(u8::from(frac <= -0.5));
    // Saturating; NaN gives 0, as `f32::round(NaN) as i8` does. Not through Rust's `as` (one
    // scalar conversion per lane even in vector code): through `exact_int`.
    let r = if r.is_nan() {
        0.0
    } else {
        r.clamp(f32::from(i8::MIN), f32::from(i8::MAX))
    };
    exact_int(r) as i8
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
        self.size_for(x, k);
        self.all().from(x, 0, Plain);
    }

    /// Every block, to be written.
    fn all(&mut self) -> Blocks<'_> {
        Blocks {
            values: &mut self.values,
            scale: &mut self.scale,
            sum: &mut self.sum,
        }
    }

    /// Sizes the rows for `x` (rows of `k`).
    #[inline(always)]
    fn size_for(&mut self, x: &[f32], k: usize) {
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
    }

    /// [`Q8Rows::quantize`] on kernel path `kernel`, the rows split over `threads` in equal
    /// runs: the same bits on every path and any split (each block is quantized on its own;
    /// AVX-512 runs its own vector form of the block rule, the others compile the plain one for
    /// their instruction set).
    pub fn quantize_on(&mut self, x: &[f32], k: usize, kernel: Kernel, threads: &Threads) {
        self.size_for(x, k);
        let rows = x.len() / k;
        if threads.count() == 1 || rows < 2 {
            quantize_part(self.all(), x, kernel);
            return;
        }
        let per = rows.div_ceil(threads.count());
        let blocks = per * self.blocks;
        self.values
            .par_chunks_mut(blocks)
            .zip(self.scale.par_chunks_mut(blocks))
            .zip(self.sum.par_chunks_mut(blocks))
            .zip(x.par_chunks(per * k))
            .for_each(|(((values, scale), sum), x)| {
                quantize_part(Blocks { values, scale, sum }, x, kernel);
            });
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

    /// Block `b` of row `r` and everything after it: row `r + i`'s block `b` is at
    /// `i * blocks()`.
    #[inline(always)]
    pub fn values_from(&self, r: usize, b: usize) -> &[[i8; BLOCK]] {
        &self.values[r * self.blocks + b..]
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

/// Consecutive blocks of a [`Q8Rows`], to be written.
struct Blocks<'a> {
    values: &'a mut [[i8; BLOCK]],
    scale: &'a mut [f32],
    sum: &'a mut [f32],
}

impl Blocks<'_> {
    /// Quantizes the blocks of `x` (one for each of these) from block `from` on by `rule`, one
    /// by one.
    #[inline(always)]
    fn from(&mut self, x: &[f32], from: usize, rule: impl BlockRule) {
        for (i, xs) in x.chunks_exact(BLOCK).enumerate().skip(from) {
            let xs: &[f32; BLOCK] = xs.try_into().expect("a block");
            let (values, d, s) = rule.block(xs);
            self.values[i] = values;
            self.scale[i] = d;
            self.sum[i] = s;
        }
    }
}

/// `x`'s blocks into `blocks` on kernel path `kernel`.
fn quantize_part(blocks: Blocks<'_>, x: &[f32], kernel: Kernel) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512(simd) | Kernel::Amx(simd, _) => {
            simd.vectorize(Avx512Quantize { simd, blocks, x });
        }
        other => other.run(Quantize { blocks, x }),
    }
}

/// How one block is quantized: a trait with an `#[inline(always)]` method, not a closure (a
/// closure's call may stay out of line, outside the kernel path's feature context, and run
/// scalar: the plain rule did, at ~4 ns a value on the AVX2 path).
trait BlockRule {
    /// The block's values, `d` and `s`.
    fn block(&self, xs: &[f32; BLOCK]) -> ([i8; BLOCK], f32, f32);
}

/// [`quantize_block`].
struct Plain;

impl BlockRule for Plain {
    #[inline(always)]
    fn block(&self, xs: &[f32; BLOCK]) -> ([i8; BLOCK], f32, f32) {
        quantize_block(xs)
    }
}

/// One block as candle's `BlockQ8_1::from_float` makes it: values, `d` and `s` (both through f16).
#[inline(always)]
fn quantize_block(xs: &[f32; BLOCK]) -> ([i8; BLOCK], f32, f32) {
    // The largest magnitude (NaN ignored, as `f32::max` does), over sixteen lanes: a maximum
    // does not depend on the order it is taken in.
    let mut lanes = [0f32; 16];
    for half in xs.chunks_exact(16) {
        for (m, &v) in lanes.iter_mut().zip(half) {
            *m = m.max(v.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |a, &m| a.max(m));
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

/// Blocks quantized by the plain rule, compiled for a kernel path.
struct Quantize<'a> {
    blocks: Blocks<'a>,
    x: &'a [f32],
}

impl Autovectorized for Quantize<'_> {
    type Output = ();

    #[inline(always)]
    fn run(mut self) {
        self.blocks.from(self.x, 0, Plain);
    }
}

/// Blocks quantized on AVX-512 ([`avx512::quantize_sixteen`], then [`avx512::OneBlock`] for the
/// blocks past the last sixteen), for pulp's `vectorize` (a plain call, inlined into it: see
/// `simd_call!`).
#[cfg(target_arch = "x86_64")]
struct Avx512Quantize<'a> {
    simd: pulp::x86::V4,
    blocks: Blocks<'a>,
    x: &'a [f32],
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for Avx512Quantize<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let (simd, x, mut rows) = (self.simd, self.x, self.blocks);
        // Sixteen blocks at a time (a plain loop: a closure may stay out of line, outside the
        // path's feature context), then the rest one by one.
        let groups = x.chunks_exact(16 * BLOCK);
        let done = 16 * groups.len();
        for (g, xs) in groups.enumerate() {
            let xs: &[f32; 16 * BLOCK] = xs.try_into().expect("sixteen blocks");
            let at = 16 * g..16 * g + 16;
            avx512::quantize_sixteen(
                simd,
                xs,
                (
                    &mut rows.values[at.clone()],
                    &mut rows.scale[at.clone()],
                    &mut rows.sum[at],
                ),
            );
        }
        rows.from(x, done, avx512::OneBlock(simd));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::BLOCK;
    use core::arch::x86_64::{
        __m128i, __m512, __m512i, _CMP_GE_OQ, _CMP_LE_OQ, _CMP_NEQ_UQ, _CMP_ORD_Q,
        _MM_FROUND_TO_NEAREST_INT,
    };
    use half::f16;
    use pulp::bytemuck::{cast, cast_ref};
    use pulp::x86::V4;

    /// Sixteen values times `id`, rounded half away from zero, saturated to i8 (NaN to 0), as
    /// i32 lanes: [`super::round_to_i8`]'s rule, lane by lane.
    #[inline(always)]
    fn round16(simd: V4, x: __m512, id: __m512) -> __m512i {
        let f = simd.avx512f;
        let one = f._mm512_set1_ps(1.0);
        let v = f._mm512_mul_ps(x, id);
        // Truncation toward zero, exceptions suppressed.
        let t = f._mm512_roundscale_ps::<0x0B>(v);
        let frac = f._mm512_sub_ps(v, t);
        let up = f._mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, f._mm512_set1_ps(0.5));
        let down = f._mm512_cmp_ps_mask::<_CMP_LE_OQ>(frac, f._mm512_set1_ps(-0.5));
        let r = f._mm512_mask_add_ps(t, up, t, one);
        let r = f._mm512_mask_sub_ps(r, down, r, one);
        let ordered = f._mm512_cmp_ps_mask::<_CMP_ORD_Q>(r, r);
        let r = f._mm512_min_ps(
            f._mm512_max_ps(r, f._mm512_set1_ps(f32::from(i8::MIN))),
            f._mm512_set1_ps(f32::from(i8::MAX)),
        );
        f._mm512_cvttps_epi32(f._mm512_maskz_mov_ps(ordered, r))
    }

    /// An operation whose result does not depend on the order it is applied in.
    trait Combine {
        fn op(simd: V4, a: __m512, b: __m512) -> __m512;
    }

    /// The maximum (of values that hold no NaN).
    struct Max;

    impl Combine for Max {
        #[inline(always)]
        fn op(simd: V4, a: __m512, b: __m512) -> __m512 {
            simd.avx512f._mm512_max_ps(a, b)
        }
    }

    /// The sum of i32 lanes (exact for the block sums: at most 32 * 128 in magnitude).
    struct AddI32;

    impl Combine for AddI32 {
        #[inline(always)]
        fn op(simd: V4, a: __m512, b: __m512) -> __m512 {
            cast(simd.avx512f._mm512_add_epi32(cast(a), cast(b)))
        }
    }

    /// Each quarter's even lanes of `a` and `b` against their odd ones: per quarter, two
    /// partials of `a`'s then two of `b`'s.
    #[inline(always)]
    fn pairs<C: Combine>(simd: V4, a: __m512, b: __m512) -> __m512 {
        let f = simd.avx512f;
        C::op(
            simd,
            f._mm512_shuffle_ps::<0b10_00_10_00>(a, b),
            f._mm512_shuffle_ps::<0b11_01_11_01>(a, b),
        )
    }

    /// The quarters of `a` and `b` that shuffle `P` picks against those `Q` picks.
    #[inline(always)]
    fn quarters<C: Combine, const P: i32, const Q: i32>(simd: V4, a: __m512, b: __m512) -> __m512 {
        let f = simd.avx512f;
        C::op(
            simd,
            f._mm512_shuffle_f32x4::<P>(a, b),
            f._mm512_shuffle_f32x4::<Q>(a, b),
        )
    }

    /// `C` over the lanes of each of sixteen vectors: lane `i` of the result combines the
    /// lanes of `v[i]`, in four steps of pairwise shuffles, each step halving the partials per
    /// vector.
    #[inline(always)]
    fn across<C: Combine>(simd: V4, v: [__m512; 16]) -> __m512 {
        let f = simd.avx512f;
        // Two vectors' quarters 0/1 against 2/3: each result holds 8 partials of each.
        let mut w = [f._mm512_setzero_ps(); 8];
        for (j, w) in w.iter_mut().enumerate() {
            *w = quarters::<C, 0b01_00_01_00, 0b11_10_11_10>(simd, v[2 * j], v[2 * j + 1]);
        }
        // Quarters 0 against 1 of each half: a quarter (4 partials) per vector of `v`.
        let mut x = [f._mm512_setzero_ps(); 4];
        for (j, x) in x.iter_mut().enumerate() {
            *x = quarters::<C, 0b10_00_10_00, 0b11_01_11_01>(simd, w[2 * j], w[2 * j + 1]);
        }
        // Within each quarter, even lanes against odd ones, twice.
        let y = [pairs::<C>(simd, x[0], x[1]), pairs::<C>(simd, x[2], x[3])];
        // Lane `4k + m` now holds vector `4m + k`'s result: transposed back.
        let z = pairs::<C>(simd, y[0], y[1]);
        let order: __m512i = cast([0i32, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15]);
        f._mm512_permutexvar_ps(order, z)
    }

    /// Sixteen consecutive blocks as [`quantize_block`] quantizes each, into `values`, `scale`
    /// and `sum` (sixteen each): the same steps, with each block's scalars in a lane of one
    /// vector (the largest magnitudes and the integer sums gathered by [`across`]; `d`, its
    /// inverse, and the f16 roundings of `d` and `s` by the same IEEE operations; F16C's
    /// round-to-nearest-even conversion is the one `half` uses).
    #[inline(always)]
    pub(super) fn quantize_sixteen(
        simd: V4,
        xs: &[f32; 16 * BLOCK],
        (values, scale, sum): (&mut [[i8; BLOCK]], &mut [f32], &mut [f32]),
    ) {
        let f = simd.avx512f;
        let halves: &[[f32; 16]; 32] = cast_ref(xs);
        let zero = f._mm512_setzero_ps();
        let mut magnitudes = [zero; 16];
        for (m, pair) in magnitudes.iter_mut().zip(halves.chunks_exact(2)) {
            let (lo, hi): (__m512, __m512) = (cast(pair[0]), cast(pair[1]));
            // `max_ps` gives its second operand when either is NaN.
            *m = f._mm512_max_ps(
                f._mm512_max_ps(f._mm512_abs_ps(lo), zero),
                f._mm512_max_ps(f._mm512_abs_ps(hi), zero),
            );
        }
        let amax = across::<Max>(simd, magnitudes);
        let d = f._mm512_div_ps(amax, f._mm512_set1_ps(((1 << 7) - 1) as f32));
        let nonzero = f._mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(d, zero);
        let id: [f32; 16] = cast(f._mm512_maskz_div_ps(nonzero, f._mm512_set1_ps(1.0), d));
        let d16 = to_f16(simd, d);
        let mut sums = [zero; 16];
        for (i, pair) in halves.chunks_exact(2).enumerate() {
            let vid = f._mm512_set1_ps(id[i]);
            let (ql, qh) = (
                round16(simd, cast(pair[0]), vid),
                round16(simd, cast(pair[1]), vid),
            );
            sums[i] = cast(f._mm512_add_epi32(ql, qh));
            let bytes: [__m128i; 2] = [f._mm512_cvtepi32_epi8(ql), f._mm512_cvtepi32_epi8(qh)];
            values[i] = cast(bytes);
        }
        let total: __m512i = cast(across::<AddI32>(simd, sums));
        let s = to_f16(
            simd,
            f._mm512_mul_ps(to_f16(simd, f._mm512_cvtepi32_ps(total)), d16),
        );
        scale.copy_from_slice(&cast::<__m512, [f32; 16]>(d16));
        sum.copy_from_slice(&cast::<__m512, [f32; 16]>(s));
    }

    /// Each lane rounded to f16 (to nearest, ties to even) and back.
    #[inline(always)]
    fn to_f16(simd: V4, v: __m512) -> __m512 {
        let f = simd.avx512f;
        f._mm512_cvtph_ps(f._mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
    }

    /// [`quantize_block`] as a [`super::BlockRule`].
    pub(super) struct OneBlock(pub(super) V4);

    impl super::BlockRule for OneBlock {
        #[inline(always)]
        fn block(&self, xs: &[f32; BLOCK]) -> ([i8; BLOCK], f32, f32) {
            quantize_block(self.0, xs)
        }
    }

    /// [`super::quantize_block`] on AVX-512, with the same bits: the largest magnitude is a
    /// maximum (any order gives it; NaN counts as 0, as `f32::max` ignores it), the scale
    /// and its inverse are the same scalar steps, the values the same rule lane by lane, their
    /// sum an exact integer.
    #[inline(always)]
    fn quantize_block(simd: V4, xs: &[f32; BLOCK]) -> ([i8; BLOCK], f32, f32) {
        let f = simd.avx512f;
        let halves: [[f32; 16]; 2] = cast(*xs);
        let (lo, hi): (__m512, __m512) = (cast(halves[0]), cast(halves[1]));
        let zero = f._mm512_setzero_ps();
        // `max_ps` gives its second operand when either is NaN.
        let a = f._mm512_max_ps(
            f._mm512_max_ps(f._mm512_abs_ps(lo), zero),
            f._mm512_max_ps(f._mm512_abs_ps(hi), zero),
        );
        let amax = f._mm512_reduce_max_ps(a);
        let d = amax / ((1 << 7) - 1) as f32;
        let id = if d != 0f32 { 1. / d } else { 0. };
        let d16 = f16::from_f32(d);
        let vid = f._mm512_set1_ps(id);
        let (ql, qh) = (round16(simd, lo, vid), round16(simd, hi, vid));
        let sum = f._mm512_reduce_add_epi32(f._mm512_add_epi32(ql, qh));
        let bytes: [__m128i; 2] = [f._mm512_cvtepi32_epi8(ql), f._mm512_cvtepi32_epi8(qh)];
        let s = f16::from_f32(sum as f32) * d16;
        (cast(bytes), d16.to_f32(), s.to_f32())
    }
}

/// Sixteen f16 values (raw bits) to f32, exactly, on AVX-512 (`vcvtph2ps`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn f16x16_avx512(simd: pulp::x86::V4, h: [u16; 16]) -> core::arch::x86_64::__m512 {
    use core::arch::x86_64::__m256i;
    simd.avx512f
        ._mm512_cvtph_ps(pulp::bytemuck::cast::<_, __m256i>(h))
}

/// Sixteen f16 values (raw bits) to f32, exactly, four to a NEON vector.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub(crate) fn f16x16_neon(h: [u16; 16]) -> [core::arch::aarch64::float32x4_t; 4] {
    let mut f = [0f32; 16];
    for (f, h) in f.iter_mut().zip(h) {
        *f = f16::from_bits(h).to_f32();
    }
    bytemuck::cast(f)
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

    #[test]
    fn every_path_quantizes_to_the_same_bits() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut x: Vec<f32> = Vec::new();
        for scale in [0.0f32, 1e-38, 1e-6, 1.0, 70.0, 3e38] {
            x.extend((0..BLOCK * 8).map(|_| (rng.f32() - 0.5) * scale));
        }
        // Blocks of halves, of NaN, of infinities, a block all zero but one tiny value.
        x.extend((0..BLOCK).map(|i| i as f32 - 15.5));
        x.extend((0..BLOCK).map(|i| if i % 3 == 0 { f32::NAN } else { i as f32 }));
        x.extend((0..BLOCK).map(|i| if i == 7 { f32::NEG_INFINITY } else { 1.0 }));
        x.extend((0..BLOCK).map(|i| if i == 5 { 1e-45 } else { 0.0 }));
        x.extend([f32::NAN; BLOCK]);
        x.extend((0..BLOCK).map(|i| if i == 9 { f32::INFINITY } else { 0.0 }));
        let k = BLOCK * 2;
        x.truncate(x.len() / k * k);
        // As made (AVX-512 takes sixteen blocks at a time: the odd blocks come last, in the
        // blocks it takes one by one), and in reverse block order (they come first).
        let reversed: Vec<f32> = x.chunks_exact(BLOCK).rev().flatten().copied().collect();
        // One buffer for every run (what it held is overwritten), the rows split over one to
        // three threads.
        let mut got = Q8Rows::default();
        for x in [x, reversed] {
            let want = Q8Rows::of(&x, k);
            for isa in crate::model::kernel::Kernel::available() {
                for count in 1..=3 {
                    let threads = Threads::new(count).expect("threads");
                    let kernel = Kernel::new(isa).expect("available");
                    threads.install(|| got.quantize_on(&x, k, kernel, &threads));
                    assert_eq!(got.values, want.values, "{isa}, {count} threads");
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got.scale),
                        bits(&want.scale),
                        "{isa}, {count} threads"
                    );
                    assert_eq!(bits(&got.sum), bits(&want.sum), "{isa}, {count} threads");
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
