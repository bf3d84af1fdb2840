//! Dense linear algebra on Hessians shared by the second-order methods (GPTQ, BiLLM): the upper
//! Cholesky factor of the damped inverse Hessian, in f64 with faer, with GPTQ's relative
//! damping and automatic retries.
//!
//! ```
//! use qwen3_quant_core::linalg::inverse_cholesky_upper;
//! // H = diag(4, 1): (H + damp·I)⁻¹ = diag(1/4.025, 1/1.025) (damp = 0.01 · mean diag = 0.025).
//! let f = inverse_cholesky_upper(&[4.0, 0.0, 0.0, 1.0], 2, 0.01, 0).unwrap();
//! assert!((f.damp - 0.025).abs() < 1e-12);
//! assert!((f.u[0] - (1.0 / 4.025f64).sqrt() as f32).abs() < 1e-6 && f.u[2] == 0.0);
//! ```

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::solvers::LltError;
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::{Mat, MatMut, Par};

/// Upper Cholesky factor `U` (`H⁻¹ = UᵀU`) of the damped Hessian.
#[derive(Debug, Clone, PartialEq)]
pub struct InverseFactor {
    /// `[n, n]` row-major, upper triangular, f32.
    pub u: Vec<f32>,
    /// Damping finally added to the diagonal.
    pub damp: f64,
}

/// Failure after all retries: column (processing order) of the failing pivot and last damp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FactorFailure {
    /// Column of `h` whose pivot failed.
    pub column: usize,
    /// The last damping tried.
    pub damp: f64,
}

/// Upper Cholesky factor of `(h + damp·I)⁻¹`, in f64 with faer (one Cholesky factorisation and
/// one blocked triangular solve, `H⁻¹` never formed).
///
/// `h` is `[n, n]` row-major (f32, symmetric), already permuted and with dead columns fixed;
/// `damp = percdamp · mean(diag h)`. On failure the damping is multiplied by 10 (or set to `0.01·mean(diag)` if it was 0) up to `retries` times.
pub fn inverse_cholesky_upper(
    h: &[f32],
    n: usize,
    percdamp: f64,
    retries: u32,
) -> Result<InverseFactor, FactorFailure> {
    inverse_cholesky_upper_by(n, |i, j| h[i * n + j], percdamp, retries)
}

/// [`inverse_cholesky_upper`] of the matrix whose entry `(i, j)` is `entry(i, j)`.
///
/// Lets a caller permute, scale or patch its Hessian on the fly instead of materialising an
/// `n × n` copy (600 MB for Qwen3-8B's `down_proj`). `entry` must be symmetric and is read once
/// per attempt, along rows.
pub fn inverse_cholesky_upper_by(
    n: usize,
    entry: impl Fn(usize, usize) -> f32,
    percdamp: f64,
    retries: u32,
) -> Result<InverseFactor, FactorFailure> {
    inverse_cholesky_upper_consuming(n, (), |_: &(), i, j| entry(i, j), percdamp, retries)
}

/// [`inverse_cholesky_upper_by`] of the matrix `entry(&source, i, j)`, where `source` (the
/// Hessian, which the caller hands over) is dropped as soon as a factorisation succeeds, before
/// the inverse factor is formed: the Hessian, the f64 factor and the f32 inverse factor are
/// then never resident together (for Qwen3-8B's `down_proj` with a packed Hessian, 300 MB less
/// at the peak). The result is the same as [`inverse_cholesky_upper_by`]'s.
///
/// With `percdamp = 0` the source is kept to the end: an undamped factor may succeed and still
/// have an inverse too large for f32, and the next retry needs the matrix again. With damping,
/// `U`'s entries are at most `1/√damp`, which f32 holds.
pub fn inverse_cholesky_upper_consuming<S>(
    n: usize,
    source: S,
    entry: impl Fn(&S, usize, usize) -> f32,
    percdamp: f64,
    retries: u32,
) -> Result<InverseFactor, FactorFailure> {
    let mut source = Some(source);
    let at = |s: &Option<S>, i: usize, j: usize| {
        entry(
            s.as_ref()
                .expect("the source is dropped only after success"),
            i,
            j,
        )
    };
    let mean_diag = (0..n).map(|i| at(&source, i, i) as f64).sum::<f64>() / n.max(1) as f64;
    let mut damp = percdamp * mean_diag;
    let mut fail = FactorFailure { column: 0, damp };
    for attempt in 0..=retries {
        if attempt > 0 {
            damp = if damp > 0.0 {
                damp * 10.0
            } else {
                0.01 * mean_diag
            };
        }
        let factor = match cholesky_flipped(&|i, j| at(&source, i, j), n, damp) {
            Ok(l) => l,
            Err(column) => {
                fail = FactorFailure { column, damp };
                continue;
            }
        };
        if damp > 0.0 {
            source = None;
        }
        match inverse_factor(factor, n) {
            Ok(u) => return Ok(InverseFactor { u, damp }),
            Err(column) => fail = FactorFailure { column, damp },
        }
        if source.is_none() {
            // Not expected with damping (see above); the matrix is gone, so no more retries.
            break;
        }
    }
    Err(fail)
}

/// Columns of `L⁻¹` solved per step: the f64 right-hand side is `n × SOLVE_BLOCK`.
const SOLVE_BLOCK: usize = 256;

/// The lower Cholesky factor `L` of `J·(H + damp·I)·J` (`J` reverses the index order), in the
/// lower triangle of a column-major f64 buffer; `Err(column)` names the failing pivot in `H`'s
/// order. [`inverse_factor`] then forms `U = J·L⁻¹·J`.
///
/// This is the same matrix as the reference's `cholesky_upper(inverse(H))` (the upper Cholesky
/// factor of `H⁻¹` is unique): `H⁻¹ = (J L⁻ᵀ J)(J L⁻¹ J) = UᵀU` with `U` upper triangular and a
/// positive diagonal. It costs one Cholesky and one triangular inverse instead of two Cholesky
/// factorisations and a full inverse, and never forms `H⁻¹` explicitly.
///
/// Memory: the f64 factor and the f32 result only. `L⁻¹` is solved a block of columns at a time
/// (`L[j.., j..] · X = I[j.., j..j+b]`, since column `j` of `L⁻¹` is zero above row `j`: the same
/// `n³/3` flops as a full triangular inverse), each block goes straight into `U`, and the
/// factor's columns that no later block reads are released as it goes.
fn cholesky_flipped(
    entry: &impl Fn(usize, usize) -> f32,
    n: usize,
    damp: f64,
) -> Result<Vec<f64>, usize> {
    // (J H J)[i, j] = H[n-1-i, n-1-j] = H[n-1-j, n-1-i] (symmetric): read along rows of H so the
    // column-major fill is sequential in memory. Only the lower triangle is written: the
    // factorisation and the solves read nothing else, and the zeroed allocation's untouched
    // pages above the diagonal never become resident (half of the 8·n² bytes; 600 MB for
    // Qwen3-8B's `down_proj`).
    let mut buf = vec![0f64; n * n];
    for (j, col) in buf.chunks_exact_mut(n.max(1)).enumerate() {
        for (i, v) in col.iter_mut().enumerate().skip(j) {
            *v = entry(n - 1 - j, n - 1 - i) as f64 + if i == j { damp } else { 0.0 };
        }
    }
    let mut a = MatMut::from_column_major_slice_mut(&mut buf, n, n);
    // A failing pivot k of the flipped matrix is processing column n-1-k.
    let pivot = |e: LltError| match e {
        LltError::NonPositivePivot { index } => n - 1 - index.min(n - 1),
    };
    let par = Par::rayon(0);
    // In-place factorisation (no copy of the n×n matrix); only the lower triangle is used.
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    cholesky_in_place(
        a.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .map_err(pivot)?;
    Ok(buf)
}

/// `U = J·L⁻¹·J` from the flipped Cholesky factor `L` of [`cholesky_flipped`] (its lower
/// triangle, column-major), releasing `L`'s columns as `U` fills. `Err(column)` when an entry
/// is not finite in f32 or a diagonal entry is not positive.
fn inverse_factor(mut buf: Vec<f64>, n: usize) -> Result<Vec<f32>, usize> {
    let par = Par::rayon(0);
    let mut u = vec![0f32; n * n];
    for j0 in (0..n).step_by(SOLVE_BLOCK) {
        let b = SOLVE_BLOCK.min(n - j0);
        let m = n - j0;
        let a = MatMut::from_column_major_slice_mut(&mut buf, n, n);
        // x = L⁻¹[j0.., j0..j0+b].
        let mut x = Mat::<f64>::from_fn(m, b, |i, j| if i == j { 1.0 } else { 0.0 });
        solve_lower_triangular_in_place(a.as_ref().submatrix(j0, j0, m, m), x.as_mut(), par);
        // Columns j0..j0+b of L are read by no later block: their pages go back to the OS as
        // `U` fills, so the two are never both whole (a peak of 4·n² bytes instead of 6·n²:
        // 300 MB less at n = 12288).
        release_pages(&mut buf[j0 * n..(j0 + b) * n]);
        // U[i, j] = Linv[n-1-i, n-1-j], nonzero for j >= i; copied in tiles (one side is strided).
        const T: usize = 32;
        for jt in (0..b).step_by(T) {
            for it in (jt..m).step_by(T) {
                for jj in jt..(jt + T).min(b) {
                    for ii in it.max(jj)..(it + T).min(m) {
                        let v = x[(ii, jj)];
                        let (gi, gj) = (j0 + ii, j0 + jj);
                        if !v.is_finite() {
                            return Err(n - 1 - gi);
                        }
                        u[(n - 1 - gi) * n + (n - 1 - gj)] = v as f32;
                    }
                }
            }
        }
    }
    for i in 0..n {
        if u[i * n + i].partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(i);
        }
    }
    Ok(u)
}

/// Gives the whole pages inside `v` back to the OS (`MADV_DONTNEED`); they read as zeros if
/// touched again. For a working buffer whose finished part nothing reads any more: the memory
/// leaves the resident set before the buffer is dropped. A no-op where unsupported.
fn release_pages(v: &mut [f64]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = v.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(v);
        let (first, last) = (start.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
        if last > first {
            // SAFETY: [first, last) lies inside `v`, which this call borrows mutably, and is
            // page-aligned. On private anonymous memory MADV_DONTNEED only replaces the contents
            // with zeros (a write through our exclusive borrow); the allocation stays mapped.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The consuming variant gives the same factor and damping as the borrowing one, through
    /// the retries (an indefinite matrix, whose first attempts fail with the source still
    /// there) and undamped (where the source is kept); and it drops the source.
    #[test]
    fn the_consuming_factorisation_equals_the_borrowing_one() {
        use std::rc::Rc;
        let spd = vec![4.0f32, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let indefinite = vec![1.0f32, 2.0, 2.0, 1.0];
        for (h, n, percdamp) in [(&spd, 3, 0.01), (&spd, 3, 0.0), (&indefinite, 2, 0.01)] {
            let want = inverse_cholesky_upper(h, n, percdamp, 4).unwrap();
            let source = Rc::new(h.clone());
            let probe = Rc::downgrade(&source);
            let got = inverse_cholesky_upper_consuming(
                n,
                source,
                |s: &Rc<Vec<f32>>, i, j| s[i * n + j],
                percdamp,
                4,
            )
            .unwrap();
            assert_eq!(
                (got.u, got.damp),
                (want.u, want.damp),
                "n {n}, percdamp {percdamp}"
            );
            assert!(probe.upgrade().is_none(), "the source is dropped");
        }
        let fail =
            inverse_cholesky_upper_consuming(2, (), |_: &(), i, j| indefinite[i * 2 + j], 0.01, 1);
        assert_eq!(fail, inverse_cholesky_upper(&indefinite, 2, 0.01, 1));
    }

    /// `Uᵀ·U·(H + damp·I) = I` at a size with several solve blocks, whose factor columns are
    /// released block by block: a released column read again would read zeros and break it.
    #[test]
    fn factor_inverts_the_damped_hessian_across_solve_blocks() {
        let (n, m) = (2 * SOLVE_BLOCK + 77, 800);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut x = vec![0f64; n * m];
        for v in &mut x {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *v = (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        }
        let mut h = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..=i {
                let d: f64 = (0..m).map(|k| x[i * m + k] * x[j * m + k]).sum::<f64>() / m as f64;
                h[i * n + j] = d as f32;
                h[j * n + i] = d as f32;
            }
        }
        let f = inverse_cholesky_upper(&h, n, 0.01, 0).unwrap();
        let u = &f.u;
        for i in 0..n {
            assert!(u[i * n + i] > 0.0);
            assert!((0..i).all(|j| u[i * n + j] == 0.0), "row {i} not upper");
        }
        // A = H + damp·I; check (Uᵀ U A)[i, j] = Σ_k U[k, i] (U A)[k, j].
        let a = |i: usize, j: usize| h[i * n + j] as f64 + if i == j { f.damp } else { 0.0 };
        let ua: Vec<f64> = (0..n * n)
            .map(|idx| {
                let (k, j) = (idx / n, idx % n);
                (k..n).map(|l| u[k * n + l] as f64 * a(l, j)).sum()
            })
            .collect();
        let mut worst = 0f64;
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..=i).map(|k| u[k * n + i] as f64 * ua[k * n + j]).sum();
                let e = (v - if i == j { 1.0 } else { 0.0 }).abs();
                worst = worst.max(e);
            }
        }
        assert!(worst < 1e-3, "max |UᵀUA − I| = {worst}");
    }
}
