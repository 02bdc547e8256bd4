//! Intel AMX (Advanced Matrix Extensions): the one place in the workspace that holds `unsafe`
//! code, because Rust has no safe form of it (its tile instructions have no stable intrinsics,
//! so they are written as inline assembly, and the operating system must first be asked for the
//! tile state with a system call).
//!
//! What it offers is one operation, [`Tiles::dot_block`] (and [`Tiles::dot_four_blocks`], four
//! at a time): sixteen rows of one 32-value block of quantized activations (signed bytes)
//! against sixteen weight rows of one block (unsigned bytes for Q4_1, `tdpbsud`; signed for
//! Q8_0, `tdpbssd`), giving the 256 integer block sums `sum(x * w)` at once. Those sums are
//! exact in any order (at most 32 * 128 * 255 in magnitude), so a product built on them keeps
//! every output's bits: the float chain that follows is the other paths' code.
//!
//! Safety rests on four facts, each checked where it is needed:
//! - the CPU has AMX-TILE and AMX-INT8 (CPUID) and Linux granted this process the tile data
//!   (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), once per process: [`Amx::try_new`] is the only way to
//!   get an [`Amx`];
//! - a tile instruction runs only while this thread's tiles are configured: a [`Tiles`] is made
//!   only by [`Amx::tiles`], which configures them and refuses while another is alive on the
//!   thread; it releases them when dropped (also when unwinding) and is neither `Send` nor
//!   `Sync`;
//! - every tile load and store stays inside its Rust slice: the shapes are fixed by the
//!   configuration below and the slices' lengths are checked before each instruction;
//! - the assembly touches no Rust-visible register but its operands and no memory but those
//!   slices (tile registers are not allocated by the compiler).

#![allow(unsafe_code)]

use std::cell::Cell;
use std::marker::PhantomData;

/// Values in a block, as [`super::q8::BLOCK`].
const BLOCK: usize = 32;

/// Proof that this CPU runs AMX-INT8 and that this process may use the tile state.
#[derive(Debug, Clone, Copy)]
pub struct Amx {
    _proof: (),
}

impl Amx {
    /// The proof, when the CPU and the operating system allow AMX (asked once per process).
    pub fn try_new() -> Option<Self> {
        static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        GRANTED
            .get_or_init(|| cpu_has_amx_int8() && os::request_tile_data())
            .then_some(Self { _proof: () })
    }

    /// This thread's tiles, configured for [`Tiles::dot_block`] until the returned value is
    /// dropped (which releases them: the tile state costs every context switch while it is in
    /// use).
    ///
    /// # Panics
    /// When this thread's tiles are already configured (a [`Tiles`] is alive on it).
    #[inline(always)]
    pub fn tiles(self) -> Tiles {
        assert!(
            !CONFIGURED.with(Cell::get),
            "AMX tiles are already configured on this thread"
        );
        let config = TileConfig::new();
        // SAFETY: the CPU has AMX-TILE and the process was granted the tile data (`self`);
        // `ldtilecfg` reads the 64 bytes of `config`, which live through the call.
        unsafe {
            core::arch::asm!(
                "ldtilecfg [{cfg}]",
                cfg = in(reg) config.0.as_ptr(),
                options(nostack, readonly)
            );
        }
        CONFIGURED.with(|c| c.set(true));
        Tiles { _here: PhantomData }
    }
}

thread_local! {
    /// Whether a [`Tiles`] is alive on this thread.
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

impl Drop for Tiles {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: `tilerelease` only returns the tile state to its initial form; it runs on a
        // CPU with AMX (a `Tiles` exists only through an `Amx` proof) and touches no memory.
        unsafe { core::arch::asm!("tilerelease", options(nostack, nomem)) };
        CONFIGURED.with(|c| c.set(false));
    }
}

/// This thread's configured tiles: tiles 0-3 hold 16 x 16 sums (i32) each, tiles 4 and 5
/// sixteen activation rows of one block (16 x 32 signed bytes), tiles 6 and 7 sixteen weight
/// rows of one block in the layout `tdpbsud` reads (8 rows of 64 unsigned bytes, see
/// [`Tiles::dot_block`]).
pub struct Tiles {
    /// Neither `Send` nor `Sync`: the configuration belongs to the thread that made it.
    _here: PhantomData<*const ()>,
}

/// The 64-byte tile configuration (`ldtilecfg`'s palette 1).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        // Byte 0: the palette (1); bytes 16-47: each tile's bytes per row; 48-63: its rows.
        let mut c = [0u8; 64];
        c[0] = 1;
        let sums = (64u16, 16u8);
        let activations = (BLOCK as u16, 16);
        let weights = (64, 8);
        for (t, (colsb, rows)) in [sums, sums, sums, sums]
            .into_iter()
            .chain([activations, activations, weights, weights])
            .enumerate()
        {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&colsb.to_le_bytes());
            c[48 + t] = rows;
        }
        Self(c)
    }
}

/// How a weight tile's bytes are read: unsigned (`tdpbsud`: Q4_1's nibbles) or signed
/// (`tdpbssd`: Q8_0's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightBytes {
    /// 0 to 255.
    Unsigned,
    /// -128 to 127.
    Signed,
}

/// One block's tile product (`$dot`: `tdpbsud` or `tdpbssd`): tile 4 from `$x` (rows `$xs`
/// bytes apart), tile 6 from `$w`, their sums through tile 0 into `$s`. Used inside `unsafe`.
macro_rules! one_block {
    ($dot:literal, $x:expr, $xs:expr, $w:expr, $s:expr) => {
        core::arch::asm!(
            "tilezero tmm0",
            "tileloadd tmm4, [{x} + {xs} * 1]",
            "tileloadd tmm6, [{w} + {ws} * 1]",
            concat!($dot, " tmm0, tmm4, tmm6"),
            "tilestored [{s} + {ws} * 1], tmm0",
            x = in(reg) $x, xs = in(reg) $xs, w = in(reg) $w, s = in(reg) $s,
            ws = in(reg) 64usize, options(nostack)
        )
    };
}

/// Four blocks' tile products, block `i`'s activations at `$x + 32 i`, its weights at
/// `$w + 512 i`, its sums through tile `i` into `$s + 1024 i`; the activation and weight tiles
/// alternate (4 and 6, 5 and 7) so that a load overlaps the previous product. Used inside
/// `unsafe`.
macro_rules! four_blocks {
    ($dot:literal, $x:expr, $xs:expr, $w:expr, $s:expr) => {
        core::arch::asm!(
            "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
            "tileloadd tmm4, [{x} + {xs} * 1]",
            "tileloadd tmm6, [{w} + {ws} * 1]",
            concat!($dot, " tmm0, tmm4, tmm6"),
            "tileloadd tmm5, [{x} + {xs} * 1 + 32]",
            "tileloadd tmm7, [{w} + {ws} * 1 + 512]",
            concat!($dot, " tmm1, tmm5, tmm7"),
            "tileloadd tmm4, [{x} + {xs} * 1 + 64]",
            "tileloadd tmm6, [{w} + {ws} * 1 + 1024]",
            concat!($dot, " tmm2, tmm4, tmm6"),
            "tileloadd tmm5, [{x} + {xs} * 1 + 96]",
            "tileloadd tmm7, [{w} + {ws} * 1 + 1536]",
            concat!($dot, " tmm3, tmm5, tmm7"),
            "tilestored [{s} + {ws} * 1], tmm0",
            "tilestored [{s} + {ws} * 1 + 1024], tmm1",
            "tilestored [{s} + {ws} * 1 + 2048], tmm2",
            "tilestored [{s} + {ws} * 1 + 3072], tmm3",
            x = in(reg) $x, xs = in(reg) $xs, w = in(reg) $w, s = in(reg) $s,
            ws = in(reg) 64usize, options(nostack)
        )
    };
}

impl Tiles {
    /// `sums[r][n] = sum over k of x[r * stride][k] * w(n, k)`: sixteen activation rows (`x`,
    /// one block each, row `r` at `x[r * stride]`) against sixteen weight rows of one block.
    /// `w` holds the weights as the tile product reads them: byte `64 * (k / 4) + 4 * n + k % 4`
    /// is weight row `n`'s value `k`, read as `bytes` says. Every sum is exact.
    ///
    /// # Panics
    /// When `x` holds fewer than sixteen rows at `stride` (or `stride` is 0).
    #[inline(always)]
    pub fn dot_block(
        &self,
        x: &[[i8; BLOCK]],
        stride: usize,
        (w, bytes): (&[u8; 8 * 64], WeightBytes),
        sums: &mut [[i32; 16]; 16],
    ) {
        assert!(
            stride > 0 && x.len() > 15 * stride,
            "sixteen rows at {stride}"
        );
        let (x, xs, w, s) = (x.as_ptr(), stride * BLOCK, w.as_ptr(), sums.as_mut_ptr());
        // SAFETY: the tiles are configured on this thread (`self` is alive on it). Tile 4
        // reads 16 rows of 32 bytes at `x + r * xs`, all inside `x` (checked above); tile 6
        // reads 8 rows of 64 bytes of `w` (its 512 bytes); tile 0 writes 16 rows of 64 bytes
        // into `sums` (its 1,024 bytes). No other memory is touched.
        unsafe {
            match bytes {
                WeightBytes::Unsigned => one_block!("tdpbsud", x, xs, w, s),
                WeightBytes::Signed => one_block!("tdpbssd", x, xs, w, s),
            }
        }
    }

    /// [`Tiles::dot_block`] for four consecutive blocks at once (block `i`'s rows at
    /// `x[i + r * stride]`, its weights `w[i]`, its sums `sums[i]`): four independent tile
    /// products in flight instead of one.
    ///
    /// # Panics
    /// When `x` holds fewer than sixteen rows of four blocks at `stride` (or `stride` < 4).
    #[inline(always)]
    pub fn dot_four_blocks(
        &self,
        x: &[[i8; BLOCK]],
        stride: usize,
        (w, bytes): (&[[u8; 8 * 64]; 4], WeightBytes),
        sums: &mut [[[i32; 16]; 16]; 4],
    ) {
        assert!(
            stride >= 4 && x.len() >= 15 * stride + 4,
            "sixteen rows of four blocks at {stride}"
        );
        let (x, xs, w, s) = (x.as_ptr(), stride * BLOCK, w.as_ptr(), sums.as_mut_ptr());
        // SAFETY: the tiles are configured on this thread (`self` is alive on it). Block
        // `i`'s activation tile reads 16 rows of 32 bytes at `x + i * 32 + r * xs`, inside `x`
        // (checked above: its last row ends at element `15 * stride + 3`); its weight tile
        // reads the 512 bytes of `w[i]`; sums tile `i` writes the 1,024 bytes of `sums[i]`. No
        // other memory is touched.
        unsafe {
            match bytes {
                WeightBytes::Unsigned => four_blocks!("tdpbsud", x, xs, w, s),
                WeightBytes::Signed => four_blocks!("tdpbssd", x, xs, w, s),
            }
        }
    }
}

/// CPUID leaf 7: AMX-TILE (EDX bit 24) and AMX-INT8 (bit 25), on a CPU that has the leaf.
fn cpu_has_amx_int8() -> bool {
    use core::arch::x86_64::__cpuid_count;
    let max = __cpuid_count(0, 0).eax;
    if max < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 24) != 0 && edx & (1 << 25) != 0
}

#[cfg(target_os = "linux")]
mod os {
    /// `arch_prctl` requests (arch/x86/include/uapi/asm/prctl.h) and the tile data's feature
    /// number in XSAVE.
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;

    /// Asks Linux for the tile data (granted to the whole process), then checks it was.
    pub(super) fn request_tile_data() -> bool {
        // SAFETY: `arch_prctl(ARCH_REQ_XCOMP_PERM, n)` takes two integers and changes only
        // the process's permitted XSAVE features; on a kernel without it, it fails cleanly.
        let asked = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        if asked != 0 {
            return false;
        }
        let mut permitted: u64 = 0;
        // SAFETY: `ARCH_GET_XCOMP_PERM` writes one u64 through the pointer, to `permitted`.
        let got = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_GET_XCOMP_PERM,
                &mut permitted as *mut u64,
            )
        };
        got == 0 && permitted & (1 << XFEATURE_XTILEDATA) != 0
    }
}

#[cfg(not(target_os = "linux"))]
mod os {
    /// Only Linux is asked for the tile state here.
    pub(super) fn request_tile_data() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic byte stream.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (s >> 33) as u8
            })
            .collect()
    }

    /// Sixteen rows of `blocks` blocks: random bytes, with -128 and 127 rows.
    fn activations(blocks: usize, seed: u64) -> Vec<[i8; BLOCK]> {
        let raw = bytes(16 * blocks * BLOCK, seed);
        let mut x: Vec<[i8; BLOCK]> = raw
            .chunks_exact(BLOCK)
            .map(|c| core::array::from_fn(|i| c[i] as i8))
            .collect();
        x[..blocks].fill([-128; BLOCK]);
        x[blocks..2 * blocks].fill([127; BLOCK]);
        x
    }

    /// Weights of one block: random bytes, row 0 all 255 (or -1 read signed), row 1 all 128
    /// (-128), row 2 all 127.
    fn weights(seed: u64) -> [u8; 512] {
        let mut w: [u8; 512] = bytes(512, seed).try_into().expect("512");
        for kk in 0..8 {
            for (n, v) in [(0, 255u8), (1, 128), (2, 127)] {
                w[64 * kk + 4 * n..][..4].fill(v);
            }
        }
        w
    }

    /// The exact sum of row `row` (at `x[row]`) against weight row `n` of `w`.
    fn exact(x: &[i8; BLOCK], w: &[u8; 512], n: usize, bytes: WeightBytes) -> i32 {
        (0..BLOCK)
            .map(|k| {
                let byte = w[64 * (k / 4) + 4 * n + k % 4];
                let weight = match bytes {
                    WeightBytes::Unsigned => i32::from(byte),
                    WeightBytes::Signed => i32::from(byte as i8),
                };
                i32::from(x[k]) * weight
            })
            .sum()
    }

    #[test]
    fn block_sums_are_the_exact_integer_sums() {
        let Some(amx) = Amx::try_new() else {
            eprintln!("no AMX on this CPU or OS: nothing to test");
            return;
        };
        for bytes in [WeightBytes::Unsigned, WeightBytes::Signed] {
            for (stride, seed) in [(1, 1), (3, 2), (48, 3)] {
                let x = activations(stride, seed);
                let w = weights(seed + 7);
                let mut sums = [[0i32; 16]; 16];
                amx.tiles().dot_block(&x, stride, (&w, bytes), &mut sums);
                for (r, row) in sums.iter().enumerate() {
                    for (n, &got) in row.iter().enumerate() {
                        let want = exact(&x[r * stride], &w, n, bytes);
                        assert_eq!(
                            got, want,
                            "{bytes:?} row {r}, weight row {n}, stride {stride}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn four_blocks_at_once_are_four_blocks() {
        let Some(amx) = Amx::try_new() else {
            return;
        };
        for bytes in [WeightBytes::Unsigned, WeightBytes::Signed] {
            for stride in [4, 5, 18] {
                let x = activations(stride, 5);
                let w: [[u8; 512]; 4] = core::array::from_fn(|i| weights(11 + i as u64));
                let mut sums = [[[0i32; 16]; 16]; 4];
                amx.tiles()
                    .dot_four_blocks(&x, stride, (&w, bytes), &mut sums);
                for (i, block) in sums.iter().enumerate() {
                    for (r, row) in block.iter().enumerate() {
                        for (n, &got) in row.iter().enumerate() {
                            let want = exact(&x[i + r * stride], &w[i], n, bytes);
                            assert_eq!(got, want, "{bytes:?} block {i} row {r} weight row {n}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tiles_refuse_to_nest_and_are_released_after_a_panic() {
        let Some(amx) = Amx::try_new() else {
            return;
        };
        let nested = std::panic::catch_unwind(|| {
            let _outer = amx.tiles();
            let _inner = amx.tiles();
        });
        assert!(nested.is_err());
        // The outer tiles were released while unwinding: the thread configures again.
        let x = vec![[1i8; BLOCK]; 16];
        let mut sums = [[0i32; 16]; 16];
        amx.tiles()
            .dot_block(&x, 1, (&[2; 512], WeightBytes::Unsigned), &mut sums);
        assert_eq!(sums, [[64; 16]; 16]);
    }

    #[test]
    fn short_inputs_are_refused_before_any_tile_is_read() {
        let Some(amx) = Amx::try_new() else {
            return;
        };
        let x = vec![[0i8; BLOCK]; 15 * 2]; // fifteen rows at stride 2
        let w = (&[0; 512], WeightBytes::Signed);
        let refused =
            std::panic::catch_unwind(|| amx.tiles().dot_block(&x, 2, w, &mut [[0; 16]; 16]));
        assert!(refused.is_err());
        // Four blocks need the last row's fourth block: one element short is refused.
        let x = vec![[0i8; BLOCK]; 15 * 4 + 3];
        let w = (&[[0; 512]; 4], WeightBytes::Unsigned);
        let refused = std::panic::catch_unwind(|| {
            amx.tiles()
                .dot_four_blocks(&x, 4, w, &mut [[[0; 16]; 16]; 4])
        });
        assert!(refused.is_err());
    }
}
