//! The engine's two execution choices: which instruction set its quantized products run on, and
//! how many threads share them.
//!
//! Every path computes the same bits: the products keep each output's float chain in one fixed
//! order and only do the exact (integer) part differently, and everything else in the forward
//! pass is plain Rust whose operations are IEEE-exact or from the pure-Rust `libm` crate. So the
//! choice is about speed alone, and a path can be forced (with [`KERNEL_ENV`], or
//! `aimarket worker --kernel`) to check a fleet or to test the claim.
//!
//! Threads split the output rows of each product, never the summed dimension, in one parallel
//! region per product over one pool ([`Threads`]), as llama.cpp's `-t` does.

use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

/// The environment variable that forces a kernel path (`portable`, `neon`, `avx2`, `avx512`,
/// `amx`); unset or `auto`, the fastest the CPU runs.
pub const KERNEL_ENV: &str = "AIMARKET_KERNEL";

/// A kernel path, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust: any CPU.
    Portable,
    /// AArch64 NEON (Advanced SIMD, part of every AArch64 CPU).
    Neon,
    /// x86-64 AVX2 (x86-64-v3).
    Avx2,
    /// x86-64 AVX-512 (F, BW, DQ, VL: x86-64-v4).
    Avx512,
    /// AVX-512 with Intel AMX-INT8 tiles for the integer sums of the Q4_1 and Q8_0 products
    /// of sixteen activation rows or more.
    Amx,
}

impl Isa {
    /// Every path, in the order `auto` prefers them (last first).
    pub const ALL: [Isa; 5] = [Isa::Portable, Isa::Neon, Isa::Avx2, Isa::Avx512, Isa::Amx];
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isa::Portable => "portable",
            Isa::Neon => "neon",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
        })
    }
}

impl FromStr for Isa {
    type Err = KernelError;

    fn from_str(s: &str) -> Result<Self, KernelError> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.to_string() == s)
            .ok_or_else(|| KernelError::Unknown(s.to_owned()))
    }
}

/// A kernel path could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The name is not a path.
    #[error("unknown kernel {0:?}: one of auto, portable, neon, avx2, avx512, amx")]
    Unknown(String),
    /// This CPU (or this build's target) lacks the instructions.
    #[error("this CPU cannot run the {0} kernel; it runs: {avail}", avail = Kernel::available().iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Unavailable(Isa),
}

/// A kernel path this CPU runs, holding the proof that it does (`pulp`'s feature tokens).
#[derive(Debug, Clone, Copy)]
pub enum Kernel {
    /// Plain Rust.
    Portable,
    /// NEON, through `pulp`'s checked dispatch.
    #[cfg(target_arch = "aarch64")]
    Neon(pulp::aarch64::Neon),
    /// AVX2, through `pulp`'s checked dispatch.
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    /// AVX-512 (F/BW/DQ/VL), through `pulp`'s checked dispatch.
    #[cfg(target_arch = "x86_64")]
    Avx512(pulp::x86::V4),
    /// AVX-512 and AMX-INT8 (the tiles granted to this process by the operating system).
    #[cfg(target_arch = "x86_64")]
    Amx(pulp::x86::V4, super::amx::Amx),
}

impl Kernel {
    /// The path `isa` on this CPU.
    ///
    /// # Errors
    /// [`KernelError::Unavailable`] when the CPU lacks its instructions.
    pub fn new(isa: Isa) -> Result<Self, KernelError> {
        match isa {
            Isa::Portable => Ok(Kernel::Portable),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => pulp::aarch64::Neon::try_new()
                .map(Kernel::Neon)
                .ok_or(KernelError::Unavailable(isa)),
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Neon => Err(KernelError::Unavailable(isa)),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => pulp::x86::V3::try_new()
                .map(Kernel::Avx2)
                .ok_or(KernelError::Unavailable(isa)),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => pulp::x86::V4::try_new()
                .map(Kernel::Avx512)
                .ok_or(KernelError::Unavailable(isa)),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => pulp::x86::V4::try_new()
                .zip(super::amx::Amx::try_new())
                .map(|(simd, amx)| Kernel::Amx(simd, amx))
                .ok_or(KernelError::Unavailable(isa)),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 | Isa::Amx => Err(KernelError::Unavailable(isa)),
        }
    }

    /// The fastest path this CPU runs.
    pub fn best() -> Self {
        Isa::ALL
            .into_iter()
            .rev()
            .find_map(|isa| Kernel::new(isa).ok())
            .unwrap_or(Kernel::Portable)
    }

    /// The path [`KERNEL_ENV`] names (`auto` or unset: [`Kernel::best`]).
    ///
    /// # Errors
    /// An unknown name, or a path this CPU cannot run.
    pub fn from_env() -> Result<Self, KernelError> {
        match std::env::var(KERNEL_ENV) {
            Ok(name) if !name.is_empty() && name != "auto" => Kernel::new(name.parse()?),
            _ => Ok(Kernel::best()),
        }
    }

    /// Every path this CPU runs.
    pub fn available() -> Vec<Isa> {
        Isa::ALL
            .into_iter()
            .filter(|isa| Kernel::new(*isa).is_ok())
            .collect()
    }

    /// Which path this is.
    pub fn isa(self) -> Isa {
        match self {
            Kernel::Portable => Isa::Portable,
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon(_) => Isa::Neon,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => Isa::Avx2,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) => Isa::Avx512,
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx(..) => Isa::Amx,
        }
    }
}

/// Declares `$name { simd, tiles, x, out }`, a call of `$f(simd, tiles, x, out)` for pulp's
/// `vectorize`, inlined into it so that the kernel compiles with the CPU features on.
macro_rules! simd_call {
    ($name:ident, $simd:ty, $tile:ty, $f:path) => {
        struct $name<'a> {
            simd: $simd,
            tiles: &'a [$tile],
            x: &'a $crate::model::q8::Q8Rows,
            out: &'a mut [f32],
        }

        impl pulp::NullaryFnOnce for $name<'_> {
            type Output = ();

            #[inline(always)]
            fn call(self) {
                $f(self.simd, self.tiles, self.x, self.out)
            }
        }
    };
}
pub(crate) use simd_call;

/// Plain Rust code (no intrinsics) that the engine compiles once per path, so that the
/// compiler vectorizes it for that instruction set. Its bits cannot change with the path: Rust
/// neither reorders nor fuses float operations, so wider vectors only compute the same
/// operations more at a time.
pub(crate) trait Autovectorized {
    /// What the code returns.
    type Output;
    /// The code; implementations are `#[inline(always)]`, so that it compiles inside the
    /// path's feature context.
    fn run(self) -> Self::Output;
}

/// An [`Autovectorized`] call for pulp's `vectorize`.
struct InSimd<T>(T);

impl<T: Autovectorized> pulp::NullaryFnOnce for InSimd<T> {
    type Output = T::Output;

    #[inline(always)]
    fn call(self) -> T::Output {
        self.0.run()
    }
}

impl Kernel {
    /// Runs `op` compiled for this path.
    pub(crate) fn run<T: Autovectorized>(self, op: T) -> T::Output {
        match self {
            Kernel::Portable => op.run(),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon(simd) => simd.vectorize(InSimd(op)),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(simd) => simd.vectorize(InSimd(op)),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(simd) | Kernel::Amx(simd, _) => simd.vectorize(InSimd(op)),
        }
    }
}

/// Calls `tile::<R>(r0)` over `m` activation rows in tiles of four, then the remainder.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! by_fours {
    ($m:expr, $tile:ident, $($arg:expr),*) => {{
        let m = $m;
        let mut r = 0;
        while r + 4 <= m {
            $tile::<4>($($arg,)* r);
            r += 4;
        }
        match m - r {
            3 => $tile::<3>($($arg,)* r),
            2 => $tile::<2>($($arg,)* r),
            1 => $tile::<1>($($arg,)* r),
            _ => {}
        }
    }};
}

/// Calls `tile::<R>(r0)` over activation rows `from..m` in tiles of eight, then the
/// remainder.
#[cfg(target_arch = "x86_64")]
macro_rules! by_eights {
    (from $from:expr, $m:expr, $tile:ident, $($arg:expr),*) => {{
        let m = $m;
        let mut r = $from;
        while r + 8 <= m {
            $tile::<8>($($arg,)* r);
            r += 8;
        }
        match m - r {
            7 => $tile::<7>($($arg,)* r),
            6 => $tile::<6>($($arg,)* r),
            5 => $tile::<5>($($arg,)* r),
            4 => $tile::<4>($($arg,)* r),
            3 => $tile::<3>($($arg,)* r),
            2 => $tile::<2>($($arg,)* r),
            1 => $tile::<1>($($arg,)* r),
            _ => {}
        }
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use by_eights;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use by_fours;

/// The engine's threads: one pool, entered once per forward pass, whose workers split each
/// product's output rows. With one thread there is no pool and no hand-off at all.
#[derive(Debug)]
pub struct Threads {
    pool: Option<rayon::ThreadPool>,
    count: usize,
}

impl Threads {
    /// `count` threads (at least one), the caller of [`Threads::install`] among them.
    ///
    /// # Errors
    /// The operating system refused a thread.
    pub fn new(count: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let count = count.max(1);
        let pool = if count == 1 {
            None
        } else {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(count)
                    .thread_name(|i| format!("engine-{i}"))
                    .build()?,
            )
        };
        Ok(Self { pool, count })
    }

    /// How many threads share the work.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Runs `f` inside the pool, where [`Threads::split`] can use its workers.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    /// Calls `f(first, part)` for the consecutive parts of `out` that end at items `ends`
    /// (`unit` values per item; the last end is the item count): one parallel region, a part
    /// per task, for work whose items cost unequally.
    pub fn split_at(
        &self,
        out: &mut [f32],
        unit: usize,
        ends: &[usize],
        f: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        let mut parts = Vec::with_capacity(ends.len());
        let (mut rest, mut first) = (out, 0);
        for &end in ends {
            let (part, after) = rest.split_at_mut((end - first) * unit);
            parts.push((first, part));
            (rest, first) = (after, end);
        }
        parts
            .into_par_iter()
            .for_each(|(first, part)| f(first, part));
    }

    /// Calls `f(first, part)` for consecutive parts of `out`, each `unit` values per item
    /// (`items` of them), spread over the threads in equal runs of items: one parallel region.
    /// Called inside [`Threads::install`]; outside it, the parts run on rayon's global pool.
    pub fn split(
        &self,
        out: &mut [f32],
        unit: usize,
        items: usize,
        f: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        if self.count == 1 || items < 2 {
            f(0, out);
            return;
        }
        let per = items.div_ceil(self.count);
        out.par_chunks_mut(per * unit)
            .enumerate()
            .for_each(|(i, part)| f(i * per, part));
    }
}

/// `v` at length `len`, keeping what it holds: only values past its old length are zeroed. The
/// engine's buffers are resized so, each then overwritten whole.
pub(crate) fn resize(v: &mut Vec<f32>, len: usize) {
    v.truncate(len);
    v.resize(len, 0.0);
}

/// How a generative model runs: its threads and, when forced, its kernel path
/// (`aimarket worker --threads N --kernel PATH`). The default: every core, the path from
/// [`KERNEL_ENV`] or the fastest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineConfig {
    /// Threads sharing each product (0: every core).
    pub threads: usize,
    /// The kernel path; `None` reads [`KERNEL_ENV`], then takes the fastest.
    pub kernel: Option<Isa>,
}

impl EngineConfig {
    /// The kernel this configuration names, on this CPU.
    ///
    /// # Errors
    /// An unknown or unavailable path.
    pub fn kernel(&self) -> Result<Kernel, KernelError> {
        match self.kernel {
            Some(isa) => Kernel::new(isa),
            None => Kernel::from_env(),
        }
    }

    /// The thread count, `0` resolved to every core.
    pub fn thread_count(&self) -> usize {
        match self.threads {
            0 => all_cores(),
            n => n,
        }
    }
}

/// The number of threads `--threads 0` means: every core this process may use.
pub fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_by_name_and_the_portable_one_always_runs() {
        for isa in Isa::ALL {
            assert_eq!(isa.to_string().parse::<Isa>().expect("parses"), isa);
        }
        assert!(matches!(
            "sse9".parse::<Isa>(),
            Err(KernelError::Unknown(_))
        ));
        assert!(Kernel::available().contains(&Isa::Portable));
        assert_eq!(
            Kernel::new(Isa::Portable).expect("portable").isa(),
            Isa::Portable
        );
        assert!(Kernel::available().contains(&Kernel::best().isa()));
        // NEON is every AArch64 CPU's, and no other's.
        #[cfg(target_arch = "aarch64")]
        assert!(Kernel::available().contains(&Isa::Neon));
        #[cfg(not(target_arch = "aarch64"))]
        assert!(matches!(
            Kernel::new(Isa::Neon),
            Err(KernelError::Unavailable(Isa::Neon))
        ));
    }

    #[test]
    fn split_covers_every_item_once_in_runs() {
        for count in 1..=3 {
            let threads = Threads::new(count).expect("threads");
            for items in [1, 2, 5, 8, 121] {
                let mut out = vec![0f32; items * 3];
                threads.install(|| {
                    threads.split(&mut out, 3, items, |first, part| {
                        for (i, v) in part.iter_mut().enumerate() {
                            *v += (first * 3 + i) as f32 + 1.0;
                        }
                    })
                });
                let want: Vec<f32> = (0..items * 3).map(|i| i as f32 + 1.0).collect();
                assert_eq!(out, want, "{count} threads, {items} items");
            }
        }
    }
}
