//! [`QuantizedLinear`]: integer codes plus per-group scales and zero points.

use rayon::prelude::*;

use crate::error::{first_non_finite, Error, Result};
use crate::scheme::Bits;

/// A quantized `nn.Linear` weight in the GPTQ storage convention (unpacked).
///
/// Shapes (`out` = `out_features`, `in` = `in_features`, all row-major):
/// - `codes`: `[out, in]` integer codes in **original** column order, each `<= maxq`;
/// - `scales`: `[n_groups, out]` (f32 here; counted as fp16 by [`Self::bits_per_weight`]);
/// - `zeros`: `[n_groups, out]` integer zero points `<= maxq`;
/// - `g_idx`: `[in]`, the group of each original column;
/// - `perm`: optional `[in]` act-order column order (`perm[j]` = original column processed j-th).
///
/// `n_groups = ceil(in / group_size)` for `group_size = Some(_)` and 1 for `None`
/// (per-channel; a per-tensor scheme is stored as per-channel with equal rows).
/// Invariant checked by [`Self::new`]: without `perm`, `g_idx[c] = c / group_size`; with `perm`,
/// `g_idx[perm[j]] = j / group_size` (GPTQ "desc_act" groups are runs of the permuted order).
/// `perm` is only allowed together with `group_size = Some(_)`.
///
/// The weight is `W[r, c] = scales[g, r] * (codes[r, c] − zeros[g, r])` with `g = g_idx[c]`,
/// computed in f32 exactly like the reference fake quantization.
///
/// **SmoothQuant extra.** With [`Self::with_smoothing`] the codes quantize the *smoothed* weight
/// `W·diag(s)` (per-input-channel factors `s`, SmoothQuant's migration of activation outliers
/// into the weights) and the layer's inputs are divided by `s`; [`Self::dequantize`] then returns
/// the equivalent weight in the original input space, `W_q[:, c] / s_c`, and
/// [`Self::dequantize_stored`] the smoothed one. BiLLM's binary weights have their own type,
/// [`crate::BinaryLinear`].
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLinear {
    out_features: usize,
    in_features: usize,
    bits: Bits,
    group_size: Option<usize>,
    sym: bool,
    codes: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<u8>,
    g_idx: Vec<u32>,
    perm: Option<Vec<u32>>,
    smoothing: Option<Vec<f32>>,
}

/// Canonical `g_idx` for a layout (see [`QuantizedLinear`]).
pub fn canonical_g_idx(
    in_features: usize,
    group_size: Option<usize>,
    perm: Option<&[u32]>,
) -> Vec<u32> {
    let mut g = vec![0u32; in_features];
    if let Some(gs) = group_size {
        match perm {
            None => g
                .iter_mut()
                .enumerate()
                .for_each(|(c, v)| *v = (c / gs) as u32),
            Some(p) => p
                .iter()
                .enumerate()
                .for_each(|(j, &c)| g[c as usize] = (j / gs) as u32),
        }
    }
    g
}

impl QuantizedLinear {
    /// Validated constructor. See the type docs for shapes and invariants.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::OutOfRange`] (codes, zeros, g_idx, perm),
    /// [`Error::InconsistentGroups`], [`Error::NonFinite`] (scales), [`Error::InvalidConfig`]
    /// (zero group size, or `perm` without groups).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        out_features: usize,
        in_features: usize,
        bits: Bits,
        group_size: Option<usize>,
        sym: bool,
        codes: Vec<u8>,
        scales: Vec<f32>,
        zeros: Vec<u8>,
        g_idx: Vec<u32>,
        perm: Option<Vec<u32>>,
    ) -> Result<Self> {
        if group_size == Some(0) {
            return Err(Error::InvalidConfig {
                field: "group_size",
                reason: "group size must be positive",
            });
        }
        if perm.is_some() && group_size.is_none() {
            return Err(Error::InvalidConfig {
                field: "perm",
                reason: "a column permutation is only meaningful with groups",
            });
        }
        let n_groups = group_size.map_or(1, |g| in_features.div_ceil(g));
        let check = |what, expected: usize, actual: usize| {
            if expected == actual {
                Ok(())
            } else {
                Err(Error::ShapeMismatch {
                    what,
                    expected,
                    actual,
                })
            }
        };
        check("codes", out_features * in_features, codes.len())?;
        check("scales", n_groups * out_features, scales.len())?;
        check("zeros", n_groups * out_features, zeros.len())?;
        check("g_idx", in_features, g_idx.len())?;
        let maxq = bits.maxq();
        let range = |what, v: &[u8]| match v.iter().position(|&c| c > maxq) {
            Some(i) => Err(Error::OutOfRange {
                what,
                index: i,
                value: v[i] as u64,
                max: maxq as u64,
            }),
            None => Ok(()),
        };
        range("codes", &codes)?;
        range("zeros", &zeros)?;
        if let Some(i) = first_non_finite(&scales) {
            return Err(Error::NonFinite {
                what: "scales",
                index: i,
            });
        }
        if let Some(p) = &perm {
            check("perm", in_features, p.len())?;
            let mut seen = vec![false; in_features];
            for (j, &c) in p.iter().enumerate() {
                let c = c as usize;
                if c >= in_features || seen[c] {
                    return Err(Error::OutOfRange {
                        what: "perm (not a permutation)",
                        index: j,
                        value: c as u64,
                        max: in_features.saturating_sub(1) as u64,
                    });
                }
                seen[c] = true;
            }
        }
        let expect = canonical_g_idx(in_features, group_size, perm.as_deref());
        if let Some(c) = (0..in_features).find(|&c| expect[c] != g_idx[c]) {
            return Err(Error::InconsistentGroups {
                column: c,
                reason: "g_idx does not match group_size/perm",
            });
        }
        Ok(Self {
            out_features,
            in_features,
            bits,
            group_size,
            sym,
            codes,
            scales,
            zeros,
            g_idx,
            perm,
            smoothing: None,
        })
    }

    /// Marks the codes as quantizing the smoothed weight `W·diag(s)` (see the type docs).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] unless `s.len() == in_features`; [`Error::NonFinite`] for NaN or
    /// infinite factors; [`Error::OutOfRange`] for a factor that is not positive.
    pub fn with_smoothing(mut self, s: Vec<f32>) -> Result<Self> {
        if s.len() != self.in_features {
            return Err(Error::ShapeMismatch {
                what: "smoothing",
                expected: self.in_features,
                actual: s.len(),
            });
        }
        if let Some(i) = first_non_finite(&s) {
            return Err(Error::NonFinite {
                what: "smoothing",
                index: i,
            });
        }
        if let Some(i) = s.iter().position(|&v| v <= 0.0) {
            return Err(Error::NonPositive {
                what: "smoothing",
                index: i,
            });
        }
        self.smoothing = Some(s);
        Ok(self)
    }

    /// SmoothQuant's per-input-channel factors `s`, `[in]`, if the codes hold `W·diag(s)`.
    pub fn smoothing(&self) -> Option<&[f32]> {
        self.smoothing.as_deref()
    }

    /// Output features (rows).
    pub fn out_features(&self) -> usize {
        self.out_features
    }
    /// Input features (columns).
    pub fn in_features(&self) -> usize {
        self.in_features
    }
    /// Bit width of the codes.
    pub fn bits(&self) -> Bits {
        self.bits
    }
    /// Group size (`None` = per-channel).
    pub fn group_size(&self) -> Option<usize> {
        self.group_size
    }
    /// Whether the scheme was symmetric (zeros are then the constant `(maxq+1)/2`).
    pub fn sym(&self) -> bool {
        self.sym
    }
    /// Number of groups per row.
    pub fn n_groups(&self) -> usize {
        self.group_size.map_or(1, |g| self.in_features.div_ceil(g))
    }
    /// Codes `[out, in]`, original column order.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }
    /// Scales `[n_groups, out]`.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    /// Zero points `[n_groups, out]`.
    pub fn zeros(&self) -> &[u8] {
        &self.zeros
    }
    /// Group index of each original column, `[in]`.
    pub fn g_idx(&self) -> &[u32] {
        &self.g_idx
    }
    /// Act-order column order, `[in]`, if any.
    pub fn perm(&self) -> Option<&[u32]> {
        self.perm.as_deref()
    }

    /// Dequantized weight `[out, in]` in the original input space (f32, bit-identical to the
    /// methods' fake quantization; with smoothing, the stored weight divided by `s` per column).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out_features * self.in_features];
        self.dequantize_rows(0, &mut w);
        w
    }

    /// [`Self::dequantize`] into `out` (`[out, in]`), e.g. the buffer of the weight it replaces.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `out` does not hold `out_features · in_features` values.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        check_output_len(self.out_features * self.in_features, out.len())?;
        self.dequantize_rows(0, out);
        Ok(())
    }

    /// Rows `first_row..first_row + out.len() / in_features` of [`Self::dequantize`] into `out`:
    /// for a caller that rebuilds the weight a block of rows at a time.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `out` is not a whole number of rows inside the weight.
    pub fn dequantize_rows_into(&self, first_row: usize, out: &mut [f32]) -> Result<()> {
        check_row_range(self.out_features, self.in_features, first_row, out.len())?;
        self.dequantize_rows(first_row, out);
        Ok(())
    }

    fn dequantize_rows(&self, first_row: usize, w: &mut [f32]) {
        self.dequantize_stored_rows(first_row, w);
        if let (Some(s), n) = (&self.smoothing, self.in_features) {
            if n > 0 {
                w.par_chunks_mut(n)
                    .for_each(|row| row.iter_mut().zip(s).for_each(|(v, f)| *v /= f));
            }
        }
    }

    /// Dequantized weight `[out, in]` as stored: `scale·(code − zero)`, in the smoothed space when
    /// [`Self::smoothing`] is set (otherwise equal to [`Self::dequantize`]).
    pub fn dequantize_stored(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out_features * self.in_features];
        self.dequantize_stored_rows(0, &mut w);
        w
    }

    fn dequantize_stored_rows(&self, first_row: usize, w: &mut [f32]) {
        let (o, n) = (self.out_features, self.in_features);
        if n == 0 {
            return;
        }
        w.par_chunks_mut(n)
            .enumerate()
            .for_each(|(r, row)| self.stored_row(first_row + r, o, row));
    }

    /// Row `r` of [`Self::dequantize_stored`] (`o` = out_features).
    fn stored_row(&self, r: usize, o: usize, row: &mut [f32]) {
        let n = row.len();
        let codes = &self.codes[r * n..(r + 1) * n];
        for c in 0..n {
            let g = self.g_idx[c] as usize;
            let s = self.scales[g * o + r];
            let z = self.zeros[g * o + r] as f32;
            row[c] = s * (codes[c] as f32 - z);
        }
    }

    /// `Σ (w − dequantize())²` in f64 over the original weight `w` (`[out, in]`), one row at a
    /// time: the layer loss of a method without statistics, with no `[out, in]` copy.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `w` does not hold `out_features · in_features` values.
    pub fn squared_error(&self, w: &[f32]) -> Result<f64> {
        let (o, n) = (self.out_features, self.in_features);
        check_output_len(o * n, w.len())?;
        if n == 0 {
            return Ok(0.0);
        }
        // Per-row sums, added in row order: the same total whatever the thread count.
        let rows: Vec<f64> = w
            .par_chunks(n)
            .enumerate()
            .map_init(
                || vec![0f32; n],
                |q, (r, wr)| {
                    self.stored_row(r, o, q);
                    if let Some(s) = &self.smoothing {
                        q.iter_mut().zip(s).for_each(|(v, f)| *v /= f);
                    }
                    wr.iter()
                        .zip(q.iter())
                        .map(|(w, q)| ((w - q) as f64).powi(2))
                        .sum::<f64>()
                },
            )
            .collect();
        Ok(rows.iter().sum())
    }

    /// Storage cost in bits per weight, counting honestly what a packed checkpoint holds:
    /// `bits` per code, 16 per scale (fp16), `bits` per zero point for asymmetric schemes
    /// (symmetric zeros are the constant `(maxq+1)/2` and are not stored), and 32 bits per
    /// column of `g_idx` when an act-order permutation is present (int32 `g_idx`), and 16 per
    /// input column for SmoothQuant factors (fp16), when present.
    pub fn bits_per_weight(&self) -> f64 {
        let n_w = (self.out_features * self.in_features) as f64;
        if n_w == 0.0 {
            return 0.0;
        }
        let b = self.bits.get() as f64;
        let n_params = (self.n_groups() * self.out_features) as f64;
        let mut total = b * n_w + 16.0 * n_params;
        if !self.sym {
            total += b * n_params;
        }
        if self.perm.is_some() {
            total += 32.0 * self.in_features as f64;
        }
        if self.smoothing.is_some() {
            total += 16.0 * self.in_features as f64;
        }
        total / n_w
    }
}

/// The length check of the `dequantize_into` methods.
pub(crate) fn check_output_len(expected: usize, actual: usize) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            what: "dequantize_into output",
            expected,
            actual,
        })
    }
}

/// The check of the `dequantize_rows_into` methods: `len` values are whole rows of `cols`
/// starting at `first_row`, inside the weight's `rows`.
pub(crate) fn check_row_range(
    rows: usize,
    cols: usize,
    first_row: usize,
    len: usize,
) -> Result<()> {
    let n_rows = len.checked_div(cols).unwrap_or(0);
    if (cols == 0 && len == 0) || (len % cols.max(1) == 0 && first_row + n_rows <= rows) {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            what: "dequantize_rows_into output",
            expected: rows.saturating_sub(first_row) * cols,
            actual: len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row-at-a-time loss equals the sum over the full dequantized copy, with act-order
    /// groups and smoothing factors, and rejects a weight of the wrong length.
    #[test]
    fn squared_error_equals_the_dequantized_sum() {
        let (o, n) = (3, 4);
        let perm = vec![2u32, 0, 3, 1];
        let g_idx = canonical_g_idx(n, Some(2), Some(&perm));
        let q = QuantizedLinear::new(
            o,
            n,
            Bits::new(3).unwrap(),
            Some(2),
            false,
            (0..(o * n) as u8).map(|c| c % 8).collect(),
            vec![0.5, 0.25, 1.5, 2.0, 0.75, 1.0],
            vec![3, 4, 2, 1, 5, 0],
            g_idx,
            Some(perm),
        )
        .unwrap()
        .with_smoothing(vec![1.0, 2.0, 0.5, 4.0])
        .unwrap();
        let w: Vec<f32> = (0..o * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let want: f64 = q
            .dequantize()
            .iter()
            .zip(&w)
            .map(|(q, w)| ((w - q) as f64).powi(2))
            .sum();
        let got = q.squared_error(&w).unwrap();
        assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
        assert!(got > 0.0);
        assert!(q.squared_error(&w[1..]).is_err());

        // Any block of whole rows is the same slice of the full dequantization.
        let full = q.dequantize();
        for (r0, rows) in [(0, 1), (1, 2), (0, 3), (2, 1), (3, 0)] {
            let mut part = vec![f32::NAN; rows * n];
            q.dequantize_rows_into(r0, &mut part).unwrap();
            assert_eq!(part, full[r0 * n..(r0 + rows) * n], "rows {r0}+{rows}");
        }
        let mut bad = vec![0f32; 2 * n];
        assert!(
            q.dequantize_rows_into(2, &mut bad).is_err(),
            "past the last row"
        );
        assert!(
            q.dequantize_rows_into(0, &mut bad[1..]).is_err(),
            "not whole rows"
        );
    }

    #[test]
    fn validate_and_dequantize() {
        let b = Bits::new(2).unwrap();
        // 1 row, 4 cols, groups of 2, act-order perm [3,1,0,2]
        let perm = vec![3u32, 1, 0, 2];
        let g_idx = canonical_g_idx(4, Some(2), Some(&perm));
        assert_eq!(g_idx, vec![1, 0, 1, 0]);
        let q = QuantizedLinear::new(
            1,
            4,
            b,
            Some(2),
            false,
            vec![0, 1, 2, 3],
            vec![0.5, 2.0],
            vec![1, 2],
            g_idx.clone(),
            Some(perm.clone()),
        )
        .unwrap();
        assert_eq!(
            q.dequantize(),
            vec![2.0 * -2.0, 0.5 * 0.0, 2.0 * 0.0, 0.5 * 2.0]
        );
        // wrong g_idx
        assert!(QuantizedLinear::new(
            1,
            4,
            b,
            Some(2),
            false,
            vec![0; 4],
            vec![1.0; 2],
            vec![0; 2],
            vec![0, 0, 1, 1],
            Some(perm)
        )
        .is_err());
        // code out of range
        assert!(QuantizedLinear::new(
            1,
            4,
            b,
            None,
            false,
            vec![4, 0, 0, 0],
            vec![1.0],
            vec![0],
            vec![0; 4],
            None
        )
        .is_err());
        // NaN scale
        assert!(QuantizedLinear::new(
            1,
            4,
            b,
            None,
            false,
            vec![0; 4],
            vec![f32::NAN],
            vec![0],
            vec![0; 4],
            None
        )
        .is_err());
        // shape
        assert!(QuantizedLinear::new(
            1,
            4,
            b,
            None,
            false,
            vec![0; 3],
            vec![1.0],
            vec![0],
            vec![0; 4],
            None
        )
        .is_err());
    }

    #[test]
    fn smoothing_divides_columns_and_is_validated() {
        let q = QuantizedLinear::new(
            2,
            3,
            Bits::B4,
            None,
            false,
            vec![1, 2, 3, 4, 5, 6],
            vec![1.0, 0.5],
            vec![0, 0],
            vec![0; 3],
            None,
        )
        .unwrap();
        let plain = q.bits_per_weight();
        assert!(q.clone().with_smoothing(vec![1.0; 2]).is_err());
        assert!(q.clone().with_smoothing(vec![1.0, f32::NAN, 1.0]).is_err());
        assert!(q.clone().with_smoothing(vec![1.0, 0.0, 1.0]).is_err());
        let s = q.with_smoothing(vec![2.0, 4.0, 0.5]).unwrap();
        assert_eq!(s.dequantize_stored(), vec![1.0, 2.0, 3.0, 2.0, 2.5, 3.0]);
        assert_eq!(s.dequantize(), vec![0.5, 0.5, 6.0, 1.0, 0.625, 6.0]);
        assert!((s.bits_per_weight() - plain - 16.0 * 3.0 / 6.0).abs() < 1e-12);
        // In place: the same values over whatever the buffer held; a wrong length is refused.
        let mut buf = vec![f32::NAN; 6];
        s.dequantize_into(&mut buf).unwrap();
        assert_eq!(buf, s.dequantize());
        let e = s.dequantize_into(&mut [0.0; 5]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ShapeMismatch {
                    expected: 6,
                    actual: 5,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn bits_per_weight_counts_metadata() {
        let b = Bits::B4;
        let q = QuantizedLinear::new(
            2,
            256,
            b,
            Some(128),
            false,
            vec![0; 512],
            vec![1.0; 4],
            vec![0; 4],
            canonical_g_idx(256, Some(128), None),
            None,
        )
        .unwrap();
        let expect = (4.0 * 512.0 + 16.0 * 4.0 + 4.0 * 4.0) / 512.0;
        assert!((q.bits_per_weight() - expect).abs() < 1e-12);
    }
}
