//! The `qwen3-quant` binary on the LLaMA-3-shaped checkpoint: `inspect` names the architecture
//! and its RoPE scaling, and a small `sweep` runs on it as on Qwen3.

use std::process::Command;

use serde_json::Value;

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

fn qwen3_quant(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qwen3-quant"))
        .args(args)
        .env("QWEN3_QUANT_QUIET", "1")
        .env("QWEN3_QUANT_DATA", format!("{ASSETS}/data"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn json(args: &[&str]) -> Value {
    let (ok, stdout, stderr) = qwen3_quant(args);
    assert!(ok, "{args:?}: {stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

#[test]
fn inspect_names_the_llama_architecture() {
    let Some(_) = qwen3_quant_io::assets::require("models/llama3-micro") else {
        return;
    };
    let dir = format!("{ASSETS}/models/llama3-micro");
    let v = json(&["inspect", &dir, "--json"]);
    assert_eq!(v["architecture"], "llama", "{v}");
    assert_eq!(v["class"], "LlamaForCausalLM");
    assert_eq!(v["qk_norm"], false);
    assert_eq!(v["attention_bias"], false);
    assert_eq!(v["head_dim"], 32, "derived from hidden / heads");
    assert_eq!(v["rope_theta"], 500000.0);
    assert_eq!(v["rope_scaling"]["rope_type"], "llama3");
    assert_eq!(v["rope_scaling"]["factor"], 8.0);
    assert_eq!(v["rope_scaling"]["original_max_position_embeddings"], 64);
    assert_eq!(v["tie_word_embeddings"], false);
    assert_eq!(v["quantized"]["quantized_linears"], 0);

    let (ok, text, err) = qwen3_quant(&["inspect", &dir]);
    assert!(ok, "{err}");
    assert!(text.contains("(llama, LlamaForCausalLM)"), "{text}");
    assert!(text.contains("llama3 scaling x8"), "{text}");

    // Qwen3 is still named as such, with its q/k norm and no scaling.
    let q = json(&["inspect", &format!("{ASSETS}/models/qwen3-micro"), "--json"]);
    assert_eq!(q["architecture"], "qwen3");
    assert_eq!(q["class"], "Qwen3ForCausalLM");
    assert_eq!(q["qk_norm"], true);
    assert!(q["rope_scaling"].is_null());

    let b = json(&[
        "inspect",
        &format!("{ASSETS}/models/llama3-bias-micro"),
        "--json",
    ]);
    assert_eq!(
        (&b["architecture"], &b["attention_bias"]),
        (&"llama".into(), &true.into())
    );
}

#[test]
fn sweep_and_quantize_run_on_llama3() {
    let Some(_) = qwen3_quant_io::assets::require("models/llama3-micro") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = format!("{ASSETS}/models/llama3-micro");
    let out = tmp.path().join("sweep");
    let v = json(&[
        "sweep",
        "--model",
        &model,
        "--methods",
        "rtn",
        "--bits",
        "8,3",
        "--groups",
        "128",
        "--dataset",
        "docs",
        "--seq-len",
        "128",
        "--windows",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        v["ran"],
        serde_json::json!(["fp", "rtn_w8_g128", "rtn_w3_g128"])
    );
    for cell in v["cells"].as_array().unwrap() {
        let p = cell["report"]["ppl"]["docs"]["ppl"].as_f64().unwrap();
        assert!(p.is_finite() && p > 1.0, "{cell}");
    }
    assert!(out.join("results.md").exists());

    let q = json(&[
        "quantize",
        "--model",
        &model,
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group-size",
        "128",
        "--calib",
        "docs",
        "--samples",
        "4",
        "--seq-len",
        "256",
        "--eval",
        "docs:2",
        "--json",
    ]);
    let s = q.to_string();
    assert!(s.contains("\"docs\""), "{s}");
}
