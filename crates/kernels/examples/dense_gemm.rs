//! The dense f32 product of the model (`dense::matmul_wt`): our blocked AVX-512 kernel against
//! the `gemm` crate (what runs when the kernel choice is AVX2), on the qwen3-micro forward
//! shapes and one Qwen3-8B shape, as interleaved pairs in one process (GFLOP/s, medians).
//!
//! ```text
//! cargo run --release -p qwen3-quant-kernels --example dense_gemm [-- PAIRS]
//! ```

use std::time::Instant;

use qwen3_quant_kernels::{dense, set_kernel_choice, KernelChoice};

/// (m tokens, k in, n out).
const SHAPES: [(usize, usize, usize); 6] = [
    (4096, 512, 1024),
    (4096, 512, 1536),
    (4096, 512, 512),
    (4096, 1536, 512),
    (512, 512, 8192),
    (512, 4096, 4096),
];

fn data(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed) % 1000) as f32 - 500.0) / 5000.0)
        .collect()
}

fn main() {
    let pairs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!("shape (m, k, n): gemm crate GFLOP/s, blocked GFLOP/s, ratio (medians of {pairs} interleaved pairs)");
    for &(m, k, n) in &SHAPES {
        let (x, w) = (data(m * k, 1), data(n * k, 2));
        let mut y = vec![0.0f32; m * n];
        let flop = 2.0 * (m * n * k) as f64;
        let mut time = |c: KernelChoice| {
            set_kernel_choice(Some(c));
            let reps = ((2e9 / flop) as usize).max(1);
            dense::matmul_wt(&x, m, k, &w, n, &mut y);
            let t = Instant::now();
            for _ in 0..reps {
                dense::matmul_wt(&x, m, k, &w, n, &mut y);
            }
            flop * reps as f64 / t.elapsed().as_secs_f64() / 1e9
        };
        let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..pairs {
            let ga = time(KernelChoice::Avx2);
            let gb = time(KernelChoice::Avx512);
            a.push(ga);
            b.push(gb);
            r.push(gb / ga);
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "({m}, {k}, {n}): {:.1}, {:.1}, {:.2}x",
            med(&mut a),
            med(&mut b),
            med(&mut r)
        );
    }
    set_kernel_choice(None);
}
