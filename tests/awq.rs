//! AWQ end to end through the driver's layer-level transform stage, with a reduced calibration
//! set (CI budget). The full parity runs (128 × 1024 windows against `reference_ppl.json`) are
//! the documented `quantize --method awq` commands in the README and `docs/awq.md`.

mod common;
use common::*;
use qwen3_quant::awq::{Awq, AwqConfig};
use qwen3_quant::calib::{
    first_windows, quantize_model, quantize_model_with, CalibrationSet, DriverOptions, Pipeline,
    QuantizationRun,
};
use qwen3_quant::core::{Bits, GroupSize, LayerTransform, QuantScheme, RangeConvention};
use qwen3_quant::model::Qwen3Model;
use qwen3_quant::rtn::{Rtn, RtnConfig};

fn scheme(bits: u8) -> QuantScheme {
    QuantScheme::new(
        Bits::new(bits).unwrap(),
        GroupSize::group(128).unwrap(),
        false,
        RangeConvention::Awq,
    )
    .unwrap()
}

fn rtn(model: &mut Qwen3Model, bits: u8) {
    let method = Rtn::new(RtnConfig::new(scheme(bits))).unwrap();
    quantize_model(model, None, &method, &DriverOptions::default()).unwrap();
}

/// AWQ (the reference settings at `bits`, g128), then RTN, through the driver.
fn awq_rtn(model: &mut Qwen3Model, calib: &CalibrationSet, bits: u8) -> QuantizationRun {
    let awq = Awq::new(AwqConfig::with_scheme(scheme(bits))).unwrap();
    let q = awq.quantizer().unwrap();
    let transforms: [&dyn LayerTransform; 1] = [&awq];
    let pipeline = Pipeline::new(&q).with_transforms(&transforms);
    quantize_model_with(model, Some(calib), &pipeline, &DriverOptions::default()).unwrap()
}

fn moe() -> Qwen3Model {
    Qwen3Model::load(format!("{ASSETS}/models/qwen3-moe-micro")).unwrap()
}

/// AWQ w3 g128 (scale search and clipping, full-precision propagation) clearly beats RTN w3 g128
/// on held-out text, with only 4 × 512 calibration tokens.
#[test]
fn awq_w3_beats_rtn_w3_on_qwen3_micro() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let valid = docs("valid");
    let calib = first_windows(&docs("calib"), 4, 512).unwrap();
    let mut r = micro();
    rtn(&mut r, 3);
    let rtn_ppl = ppl(&r, &valid, 8);

    let mut m = micro();
    let run = awq_rtn(&mut m, &calib, 3);
    assert_eq!(run.quantized.len(), 56);
    // Per layer: 3 scale pairs (v→o is skipped under GQA, as in the reference) and 5 clips.
    assert_eq!(
        run.transforms.iter().filter(|t| t.kind == "scale").count(),
        8 * 3
    );
    assert_eq!(
        run.transforms.iter().filter(|t| t.kind == "clip").count(),
        8 * 5
    );
    assert!(run
        .transforms
        .iter()
        .all(|t| t.fallback.is_none() && t.loss.is_finite()));
    assert!(run
        .transforms
        .iter()
        .all(|t| t.loss <= t.baseline_loss * (1.0 + 1e-12)));
    // The search does choose non-trivial scales somewhere.
    assert!(run.transforms.iter().any(|t| t.ratio.unwrap_or(0.0) > 0.0));
    let scaled = run
        .records
        .iter()
        .filter(|r| r.scale_ratio.is_some())
        .count();
    assert_eq!(scaled, 8 * 6, "q,k,v,gate,up,down carry their pair's ratio");
    let awq_ppl = ppl(&m, &valid, 8);
    eprintln!("docs 8 windows: rtn w3g128 {rtn_ppl:.4}  awq w3g128 {awq_ppl:.4}");
    assert!(
        awq_ppl < rtn_ppl * 0.985,
        "AWQ {awq_ppl} should beat RTN {rtn_ppl} by more than 1.5%"
    );
}

/// The scale fold of the driver is exact: AWQ's scale search alone (no clipping, no
/// quantization afterwards) leaves the model's function unchanged.
#[test]
fn awq_scales_alone_are_an_exact_equivalence() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let calib = first_windows(&docs("calib"), 2, 256).unwrap();
    let mut cfg = AwqConfig::with_scheme(scheme(3));
    cfg.clip = false;
    let awq = Awq::new(cfg).unwrap();
    let transforms: [&dyn LayerTransform; 1] = [&awq];
    let original = micro();
    let mut m = original.clone();
    let run = quantize_model_with(
        &mut m,
        Some(&calib),
        &Pipeline::transforms_only(&transforms),
        &DriverOptions::default(),
    )
    .unwrap();
    assert!(run.quantized.is_empty());
    assert!(run.transforms.iter().any(|t| t.ratio.unwrap_or(0.0) > 0.0));
    assert_ne!(
        m.layers[0].input_layernorm,
        original.layers[0].input_layernorm
    );
    let ids: Vec<u32> = docs("valid")[..256].to_vec();
    let a = original.forward(&ids, 2, 128).unwrap();
    let b = m.forward(&ids, 2, 128).unwrap();
    let scale = a.iter().fold(0.0f32, |s, v| s.max(v.abs()));
    let d = a
        .iter()
        .zip(&b)
        .fold(0.0f32, |s, (x, y)| s.max((x - y).abs()));
    assert!(d / scale <= 1e-5, "relative logit change {}", d / scale);
}

/// A dead input channel (an RMSNorm weight of zero: that channel is 0 for every token) is the
/// situation where other tools' scale grids turn all-NaN. Every candidate stays finite here.
#[test]
fn a_dead_channel_does_not_break_the_search() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let calib = first_windows(&docs("calib"), 2, 256).unwrap();
    let mut m = micro();
    m.layers[0].input_layernorm[7] = 0.0;
    m.layers[1].post_attention_layernorm[100] = 0.0;
    // Coarse grids (4 scale ratios, 4 clip steps): the dead channels meet every candidate all
    // the same, and the search's cost drops fivefold.
    let mut cfg = AwqConfig::with_scheme(scheme(4));
    cfg.grid = 4;
    cfg.clip_grid = 4;
    let awq = Awq::new(cfg).unwrap();
    let q = awq.quantizer().unwrap();
    let transforms: [&dyn LayerTransform; 1] = [&awq];
    let run = quantize_model_with(
        &mut m,
        Some(&calib),
        &Pipeline::new(&q).with_transforms(&transforms),
        &DriverOptions::default(),
    )
    .unwrap();
    assert!(run
        .transforms
        .iter()
        .all(|t| t.loss.is_finite() && t.fallback.is_none()));
    // The dead channel kept a neutral scale: its (zero) norm weight is still exactly zero and no
    // weight became non-finite.
    assert_eq!(m.layers[0].input_layernorm[7], 0.0);
    for layer in &m.layers {
        for id in layer.linear_ids() {
            let w = layer.linear(id.kind, id.expert).unwrap().to_dense();
            assert!(w.iter().all(|v| v.is_finite()), "{id}");
        }
    }
    assert!(ppl(&m, &docs("valid"), 2).is_finite());
}

/// On the MoE model (router in full precision, all experts' gate/up scaled together, one
/// up→down pair per expert), AWQ w4 g128 beats RTN w4 g128.
#[test]
fn awq_w4_beats_rtn_w4_on_qwen3_moe_micro() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let valid = docs("valid");
    let calib = first_windows(&docs("calib"), 8, 512).unwrap();
    let mut r = moe();
    rtn(&mut r, 4);
    let rtn_ppl = ppl(&r, &valid, 8);
    let mut m = moe();
    let run = awq_rtn(&mut m, &calib, 4);
    let experts = m.config.moe.as_ref().unwrap().num_experts;
    assert_eq!(run.expert_tokens.len(), 4);
    assert!(run.expert_tokens.iter().all(|(_, c)| c.len() == experts));
    // qkv, gate/up of every expert together, and one up→down pair per expert.
    assert_eq!(
        run.transforms.iter().filter(|t| t.kind == "scale").count(),
        4 * (2 + experts)
    );
    let awq_ppl = ppl(&m, &valid, 8);
    eprintln!("moe docs 8 windows: rtn w4g128 {rtn_ppl:.4}  awq w4g128 {awq_ppl:.4}");
    assert!(awq_ppl < rtn_ppl, "AWQ {awq_ppl} should beat RTN {rtn_ppl}");
}
