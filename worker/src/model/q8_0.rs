//! The Q8_0 weight product (the output layer and tied embedding of `smollm2`, and whole Q8_0
//! files), every output with the bits of candle's `vec_dot_unopt` (ggml's generic
//! `vec_dot_q8_0_q8_0`): `acc = acc + (sumi_b * d_w) * d_x` block by block, in order, unfused.
//! candle itself would pick an AVX/FMA kernel or this scalar one by build and CPU, and they
//! differ in the last bits; this module runs the scalar order on every path.
//!
//! Weights are repacked like Q4_1's ([`super::q4_1`]): eight rows interleaved per block, f16
//! scales kept. The integer dot products widen both sides to i16 and multiply-add pairs into
//! i32 (`madd`), exact for every i8 value, -128 included.

use super::kernel::{Kernel, Threads};
use super::q4_1::product;
use super::q8::{Q8Rows, BLOCK};
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

/// Bytes of one Q8_0 block in the file: `d` (f16), then 32 values.
const Q8_0_BYTES: usize = 34;

/// Weight rows interleaved in one repacked block: the outputs a product computes at once.
const GROUP: usize = 8;

/// One block of a group of eight weight rows.
#[derive(Debug, Clone, Copy)]
struct Tile {
    d: [u16; GROUP],
    q: [[i8; BLOCK]; GROUP],
}

/// A Q8_0 weight matrix of `n` rows (outputs) by `k` columns, repacked for the product.
#[derive(Debug)]
pub struct Q80Matrix {
    n: usize,
    k: usize,
    blocks: usize,
    tiles: Vec<Tile>,
}

impl Q80Matrix {
    /// Repacks Q8_0 tensors of one width stacked by rows, as one matrix.
    ///
    /// # Errors
    /// A part that is not Q8_0, or parts of different widths.
    pub fn stacked(parts: &[&QTensor]) -> candle_core::Result<Self> {
        let mut datas = Vec::with_capacity(parts.len());
        let mut k = None;
        for t in parts {
            if t.dtype() != GgmlDType::Q8_0 {
                candle_core::bail!("not a Q8_0 tensor: {:?}", t.dtype());
            }
            let (n, cols) = t.shape().dims2()?;
            if cols % BLOCK != 0 || *k.get_or_insert(cols) != cols {
                candle_core::bail!("Q8_0 rows of {cols} values cannot be stacked here");
            }
            let data = t.data()?;
            if data.len() != n * cols / BLOCK * Q8_0_BYTES {
                candle_core::bail!("{} bytes for {n} Q8_0 rows of {cols}", data.len());
            }
            datas.push(data);
        }
        let k = k.unwrap_or(0);
        let row_bytes = (k / BLOCK * Q8_0_BYTES).max(1);
        let rows: Vec<&[u8]> = datas
            .iter()
            .flat_map(|d| d.chunks_exact(row_bytes))
            .collect();
        let (n, blocks) = (rows.len(), k / BLOCK);
        let groups = n.div_ceil(GROUP);
        let mut tiles = Vec::with_capacity(groups * blocks);
        for g in 0..groups {
            for b in 0..blocks {
                let mut tile = Tile {
                    d: [0; GROUP],
                    q: [[0; BLOCK]; GROUP],
                };
                for lane in 0..GROUP {
                    let Some(row) = rows.get(g * GROUP + lane) else {
                        continue;
                    };
                    let block = &row[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
                    tile.d[lane] = u16::from_le_bytes([block[0], block[1]]);
                    for (q, &byte) in tile.q[lane].iter_mut().zip(&block[2..]) {
                        *q = byte as i8;
                    }
                }
                tiles.push(tile);
            }
        }
        Ok(Self {
            n,
            k,
            blocks,
            tiles,
        })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.k
    }

    /// Row `r` dequantized as candle does (`q * d`): a token's embedding.
    pub fn row(&self, r: usize) -> Vec<f32> {
        let (g, lane) = (r / GROUP, r % GROUP);
        let tiles = &self.tiles[g * self.blocks..(g + 1) * self.blocks];
        tiles
            .iter()
            .flat_map(|t| {
                let d = f16::from_bits(t.d[lane]).to_f32();
                t.q[lane].iter().map(move |&q| f32::from(q) * d)
            })
            .collect()
    }

    /// `x` (quantized rows of [`Q80Matrix::cols`]) times the transpose of this matrix.
    pub fn matmul(&self, x: &Q8Rows, kernel: Kernel, threads: &Threads) -> Vec<f32> {
        debug_assert_eq!(x.blocks(), self.blocks);
        product(self.n, GROUP, x.rows(), threads, |g, out| {
            let tiles = &self.tiles[g * self.blocks..(g + 1) * self.blocks];
            match kernel {
                Kernel::Portable => portable_group(tiles, x, out),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2(simd) => simd.vectorize(Avx2Call {
                    simd,
                    tiles,
                    x,
                    out,
                }),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512(simd) => simd.vectorize(Avx512Call {
                    simd,
                    tiles,
                    x,
                    out,
                }),
            }
        })
    }
}

/// The group in plain Rust, each chain in block order.
fn portable_group(tiles: &[Tile], x: &Q8Rows, out: &mut [f32]) {
    for (r, out) in out.chunks_exact_mut(GROUP).enumerate() {
        let mut acc = [0f32; GROUP];
        for (b, t) in tiles.iter().enumerate() {
            let (values, dx) = (x.values(r, b), x.scale(r, b));
            for (lane, acc) in acc.iter_mut().enumerate() {
                let sumi: i32 = t.q[lane]
                    .iter()
                    .zip(values)
                    .map(|(&w, &v)| i32::from(w) * i32::from(v))
                    .sum();
                let dw = f16::from_bits(t.d[lane]).to_f32();
                *acc += sumi as f32 * dw * dx;
            }
        }
        out.copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Q8Rows, Tile, GROUP};
    use crate::model::q8::f16x8_avx2;
    use core::arch::x86_64::{__m128i, __m256, __m256i};
    use pulp::bytemuck::cast;
    use pulp::x86::V3;

    /// Eight vectors of eight i32 partial sums to the eight sums, lane `i` from vector `i`.
    #[inline(always)]
    fn reduce8(simd: V3, s: [__m256i; 8]) -> __m256i {
        let a = simd.avx2._mm256_hadd_epi32(s[0], s[1]);
        let c = simd.avx2._mm256_hadd_epi32(s[2], s[3]);
        let e = simd.avx2._mm256_hadd_epi32(s[4], s[5]);
        let g = simd.avx2._mm256_hadd_epi32(s[6], s[7]);
        let ac = simd.avx2._mm256_hadd_epi32(a, c);
        let eg = simd.avx2._mm256_hadd_epi32(e, g);
        let lo = simd.avx2._mm256_permute2x128_si256::<0x20>(ac, eg);
        let hi = simd.avx2._mm256_permute2x128_si256::<0x31>(ac, eg);
        simd.avx2._mm256_add_epi32(lo, hi)
    }

    /// Both halves of 32 i8 values widened to i16.
    #[inline(always)]
    fn widen(simd: V3, v: [i8; 32]) -> (__m256i, __m256i) {
        let [lo, hi]: [__m128i; 2] = cast(v);
        (
            simd.avx2._mm256_cvtepi8_epi16(lo),
            simd.avx2._mm256_cvtepi8_epi16(hi),
        )
    }

    #[inline(always)]
    pub(super) fn group(simd: V3, tiles: &[Tile], x: &Q8Rows, out: &mut [f32]) {
        let m = x.rows();
        let mut r = 0;
        while r + 4 <= m {
            tile::<4>(simd, tiles, x, r, out);
            r += 4;
        }
        match m - r {
            3 => tile::<3>(simd, tiles, x, r, out),
            2 => tile::<2>(simd, tiles, x, r, out),
            1 => tile::<1>(simd, tiles, x, r, out),
            _ => {}
        }
    }

    #[inline(always)]
    fn tile<const R: usize>(simd: V3, tiles: &[Tile], x: &Q8Rows, r0: usize, out: &mut [f32]) {
        let mut acc: [__m256; R] = [simd.avx._mm256_setzero_ps(); R];
        for (b, t) in tiles.iter().enumerate() {
            let ys: [(__m256i, __m256i); R] =
                core::array::from_fn(|r| widen(simd, *x.values(r0 + r, b)));
            let mut s = [[simd.avx._mm256_setzero_si256(); GROUP]; R];
            for (i, q) in t.q.iter().enumerate() {
                let (wl, wh) = widen(simd, *q);
                for (s, y) in s.iter_mut().zip(&ys) {
                    s[i] = simd.avx2._mm256_add_epi32(
                        simd.avx2._mm256_madd_epi16(wl, y.0),
                        simd.avx2._mm256_madd_epi16(wh, y.1),
                    );
                }
            }
            let dw = f16x8_avx2(simd, t.d);
            for (r, acc) in acc.iter_mut().enumerate() {
                let sumi = simd.avx._mm256_cvtepi32_ps(reduce8(simd, s[r]));
                let term = simd.avx._mm256_mul_ps(
                    simd.avx._mm256_mul_ps(sumi, dw),
                    simd.avx._mm256_set1_ps(x.scale(r0 + r, b)),
                );
                *acc = simd.avx._mm256_add_ps(*acc, term);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let lanes: [f32; GROUP] = cast(*acc);
            out[(r0 + r) * GROUP..][..GROUP].copy_from_slice(&lanes);
        }
    }
}

// pulp's `vectorize` runs a call with the CPU features enabled only when the call is inlined
// into it; a closure this large is not (its `FnOnce` shim is only an inline hint), and the
// intrinsics then become function calls. These plain calls are `#[inline(always)]`.
#[cfg(target_arch = "x86_64")]
crate::model::kernel::simd_call!(Avx2Call, pulp::x86::V3, Tile, avx2::group);
#[cfg(target_arch = "x86_64")]
crate::model::kernel::simd_call!(Avx512Call, pulp::x86::V4, Tile, avx2_on_v4);

/// The AVX2 group on an AVX-512 CPU (its 32 vector registers spill less).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn avx2_on_v4(simd: pulp::x86::V4, tiles: &[Tile], x: &Q8Rows, out: &mut [f32]) {
    avx2::group(*simd, tiles, x, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
    use candle_core::{Device, Tensor};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.f32() * 2.0 - 1.0).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// Every path, 1 to 9 rows, partial groups, 1 to 3 threads: candle's `vec_dot_unopt` bits;
    /// rows dequantized as candle dequantizes them.
    #[test]
    fn the_product_is_candles_vec_dot_unopt_bit_for_bit() {
        let pools: Vec<Threads> = (1..=3).map(|t| Threads::new(t).expect("pool")).collect();
        for (k, n) in [(576, 37), (64, 8), (96, 3)] {
            let w = random(n * k, 3 + n as u64);
            let mut wq = vec![BlockQ8_0::zeros(); n * k / BLOCK];
            BlockQ8_0::from_float(&w, &mut wq);
            let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).expect("w");
            let q = QTensor::quantize(&t, GgmlDType::Q8_0).expect("quantize");
            let matrix = Q80Matrix::stacked(&[&q]).expect("repack");
            let deq: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .expect("dequantized");
            for r in 0..n {
                assert_eq!(
                    bits(&matrix.row(r)),
                    bits(&deq[r * k..(r + 1) * k]),
                    "row {r}"
                );
            }
            let blocks = k / BLOCK;
            for m in 1..=9 {
                let x = random(m * k, 17 + m as u64);
                let mut xq = vec![BlockQ8_0::zeros(); m * blocks];
                BlockQ8_0::from_float(&x, &mut xq);
                let mut want = Vec::new();
                for xr in xq.chunks_exact(blocks) {
                    for r in 0..n {
                        want.push(BlockQ8_0::vec_dot_unopt(
                            k,
                            &wq[r * blocks..(r + 1) * blocks],
                            xr,
                        ));
                    }
                }
                let acts = Q8Rows::of(&x, k);
                for isa in Kernel::available() {
                    for threads in &pools {
                        let kernel = Kernel::new(isa).expect("path");
                        let got = threads.install(|| matrix.matmul(&acts, kernel, threads));
                        assert_eq!(bits(&got), bits(&want), "{isa}, m {m}, k {k}, n {n}");
                    }
                }
            }
        }
    }

    /// -128 and 127 on both sides, which a `maddubs` sign trick would get wrong: exact.
    #[test]
    fn extreme_values_are_exact() {
        let k = 64;
        let mut raw = Vec::new();
        for r in 0..GROUP {
            for _ in 0..k / BLOCK {
                raw.extend(f16::from_f32(0.5).to_le_bytes());
                raw.extend([if r % 2 == 0 { 0x80u8 } else { 0x7F }; BLOCK]);
            }
        }
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            GgmlDType::Q8_0,
            &raw,
            vec![GROUP, k],
            &Device::Cpu,
        )
        .expect("raw Q8_0");
        let matrix = Q80Matrix::stacked(&[&q]).expect("repack");
        let acts = Q8Rows::from_parts(2, vec![[-128; BLOCK], [-128; BLOCK]], vec![0.25, 0.25]);
        let threads = Threads::new(1).expect("one");
        for isa in Kernel::available() {
            let got = matrix.matmul(&acts, Kernel::new(isa).expect("path"), &threads);
            for (r, v) in got.iter().enumerate() {
                let w = if r % 2 == 0 { -128i32 } else { 127 };
                let sumi = (32 * w * -128) as f32;
                let want = (0f32 + sumi * 0.5 * 0.25) + sumi * 0.5 * 0.25;
                assert_eq!(v.to_bits(), want.to_bits(), "{isa} row {r}");
            }
        }
    }
}
