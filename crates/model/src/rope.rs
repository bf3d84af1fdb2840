//! Rotary position embeddings in the rotate-half form used by Qwen3 and LLaMA, with LLaMA-3's
//! "llama3" frequency scaling.
//!
//! The tables are computed once per model for a given length and passed to every layer (the
//! reference GPTQ code forgot exactly this argument; see `reference-methods.md` §0).

use qwen3_quant_io::config::RopeScaling;

/// One inverse frequency after `scaling`. For "llama3", with `wavelength = 2π / f` and the
/// pre-training length `L`: wavelengths above `L / low_freq_factor` get `f / factor`, those below
/// `L / high_freq_factor` keep `f`, and in between `f` moves linearly (in `L / wavelength`) from
/// `f / factor` to `f`: `(1 − t)·f/factor + t·f` with
/// `t = (L / wavelength − low_freq_factor) / (high_freq_factor − low_freq_factor)`.
pub fn scaled_inv_freq(f: f64, scaling: &RopeScaling) -> f64 {
    match *scaling {
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let l = original_max_position_embeddings as f64;
            let wavelength = 2.0 * std::f64::consts::PI / f;
            if wavelength < l / high_freq_factor {
                f
            } else if wavelength > l / low_freq_factor {
                f / factor
            } else {
                let t = (l / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - t) * f / factor + t * f
            }
        }
    }
}

/// cos/sin tables `[positions, head_dim / 2]` (the two halves of a head share them).
#[derive(Clone, Debug)]
pub struct Rope {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// Tables for positions `0..positions` of heads of width `head_dim` with base `theta`.
    ///
    /// Matches transformers: `inv_freq = 1 / theta^(2i/d)` in f32, angle = position · inv_freq in f32.
    pub fn new(head_dim: usize, theta: f64, positions: usize) -> Rope {
        Rope::scaled(head_dim, theta, None, positions)
    }

    /// [`Rope::new`] with the frequencies adjusted by `scaling` (none: plain RoPE).
    pub fn scaled(
        head_dim: usize,
        theta: f64,
        scaling: Option<&RopeScaling>,
        positions: usize,
    ) -> Rope {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
                scaling.map_or(f, |s| scaled_inv_freq(f, s)) as f32
            })
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &f in &inv_freq {
                let angle = p as f32 * f;
                cos.push((angle as f64).cos() as f32);
                sin.push((angle as f64).sin() as f32);
            }
        }
        Rope { half, cos, sin }
    }

    /// Positions covered.
    pub fn positions(&self) -> usize {
        self.cos.len().checked_div(self.half).unwrap_or(0)
    }

    /// Rotates one head vector `x` (`head_dim` values) at position `pos` in place.
    #[inline]
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let c = &self.cos[pos * h..(pos + 1) * h];
        let s = &self.sin[pos * h..(pos + 1) * h];
        let (a, b) = x.split_at_mut(h);
        for i in 0..h {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * c[i] - x2 * s[i];
            b[i] = x2 * c[i] + x1 * s[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA3: RopeScaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    };

    #[test]
    fn llama3_scaling_keeps_high_stretches_low_and_interpolates_between() {
        let tau = 2.0 * std::f64::consts::PI;
        // wavelength 8 < 64/4: unchanged.
        assert_eq!(scaled_inv_freq(tau / 8.0, &LLAMA3), tau / 8.0);
        // wavelength 128 > 64/1: divided by the factor.
        assert_eq!(scaled_inv_freq(tau / 128.0, &LLAMA3), tau / 128.0 / 8.0);
        // Continuous at both edges of the band.
        for wl in [16.0, 64.0] {
            let f = tau / wl;
            let inside = scaled_inv_freq(f * (1.0 + 1e-9), &LLAMA3);
            let outside = scaled_inv_freq(f * (1.0 - 1e-9), &LLAMA3);
            assert!((inside - outside).abs() < 1e-6 * f, "wavelength {wl}");
        }
        // Wavelength 32: L / wavelength = 2, a third of the way from low (1) to high (4).
        let f = tau / 32.0;
        let want = (2.0 / 3.0) * f / 8.0 + (1.0 / 3.0) * f;
        assert!((scaled_inv_freq(f, &LLAMA3) - want).abs() < 1e-15);
        // Monotone in the original frequency.
        let mut last = 0.0;
        for k in 1..2000 {
            let g = scaled_inv_freq(k as f64 * 1e-3, &LLAMA3);
            assert!(g > last, "not increasing at {k}");
            last = g;
        }
    }

    #[test]
    fn scaled_tables_differ_only_in_the_low_frequencies() {
        let (hd, theta, pos) = (32, 500000.0, 70);
        let plain = Rope::new(hd, theta, pos);
        let scaled = Rope::scaled(hd, theta, Some(&LLAMA3), pos);
        assert_eq!(scaled.positions(), pos);
        let half = hd / 2;
        let p = pos - 1;
        let row = |r: &Rope| r.sin[p * half..(p + 1) * half].to_vec();
        let (a, b) = (row(&plain), row(&scaled));
        // i = 0, 1: wavelengths 6.3 and 14.3 (< 16), untouched; i = 15: stretched.
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[15], b[15]);
        assert!(Rope::scaled(hd, theta, None, pos).sin == plain.sin);
    }
}
