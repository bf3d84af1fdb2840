//! The int8 GEMM (per-token activation quantization + exact integer product) against the f32
//! GEMM of the model, on the shapes of one linear, as interleaved back-to-back pairs.
//!
//! ```text
//! cargo run --release -p qwen3-quant-kernels --example int8_gemm -- [TOKENS] [ROWS] [COLS] [PAIRS]
//! ```
//! Without shape arguments it runs the seven linears of qwen3-micro at 4096 tokens (the docs_32
//! batch of 4 × 1024) and at 1 token (decode). Prints per shape the median time of each side,
//! the median of the per-pair ratios, GOP/s, and the share of the int8 time spent quantizing.

use std::time::Instant;

use qwen3_quant_kernels::dense;
use qwen3_quant_kernels::int8::{Int8Matrix, QuantizedActivations};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn time<F: FnMut()>(mut f: F, reps: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn run(m: usize, rows: usize, cols: usize, pairs: usize) {
    let mut seed = 7u64;
    let x: Vec<f32> = (0..m * cols).map(|_| lcg(&mut seed)).collect();
    let wf: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed) * 0.05).collect();
    let wq = QuantizedActivations::quantize(&wf, rows, cols, 8).unwrap();
    let mat = Int8Matrix::new(wq.codes(), wq.scales().to_vec(), rows, cols).unwrap();
    let mut y = vec![0f32; m * rows];
    let flops = 2.0 * (m * rows * cols) as f64;
    // Enough repetitions for ~20 ms per measurement.
    let probe = time(|| dense::matmul_wt(&x, m, cols, &wf, rows, &mut y), 1);
    let reps = ((0.02 / probe.max(1e-7)) as usize).clamp(1, 10_000);
    let (mut tf, mut ti, mut tq, mut ratio) = (vec![], vec![], vec![], vec![]);
    for _ in 0..pairs {
        let f = time(|| dense::matmul_wt(&x, m, cols, &wf, rows, &mut y), reps);
        let i = time(|| mat.forward(&x, m, 8, &mut y).unwrap(), reps);
        let q = time(
            || {
                std::hint::black_box(QuantizedActivations::quantize(&x, m, cols, 8).unwrap());
            },
            reps,
        );
        tf.push(f);
        ti.push(i);
        tq.push(q);
        ratio.push(f / i);
    }
    let (f, i, q, r) = (
        median(&mut tf),
        median(&mut ti),
        median(&mut tq),
        median(&mut ratio),
    );
    println!(
        "{m:>5} x {rows:>5} x {cols:>5}: f32 {:>9.1} us ({:>6.1} GFLOP/s)  int8 {:>9.1} us ({:>6.1} GOP/s, quantize {:>4.1}%)  f32/int8 {r:.2}",
        f * 1e6,
        flops / f / 1e9,
        i * 1e6,
        flops / i / 1e9,
        100.0 * q / i
    );
}

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("numbers"))
        .collect();
    println!(
        "kernel {}, {} threads",
        qwen3_quant_kernels::active_kernel().name(),
        rayon::current_num_threads()
    );
    if a.len() >= 3 {
        run(a[0], a[1], a[2], a.get(3).copied().unwrap_or(7));
        return;
    }
    let pairs = a.first().copied().unwrap_or(5);
    for m in [4096, 1] {
        for (rows, cols) in [(512, 512), (256, 512), (1536, 512), (512, 1536)] {
            run(m, rows, cols, pairs);
        }
    }
}
