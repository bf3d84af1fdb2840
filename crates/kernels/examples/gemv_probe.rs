//! Back-to-back GEMV timings (same process, interleaved): exact packed `gemv`, int8-activation
//! `gemv_q8`, and dense f32 `matmul_wt`, plus the read-bandwidth probe.
//!
//! `cargo run --release -p qwen3-quant-kernels --example gemv_probe -- [rows cols] [--big]`.
//! Default shapes: 4096x14336 (the ggml anchor), 4096x4096, 12288x4096, 4096x12288. `--big`
//! cycles over enough distinct matrices to exceed 260 MB (memory-bound figures).

use qwen3_quant_kernels::bench::{memory_read_bandwidth, random_binary, random_packed};
use std::hint::black_box;
use std::time::Instant;

fn median_ms(mut f: impl FnMut(usize), calls: usize) -> f64 {
    f(0);
    let mut t = Vec::with_capacity(calls);
    for c in 0..calls {
        let s = Instant::now();
        f(c + 1);
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    t[calls / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let big = args.iter().any(|a| a == "--big");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let shapes: Vec<(usize, usize)> = if nums.len() >= 2 {
        vec![(nums[0], nums[1])]
    } else {
        vec![(4096, 14336), (4096, 4096), (12288, 4096), (4096, 12288)]
    };
    let shapes: Vec<(usize, usize)> = if big && nums.len() < 2 {
        shapes[1..].to_vec()
    } else {
        shapes
    };
    let target = 400usize << 20;
    if big {
        println!(
            "read bandwidth (1 GiB probe): {:.1} GB/s",
            memory_read_bandwidth(1 << 30, 1.0)
        );
    }
    for (n, k) in shapes {
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
            .collect();
        let mut y = vec![0f32; n];
        let f32_layers = if big {
            target.div_ceil(4 * n * k).max(2)
        } else {
            1
        };
        let ws: Vec<Vec<f32>> = (0..f32_layers)
            .map(|l| (0..n * k).map(|i| ((i + l) % 17) as f32 * 0.01).collect())
            .collect();
        let calls = if big { 30 } else { 60 };
        let mut line = format!("{n}x{k}:");
        let f32_ms = median_ms(
            |c| {
                qwen3_quant_kernels::dense::matmul_wt(
                    black_box(&x),
                    1,
                    k,
                    &ws[c % f32_layers],
                    n,
                    &mut y,
                );
                black_box(&y);
            },
            calls,
        );
        drop(ws);
        line += &format!(
            " f32 {f32_ms:.3} ms ({:.1} GB/s);",
            (4 * n * k) as f64 / f32_ms / 1e6
        );
        let widths: &[u8] = if big { &[4] } else { &[4, 3, 2] };
        for &bits in widths {
            let probe = random_packed(bits, n, k, 128, 0).unwrap();
            let bytes = probe.storage_bytes();
            let layers = if big {
                target.div_ceil(bytes).max(2)
            } else {
                1
            };
            let mats: Vec<_> = std::iter::once(probe)
                .chain((1..layers).map(|l| random_packed(bits, n, k, 128, l as u64).unwrap()))
                .collect();
            let exact = median_ms(
                |c| {
                    mats[c % layers].gemv_exact(black_box(&x), &mut y).unwrap();
                    black_box(&y);
                },
                calls,
            );
            let q8 = median_ms(
                |c| {
                    mats[c % layers].gemv_q8(black_box(&x), &mut y).unwrap();
                    black_box(&y);
                },
                calls,
            );
            let f32_again = f32_ms;
            line += &format!(
                " q{bits} exact {exact:.3} ms, q8act {q8:.3} ms ({:.1} GB/s, x{:.2} vs f32);",
                bytes as f64 / q8 / 1e6,
                f32_again / q8
            );
        }
        if !big {
            // BiLLM binary weights (2 bits per weight plus tables), f32 activations.
            let b = random_binary(n, k, 0).unwrap();
            let t = median_ms(
                |_| {
                    b.gemv(black_box(&x), &mut y).unwrap();
                    black_box(&y);
                },
                calls,
            );
            line += &format!(" billm {t:.3} ms (x{:.2} vs f32);", f32_ms / t);
        }
        println!("{line}");
    }
    if big {
        println!(
            "read bandwidth (1 GiB probe): {:.1} GB/s",
            memory_read_bandwidth(1 << 30, 1.0)
        );
    }
}
