//! [`BinaryLinear`] (BiLLM's binarized weights) and [`QuantizedWeight`], the output of any method.

use qwen3_quant_kernels::{
    table_index, BinaryMatrix, BinaryParams, BinaryTable, PackedMatrix, BINARY_BLOCK, BINARY_CHUNK,
};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linear::QuantizedLinear;

/// A BiLLM-binarized `nn.Linear` weight `[out, in]` (unpacked codes, stored tables).
///
/// In each block of `block_size` columns (128 by default), the *salient* columns (shared by all
/// rows) are binarized twice (residual: `(μ₁ + α₁·s₁) + (μ₂ + α₂·s₂)`), and each row's other
/// weights are split into a *sparse* and a *concentrated* group binarized once (`μ + α·s`), each
/// binarization with its own mean and scale per (row, block). Per weight it keeps the first sign
/// `s₁` (`signs`, 1 = positive) and `bit1`: the group (1 = concentrated) for non-salient weights,
/// the second sign for salient ones. The 8 values a weight of a (row, block) can take are kept
/// as the stored [`BinaryTable`] (8 int8 codes and a bf16 scale), indexed by
/// [`qwen3_quant_kernels::table_index`]; [`Self::dequantize`] and the packed kernels read the
/// same values, so fake quantization and packed inference agree bit for bit.
///
/// A weight exactly at its group's mean (the reference's `sign(0) = 0`) is stored with sign +1;
/// this differs from the reference only when `α > 0` and the weight equals `μ` exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryLinear {
    out_features: usize,
    in_features: usize,
    block_size: usize,
    signs: Vec<u8>,
    bit1: Vec<u8>,
    salient: Vec<bool>,
    tables: Vec<BinaryTable>,
}

impl BinaryLinear {
    /// Validated constructor: `signs`, `bit1` `[out, in]` of 0/1, `salient` `[in]`, `tables`
    /// `[out, ceil(in / block_size)]` row-major; `block_size` a positive multiple of 64.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::OutOfRange`] (a bit that is not 0 or 1),
    /// [`Error::InvalidConfig`] (block size).
    pub fn new(
        out_features: usize,
        in_features: usize,
        block_size: usize,
        signs: Vec<u8>,
        bit1: Vec<u8>,
        salient: Vec<bool>,
        tables: Vec<BinaryTable>,
    ) -> Result<Self> {
        if block_size == 0 || block_size % BINARY_CHUNK != 0 {
            return Err(Error::InvalidConfig {
                field: "block_size",
                reason: "binary blocks must be a positive multiple of 64 columns",
            });
        }
        let n = out_features * in_features;
        let n_blocks = in_features.div_ceil(block_size);
        for (what, expected, actual) in [
            ("signs", n, signs.len()),
            ("bit1", n, bit1.len()),
            ("salient", in_features, salient.len()),
            ("binary tables", out_features * n_blocks, tables.len()),
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
        Ok(Self {
            out_features,
            in_features,
            block_size,
            signs,
            bit1,
            salient,
            tables,
        })
    }

    /// [`Self::new`] with 128-column blocks from the f32 means and scales of each (row, block),
    /// rounded to their stored tables ([`BinaryParams::quantized_table`]).
    ///
    /// # Errors
    /// As [`Self::new`], plus [`Error::NonFinite`] for a NaN/inf parameter.
    pub fn from_params(
        out_features: usize,
        in_features: usize,
        signs: Vec<u8>,
        bit1: Vec<u8>,
        salient: Vec<bool>,
        params: &[BinaryParams],
    ) -> Result<Self> {
        let tables = params
            .iter()
            .enumerate()
            .map(|(index, p)| {
                p.quantized_table().map_err(|_| Error::NonFinite {
                    what: "binary params",
                    index,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(
            out_features,
            in_features,
            BINARY_BLOCK,
            signs,
            bit1,
            salient,
            tables,
        )
    }

    /// Output features (rows).
    pub fn out_features(&self) -> usize {
        self.out_features
    }
    /// Input features (columns).
    pub fn in_features(&self) -> usize {
        self.in_features
    }
    /// Columns per block (per table).
    pub fn block_size(&self) -> usize {
        self.block_size
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
    /// Per (row, block) stored tables, `[out, ceil(in / block_size)]`.
    pub fn tables(&self) -> &[BinaryTable] {
        &self.tables
    }

    /// Fraction of columns that are salient, over all blocks.
    pub fn salient_fraction(&self) -> f64 {
        if self.in_features == 0 {
            return 0.0;
        }
        self.salient.iter().filter(|&&s| s).count() as f64 / self.in_features as f64
    }

    /// The bit figure BiLLM's reference code reports for this matrix: `1 + ` the salient
    /// fraction of the **last** block only (its `high_params` variable is overwritten in the
    /// block loop), i.e. one sign per weight plus a second sign for salient ones, ignoring the
    /// group bitmap, the salient map and the means and scales. Honest storage:
    /// [`Self::bits_per_weight`]; salient fraction over all blocks: [`Self::salient_fraction`].
    pub fn reference_bits(&self) -> f64 {
        if self.in_features == 0 {
            return 1.0;
        }
        let start = (self.in_features - 1) / self.block_size * self.block_size;
        let last = &self.salient[start..];
        1.0 + last.iter().filter(|&&s| s).count() as f64 / last.len() as f64
    }

    /// Honest storage cost in bits per weight of the packed layout
    /// ([`BinaryMatrix::storage_bytes_for`]): 2 bits per weight (first sign, and the group or the
    /// second sign), 1 bit per column for the salient map, and 80 bits per (row, block) table
    /// (8 int8 values and a bf16 scale). About 2.63 with 128-column blocks.
    pub fn bits_per_weight(&self) -> f64 {
        let n_w = (self.out_features * self.in_features) as f64;
        if n_w == 0.0 {
            return 0.0;
        }
        let bytes =
            BinaryMatrix::storage_bytes_for(self.out_features, self.in_features, self.block_size);
        8.0 * bytes as f64 / n_w
    }

    /// Dequantized weight `[out, in]`: each weight's stored table value.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out_features * self.in_features];
        self.dequantize_rows(0, &mut w);
        w
    }

    fn dequantize_rows(&self, first_row: usize, w: &mut [f32]) {
        let (n, bs) = (self.in_features, self.block_size);
        let nb = n.div_ceil(bs);
        if n == 0 {
            return;
        }
        w.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            let r = first_row + i;
            for (b, chunk) in row.chunks_mut(bs).enumerate() {
                let table = self.tables[r * nb + b].values();
                for (i, v) in chunk.iter_mut().enumerate() {
                    let c = b * bs + i;
                    *v = table
                        [table_index(self.salient[c], self.bit1[r * n + c], self.signs[r * n + c])];
                }
            }
        });
    }

    /// Packs this weight for the binary kernels.
    ///
    /// # Errors
    /// [`Error::Kernel`] if the kernels reject it (not expected for a validated value).
    pub fn to_packed(&self) -> Result<BinaryMatrix> {
        Ok(BinaryMatrix::from_tables(
            self.out_features,
            self.in_features,
            self.block_size,
            &self.signs,
            &self.bit1,
            &self.salient,
            &self.tables,
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

    /// [`Self::dequantize`] into `out` (`[out, in]`), e.g. the buffer of the weight it replaces,
    /// so that a fake-quantized model never holds two f32 copies of a linear.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `out` does not hold `out_features · in_features` values.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        match self {
            Self::Affine(q) => q.dequantize_into(out),
            Self::Binary(b) => {
                crate::linear::check_output_len(b.out_features * b.in_features, out.len())?;
                b.dequantize_rows(0, out);
                Ok(())
            }
        }
    }

    /// Rows `first_row..first_row + out.len() / in_features` of [`Self::dequantize`] into `out`:
    /// for a caller that rebuilds the weight a block of rows at a time.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `out` is not a whole number of rows inside the weight.
    pub fn dequantize_rows_into(&self, first_row: usize, out: &mut [f32]) -> Result<()> {
        match self {
            Self::Affine(q) => q.dequantize_rows_into(first_row, out),
            Self::Binary(b) => {
                crate::linear::check_row_range(
                    b.out_features,
                    b.in_features,
                    first_row,
                    out.len(),
                )?;
                b.dequantize_rows(first_row, out);
                Ok(())
            }
        }
    }
    /// Honest storage bits per weight.
    pub fn bits_per_weight(&self) -> f64 {
        match self {
            Self::Affine(q) => q.bits_per_weight(),
            Self::Binary(b) => b.bits_per_weight(),
        }
    }
    /// The figure the method's reference code reports, where it reports one: BiLLM's
    /// `1 + salient fraction of the last block` ([`BinaryLinear::reference_bits`]); `None` for
    /// affine weights (whose nominal width is their bit count).
    pub fn reference_bits(&self) -> Option<f64> {
        match self {
            Self::Affine(_) => None,
            Self::Binary(b) => Some(b.reference_bits()),
        }
    }
    /// The affine form, if that is what this is.
    pub fn as_affine(&self) -> Option<&QuantizedLinear> {
        match self {
            Self::Affine(q) => Some(q),
            Self::Binary(_) => None,
        }
    }
    /// The binary form, if that is what this is.
    pub fn as_binary(&self) -> Option<&BinaryLinear> {
        match self {
            Self::Affine(_) => None,
            Self::Binary(b) => Some(b),
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

    fn params(i: usize) -> BinaryParams {
        BinaryParams {
            sparse: [0.01 * i as f32, 0.02],
            concentrated: [-0.01, 0.005 * (i + 1) as f32],
            salient_first: [0.1, 0.3],
            salient_second: [0.02, 0.05],
        }
    }

    fn sample() -> BinaryLinear {
        let (o, n) = (2usize, 130usize);
        let p: Vec<BinaryParams> = (0..o * 2).map(params).collect();
        BinaryLinear::from_params(
            o,
            n,
            (0..o * n).map(|i| (i % 3 == 0) as u8).collect(),
            (0..o * n).map(|i| (i % 5 < 2) as u8).collect(),
            (0..n).map(|j| j % 16 == 3).collect(),
            &p,
        )
        .unwrap()
    }

    #[test]
    fn dequantize_packs_and_counts_bits() {
        let b = sample();
        let w = b.dequantize();
        let t0 = params(0).quantized_table().unwrap().values();
        // Row 0, column 3 (salient, sign 1, second sign 0): (0.1 + 0.3) + (0.02 − 0.05), stored.
        assert_eq!(w[3], t0[table_index(true, 0, 1)]);
        assert!((w[3] - ((0.1f32 + 0.3) + (0.02 - 0.05))).abs() <= 0.5 * (0.4 / 127.0) * 1.01);
        // Row 0, column 1 (sign 0, bit1 1 → concentrated): −0.01 − 0.005, stored.
        assert_eq!(w[1], t0[table_index(false, 1, 0)]);
        let q: QuantizedWeight = b.clone().into();
        let PackedWeight::Binary(m) = q.to_packed().unwrap() else {
            panic!("binary expected")
        };
        assert_eq!(m.dequantize(), w);
        let mut buf = vec![f32::NAN; w.len()];
        q.dequantize_into(&mut buf).unwrap();
        assert_eq!(buf, w);
        assert!(q.dequantize_into(&mut buf[1..]).is_err());
        // Salient columns 3, 19, …, 115 in block 0 (8 of 128) and 3 ... none in 128..130.
        assert!((b.salient_fraction() - 8.0 / 130.0).abs() < 1e-12);
        // The reference figure looks at the last block only: columns 128..130, none salient.
        assert_eq!(q.reference_bits(), Some(1.0));
        // Honest: 2 bits per (64-padded) weight, a 1-bit map per padded column, 80 bits per table.
        let honest = (2.0 * 2.0 * 192.0 + 192.0 + 80.0 * 4.0) / 260.0;
        assert!(
            (q.bits_per_weight() - honest).abs() < 1e-12,
            "{}",
            q.bits_per_weight()
        );
    }

    #[test]
    fn reference_bits_use_the_last_block() {
        // 256 columns, 128-column blocks: 10 salient columns in block 0, 5 in block 1.
        let salient: Vec<bool> = (0..256)
            .map(|j| j < 10 || (128..133).contains(&j))
            .collect();
        let t = vec![BinaryTable::default(); 2];
        let b = BinaryLinear::new(1, 256, 128, vec![0; 256], vec![0; 256], salient, t).unwrap();
        assert!((b.reference_bits() - (1.0 + 5.0 / 128.0)).abs() < 1e-12);
        assert!((b.salient_fraction() - 15.0 / 256.0).abs() < 1e-12);
        // With one 256-column block the last block is the whole row.
        let t = vec![BinaryTable::default(); 1];
        let b = BinaryLinear::new(
            1,
            256,
            256,
            vec![0; 256],
            vec![0; 256],
            b.salient().to_vec(),
            t,
        )
        .unwrap();
        assert!((b.reference_bits() - (1.0 + 15.0 / 256.0)).abs() < 1e-12);
    }

    #[test]
    fn invalid_inputs_are_typed_errors() {
        let b = sample();
        let tables = b.tables().to_vec();
        let mut signs = b.signs().to_vec();
        signs[7] = 2;
        let e = BinaryLinear::new(
            2,
            130,
            128,
            signs,
            b.bit1().to_vec(),
            b.salient().to_vec(),
            tables.clone(),
        );
        assert!(matches!(e, Err(Error::OutOfRange { index: 7, .. })));
        let mut p: Vec<BinaryParams> = (0..4).map(params).collect();
        p[3].sparse[0] = f32::INFINITY;
        let e = BinaryLinear::from_params(
            2,
            130,
            b.signs().to_vec(),
            b.bit1().to_vec(),
            b.salient().to_vec(),
            &p,
        );
        assert!(matches!(e, Err(Error::NonFinite { index: 3, .. })));
        let e = BinaryLinear::new(
            2,
            130,
            128,
            b.signs().to_vec(),
            b.bit1().to_vec(),
            vec![false; 3],
            tables.clone(),
        );
        assert!(matches!(e, Err(Error::ShapeMismatch { .. })));
        let e = BinaryLinear::new(
            2,
            130,
            100,
            b.signs().to_vec(),
            b.bit1().to_vec(),
            b.salient().to_vec(),
            tables,
        );
        assert!(matches!(e, Err(Error::InvalidConfig { .. })));
    }
}
