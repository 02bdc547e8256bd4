//! A Q4_1 matrix product that gives candle's answer, fast.
//!
//! candle-core 0.11 multiplies Q4_1 weights with its generic scalar `vec_dot` (no SIMD for this
//! format on the CPU): that one function was 85% of a `smollm2` generation. This module computes
//! the same thing the same way, bit for bit, and only does the exact part faster:
//!
//! - the activations are quantized to Q8_1 exactly as candle's `quantize_row_q8_1` does (the same
//!   f32 scale, rounding and saturating casts, the block sum scaled in f16);
//! - per 32-value block, the integer dot product `sum(q4 * q8)` is exact whatever the order, so
//!   it runs on AVX2 (`maddubs`/`madd`, eight blocks at a time) where the CPU has it, through
//!   `pulp`'s checked dispatch;
//! - each block's float term, `sumi * d_w * d_x + m_w * s_x`, is the same sequence of f32
//!   operations as candle's (multiplications and one addition, never fused), computed for eight
//!   blocks in one vector, and the terms are added to the row's sum in block order, one by one,
//!   as candle adds them.
//!
//! Every output element is one such dot product, so splitting the outputs over threads changes
//! nothing either. `tests` check the results against candle's own product bit for bit.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use rayon::prelude::*;

/// Values per block.
const BLOCK: usize = 32;
/// Bytes of one Q4_1 block in candle's layout: `d` and `m` (f16), then 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;
/// Below this many blocks per output row, one thread does the row: splitting costs more.
const PARALLEL_BLOCKS: usize = 2048;

/// A Q4_1 weight matrix of `n` rows (outputs) by `k` columns, unpacked for the product: the
/// nibbles of each block together, and the block scales and minimums as the f32 values candle
/// converts them to.
#[derive(Debug)]
pub struct Q41Matrix {
    n: usize,
    k: usize,
    blocks_per_row: usize,
    nibbles: Vec<[u8; 16]>,
    scale: Vec<f32>,
    min: Vec<f32>,
}

impl Q41Matrix {
    /// Unpacks a Q4_1 tensor of shape `(n, k)`.
    ///
    /// # Errors
    /// When the tensor is not Q4_1 or not two-dimensional with `k` a multiple of 32.
    pub fn from_qtensor(t: &QTensor) -> candle_core::Result<Self> {
        if t.dtype() != GgmlDType::Q4_1 {
            candle_core::bail!("not a Q4_1 tensor: {:?}", t.dtype());
        }
        let (n, k) = t.shape().dims2()?;
        if k % BLOCK != 0 {
            candle_core::bail!("Q4_1 rows of {k} values are not whole blocks");
        }
        let data = t.data()?;
        let blocks = n * k / BLOCK;
        if data.len() != blocks * Q4_1_BYTES {
            candle_core::bail!("{} bytes for {blocks} Q4_1 blocks", data.len());
        }
        let mut m = Self {
            n,
            k,
            blocks_per_row: k / BLOCK,
            nibbles: Vec::with_capacity(blocks),
            scale: Vec::with_capacity(blocks),
            min: Vec::with_capacity(blocks),
        };
        for b in data.chunks_exact(Q4_1_BYTES) {
            m.scale.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
            m.min.push(f16::from_le_bytes([b[2], b[3]]).to_f32());
            m.nibbles
                .push(b[4..20].try_into().expect("16 bytes of nibbles"));
        }
        Ok(m)
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// `x` (`m` rows of `k`) times the transpose of this matrix: `m` rows of `n`. Outputs are
    /// split over rayon's threads (`RAYON_NUM_THREADS`) when there is enough work; called from
    /// inside its pool (as [`super::chat`] does), the caller works too instead of waiting.
    pub fn matmul(&self, x: &[f32]) -> Vec<f32> {
        let m = x.len() / self.k;
        let mut out = vec![0f32; m * self.n];
        let simd = Kernel::detect();
        let acts: Vec<Q81> = x.chunks_exact(self.k).map(Q81::quantize).collect();
        let fill = |act: &Q81, first: usize, part: &mut [f32]| {
            for (j, o) in part.iter_mut().enumerate() {
                *o = self.dot(first + j, act, simd);
            }
        };
        let threads = rayon::current_num_threads();
        let serial = threads == 1 || self.n * self.blocks_per_row < PARALLEL_BLOCKS;
        for (act, row) in acts.iter().zip(out.chunks_mut(self.n)) {
            if serial {
                fill(act, 0, row);
                continue;
            }
            let chunk = self.n.div_ceil(threads * 4).max(16);
            row.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(c, part)| fill(act, c * chunk, part));
        }
        out
    }

    /// One output: weight row `r` against the quantized activations.
    fn dot(&self, r: usize, act: &Q81, simd: Kernel) -> f32 {
        let at = r * self.blocks_per_row..(r + 1) * self.blocks_per_row;
        let w = Blocks {
            nibbles: &self.nibbles[at.clone()],
            scale: &self.scale[at.clone()],
            min: &self.min[at],
        };
        simd.dot(&w, act)
    }
}

/// One row's Q4_1 blocks.
struct Blocks<'a> {
    nibbles: &'a [[u8; 16]],
    scale: &'a [f32],
    min: &'a [f32],
}

/// One row of activations in Q8_1, as candle quantizes it (its `BlockQ8_1::from_float`).
#[derive(Debug, Clone, PartialEq)]
pub struct Q81 {
    values: Vec<[i8; 32]>,
    scale: Vec<f32>,
    sum: Vec<f32>,
}

impl Q81 {
    /// Quantizes `x` (a multiple of 32 values) block by block.
    pub fn quantize(x: &[f32]) -> Self {
        let blocks = x.len() / BLOCK;
        let mut q = Self {
            values: Vec::with_capacity(blocks),
            scale: Vec::with_capacity(blocks),
            sum: Vec::with_capacity(blocks),
        };
        for xs in x.chunks_exact(BLOCK) {
            let mut amax = 0f32;
            for &v in xs {
                amax = amax.max(v.abs());
            }
            let d = amax / ((1 << 7) - 1) as f32;
            let id = if d != 0f32 { 1. / d } else { 0. };
            let d16 = f16::from_f32(d);
            let mut values = [0i8; 32];
            let mut sum = 0i32;
            for j in 0..BLOCK / 2 {
                let v0 = xs[j] * id;
                let v1 = xs[j + BLOCK / 2] * id;
                values[j] = f32::round(v0) as i8;
                values[j + BLOCK / 2] = f32::round(v1) as i8;
                sum += values[j] as i32 + values[j + BLOCK / 2] as i32;
            }
            q.values.push(values);
            q.scale.push(d16.to_f32());
            q.sum.push((f16::from_f32(sum as f32) * d16).to_f32());
        }
        q
    }
}

/// The integer part of one block: `sum(q4 * q8)`, exact.
fn block_sum(nibbles: &[u8; 16], values: &[i8; 32]) -> i32 {
    let mut sum = 0i32;
    for j in 0..16 {
        let lo = i32::from(nibbles[j] & 0x0F);
        let hi = i32::from(nibbles[j] >> 4);
        sum += lo * i32::from(values[j]) + hi * i32::from(values[j + 16]);
    }
    sum
}

/// Which dot product runs: AVX2 where the CPU has it, else portable code.
#[derive(Debug, Clone, Copy)]
pub enum Kernel {
    /// Plain Rust, one block at a time.
    Portable,
    /// AVX2, eight blocks at a time.
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return Kernel::Avx2(simd);
        }
        Kernel::Portable
    }

    fn dot(self, w: &Blocks<'_>, act: &Q81) -> f32 {
        match self {
            Kernel::Portable => portable_dot(w, act),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(simd) => simd.vectorize(
                #[inline(always)]
                || avx2::dot(simd, w, act),
            ),
        }
    }
}

/// One dot product, its blocks' terms added in order, exactly as candle adds them.
fn portable_dot(w: &Blocks<'_>, act: &Q81) -> f32 {
    let mut sumf = 0f32;
    for b in 0..w.nibbles.len() {
        let sumi = block_sum(&w.nibbles[b], &act.values[b]);
        sumf += sumi as f32 * w.scale[b] * act.scale[b] + w.min[b] * act.sum[b];
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Blocks, Q81};
    use core::arch::x86_64::{__m128i, __m256, __m256i};
    use pulp::bytemuck::cast;
    use pulp::x86::V3;

    /// The block sums of the (up to) eight blocks starting at `b`, as eight i32 lanes; lanes
    /// past the last block are zero.
    #[inline(always)]
    fn eight_sums(simd: V3, w: &Blocks<'_>, act: &Q81, b: usize) -> __m256i {
        let low = simd.sse2._mm_set1_epi8(0x0F);
        let ones = simd.avx._mm256_set1_epi16(1);
        let n = w.nibbles.len();
        let sums: [__m256i; 8] = core::array::from_fn(|i| {
            if b + i >= n {
                return cast([0i32; 8]);
            }
            let q: __m128i = cast(w.nibbles[b + i]);
            let lo = simd.sse2._mm_and_si128(q, low);
            let hi = simd
                .sse2
                ._mm_and_si128(simd.sse2._mm_srli_epi16::<4>(q), low);
            // Nibbles 0..16 meet values 0..16, high nibbles values 16..32.
            let x = simd.avx._mm256_set_m128i(hi, lo);
            let y: __m256i = cast(act.values[b + i]);
            // u8 x i8 pairs into i16 (at most 2 * 15 * 128: no saturation), then into i32.
            let pairs = simd.avx2._mm256_maddubs_epi16(x, y);
            simd.avx2._mm256_madd_epi16(pairs, ones)
        });
        let a = simd.avx2._mm256_hadd_epi32(sums[0], sums[1]);
        let c = simd.avx2._mm256_hadd_epi32(sums[2], sums[3]);
        let e = simd.avx2._mm256_hadd_epi32(sums[4], sums[5]);
        let g = simd.avx2._mm256_hadd_epi32(sums[6], sums[7]);
        let ac = simd.avx2._mm256_hadd_epi32(a, c);
        let eg = simd.avx2._mm256_hadd_epi32(e, g);
        let lo = simd.avx2._mm256_permute2x128_si256::<0x20>(ac, eg);
        let hi = simd.avx2._mm256_permute2x128_si256::<0x31>(ac, eg);
        simd.avx2._mm256_add_epi32(lo, hi)
    }

    #[inline(always)]
    pub(super) fn dot(simd: V3, w: &Blocks<'_>, act: &Q81) -> f32 {
        let n = w.nibbles.len();
        let mut sumf = 0f32;
        let mut b = 0;
        while b < n {
            let take = (n - b).min(8);
            let sumi = simd.avx._mm256_cvtepi32_ps(eight_sums(simd, w, act, b));
            // The scales of the blocks taken, zeros after them (their terms are not added).
            let f8 = |s: &[f32]| -> __m256 {
                if take == 8 {
                    return cast(<[f32; 8]>::try_from(&s[b..b + 8]).expect("eight"));
                }
                let mut lanes = [0f32; 8];
                for (lane, v) in lanes.iter_mut().zip(&s[b..b + take]) {
                    *lane = *v;
                }
                cast(lanes)
            };
            // sumi * d_w * d_x + m_w * s_x, in candle's order, unfused.
            let t = simd
                .avx
                ._mm256_mul_ps(simd.avx._mm256_mul_ps(sumi, f8(w.scale)), f8(&act.scale));
            let t = simd
                .avx
                ._mm256_add_ps(t, simd.avx._mm256_mul_ps(f8(w.min), f8(&act.sum)));
            let terms: [f32; 8] = cast(t);
            for term in &terms[..take] {
                sumf += term;
            }
            b += take;
        }
        sumf
    }
}

/// The product as a candle operation on the activations: `x (.., k)` times `W^T`.
#[derive(Debug)]
pub struct Q41MatMul<'a>(pub &'a Q41Matrix);

impl CustomOp1 for Q41MatMul<'_> {
    fn name(&self) -> &'static str {
        "q4_1-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else {
            candle_core::bail!("q4_1 matmul takes f32 activations");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("q4_1 matmul takes contiguous activations");
        };
        let dims = layout.shape().dims();
        if dims.last() != Some(&self.0.k) {
            candle_core::bail!("activations {dims:?} do not end in {}", self.0.k);
        }
        let out = self.0.matmul(&x[start..end]);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("a last dimension") = self.0.n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.f32() * 2.0 - 1.0).collect()
    }

    /// The product equals candle's own Q4_1 product bit for bit, on both kernels, for one row
    /// (generation) and several (a prompt), with block counts that do and do not fill the
    /// eight-block vector.
    #[test]
    fn the_product_is_candles_bit_for_bit() {
        let dev = Device::Cpu;
        for (m, k, n) in [
            (1, 576, 192),
            (5, 576, 64),
            (1, 1536, 40),
            (3, 64, 33),
            (2, 320, 17),
        ] {
            let w = Tensor::from_vec(random(n * k, 7), (n, k), &dev).expect("w");
            let q = QTensor::quantize(&w, GgmlDType::Q4_1).expect("quantize");
            let ours = Q41Matrix::from_qtensor(&q).expect("unpack");
            let x = Tensor::from_vec(random(m * k, 11), (m, k), &dev).expect("x");
            let want: Vec<f32> = QMatMul::from_qtensor(q)
                .expect("qmatmul")
                .forward(&x)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .expect("candle's product");
            let got: Vec<f32> = x
                .apply_op1_no_bwd(&Q41MatMul(&ours))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .expect("ours");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "({m}, {k}, {n})");
            // The portable kernel too, output by output.
            let xs = x.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("x");
            for (i, row) in xs.chunks_exact(k).enumerate() {
                let act = Q81::quantize(row);
                for r in 0..n {
                    let p = ours.dot(r, &act, Kernel::Portable);
                    assert_eq!(
                        p.to_bits(),
                        want[i * n + r].to_bits(),
                        "portable ({m}, {k}, {n})"
                    );
                }
            }
        }
    }

    #[test]
    fn the_block_sums_cover_the_integer_range_exactly() {
        // Extreme nibbles and values: 15 * 127 and 15 * -128 in every lane.
        let nibbles = [0xFF; 16];
        for v in [127i8, -128] {
            let values = [v; 32];
            assert_eq!(block_sum(&nibbles, &values), 32 * 15 * i32::from(v));
        }
    }
}
