//! RTN on qwen3-micro against the reference perplexities: w4/w3 g128 within 1%, w8 within 0.1%
//! (per-group RTN with the group's own min/max, as in `reference_ppl.json`'s protocol).

mod common;
use common::*;
use qwen3_quant::calib::{quantize_model, DriverOptions};
use qwen3_quant::core::{Bits, GroupSize, QuantScheme, RangeConvention};
use qwen3_quant::rtn::{Rtn, RtnConfig};

fn check(bits: u8, tol: f64, docs_ids: &[u32], wiki_ids: &[u32]) {
    let mut m = micro();
    let scheme = QuantScheme::new(Bits::new(bits).unwrap(), GroupSize::group(128).unwrap(), false, RangeConvention::Awq).unwrap();
    let method = Rtn::new(RtnConfig::new(scheme)).unwrap();
    let run = quantize_model(&mut m, None, &method, &DriverOptions::default()).unwrap();
    assert_eq!(run.quantized.len(), 8 * 7);
    let key = format!("rtn_w{bits}_g128");
    for (metric, ids) in [("docs_32", docs_ids), ("wiki2_32", wiki_ids)] {
        let got = ppl(&m, ids, 32);
        let want = reference(&key, metric);
        eprintln!("{key} {metric} = {got:.4} (reference {want}, {:+.3}%)", 100.0 * rel(got, want));
        assert!(rel(got, want).abs() <= tol, "{key} {metric}: {got} vs {want}");
    }
}

#[test]
fn rtn_w8_w4_w3_g128_match_the_reference() {
    let (d, w) = (docs("valid"), wiki2_ids());
    check(8, 1e-3, &d, &w);
    check(4, 1e-2, &d, &w);
    check(3, 1e-2, &d, &w);
}

/// Real low-bit inference: the same RTN weights run by the packed kernels (streamed one layer at
/// a time from the checkpoint) give the fake-quant perplexity, from a ~7x smaller model.
#[test]
fn packed_inference_matches_fake_quant() {
    use qwen3_quant::calib::{quantize_checkpoint, WeightMode};
    use qwen3_quant::io::Checkpoint;
    let scheme = QuantScheme::new(Bits::new(4).unwrap(), GroupSize::group(128).unwrap(), false, RangeConvention::Awq).unwrap();
    let method = Rtn::new(RtnConfig::new(scheme)).unwrap();
    let mut fake = micro();
    quantize_model(&mut fake, None, &method, &DriverOptions::default()).unwrap();
    let ckpt = Checkpoint::open(format!("{ASSETS}/models/qwen3-micro")).unwrap();
    let opts = DriverOptions { weight_mode: WeightMode::Packed, ..DriverOptions::default() };
    let (packed, run) = quantize_checkpoint(&ckpt, None, &method, &opts).unwrap();
    assert_eq!(run.quantized.len(), 56);
    assert!(packed.linear_bytes() * 6 < fake.linear_bytes(), "{} vs {}", packed.linear_bytes(), fake.linear_bytes());
    let ids = docs("valid");
    let (a, b) = (ppl(&fake, &ids, 4), ppl(&packed, &ids, 4));
    eprintln!("fake-quant {a:.6}  packed {b:.6}");
    assert!(rel(a, b).abs() < 1e-5, "{a} vs {b}");
}
