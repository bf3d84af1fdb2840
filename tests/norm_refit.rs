//! The post-quantization norm refit (`DriverOptions::norm_refit`) through the driver: the
//! quantized linears are the ones the run without it makes, the norms move, and the quantized
//! q/k/v of layer 0 come closer to the full-precision outputs on the calibration inputs.

mod common;
use common::*;
use qwen3_quant::calib::{first_windows, quantize_model, DriverOptions};
use qwen3_quant::core::{Bits, LinearKind};
use qwen3_quant::gptq::{Gptq, GptqConfig};
use qwen3_quant::model::Qwen3Model;

/// `Σ ‖q/k/v outputs of `quant` − those of `fp`‖²` of layer 0 on `tokens`.
fn qkv_error(fp: &Qwen3Model, quant: &Qwen3Model, tokens: &[u32]) -> f64 {
    let rows = tokens.len();
    let h = fp.embed(tokens).unwrap();
    let (lf, lq) = (&fp.layers[0], &quant.layers[0]);
    let (xf, xq) = (lf.attn_input(&h), lq.attn_input(&h));
    let mut e = 0f64;
    for (wf, wq) in [
        (&lf.attn.q_proj, &lq.attn.q_proj),
        (&lf.attn.k_proj, &lq.attn.k_proj),
        (&lf.attn.v_proj, &lq.attn.v_proj),
    ] {
        let (yf, yq) = (wf.apply(&xf, rows).unwrap(), wq.apply(&xq, rows).unwrap());
        e += yf
            .iter()
            .zip(&yq)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>();
    }
    e
}

#[test]
fn norm_refit_moves_only_the_norms_and_lowers_the_output_error() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let calib = first_windows(&docs("calib"), 4, 256).unwrap();
    let method = Gptq::new(
        GptqConfig::default()
            .with_bits(Bits::new(3).unwrap())
            .with_group_size(Some(128)),
    )
    .unwrap();
    let run = |refit: Option<f64>| {
        let mut m = micro();
        let opts = DriverOptions::default().with_norm_refit(refit);
        let r = quantize_model(&mut m, Some(&calib), &method, &opts).unwrap();
        (m, r)
    };
    let (plain, plain_run) = run(None);
    let (refit, refit_run) = run(Some(0.01));
    let fp = micro();

    // Layer 0's q/k/v are quantized before their norm is refitted, from the same inputs.
    for ((id, a), (id_b, b)) in plain_run.quantized.iter().zip(&refit_run.quantized) {
        assert_eq!(id, id_b);
        if id.layer == 0 && matches!(id.kind, LinearKind::Q | LinearKind::K | LinearKind::V) {
            assert!(a == b, "{id} changed");
        }
    }
    assert!(plain_run
        .transforms
        .iter()
        .all(|t| t.transform != "norm-refit"));
    let logs: Vec<_> = refit_run
        .transforms
        .iter()
        .filter(|t| t.transform == "norm-refit")
        .collect();
    assert_eq!(logs.len(), 16, "two norms in each of 8 layers");
    let fitted = logs.iter().filter(|t| t.fallback.is_none()).count();
    assert!(fitted >= 12, "{fitted} fits");
    for t in logs.iter().filter(|t| t.fallback.is_none()) {
        assert!(t.loss < t.baseline_loss, "{t:?}");
    }

    // The norm moved by the factors the fit chose, within the accepted range.
    let (g0, g1) = (
        &fp.layers[0].input_layernorm,
        &refit.layers[0].input_layernorm,
    );
    assert_eq!(plain.layers[0].input_layernorm, *g0);
    let factors: Vec<f32> = g1.iter().zip(g0).map(|(a, b)| a / b).collect();
    assert!(factors.iter().all(|f| (0.25..=4.0).contains(f)));
    assert!(factors.iter().any(|f| (f - 1.0).abs() > 1e-3));

    // The direction is right: on the calibration tokens, layer 0's quantized q/k/v outputs are
    // closer to the full-precision ones with the refitted norm (the fit's own objective, on
    // inputs that only the norm separates).
    let tokens = &calib.flat(0, calib.len());
    let (before, after) = (
        qkv_error(&fp, &plain, tokens),
        qkv_error(&fp, &refit, tokens),
    );
    assert!(after < 0.999 * before, "error {before} -> {after}");
}
