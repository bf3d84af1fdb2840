//! The dense f32 product of the model (`dense::matmul_wt`): our blocked kernels (AVX2 + FMA, and
//! AVX-512 where the CPU has it) against the `gemm` crate (what runs when the kernel choice is
//! scalar, with its own runtime-dispatched SIMD), on the qwen3-micro forward shapes and one
//! Qwen3-8B shape, interleaved in one process (GFLOP/s, medians; ratios against the `gemm`
//! crate's run of the same round).
//!
//! ```text
//! cargo run --release -p qwen3-quant-kernels --example dense_gemm [-- PAIRS]
//! ```

use std::time::Instant;

use qwen3_quant_kernels::{available_kernels, dense, set_kernel_choice, KernelChoice};

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
    let blocked: Vec<KernelChoice> = available_kernels()
        .into_iter()
        .filter(|c| matches!(c, KernelChoice::Avx2 | KernelChoice::Avx512))
        .collect();
    println!(
        "shape (m, k, n): GFLOP/s of the gemm crate, then of each blocked kernel {blocked:?} with its \
         ratio to the gemm crate (medians of {pairs} interleaved rounds)"
    );
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
        let mut base = Vec::new();
        let mut rates = vec![Vec::new(); blocked.len()];
        let mut ratios = vec![Vec::new(); blocked.len()];
        for _ in 0..pairs {
            let g = time(KernelChoice::Scalar);
            base.push(g);
            for (i, &c) in blocked.iter().enumerate() {
                let r = time(c);
                rates[i].push(r);
                ratios[i].push(r / g);
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut line = format!("({m}, {k}, {n}): {:.1}", med(&mut base));
        for (r, q) in rates.iter_mut().zip(ratios.iter_mut()) {
            line += &format!(", {:.1} ({:.2}x)", med(r), med(q));
        }
        println!("{line}");
    }
    set_kernel_choice(None);
}
