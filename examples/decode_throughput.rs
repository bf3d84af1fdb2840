//! Decode speed with the key/value cache: the f32 model against the same model quantized with
//! RTN 4-bit g128 and kept packed (one-token steps run the packed GEMV kernels), timed back to
//! back in alternation.
//!
//! ```text
//! cargo run --release --example decode_throughput [-- MODEL_DIR]
//! ```
//! `QWEN3_QUANT_GEMV=exact` times the f32-activation GEMV instead of the int8-activation one.

use std::time::Instant;

use qwen3_quant::calib::{quantize_checkpoint, DriverOptions, WeightMode};
use qwen3_quant::core::{Bits, GroupSize, QuantScheme, RangeConvention};
use qwen3_quant::io::Checkpoint;
use qwen3_quant::model::Qwen3Model;
use qwen3_quant::rtn::{Rtn, RtnConfig};

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");

/// Seconds per generated token: a 16-token prompt, then `n` one-token steps.
fn per_token(m: &Qwen3Model, n: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let v = m.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..16).map(|i| (i * 7919 + 13) % v).collect();
    let mut cache = m.new_cache();
    let mut logits = m.forward_step(&prompt, &mut cache)?;
    let start = Instant::now();
    for _ in 0..n {
        let next = logits
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0;
        logits = m.forward_step(&[next as u32], &mut cache)?;
    }
    Ok(start.elapsed().as_secs_f64() / n as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| format!("{ASSETS}/models/qwen3-micro"));
    let fp = Qwen3Model::load(&dir)?;
    let scheme = QuantScheme::new(
        Bits::new(4)?,
        GroupSize::group(128)?,
        false,
        RangeConvention::Awq,
    )?;
    let opts = DriverOptions::default()
        .with_weight_mode(WeightMode::Packed)
        .with_progress(false);
    let (packed, _) = quantize_checkpoint(
        &Checkpoint::open(&dir)?,
        None,
        &Rtn::new(RtnConfig::new(scheme))?,
        &opts,
    )?;
    println!(
        "linear weights: f32 {} bytes, packed 4-bit {} bytes",
        fp.linear_bytes(),
        packed.linear_bytes()
    );
    let (mut f, mut p) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        f.push(per_token(&fp, 128)?);
        p.push(per_token(&packed, 128)?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (tf, tp) = (median(&mut f), median(&mut p));
    println!(
        "decode: f32 {:.1} tokens/s, packed 4-bit {:.1} tokens/s ({:.2}x), medians of 5 alternating runs of 128 tokens",
        1.0 / tf,
        1.0 / tp,
        tf / tp
    );
    Ok(())
}
