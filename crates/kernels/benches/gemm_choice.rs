//! Which dense f32 GEMM the model uses: ndarray's `dot` (matrixmultiply), faer's `matmul`, and our
//! `dense::matmul_wt` (the blocked AVX-512 or AVX2 kernel where the CPU has one, else the `gemm`
//! crate; `examples/dense_gemm.rs` compares those two directly), on the Qwen3-micro forward shapes
//! (`Y[4096, n] = X[4096, k] · Wᵀ`, W `[n, k]` row-major as in `nn.Linear`) and one large product
//! (512 × 4096 × 4096).
//!
//! `cargo bench -p qwen3-quant-kernels --bench gemm_choice -- --warm-up-time 1 --measurement-time 3`.
//! Every library gets the same operands in the same layout (`W` viewed transposed, no copies) and
//! all threads rayon has. After criterion's runs, a back-to-back summary (median of 5 timed calls
//! each, same process) is printed as GFLOP/s, which is the figure that justifies `dense.rs`.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use faer::{Accum, MatMut, MatRef, Par};
use ndarray::ArrayView2;
use std::hint::black_box;
use std::time::Instant;

/// (m tokens, k in, n out).
const SHAPES: [(usize, usize, usize); 5] = [
    (4096, 512, 1536),
    (4096, 512, 512),
    (4096, 512, 8192),
    (4096, 1536, 512),
    (512, 4096, 4096),
];

fn data(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed) % 1000) as f32 - 500.0) / 5000.0)
        .collect()
}

fn ndarray_wt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    let xa = ArrayView2::from_shape((m, k), x).unwrap();
    let wa = ArrayView2::from_shape((n, k), w).unwrap();
    let mut ya = ndarray::ArrayViewMut2::from_shape((m, n), y).unwrap();
    ndarray::linalg::general_mat_mul(1.0, &xa, &wa.t(), 0.0, &mut ya);
}

fn faer_wt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    let xa = MatRef::from_row_major_slice(x, m, k);
    // W [n, k] row-major == Wᵀ [k, n] column-major.
    let wt = MatRef::from_column_major_slice(w, k, n);
    let ya = MatMut::from_row_major_slice_mut(y, m, n);
    faer::linalg::matmul::matmul(ya, Accum::Replace, xa, wt, 1.0f32, Par::rayon(0));
}

fn ours_wt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    qwen3_quant_kernels::dense::matmul_wt(x, m, k, w, n, y);
}

type Impl = (
    &'static str,
    fn(&[f32], usize, usize, &[f32], usize, &mut [f32]),
);
const IMPLS: [Impl; 3] = [
    ("ndarray_dot", ndarray_wt),
    ("faer", faer_wt),
    ("gemm_crate_matmul_wt", ours_wt),
];

fn bench_gemm_choice(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_choice");
    g.sample_size(10);
    let mut summary = Vec::new();
    for &(m, k, n) in &SHAPES {
        let x = data(m * k, 1);
        let w = data(n * k, 2);
        let mut y = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        // Cross-check the three agree before timing anything.
        let mut refy = vec![0f32; m * n];
        ours_wt(&x, m, k, &w, n, &mut refy);
        for (name, f) in IMPLS {
            f(&x, m, k, &w, n, &mut y);
            let err = y
                .iter()
                .zip(&refy)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-3, "{name} disagrees with gemm by {err}");
        }
        g.throughput(Throughput::Elements(flops as u64));
        let shape = format!("{m}x{k}x{n}");
        for (name, f) in IMPLS {
            g.bench_function(BenchmarkId::new(name, &shape), |b| {
                b.iter(|| {
                    f(black_box(&x), m, k, &w, n, &mut y);
                    black_box(&y);
                })
            });
        }
        // Back-to-back, interleaved rounds so load changes hit every library alike.
        let mut times = [[0f64; 5]; 3];
        #[allow(clippy::needless_range_loop)]
        for round in 0..5 {
            for (i, (_, f)) in IMPLS.iter().enumerate() {
                let t = Instant::now();
                f(black_box(&x), m, k, &w, n, &mut y);
                black_box(&y);
                times[i][round] = t.elapsed().as_secs_f64();
            }
        }
        let med: Vec<f64> = times
            .iter_mut()
            .map(|t| {
                t.sort_by(f64::total_cmp);
                t[2]
            })
            .collect();
        summary.push((
            shape,
            med.iter().map(|s| flops / s / 1e9).collect::<Vec<_>>(),
        ));
    }
    g.finish();
    eprintln!(
        "\ngemm_choice summary (GFLOP/s, median of 5 interleaved calls, {} threads):",
        rayon::current_num_threads()
    );
    eprintln!(
        "{:>18} {:>12} {:>12} {:>12}",
        "m x k x n", IMPLS[0].0, IMPLS[1].0, "gemm(ours)"
    );
    for (shape, gf) in summary {
        eprintln!(
            "{shape:>18} {:>12.1} {:>12.1} {:>12.1}",
            gf[0], gf[1], gf[2]
        );
    }
}

criterion_group!(benches, bench_gemm_choice);
criterion_main!(benches);
