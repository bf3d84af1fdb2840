//! Round half to even without a libm call.
//!
//! `f32::round_ties_even` compiles to one `roundss` only where SSE4.1 is enabled at compile
//! time; on the x86-64 baseline it is a call to `rintf` per element, which took 12% of an AWQ
//! run's profile. Adding and removing 2²³ rounds in the default (nearest-even) mode, and the
//! compiler vectorizes it in any loop.

/// Round half to even, bit-identical to [`f32::round_ties_even`] for every input (signed zeros,
/// infinities and NaN included).
///
/// ```
/// use qwen3_quant_kernels::round::round_half_even;
/// assert_eq!(round_half_even(2.5), 2.0);
/// assert_eq!(round_half_even(-3.5), -4.0);
/// assert_eq!(round_half_even(-0.25).to_bits(), (-0.0f32).to_bits());
/// ```
#[inline(always)]
pub fn round_half_even(x: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    let a = x.abs();
    if a < TWO_23 {
        // a + 2^23 lies in [2^23, 2^24), where the floats are the integers: the addition rounds
        // `a` to an integer, ties to even (2^23 is even). Rounding is symmetric, so the sign is
        // put back afterwards (-0.25 gives -0.0, as `round_ties_even` does).
        ((a + TWO_23) - TWO_23).copysign(x)
    } else {
        // Already an integer, or infinite, or NaN. No libm call on either side: LLVM may
        // evaluate both sides of the branch and select, which would bring `rintf` back.
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_standard_rounding_bit_for_bit() {
        let special = [
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.5,
            2.5,
            -2.5,
            0.49999997,
            4_194_303.5,
            4_194_304.5,
            8_388_607.5,
            8_388_608.0,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
        ];
        for x in special {
            assert_eq!(
                round_half_even(x).to_bits(),
                x.round_ties_even().to_bits(),
                "{x}"
            );
        }
        assert!(round_half_even(f32::NAN).is_nan());
        // Every half-integer up to 2^12 and a sweep of bit patterns across all magnitudes.
        for i in -8192..8192 {
            let x = i as f32 * 0.5;
            assert_eq!(
                round_half_even(x).to_bits(),
                x.round_ties_even().to_bits(),
                "{x}"
            );
        }
        let mut bits = 1u32;
        while bits < 0x7f80_0000 {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                assert_eq!(
                    round_half_even(x).to_bits(),
                    x.round_ties_even().to_bits(),
                    "{x}"
                );
            }
            bits = bits.wrapping_add(9_973);
        }
    }
}
