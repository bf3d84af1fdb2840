//! GPTQ end to end on qwen3-micro with a reduced calibration set (CI budget): 3-bit g128
//! act-order true-sequential must beat RTN 3-bit g128 on held-out text by a clear margin (the
//! reference gap is 5%: 19.70 against 20.80 on docs_32). At 4 bits the gap (0.6%) is within what
//! a 64-window calibration moves, so it would not guard anything. The full parity run (128 × 1024 windows, docs_32 and wiki2_32 against
//! `reference_ppl.json`) is the documented command in the README.

mod common;
use common::*;
use qwen3_quant::calib::{first_windows, quantize_model, DriverOptions};
use qwen3_quant::core::{Bits, GroupSize, QuantScheme, RangeConvention};
use qwen3_quant::gptq::{Gptq, GptqConfig};
use qwen3_quant::rtn::{Rtn, RtnConfig};

#[test]
fn gptq_w3_g128_beats_rtn_with_32_calibration_windows() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let valid = docs("valid");
    let calib = first_windows(&docs("calib"), 32, 1024).unwrap();
    let fp = ppl(&micro(), &valid, 16);

    let rtn_ppl = ppl(&rtn_w3(), &valid, 16);

    let mut g = micro();
    let method = Gptq::new(w3()).unwrap();
    let run = quantize_model(&mut g, Some(&calib), &method, &DriverOptions::default()).unwrap();
    assert_eq!(run.quantized.len(), 56);
    assert_eq!(run.calib_tokens, 32 * 1024);
    let bad: Vec<_> = run
        .records
        .iter()
        .filter(|r| !(r.loss.is_finite() && r.damp > 0.0))
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    let gptq_ppl = ppl(&g, &valid, 16);
    eprintln!(
        "docs 16 windows: fp {fp:.4}  rtn w3g128 {rtn_ppl:.4}  gptq w3g128 {gptq_ppl:.4} ({:.1} s)",
        run.seconds
    );
    assert!(
        gptq_ppl < rtn_ppl * 0.985,
        "GPTQ {gptq_ppl} should beat RTN {rtn_ppl} by 1.5%"
    );
    assert!(gptq_ppl < fp * 1.08, "GPTQ {gptq_ppl} too far from fp {fp}");
}

/// qwen3-micro with RTN 3-bit g128 (AWQ's min/max convention, the reference RTN).
fn rtn_w3() -> qwen3_quant::model::Qwen3Model {
    let mut m = micro();
    let scheme = QuantScheme::new(
        Bits::new(3).unwrap(),
        GroupSize::group(128).unwrap(),
        false,
        RangeConvention::Awq,
    )
    .unwrap();
    let rtn = Rtn::new(RtnConfig::new(scheme)).unwrap();
    quantize_model(&mut m, None, &rtn, &DriverOptions::default()).unwrap();
    m
}

/// GPTQ's default configuration at 3 bits, g128.
fn w3() -> GptqConfig {
    GptqConfig::default().with_bits(Bits::new(3).unwrap())
}

/// Holding the calibration activations in bf16 halves their memory and changes the result only
/// within calibration noise: GPTQ's layer losses agree linear by linear, and the perplexities
/// closely. At 4 bits: at 3 bits with 8 windows GPTQ overfits them (it ends up behind RTN) and
/// the two runs' perplexities scattered by 2.2% on an AVX2 machine.
#[test]
fn bf16_activation_buffer_matches_f32_closely() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    use qwen3_quant::calib::ActivationDtype;
    let valid = docs("valid");
    let calib = first_windows(&docs("calib"), 4, 1024).unwrap();
    let method = Gptq::new(GptqConfig::default().with_bits(Bits::new(4).unwrap())).unwrap();
    let mut a = micro();
    let ra = quantize_model(&mut a, Some(&calib), &method, &DriverOptions::default()).unwrap();
    let mut b = micro();
    let opts = DriverOptions::default().with_activations(ActivationDtype::Bf16);
    let rb = quantize_model(&mut b, Some(&calib), &method, &opts).unwrap();
    // Linear by linear, the layer losses GPTQ reports agree closely: layer 0 sees the same
    // embeddings rounded to bf16, later layers also inherit the other run's small differences.
    assert_eq!(ra.records.len(), rb.records.len());
    let worst = |layer0: bool| {
        ra.records
            .iter()
            .zip(&rb.records)
            .filter(|(x, _)| (x.layer == 0) == layer0)
            .map(|(x, y)| rel(y.loss, x.loss).abs())
            .fold(0f64, f64::max)
    };
    let (w0, w_rest) = (worst(true), worst(false));
    eprintln!(
        "layer losses, bf16 against f32 buffers: layer 0 within {w0:.2e}, others {w_rest:.2e}"
    );
    // Measured 2.2e-3 and 1.05e-2 (4 calibration windows; 8.6e-4 and 1.0e-2 with 8); wrong rows
    // or garbage in the buffer change losses wholesale.
    assert!(w0 < 5e-3 && w_rest < 5e-2, "{w0} {w_rest}");
    let (pa, pb, pf) = (
        ppl(&a, &valid, 4),
        ppl(&b, &valid, 4),
        ppl(&micro(), &valid, 4),
    );
    eprintln!("w4 g128: f32 activations {pa:.4}  bf16 activations {pb:.4}  full precision {pf:.4}");
    // End to end (measured 0.28% apart, 3.9% above full precision on these 4 windows).
    assert!(rel(pa, pb).abs() < 0.015, "{pa} vs {pb}");
    assert!(
        rel(pb, pf).abs() < 0.06,
        "bf16 run {pb} far from full precision {pf}"
    );
}
