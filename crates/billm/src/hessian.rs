//! The Hessian side of BiLLM: dead columns, damping with retries, and `U`, the upper Cholesky
//! factor of `(H + damp·I)⁻¹` (reference `fasterquant`: `cholesky(cholesky_inverse(cholesky(H)),
//! upper=True)`), in f64 with faer.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::solvers::LltError;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Mat, Par};
use qwen3_quant_core::MethodError;

/// `U` (`[n, n]` row-major f32, upper triangular, `H⁻¹ = UᵀU`) and the damping that made the
/// factorisation succeed.
pub(crate) struct InverseFactor {
    pub u: Vec<f32>,
    pub damp: f64,
}

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
    let mean = (0..n).map(|i| f64::from(h[i * n + i])).sum::<f64>() / n.max(1) as f64;
    let mut damp = percdamp * mean;
    let mut last = (0, damp);
    for attempt in 0..=retries {
        if attempt > 0 {
            damp = if damp > 0.0 { damp * 10.0 } else { 0.01 * mean };
        }
        match factor(h, n, damp) {
            Ok(u) => return Ok(InverseFactor { u, damp }),
            Err(column) => last = (column, damp),
        }
    }
    Err(MethodError::HessianNotPositiveDefinite {
        id: None,
        column: last.0,
        damp: last.1,
    })
}

/// With `J` the index reversal, `J (H + damp·I) J = L Lᵀ` gives `H⁻¹ = (J L⁻ᵀ J)(J L⁻¹ J)`, so
/// `U = J L⁻¹ J`: upper triangular with a positive diagonal, hence *the* upper Cholesky factor of
/// `H⁻¹`. One factorisation and one triangular inverse; `H⁻¹` is never formed. Errors carry the
/// failing column of `H`.
fn factor(h: &[f32], n: usize, damp: f64) -> Result<Vec<f32>, usize> {
    let mut a = Mat::<f64>::from_fn(n, n, |i, j| {
        let (ri, rj) = (n - 1 - i, n - 1 - j);
        f64::from(h[ri * n + rj]) + if i == j { damp } else { 0.0 }
    });
    let par = Par::rayon(0);
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    cholesky_in_place(
        a.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .map_err(|e| match e {
        LltError::NonPositivePivot { index } => n - 1 - index.min(n - 1),
    })?;
    let mut inv = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(inv.as_mut(), a.as_ref(), par);
    // U[n-1-i, n-1-j] = L⁻¹[i, j] for i >= j, copied in tiles (one side is strided).
    let mut u = vec![0f32; n * n];
    const T: usize = 32;
    for j0 in (0..n).step_by(T) {
        for i0 in (j0..n).step_by(T) {
            for j in j0..(j0 + T).min(n) {
                for i in i0.max(j)..(i0 + T).min(n) {
                    let v = inv[(i, j)];
                    if !v.is_finite() {
                        return Err(n - 1 - i);
                    }
                    u[(n - 1 - i) * n + (n - 1 - j)] = v as f32;
                }
            }
        }
    }
    match (0..n).find(|&i| u[i * n + i].partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)) {
        Some(i) => Err(i),
        None => Ok(u),
    }
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
