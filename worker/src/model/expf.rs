//! `libm::expf`, bit for bit, in a form the compiler can vectorize.
//!
//! The engine takes `exp` from the pure-Rust `libm` crate so that every CPU computes the same
//! bits; but `libm::expf` branches on the argument's range and is called one value at a time,
//! and SiLU and softmax call it millions of times a pass. This is the same algorithm (FreeBSD's
//! `e_expf.c` as `libm` 0.2 has it: reduction by `k * ln2` in two parts, a degree-2 rational
//! correction, then scaling by `2^k`) with every branch computed and selected, so a loop of
//! calls becomes vector code. Each operation is the same IEEE operation `libm` performs; the
//! scaling by `2^k` is done in two exact steps of at most `2^±75` and one rounding, which is what
//! `libm`'s `scalbnf` computes. `tests` compare it with `libm::expf` over every class of input
//! and millions of values.

// libm's constants, by their bits.
const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
const INV_LN2: f32 = f32::from_bits(0x3fb8_aa3b);
const P1: f32 = f32::from_bits(0x3e2a_aa8f);
const P2: f32 = f32::from_bits(0xbb35_5215);

/// `2^k` for `k` in `-126..=127`.
#[inline(always)]
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

/// `v as i32` for `v` within `-256.0..=256.0`, where `expf` uses it (`|v| < 151` there);
/// beyond, `v` clamped to that range (NaN gives a value `expf` does not use, small enough that
/// no arithmetic on it overflows). The integer part from `trunc`, through [`exact_int`].
#[inline(always)]
fn trunc_to_i32(v: f32) -> i32 {
    exact_int(v.clamp(-256.0, 256.0).trunc())
}

/// The integer `t` holds (below `2^22` in magnitude), read off the bits of `t + 1.5 * 2^23`,
/// exactly: Rust's saturating `as` compiles to one scalar conversion per lane even in vector
/// code, this to vector code.
#[inline(always)]
pub(crate) fn exact_int(t: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (t + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// `e^x`, with the bits of `libm::expf(x)` for every `x`.
#[inline(always)]
pub(crate) fn expf(x: f32) -> f32 {
    let bits = x.to_bits();
    let neg = bits >> 31 != 0;
    let hx = bits & 0x7fff_ffff;
    // Argument reduction: k = round(x / ln2) beyond 1.5 ln2, +-1 down to 0.5 ln2, else 0.
    let half = if neg { -0.5 } else { 0.5 };
    let k_far = trunc_to_i32(INV_LN2 * x + half);
    let k_near = if neg { -1 } else { 1 };
    let reduced = hx > 0x3eb1_7218;
    let k = if hx > 0x3f85_1592 {
        k_far
    } else if reduced {
        k_near
    } else {
        0
    };
    let kf = k as f32;
    let hi = if reduced { x - kf * LN2_HI } else { x };
    let lo = if reduced { kf * LN2_LO } else { 0.0 };
    let r = if reduced { hi - lo } else { x };
    let xx = r * r;
    let c = r - xx * (P1 + xx * P2);
    let y = 1. + (r * c / (2. - c) - lo + hi);
    // y * 2^k, k in -150..=128: two exact steps and one rounding, as `scalbnf` does.
    let k1 = k / 2;
    let scaled = y * pow2(k1) * pow2(k - k1);
    if hx > 0x7f80_0000 {
        x
    } else if hx >= 0x42b1_7218 && !neg {
        x * f32::from_bits(0x7f00_0000)
    } else if hx >= 0x42cf_f1b5 && neg {
        0.
    } else if hx <= 0x3900_0000 {
        1. + x
    } else {
        scaled
    }
}

#[cfg(test)]
mod tests {
    use super::expf;

    fn same(x: f32) {
        let (got, want) = (expf(x), libm::expf(x));
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "expf({x:e}) = {got:e}, libm: {want:e}"
        );
    }

    #[test]
    fn it_is_libms_expf_bit_for_bit() {
        for x in [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            88.72283,
            88.722_84,
            89.0,
            -87.336_55,
            -103.972_08,
            -103.972_09,
            -104.0,
            0.346_573_6,
            -0.346_573_6,
            1.039_720_8,
            -1.039_720_8,
            1.220_703_1e-4,
            -1.220_703_1e-4,
        ] {
            same(x);
        }
        // Every bit pattern in steps of 211 (about 20 million values, both signs, every range),
        // and every value in [-105, 90) in steps of 11 bit patterns.
        for b in (0..=u32::MAX).step_by(211) {
            same(f32::from_bits(b));
        }
        for lo in [0u32, 0x8000_0000] {
            for b in (lo..lo + 0x42d2_0000).step_by(11) {
                same(f32::from_bits(b));
            }
        }
    }
}
