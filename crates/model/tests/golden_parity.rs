//! Parity with the Hugging Face reference: logits and every hidden state of both bundled models
//! within 1e-3 (goldens computed by transformers in f32 from the bf16 weights).

use qwen3_quant_io::SafetensorsFile;
use qwen3_quant_model::Qwen3Model;

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets");

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check(model_dir: &str, golden: &str) {
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
        eprintln!("{model_dir} hidden_states.{i}: max |Δ| = {d:.3e}");
        assert!(d <= 1e-3, "{model_dir} hidden_states.{i}: max |Δ| = {d}");
    }
    let logits = model.forward(&ids, batch, seq).unwrap();
    let want = g.tensor("logits").unwrap().to_f32().unwrap();
    let d = max_abs_diff(&logits, &want);
    eprintln!("{model_dir} logits: max |Δ| = {d:.3e}");
    assert!(d <= 1e-3, "{model_dir} logits: max |Δ| = {d}");
}

#[test]
fn qwen3_micro_matches_transformers() {
    check("qwen3-micro", "qwen3-micro.logits.safetensors");
}

#[test]
fn qwen3_moe_micro_matches_transformers() {
    check("qwen3-moe-micro", "qwen3-moe-micro.logits.safetensors");
}

#[test]
fn batched_and_single_sequence_forward_agree() {
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
