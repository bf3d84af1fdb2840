//! Refitting an RMSNorm weight to the quantized linears that read it.
//!
//! The norm's weight `γ` is a free per-input-channel factor in front of every linear that reads
//! the normalised stream (q/k/v after `input_layernorm`; gate/up, or every expert's gate/up,
//! after `post_attention_layernorm`). Once those linears are quantized, multiplying `γ` by `s`
//! changes their outputs from `Ŵ·x` to `Ŵ·diag(s)·x`, and the `s` that brings them closest to
//! the full-precision outputs `W·x` over the calibration inputs has a closed form: with
//! `H = Σ x·xᵀ` (the inputs' Gram matrix, already collected for GPTQ) the error
//!
//! `E(s) = Σ_linears Σ_x ‖Ŵ·diag(s)·x − W·x‖² = sᵀ·A·s − 2·dᵀ·s + c`,
//!
//! `A = Σ (ŴᵀŴ) ∘ H`, `d_j = Σ_k (ŴᵀW)_jk·H_jk`, `c = Σ_jk (WᵀW)_jk·H_jk`,
//!
//! is a quadratic in `s` (`n` unknowns shared by the linears), minimised by `A·s = d`. This is
//! norm tweaking (Li et al., 2023, arXiv 2309.02784) solved in closed form on the layer-wise loss
//! instead of by gradient steps on a distribution loss. It costs nothing at run time: the new
//! `γ` is stored where the old one was, in any checkpoint format.
//!
//! ```
//! use qwen3_quant_core::norm_refit::{fit_norm_scale, RefitTerm};
//! // One linear whose quantized weight is the original halved in column 0: s = (2, 1).
//! let w = [1.0f32, 2.0, 3.0, 4.0];
//! let wq = [0.5f32, 2.0, 1.5, 4.0];
//! let h = [2.0f32, 0.5, 0.5, 1.0];
//! let fit = fit_norm_scale(&[RefitTerm { weight: &w, quantized: &wq, out_features: 2, gram: &h, cross: None }], 2, 0.0)
//!     .unwrap();
//! assert!((fit.scale[0] - 2.0).abs() < 1e-4 && (fit.scale[1] - 1.0).abs() < 1e-4);
//! assert!(fit.error < 1e-6 * fit.baseline_error);
//! ```

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, Par, Side};

/// One linear reading the norm's output.
#[derive(Clone, Copy, Debug)]
pub struct RefitTerm<'a> {
    /// Full-precision weight, `[out_features, n]` row-major.
    pub weight: &'a [f32],
    /// Its quantized (dequantized) weight, same shape.
    pub quantized: &'a [f32],
    /// Rows of both.
    pub out_features: usize,
    /// `Σ x·xᵀ` over the calibration inputs this linear sees (`[n, n]`, symmetric), unnormalised
    /// so that linears fed different numbers of tokens (MoE experts) weigh by their tokens.
    pub gram: &'a [f32],
    /// With full-precision targets (asymmetric calibration): `Σ (x − x̃)·x̃ᵀ` (`[n, n]`, entry
    /// `(a, b)` = `Σ (x − x̃)_a·x̃_b`), where `x̃` are the quantized model's inputs (those `gram`
    /// sums) and `x` the full-precision model's. The fit then aims at `W·x` instead of `W·x̃`.
    /// The reported errors then leave out the constant `Σ‖W·x‖²`, so only their difference
    /// means something.
    pub cross: Option<&'a [f32]>,
}

/// The fitted factors and the error they leave.
#[derive(Clone, Debug, PartialEq)]
pub struct NormRefit {
    /// `s`: the norm's weight becomes `γ ⊙ s`.
    pub scale: Vec<f32>,
    /// `E(1)`: the quantized linears' output error with the norm as it was.
    pub baseline_error: f64,
    /// `E(s)`.
    pub error: f64,
}

/// Factors further than this from 1 mean the fit extrapolates (a channel the calibration barely
/// excites); the fit is then refused rather than applied.
const MAX_FACTOR: f64 = 4.0;

/// Solves `(A + ridge·diag(A))·s = d + ridge·diag(A)·1` (the ridge pulls `s` towards 1).
///
/// Returns `None` when there is nothing to fit (no term, an empty Gram matrix), when the system
/// is not positive definite, when a factor is not finite or lies outside `[1/4, 4]`, or when the
/// fit does not lower the error: the norm is then left as it is.
///
/// # Panics
/// If a term's slices do not have the documented lengths.
pub fn fit_norm_scale(terms: &[RefitTerm<'_>], n: usize, ridge: f64) -> Option<NormRefit> {
    let mut a = Mat::<f64>::zeros(n, n);
    let mut d = vec![0f64; n];
    let mut c = 0f64;
    let to_mat = |v: &[f32], rows: usize| Mat::<f64>::from_fn(rows, n, |i, j| v[i * n + j] as f64);
    for t in terms {
        assert_eq!(t.weight.len(), t.out_features * n, "weight shape");
        assert_eq!(t.quantized.len(), t.out_features * n, "quantized shape");
        assert_eq!(t.gram.len(), n * n, "gram shape");
        let (w, q) = (
            to_mat(t.weight, t.out_features),
            to_mat(t.quantized, t.out_features),
        );
        let mut qq = Mat::<f64>::zeros(n, n);
        let mut qw = Mat::<f64>::zeros(n, n);
        let mut ww = Mat::<f64>::zeros(n, n);
        let par = Par::rayon(0);
        matmul(&mut qq, Accum::Replace, q.transpose(), &q, 1.0, par);
        matmul(&mut qw, Accum::Replace, q.transpose(), &w, 1.0, par);
        matmul(&mut ww, Accum::Replace, w.transpose(), &w, 1.0, par);
        for j in 0..n {
            for k in 0..n {
                let h = t.gram[j * n + k] as f64;
                a[(j, k)] += qq[(j, k)] * h;
                // Σ x_k·x̃_j: the targets' inputs against the quantized ones.
                let target = h + t.cross.map_or(0.0, |x| x[k * n + j] as f64);
                d[j] += qw[(j, k)] * target;
                c += ww[(j, k)] * h;
            }
        }
    }
    let error_at = |s: &[f64]| -> f64 {
        let mut e = c;
        for j in 0..n {
            let row: f64 = (0..n).map(|k| a[(j, k)] * s[k]).sum();
            e += s[j] * row - 2.0 * d[j] * s[j];
        }
        e
    };
    let baseline_error = error_at(&vec![1.0; n]);
    if terms.is_empty() || n == 0 || baseline_error.is_nan() || baseline_error <= 0.0 {
        return None;
    }
    let mut sys = a.clone();
    let mut rhs = Mat::<f64>::from_fn(n, 1, |j, _| d[j]);
    for j in 0..n {
        let reg = ridge * a[(j, j)];
        sys[(j, j)] += reg;
        rhs[(j, 0)] += reg;
    }
    let llt = sys.llt(Side::Lower).ok()?;
    let x = llt.solve(&rhs);
    let s: Vec<f64> = (0..n).map(|j| x[(j, 0)]).collect();
    let plausible = |v: &f64| v.is_finite() && (1.0 / MAX_FACTOR..=MAX_FACTOR).contains(v);
    if !s.iter().all(plausible) {
        return None;
    }
    let error = error_at(&s);
    (error < baseline_error).then(|| NormRefit {
        scale: s.iter().map(|&v| v as f32).collect(),
        baseline_error,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random quantization-like perturbation: the fitted factors lower the error computed
    /// directly from the inputs, and no other factors near them do better (the optimum).
    #[test]
    fn the_fit_minimises_the_output_error_over_the_inputs() {
        let (n, out, tokens) = (6usize, 5usize, 40usize);
        let val = |i: usize, f: f32| ((i as f32 * f).sin() * 1.7).round() / 2.0 + 0.1;
        let w: Vec<f32> = (0..out * n).map(|i| val(i, 0.37)).collect();
        let wq: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, v)| v + 0.2 * val(i, 1.3))
            .collect();
        let x: Vec<f32> = (0..tokens * n).map(|i| val(i, 0.71) * 1.3).collect();
        let mut h = vec![0f32; n * n];
        for t in 0..tokens {
            for j in 0..n {
                for k in 0..n {
                    h[j * n + k] += x[t * n + j] * x[t * n + k];
                }
            }
        }
        let direct = |s: &[f32]| -> f64 {
            let mut e = 0f64;
            for t in 0..tokens {
                for r in 0..out {
                    let (mut yq, mut y) = (0f64, 0f64);
                    for j in 0..n {
                        let xv = x[t * n + j] as f64;
                        yq += wq[r * n + j] as f64 * s[j] as f64 * xv;
                        y += w[r * n + j] as f64 * xv;
                    }
                    e += (yq - y) * (yq - y);
                }
            }
            e
        };
        let term = RefitTerm {
            weight: &w,
            quantized: &wq,
            out_features: out,
            gram: &h,
            cross: None,
        };
        let fit = fit_norm_scale(&[term], n, 0.0).expect("a fit");
        let ones = vec![1f32; n];
        assert!((fit.baseline_error - direct(&ones)).abs() < 1e-3 * direct(&ones));
        assert!((fit.error - direct(&fit.scale)).abs() < 1e-3 * direct(&ones));
        assert!(fit.error < 0.9 * fit.baseline_error, "{fit:?}");
        for j in 0..n {
            for delta in [-0.01f32, 0.01] {
                let mut s = fit.scale.clone();
                s[j] += delta;
                assert!(direct(&s) > direct(&fit.scale), "not a minimum along {j}");
            }
        }
        // The ridge pulls the factors towards 1.
        let tight = fit_norm_scale(&[term], n, 100.0).expect("a fit");
        let dist = |s: &[f32]| s.iter().map(|v| (v - 1.0).abs()).sum::<f32>();
        assert!(dist(&tight.scale) < dist(&fit.scale));
    }

    #[test]
    fn nothing_to_fit_leaves_the_norm_alone() {
        let fit = |quantized: &[f32], gram: &[f32]| {
            let w = [1.0f32, 0.0, 0.0, 1.0];
            let t = RefitTerm {
                weight: &w,
                quantized,
                out_features: 2,
                gram,
                cross: None,
            };
            fit_norm_scale(&[t], 2, 0.0)
        };
        assert_eq!(fit_norm_scale(&[], 3, 0.0), None);
        // Exact weights: no error to lower.
        assert_eq!(fit(&[1.0, 0.0, 0.0, 1.0], &[1.0, 0.0, 0.0, 1.0]), None);
        // A channel the inputs never excite: singular, refused.
        assert_eq!(fit(&[0.5, 0.0, 0.0, 1.0], &[1.0, 0.0, 0.0, 0.0]), None);
        // The same with both channels excited: fitted.
        assert!(fit(&[0.5, 0.0, 0.0, 1.0], &[1.0, 0.0, 0.0, 1.0]).is_some());
    }
}
