//! Dense f32 matrix products used by the model (the baseline every packed kernel is compared with).
//!
//! Weights follow `nn.Linear`: `W` is `[out, in]` row-major, and `Y = X · Wᵀ` with `X` `[m, in]`.
//! The heavy lifting is done by the `gemm` crate (runtime-dispatched AVX2/AVX-512/NEON micro-kernels);
//! see `benches/gemm_choice.rs` for the measurement that picked it over ndarray's matrixmultiply.

use gemm::{gemm, Parallelism};

/// How many threads a dense product may use.
fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    // Tiny products are faster on one thread than paying rayon's fork/join.
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * n * k < 64 * 64 * 64 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` (overwrites `y`).
///
/// # Panics
/// If a slice is shorter than its shape says (an internal invariant; callers check shapes).
pub fn matmul_wt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && y.len() >= m * n,
        "matmul_wt: shape mismatch"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y[..m * n].fill(0.0);
        return;
    }
    // SAFETY: the asserts above guarantee every index gemm touches is inside the slices:
    // lhs (i, p) at i*k + p, rhs (p, j) at j*k + p, dst (i, j) at i*n + j.
    unsafe {
        gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

/// `y[m, n] = x[m, k] · b[k, n]` for a row-major `b` (used by attention: `P · V`).
pub fn matmul(x: &[f32], m: usize, k: usize, b: &[f32], n: usize, y: &mut [f32]) {
    matmul_strided(x, m, k, k, b, n, n, y, n, false);
}

/// General strided product `y = x · b` (or `y += x · b` with `accumulate`), all row-major with
/// explicit row strides, so attention can work on per-head column slices without copies.
///
/// `x` is `[m, k]` with row stride `x_rs`, `b` is `[k, n]` with row stride `b_rs`, `y` is `[m, n]`
/// with row stride `y_rs`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    x: &[f32],
    m: usize,
    k: usize,
    x_rs: usize,
    b: &[f32],
    n: usize,
    b_rs: usize,
    y: &mut [f32],
    y_rs: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(x.len() >= (m - 1) * x_rs + k, "matmul_strided: x too short");
    assert!(
        k == 0 || b.len() >= (k - 1) * b_rs + n,
        "matmul_strided: b too short"
    );
    assert!(y.len() >= (m - 1) * y_rs + n, "matmul_strided: y too short");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                y[i * y_rs..i * y_rs + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: bounds asserted above for the given strides.
    unsafe {
        gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            y_rs as isize,
            accumulate,
            x.as_ptr(),
            1,
            x_rs as isize,
            b.as_ptr(),
            1,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` with explicit row strides and no threading (for use inside
/// rayon tasks, e.g. `Q · Kᵀ` per attention head).
#[allow(clippy::too_many_arguments)]
pub fn matmul_wt_strided(
    x: &[f32],
    m: usize,
    k: usize,
    x_rs: usize,
    w: &[f32],
    n: usize,
    w_rs: usize,
    y: &mut [f32],
    y_rs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        x.len() >= (m - 1) * x_rs + k,
        "matmul_wt_strided: x too short"
    );
    assert!(
        w.len() >= (n - 1) * w_rs + k,
        "matmul_wt_strided: w too short"
    );
    assert!(
        y.len() >= (m - 1) * y_rs + n,
        "matmul_wt_strided: y too short"
    );
    // SAFETY: bounds asserted above for the given strides.
    unsafe {
        gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            y_rs as isize,
            false,
            x.as_ptr(),
            1,
            x_rs as isize,
            w.as_ptr(),
            w_rs as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_wt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += x[i * k + p] as f64 * w[j * k + p] as f64;
                }
                y[i * n + j] = s as f32;
            }
        }
        y
    }

    #[test]
    fn matmul_wt_matches_naive_on_odd_shapes() {
        for &(m, k, n) in &[(1, 1, 1), (3, 17, 5), (65, 130, 33), (128, 64, 96)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
                .collect();
            let mut y = vec![f32::NAN; m * n];
            matmul_wt(&x, m, k, &w, n, &mut y);
            let r = naive_wt(&x, m, k, &w, n);
            for (a, b) in y.iter().zip(&r) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn strided_product_accumulates() {
        let (m, k, n) = (4, 3, 2);
        let x: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32) * 0.5).collect();
        let mut y = vec![1.0f32; m * n];
        matmul_strided(&x, m, k, k, &b, n, n, &mut y, n, true);
        for i in 0..m {
            for j in 0..n {
                let mut s = 1.0;
                for p in 0..k {
                    s += x[i * k + p] * b[p * n + j];
                }
                assert!((y[i * n + j] - s).abs() < 1e-4);
            }
        }
    }
}
