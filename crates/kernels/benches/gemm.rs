//! Prefill-path GEMM, 512 tokens: packed g128 vs dense f32 (`dense::matmul_wt`) at Qwen3-8B shapes.
//!
//! `cargo bench -p qwen3-quant-kernels --bench gemm`. Default: 4-bit and f32 (each call is a
//! few hundred ms). `QWEN3_QUANT_BENCH_FULL=1` adds 2-, 3- and 8-bit. Throughput is in FLOPs
//! (elements = 2·T·N·K multiply-adds counted as 2).
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qwen3_quant_kernels::bench::random_packed;
use std::hint::black_box;
use std::time::Duration;

const SHAPES: [(usize, usize); 4] = [(4096, 4096), (12288, 4096), (4096, 12288), (4096, 14336)];
const TOKENS: usize = 512;

fn bench_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm512");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    let full = std::env::var_os("QWEN3_QUANT_BENCH_FULL").is_some();
    let bits_list: &[u8] = if full { &[2, 3, 4, 8] } else { &[4] };
    for &(n, k) in &SHAPES {
        let x: Vec<f32> = (0..TOKENS * k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
            .collect();
        let mut y = vec![0f32; TOKENS * n];
        g.throughput(Throughput::Elements((2 * TOKENS * n * k) as u64));
        for &bits in bits_list {
            let w = random_packed(bits, n, k, 128, 0).unwrap();
            g.bench_function(
                BenchmarkId::new(format!("q{bits}g128"), format!("{n}x{k}")),
                |b| {
                    b.iter(|| {
                        w.gemm(black_box(&x), TOKENS, &mut y).unwrap();
                        black_box(&y);
                    })
                },
            );
        }
        let wf: Vec<f32> = (0..n * k).map(|i| (i % 17) as f32 * 0.01).collect();
        g.bench_function(BenchmarkId::new("f32", format!("{n}x{k}")), |b| {
            b.iter(|| {
                qwen3_quant_kernels::dense::matmul_wt(black_box(&x), TOKENS, k, &wf, n, &mut y);
                black_box(&y);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
