//! The Q4_1 weight product: several activation rows against each weight block, every output
//! with the bits of candle's `vec_dot_unopt` (ggml's generic `vec_dot_q4_1_q8_1`), whatever the
//! batch size, the thread count or the instruction set.
//!
//! At load the weights are repacked once into tiles of sixteen weight rows by one block
//! ([`ROWS`]), each row keeping its f16 scale and minimum as the file has them (20 bytes a block
//! a row). Inside a tile the nibbles are interleaved four values at a time: bytes `4i..4i + 4` of
//! each 64-byte chunk `j` are row `i`'s bytes `4j..4j + 4`, whose low nibbles are the block's
//! values `4j..4j + 4` and high nibbles values `16 + 4j..`. So one `maddubs` of a chunk against
//! four activation values broadcast to every lane advances all sixteen rows' integer sums at
//! once, and the sums never need a horizontal reduction. The activations are quantized once per
//! input ([`Q8Rows`], candle's Q8_1). Every output, one weight row against one activation row, is
//! then the chain candle computes:
//!
//! ```text
//! acc = 0; for each block b, in order: acc = acc + ((sumi_b * d_w) * d_x + m_w * s_x)
//! ```
//!
//! with `sumi_b` the block's integer dot product, exact in any order: a `maddubs` lane is two
//! products of at most 15 * 128, and eight such lanes add up to at most 30,720 < 2^15 before
//! they are widened to i32. Every float operation is rounded on its own (Rust never fuses a
//! multiply and an add). The outputs of a tile, times up to four (AVX2) or eight (AVX-512)
//! activation rows, advance together in vector lanes, each lane running the same chain, so the
//! vector paths give the portable code's bits, and the unpacked weights serve those rows per
//! load. Decode (one row) runs the same code with a tile of one row. On the AMX path
//! (`tile_product.rs`) the tile unit computes the `sumi_b` of sixteen activation rows at once
//! and the AVX-512 code's chain follows.

use super::kernel::{resize, Kernel, Threads};
use super::q8::{Q8Rows, BLOCK};
#[cfg(target_arch = "x86_64")]
use super::tile_product::AmxCall;
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

/// Bytes of one Q4_1 block in the file: `d` and `m` (f16), then 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;

/// Weight rows in one repacked tile: the outputs a product computes at once.
pub const ROWS: usize = 16;

/// One block of sixteen weight rows: their scales and minimums (f16 bits) and their nibbles,
/// four values of each row after another in each of four chunks.
#[derive(Debug, Clone, Copy)]
struct Tile {
    d: [u16; ROWS],
    m: [u16; ROWS],
    q: [[u8; 4 * ROWS]; 4],
}

/// A Q4_1 weight matrix of `n` rows (outputs) by `k` columns, repacked for the product.
#[derive(Debug)]
pub struct Q41Matrix {
    n: usize,
    k: usize,
    blocks: usize,
    /// Tile row `g`'s blocks at `g * blocks..(g + 1) * blocks`; rows past `n` are zero.
    tiles: Vec<Tile>,
}

impl Q41Matrix {
    /// Repacks a Q4_1 tensor of shape `(n, k)`.
    ///
    /// # Errors
    /// When the tensor is not Q4_1 or not two-dimensional with `k` a multiple of 32.
    pub fn from_qtensor(t: &QTensor) -> candle_core::Result<Self> {
        Self::stacked(&[t])
    }

    /// Repacks Q4_1 tensors of one width stacked by rows, as one matrix: the fused q/k/v or
    /// gate/up product, whose outputs are the parts' outputs side by side.
    ///
    /// # Errors
    /// A part that is not Q4_1, or parts of different widths.
    pub fn stacked(parts: &[&QTensor]) -> candle_core::Result<Self> {
        let mut datas = Vec::with_capacity(parts.len());
        let mut k = None;
        for t in parts {
            if t.dtype() != GgmlDType::Q4_1 {
                candle_core::bail!("not a Q4_1 tensor: {:?}", t.dtype());
            }
            let (n, cols) = t.shape().dims2()?;
            if cols % BLOCK != 0 || *k.get_or_insert(cols) != cols {
                candle_core::bail!("Q4_1 rows of {cols} values cannot be stacked here");
            }
            let data = t.data()?;
            if data.len() != n * cols / BLOCK * Q4_1_BYTES {
                candle_core::bail!("{} bytes for {n} Q4_1 rows of {cols}", data.len());
            }
            datas.push(data);
        }
        let k = k.unwrap_or(0);
        let row_bytes = (k / BLOCK * Q4_1_BYTES).max(1);
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
                    m: [0; ROWS],
                    q: [[0; 4 * ROWS]; 4],
                };
                for lane in 0..ROWS {
                    let Some(row) = rows.get(g * ROWS + lane) else {
                        continue;
                    };
                    let block = &row[b * Q4_1_BYTES..(b + 1) * Q4_1_BYTES];
                    tile.d[lane] = u16::from_le_bytes([block[0], block[1]]);
                    tile.m[lane] = u16::from_le_bytes([block[2], block[3]]);
                    for (j, chunk) in tile.q.iter_mut().enumerate() {
                        chunk[4 * lane..4 * lane + 4]
                            .copy_from_slice(&block[4 + 4 * j..4 + 4 * j + 4]);
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

    /// Row `r` dequantized as candle does (`q * d + m`): a token's embedding.
    pub fn row(&self, r: usize) -> Vec<f32> {
        let (g, lane) = (r / ROWS, r % ROWS);
        let tiles = &self.tiles[g * self.blocks..(g + 1) * self.blocks];
        let mut out = Vec::with_capacity(self.k);
        for t in tiles {
            let d = f16::from_bits(t.d[lane]).to_f32();
            let m = f16::from_bits(t.m[lane]).to_f32();
            let bytes = |j: usize| t.q[j][4 * lane..4 * lane + 4].iter().copied();
            let all: Vec<u8> = (0..4).flat_map(bytes).collect();
            out.extend(all.iter().map(|&b| f32::from(b & 0x0F) * d + m));
            out.extend(all.iter().map(|&b| f32::from(b >> 4) * d + m));
        }
        out
    }

    /// `x` (quantized rows of [`Q41Matrix::cols`]) times the transpose of this matrix: rows of
    /// [`Q41Matrix::rows`], into `out` (resized; what it held is overwritten, so a buffer passed
    /// again for a product of the same shape is neither allocated nor cleared again). The tiles
    /// of sixteen outputs are split over `threads` in equal runs.
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
                Kernel::Amx(simd, amx) => simd.vectorize(AmxCall::<avx512::Q41> {
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

/// Runs `group(g, out)` for every group of `rows` of the `n` outputs against `m` activation
/// rows (`out[r * rows + lane]`), split over `threads` in equal runs of groups, and lays the
/// results out in `out` as `m` rows of `n`: each thread copies its groups' outputs, through a
/// scratch buffer that stays in cache, straight into its columns of every row. `out` is
/// resized, and what it held overwritten: a buffer passed again for a product of the same
/// shape (the next layer's) is neither allocated nor cleared again.
pub(crate) fn product(
    n: usize,
    rows: usize,
    m: usize,
    threads: &Threads,
    out: &mut Vec<f32>,
    group: impl Fn(usize, &mut [f32]) + Sync,
) {
    let groups = n.div_ceil(rows);
    if m == 1 {
        // One row: the groups' outputs are the row itself.
        resize(out, groups * rows);
        threads.split(out, rows, groups, |first, part| {
            for (i, out) in part.chunks_exact_mut(rows).enumerate() {
                group(first + i, out);
            }
        });
        out.truncate(n);
        return;
    }
    let per = groups.div_ceil(threads.count().min(groups).max(1)).max(1);
    resize(out, m * n);
    // Each run of groups' columns, in every row.
    let mut runs: Vec<Vec<&mut [f32]>> = (0..groups.div_ceil(per))
        .map(|_| Vec::with_capacity(m))
        .collect();
    for row in out.chunks_exact_mut(n) {
        let mut rest = row;
        for run in &mut runs {
            let (mine, after) = rest.split_at_mut((per * rows).min(rest.len()));
            run.push(mine);
            rest = after;
        }
    }
    let fill = |i: usize, mut columns: Vec<&mut [f32]>| {
        let mut scratch = vec![0f32; m * rows];
        for (j, g) in (i * per..((i + 1) * per).min(groups)).enumerate() {
            group(g, &mut scratch);
            for (dst, src) in columns.iter_mut().zip(scratch.chunks_exact(rows)) {
                let dst = &mut dst[j * rows..];
                if dst.len() >= ROWS && rows == ROWS {
                    // A whole group: a fixed-size copy the compiler keeps inline.
                    let src: &[f32; ROWS] = src.try_into().expect("a group");
                    *<&mut [f32; ROWS]>::try_from(&mut dst[..ROWS]).expect("a group") = *src;
                } else {
                    let width = dst.len().min(rows);
                    dst[..width].copy_from_slice(&src[..width]);
                }
            }
        }
    };
    if runs.len() == 1 {
        fill(0, runs.pop().expect("one run"));
    } else {
        runs.into_par_iter()
            .enumerate()
            .for_each(|(i, columns)| fill(i, columns));
    }
}

/// What `product` writes into a buffer that held NaNs, longer than any output of the tests:
/// a value it did not write shows.
#[cfg(test)]
pub(crate) fn dirty(product: impl FnOnce(&mut Vec<f32>)) -> Vec<f32> {
    let mut out = vec![f32::NAN; 1 << 16];
    product(&mut out);
    out
}

/// The integer part of lane `lane`'s block against `values`: `sum(q4 * q8)`, exact.
#[inline(always)]
fn block_sum(t: &Tile, lane: usize, values: &[i8; BLOCK]) -> i32 {
    let mut sum = 0i32;
    for (j, chunk) in t.q.iter().enumerate() {
        for i in 0..4 {
            let byte = chunk[4 * lane + i];
            let lo = i32::from(byte & 0x0F);
            let hi = i32::from(byte >> 4);
            sum += lo * i32::from(values[4 * j + i]) + hi * i32::from(values[16 + 4 * j + i]);
        }
    }
    sum
}

/// The tile row in plain Rust, output by output, each chain in block order.
fn portable_group(tiles: &[Tile], x: &Q8Rows, out: &mut [f32]) {
    for (r, out) in out.chunks_exact_mut(ROWS).enumerate() {
        let mut acc = [0f32; ROWS];
        for (b, t) in tiles.iter().enumerate() {
            let (values, dx, sx) = (x.values(r, b), x.scale(r, b), x.sum(r, b));
            for (lane, acc) in acc.iter_mut().enumerate() {
                let sumi = block_sum(t, lane, values);
                let dw = f16::from_bits(t.d[lane]).to_f32();
                let mw = f16::from_bits(t.m[lane]).to_f32();
                *acc += sumi as f32 * dw * dx + mw * sx;
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
    use core::arch::x86_64::{__m256, __m256i};
    use pulp::bytemuck::cast;
    use pulp::x86::V3;

    /// Every row of `x` against the tile row, as two halves of eight outputs.
    #[inline(always)]
    pub(super) fn group(simd: V3, tiles: &[Tile], x: &Q8Rows, out: &mut [f32]) {
        for half in 0..2 {
            by_fours!(x.rows(), tile, simd, tiles, x, out, half);
        }
    }

    /// Rows `r0..r0 + R` against outputs `8 * half..8 * half + 8` of the tile row: the nibbles
    /// unpacked once per block for all of them.
    #[inline(always)]
    fn tile<const R: usize>(
        simd: V3,
        tiles: &[Tile],
        x: &Q8Rows,
        out: &mut [f32],
        half: usize,
        r0: usize,
    ) {
        let low = simd.avx._mm256_set1_epi8(0x0F);
        let ones = simd.avx._mm256_set1_epi16(1);
        let lanes = 8 * half..8 * half + 8;
        let mut acc: [__m256; R] = [simd.avx._mm256_setzero_ps(); R];
        for (b, t) in tiles.iter().enumerate() {
            // Low nibbles: values 4j..4j + 4 of each row; high nibbles: values 16 + 4j...
            // (Plain loops: a closure, as `array::from_fn` takes, may stay out of line, outside
            // the path's feature context, and its intrinsics become calls.)
            let (mut lo, mut hi) = (
                [simd.avx._mm256_setzero_si256(); 4],
                [simd.avx._mm256_setzero_si256(); 4],
            );
            for j in 0..4 {
                let chunk: __m256i =
                    cast(<[u8; 32]>::try_from(&t.q[j][32 * half..32 * half + 32]).expect("32"));
                lo[j] = simd.avx2._mm256_and_si256(chunk, low);
                hi[j] = simd
                    .avx2
                    ._mm256_and_si256(simd.avx2._mm256_srli_epi16::<4>(chunk), low);
            }
            let dw = f16x8_avx2(simd, t.d[lanes.clone()].try_into().expect("8"));
            let mw = f16x8_avx2(simd, t.m[lanes.clone()].try_into().expect("8"));
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = r0 + r;
                let xs: [i32; 8] = cast(*x.values(row, b));
                // Each i16 lane: two products of at most 15 * 128; eight chunks' lanes add up
                // to at most 30,720, so the i16 sums are exact.
                let mut s16 = simd.avx._mm256_setzero_si256();
                for j in 0..4 {
                    let a = simd
                        .avx2
                        ._mm256_maddubs_epi16(lo[j], simd.avx._mm256_set1_epi32(xs[j]));
                    let c = simd
                        .avx2
                        ._mm256_maddubs_epi16(hi[j], simd.avx._mm256_set1_epi32(xs[4 + j]));
                    s16 = simd
                        .avx2
                        ._mm256_add_epi16(s16, simd.avx2._mm256_add_epi16(a, c));
                }
                let sumi = simd
                    .avx
                    ._mm256_cvtepi32_ps(simd.avx2._mm256_madd_epi16(s16, ones));
                // ((sumi * d_w) * d_x + m_w * s_x), unfused, then added to the chain.
                let term = simd.avx._mm256_mul_ps(
                    simd.avx._mm256_mul_ps(sumi, dw),
                    simd.avx._mm256_set1_ps(x.scale(row, b)),
                );
                let term = simd.avx._mm256_add_ps(
                    term,
                    simd.avx
                        ._mm256_mul_ps(mw, simd.avx._mm256_set1_ps(x.sum(row, b))),
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
    use core::arch::x86_64::{__m512, __m512i};
    use pulp::bytemuck::cast;
    use pulp::x86::V4;

    /// Every row of `x` against the tile row, sixteen outputs a vector, eight rows a tile (32
    /// vector registers hold their sums and the unpacked weights).
    #[inline(always)]
    pub(super) fn group(simd: V4, tiles: &[Tile], x: &Q8Rows, out: &mut [f32]) {
        Q41::rest(simd, tiles, x, out, 0);
    }

    #[inline(always)]
    fn tile<const R: usize>(simd: V4, tiles: &[Tile], x: &Q8Rows, out: &mut [f32], r0: usize) {
        let f = simd.avx512f;
        let bw = simd.avx512bw;
        let low = f._mm512_set1_epi32(0x0F0F_0F0F);
        let ones = f._mm512_set1_epi16(1);
        let mut acc: [__m512; R] = [f._mm512_setzero_ps(); R];
        for (b, t) in tiles.iter().enumerate() {
            // Plain loops, as on AVX2.
            let (mut lo, mut hi) = ([f._mm512_setzero_si512(); 4], [f._mm512_setzero_si512(); 4]);
            for j in 0..4 {
                let chunk: __m512i = cast(t.q[j]);
                lo[j] = f._mm512_and_si512(chunk, low);
                hi[j] = f._mm512_and_si512(bw._mm512_srli_epi16::<4>(chunk), low);
            }
            let scales = Q41::scales(simd, t);
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = r0 + r;
                let xs: [i32; 8] = cast(*x.values(row, b));
                let mut s16 = f._mm512_setzero_si512();
                for j in 0..4 {
                    let a = bw._mm512_maddubs_epi16(lo[j], f._mm512_set1_epi32(xs[j]));
                    let c = bw._mm512_maddubs_epi16(hi[j], f._mm512_set1_epi32(xs[4 + j]));
                    s16 = bw._mm512_add_epi16(s16, bw._mm512_add_epi16(a, c));
                }
                let sumi = bw._mm512_madd_epi16(s16, ones);
                Q41::chain(simd, acc, sumi, scales, x, row, b);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let v: [f32; ROWS] = cast(*acc);
            out[(r0 + r) * ROWS..][..ROWS].copy_from_slice(&v);
        }
    }

    /// Q4_1 on AVX-512, and its part in the AMX path: the nibbles unpacked for the tiles (read
    /// unsigned), the scales and the chain.
    pub(super) struct Q41;

    impl Format for Q41 {
        type Tile = Tile;
        /// The scales and minimums of a tile block.
        type Scales = (__m512, __m512);
        const BYTES: WeightBytes = WeightBytes::Unsigned;

        /// Chunk `j`'s low nibbles are values `4j..4j + 4` of each row in that order, its high
        /// nibbles values `16 + 4j..`: the tiles' rows `j` and `4 + j`.
        #[inline(always)]
        fn unpack(t: &Tile, w: &mut [u8; 512]) {
            let (low, high) = w.split_at_mut(256);
            for (j, chunk) in t.q.iter().enumerate() {
                for i in 0..4 * ROWS {
                    low[4 * ROWS * j + i] = chunk[i] & 0x0F;
                    high[4 * ROWS * j + i] = chunk[i] >> 4;
                }
            }
        }

        #[inline(always)]
        fn scales(simd: V4, t: &Tile) -> (__m512, __m512) {
            (f16x16_avx512(simd, t.d), f16x16_avx512(simd, t.m))
        }

        /// `acc + ((sumi * d_w) * d_x + m_w * s_x)`, each operation rounded on its own.
        #[inline(always)]
        fn chain(
            simd: V4,
            acc: &mut __m512,
            sumi: __m512i,
            (dw, mw): (__m512, __m512),
            x: &Q8Rows,
            row: usize,
            b: usize,
        ) {
            let f = simd.avx512f;
            let term = block_term(simd, sumi, dw, x.scale(row, b));
            let term = f._mm512_add_ps(term, f._mm512_mul_ps(mw, f._mm512_set1_ps(x.sum(row, b))));
            *acc = f._mm512_add_ps(*acc, term);
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
    use core::arch::aarch64::{float32x4_t, int8x16_t, uint8x16_t};
    use pulp::aarch64::Neon;

    /// Every row of `x` against the tile row, four rows a tile.
    #[inline(always)]
    pub(super) fn group(simd: Neon, tiles: &[Tile], x: &Q8Rows, out: &mut [f32]) {
        by_fours!(x.rows(), tile, simd, tiles, x, out);
    }

    /// Rows `r0..r0 + R` against the tile row: per block, the nibbles split once for all of
    /// them; per row, the sixteen outputs' exact integer sums (widening multiplies, at most
    /// 15,360 in an i16 lane), then candle's chain four outputs a vector, unfused.
    #[inline(always)]
    fn tile<const R: usize>(simd: Neon, tiles: &[Tile], x: &Q8Rows, out: &mut [f32], r0: usize) {
        let n = simd.neon;
        let low = n.vdupq_n_u8(0x0F);
        let mut acc: [[float32x4_t; 4]; R] = [[n.vdupq_n_f32(0.0); 4]; R];
        for (b, t) in tiles.iter().enumerate() {
            // Chunk `j`, lanes `4g..4g + 4`: byte `4 * lane + i` holds values `4j + i` (low
            // nibble) and `16 + 4j + i` (high) of weight row `lane`, each at most 15 (so signed).
            let (mut lo, mut hi) = ([[n.vdupq_n_s8(0); 4]; 4], [[n.vdupq_n_s8(0); 4]; 4]);
            for j in 0..4 {
                for g in 0..4 {
                    let bytes: [u8; 16] = t.q[j][16 * g..16 * g + 16].try_into().expect("16");
                    let w: uint8x16_t = cast(bytes);
                    lo[j][g] = n.vreinterpretq_s8_u8(n.vandq_u8(w, low));
                    hi[j][g] = n.vreinterpretq_s8_u8(n.vshrq_n_u8::<4>(w));
                }
            }
            let (dw, mw) = (f16x16_neon(t.d), f16x16_neon(t.m));
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = r0 + r;
                let xs: [u32; 8] = cast(*x.values(row, b));
                // Per four lanes: the products of their first two lanes' bytes and of their
                // last two, each an i16 lane per byte, summed over the chunks.
                let (mut first, mut last) = ([n.vdupq_n_s16(0); 4], [n.vdupq_n_s16(0); 4]);
                for j in 0..4 {
                    let xl: int8x16_t = n.vreinterpretq_s8_u32(n.vdupq_n_u32(xs[j]));
                    let xh: int8x16_t = n.vreinterpretq_s8_u32(n.vdupq_n_u32(xs[4 + j]));
                    for g in 0..4 {
                        first[g] = n.vmlal_s8(first[g], n.vget_low_s8(lo[j][g]), n.vget_low_s8(xl));
                        first[g] = n.vmlal_s8(first[g], n.vget_low_s8(hi[j][g]), n.vget_low_s8(xh));
                        last[g] = n.vmlal_high_s8(last[g], lo[j][g], xl);
                        last[g] = n.vmlal_high_s8(last[g], hi[j][g], xh);
                    }
                }
                let (dx, sx) = (n.vdupq_n_f32(x.scale(row, b)), n.vdupq_n_f32(x.sum(row, b)));
                for g in 0..4 {
                    let sumi = n.vpaddq_s32(n.vpaddlq_s16(first[g]), n.vpaddlq_s16(last[g]));
                    // ((sumi * d_w) * d_x + m_w * s_x), unfused, then added to the chain.
                    let term = n.vmulq_f32(n.vmulq_f32(n.vcvtq_f32_s32(sumi), dw[g]), dx);
                    let term = n.vaddq_f32(term, n.vmulq_f32(mw[g], sx));
                    acc[g] = n.vaddq_f32(acc[g], term);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let v: [f32; ROWS] = cast(*acc);
            out[(r0 + r) * ROWS..][..ROWS].copy_from_slice(&v);
        }
    }
}

// pulp's `vectorize` runs a call with the CPU features enabled only when the call is inlined
// into it; a closure this large is not (its `FnOnce` shim is only an inline hint), and the
// intrinsics then become function calls. These plain calls are `#[inline(always)]`.
#[cfg(target_arch = "aarch64")]
crate::model::kernel::simd_call!(NeonCall, pulp::aarch64::Neon, Tile, neon::group);
#[cfg(target_arch = "x86_64")]
crate::model::kernel::simd_call!(Avx2Call, pulp::x86::V3, Tile, avx2::group);
#[cfg(target_arch = "x86_64")]
crate::model::kernel::simd_call!(Avx512Call, pulp::x86::V4, Tile, avx512::group);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernel::Isa;
    use candle_core::quantized::k_quants::{BlockQ4_1, BlockQ8_1, GgmlType};
    use candle_core::{Device, Tensor};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.f32() * 2.0 - 1.0).collect()
    }

    /// candle's answer for every (activation row, weight row): `vec_dot_unopt` over its own
    /// Q4_1 weight blocks and Q8_1 activation blocks.
    fn candles(w: &[f32], x: &[f32], k: usize) -> Vec<f32> {
        let blocks = k / BLOCK;
        let mut wq = vec![BlockQ4_1::zeros(); w.len() / BLOCK];
        BlockQ4_1::from_float(w, &mut wq);
        let mut xq = vec![BlockQ8_1::zeros(); x.len() / BLOCK];
        BlockQ8_1::from_float(x, &mut xq);
        let n = w.len() / k;
        let mut out = Vec::new();
        for xr in xq.chunks_exact(blocks) {
            for r in 0..n {
                out.push(BlockQ4_1::vec_dot_unopt(
                    k,
                    &wq[r * blocks..(r + 1) * blocks],
                    xr,
                ));
            }
        }
        out
    }

    fn ours(w: &[f32], x: &[f32], k: usize, kernel: Kernel, threads: &Threads) -> Vec<f32> {
        let n = w.len() / k;
        let t = Tensor::from_vec(w.to_vec(), (n, k), &Device::Cpu).expect("w");
        let q = QTensor::quantize(&t, GgmlDType::Q4_1).expect("quantize");
        let m = Q41Matrix::from_qtensor(&q).expect("repack");
        threads.install(|| dirty(|out| m.matmul(&Q8Rows::of(x, k), kernel, threads, out)))
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// Every path, 1 to 9 activation rows (tiles of 4 and 8 and every remainder), 16, 17, 25
    /// and 33 (AMX's tiles of sixteen and their remainders), odd output counts (partial
    /// groups), 1, 2 and 3 threads: candle's `vec_dot_unopt` bits.
    #[test]
    fn the_product_is_candles_vec_dot_unopt_bit_for_bit() {
        let pools: Vec<Threads> = (1..=3).map(|t| Threads::new(t).expect("pool")).collect();
        for (k, n) in [(576, 37), (64, 8), (1536, 19), (64, 3), (320, 17)] {
            let w = random(n * k, 7 + n as u64);
            for m in (1..=9).chain([16, 17, 25, 33]) {
                let x = random(m * k, 11 + m as u64);
                let want = candles(&w, &x, k);
                for isa in Kernel::available() {
                    for threads in &pools {
                        let got = ours(&w, &x, k, Kernel::new(isa).expect("path"), threads);
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{isa}, {} threads, m {m}, k {k}, n {n}",
                            threads.count()
                        );
                    }
                }
            }
        }
    }

    /// Nibbles 0 and 15 (blocks of only a minimum and a maximum, and constant blocks) against
    /// activations of ±127 (blocks of ±amax): candle's bits; and activations of -128, which
    /// candle's quantizer never makes, against an exact integer reference of the same chain.
    #[test]
    fn extreme_nibbles_and_values_keep_the_bits() {
        let k = 128;
        let n = 11;
        let mut w = Vec::new();
        for r in 0..n {
            for j in 0..k {
                w.push(match r % 3 {
                    0 => [-3.0f32, 5.0][j % 2],
                    1 => 0.75,
                    _ => [1e-3f32, 40.0][(j / 7) % 2],
                });
            }
        }
        let mut x = Vec::new();
        for r in 0..3 {
            for j in 0..k {
                x.push(match (r, j % 3) {
                    (0, _) => 2.5,
                    (1, 0) => -2.5,
                    (1, _) => 2.5,
                    _ => [-1e5f32, 1e5][j % 2],
                });
            }
        }
        let want = candles(&w, &x, k);
        let tensor = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).expect("w");
        let q = QTensor::quantize(&tensor, GgmlDType::Q4_1).expect("quantize");
        let m = Q41Matrix::from_qtensor(&q).expect("repack");
        let acts = Q8Rows::of(&x, k);
        let nibbles: Vec<u8> = m
            .tiles
            .iter()
            .flat_map(|t| t.q.iter().flatten().copied())
            .collect();
        assert!(
            nibbles.iter().any(|&b| b == 0xF0 || b == 0x0F),
            "0 and 15 present"
        );
        assert!(acts.values(0, 0).iter().all(|&v| v == 127));
        assert!(acts.values(1, 0).contains(&-127));
        let threads = Threads::new(1).expect("one");
        for isa in Kernel::available() {
            let got = dirty(|out| m.matmul(&acts, Kernel::new(isa).expect("path"), &threads, out));
            assert_eq!(bits(&got), bits(&want), "{isa}");
        }

        // -128 everywhere, with nibbles 15 everywhere: 32 * 15 * -128 per block, exactly (17
        // rows: a tile of sixteen on AMX and one more).
        let blocks = k / BLOCK;
        let acts = Q8Rows::from_parts(
            blocks,
            vec![[-128; BLOCK]; 17 * blocks],
            vec![0.5; 17 * blocks],
        );
        let full = vec![0xFFu8; 16];
        let mut raw = Vec::new();
        for _ in 0..ROWS * blocks {
            raw.extend(f16::from_f32(0.25).to_le_bytes());
            raw.extend(f16::from_f32(-2.0).to_le_bytes());
            raw.extend(&full);
        }
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            GgmlDType::Q4_1,
            &raw,
            vec![ROWS, k],
            &Device::Cpu,
        )
        .expect("raw Q4_1");
        let m = Q41Matrix::from_qtensor(&q).expect("repack");
        let mut chain = 0f32;
        for b in 0..blocks {
            let sumi = 32 * 15 * -128i32;
            chain += sumi as f32 * 0.25 * 0.5 + -2.0 * acts.sum(0, b);
        }
        for isa in Kernel::available() {
            let got = dirty(|out| m.matmul(&acts, Kernel::new(isa).expect("path"), &threads, out));
            assert!(
                got.iter().all(|v| v.to_bits() == chain.to_bits()),
                "{isa}: {got:?} against {chain}"
            );
        }
        assert!(Kernel::available().contains(&Isa::Portable));
    }

    #[test]
    fn a_row_alone_and_in_a_batch_give_the_same_bits() {
        let (k, n) = (576, 64);
        let w = random(n * k, 1);
        let x = random(19 * k, 2);
        let threads = Threads::new(2).expect("two");
        for isa in Kernel::available() {
            let kernel = Kernel::new(isa).expect("path");
            let batch = ours(&w, &x, k, kernel, &threads);
            for (r, row) in x.chunks_exact(k).enumerate() {
                let alone = ours(&w, row, k, kernel, &threads);
                assert_eq!(
                    bits(&alone),
                    bits(&batch[r * n..(r + 1) * n]),
                    "{isa} row {r}"
                );
            }
        }
    }
}
