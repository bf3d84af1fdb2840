//! Calibration statistics handed to methods: the input Hessian and per-channel magnitudes.
//!
//! Inputs `x` are `[rows, dim]` row-major (`rows` tokens of one sequence, `dim = in_features`).

use gemm::{gemm, Parallelism};

use crate::error::{first_non_finite, Error, Result};

/// GPTQ's input Hessian of one linear.
///
/// `data` (`[dim, dim]` row-major, f32) holds the **unnormalised** sum `Σ XᵀX` over all
/// accumulated tokens; `n_sequences` counts [`Hessian::accumulate`] calls. The reference
/// (`GPTQ.add_batch`, reference-methods §2.2) keeps `H = 2/N_seq · Σ XᵀX` with `N_seq` the number
/// of sequences (not tokens); [`Hessian::scaled`] returns exactly that. The scale does not change
/// the GPTQ solution (damping is relative) but it does change the reported loss.
///
/// If `n_sequences == 0` (a matrix built with [`Hessian::from_matrix`] without a count),
/// `data` is taken as already normalised and [`Hessian::scaled`] returns it unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian {
    /// Side of the square matrix (`in_features`).
    pub dim: usize,
    /// `[dim, dim]` row-major: `Σ XᵀX` (unnormalised) or a normalised matrix if `n_sequences == 0`.
    pub data: Vec<f32>,
    /// Number of sequences accumulated.
    pub n_sequences: usize,
}

/// Tile of the symmetric update (columns of `x` per block).
const SYRK_BLOCK: usize = 256;

/// Raw destination pointer shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: every task writes a distinct (bi, bj) tile of the destination.
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

/// `dst[i, j] += Σ_p x[p, i]·x[p, j]` for the tiles on and below the diagonal only (the tiles
/// above are left untouched): a symmetric rank-k update from `gemm` calls on `SYRK_BLOCK`-column
/// tiles, run in parallel with rayon. Roughly halves the work of a full `XᵀX` product.
fn syrk_lower_blocks(dst: &mut [f32], d: usize, x: &[f32], rows: usize) {
    debug_assert!(dst.len() == d * d && x.len() == rows * d);
    let nb = d.div_ceil(SYRK_BLOCK);
    let tiles: Vec<(usize, usize)> = (0..nb)
        .flat_map(|bi| (0..=bi).map(move |bj| (bi, bj)))
        .collect();
    let ptr = DstPtr(dst.as_mut_ptr());
    let one_task = tiles.len() == 1 || rayon::current_num_threads() <= 1;
    let run = |&(bi, bj): &(usize, usize)| {
        let p = ptr;
        let (i0, j0) = (bi * SYRK_BLOCK, bj * SYRK_BLOCK);
        let (m, n) = ((d - i0).min(SYRK_BLOCK), (d - j0).min(SYRK_BLOCK));
        let par = if one_task && m * n * rows >= 64 * 64 * 64 {
            Parallelism::Rayon(rayon::current_num_threads())
        } else {
            Parallelism::None
        };
        // SAFETY: dst tile (i, j) at (i0+i)*d + j0+j < d*d; lhs (i, p) = x[p*d + i0+i] and
        // rhs (p, j) = x[p*d + j0+j] are < rows*d. Tiles are disjoint across tasks.
        unsafe {
            gemm(
                m,
                n,
                rows,
                p.0.add(i0 * d + j0),
                1,
                d as isize,
                true,
                x.as_ptr().add(i0),
                d as isize,
                1,
                x.as_ptr().add(j0),
                1,
                d as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    };
    if one_task {
        tiles.iter().for_each(run);
    } else {
        use rayon::prelude::*;
        tiles.par_iter().for_each(run);
    }
}

/// Copies the lower triangle onto the upper one (tiled, so both sides stay cache friendly).
fn mirror_lower_to_upper(a: &mut [f32], d: usize) {
    const T: usize = 64;
    for it in (0..d).step_by(T) {
        for jt in (0..=it).step_by(T) {
            for i in it..(it + T).min(d) {
                for j in jt..(jt + T).min(i) {
                    a[j * d + i] = a[i * d + j];
                }
            }
        }
    }
}

impl Hessian {
    /// Zero matrix.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            data: vec![0.0; dim * dim],
            n_sequences: 0,
        }
    }

    /// Wraps an existing `[dim, dim]` matrix (see the type docs for `n_sequences`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `data.len() != dim²`.
    pub fn from_matrix(dim: usize, data: Vec<f32>, n_sequences: usize) -> Result<Self> {
        if data.len() != dim * dim {
            return Err(Error::ShapeMismatch {
                what: "hessian",
                expected: dim * dim,
                actual: data.len(),
            });
        }
        Ok(Self {
            dim,
            data,
            n_sequences,
        })
    }

    /// Adds one sequence `x` (`[rows, dim]`): `data += xᵀx`, `n_sequences += 1`.
    ///
    /// Computed in f32 as a symmetric rank-k update: only the tiles on and below the diagonal are
    /// multiplied (`gemm` crate micro-kernels, tiles in parallel with rayon), then mirrored.
    /// Summation order differs from a full GEMM, so results match `xᵀx` to f32 rounding.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `x.len() != rows * dim`, [`Error::NonFinite`] if `x` has a
    /// NaN/Inf (the matrix is left unchanged).
    pub fn accumulate(&mut self, x: &[f32], rows: usize) -> Result<()> {
        let d = self.dim;
        if x.len() != rows * d {
            return Err(Error::ShapeMismatch {
                what: "hessian input",
                expected: rows * d,
                actual: x.len(),
            });
        }
        if let Some(i) = first_non_finite(x) {
            return Err(Error::NonFinite {
                what: "hessian input",
                index: i,
            });
        }
        self.n_sequences += 1;
        if rows == 0 || d == 0 {
            return Ok(());
        }
        syrk_lower_blocks(&mut self.data, d, x, rows);
        mirror_lower_to_upper(&mut self.data, d);
        Ok(())
    }

    /// The factor of the reference normalisation `2/N_seq · Σ XᵀX` (1 if `n_sequences == 0`).
    pub fn scale(&self) -> f32 {
        if self.n_sequences == 0 {
            1.0
        } else {
            2.0 / self.n_sequences as f32
        }
    }

    /// The reference normalisation `2/N_seq · Σ XᵀX` (or `data` itself if `n_sequences == 0`).
    ///
    /// A full copy; methods that only read it entry by entry multiply by [`Hessian::scale`] instead.
    pub fn scaled(&self) -> Vec<f32> {
        let f = self.scale();
        self.data.iter().map(|v| v * f).collect()
    }

    /// Index of the first non-finite entry.
    pub fn first_non_finite(&self) -> Option<usize> {
        first_non_finite(&self.data)
    }
}

/// Per-input-channel activation magnitudes (AWQ / SmoothQuant statistics).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    /// `[dim]` running max of `|x|`.
    pub abs_max: Vec<f32>,
    /// `[dim]` running sum of `|x|` (f64 to keep long sums exact enough).
    pub abs_sum: Vec<f64>,
    /// Number of rows (tokens) accumulated.
    pub count: usize,
}

impl ChannelStats {
    /// Empty statistics for `dim` channels.
    pub fn new(dim: usize) -> Self {
        Self {
            abs_max: vec![0.0; dim],
            abs_sum: vec![0.0; dim],
            count: 0,
        }
    }

    /// Adds `rows` rows of `x` (`[rows, dim]`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] or [`Error::NonFinite`].
    pub fn accumulate(&mut self, x: &[f32], rows: usize) -> Result<()> {
        let d = self.abs_max.len();
        if x.len() != rows * d {
            return Err(Error::ShapeMismatch {
                what: "channel stats input",
                expected: rows * d,
                actual: x.len(),
            });
        }
        if let Some(i) = first_non_finite(x) {
            return Err(Error::NonFinite {
                what: "channel stats input",
                index: i,
            });
        }
        for row in x.chunks_exact(d.max(1)).take(rows) {
            for ((m, s), &v) in self
                .abs_max
                .iter_mut()
                .zip(self.abs_sum.iter_mut())
                .zip(row)
            {
                let a = v.abs();
                *m = m.max(a);
                *s += a as f64;
            }
        }
        self.count += rows;
        Ok(())
    }

    /// `[dim]` mean of `|x|` (zeros if nothing was accumulated).
    pub fn abs_mean(&self) -> Vec<f32> {
        let n = self.count.max(1) as f64;
        self.abs_sum.iter().map(|s| (s / n) as f32).collect()
    }
}

/// `D = Σ (X − X̃)ᵀ X̃` of one linear: how the full-precision model's inputs `X` differ from the
/// quantized model's inputs `X̃` (rows are tokens), for asymmetric calibration (GPTAQ's
/// objective `‖Q X̃ᵀ − W Xᵀ‖²`, see [`crate::method::Quantizer::full_precision_targets`]).
///
/// `data` is `[dim, dim]` row-major and unnormalised, like [`Hessian::data`]:
/// `data[i, j] = Σ_t (x_t,i − x̃_t,i) · x̃_t,j`.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossCovariance {
    /// Side of the square matrix (`in_features`).
    pub dim: usize,
    /// `[dim, dim]` row-major.
    pub data: Vec<f32>,
}

impl CrossCovariance {
    /// A zero matrix.
    pub fn new(dim: usize) -> Self {
        CrossCovariance {
            dim,
            data: vec![0.0; dim * dim],
        }
    }

    /// Adds `rows` tokens: `full` (`X`) and `quantized` (`X̃`) are `[rows, dim]`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] or [`Error::NonFinite`] for bad inputs.
    pub fn accumulate(&mut self, full: &[f32], quantized: &[f32], rows: usize) -> Result<()> {
        let d = self.dim;
        for (what, x) in [
            ("full-precision input", full),
            ("quantized input", quantized),
        ] {
            if x.len() != rows * d {
                return Err(Error::ShapeMismatch {
                    what,
                    expected: rows * d,
                    actual: x.len(),
                });
            }
            if let Some(index) = first_non_finite(x) {
                return Err(Error::NonFinite { what, index });
            }
        }
        if rows == 0 || d == 0 {
            return Ok(());
        }
        let delta: Vec<f32> = full.iter().zip(quantized).map(|(a, b)| a - b).collect();
        // SAFETY: dst (i, j) at i*d + j < d*d; lhs (i, t) = delta[t*d + i] and rhs (t, j) =
        // quantized[t*d + j] are < rows*d; the three buffers are distinct.
        unsafe {
            gemm(
                d,
                d,
                rows,
                self.data.as_mut_ptr(),
                1,
                d as isize,
                true,
                delta.as_ptr(),
                d as isize,
                1,
                quantized.as_ptr(),
                1,
                d as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
        Ok(())
    }
}

/// Statistics collected for one linear; which fields are set follows
/// [`crate::method::Quantizer::stats_required`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinearStats {
    /// Input Hessian, if requested.
    pub hessian: Option<Hessian>,
    /// Per-input-channel magnitudes, if requested.
    pub channels: Option<ChannelStats>,
    /// `Σ (X − X̃)ᵀ X̃` when the method asked for full-precision targets and the driver ran the
    /// full-precision model next to the quantized one.
    pub cross: Option<CrossCovariance>,
    /// Number of calibration tokens seen.
    pub tokens: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_covariance_is_delta_transposed_times_quantized() {
        let (rows, d) = (5, 3);
        let full: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let quant: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.53).cos()).collect();
        let mut c = CrossCovariance::new(d);
        c.accumulate(&full, &quant, rows).unwrap();
        c.accumulate(&full[..d], &quant[..d], 1).unwrap();
        for i in 0..d {
            for j in 0..d {
                let mut e: f64 = (0..rows)
                    .map(|t| ((full[t * d + i] - quant[t * d + i]) * quant[t * d + j]) as f64)
                    .sum();
                e += ((full[i] - quant[i]) * quant[j]) as f64;
                assert!((c.data[i * d + j] as f64 - e).abs() < 1e-5, "{i} {j}");
            }
        }
        assert!(c.accumulate(&full, &quant[1..], rows).is_err());
        let mut bad = full.clone();
        bad[4] = f32::NAN;
        assert!(matches!(
            c.accumulate(&bad, &quant, rows),
            Err(Error::NonFinite { index: 4, .. })
        ));
    }

    #[test]
    fn hessian_matches_naive() {
        let (rows, d) = (37, 70);
        let x: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 7919 % 113) as f32 - 56.0) / 17.0)
            .collect();
        let mut h = Hessian::new(d);
        h.accumulate(&x, rows).unwrap();
        h.accumulate(&x, rows).unwrap();
        let s = h.scaled();
        for i in 0..d {
            for j in 0..d {
                let naive: f64 = (0..rows)
                    .map(|p| x[p * d + i] as f64 * x[p * d + j] as f64)
                    .sum::<f64>()
                    * 2.0;
                assert!((h.data[i * d + j] as f64 - naive).abs() <= 1e-4 * naive.abs().max(1.0));
                // 2/N · Σ = 2/2 · (2·xᵀx)
                assert!((s[i * d + j] as f64 - naive).abs() <= 1e-4 * naive.abs().max(1.0));
            }
        }
        assert_eq!(h.n_sequences, 2);
        assert!((0..d).all(|i| (0..d).all(|j| h.data[i * d + j] == h.data[j * d + i])));
        assert!(h.accumulate(&x[..10], 1).is_err());
        let mut bad = x.clone();
        bad[5] = f32::NAN;
        assert!(h.accumulate(&bad, rows).is_err());
    }

    #[test]
    fn hessian_multi_tile_matches_naive() {
        // 3 tiles of 256 (the last one ragged).
        let (rows, d) = (9, 600);
        let x: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 7919 % 113) as f32 - 56.0) / 17.0)
            .collect();
        let mut h = Hessian::new(d);
        h.accumulate(&x, rows).unwrap();
        for i in (0..d).step_by(7) {
            for j in 0..d {
                let naive: f64 = (0..rows)
                    .map(|p| x[p * d + i] as f64 * x[p * d + j] as f64)
                    .sum();
                assert!(
                    (h.data[i * d + j] as f64 - naive).abs() <= 1e-4 * naive.abs().max(1.0),
                    "{i} {j}"
                );
                assert_eq!(h.data[i * d + j], h.data[j * d + i]);
            }
        }
    }

    #[test]
    fn channel_stats() {
        let mut c = ChannelStats::new(2);
        c.accumulate(&[1.0, -3.0, -2.0, 1.0], 2).unwrap();
        assert_eq!(c.abs_max, vec![2.0, 3.0]);
        assert_eq!(c.abs_mean(), vec![1.5, 2.0]);
    }
}
