//! Back-to-back GEMV timings (same process, interleaved): exact packed `gemv`, int8-activation
//! `gemv_q8`, and dense f32 `matmul_wt`, plus the read-bandwidth probe; BiLLM binary weights
//! (exact and int8-activation kernels) with their GB/s of stored bytes.
//!
//! `cargo run --release -p qwen3-quant-kernels --example gemv_probe -- [rows cols] [--big]`.
//! `-- [rows cols] --binary` instead times the BiLLM binary GEMV against the 4-bit g128 one, as
//! interleaved pairs of calls (the same activations, alternating), and prints both the median and
//! the minimum per call and the GB/s of stored weight bytes: the per-byte comparison is the
//! ratio of the two GB/s (≥ 1 means the binary kernel reads its bytes at least as fast); add
//! `--big` to cycle over more than 256 MB of matrices on each side (memory-bound).
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

/// Interleaved 4-bit vs binary GEMV pairs (see the module docs); with `big`, each side cycles
/// over enough distinct matrices to exceed 256 MB, so weights come from memory.
fn binary_vs_q4(n: usize, k: usize, big: bool) {
    let x: Vec<f32> = (0..k)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
        .collect();
    let mut y = vec![0f32; n];
    let target = 256usize << 20;
    let count = |bytes: usize| {
        if big {
            target.div_ceil(bytes).max(2)
        } else {
            1
        }
    };
    let q4s: Vec<_> = {
        let first = random_packed(4, n, k, 128, 0).unwrap();
        let c = count(first.storage_bytes());
        std::iter::once(first)
            .chain((1..c).map(|l| random_packed(4, n, k, 128, l as u64).unwrap()))
            .collect()
    };
    let bs: Vec<_> = {
        let first = random_binary(n, k, 0).unwrap();
        let c = count(first.storage_bytes());
        std::iter::once(first)
            .chain((1..c).map(|l| random_binary(n, k, l as u64).unwrap()))
            .collect()
    };
    let (q4_bytes, b_bytes) = (q4s[0].storage_bytes(), bs[0].storage_bytes());
    if big {
        println!(
            "{} 4-bit and {} binary matrices; read bandwidth (1 GiB probe): {:.1} GB/s",
            q4s.len(),
            bs.len(),
            memory_read_bandwidth(1 << 30, 1.0)
        );
    }
    let pairs = 200;
    let (mut tq, mut tb) = (Vec::with_capacity(pairs), Vec::with_capacity(pairs));
    for c in 0..pairs + 5 {
        let s = Instant::now();
        if std::env::var_os("GEMV_PROBE_NO_Q4").is_none() {
            q4s[c % q4s.len()].gemv(black_box(&x), &mut y).unwrap();
        }
        black_box(&y);
        let a = s.elapsed().as_secs_f64() * 1e3;
        let s = Instant::now();
        bs[c % bs.len()].gemv(black_box(&x), &mut y).unwrap();
        black_box(&y);
        let bt = s.elapsed().as_secs_f64() * 1e3;
        if c >= 5 {
            tq.push(a);
            tb.push(bt);
        }
    }
    let stats = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        (t[t.len() / 2], t[0])
    };
    let ((mq, minq), (mb, minb)) = (stats(&mut tq), stats(&mut tb));
    if std::env::var_os("GEMV_PROBE_VERBOSE").is_some() {
        let pct = |t: &[f64]| -> Vec<String> {
            [0, 10, 25, 50, 75, 90]
                .iter()
                .map(|&p| format!("{:.2}", t[p * (t.len() - 1) / 100]))
                .collect()
        };
        println!("q4 percentiles 0/10/25/50/75/90: {:?}", pct(&tq));
        println!("billm percentiles: {:?}", pct(&tb));
    }
    let gbs = |bytes: usize, ms: f64| bytes as f64 / ms / 1e6;
    println!(
        "{n}x{k}: q4 g128 {:.2} MB: median {mq:.3} ms ({:.1} GB/s), min {minq:.3} ms ({:.1} GB/s); \
         billm {:.2} MB ({:.3} bits/weight): median {mb:.3} ms ({:.1} GB/s), min {minb:.3} ms ({:.1} GB/s); \
         per-byte speed billm/q4: median {:.2}, min {:.2}",
        q4_bytes as f64 / 1e6,
        gbs(q4_bytes, mq),
        gbs(q4_bytes, minq),
        b_bytes as f64 / 1e6,
        8.0 * b_bytes as f64 / (n * k) as f64,
        gbs(b_bytes, mb),
        gbs(b_bytes, minb),
        gbs(b_bytes, mb) / gbs(q4_bytes, mq),
        gbs(b_bytes, minb) / gbs(q4_bytes, minq),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let big = args.iter().any(|a| a == "--big");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if args.iter().any(|a| a == "--binary") {
        let (n, k) = if nums.len() >= 2 {
            (nums[0], nums[1])
        } else {
            (4096, 14336)
        };
        binary_vs_q4(n, k, big);
        return;
    }
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
            // BiLLM binary weights (2 bits per weight plus an int8 table per row and block):
            // the exact f32-activation kernel and the int8-activation decode kernel.
            let b = random_binary(n, k, 0).unwrap();
            let bytes = b.storage_bytes();
            let exact = median_ms(
                |_| {
                    b.gemv_exact(black_box(&x), &mut y).unwrap();
                    black_box(&y);
                },
                calls,
            );
            let q8 = median_ms(
                |_| {
                    b.gemv_q8(black_box(&x), &mut y).unwrap();
                    black_box(&y);
                },
                calls,
            );
            line += &format!(
                " billm exact {exact:.3} ms, q8act {q8:.3} ms ({:.1} GB/s, {:.3} bits/weight, x{:.2} vs f32);",
                bytes as f64 / q8 / 1e6,
                8.0 * bytes as f64 / (n * k) as f64,
                f32_ms / q8
            );
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
