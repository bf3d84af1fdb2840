//! [`DecodedLinear`]: what every format's reader produces for one affine linear (integer codes,
//! per-group scales and zero points, the group of each input column), and its handoff to the
//! packed kernels.

use qwen3_quant_core::QuantizedLinear;
use qwen3_quant_kernels::PackedMatrix;

use crate::error::{inconsistent, FormatError, Result};

/// One affine linear as stored in a checkpoint, unpacked to one byte per code.
///
/// `W[r, c] = scales[g, r] · (codes[r, c] − zeros[g, r]) · input_scale[c]` with `g = g_idx[c]`.
/// Zero points are kept as `f32` because GPTQ v1 files can decode to a zero of `2^bits`
/// (a stored `zero − 1` that wrapped around), which no code can equal.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedLinear {
    /// Output features.
    pub out_features: usize,
    /// Input features.
    pub in_features: usize,
    /// Code width.
    pub bits: u8,
    /// Codes `[out, in]`, original column order.
    pub codes: Vec<u8>,
    /// Scales `[groups, out]`.
    pub scales: Vec<f32>,
    /// Zero points `[groups, out]`.
    pub zeros: Vec<f32>,
    /// Group of each input column, `[in]`.
    pub g_idx: Vec<u32>,
    /// Per-input-column factor applied to `x` (SmoothQuant's `1/s`), if any.
    pub input_scale: Option<Vec<f32>>,
}

impl DecodedLinear {
    /// The unpacked form of a method's output (codes, scales and zeros as they are).
    pub fn from_quantized(q: &QuantizedLinear) -> Self {
        DecodedLinear {
            out_features: q.out_features(),
            in_features: q.in_features(),
            bits: q.bits().get(),
            codes: q.codes().to_vec(),
            scales: q.scales().to_vec(),
            zeros: q.zeros().iter().map(|&z| f32::from(z)).collect(),
            g_idx: q.g_idx().to_vec(),
            input_scale: q.smoothing().map(|s| s.iter().map(|v| 1.0 / v).collect()),
        }
    }

    /// Number of groups (rows of `scales`).
    pub fn n_groups(&self) -> usize {
        self.scales.len() / self.out_features.max(1)
    }

    /// Checks lengths and value ranges; `module` names the linear in errors.
    pub fn validate(&self, module: &str) -> Result<()> {
        let (o, n) = (self.out_features, self.in_features);
        let ng = self.n_groups();
        if !matches!(self.bits, 1 | 2 | 3 | 4 | 8) {
            return Err(FormatError::UnsupportedBits {
                module: module.into(),
                bits: self.bits.into(),
                format: "the packed kernels",
            });
        }
        let len_ok = self.codes.len() == o * n
            && self.scales.len() == ng * o
            && self.zeros.len() == ng * o
            && self.g_idx.len() == n
            && ng > 0
            && self.input_scale.as_ref().is_none_or(|s| s.len() == n);
        if !len_ok {
            return Err(inconsistent(
                module,
                format!(
                    "codes {} / scales {} / zeros {} / g_idx {} do not fit [{o}, {n}]",
                    self.codes.len(),
                    self.scales.len(),
                    self.zeros.len(),
                    self.g_idx.len()
                ),
            ));
        }
        if let Some((column, &g)) = self
            .g_idx
            .iter()
            .enumerate()
            .find(|(_, &g)| g as usize >= ng)
        {
            return Err(FormatError::GIdxOutOfRange {
                module: module.into(),
                column,
                value: g.into(),
                groups: ng,
            });
        }
        let maxq = (1u16 << self.bits) - 1;
        if let Some(i) = self.codes.iter().position(|&c| u16::from(c) > maxq) {
            return Err(inconsistent(
                module,
                format!("code {} at {i} exceeds {maxq}", self.codes[i]),
            ));
        }
        if let Some(i) = self
            .scales
            .iter()
            .chain(&self.zeros)
            .position(|v| !v.is_finite())
        {
            return Err(inconsistent(
                module,
                format!("non-finite scale or zero at {i}"),
            ));
        }
        Ok(())
    }

    /// The storage layout the kernels need: columns sorted by group (a stable sort, so a
    /// canonical `g_idx` keeps the natural order), and the storage group size: the largest run
    /// that never straddles two stored groups (the stored group size for every file written by
    /// GPTQ-style tools, smaller only for irregular `g_idx`).
    fn storage_layout(&self) -> (Option<Vec<u32>>, usize) {
        let n = self.in_features;
        let sorted = self.g_idx.windows(2).all(|w| w[0] <= w[1]);
        let perm: Option<Vec<u32>> = if sorted {
            None
        } else {
            let mut p: Vec<u32> = (0..n as u32).collect();
            p.sort_by_key(|&c| self.g_idx[c as usize]);
            Some(p)
        };
        let group_of = |j: usize| -> u32 {
            match &perm {
                Some(p) => self.g_idx[p[j] as usize],
                None => self.g_idx[j],
            }
        };
        // Storage group boundaries are where the group changes; their gcd is the group size.
        let mut d = 0usize;
        for j in 1..n {
            if group_of(j) != group_of(j - 1) {
                d = gcd(d, j);
            }
        }
        (perm, if d == 0 { n.max(1) } else { d })
    }

    /// Packs for the CPU kernels without expanding the weight to f32: codes are moved into
    /// storage order, scales and `offset = −scale·zero` repeated per storage group.
    ///
    /// # Errors
    /// [`FormatError::Inconsistent`] / [`FormatError::GIdxOutOfRange`] from [`Self::validate`];
    /// kernel errors for layouts the kernels reject.
    pub fn to_packed(&self, module: &str) -> Result<PackedMatrix> {
        self.validate(module)?;
        let (o, n) = (self.out_features, self.in_features);
        let (perm, gs) = self.storage_layout();
        let sg = n.div_ceil(gs).max(1);
        let codes: Vec<u8> = match &perm {
            Some(p) => {
                let mut c = vec![0u8; o * n];
                for r in 0..o {
                    let src = &self.codes[r * n..(r + 1) * n];
                    for (d, &j) in c[r * n..(r + 1) * n].iter_mut().zip(p) {
                        *d = src[j as usize];
                    }
                }
                c
            }
            None => self.codes.clone(),
        };
        let mut scales = vec![0f32; o * sg];
        let mut offsets = vec![0f32; o * sg];
        for s in 0..sg {
            let first = s * gs;
            let col = perm.as_ref().map_or(first, |p| p[first] as usize);
            let g = if n == 0 { 0 } else { self.g_idx[col] as usize };
            for r in 0..o {
                let sc = self.scales[g * o + r];
                scales[r * sg + s] = sc;
                offsets[r * sg + s] = -sc * self.zeros[g * o + r];
            }
        }
        let packed = PackedMatrix::new(self.bits, o, n, gs, &codes, &scales, &offsets, perm)?;
        Ok(match &self.input_scale {
            Some(s) => packed.with_input_scale(s.clone())?,
            None => packed,
        })
    }

    /// Dense `[out, in]` weight (for tests and small comparisons only; loading never calls it).
    pub fn dequantize(&self) -> Vec<f32> {
        let (o, n) = (self.out_features, self.in_features);
        let mut w = vec![0f32; o * n];
        for r in 0..o {
            for c in 0..n {
                let g = self.g_idx[c] as usize;
                let v = self.scales[g * o + r]
                    * (f32::from(self.codes[r * n + c]) - self.zeros[g * o + r]);
                w[r * n + c] = v * self.input_scale.as_ref().map_or(1.0, |s| s[c]);
            }
        }
        w
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(g_idx: Vec<u32>, groups: usize) -> DecodedLinear {
        let (o, n) = (3usize, g_idx.len());
        DecodedLinear {
            out_features: o,
            in_features: n,
            bits: 4,
            codes: (0..o * n).map(|i| (i * 7 % 16) as u8).collect(),
            scales: (0..groups * o).map(|i| 0.01 * (i + 1) as f32).collect(),
            zeros: (0..groups * o).map(|i| (i % 17) as f32).collect(),
            g_idx,
            input_scale: None,
        }
    }

    /// Regular, act-order and irregular group layouts all pack to the same weight.
    #[test]
    fn any_g_idx_packs_to_the_same_weight() {
        let n = 64usize;
        let canonical: Vec<u32> = (0..n as u32).map(|c| c / 16).collect();
        let perm: Vec<u32> = (0..n as u32).map(|j| (j * 7) % n as u32).collect();
        let mut act = vec![0u32; n];
        for (j, &c) in perm.iter().enumerate() {
            act[c as usize] = j as u32 / 16;
        }
        // Groups of 8, 24, 16, 16 columns in a shuffled order: storage groups of 8.
        let irregular: Vec<u32> = (0..n)
            .map(|c| match (c * 5) % n {
                0..=7 => 2,
                8..=31 => 0,
                32..=47 => 3,
                _ => 1,
            })
            .collect();
        for g in [canonical, act, irregular] {
            let d = sample(g, 4);
            let p = d.to_packed("t").unwrap();
            let (a, b) = (p.dequantize(), d.dequantize());
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn bad_g_idx_is_a_typed_error() {
        let mut g: Vec<u32> = (0..32).map(|c| c / 16).collect();
        g[5] = 9;
        assert!(matches!(
            sample(g, 2).to_packed("t"),
            Err(FormatError::GIdxOutOfRange { column: 5, .. })
        ));
    }
}
