//! Shared helpers of the end-to-end tests: the bundled model and data, perplexity with the
//! protocol of `assets/golden/reference_ppl.json`.

#![allow(dead_code)]

use qwen3_quant::eval::{self, data::read_token_tensor, PplOptions, Progress};
use qwen3_quant::model::{Qwen3Model, Tokenizer};

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
pub const ASSETS: qwen3_quant::io::assets::Folder = qwen3_quant::io::assets::Folder;

pub fn micro() -> Qwen3Model {
    Qwen3Model::load(format!("{ASSETS}/models/qwen3-micro")).unwrap()
}

pub fn docs(split: &str) -> Vec<u32> {
    read_token_tensor(
        format!("{ASSETS}/data/docs/docs.tokens.safetensors").as_ref(),
        split,
    )
    .unwrap()
}

pub fn wiki2_ids() -> Vec<u32> {
    let tok = Tokenizer::from_dir(format!("{ASSETS}/models/qwen3-micro")).unwrap();
    let loaded = eval::load_dataset(
        &eval::Dataset::WikiText2,
        format!("{ASSETS}/data").as_ref(),
        Some(&tok),
    )
    .unwrap();
    loaded.ids
}

/// Perplexity over the first `windows` windows of 1024 tokens.
pub fn ppl(model: &Qwen3Model, ids: &[u32], windows: usize) -> f64 {
    let opts = PplOptions::default()
        .with_seq_len(1024)
        .with_max_windows(Some(windows))
        .with_batch_size(4)
        .with_stride(None);
    eval::evaluate_ppl(model, ids, &opts, Progress::Hidden)
        .unwrap()
        .ppl
}

pub fn reference(key: &str, metric: &str) -> f64 {
    let text = std::fs::read_to_string(format!("{ASSETS}/golden/reference_ppl.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["ppl"][key][metric].as_f64().unwrap()
}

/// Relative difference `a / b − 1`.
pub fn rel(a: f64, b: f64) -> f64 {
    a / b - 1.0
}
