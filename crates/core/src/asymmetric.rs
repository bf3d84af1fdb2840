//! Asymmetric calibration (GPTAQ's objective): the target weight whose outputs on the quantized
//! model's inputs best match the full-precision model's outputs.
//!
//! With `X` the full-precision model's inputs to a linear and `X̃` the quantized model's (rows
//! are tokens), `min_Q ‖X̃Qᵀ − XWᵀ‖²` splits exactly into `‖X̃Qᵀ − X̃W*ᵀ‖² + const` with
//! `W* = W·(XᵀX̃)(X̃ᵀX̃)⁻¹ = W + W·D·H⁻¹`, `D = Σ (X − X̃)ᵀX̃`, `H = X̃ᵀX̃`: the least-squares
//! projection of the full-precision outputs onto what the quantized inputs can express. GPTQ on
//! `(W*, H)` therefore minimises the asymmetric objective with its usual column-by-column error
//! feedback; a linear kept in full precision (the MoE router) can take `W*` itself.

use crate::MethodError;
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

/// `W + alpha · W·D·H_d⁻¹` with `H_d = H + percdamp·mean(diag H)·I`, computed in f64.
///
/// `w` is `[out, n]`, `h` and `d` are `[n, n]` row-major (unnormalised sums over the same
/// tokens; only their ratio matters).
///
/// # Errors
/// [`MethodError::HessianNotPositiveDefinite`] when the damped `H` has no Cholesky factor.
pub fn asymmetric_target(
    w: &[f32],
    out: usize,
    n: usize,
    h: &[f32],
    d: &[f32],
    alpha: f32,
    percdamp: f32,
) -> Result<Vec<f32>, MethodError> {
    let mean_diag = (0..n).map(|i| h[i * n + i] as f64).sum::<f64>() / n.max(1) as f64;
    // Dead columns (H_ii = 0) keep at least a unit diagonal, as GPTQ fixes them.
    let damp = (percdamp as f64 * mean_diag).max(f64::MIN_POSITIVE);
    let hd = Mat::<f64>::from_fn(n, n, |i, j| {
        let v = h[i * n + j] as f64;
        if i == j {
            if v == 0.0 {
                1.0
            } else {
                v + damp
            }
        } else {
            v
        }
    });
    let llt = hd
        .llt(Side::Lower)
        .map_err(|_| MethodError::HessianNotPositiveDefinite {
            id: None,
            column: 0,
            damp,
        })?;
    let wm = Mat::<f64>::from_fn(out, n, |r, c| w[r * n + c] as f64);
    let dm = Mat::<f64>::from_fn(n, n, |i, j| d[i * n + j] as f64);
    // Z = (W·D)·H⁻¹  ⇔  H·Zᵀ = (W·D)ᵀ (H symmetric).
    let wd_t = (&wm * &dm).transpose().to_owned();
    let z_t = llt.solve(&wd_t);
    let a = alpha as f64;
    let target: Vec<f32> = (0..out * n)
        .map(|k| (wm[(k / n, k % n)] + a * z_t[(k % n, k / n)]) as f32)
        .collect();
    if let Some(index) = target.iter().position(|v| !v.is_finite()) {
        return Err(MethodError::NonFinite {
            id: None,
            what: "asymmetric target",
            index,
        });
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `X̃ = X·M` for an invertible `M`, the exact (undamped) target reproduces the
    /// full-precision outputs on the quantized inputs: `X̃·W*ᵀ = X·Wᵀ`.
    #[test]
    fn the_target_maps_quantized_inputs_to_full_precision_outputs() {
        let (t, n, out) = (64, 4, 3);
        let x: Vec<f32> = (0..t * n)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1 + (i as f32 * 0.37).sin())
            .collect();
        // X̃ = X·M with M = I + 0.1·(upper shift).
        let xq: Vec<f32> = (0..t)
            .flat_map(|r| {
                let row = &x[r * n..(r + 1) * n];
                (0..n).map(move |j| row[j] + if j > 0 { 0.1 * row[j - 1] } else { 0.0 })
            })
            .collect();
        let w: Vec<f32> = (0..out * n).map(|i| (i as f32 * 0.71).cos()).collect();
        let mut h = vec![0f32; n * n];
        let mut d = vec![0f32; n * n];
        for r in 0..t {
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += xq[r * n + i] * xq[r * n + j];
                    d[i * n + j] += (x[r * n + i] - xq[r * n + i]) * xq[r * n + j];
                }
            }
        }
        let ws = asymmetric_target(&w, out, n, &h, &d, 1.0, 0.0).unwrap();
        for r in 0..t {
            for o in 0..out {
                let fp: f32 = (0..n).map(|j| x[r * n + j] * w[o * n + j]).sum();
                let q: f32 = (0..n).map(|j| xq[r * n + j] * ws[o * n + j]).sum();
                assert!((fp - q).abs() < 1e-3, "{r} {o}: {fp} vs {q}");
            }
        }
        // No asymmetry: the target is W itself; alpha scales the correction linearly.
        let same = asymmetric_target(&w, out, n, &h, &vec![0.0; n * n], 1.0, 0.01).unwrap();
        assert_eq!(same, w);
        let half = asymmetric_target(&w, out, n, &h, &d, 0.5, 0.0).unwrap();
        for k in 0..out * n {
            assert!((half[k] - (w[k] + 0.5 * (ws[k] - w[k]))).abs() < 1e-4);
        }
    }
}
