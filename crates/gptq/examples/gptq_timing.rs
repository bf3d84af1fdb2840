//! Times GPTQ on Qwen3-0.6B-like shapes (1536×512 and 512×1536, `[out, in]`).
//!
//! `cargo run --release -p qwen3-quant-gptq --example gptq_timing`

use std::time::Instant;

use qwen3_quant_core::Hessian;
use qwen3_quant_gptq::{quantize_weight, GptqConfig};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Process CPU time (user + system, all threads) in ms, from `/proc/self/stat` (Linux; 10 ms ticks).
fn cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (u, s): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((u + s) * 10.0)
}

fn main() {
    let mut rng = StdRng::seed_from_u64(0);
    for (out, inp) in [(1536usize, 512usize), (512, 1536)] {
        let tokens = 2048;
        // Correlated inputs: independent noise plus 8 shared factors.
        let f: Vec<f32> = (0..8 * inp).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let mut x = Vec::with_capacity(tokens * inp);
        for _ in 0..tokens {
            let a: Vec<f32> = (0..8).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            for j in 0..inp {
                let noise: f32 = rng.gen_range(-1.0f32..1.0);
                x.push(noise + (0..8).map(|k| a[k] * f[k * inp + j]).sum::<f32>());
            }
        }
        let w: Vec<f32> = (0..out * inp)
            .map(|_| rng.gen_range(-0.05f32..0.05))
            .collect();
        let t = Instant::now();
        let mut h = Hessian::new(inp);
        h.accumulate(&x, tokens).unwrap();
        let th = t.elapsed();
        let hs = h.scaled();
        for (name, cfg) in [
            (
                "w4 g128 act-order",
                GptqConfig::default().with_group_size(Some(128)),
            ),
            ("w4 per-channel act-order", GptqConfig::default()),
            (
                "w4 g128 no act-order",
                GptqConfig::default()
                    .with_group_size(Some(128))
                    .with_act_order(false),
            ),
        ] {
            quantize_weight(&w, out, inp, &hs, &cfg).unwrap(); // warm-up
                                                               // The machine may be shared: report the minimum and the median of several runs.
            let mut times = Vec::new();
            let mut loss = 0.0;
            for _ in 0..9 {
                let t = Instant::now();
                loss = quantize_weight(&w, out, inp, &hs, &cfg).unwrap().loss;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            // CPU time per linear over more runs: robust to other processes sharing the machine.
            let reps = 20;
            let c0 = cpu_ms();
            for _ in 0..reps {
                quantize_weight(&w, out, inp, &hs, &cfg).unwrap();
            }
            let cpu = c0
                .zip(cpu_ms())
                .map_or(f64::NAN, |(a, b)| (b - a) / reps as f64);
            println!(
                "{out}x{inp} {name}: wall min {:.2} ms, median {:.2} ms; cpu {cpu:.1} ms per linear (loss {loss:.4}); hessian accumulate of {tokens} tokens {:.2} ms",
                times[0],
                times[times.len() / 2],
                th.as_secs_f64() * 1e3
            );
        }
    }
}
