//! RTN on qwen3-micro against the reference perplexities: w4/w3 g128 within 0.2%, w8 on docs_32
//! within 3e-5 (a tighter bound than its 1.35e-4 effect)
//! (per-group RTN with the group's own min/max, as in `reference_ppl.json`'s protocol).

mod common;
use common::*;
use qwen3_quant::calib::{quantize_model, DriverOptions};
use qwen3_quant::core::{Bits, GroupSize, QuantScheme, RangeConvention};
use qwen3_quant::rtn::{Rtn, RtnConfig};

fn check(bits: u8, tol: f64, sets: &[(&str, &[u32])]) {
    let mut m = micro();
    let scheme = QuantScheme::new(
        Bits::new(bits).unwrap(),
        GroupSize::group(128).unwrap(),
        false,
        RangeConvention::Awq,
    )
    .unwrap();
    let method = Rtn::new(RtnConfig::new(scheme)).unwrap();
    let run = quantize_model(&mut m, None, &method, &DriverOptions::default()).unwrap();
    assert_eq!(run.quantized.len(), 8 * 7);
    let key = format!("rtn_w{bits}_g128");
    for &(metric, ids) in sets {
        let got = ppl(&m, ids, 32);
        let want = reference(&key, metric);
        eprintln!(
            "{key} {metric} = {got:.4} (reference {want}, {:+.3}%)",
            100.0 * rel(got, want)
        );
        assert!(
            rel(got, want).abs() <= tol,
            "{key} {metric}: {got} vs {want}"
        );
    }
}

#[test]
fn rtn_w4_w3_g128_match_the_reference() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let (d, w) = (docs("valid"), wiki2_ids());
    let sets: [(&str, &[u32]); 2] = [("docs_32", &d), ("wiki2_32", &w)];
    // Measured +0.04% (docs) and +0.08–0.09% (wiki2) on both widths; the effect is 1.8–12%.
    check(4, 2e-3, &sets);
    check(3, 2e-3, &sets);
}

/// 8 bits moves docs_32 by only 0.013% (18.5676 → 18.5701), so a 0.1% bound could not tell
/// RTN from a no-op. docs_32 is reproduced to 4e-6 (18.57017), so the bound here is 3e-5:
/// a quantizer that changed nothing would fail it. wiki2_32 (0.023% effect; this forward's
/// value differs from the reference's by 7e-5) stays out of this check.
#[test]
fn rtn_w8_g128_matches_the_reference_on_docs() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    check(8, 3e-5, &[("docs_32", &docs("valid"))]);
}

/// Real low-bit inference: the same RTN weights run by the packed kernels (streamed one layer at
/// a time from the checkpoint) give the fake-quant perplexity, from a ~7x smaller model.
#[test]
fn packed_inference_matches_fake_quant() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    use qwen3_quant::calib::{quantize_checkpoint, WeightMode};
    use qwen3_quant::io::Checkpoint;
    let scheme = QuantScheme::new(
        Bits::new(4).unwrap(),
        GroupSize::group(128).unwrap(),
        false,
        RangeConvention::Awq,
    )
    .unwrap();
    let method = Rtn::new(RtnConfig::new(scheme)).unwrap();
    let mut fake = micro();
    quantize_model(&mut fake, None, &method, &DriverOptions::default()).unwrap();
    let ckpt = Checkpoint::open(format!("{ASSETS}/models/qwen3-micro")).unwrap();
    let opts = DriverOptions::default().with_weight_mode(WeightMode::Packed);
    let (packed, run) = quantize_checkpoint(&ckpt, None, &method, &opts).unwrap();
    assert_eq!(run.quantized.len(), 56);
    assert!(
        packed.linear_bytes() * 6 < fake.linear_bytes(),
        "{} vs {}",
        packed.linear_bytes(),
        fake.linear_bytes()
    );
    let ids = docs("valid");
    let (a, b) = (ppl(&fake, &ids, 4), ppl(&packed, &ids, 4));
    eprintln!("fake-quant {a:.6}  packed {b:.6}");
    assert!(rel(a, b).abs() < 1e-5, "{a} vs {b}");
    // One-token forwards take the decode GEMV (int8 activations where the CPU has VNNI). Its
    // extra divergence from fake quantization must be small next to what 4-bit weights cost.
    let fp = micro();
    let (mut kl_q8, mut kl_w4) = (0f64, 0f64);
    let probes = &ids[..64];
    for &t in probes {
        let lf = fake.forward(&[t], 1, 1).unwrap();
        kl_q8 += kl(&lf, &packed.forward(&[t], 1, 1).unwrap());
        kl_w4 += kl(&fp.forward(&[t], 1, 1).unwrap(), &lf);
    }
    let n = probes.len() as f64;
    eprintln!(
        "decode path: mean KL(fake-quant ‖ packed) = {:.2e}, KL(fp ‖ fake-quant) = {:.2e}",
        kl_q8 / n,
        kl_w4 / n
    );
    assert!(
        kl_q8 < 0.1 * kl_w4,
        "decode GEMV adds {kl_q8} nats against the weights' {kl_w4}"
    );
}

/// KL(softmax(p) ‖ softmax(q)) in nats.
fn kl(p: &[f32], q: &[f32]) -> f64 {
    let lse = |l: &[f32]| {
        let m = l.iter().fold(f32::MIN, |a, &v| a.max(v)) as f64;
        m + l.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lp, lq) = (lse(p), lse(q));
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let (a, b) = (a as f64 - lp, b as f64 - lq);
            a.exp() * (a - b)
        })
        .sum()
}
