//! The Hessian side of BiLLM: dead columns, damping with retries, and `U`, the upper Cholesky
//! factor of `(H + damp·I)⁻¹` (reference `fasterquant`: `cholesky(cholesky_inverse(cholesky(H)),
//! upper=True)`), in f64 with faer.

use qwen3_quant_core::linalg::{inverse_cholesky_upper, InverseFactor};
use qwen3_quant_core::MethodError;

/// Marks dead columns (`H[i, i] = 0`: no calibration input reached them) by setting their
/// diagonal to 1, as the reference does; returns which columns are dead. The caller zeroes the
/// matching weight columns.
///
/// # Errors
/// [`MethodError::NonFinite`] for a NaN/inf entry, [`MethodError::HessianNotPositiveDefinite`]
/// for a negative diagonal entry (no Gram matrix has one).
pub(crate) fn fix_dead_columns(h: &mut [f32], n: usize) -> Result<Vec<bool>, MethodError> {
    if let Some(index) = h.iter().position(|v| !v.is_finite()) {
        return Err(MethodError::NonFinite {
            id: None,
            what: "hessian",
            index,
        });
    }
    let mut dead = vec![false; n];
    for (i, d) in dead.iter_mut().enumerate() {
        let v = &mut h[i * n + i];
        if *v < 0.0 {
            return Err(MethodError::HessianNotPositiveDefinite {
                id: None,
                column: i,
                damp: 0.0,
            });
        }
        if *v == 0.0 {
            *v = 1.0;
            *d = true;
        }
    }
    Ok(dead)
}

/// `U` for `h` (`[n, n]` row-major, symmetric, dead columns already fixed) with
/// `damp = percdamp · mean(diag h)`; when the factorisation fails the damping is multiplied by 10
/// (or set to `0.01 · mean(diag)` if it was 0), up to `retries` times.
///
/// # Errors
/// [`MethodError::HessianNotPositiveDefinite`] naming the failing column and the last damping.
pub(crate) fn inverse_factor(
    h: &[f32],
    n: usize,
    percdamp: f64,
    retries: u32,
) -> Result<InverseFactor, MethodError> {
    inverse_cholesky_upper(h, n, percdamp, retries).map_err(|f| {
        MethodError::HessianNotPositiveDefinite {
            id: None,
            column: f.column,
            damp: f.damp,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `UᵀU (H + damp·I) = I`, `U` upper triangular.
    #[test]
    fn factor_inverts_the_damped_hessian() {
        let n = 7;
        let x: Vec<f64> = (0..3 * n)
            .map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let mut h = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..3).map(|t| x[t * n + i] * x[t * n + j]).sum::<f64>() as f32;
            }
        }
        // Rank 3 < 7: singular without damping.
        let f = inverse_factor(&h, n, 0.01, 4).unwrap();
        let u = &f.u;
        for i in 0..n {
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
        for i in 0..n {
            for j in 0..n {
                let mut v = 0f64;
                for k in 0..n {
                    let hinv_ik: f64 = (0..n)
                        .map(|m| f64::from(u[m * n + i]) * f64::from(u[m * n + k]))
                        .sum();
                    let hd = f64::from(h[k * n + j]) + if k == j { f.damp } else { 0.0 };
                    v += hinv_ik * hd;
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-4, "({i},{j}) {v}");
            }
        }
    }

    #[test]
    fn singular_hessian_retries_then_fails_cleanly() {
        let n = 4;
        let mut h = vec![0f32; n * n];
        // Zero matrix, zero damping: the retry switches to 0.01·mean(diag) = 0, still singular.
        assert!(matches!(
            inverse_factor(&h, n, 0.0, 2),
            Err(MethodError::HessianNotPositiveDefinite { .. })
        ));
        // A dead column is fixed to 1 and the rest factorises.
        h[0] = 2.0;
        h[n + 1] = 3.0;
        h[2 * n + 2] = 1.0;
        let dead = fix_dead_columns(&mut h, n).unwrap();
        assert_eq!(dead, [false, false, false, true]);
        let f = inverse_factor(&h, n, 0.01, 0).unwrap();
        assert!(f.damp > 0.0);
        h[5] = f32::NAN;
        assert!(matches!(
            fix_dead_columns(&mut h, n),
            Err(MethodError::NonFinite { index: 5, .. })
        ));
        let mut neg = vec![1f32, 0.0, 0.0, -1.0];
        assert!(matches!(
            fix_dead_columns(&mut neg, 2),
            Err(MethodError::HessianNotPositiveDefinite { column: 1, .. })
        ));
    }
}
