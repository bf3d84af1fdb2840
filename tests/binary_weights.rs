//! BiLLM-style binary weights through the whole stack: a method returning
//! [`QuantizedWeight::Binary`] runs in the sequential driver, and the packed binary kernels
//! (streamed layer by layer from the checkpoint) give the fake-quantization perplexity (the
//! stored int8 tables are what both evaluate).
//!
//! The method here is a data-free stand-in for BiLLM (the real one, with Hessian-based salient
//! selection and GPTQ compensation, is its own crate): per 128-column block, the two columns of
//! largest `Σ|w|` are salient and binarized twice (residual), the other weights of each row are
//! split at the row's mean |w − μ| into two groups binarized once, with BiLLM's `μ = mean`,
//! `α = mean |w − μ|` (§5.4 of reference-methods.md).

mod common;
use common::*;
use qwen3_quant::calib::{quantize_checkpoint, quantize_model, DriverOptions, WeightMode};
use qwen3_quant::core::{
    BinaryLinear, BinaryParams, LinearInput, LinearStats, MethodError, Propagation, QuantOutcome,
    QuantizedWeight, Quantizer, StatsRequest,
};
use qwen3_quant::io::Checkpoint;

struct ToyBinary;

/// `(μ, α)` of the masked values (0, 0 when none).
fn binarize(vals: impl Iterator<Item = f32> + Clone) -> [f32; 2] {
    let n = vals.clone().count();
    if n == 0 {
        return [0.0, 0.0];
    }
    let mu = vals.clone().sum::<f32>() / n as f32;
    let alpha = vals.map(|v| (v - mu).abs()).sum::<f32>() / n as f32;
    [mu, alpha]
}

impl Quantizer for ToyBinary {
    fn name(&self) -> &'static str {
        "toy-binary"
    }
    fn stats_required(&self) -> StatsRequest {
        StatsRequest::default()
    }
    fn propagation(&self) -> Propagation {
        Propagation::Quantized
    }
    fn true_sequential(&self) -> bool {
        false
    }
    fn quantize_linear(
        &self,
        input: LinearInput<'_>,
        _: &LinearStats,
    ) -> Result<QuantOutcome, MethodError> {
        input.validate()?;
        let (o, n, w) = (input.out_features, input.in_features, input.weight);
        let nb = n.div_ceil(128);
        let mut salient = vec![false; n];
        for b in 0..nb {
            let cols: Vec<usize> = (b * 128..n.min(b * 128 + 128)).collect();
            let mut score: Vec<(f32, usize)> = cols
                .iter()
                .map(|&c| ((0..o).map(|r| w[r * n + c].abs()).sum(), c))
                .collect();
            score.sort_by(|a, b| b.0.total_cmp(&a.0));
            score.iter().take(2).for_each(|&(_, c)| salient[c] = true);
        }
        let (mut signs, mut bit1, mut params) = (
            vec![0u8; o * n],
            vec![0u8; o * n],
            Vec::with_capacity(o * nb),
        );
        let sign = |v: f32, mu: f32| u8::from(v >= mu);
        for r in 0..o {
            let row = &w[r * n..(r + 1) * n];
            for b in 0..nb {
                let cols = b * 128..n.min(b * 128 + 128);
                let ns: Vec<usize> = cols.clone().filter(|&c| !salient[c]).collect();
                let sal: Vec<usize> = cols.clone().filter(|&c| salient[c]).collect();
                let [mu, dev] = binarize(ns.iter().map(|&c| row[c]));
                let far = |c: usize| (row[c] - mu).abs() > dev;
                let sparse = binarize(ns.iter().filter(|&&c| far(c)).map(|&c| row[c]));
                let concentrated = binarize(ns.iter().filter(|&&c| !far(c)).map(|&c| row[c]));
                for &c in &ns {
                    let g = if far(c) { sparse } else { concentrated };
                    signs[r * n + c] = sign(row[c], g[0]);
                    bit1[r * n + c] = u8::from(!far(c));
                }
                let first = binarize(sal.iter().map(|&c| row[c]));
                let b1 = |c: usize| {
                    first[0]
                        + if row[c] >= first[0] {
                            first[1]
                        } else {
                            -first[1]
                        }
                };
                let second = binarize(sal.iter().map(|&c| row[c] - b1(c)));
                for &c in &sal {
                    signs[r * n + c] = sign(row[c], first[0]);
                    bit1[r * n + c] = sign(row[c] - b1(c), second[0]);
                }
                params.push(BinaryParams {
                    sparse,
                    concentrated,
                    salient_first: first,
                    salient_second: second,
                });
            }
        }
        let linear = BinaryLinear::from_params(o, n, signs, bit1, salient, &params)?;
        let loss = linear
            .dequantize()
            .iter()
            .zip(w)
            .map(|(q, v)| f64::from(q - v).powi(2))
            .sum();
        Ok(QuantOutcome {
            linear: QuantizedWeight::Binary(linear),
            loss,
            damp: 0.0,
        })
    }
}

#[test]
fn binary_weights_run_fake_and_packed_alike() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let mut fake = micro();
    let run = quantize_model(&mut fake, None, &ToyBinary, &DriverOptions::default()).unwrap();
    assert_eq!(run.quantized.len(), 56);
    assert!(run
        .quantized
        .iter()
        .all(|(_, q)| matches!(q, QuantizedWeight::Binary(_))));
    let bpw = run.bits_per_weight();
    let ckpt = Checkpoint::open(format!("{ASSETS}/models/qwen3-micro")).unwrap();
    let opts = DriverOptions::default().with_weight_mode(WeightMode::Packed);
    let (packed, _) = quantize_checkpoint(&ckpt, None, &ToyBinary, &opts).unwrap();
    let fp_bytes = micro().linear_bytes();
    assert!(
        packed.linear_bytes() * 7 < fp_bytes,
        "{} vs {fp_bytes}",
        packed.linear_bytes()
    );
    let ids = docs("valid");
    let (a, b) = (ppl(&fake, &ids, 2), ppl(&packed, &ids, 2));
    eprintln!("binary: {bpw:.3} bits/weight (honest), fake-quant ppl {a:.4}, packed {b:.4}, {} -> {} bytes", fp_bytes, packed.linear_bytes());
    assert!(a.is_finite() && rel(a, b).abs() < 1e-4, "{a} vs {b}");
    // Two bits per weight, plus 8 int8 values and a bf16 scale per row and 128-column block
    // (80/128 bit) and the salient map (1/rows bit).
    assert!((2.625..2.63).contains(&bpw), "{bpw}");
}
