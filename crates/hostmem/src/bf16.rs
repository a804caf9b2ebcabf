//! bf16 conversions in a form the compiler vectorises.

/// bf16 bits to f32 (exact).
#[inline(always)]
pub(crate) fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 to bf16 bits, rounding to nearest, ties to even; NaN stays NaN (quieted), infinities
/// stay infinite, and finite values past the largest bf16 round to infinity. Bitwise the same as
/// `half::bf16::from_f32`, without branches in the finite case.
#[inline(always)]
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    // Adding 0x7fff (+1 when the kept part is odd) carries into bit 16 exactly when the dropped
    // half is above one half, or equal to it with an odd kept part.
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let quiet_nan = (b >> 16) | 0x40;
    let is_nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    (if is_nan { quiet_nan } else { rounded }) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;
    use rand::{Rng, SeedableRng};

    fn same_as_half(x: f32) {
        let want = bf16::from_f32(x).to_bits();
        assert_eq!(f32_to_bf16(x), want, "{x:e} ({:#010x})", x.to_bits());
    }

    #[test]
    fn rounding_matches_half_on_edges_and_random_bits() {
        // Every kept/dropped boundary of a few exponents, both signs, the specials.
        for hi in [
            0u32, 1, 2, 0x3f80, 0x3f81, 0x7f7f, 0x7f80, 0x7fc0, 0x0080, 0x8000, 0xff7f,
        ] {
            for lo in [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff] {
                same_as_half(f32::from_bits(hi << 16 | lo));
                same_as_half(f32::from_bits((hi | 0x8000) << 16 | lo));
            }
        }
        for x in [
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ] {
            same_as_half(x);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..1 << 20 {
            same_as_half(f32::from_bits(rng.random()));
        }
    }

    #[test]
    fn widening_is_exact() {
        for b in 0..=u16::MAX {
            let want = bf16::from_bits(b).to_f32();
            let got = bf16_to_f32(b);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
        }
    }
}
