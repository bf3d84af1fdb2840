//! Row softmax used by attention, written so the compiler vectorises it (no libm calls in the
//! inner loop: `exp` is a range-reduced polynomial accurate to about 2 ulp on [-87, 88]).

const LANES: usize = 16;

/// exp(x) for x ≤ 0 (what a max-subtracted softmax feeds it); inputs below -87 give 0.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    use qwen3_quant_kernels::dense::exp_poly::{LN2_HI, LN2_LO, P};
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting rounds to an integer
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Cephes expf minimax polynomial (separate multiply and add, not fused).
    let p = P[1..].iter().fold(P[0], |p, &c| p * r + c);
    let y = p * r * r + r + 1.0;
    let bits = ((n as i32 + 127) as u32) << 23;
    y * f32::from_bits(bits)
}

/// In-place softmax of one row.
#[inline]
pub fn softmax_in_place(row: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    let mut max = m.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    for &v in chunks.remainder() {
        max = max.max(v);
    }
    let mut s = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let e = exp_nonpositive(c[i] - max);
            c[i] = e;
            s[i] += e;
        }
    }
    let mut sum: f32 = s.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), exp_nonpositive(-87.0));
    }

    #[test]
    fn softmax_matches_reference() {
        let mut row: Vec<f32> = (0..37)
            .map(|i| ((i * 17 % 11) as f32 - 5.0) * 0.7)
            .collect();
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        softmax_in_place(&mut row);
        for (a, b) in row.iter().zip(&e) {
            assert!((*a as f64 - b / s).abs() < 1e-6);
        }
    }
}
