//! STREAM-like read-bandwidth probe (the GEMV speed of light).
//!
//! `cargo bench -p qwen3-quant-kernels --bench membw` prints `bench::memory_read_bandwidth` for a
//! cache-sized and a DRAM-sized buffer, and lets criterion time one parallel read pass over a
//! preallocated 512 MiB buffer (throughput in bytes/s).

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qwen3_quant_kernels::bench::memory_read_bandwidth;
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Duration;

fn bench_membw(c: &mut Criterion) {
    for (label, bytes) in [("16 MiB", 16usize << 20), ("512 MiB", 512 << 20)] {
        eprintln!(
            "memory_read_bandwidth({label}): {:.1} GB/s",
            memory_read_bandwidth(bytes, 0.5)
        );
    }
    let words = (512usize << 20) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(rayon::current_num_threads().max(1));
    let mut g = c.benchmark_group("membw");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes((words * 8) as u64));
    g.bench_function("read_pass_512MiB", |b| {
        b.iter(|| {
            let s: u64 = buf
                .par_chunks(chunk)
                .map(|c| {
                    let mut acc = [0u64; 8];
                    for w in c.chunks_exact(8) {
                        for l in 0..8 {
                            acc[l] = acc[l].wrapping_add(w[l]);
                        }
                    }
                    acc.iter().fold(0u64, |a, &v| a.wrapping_add(v))
                })
                .reduce(|| 0, u64::wrapping_add);
            black_box(s)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_membw);
criterion_main!(benches);
