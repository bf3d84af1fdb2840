//! SmoothQuant through the driver's transform stage: smoothing alone is an exact equivalence
//! (every pair, including the optional v→o and up→down, on the dense and the MoE model), and
//! it does flatten the activations it is meant to flatten.

mod common;
use common::*;
use qwen3_quant::calib::{first_windows, quantize_model_with, DriverOptions, Pipeline};
use qwen3_quant::core::LayerTransform;
use qwen3_quant::model::Qwen3Model;
use qwen3_quant::smoothquant::{SmoothQuant, SmoothQuantConfig};

fn max_rel_change(a: &Qwen3Model, b: &Qwen3Model) -> f32 {
    let ids: Vec<u32> = docs("valid")[..256].to_vec();
    let x = a.forward(&ids, 2, 128).unwrap();
    let y = b.forward(&ids, 2, 128).unwrap();
    let scale = x.iter().fold(0.0f32, |s, v| s.max(v.abs()));
    x.iter()
        .zip(&y)
        .fold(0.0f32, |s, (p, q)| s.max((p - q).abs()))
        / scale
}

fn smooth(
    model: &Qwen3Model,
    cfg: SmoothQuantConfig,
) -> (Qwen3Model, qwen3_quant::calib::QuantizationRun) {
    let calib = first_windows(&docs("calib"), 2, 256).unwrap();
    let sq = SmoothQuant::new(cfg).unwrap();
    let transforms: [&dyn LayerTransform; 1] = [&sq];
    let mut m = model.clone();
    let run = quantize_model_with(
        &mut m,
        Some(&calib),
        &Pipeline::transforms_only(&transforms),
        &DriverOptions::default(),
    )
    .unwrap();
    assert!(run.quantized.is_empty());
    (m, run)
}

#[test]
fn smoothing_alone_leaves_the_logits_unchanged() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let original = micro();
    for (alpha, o, down, pairs) in [(0.5, false, false, 2), (0.85, true, true, 4)] {
        let mut cfg = SmoothQuantConfig::with_alpha(alpha);
        cfg.smooth_o = o;
        cfg.smooth_down = down;
        let (m, run) = smooth(&original, cfg);
        assert_eq!(run.transforms.len(), 8 * pairs);
        assert!(run.transforms.iter().all(|t| t.fallback.is_none()));
        assert_ne!(
            m.layers[2].input_layernorm,
            original.layers[2].input_layernorm
        );
        let r = max_rel_change(&original, &m);
        eprintln!("alpha {alpha} (o: {o}, down: {down}): relative logit change {r:.3e}");
        assert!(r <= 1e-5, "{r}");
    }
}

#[test]
fn smoothing_alone_leaves_the_moe_logits_unchanged() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let original = Qwen3Model::load(format!("{ASSETS}/models/qwen3-moe-micro")).unwrap();
    let mut cfg = SmoothQuantConfig::with_alpha(0.5);
    cfg.smooth_down = true;
    let experts = original.config.moe.as_ref().unwrap().num_experts;
    let (m, run) = smooth(&original, cfg);
    assert_eq!(run.transforms.len(), 4 * (2 + experts));
    // Only the up→down pairs of experts that no calibration token reached stay unsmoothed.
    let idle: usize = run
        .expert_tokens
        .iter()
        .map(|(_, c)| c.iter().filter(|&&n| n == 0).count())
        .sum();
    let fallbacks = run
        .transforms
        .iter()
        .filter(|t| t.fallback.is_some())
        .count();
    eprintln!("moe: {idle} idle experts, {fallbacks} unsmoothed pairs");
    assert_eq!(fallbacks, idle);
    let r = max_rel_change(&original, &m);
    eprintln!("moe: relative logit change {r:.3e}");
    assert!(r <= 1e-5, "{r}");
}

#[test]
fn smoothing_flattens_the_activation_outliers() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let calib = first_windows(&docs("calib"), 2, 256).unwrap();
    let sq = SmoothQuant::new(SmoothQuantConfig::with_alpha(0.5)).unwrap();
    let transforms: [&dyn LayerTransform; 1] = [&sq];
    let mut m = micro();
    let run = quantize_model_with(
        &mut m,
        Some(&calib),
        &Pipeline::transforms_only(&transforms),
        &DriverOptions::default(),
    )
    .unwrap();
    // loss / baseline_loss hold the activations' max/median channel range after / before.
    for t in &run.transforms {
        assert!(
            t.loss < t.baseline_loss,
            "{} layer {}: {} -> {}",
            t.target,
            t.layer,
            t.baseline_loss,
            t.loss
        );
    }
}
