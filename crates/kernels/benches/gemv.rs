//! Decode-path GEMV: packed 2/3/4/8-bit g128 vs dense f32 at Qwen3-8B shapes.
//!
//! `cargo bench -p qwen3-quant-kernels --bench gemv`. By default one matrix per case (it may sit
//! in cache). With `QWEN3_QUANT_BENCH_BIG=1` each case cycles over enough distinct matrices to
//! exceed a 260 MB L3, so the figure is a memory-bandwidth one (compare with the `membw`
//! bench). Throughput is reported in weight bytes per second. For
//! ≤ 4 bits, `..._q8act` is the default decode path (`PackedMatrix::gemv`, int8 activations) and
//! `..._exact` the f32-activation kernel (`PackedMatrix::gemv_exact`).
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qwen3_quant_kernels::bench::random_packed;
use std::hint::black_box;
use std::time::Duration;

const SHAPES: [(usize, usize); 4] = [(4096, 4096), (12288, 4096), (4096, 12288), (4096, 14336)];
const L3_BYTES: usize = 260 << 20;

fn layers_for(bytes: usize) -> usize {
    if std::env::var_os("QWEN3_QUANT_BENCH_BIG").is_some() {
        (L3_BYTES * 3 / 2).div_ceil(bytes).max(2)
    } else {
        1
    }
}

fn bench_gemv(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemv");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &(n, k) in &SHAPES {
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
            .collect();
        let mut y = vec![0f32; n];
        for bits in [2u8, 3, 4, 8] {
            let probe = random_packed(bits, n, k, 128, 0).unwrap();
            let bytes = probe.storage_bytes();
            let layers = layers_for(bytes);
            let mats: Vec<_> = std::iter::once(probe)
                .chain((1..layers).map(|l| random_packed(bits, n, k, 128, l as u64).unwrap()))
                .collect();
            g.throughput(Throughput::Bytes(bytes as u64));
            let mut i = 0usize;
            let exact = if bits <= 4 {
                format!("q{bits}g128_exact")
            } else {
                format!("q{bits}g128")
            };
            g.bench_function(BenchmarkId::new(exact, format!("{n}x{k}")), |b| {
                b.iter(|| {
                    i += 1;
                    mats[i % layers].gemv_exact(black_box(&x), &mut y).unwrap();
                    black_box(&y);
                })
            });
            if bits <= 4 {
                // The int8-activation kernel (llama.cpp-style Q8 activations), the decode default.
                g.bench_function(
                    BenchmarkId::new(format!("q{bits}g128_q8act"), format!("{n}x{k}")),
                    |b| {
                        b.iter(|| {
                            i += 1;
                            mats[i % layers].gemv_q8(black_box(&x), &mut y).unwrap();
                            black_box(&y);
                        })
                    },
                );
            }
        }
        let bytes = 4 * n * k;
        let layers = layers_for(bytes);
        let ws: Vec<Vec<f32>> = (0..layers)
            .map(|l| (0..n * k).map(|i| ((i + l) % 17) as f32 * 0.01).collect())
            .collect();
        g.throughput(Throughput::Bytes(bytes as u64));
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("f32", format!("{n}x{k}")), |b| {
            b.iter(|| {
                i += 1;
                qwen3_quant_kernels::dense::matmul_wt(
                    black_box(&x),
                    1,
                    k,
                    &ws[i % layers],
                    n,
                    &mut y,
                );
                black_box(&y);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_gemv);
criterion_main!(benches);
