//! Export, load, compare: for RTN and GPTQ at 8, 4, 3 and 2 bits, every format that can hold the
//! result is written, decoded by the independent unpacker of `common` (which must give back the
//! method's integers exactly) and loaded packed; its perplexity must equal the fake-quant one
//! within 0.1% (f16/bf16 scales are the only difference).

mod common;

use std::path::Path;

use common::*;
use qwen3_quant_calib::{first_windows, quantize_checkpoint, CalibrationSet, DriverOptions};
use qwen3_quant_core::{
    Bits, GroupSize, LinearId, QuantScheme, QuantizedLinear, QuantizedWeight, Quantizer,
    RangeConvention,
};
use qwen3_quant_formats::{
    load_model, write_checkpoint, Format, FormatError, LoadOptions, WriteOptions,
};
use qwen3_quant_gptq::{Gptq, GptqConfig};
use qwen3_quant_io::Checkpoint;
use qwen3_quant_model::{LinearWeight, Qwen3Model};
use qwen3_quant_rtn::{Rtn, RtnConfig};

const WINDOWS: usize = 2;
const SEQ: usize = 512;

fn affine(q: &QuantizedWeight) -> &QuantizedLinear {
    q.as_affine().expect("affine")
}

/// The stored integers of every linear, decoded by the independent unpacker, equal the run's.
fn check_integers(dir: &Path, format: Format, quantized: &[(LinearId, QuantizedWeight)]) {
    let ckpt = Checkpoint::open(dir).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let qc = &cfg["quantization_config"];
    for (id, q) in quantized {
        let q = affine(q);
        let p = format!("model.{id}");
        let (bits, n, k, g) = (
            q.bits().get() as usize,
            q.out_features(),
            q.in_features(),
            q.n_groups(),
        );
        match format {
            Format::Gptq => {
                let (codes, nn, kk) = gptq_codes(&ckpt, &p, bits);
                assert_eq!((nn, kk), (n, k), "{p}");
                assert_eq!(codes, q.codes(), "{p} codes");
                let stored = gptq_stored_zeros(&ckpt, &p, bits);
                let v1 = qc["checkpoint_format"] == "gptq";
                let maxq = (1u16 << bits) - 1;
                let zeros: Vec<u8> = stored
                    .iter()
                    .map(|&z| {
                        if v1 {
                            ((u16::from(z) + 1) & maxq) as u8
                        } else {
                            z
                        }
                    })
                    .collect();
                assert_eq!(zeros, q.zeros(), "{p} zeros");
                let (gi, _) = words(&ckpt, &format!("{p}.g_idx"));
                assert!(gi.iter().zip(q.g_idx()).all(|(a, b)| *a == *b), "{p} g_idx");
            }
            Format::Awq => {
                let codes_kn = awq_unpack(&ckpt, &format!("{p}.qweight"), n); // [k, n]
                for r in 0..n {
                    for c in 0..k {
                        assert_eq!(
                            codes_kn[c * n + r],
                            q.codes()[r * k + c],
                            "{p} code [{r}, {c}]"
                        );
                    }
                }
                assert_eq!(
                    awq_unpack(&ckpt, &format!("{p}.qzeros"), n),
                    q.zeros(),
                    "{p} zeros"
                );
            }
            Format::CompressedTensors => {
                // Stored values are the signed codes offset by 2^(b-1): our unsigned codes.
                assert_eq!(ct_codes(&ckpt, &p, bits, k), q.codes(), "{p} codes");
                let (shape, _) = words(&ckpt, &format!("{p}.weight_shape"));
                assert_eq!(shape, vec![n as u32, k as u32]);
                if !q.sym() {
                    // [ceil(n/p), g] packed along n.
                    let (w, s) = words(&ckpt, &format!("{p}.weight_zero_point"));
                    let per = 32 / bits;
                    for gi in 0..g {
                        for r in 0..n {
                            let z = (w[(r / per) * s[1] + gi] >> (bits * (r % per)))
                                & ((1 << bits) - 1);
                            assert_eq!(z as u8, q.zeros()[gi * n + r], "{p} zero");
                        }
                    }
                }
            }
            Format::Native => {
                assert_eq!(native_codes(&ckpt, &p, bits, k), q.codes(), "{p} codes");
                if !q.sym() {
                    assert_eq!(raw(&ckpt, &format!("{p}.qzeros")).0, q.zeros(), "{p} zeros");
                }
            }
            other => panic!("no integer check for {other:?}"),
        }
    }
}

fn formats_for(q: &QuantizedLinear) -> Vec<Format> {
    let mut f = vec![Format::Native, Format::Gptq, Format::CompressedTensors];
    if q.bits().get() == 4 && q.perm().is_none() && q.group_size().is_some() {
        f.push(Format::Awq);
    }
    f
}

fn round_trip(method: &dyn Quantizer, calib: Option<&CalibrationSet>, tag: &str) {
    let src = model_dir("qwen3-micro");
    let ckpt = Checkpoint::open(&src).unwrap();
    let valid = docs("valid");
    let (model, run) =
        quantize_checkpoint(&ckpt, calib, method, &DriverOptions::default()).unwrap();
    let fake = ppl(&model, &valid, WINDOWS, SEQ);
    let tmp = tempfile::tempdir().unwrap();
    let first = affine(&run.quantized[0].1).clone();
    for format in formats_for(&first) {
        let out = tmp.path().join(format!("{tag}-{}", format.as_str()));
        let report = write_checkpoint(
            &out,
            &src,
            &model,
            &run.quantized,
            &WriteOptions::new(format),
        )
        .unwrap();
        assert!(!report.serving.is_empty());
        check_integers(&out, format, &run.quantized);
        let loaded = load_model(&out, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.packed_linears, run.quantized.len());
        assert!(loaded
            .model
            .layers
            .iter()
            .all(|l| matches!(l.attn.q_proj, LinearWeight::Packed(_))));
        let p = ppl(&loaded.model, &valid, WINDOWS, SEQ);
        let rel = p / fake - 1.0;
        eprintln!(
            "{tag} {}: fake-quant {fake:.4}, loaded {p:.4} ({:+.4}%)",
            format.as_str(),
            100.0 * rel
        );
        assert!(rel.abs() < 1e-3, "{tag} {}: {p} vs {fake}", format.as_str());
    }
    // AWQ cannot hold act-order or widths other than 4: a typed error, and nothing written.
    if !formats_for(&first).contains(&Format::Awq) {
        let out = tmp.path().join(format!("{tag}-awq"));
        let e = write_checkpoint(
            &out,
            &src,
            &model,
            &run.quantized,
            &WriteOptions::new(Format::Awq),
        );
        assert!(
            matches!(e, Err(FormatError::UnsupportedByFormat { .. })),
            "{e:?}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn rtn_every_width_round_trips_through_every_format() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    for bits in [8u8, 4, 3, 2] {
        // Asymmetric with the AWQ range convention (the reference RTN), and 4-bit symmetric.
        let scheme = QuantScheme::new(
            Bits::new(bits).unwrap(),
            GroupSize::group(128).unwrap(),
            false,
            RangeConvention::Awq,
        )
        .unwrap();
        round_trip(
            &Rtn::new(RtnConfig::new(scheme)).unwrap(),
            None,
            &format!("rtn-w{bits}"),
        );
    }
    let sym =
        QuantScheme::new(Bits::B4, GroupSize::PerChannel, true, RangeConvention::Gptq).unwrap();
    round_trip(
        &Rtn::new(RtnConfig::new(sym)).unwrap(),
        None,
        "rtn-w4-sym-per-channel",
    );
}

fn small_calib() -> CalibrationSet {
    first_windows(&docs("calib"), 8, 256).unwrap()
}

#[test]
fn gptq_every_width_round_trips_through_every_format() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let calib = small_calib();
    for bits in [8u8, 4, 3, 2] {
        let cfg = GptqConfig::default()
            .with_bits(Bits::new(bits).unwrap())
            .with_group_size(Some(128))
            .with_sym(false)
            .with_act_order(true);
        round_trip(
            &Gptq::new(cfg).unwrap(),
            Some(&calib),
            &format!("gptq-w{bits}"),
        );
    }
}

/// MoE, sharded output: GPTQ w4 (symmetric, act-order) of qwen3-moe-micro in shards of at most
/// 2 MB, loaded back packed.
#[test]
fn moe_sharded_gptq_and_native_round_trip() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    let src = model_dir("qwen3-moe-micro");
    let ckpt = Checkpoint::open(&src).unwrap();
    let calib = first_windows(&docs("calib"), 4, 256).unwrap();
    let cfg = GptqConfig::default()
        .with_bits(Bits::B4)
        .with_group_size(Some(128))
        .with_sym(true);
    let (model, run) = quantize_checkpoint(
        &ckpt,
        Some(&calib),
        &Gptq::new(cfg).unwrap(),
        &DriverOptions::default(),
    )
    .unwrap();
    let valid = docs("valid");
    let fake = ppl(&model, &valid, WINDOWS, SEQ);
    let tmp = tempfile::tempdir().unwrap();
    for format in [Format::Gptq, Format::Native] {
        let out = tmp.path().join(format.as_str());
        let opts = WriteOptions::new(format).with_max_shard_bytes(2_000_000);
        let report = write_checkpoint(&out, &src, &model, &run.quantized, &opts).unwrap();
        assert!(
            report
                .files
                .iter()
                .filter(|f| f.ends_with(".safetensors"))
                .count()
                > 2,
            "{:?}",
            report.files
        );
        assert!(out.join("model.safetensors.index.json").is_file());
        check_integers(&out, format, &run.quantized);
        let loaded = load_model(&out, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.packed_linears, run.quantized.len());
        let p = ppl(&loaded.model, &valid, WINDOWS, SEQ);
        assert!(
            (p / fake - 1.0).abs() < 1e-3,
            "{}: {p} vs {fake}",
            format.as_str()
        );
        if format == Format::Gptq {
            let qc: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("quantize_config.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(qc["dynamic"]["-:.*\\.mlp\\.gate$"], serde_json::json!({}));
            assert_eq!(qc["sym"], true);
            // The router stays in full precision, in the model dtype.
            let c = Checkpoint::open(&out).unwrap();
            assert_eq!(
                c.tensor("model.layers.0.mlp.gate.weight").unwrap().dtype,
                qwen3_quant_io::Dtype::BF16
            );
        }
    }
}

/// Unquantized linears and the model returned by the method (not the source) are what is written.
#[test]
fn skipped_linears_stay_dense_and_are_declared() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let src = model_dir("qwen3-micro");
    let ckpt = Checkpoint::open(&src).unwrap();
    let scheme = QuantScheme::new(
        Bits::B4,
        GroupSize::group(128).unwrap(),
        true,
        RangeConvention::Gptq,
    )
    .unwrap();
    let (mut model, mut run) = quantize_checkpoint(
        &ckpt,
        None,
        &Rtn::new(RtnConfig::new(scheme)).unwrap(),
        &DriverOptions::default(),
    )
    .unwrap();
    // Keep layer 0's q_proj in full precision, and change a norm as AWQ folding would.
    let i = run
        .quantized
        .iter()
        .position(|(id, _)| *id == LinearId::new(0, qwen3_quant_core::LinearKind::Q))
        .unwrap();
    let (id, _) = run.quantized.remove(i);
    let dense = Qwen3Model::load_layer(&ckpt, &model.config, id.layer).unwrap();
    let w = dense.linear(id.kind, id.expert).unwrap().clone();
    model.layers[id.layer].replace_linear(&id, w).unwrap();
    model.layers[1].input_layernorm[3] = 2.5;
    let tmp = tempfile::tempdir().unwrap();
    for format in [Format::Gptq, Format::CompressedTensors, Format::Native] {
        let out = tmp.path().join(format.as_str());
        write_checkpoint(
            &out,
            &src,
            &model,
            &run.quantized,
            &WriteOptions::new(format),
        )
        .unwrap();
        let c = Checkpoint::open(&out).unwrap();
        assert!(c.contains(&format!("model.{id}.weight")));
        assert_eq!(
            c.load_f32("model.layers.1.input_layernorm.weight", &[512])
                .unwrap()[3],
            2.5
        );
        let loaded = load_model(&out, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.packed_linears, run.quantized.len());
        assert!(matches!(
            loaded.model.layers[0].attn.q_proj,
            LinearWeight::Dense { .. }
        ));
    }
    let qc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("gptq/quantize_config.json")).unwrap(),
    )
    .unwrap();
    assert!(
        qc["dynamic"]["-:^model\\.layers\\.0\\.self_attn\\.q_proj$"].is_object(),
        "{qc}"
    );
}

/// W8A8 (compressed-tensors `int-quantized`): int8 weights stored signed, loaded onto the
/// integer path (per-token int8 activations), close to the weight-only fake-quant model.
#[test]
fn w8a8_int8_checkpoint_runs_on_the_integer_path() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let src = model_dir("qwen3-micro");
    let ckpt = Checkpoint::open(&src).unwrap();
    let scheme =
        QuantScheme::new(Bits::B8, GroupSize::PerChannel, true, RangeConvention::Gptq).unwrap();
    let (model, run) = quantize_checkpoint(
        &ckpt,
        None,
        &Rtn::new(RtnConfig::new(scheme)).unwrap(),
        &DriverOptions::default(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("w8a8");
    let mut opts = WriteOptions::new(Format::CompressedTensors);
    opts.meta.act_bits = Some(8);
    write_checkpoint(&out, &src, &model, &run.quantized, &opts).unwrap();
    let c = Checkpoint::open(&out).unwrap();
    let p = format!("model.{}", run.quantized[0].0);
    let (bytes, shape) = raw(&c, &format!("{p}.weight"));
    let q = affine(&run.quantized[0].1);
    assert_eq!(shape, vec![q.out_features(), q.in_features()]);
    // Signed int8 = code − 128.
    assert!(bytes
        .iter()
        .zip(q.codes())
        .all(|(&b, &code)| i16::from(b as i8) == i16::from(code) - 128));
    let loaded = load_model(&out, &LoadOptions::default()).unwrap();
    assert!(matches!(
        loaded.model.layers[0].attn.q_proj,
        LinearWeight::Int8 { .. }
    ));
    let valid = docs("valid");
    let (w8a8, fake) = (
        ppl(&loaded.model, &valid, WINDOWS, SEQ),
        ppl(&model, &valid, WINDOWS, SEQ),
    );
    eprintln!("w8a8 int8 path {w8a8:.4}, weight-only fake-quant {fake:.4}");
    assert!((w8a8 / fake - 1.0).abs() < 0.02, "{w8a8} vs {fake}");
    // 4-bit weights cannot be written as W8A8.
    let s4 =
        QuantScheme::new(Bits::B4, GroupSize::PerChannel, true, RangeConvention::Gptq).unwrap();
    let (m4, r4) = quantize_checkpoint(
        &ckpt,
        None,
        &Rtn::new(RtnConfig::new(s4)).unwrap(),
        &DriverOptions::default(),
    )
    .unwrap();
    let e = write_checkpoint(&tmp.path().join("w4a8"), &src, &m4, &r4.quantized, &opts);
    assert!(
        matches!(e, Err(FormatError::UnsupportedByFormat { .. })),
        "{e:?}"
    );
}
