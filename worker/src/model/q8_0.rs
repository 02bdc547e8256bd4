//! The Q8_0 weight product (the output layer and tied embedding of `smollm2`, and whole Q8_0
//! files), every output with the bits of candle's `vec_dot_unopt` (ggml's generic
//! `vec_dot_q8_0_q8_0`): `acc = acc + (sumi_b * d_w) * d_x` block by block, in order, unfused.
//! candle itself would pick an AVX/FMA kernel or this scalar one by build and CPU, and they
//! differ in the last bits; this module runs the scalar order on every path.
//!
//! Weights are repacked like Q4_1's ([`super::q4_1`]) into tiles of sixteen rows by one block,
//! f16 scales kept, the values interleaved two at a time: bytes `2i..2i + 2` of chunk `c` are row
//! `i`'s values `2c, 2c + 1`. Widened to i16, a chunk `madd`s against one pair of activation
//! values broadcast to every lane, giving each row's two products summed in i32: exact for every
//! i8 value, -128 included, and no horizontal reduction. On the AMX path (`tile_product.rs`) the tile
//! unit computes the integer sums of sixteen activation rows at once (`tdpbssd`, exact) and the
//! AVX-512 code's chain follows.

use super::kernel::{Kernel, Threads};
use super::q4_1::product;
use super::q8::{Q8Rows, BLOCK};
#[cfg(target_arch = "x86_64")]
use super::tile_product::AmxCall;
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

/// Bytes of one Q8_0 block in the file: `d` (f16), then 32 values.
const Q8_0_BYTES: usize = 34;

/// Weight rows in one repacked tile: the outputs a product computes at once.
const ROWS: usize = 16;

/// One block of sixteen weight rows: scales (f16 bits), then sixteen chunks of two values a row.
#[derive(Debug, Clone, Copy)]
struct Tile {
    d: [u16; ROWS],
    q: [[i8; 2 * ROWS]; BLOCK / 2],
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
        let tile_rows = n.div_ceil(ROWS);
        let mut tiles = Vec::with_capacity(tile_rows * blocks);
        for g in 0..tile_rows {
            for b in 0..blocks {
                let mut tile = Tile {
                    d: [0; ROWS],
                    q: [[0; 2 * ROWS]; BLOCK / 2],
                };
                for lane in 0..ROWS {
                    let Some(row) = rows.get(g * ROWS + lane) else {
                        continue;
                    };
                    let block = &row[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
                    tile.d[lane] = u16::from_le_bytes([block[0], block[1]]);
                    for (c, chunk) in tile.q.iter_mut().enumerate() {
                        chunk[2 * lane] = block[2 + 2 * c] as i8;
                        chunk[2 * lane + 1] = block[3 + 2 * c] as i8;
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
        let (g, lane) = (r / ROWS, r % ROWS);
        let tiles = &self.tiles[g * self.blocks..(g + 1) * self.blocks];
        let mut out = Vec::with_capacity(self.k);
        for t in tiles {
            let d = f16::from_bits(t.d[lane]).to_f32();
            for chunk in &t.q {
                out.push(f32::from(chunk[2 * lane]) * d);
                out.push(f32::from(chunk[2 * lane + 1]) * d);
            }
        }
        out
    }

    /// `x` (quantized rows of [`Q80Matrix::cols`]) times the transpose of this matrix, into
    /// `out` (resized; what it held is overwritten).
    pub fn matmul(&self, x: &Q8Rows, kernel: Kernel, threads: &Threads, out: &mut Vec<f32>) {
        debug_assert_eq!(x.blocks(), self.blocks);
        product(self.n, ROWS, x.rows(), threads, out, |g, out| {
            let tiles = &self.tiles[g * self.blocks..(g + 1) * self.blocks];
            match kernel {
                Kernel::Portable => portable_group(tiles, x, out),
                #[cfg(target_arch = "aarch64")]
                Kernel::Neon(simd) => simd.vectorize(NeonCall {
                    simd,
                    tiles,
                    x,
                    out,
                }),
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
                #[cfg(target_arch = "x86_64")]
                Kernel::Amx(simd, amx) => simd.vectorize(AmxCall::<avx512::Q80> {
                    simd,
                    amx,
                    tiles,
                    x,
                    out,
                }),
            }
        })
    }
}

/// The tile row in plain Rust, each chain in block order.
fn portable_group(tiles: &[Tile], x: &Q8Rows, out: &mut [f32]) {
    for (r, out) in out.chunks_exact_mut(ROWS).enumerate() {
        let mut acc = [0f32; ROWS];
        for (b, t) in tiles.iter().enumerate() {
            let (values, dx) = (x.values(r, b), x.scale(r, b));
            for (lane, acc) in acc.iter_mut().enumerate() {
                let mut sumi = 0i32;
                for (c, chunk) in t.q.iter().enumerate() {
                    sumi += i32::from(chunk[2 * lane]) * i32::from(values[2 * c])
                        + i32::from(chunk[2 * lane + 1]) * i32::from(values[2 * c + 1]);
                }
                let dw = f16::from_bits(t.d[lane]).to_f32();
                *acc += sumi as f32 * dw * dx;
            }
        }
        out.copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Q8Rows, Tile, ROWS};
    use crate::model::kernel::by_fours;
    use crate::model::q8::f16x8_avx2;
    use core::arch::x86_64::{__m128i, __m256};
    use pulp::bytemuck::cast;
    use pulp::x86::V3;

    /// Every row of `x` against the tile row, as two halves of eight outputs.
    #[inline(always)]
    pub(super) fn group(simd: V3, tiles: &[Tile], x: &Q8Rows, out: &mut [f32]) {
        for half in 0..2 {
            by_fours!(x.rows(), tile, simd, tiles, x, out, half);
        }
    }

    /// Rows `r0..r0 + R` against outputs `8 * half..8 * half + 8`: each chunk widened once per
    /// block for all of them.
    #[inline(always)]
    fn tile<const R: usize>(
        simd: V3,
        tiles: &[Tile],
        x: &Q8Rows,
        out: &mut [f32],
        half: usize,
        r0: usize,
    ) {
        let lanes = 8 * half..8 * half + 8;
        let mut acc: [__m256; R] = [simd.avx._mm256_setzero_ps(); R];
        for (b, t) in tiles.iter().enumerate() {
            // A plain loop, as in `q4_1`: `array::from_fn`'s closure may stay out of line.
            let mut w = [simd.avx._mm256_setzero_si256(); 16];
            for (c, w) in w.iter_mut().enumerate() {
                let bytes: [i8; 16] = t.q[c][16 * half..16 * half + 16].try_into().expect("16");
                *w = simd.avx2._mm256_cvtepi8_epi16(cast::<_, __m128i>(bytes));
            }
            let dw = f16x8_avx2(simd, t.d[lanes.clone()].try_into().expect("8"));
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = r0 + r;
                // The activation values widened to i16: lane `c` holds the pair `2c, 2c + 1`.
                let [lo, hi]: [__m128i; 2] = cast(*x.values(row, b));
                let pairs: [i32; 16] = cast([
                    simd.avx2._mm256_cvtepi8_epi16(lo),
                    simd.avx2._mm256_cvtepi8_epi16(hi),
                ]);
                let mut sum = simd.avx._mm256_setzero_si256();
                for (c, w) in w.iter().enumerate() {
                    let y = simd.avx._mm256_set1_epi32(pairs[c]);
                    sum = simd
                        .avx2
                        ._mm256_add_epi32(sum, simd.avx2._mm256_madd_epi16(*w, y));
                }
                let sumi = simd.avx._mm256_cvtepi32_ps(sum);
                let term = simd.avx._mm256_mul_ps(
                    simd.avx._mm256_mul_ps(sumi, dw),
                    simd.avx._mm256_set1_ps(x.scale(row, b)),
                );
                *acc = simd.avx._mm256_add_ps(*acc, term);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let v: [f32; 8] = cast(*acc);
            out[(r0 + r) * ROWS + 8 * half..][..8].copy_from_slice(&v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Q8Rows, Tile, ROWS};
    use crate::model::amx::WeightBytes;
    use crate::model::kernel::by_eights;
    use crate::model::q8::f16x16_avx512;
    use crate::model::tile_product::{block_term, Format};
    use core::arch::x86_64::{__m256i, __m512, __m512i};
    use pulp::bytemuck::cast;
    use pulp::x86::V4;

    /// Every row of `x` against the tile row, sixteen outputs a vector, eight rows a tile.
    #[inline(always)]
    pub(super) fn group(simd: V4, tiles: &[Tile], x: &Q8Rows, out: &mut [f32]) {
        Q80::rest(simd, tiles, x, out, 0);
    }

    #[inline(always)]
    fn tile<const R: usize>(simd: V4, tiles: &[Tile], x: &Q8Rows, out: &mut [f32], r0: usize) {
        let f = simd.avx512f;
        let bw = simd.avx512bw;
        let mut acc: [__m512; R] = [f._mm512_setzero_ps(); R];
        for (b, t) in tiles.iter().enumerate() {
            let mut w = [f._mm512_setzero_si512(); 16];
            for (c, w) in w.iter_mut().enumerate() {
                *w = bw._mm512_cvtepi8_epi16(cast::<_, __m256i>(t.q[c]));
            }
            let dw = Q80::scales(simd, t);
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = r0 + r;
                let pairs: [i32; 16] =
                    cast(bw._mm512_cvtepi8_epi16(cast::<_, __m256i>(*x.values(row, b))));
                let mut sum = f._mm512_setzero_si512();
                for (c, w) in w.iter().enumerate() {
                    let y = f._mm512_set1_epi32(pairs[c]);
                    sum = f._mm512_add_epi32(sum, bw._mm512_madd_epi16(*w, y));
                }
                Q80::chain(simd, acc, sum, dw, x, row, b);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let v: [f32; ROWS] = cast(*acc);
            out[(r0 + r) * ROWS..][..ROWS].copy_from_slice(&v);
        }
    }

    /// Q8_0 on AVX-512, and its part in the AMX path: the values laid out for the tiles (read
    /// signed), the scales and the chain.
    pub(super) struct Q80;

    impl Format for Q80 {
        type Tile = Tile;
        /// The scales of a tile block.
        type Scales = __m512;
        const BYTES: WeightBytes = WeightBytes::Signed;

        /// Value `v` of row `n` is byte `2n + v % 2` of chunk `v / 2`.
        #[inline(always)]
        fn unpack(t: &Tile, w: &mut [u8; 512]) {
            for (kk, row) in w.chunks_exact_mut(4 * ROWS).enumerate() {
                for (n, values) in row.chunks_exact_mut(4).enumerate() {
                    for (i, v) in values.iter_mut().enumerate() {
                        *v = t.q[2 * kk + i / 2][2 * n + i % 2] as u8;
                    }
                }
            }
        }

        #[inline(always)]
        fn scales(simd: V4, t: &Tile) -> __m512 {
            f16x16_avx512(simd, t.d)
        }

        /// `acc + (sumi * d_w) * d_x`, each operation rounded on its own.
        #[inline(always)]
        fn chain(
            simd: V4,
            acc: &mut __m512,
            sumi: __m512i,
            dw: __m512,
            x: &Q8Rows,
            row: usize,
            b: usize,
        ) {
            *acc = simd
                .avx512f
                ._mm512_add_ps(*acc, block_term(simd, sumi, dw, x.scale(row, b)));
        }

        #[inline(always)]
        fn rest(simd: V4, tiles: &[Tile], x: &Q8Rows, out: &mut [f32], from: usize) {
            by_eights!(from from, x.rows(), tile, simd, tiles, x, out);
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{Q8Rows, Tile, ROWS};
    use crate::model::kernel::by_fours;
    use crate::model::q8::f16x16_neon;
    use bytemuck::cast;
    use core::arch::aarch64::{float32x4_t, int32x4_t, int8x16_t};
    use pulp::aarch64::Neon;

    /// Every row of `x` against the tile row, four rows a tile.
    #[inline(always)]
    pub(super) fn group(simd: Neon, tiles: &[Tile], x: &Q8Rows, out: &mut [f32]) {
        by_fours!(x.rows(), tile, simd, tiles, x, out);
    }

    /// Rows `r0..r0 + R` against the tile row: per row and block, the sixteen outputs' exact
    /// integer sums (each product widened to i16, at most 16,384, and added pairwise into i32
    /// lanes), then candle's chain four outputs a vector, unfused.
    #[inline(always)]
    fn tile<const R: usize>(simd: Neon, tiles: &[Tile], x: &Q8Rows, out: &mut [f32], r0: usize) {
        let n = simd.neon;
        let mut acc: [[float32x4_t; 4]; R] = [[n.vdupq_n_f32(0.0); 4]; R];
        for (b, t) in tiles.iter().enumerate() {
            // Chunk `c` holds, for each weight row `lane`, its values `2c, 2c + 1` at bytes
            // `2 * lane, 2 * lane + 1`: lanes 0-7 in its first sixteen bytes, 8-15 in the rest.
            let mut w = [[n.vdupq_n_s8(0); 2]; BLOCK_PAIRS];
            for (c, w) in w.iter_mut().enumerate() {
                *w = cast(t.q[c]);
            }
            let dw = f16x16_neon(t.d);
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = r0 + r;
                let pairs: [u16; BLOCK_PAIRS] = cast(*x.values(row, b));
                let mut sums: [int32x4_t; 4] = [n.vdupq_n_s32(0); 4];
                for (c, w) in w.iter().enumerate() {
                    let y: int8x16_t = n.vreinterpretq_s8_u16(n.vdupq_n_u16(pairs[c]));
                    for (half, w) in w.iter().enumerate() {
                        let (a, b) = (&mut sums[2 * half..2 * half + 2], *w);
                        a[0] = n.vpadalq_s16(a[0], n.vmull_s8(n.vget_low_s8(b), n.vget_low_s8(y)));
                        a[1] = n.vpadalq_s16(a[1], n.vmull_high_s8(b, y));
                    }
                }
                let dx = n.vdupq_n_f32(x.scale(row, b));
                for (acc, (sumi, dw)) in acc.iter_mut().zip(sums.iter().zip(dw)) {
                    // (sumi * d_w) * d_x, unfused, then added to the chain.
                    let term = n.vmulq_f32(n.vmulq_f32(n.vcvtq_f32_s32(*sumi), dw), dx);
                    *acc = n.vaddq_f32(*acc, term);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let v: [f32; ROWS] = cast(*acc);
            out[(r0 + r) * ROWS..][..ROWS].copy_from_slice(&v);
        }
    }

    /// Chunks of a block: one per pair of values.
    const BLOCK_PAIRS: usize = crate::model::q8::BLOCK / 2;
}

// As in `q4_1`: plain calls for pulp's `vectorize`, inlined into it.
#[cfg(target_arch = "aarch64")]
crate::model::kernel::simd_call!(NeonCall, pulp::aarch64::Neon, Tile, neon::group);
#[cfg(target_arch = "x86_64")]
crate::model::kernel::simd_call!(Avx2Call, pulp::x86::V3, Tile, avx2::group);
#[cfg(target_arch = "x86_64")]
crate::model::kernel::simd_call!(Avx512Call, pulp::x86::V4, Tile, avx512::group);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::q4_1::dirty;
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
            for m in (1..=9).chain([16, 17, 33]) {
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
                        let got = threads
                            .install(|| dirty(|out| matrix.matmul(&acts, kernel, threads, out)));
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
        for r in 0..ROWS {
            for _ in 0..k / BLOCK {
                raw.extend(f16::from_f32(0.5).to_le_bytes());
                raw.extend([if r % 2 == 0 { 0x80u8 } else { 0x7F }; BLOCK]);
            }
        }
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            GgmlDType::Q8_0,
            &raw,
            vec![ROWS, k],
            &Device::Cpu,
        )
        .expect("raw Q8_0");
        let matrix = Q80Matrix::stacked(&[&q]).expect("repack");
        // Seventeen activation rows (AMX's tile of sixteen and one more) of -128.
        let acts = Q8Rows::from_parts(2, vec![[-128; BLOCK]; 2 * 17], vec![0.25; 2 * 17]);
        let threads = Threads::new(1).expect("one");
        for isa in Kernel::available() {
            let got =
                dirty(|out| matrix.matmul(&acts, Kernel::new(isa).expect("path"), &threads, out));
            assert_eq!(got.len(), 17 * ROWS);
            for (i, v) in got.iter().enumerate() {
                let r = i % ROWS;
                let w = if r.is_multiple_of(2) { -128i32 } else { 127 };
                let sumi = (32 * w * -128) as f32;
                let want = (0f32 + sumi * 0.5 * 0.25) + sumi * 0.5 * 0.25;
                assert_eq!(v.to_bits(), want.to_bits(), "{isa} row {r}");
            }
        }
    }
}
