//! `qwen3-quant eval --compute bf16`: the bf16 arithmetic moves the perplexity, but by far less
//! than 0.1% (the gate of the fast mode), and an unknown mode is a usage error.

use std::process::Command;

use serde_json::Value;

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

fn docs_ppl(compute: &str) -> f64 {
    let out = Command::new(env!("CARGO_BIN_EXE_qwen3-quant"))
        .args([
            "eval",
            "--model",
            &format!("{ASSETS}/models/qwen3-micro"),
            "--dataset",
            "docs",
        ])
        .args([
            "--windows",
            "4",
            "--seq-len",
            "1024",
            "--json",
            "--compute",
            compute,
        ])
        .env("QWEN3_QUANT_QUIET", "1")
        .env("QWEN3_QUANT_DATA", format!("{ASSETS}/data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    v["ppl"]["docs"]["ppl"]
        .as_f64()
        .unwrap_or_else(|| panic!("no docs ppl in {v}"))
}

#[test]
fn bf16_compute_stays_within_a_tenth_of_a_percent() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let (f32_ppl, bf16_ppl) = (docs_ppl("f32"), docs_ppl("bf16"));
    let rel = (bf16_ppl / f32_ppl - 1.0).abs();
    assert!(rel < 1e-3, "f32 {f32_ppl} vs bf16 {bf16_ppl}");
    assert!(
        rel > 0.0,
        "bf16 gave exactly the f32 perplexity {f32_ppl}: not in effect?"
    );
}

#[test]
fn unknown_compute_mode_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_qwen3-quant"))
        .args([
            "eval",
            "--model",
            &format!("{ASSETS}/models/qwen3-micro"),
            "--compute",
            "fp8",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fp8"));
}
