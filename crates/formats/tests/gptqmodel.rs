//! Checkpoints written by another tool (GPTQModel 7.7.0, bundled in `assets/models`): loaded
//! packed, they give the perplexities their protocol states, and the packed model equals a dense
//! model built by the independent GPTQ v1 decoder of `common`.

mod common;

use common::*;
use qwen3_quant_formats::{inspect, load_model, LoadOptions};
use qwen3_quant_io::Checkpoint;
use qwen3_quant_model::{FeedForward, LinearWeight};

/// Dense weight `[n, k]` of a GPTQ v1 linear by the rules of formats.md §2.1:
/// `W[n, k] = scales[g_idx[k], n] · (q[k, n] − (qzeros[g_idx[k], n] + 1))`.
fn v1_dense(ckpt: &Checkpoint, prefix: &str) -> Vec<f32> {
    let (codes, n, k) = gptq_codes(ckpt, prefix, 4);
    let zeros = gptq_stored_zeros(ckpt, prefix, 4);
    let scales = ckpt
        .tensor(&format!("{prefix}.scales"))
        .unwrap()
        .to_f32()
        .unwrap();
    let (g_idx, _) = words(ckpt, &format!("{prefix}.g_idx"));
    let mut w = vec![0f32; n * k];
    for r in 0..n {
        for c in 0..k {
            let g = g_idx[c] as usize;
            let z = f32::from(zeros[g * n + r]) + 1.0;
            w[r * k + c] = scales[g * n + r] * (f32::from(codes[r * k + c]) - z);
        }
    }
    w
}

#[test]
fn dense_act_order_checkpoint_matches_the_independent_decoder() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro-gptq-w4g128-actorder") else {
        return;
    };
    let dir = model_dir("qwen3-micro-gptq-w4g128-actorder");
    let loaded = load_model(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.packed_linears, 56);
    let ckpt = Checkpoint::open(&dir).unwrap();
    let mut dense = loaded.model.clone();
    for layer in &mut dense.layers {
        for id in layer.linear_ids() {
            let (o, i) = {
                let l = layer.linear(id.kind, id.expert).unwrap();
                assert!(matches!(l, LinearWeight::Packed(_)), "{id} is not packed");
                (l.out_features(), l.in_features())
            };
            let w = v1_dense(&ckpt, &format!("model.{id}"));
            layer
                .replace_linear(&id, LinearWeight::dense(o, i, w).unwrap())
                .unwrap();
        }
    }
    // Act-order really is arbitrary here: g_idx is not k / 128.
    let (g, _) = words(&ckpt, "model.layers.0.self_attn.q_proj.g_idx");
    assert!(g.iter().enumerate().any(|(k, &v)| v as usize != k / 128));
    let valid = docs("valid");
    let (p, d) = (
        ppl(&loaded.model, &valid, 3, 1024),
        ppl(&dense, &valid, 3, 1024),
    );
    eprintln!("packed {p:.5}, independent dense {d:.5}");
    assert!((p / d - 1.0).abs() < 2e-4, "{p} vs {d}");
    let i = inspect(&dir).unwrap();
    assert_eq!(
        (i.format.as_str(), i.bits, i.group_size, i.sym, i.act_order),
        ("gptq", Some(4), Some(128), Some(false), Some(true))
    );
    assert_eq!(i.quantizer.as_deref(), Some("gptqmodel:7.7.0"));
    // 4 bits + (16 + 4)/128 per group + 32 bits of g_idx per column (32/out per weight).
    assert!(
        i.bits_per_weight > 4.17 && i.bits_per_weight < 4.23,
        "{}",
        i.bits_per_weight
    );
}

/// GPTQModel's own CPU inference of its MoE checkpoint gives docs_32 = 25.027.
#[test]
fn moe_checkpoint_reaches_its_tool_perplexity() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-moe-micro-gptq-w4g128") else {
        return;
    };
    let dir = model_dir("qwen3-moe-micro-gptq-w4g128");
    let loaded = load_model(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.packed_linears, 4 * (4 + 8 * 3));
    let FeedForward::Moe(m) = &loaded.model.layers[0].ffn else {
        panic!("MoE expected")
    };
    assert!(matches!(m.router, LinearWeight::Dense { .. }));
    assert!(matches!(m.experts[3].down, LinearWeight::Packed(_)));
    let p = ppl(&loaded.model, &docs("valid"), 32, 1024);
    eprintln!("qwen3-moe-micro-gptq-w4g128 docs_32 {p:.4} (GPTQModel: 25.027)");
    assert!((p / 25.027 - 1.0).abs() < 1e-3, "{p}");
}

/// The full protocol of the dense checkpoint: all 248 windows of 1024 tokens (about three
/// minutes on 2 cores). Full tier (`scripts/test-full.sh`): CI checks the same loader against
/// the independent decoder above, on 3 windows.
#[test]
#[ignore = "full tier (about 3.5 min on 2 cores): run scripts/test-full.sh"]
fn dense_checkpoint_reaches_its_reference_perplexity_on_all_windows() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro-gptq-w4g128-actorder") else {
        return;
    };
    let loaded = load_model(
        &model_dir("qwen3-micro-gptq-w4g128-actorder"),
        &LoadOptions::default(),
    )
    .unwrap();
    let valid = docs("valid");
    let p = ppl(&loaded.model, &valid, usize::MAX, 1024);
    eprintln!("docs, all windows: {p:.4} (reference 14.7521)");
    assert!((p / 14.7521 - 1.0).abs() < 2e-4, "{p}");
}
