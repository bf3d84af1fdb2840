//! Memory-bound GEMV against the read-bandwidth probe, measured as interleaved pairs.
//!
//! `cargo run --release -p qwen3-quant-kernels --example gemv_bandwidth -- [--mib N] [--pairs P] [rows cols]...`
//!
//! For each shape it builds enough distinct packed matrices (4-, 3- and 2-bit, g128) and f32
//! matrices to exceed `--mib` (default 512 MiB, well past the L3), then alternates one sweep of
//! the read probe over a buffer of the same size with one sweep of each kernel over all its
//! matrices. Each ratio is taken within one pair (back to back), and the medians are printed, so
//! load from other tenants of a shared machine moves both sides of a ratio together.

use qwen3_quant_kernels::bench::{probe_buffer, random_packed, read_pass};
use qwen3_quant_kernels::dense::matmul_wt;
use qwen3_quant_kernels::PackedMatrix;
use std::hint::black_box;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn secs(f: impl FnOnce()) -> f64 {
    let s = Instant::now();
    f();
    s.elapsed().as_secs_f64()
}

struct Set {
    label: String,
    mats: Vec<PackedMatrix>,
    bytes: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mib = flag("--mib", 512);
    let pairs = flag("--pairs", 15);
    let skip: Vec<usize> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| a.starts_with("--"))
        .map(|(i, _)| i + 1)
        .collect();
    let nums: Vec<usize> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .filter_map(|(_, a)| a.parse().ok())
        .collect();
    let shapes: Vec<(usize, usize)> = if nums.len() >= 2 {
        nums.chunks_exact(2).map(|c| (c[0], c[1])).collect()
    } else {
        vec![(4096, 4096), (12288, 4096), (4096, 12288)]
    };
    let target = mib << 20;
    println!(
        "threads {}, footprint {mib} MiB per sweep, {pairs} interleaved pairs; medians",
        rayon::current_num_threads()
    );
    println!("| shape | kernel | ms/matrix | GB/s | probe GB/s | of probe | vs f32 | vs q4 |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (n, k) in shapes {
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
            .collect();
        let mut y = vec![0f32; n];
        let sets: Vec<Set> = [4u8, 3, 2]
            .iter()
            .map(|&bits| {
                let first = random_packed(bits, n, k, 128, 0).unwrap();
                let bytes = first.storage_bytes();
                let layers = target.div_ceil(bytes).max(2);
                let mats = std::iter::once(first)
                    .chain((1..layers).map(|l| random_packed(bits, n, k, 128, l as u64).unwrap()))
                    .collect();
                Set {
                    label: format!("q{bits} g128 (int8 act)"),
                    mats,
                    bytes,
                }
            })
            .collect();
        let f32_layers = target.div_ceil(4 * n * k).max(2);
        let f32s: Vec<Vec<f32>> = (0..f32_layers)
            .map(|l| (0..n * k).map(|i| ((i + l) % 17) as f32 * 0.01).collect())
            .collect();
        let probe = probe_buffer(target);
        // Warm-up: touch everything once.
        black_box(read_pass(&probe));
        for s in &sets {
            for m in &s.mats {
                m.gemv_q8(&x, &mut y).unwrap();
            }
        }
        let mut probe_gbs = Vec::new();
        let mut ratio: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
        let mut ms: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
        let mut f32_ms = Vec::new();
        let mut vs_f32: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
        for _ in 0..pairs {
            let tp = secs(|| {
                black_box(read_pass(black_box(&probe)));
            });
            let pgbs = (probe.len() * 8) as f64 / tp / 1e9;
            probe_gbs.push(pgbs);
            let tf = secs(|| {
                for w in &f32s {
                    matmul_wt(black_box(&x), 1, k, w, n, &mut y);
                    black_box(&y);
                }
            }) / f32_layers as f64;
            f32_ms.push(tf * 1e3);
            for (i, s) in sets.iter().enumerate() {
                let t = secs(|| {
                    for m in &s.mats {
                        m.gemv_q8(black_box(&x), &mut y).unwrap();
                        black_box(&y);
                    }
                }) / s.mats.len() as f64;
                ms[i].push(t * 1e3);
                ratio[i].push(s.bytes as f64 / t / 1e9 / pgbs);
                vs_f32[i].push(tf / t);
            }
        }
        let q4 = median(ms[0].clone());
        let p = median(probe_gbs.clone());
        println!(
            "| {n}x{k} | f32 | {:.3} | {:.1} | {p:.1} | | | |",
            median(f32_ms.clone()),
            (4 * n * k) as f64 / median(f32_ms.clone()) / 1e6
        );
        for (i, s) in sets.iter().enumerate() {
            let m = median(ms[i].clone());
            println!(
                "| {n}x{k} | {} | {m:.3} | {:.1} | {p:.1} | {:.0}% | {:.2}x | {:.2}x |",
                s.label,
                s.bytes as f64 / m / 1e6,
                100.0 * median(ratio[i].clone()),
                median(vs_f32[i].clone()),
                q4 / m
            );
        }
    }
}
