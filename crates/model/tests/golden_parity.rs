//! Parity with the Hugging Face reference: logits and every hidden state of the bundled models
//! within 1e-3 (goldens computed by transformers in f32 from the bf16 weights): the two Qwen3
//! models, and the random LLaMA-3-shaped ones of `scripts/make_llama3_golden.py` (also within
//! 1e-3 relative to the largest reference value, since their random activations are small).

use qwen3_quant_io::SafetensorsFile;
use qwen3_quant_model::Qwen3Model;

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `max |a − b| / max |b|`.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    max_abs_diff(a, b) / b.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

fn check(model_dir: &str, golden: &str) {
    check_with(model_dir, golden, false);
}

fn check_with(model_dir: &str, golden: &str, relative: bool) {
    let model = Qwen3Model::load(format!("{ASSETS}/models/{model_dir}")).unwrap();
    let g = SafetensorsFile::open(format!("{ASSETS}/golden/{golden}")).unwrap();
    let ids_t = g.tensor("input_ids").unwrap();
    let (batch, seq) = (ids_t.shape[0], ids_t.shape[1]);
    let ids: Vec<u32> = ids_t
        .to_i64()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let states = model.hidden_states(&ids, batch, seq).unwrap();
    assert_eq!(states.len(), model.config.num_hidden_layers + 1);
    for (i, s) in states.iter().enumerate() {
        let want = g
            .tensor(&format!("hidden_states.{i}"))
            .unwrap()
            .to_f32()
            .unwrap();
        let d = max_abs_diff(s, &want);
        let r = max_rel_diff(s, &want);
        eprintln!("{model_dir} hidden_states.{i}: max |Δ| = {d:.3e}, relative {r:.3e}");
        assert!(d <= 1e-3, "{model_dir} hidden_states.{i}: max |Δ| = {d}");
        assert!(
            !relative || r <= 1e-3,
            "{model_dir} hidden_states.{i}: relative {r}"
        );
    }
    let logits = model.forward(&ids, batch, seq).unwrap();
    let want = g.tensor("logits").unwrap().to_f32().unwrap();
    let d = max_abs_diff(&logits, &want);
    let r = max_rel_diff(&logits, &want);
    eprintln!("{model_dir} logits: max |Δ| = {d:.3e}, relative {r:.3e}");
    assert!(d <= 1e-3, "{model_dir} logits: max |Δ| = {d}");
    assert!(!relative || r <= 1e-3, "{model_dir} logits: relative {r}");
}

#[test]
fn llama3_micro_matches_transformers() {
    // GQA, no q/k norm, "llama3" RoPE scaling (original length 64: the 64-token goldens cross
    // all three frequency bands), head_dim derived, untied lm_head.
    check_with("llama3-micro", "llama3-micro.logits.safetensors", true);
}

#[test]
fn llama3_with_attention_bias_matches_transformers() {
    // q/k/v/o biases, tied embeddings, the transformers 5 `rope_parameters` spelling.
    check_with(
        "llama3-bias-micro",
        "llama3-bias-micro.logits.safetensors",
        true,
    );
}

#[test]
fn llama3_incremental_decoding_matches_the_full_forward() {
    for dir in ["llama3-micro", "llama3-bias-micro"] {
        let model = Qwen3Model::load(format!("{ASSETS}/models/{dir}")).unwrap();
        let ids: Vec<u32> = (0..80).map(|i| (i * 53 % 8000) as u32).collect();
        let full = model.forward(&ids, 1, ids.len()).unwrap();
        let v = model.config.vocab_size;
        let mut cache = model.new_cache();
        let mut last = model.forward_step(&ids[..50], &mut cache).unwrap();
        assert!(max_rel_diff(&last, &full[49 * v..50 * v]) < 1e-4, "{dir}");
        for (t, &id) in ids.iter().enumerate().skip(50) {
            last = model.forward_step(&[id], &mut cache).unwrap();
            let want = &full[t * v..(t + 1) * v];
            assert!(max_rel_diff(&last, want) < 1e-4, "{dir} position {t}");
        }
    }
}

#[test]
fn qwen3_micro_matches_transformers() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    check("qwen3-micro", "qwen3-micro.logits.safetensors");
}

#[test]
fn qwen3_moe_micro_matches_transformers() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    check("qwen3-moe-micro", "qwen3-moe-micro.logits.safetensors");
}

#[test]
fn batched_and_single_sequence_forward_agree() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let model = Qwen3Model::load(format!("{ASSETS}/models/qwen3-micro")).unwrap();
    let ids: Vec<u32> = (0..96).map(|i| (i * 37 % 8000) as u32).collect();
    let both = model.forward(&ids, 2, 48).unwrap();
    let first = model.forward(&ids[..48], 1, 48).unwrap();
    let v = model.config.vocab_size;
    assert!(max_abs_diff(&both[..48 * v], &first) < 1e-4);
    // Causality: a prefix's logits do not depend on later tokens.
    let prefix = model.forward(&ids[..20], 1, 20).unwrap();
    assert!(max_abs_diff(&first[..20 * v], &prefix) < 1e-4);
}

#[test]
fn bad_inputs_are_errors() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let model = Qwen3Model::load(format!("{ASSETS}/models/qwen3-micro")).unwrap();
    assert!(model.forward(&[1, 2, 3], 2, 2).is_err());
    assert!(model.forward(&[1, 99_999], 1, 2).is_err());
    let mut h = vec![0.0f32; 10];
    let rope = model.rope(4);
    assert!(model
        .forward_layer(0, &mut h, 1, 4, &rope, &mut qwen3_quant_model::NoObserver)
        .is_err());
    assert!(model
        .forward_layer(99, &mut h, 1, 4, &rope, &mut qwen3_quant_model::NoObserver)
        .is_err());
}
