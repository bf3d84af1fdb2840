//! Rotary position embeddings in the rotate-half form used by Qwen3.
//!
//! The tables are computed once per model for a given length and passed to every layer (the
//! reference GPTQ code forgot exactly this argument; see `reference-methods.md` §0).

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
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
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
