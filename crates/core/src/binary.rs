//! [`BinaryLinear`] (BiLLM's binarized weights) and [`QuantizedWeight`], the output of any method.

use qwen3_quant_kernels::{BinaryMatrix, BinaryParams, PackedMatrix, BINARY_BLOCK};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linear::QuantizedLinear;

/// A BiLLM-binarized `nn.Linear` weight `[out, in]` (unpacked).
///
/// In each 128-column block, the *salient* columns (shared by all rows) are binarized twice
/// (residual: `(μ₁ + α₁·s₁) + (μ₂ + α₂·s₂)`), and each row's other weights are split into a
/// *sparse* and a *concentrated* group binarized once (`μ + α·s`), each binarization with its own
/// mean and scale per (row, block), [`BinaryParams`]. Per weight it keeps the first sign `s₁`
/// (`signs`, 1 = positive) and `bit1`: the group (1 = concentrated) for non-salient weights, the
/// second sign for salient ones. A weight exactly at its group's mean (the reference's
/// `sign(0) = 0`) is stored with sign +1; this differs from the reference only when `α > 0` and
/// the weight equals `μ` exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryLinear {
    out_features: usize,
    in_features: usize,
    signs: Vec<u8>,
    bit1: Vec<u8>,
    salient: Vec<bool>,
    params: Vec<BinaryParams>,
}

impl BinaryLinear {
    /// Validated constructor: `signs`, `bit1` `[out, in]` of 0/1, `salient` `[in]`, `params`
    /// `[out, ceil(in / 128)]` row-major.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::OutOfRange`] (a bit that is not 0 or 1),
    /// [`Error::NonFinite`] (parameters).
    pub fn new(
        out_features: usize,
        in_features: usize,
        signs: Vec<u8>,
        bit1: Vec<u8>,
        salient: Vec<bool>,
        params: Vec<BinaryParams>,
    ) -> Result<Self> {
        let n = out_features * in_features;
        let n_blocks = in_features.div_ceil(BINARY_BLOCK);
        for (what, expected, actual) in [
            ("signs", n, signs.len()),
            ("bit1", n, bit1.len()),
            ("salient", in_features, salient.len()),
            ("binary params", out_features * n_blocks, params.len()),
        ] {
            if expected != actual {
                return Err(Error::ShapeMismatch {
                    what,
                    expected,
                    actual,
                });
            }
        }
        for (what, v) in [("signs", &signs), ("bit1", &bit1)] {
            if let Some(index) = v.iter().position(|&b| b > 1) {
                return Err(Error::OutOfRange {
                    what,
                    index,
                    value: u64::from(v[index]),
                    max: 1,
                });
            }
        }
        let flat = |p: &BinaryParams| [p.sparse, p.concentrated, p.salient_first, p.salient_second];
        if let Some(index) = params
            .iter()
            .position(|p| !flat(p).iter().flatten().all(|v| v.is_finite()))
        {
            return Err(Error::NonFinite {
                what: "binary params",
                index,
            });
        }
        Ok(Self {
            out_features,
            in_features,
            signs,
            bit1,
            salient,
            params,
        })
    }

    /// Output features (rows).
    pub fn out_features(&self) -> usize {
        self.out_features
    }
    /// Input features (columns).
    pub fn in_features(&self) -> usize {
        self.in_features
    }
    /// First-order signs `[out, in]` (1 = positive).
    pub fn signs(&self) -> &[u8] {
        &self.signs
    }
    /// Group (non-salient: 1 = concentrated) or second-order sign (salient) `[out, in]`.
    pub fn bit1(&self) -> &[u8] {
        &self.bit1
    }
    /// Salient columns `[in]`.
    pub fn salient(&self) -> &[bool] {
        &self.salient
    }
    /// Per (row, block) means and scales, `[out, ceil(in / 128)]`.
    pub fn params(&self) -> &[BinaryParams] {
        &self.params
    }

    /// Fraction of columns that are salient (over all blocks).
    pub fn salient_fraction(&self) -> f64 {
        if self.in_features == 0 {
            return 0.0;
        }
        self.salient.iter().filter(|&&s| s).count() as f64 / self.in_features as f64
    }

    /// Dequantized weight `[out, in]`, summed in the reference's order.
    pub fn dequantize(&self) -> Vec<f32> {
        let (o, n) = (self.out_features, self.in_features);
        let nb = n.div_ceil(BINARY_BLOCK);
        let mut w = vec![0f32; o * n];
        if n == 0 {
            return w;
        }
        w.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
            for (b, chunk) in row.chunks_mut(BINARY_BLOCK).enumerate() {
                let table = self.params[r * nb + b].table();
                for (i, v) in chunk.iter_mut().enumerate() {
                    let c = b * BINARY_BLOCK + i;
                    let idx = usize::from(self.salient[c]) << 2
                        | usize::from(self.bit1[r * n + c]) << 1
                        | usize::from(self.signs[r * n + c]);
                    *v = table[idx];
                }
            }
        });
        w
    }

    /// Honest storage cost in bits per weight: the sign bit and the group/second-sign bit of
    /// every weight, one bit per column for the salient map, and eight fp16 values (four `(μ, α)`
    /// pairs) per (row, 128-column block). BiLLM's own figure is [`Self::billm_reported_bits`].
    pub fn bits_per_weight(&self) -> f64 {
        let n_w = (self.out_features * self.in_features) as f64;
        if n_w == 0.0 {
            return 0.0;
        }
        (2.0 * n_w + self.in_features as f64 + 128.0 * self.params.len() as f64) / n_w
    }

    /// The bit count BiLLM reports: `1 + salient fraction` (one sign per weight plus a second for
    /// salient ones), ignoring the group bitmap, the salient map and the means and scales.
    pub fn billm_reported_bits(&self) -> f64 {
        1.0 + self.salient_fraction()
    }

    /// Packs this weight for the binary kernels.
    ///
    /// # Errors
    /// [`Error::Kernel`] if the kernels reject it (not expected for a validated value).
    pub fn to_packed(&self) -> Result<BinaryMatrix> {
        Ok(BinaryMatrix::new(
            self.out_features,
            self.in_features,
            &self.signs,
            &self.bit1,
            &self.salient,
            &self.params,
        )?)
    }
}

/// What a method produces for one linear: affine integer codes ([`QuantizedLinear`]: RTN, GPTQ,
/// AWQ, SmoothQuant) or BiLLM's binary residual weights ([`BinaryLinear`]).
#[derive(Debug, Clone, PartialEq)]
pub enum QuantizedWeight {
    /// Integer codes with per-group scales and zero points.
    Affine(QuantizedLinear),
    /// Binary residual weights.
    Binary(BinaryLinear),
}

/// A packed weight ready for the CPU kernels.
#[derive(Debug, Clone)]
pub enum PackedWeight {
    /// Packed integer codes.
    Affine(PackedMatrix),
    /// Packed binary weights.
    Binary(BinaryMatrix),
}

impl From<QuantizedLinear> for QuantizedWeight {
    fn from(q: QuantizedLinear) -> Self {
        Self::Affine(q)
    }
}

impl From<BinaryLinear> for QuantizedWeight {
    fn from(b: BinaryLinear) -> Self {
        Self::Binary(b)
    }
}

impl QuantizedWeight {
    /// Output features.
    pub fn out_features(&self) -> usize {
        match self {
            Self::Affine(q) => q.out_features(),
            Self::Binary(b) => b.out_features(),
        }
    }
    /// Input features.
    pub fn in_features(&self) -> usize {
        match self {
            Self::Affine(q) => q.in_features(),
            Self::Binary(b) => b.in_features(),
        }
    }
    /// Dequantized weight `[out, in]` in the original input space.
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            Self::Affine(q) => q.dequantize(),
            Self::Binary(b) => b.dequantize(),
        }
    }
    /// Honest storage bits per weight.
    pub fn bits_per_weight(&self) -> f64 {
        match self {
            Self::Affine(q) => q.bits_per_weight(),
            Self::Binary(b) => b.bits_per_weight(),
        }
    }
    /// The affine form, if that is what this is.
    pub fn as_affine(&self) -> Option<&QuantizedLinear> {
        match self {
            Self::Affine(q) => Some(q),
            Self::Binary(_) => None,
        }
    }
    /// Packs for the CPU kernels.
    ///
    /// # Errors
    /// [`Error::Kernel`] if the kernels reject the layout.
    pub fn to_packed(&self) -> Result<PackedWeight> {
        Ok(match self {
            Self::Affine(q) => PackedWeight::Affine(q.to_packed()?),
            Self::Binary(b) => PackedWeight::Binary(b.to_packed()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BinaryLinear {
        let (o, n) = (2usize, 130usize);
        let p = |i: usize| BinaryParams {
            sparse: [0.01 * i as f32, 0.02],
            concentrated: [-0.01, 0.005 * (i + 1) as f32],
            salient_first: [0.1, 0.3],
            salient_second: [0.02, 0.05],
        };
        BinaryLinear::new(
            o,
            n,
            (0..o * n).map(|i| (i % 3 == 0) as u8).collect(),
            (0..o * n).map(|i| (i % 5 < 2) as u8).collect(),
            (0..n).map(|j| j % 16 == 3).collect(),
            (0..o * 2).map(p).collect(),
        )
        .unwrap()
    }

    #[test]
    fn dequantize_packs_and_counts_bits() {
        let b = sample();
        let w = b.dequantize();
        // Row 0, column 3 (salient, sign 1, second sign 0): (0.1 + 0.3) + (0.02 − 0.05).
        assert_eq!(w[3], (0.1f32 + 0.3) + (0.02 - 0.05));
        // Row 0, column 1 (sparse group, sign 0, bit1 1 → concentrated): −0.01 − 0.005.
        assert_eq!(w[1], -0.01f32 - 0.005);
        let q: QuantizedWeight = b.clone().into();
        let PackedWeight::Binary(m) = q.to_packed().unwrap() else {
            panic!("binary expected")
        };
        assert_eq!(m.dequantize(), w);
        let frac = 8.0 / 130.0; // columns 3, 19, …, 115
        assert!((b.salient_fraction() - frac).abs() < 1e-12);
        assert!((b.billm_reported_bits() - (1.0 + frac)).abs() < 1e-12);
        let honest = (2.0 * 260.0 + 130.0 + 128.0 * 4.0) / 260.0;
        assert!((q.bits_per_weight() - honest).abs() < 1e-12);
    }

    #[test]
    fn invalid_inputs_are_typed_errors() {
        let b = sample();
        let mut signs = b.signs().to_vec();
        signs[7] = 2;
        let e = BinaryLinear::new(
            2,
            130,
            signs,
            b.bit1().to_vec(),
            b.salient().to_vec(),
            b.params().to_vec(),
        );
        assert!(matches!(e, Err(Error::OutOfRange { index: 7, .. })));
        let mut p = b.params().to_vec();
        p[3].sparse[0] = f32::INFINITY;
        let e = BinaryLinear::new(
            2,
            130,
            b.signs().to_vec(),
            b.bit1().to_vec(),
            b.salient().to_vec(),
            p,
        );
        assert!(matches!(e, Err(Error::NonFinite { index: 3, .. })));
        let e = BinaryLinear::new(
            2,
            130,
            b.signs().to_vec(),
            b.bit1().to_vec(),
            vec![false; 3],
            b.params().to_vec(),
        );
        assert!(matches!(e, Err(Error::ShapeMismatch { .. })));
    }
}
