//! Asymmetric calibration (GPTAQ's objective, `GptqConfig::asymmetric`) through the driver on
//! qwen3-micro: the full-precision model runs alongside, and only linears whose inputs differ
//! between the two models change.

mod common;
use common::*;
use qwen3_quant::calib::{first_windows, quantize_model, DriverOptions};
use qwen3_quant::core::{Bits, LinearKind, Quantizer};
use qwen3_quant::gptq::{Gptq, GptqConfig};

#[test]
fn full_precision_targets_change_the_linears_whose_inputs_differ() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let calib = first_windows(&docs("calib"), 4, 256).unwrap();
    let plain_cfg = GptqConfig::default()
        .with_bits(Bits::new(3).unwrap())
        .with_group_size(Some(128));
    let asym_cfg = plain_cfg.with_asymmetric(Some(0.25));
    assert!(!Gptq::new(plain_cfg).unwrap().full_precision_targets());
    assert!(Gptq::new(asym_cfg).unwrap().full_precision_targets());
    let run = |cfg| {
        let mut m = micro();
        let method = Gptq::new(cfg).unwrap();
        quantize_model(&mut m, Some(&calib), &method, &DriverOptions::default())
            .unwrap()
            .quantized
    };
    let (plain, asym) = (run(plain_cfg), run(asym_cfg));
    assert_eq!(plain.len(), 56);
    for ((id, p), (id_a, a)) in plain.iter().zip(&asym) {
        assert_eq!(id, id_a);
        // Layer 0's q/k/v read the embeddings in both models: `X = X̃`, no correction, the
        // same codes bit for bit. Every other linear reads inputs that quantization changed.
        let same_inputs =
            id.layer == 0 && matches!(id.kind, LinearKind::Q | LinearKind::K | LinearKind::V);
        assert_eq!(p == a, same_inputs, "{id}");
    }
    // Out of range strengths are refused.
    for bad in [0.0, -0.5, 1.5, f32::NAN] {
        assert!(
            Gptq::new(plain_cfg.with_asymmetric(Some(bad))).is_err(),
            "{bad}"
        );
    }
}
