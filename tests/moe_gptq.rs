//! GPTQ on the Qwen3-MoE micro model: every expert linear is quantized (experts that no
//! calibration token reaches fall back to identity statistics), routing counts are reported, and
//! the quantized model stays close to full precision.

mod common;
use common::*;
use qwen3_quant::calib::{first_windows, quantize_model, DriverOptions};
use qwen3_quant::gptq::{Gptq, GptqConfig};
use qwen3_quant::model::Qwen3Model;

#[test]
fn gptq_w4_on_moe_quantizes_every_expert_and_stays_close() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let dir = format!("{ASSETS}/models/qwen3-moe-micro");
    let valid = docs("valid");
    let fp = ppl(&Qwen3Model::load(&dir).unwrap(), &valid, 8);
    let mut m = Qwen3Model::load(&dir).unwrap();
    let calib = first_windows(&docs("calib"), 16, 1024).unwrap();
    let run = quantize_model(
        &mut m,
        Some(&calib),
        &Gptq::new(GptqConfig::default()).unwrap(),
        &DriverOptions::default(),
    )
    .unwrap();
    // 4 layers × (4 attention + 8 experts × 3) linears.
    assert_eq!(run.quantized.len(), 4 * (4 + 8 * 3));
    assert_eq!(run.expert_tokens.len(), 4);
    for (_, counts) in &run.expert_tokens {
        assert_eq!(
            counts.iter().sum::<usize>(),
            16 * 1024 * 2,
            "top-2 routing of every token"
        );
    }
    for r in &run.records {
        assert_eq!(r.fallback.is_some(), r.tokens == 0, "{r:?}");
    }
    let q = ppl(&m, &valid, 8);
    eprintln!("moe docs 8 windows: fp {fp:.4}  gptq w4g128 {q:.4}");
    assert!(q < fp * 1.03, "{q} vs {fp}");
}
