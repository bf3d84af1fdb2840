//! Token ids identical to the Hugging Face `tokenizers` library for both tokenizers
//! (`assets/golden/tokenizer_ids.json`), including the whole WikiText-2 test split.

use qwen3_quant_model::Tokenizer;
use sha2::{Digest, Sha256};

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

fn golden() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(format!("{ASSETS}/golden/tokenizer_ids.json")).unwrap(),
    )
    .unwrap()
}

fn check_samples(tok: &Tokenizer, cases: &serde_json::Value) {
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text).unwrap(), want, "text {text:?}");
    }
}

#[test]
fn real_qwen3_tokenizer_sample_texts() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-tokenizer") else {
        return;
    };
    let tok = Tokenizer::from_dir(format!("{ASSETS}/models/qwen3-tokenizer")).unwrap();
    check_samples(&tok, &golden()["qwen3-tokenizer"]);
}

#[test]
fn micro_tokenizer_sample_texts() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let tok = Tokenizer::from_dir(format!("{ASSETS}/models/qwen3-micro")).unwrap();
    check_samples(&tok, &golden()["qwen3-micro"]);
}

fn wikitext_gptq_form() -> String {
    let text = std::fs::read_to_string(format!(
        "{ASSETS}/data/wikitext2/wikitext-2-raw-v1.test.jsonl"
    ))
    .unwrap();
    let rows: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    rows.join("\n\n")
}

fn check_split(ids: &[u32], want: &serde_json::Value) {
    assert_eq!(ids.len() as u64, want["n_tokens"].as_u64().unwrap());
    let first: Vec<u32> = want["first_32"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(&ids[..32], &first[..]);
    let mut h = Sha256::new();
    for id in ids {
        h.update((*id as i32).to_le_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, want["sha256_of_int32_le"].as_str().unwrap());
}

#[test]
fn wikitext2_test_split_both_forms() {
    let Some(_) = qwen3_quant_io::assets::require("data/wikitext2") else {
        return;
    };
    let tok = Tokenizer::from_dir(format!("{ASSETS}/models/qwen3-micro")).unwrap();
    let g = golden();
    check_split(
        &tok.encode(&wikitext_gptq_form()).unwrap(),
        &g["wikitext2_test_micro"]["gptq_form"],
    );
    let raw = std::fs::read_to_string(format!("{ASSETS}/data/wikitext2/wiki.test.raw")).unwrap();
    check_split(
        &tok.encode(&raw).unwrap(),
        &g["wikitext2_test_micro"]["raw_file"],
    );
}
