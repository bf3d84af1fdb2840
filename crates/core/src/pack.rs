//! Handoff of a [`QuantizedLinear`] to the packed CPU kernels (`qwen3-quant-kernels`).

use qwen3_quant_kernels::PackedMatrix;

use crate::error::Result;
use crate::linear::QuantizedLinear;

impl QuantizedLinear {
    /// Packs this linear for the CPU kernels.
    ///
    /// Columns are stored in act-order (`perm`) order when a permutation is present, so every
    /// group is a contiguous run of storage columns; per-channel linears become one group of
    /// `in_features` columns; SmoothQuant factors become the kernels' input scale `1/s`. The
    /// kernels use `W = scale·code + offset`, so
    /// `offset = −scale·zero`; the packed dequantization therefore equals [`Self::dequantize`]
    /// up to one f32 rounding (`s·c − s·z` instead of `s·(c − z)`).
    ///
    /// # Errors
    /// [`crate::Error::Kernel`] if the kernels reject the layout (e.g. an unsupported bit width:
    /// they support 1, 2, 3, 4 and 8 bits).
    pub fn to_packed(&self) -> Result<PackedMatrix> {
        let (o, n) = (self.out_features(), self.in_features());
        let ng = self.n_groups();
        let gs = self.group_size().unwrap_or(n).max(1);
        let codes: Vec<u8> = match self.perm() {
            Some(p) => {
                let mut c = vec![0u8; o * n];
                for r in 0..o {
                    let src = &self.codes()[r * n..(r + 1) * n];
                    for (d, &j) in c[r * n..(r + 1) * n].iter_mut().zip(p) {
                        *d = src[j as usize];
                    }
                }
                c
            }
            None => self.codes().to_vec(),
        };
        let mut scales = vec![0f32; o * ng];
        let mut offsets = vec![0f32; o * ng];
        for g in 0..ng {
            for r in 0..o {
                let s = self.scales()[g * o + r];
                scales[r * ng + g] = s;
                offsets[r * ng + g] = -s * self.zeros()[g * o + r] as f32;
            }
        }
        let packed = PackedMatrix::new(
            self.bits().get(),
            o,
            n,
            gs,
            &codes,
            &scales,
            &offsets,
            self.perm().map(<[u32]>::to_vec),
        )?;
        Ok(match self.smoothing() {
            // The kernels multiply the inputs by 1/s: y = W_q · (x / s).
            Some(s) => packed.with_input_scale(s.iter().map(|v| 1.0 / v).collect())?,
            None => packed,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::linear::canonical_g_idx;
    use crate::{Bits, QuantizedLinear};

    #[test]
    fn packed_dequant_matches() {
        let (o, n, gs) = (3usize, 200usize, 64usize);
        let ng = n.div_ceil(gs);
        let bits = Bits::B4;
        let perm: Vec<u32> = (0..n as u32).map(|j| (j * 7) % n as u32).collect(); // 7 coprime to 200
        for (group, p) in [
            (Some(gs), Some(perm.clone())),
            (Some(gs), None),
            (None, None),
        ] {
            let ngr = if group.is_some() { ng } else { 1 };
            let codes: Vec<u8> = (0..o * n).map(|i| (i * 5 % 16) as u8).collect();
            let scales: Vec<f32> = (0..o * ngr).map(|i| 0.01 + i as f32 * 0.003).collect();
            let zeros: Vec<u8> = (0..o * ngr).map(|i| (i % 16) as u8).collect();
            let g_idx = canonical_g_idx(n, group, p.as_deref());
            let q = QuantizedLinear::new(o, n, bits, group, false, codes, scales, zeros, g_idx, p)
                .unwrap();
            let smoothed = q
                .clone()
                .with_smoothing((0..n).map(|j| 0.5 + (j % 7) as f32).collect())
                .unwrap();
            for q in [q, smoothed] {
                let packed = q.to_packed().unwrap();
                assert_eq!(packed.input_scale().is_some(), q.smoothing().is_some());
                let a = q.dequantize();
                let b = packed.dequantize();
                assert_eq!(a.len(), b.len());
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{x} vs {y}");
                }
            }
        }
    }
}
