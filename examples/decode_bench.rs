//! Decode speed against its memory ceiling, for f32 weights and packed 8-, 4-, 3-, 2-bit and
//! BiLLM binary weights, on qwen3-micro and on a synthetic model with Qwen3-1.7B's layer shapes
//! (28 layers, hidden 2048, 16/8 heads of 128, intermediate 6144; vocab 32768 with an untied
//! `lm_head` stored like the layers) whose weights are far larger than the L3 cache.
//!
//! The ceiling of a variant is `weight bytes read per token / measured read bandwidth`. Each
//! variant runs `--reps` pairs (default 5) of the bandwidth probe
//! (`kernels::bench::memory_read_bandwidth`, 1 GiB, all threads, 0.5 s) and one decode run; the
//! ratio is taken within each pair and the median printed, so each ratio is measured side by
//! side. Packed and binary weights are random (decode speed does not depend on the values); the
//! f32 micro model is the real one.
//!
//! ```text
//! cargo run --release --example decode_bench                 # qwen3-micro
//! cargo run --release --example decode_bench -- --synthetic  # Qwen3-1.7B shapes (~6 GB for f32)
//! cargo run --release --example decode_bench -- --synthetic --layers 8 --skip-f32
//! cargo run --release --example decode_bench -- --synthetic --variants 4,binary   # a subset
//! cargo run --release --example decode_bench -- --synthetic --variants 4 --prompt 1 # steps only
//! ```

use std::time::Instant;

use qwen3_quant::io::ModelConfig;
use qwen3_quant::kernels::bench::{memory_read_bandwidth, random_binary, random_packed};
use qwen3_quant::model::attention::Attention;
use qwen3_quant::model::mlp::Mlp;
use qwen3_quant::model::{DecoderLayer, FeedForward, LinearWeight, Qwen3Model};
use rayon::prelude::*;

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    F32,
    Packed(u8),
    Binary,
}

impl Variant {
    fn name(self) -> String {
        match self {
            Variant::F32 => "f32".into(),
            Variant::Packed(b) => format!("packed {b}-bit g128"),
            Variant::Binary => "binary (BiLLM)".into(),
        }
    }
}

fn weight(v: Variant, rows: usize, cols: usize, seed: u64) -> LinearWeight {
    match v {
        Variant::F32 => {
            let w: Vec<f32> = (0..rows * cols)
                .into_par_iter()
                .map(|i| {
                    (((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed) >> 41) as f32 * 1e-8
                        - 0.04
                })
                .collect();
            LinearWeight::dense(rows, cols, w).unwrap()
        }
        Variant::Packed(b) => {
            LinearWeight::Packed(random_packed(b, rows, cols, 128, seed).unwrap())
        }
        Variant::Binary => LinearWeight::Binary(random_binary(rows, cols, seed).unwrap()),
    }
}

/// Replaces every decoder linear and `lm_head` of `base` (a dense model) with `v` weights.
fn with_weights(base: &Qwen3Model, v: Variant) -> Qwen3Model {
    let mut m = Qwen3Model {
        config: base.config.clone(),
        embed_tokens: base.embed_tokens.clone(),
        layers: Vec::new(),
        norm: base.norm.clone(),
        lm_head: None,
    };
    let c = &m.config;
    let (h, it) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (c.q_dim(), c.kv_dim());
    m.layers = (0..c.num_hidden_layers)
        .into_par_iter()
        .map(|i| {
            let s = i as u64 * 16;
            DecoderLayer {
                index: i,
                input_layernorm: vec![1.0; h],
                post_attention_layernorm: vec![1.0; h],
                attn: Attention {
                    q_proj: weight(v, q, h, s),
                    k_proj: weight(v, kv, h, s + 1),
                    v_proj: weight(v, kv, h, s + 2),
                    o_proj: weight(v, h, q, s + 3),
                    q_norm: Some(vec![1.0; c.head_dim]),
                    k_norm: Some(vec![1.0; c.head_dim]),
                    bias: Default::default(),
                    heads: c.num_attention_heads,
                    kv_heads: c.num_key_value_heads,
                    head_dim: c.head_dim,
                    eps: c.rms_norm_eps as f32,
                },
                ffn: FeedForward::Dense(Mlp {
                    gate: weight(v, it, h, s + 4),
                    up: weight(v, it, h, s + 5),
                    down: weight(v, h, it, s + 6),
                }),
                eps: c.rms_norm_eps as f32,
            }
        })
        .collect();
    m.lm_head = Some(match (v, &base.lm_head) {
        (Variant::F32, Some(w)) => w.clone(),
        (Variant::F32, None) => {
            LinearWeight::dense(c.vocab_size, h, base.embed_tokens.clone()).unwrap()
        }
        _ => weight(v, c.vocab_size, h, 999),
    });
    m
}

/// Bytes of weights read per decoded token: every decoder linear, `lm_head`, one embedding row.
fn bytes_per_token(m: &Qwen3Model) -> usize {
    m.linear_bytes()
        + m.lm_head.as_ref().map_or(0, LinearWeight::storage_bytes)
        + m.config.hidden_size * 4
}

/// Seconds per token: a `prompt`-token prompt (untimed), then `n` one-token steps (greedy).
fn per_token(m: &Qwen3Model, prompt: usize, n: usize) -> f64 {
    let v = m.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt as u32).map(|i| (i * 7919 + 13) % v).collect();
    let mut cache = m.new_cache();
    let mut logits = m.forward_step(&prompt, &mut cache).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        let next = logits
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0;
        logits = m.forward_step(&[next as u32], &mut cache).unwrap();
    }
    start.elapsed().as_secs_f64() / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn synthetic(layers: usize) -> Qwen3Model {
    let cfg = format!(
        r#"{{"model_type": "qwen3", "vocab_size": 32768, "hidden_size": 2048, "intermediate_size": 6144,
            "num_hidden_layers": {layers}, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000, "tie_word_embeddings": false,
            "max_position_embeddings": 40960, "eos_token_id": 0}}"#
    );
    let config = ModelConfig::from_json(&cfg).unwrap();
    let (v, h) = (config.vocab_size, config.hidden_size);
    let embed: Vec<f32> = (0..v * h)
        .into_par_iter()
        .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
        .collect();
    Qwen3Model {
        norm: vec![1.0; h],
        lm_head: None,
        layers: Vec::new(),
        embed_tokens: embed,
        config,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let synth = flag("--synthetic");
    let layers: usize = value("--layers").map_or(28, |v| v.parse().unwrap());
    // Probe/decode pairs per variant.
    let reps: usize = value("--reps").map_or(5, |v| v.parse().unwrap());
    // Prompt length before the timed steps (a profile of the steps alone wants 1).
    let prompt: usize = value("--prompt").map_or(8, |v| v.parse().unwrap());
    let base = if synth {
        synthetic(layers)
    } else {
        Qwen3Model::load(value("--model").unwrap_or_else(|| format!("{ASSETS}/models/qwen3-micro")))
            .unwrap()
    };
    let mut variants = vec![
        Variant::Packed(8),
        Variant::Packed(4),
        Variant::Packed(3),
        Variant::Packed(2),
        Variant::Binary,
    ];
    if !flag("--skip-f32") {
        variants.insert(0, Variant::F32);
    }
    if let Some(list) = value("--variants") {
        let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
        variants = [
            Variant::F32,
            Variant::Packed(8),
            Variant::Packed(4),
            Variant::Packed(3),
            Variant::Packed(2),
            Variant::Binary,
        ]
        .into_iter()
        .filter(|v| {
            let key = match v {
                Variant::F32 => "f32".to_string(),
                Variant::Packed(b) => b.to_string(),
                Variant::Binary => "binary".to_string(),
            };
            wanted.contains(&key.as_str())
        })
        .collect();
    }
    println!(
        "{} ({} layers, hidden {}, intermediate {}, vocab {}), {} threads, medians of {reps} interleaved probe/decode pairs (% of ceiling: median of the per-pair ratios)",
        if synth {
            "synthetic Qwen3-1.7B shapes"
        } else {
            "model"
        },
        base.config.num_hidden_layers,
        base.config.hidden_size,
        base.config.intermediate_size,
        base.config.vocab_size,
        rayon::current_num_threads()
    );
    println!("| weights | MB read/token | tokens/s | read probe GB/s | ceiling tokens/s | % of ceiling |");
    println!("|---|---:|---:|---:|---:|---:|");
    for v in variants {
        // The real micro model's f32 weights; every other variant replaces them.
        let m = if v == Variant::F32 && !synth {
            base.clone()
        } else {
            with_weights(&base, v)
        };
        let bytes = bytes_per_token(&m);
        let steps = if synth {
            if v == Variant::F32 {
                8
            } else {
                32
            }
        } else {
            128
        };
        let _ = per_token(&m, prompt, 2); // warm-up

        // Interleaved pairs: a read probe, then one decode run; each ratio is taken within its
        // pair, so load from other tenants moves both sides of it together.
        let (mut bws, mut tpss, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let bw = memory_read_bandwidth(1 << 30, 0.5);
            let tps = 1.0 / per_token(&m, prompt, steps);
            ratios.push(tps / (bw * 1e9 / bytes as f64));
            bws.push(bw);
            tpss.push(tps);
        }
        let (bw, tps) = (median(bws), median(tpss));
        println!(
            "| {} | {:.1} | {:.2} | {:.1} | {:.2} | {:.0}% |",
            v.name(),
            bytes as f64 / 1e6,
            tps,
            bw,
            bw * 1e9 / bytes as f64,
            100.0 * median(ratios)
        );
        drop(m);
    }
}
