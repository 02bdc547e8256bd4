//! The AMX path of the quantized products ([`super::q4_1`], [`super::q8_0`]): sixteen
//! activation rows at a time get their integer block sums from the tiles
//! ([`super::amx::Tiles`], exact), then run the AVX-512 path's float chain, so every output
//! keeps its bits. Each weight format says how its tile block is laid out for the tiles and
//! what its chain is ([`Format`]); the rows past the last sixteen are the format's AVX-512
//! code's.

use super::amx::{Amx, Tiles, WeightBytes};
use super::q8::{Q8Rows, BLOCK};
use core::arch::x86_64::{__m512, __m512i};
use core::cell::Cell;
use pulp::bytemuck::cast;
use pulp::x86::V4;

/// Activation rows one tile product takes.
const TILE_ROWS: usize = 16;

/// Outputs (weight rows) one tile product gives per activation row.
const OUTPUTS: usize = 16;

/// Four blocks' sums: activation row by weight row.
type Sums = [[[i32; OUTPUTS]; TILE_ROWS]; 4];

/// A weight format's part in the AMX path.
pub(crate) trait Format {
    /// One block of sixteen weight rows, as the format repacks it.
    type Tile;
    /// What one block's chain step needs of the weights (scales, minimums), as vectors.
    type Scales: Copy;
    /// How the tiles read the unpacked weights.
    const BYTES: WeightBytes;
    /// Writes `t`'s values as the tiles read them: byte `64 * (k / 4) + 4 * n + k % 4` is
    /// weight row `n`'s value `k` (every byte of `w`: the buffer is reused between groups).
    fn unpack(t: &Self::Tile, w: &mut [u8; 512]);
    /// The block's weight scales as vectors.
    fn scales(simd: V4, t: &Self::Tile) -> Self::Scales;
    /// Sixteen outputs' chain step for block `b` of activation row `row`, from the block's
    /// integer sums: exactly the AVX-512 path's.
    fn chain(
        simd: V4,
        acc: &mut __m512,
        sumi: __m512i,
        s: Self::Scales,
        x: &Q8Rows,
        row: usize,
        b: usize,
    );
    /// The format's AVX-512 code for `x`'s rows from `from` on.
    fn rest(simd: V4, tiles: &[Self::Tile], x: &Q8Rows, out: &mut [f32], from: usize);
}

/// `(sumi * d_w) * d_x` for sixteen outputs of one block, each operation rounded on its own:
/// the term every format's chain starts with (candle's `vec_dot_unopt` order).
#[inline(always)]
pub(crate) fn block_term(simd: V4, sumi: __m512i, dw: __m512, dx: f32) -> __m512 {
    let f = simd.avx512f;
    f._mm512_mul_ps(
        f._mm512_mul_ps(f._mm512_cvtepi32_ps(sumi), dw),
        f._mm512_set1_ps(dx),
    )
}

/// Every whole sixteen of `x`'s rows against the tile row `tiles` (`out[r * 16 + lane]`);
/// returns how many rows that was, for the caller's own path to finish the rest.
#[inline(always)]
fn sixteens<F: Format>(
    simd: V4,
    amx: Amx,
    tiles: &[F::Tile],
    x: &Q8Rows,
    out: &mut [f32],
) -> usize {
    let full = x.rows() / TILE_ROWS * TILE_ROWS;
    if full == 0 {
        return 0;
    }
    // The unpacked weights go through this thread's buffer, taken out and put back (the work
    // stays outside the closures, inside the path's feature context): a product of many
    // groups allocates and clears it once, not once a group.
    let mut weights = UNPACKED.with(Cell::take);
    weights.resize(tiles.len(), [0u8; 512]);
    for (w, t) in weights.iter_mut().zip(tiles) {
        F::unpack(t, w);
    }
    let mut sums = [[[[0i32; OUTPUTS]; TILE_ROWS]; 4]; 2];
    let t = amx.tiles();
    for r0 in (0..full).step_by(TILE_ROWS) {
        sixteen::<F>(simd, &t, (tiles, &weights), x, out, r0, &mut sums);
    }
    UNPACKED.with(|u| u.set(weights));
    full
}

thread_local! {
    /// A thread's buffer for one group's weights unpacked to bytes ([`Format::unpack`]).
    static UNPACKED: Cell<Vec<[u8; 512]>> = const { Cell::new(Vec::new()) };
}

/// The tiles' sums of blocks `b..b + n` of activation rows `values[i * blocks]` (four at a
/// time while there are four, else one); returns `n`.
#[inline(always)]
fn tile_sums(
    t: &Tiles,
    (weights, bytes): (&[[u8; 512]], WeightBytes),
    values: &[[i8; BLOCK]],
    b: usize,
    sums: &mut Sums,
) -> usize {
    let blocks = weights.len();
    if b + 4 <= blocks {
        let w: &[[u8; 512]; 4] = weights[b..b + 4].try_into().expect("four blocks");
        t.dot_four_blocks(&values[b..], blocks, (w, bytes), sums);
        4
    } else {
        t.dot_block(&values[b..], blocks, (&weights[b], bytes), &mut sums[0]);
        1
    }
}

/// Activation rows `r0..r0 + 16` against the tile row.
#[inline(always)]
fn sixteen<F: Format>(
    simd: V4,
    t: &Tiles,
    (tiles, weights): (&[F::Tile], &[[u8; 512]]),
    x: &Q8Rows,
    out: &mut [f32],
    r0: usize,
    sums: &mut [Sums; 2],
) {
    let mut acc: [__m512; TILE_ROWS] = [simd.avx512f._mm512_setzero_ps(); TILE_ROWS];
    let blocks = tiles.len();
    let values = x.values_from(r0, 0);
    let weights = (weights, F::BYTES);
    // Pipelined: the tiles compute the next blocks' sums while the vector units run the
    // chains of these ones.
    let (first, second) = sums.split_at_mut(1);
    let (mut these, mut next) = (&mut first[0], &mut second[0]);
    let mut b = 0;
    let mut n = tile_sums(t, weights, values, 0, these);
    while b < blocks {
        let after = b + n;
        let n_next = if after < blocks {
            tile_sums(t, weights, values, after, next)
        } else {
            0
        };
        // A plain loop: `array::from_fn`'s closure may stay out of line, outside the path's
        // feature context.
        let mut s = [F::scales(simd, &tiles[b]); 4];
        for (i, s) in s.iter_mut().enumerate().take(n).skip(1) {
            *s = F::scales(simd, &tiles[b + i]);
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let mut a = *acc;
            for (i, sums) in these[..n].iter().enumerate() {
                F::chain(simd, &mut a, cast(sums[r]), s[i], x, r0 + r, b + i);
            }
            *acc = a;
        }
        core::mem::swap(&mut these, &mut next);
        (b, n) = (after, n_next);
    }
    for (r, acc) in acc.iter().enumerate() {
        let v: [f32; OUTPUTS] = cast(*acc);
        out[(r0 + r) * OUTPUTS..][..OUTPUTS].copy_from_slice(&v);
    }
}

/// A format's AMX call for pulp's `vectorize`: [`sixteens`], then the format's AVX-512 code
/// ([`Format::rest`]) from the first row left.
pub(crate) struct AmxCall<'a, F: Format> {
    pub(crate) simd: V4,
    pub(crate) amx: Amx,
    pub(crate) tiles: &'a [F::Tile],
    pub(crate) x: &'a Q8Rows,
    pub(crate) out: &'a mut [f32],
}

impl<F: Format> pulp::NullaryFnOnce for AmxCall<'_, F> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let done = sixteens::<F>(self.simd, self.amx, self.tiles, self.x, self.out);
        F::rest(self.simd, self.tiles, self.x, self.out, done);
    }
}
