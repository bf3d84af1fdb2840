//! Orthogonal rotations of the residual stream for post-training quantization (QuaRot, Ashkboos
//! et al. 2024; SpinQuant, Liu et al. 2024), as a [`ResidualRotation`] the driver of
//! `qwen3-quant-calib` folds into the model before its layer loop
//! (`Pipeline::with_rotation`). In full precision the rotated model computes the same function;
//! what changes is the basis the weights are quantized in: a Hadamard-like rotation spreads a
//! few large input channels over all channels, so a low-bit group grid wastes fewer levels on
//! outliers. Weight-only models keep no run-time cost (every factor is folded into weights).
//!
//! [`Hadamard`] builds `Q = D · (H ⊗ R)`: `H` the normalised Sylvester Hadamard matrix of the
//! largest power of two dividing the width, `R` a random orthogonal matrix of the odd remainder
//! (`[1]` for the powers of two of Qwen3-0.6B to 8B; 5 × 5 for widths 2560 and 5120), `D` random
//! signs. Seeded, so a run is reproducible.
//!
//! ```
//! use qwen3_quant_core::ResidualRotation;
//! use qwen3_quant_rotate::Hadamard;
//! let q = Hadamard::new(7).matrix(8)?;
//! // Orthogonal: QᵀQ = I.
//! for i in 0..8 {
//!     for j in 0..8 {
//!         let dot: f32 = (0..8).map(|k| q[k * 8 + i] * q[k * 8 + j]).sum();
//!         assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-6);
//!     }
//! }
//! // Every entry of a power-of-two Hadamard rotation has magnitude 1/sqrt(d).
//! assert!(q.iter().all(|v| (v.abs() - 8f32.sqrt().recip()).abs() < 1e-6));
//! # Ok::<(), qwen3_quant_core::MethodError>(())
//! ```

#![warn(missing_docs)]

use qwen3_quant_core::{Error as CoreError, MethodError, ResidualRotation};

/// A randomized Hadamard rotation (see the crate documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hadamard {
    seed: u64,
}

impl Default for Hadamard {
    /// Seed 0.
    fn default() -> Self {
        Hadamard { seed: 0 }
    }
}

impl Hadamard {
    /// The rotation drawn with `seed` (signs and the odd factor).
    pub fn new(seed: u64) -> Self {
        Hadamard { seed }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl ResidualRotation for Hadamard {
    fn name(&self) -> &'static str {
        "hadamard"
    }

    fn matrix(&self, d: usize) -> Result<Vec<f32>, MethodError> {
        if d == 0 {
            return Err(MethodError::InvalidConfig(CoreError::InvalidConfig {
                field: "hidden_size",
                reason: "a rotation needs a positive width",
            }));
        }
        let pow2 = 1usize << d.trailing_zeros();
        let odd = d / pow2;
        let mut rng = SplitMix64(self.seed ^ 0x9e37_79b9_7f4a_7c15);
        let r = random_orthogonal(odd, &mut rng);
        let norm = 1.0 / (pow2 as f64).sqrt();
        let signs: Vec<f64> = (0..d)
            .map(|_| if rng.next() & 1 == 0 { 1.0 } else { -1.0 })
            .collect();
        let mut q = vec![0.0f32; d * d];
        for (row, s) in signs.iter().enumerate() {
            let (a, b) = (row / odd, row % odd);
            for col in 0..d {
                let (c, e) = (col / odd, col % odd);
                // Sylvester: H[a, c] = (−1)^popcount(a & c).
                let h = if (a & c).count_ones() % 2 == 0 {
                    norm
                } else {
                    -norm
                };
                q[row * d + col] = (s * h * r[b * odd + e]) as f32;
            }
        }
        Ok(q)
    }
}

/// A random `[n, n]` orthogonal matrix: Gram–Schmidt (twice, for accuracy) on Gaussian columns.
fn random_orthogonal(n: usize, rng: &mut SplitMix64) -> Vec<f64> {
    let mut cols: Vec<Vec<f64>> = Vec::with_capacity(n);
    while cols.len() < n {
        let mut v: Vec<f64> = (0..n).map(|_| rng.gaussian()).collect();
        for _ in 0..2 {
            for c in &cols {
                let dot: f64 = v.iter().zip(c).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(c).for_each(|(a, b)| *a -= dot * b);
            }
        }
        let len = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        // A draw (numerically) inside the span so far is redrawn.
        if len > 1e-6 {
            v.iter_mut().for_each(|x| *x /= len);
            cols.push(v);
        }
    }
    let mut m = vec![0.0; n * n];
    for (j, c) in cols.iter().enumerate() {
        for (i, &x) in c.iter().enumerate() {
            m[i * n + j] = x;
        }
    }
    m
}

/// A small, seedable generator (SplitMix64): reproducible without a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Box–Muller.
    fn gaussian(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_off_identity(q: &[f32], d: usize) -> f64 {
        let mut worst = 0.0f64;
        for i in 0..d {
            for j in 0..d {
                let dot: f64 = (0..d)
                    .map(|k| q[k * d + i] as f64 * q[k * d + j] as f64)
                    .sum();
                worst = worst.max((dot - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
        worst
    }

    /// Powers of two, widths with an odd factor (Qwen3-4B's 2560 = 512 · 5, scaled down) and an
    /// odd width are all orthogonal; the seed changes the matrix and fixes it.
    #[test]
    fn orthogonal_for_every_width_and_seeded() {
        for d in [1, 2, 16, 20, 40, 7] {
            let q = Hadamard::new(3).matrix(d).unwrap();
            assert!(max_off_identity(&q, d) < 1e-5, "width {d}");
        }
        let (a, b) = (Hadamard::new(1).matrix(64), Hadamard::new(2).matrix(64));
        assert_ne!(a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(a.unwrap(), Hadamard::new(1).matrix(64).unwrap());
        assert!(matches!(
            Hadamard::default().matrix(0),
            Err(MethodError::InvalidConfig(_))
        ));
    }

    /// The point of the rotation: one huge channel is spread evenly over all channels.
    #[test]
    fn spreads_an_outlier_channel() {
        let d = 64;
        let q = Hadamard::new(5).matrix(d).unwrap();
        let mut x = vec![0.01f32; d];
        x[17] = 10.0;
        let y: Vec<f32> = (0..d)
            .map(|j| (0..d).map(|k| x[k] * q[k * d + j]).sum())
            .collect();
        let max = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max < 10.0 / (d as f32).sqrt() * 1.2, "max {max}");
    }
}
