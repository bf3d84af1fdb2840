//! The `qwen3-quant quantize` binary for AWQ, SmoothQuant and BiLLM: JSON fields
//! of the contract, the per-linear log with the chosen ratio/clip/loss, and typed errors.

use std::process::Command;

use serde_json::Value;

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

fn run(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qwen3-quant"))
        .args(args)
        .env("QWEN3_QUANT_QUIET", "1")
        .env("QWEN3_QUANT_DATA", format!("{ASSETS}/data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}\n{stderr}"));
    (out.status.success(), v, stderr)
}

fn quantize(extra: &[&str]) -> (bool, Value, String) {
    quantize_on("qwen3-micro", extra)
}

/// `quantize` of a bundled model on 2 × 256 calibration tokens, evaluated on 2 docs windows.
fn quantize_on(model: &str, extra: &[&str]) -> (bool, Value, String) {
    let model = format!("{ASSETS}/models/{model}");
    let mut args = vec![
        "quantize",
        "--model",
        model.as_str(),
        "--calib",
        "docs",
        "--samples",
        "2",
        "--seq-len",
        "256",
        "--eval",
        "docs:2",
        "--json",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn awq_reports_ratios_clips_and_losses() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let (ok, v, err) = quantize(&["--method", "awq", "--bits", "4", "--group-size", "128"]);
    assert!(ok, "{v} {err}");
    assert_eq!(v["method"], "awq");
    assert_eq!(v["pipeline"], "awq+rtn");
    assert_eq!(v["bits"], 4);
    assert_eq!(v["group_size"], 128);
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_mb"].as_f64().unwrap() > 0.0);
    assert!(v["projection"]["search_flops"].as_f64().unwrap() > 0.0);
    let ppl = v["eval"]["docs"]["ppl"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0);
    let transforms = v["transforms"].as_array().unwrap();
    assert_eq!(transforms.len(), 8 * (3 + 5));
    for t in transforms {
        assert!(t["loss"].as_f64().unwrap().is_finite());
        match t["kind"].as_str().unwrap() {
            "scale" => assert!(t["ratio"].as_f64().is_some()),
            "clip" => assert!(t["clip"].as_f64().unwrap() > 0.0),
            k => panic!("unexpected kind {k}"),
        }
    }
    let linears = v["linears"].as_array().unwrap();
    assert_eq!(linears.len(), 56);
    let q = linears
        .iter()
        .find(|l| l["layer"] == 0 && l["module"] == "self_attn.q_proj")
        .unwrap();
    assert!(q["scale_ratio"].as_f64().is_some() && q["scale_loss"].as_f64().is_some());
    assert!(q.get("clip").is_none(), "q is not clipped");
    let down = linears
        .iter()
        .find(|l| l["layer"] == 0 && l["module"] == "mlp.down_proj")
        .unwrap();
    assert!(down["clip"].as_f64().is_some() && down["scale_ratio"].as_f64().is_some());
}

#[test]
fn smoothquant_weight_activation_settings() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let (ok, v, err) = quantize(&[
        "--method",
        "smoothquant",
        "--bits",
        "8",
        "--act-bits",
        "8",
        "--alpha",
        "0.5",
    ]);
    assert!(ok, "{v} {err}");
    assert_eq!(v["method"], "smoothquant");
    assert_eq!(v["act_bits"], 8);
    assert_eq!(v["pipeline"], "smoothquant+rtn");
    let transforms = v["transforms"].as_array().unwrap();
    assert_eq!(transforms.len(), 8 * 2);
    assert!(transforms
        .iter()
        .all(|t| t["kind"] == "smooth" && t["ratio"] == 0.5));
    assert!(v["eval"]["docs"]["ppl"].as_f64().unwrap().is_finite());
    // --no-smooth: the study's unsmoothed W/A RTN, no calibration pass at all.
    let (ok, v, err) = quantize(&[
        "--method",
        "smoothquant",
        "--bits",
        "8",
        "--act-bits",
        "8",
        "--no-smooth",
    ]);
    assert!(ok, "{v} {err}");
    assert_eq!(v["pipeline"], "rtn");
    assert!(v["transforms"].as_array().unwrap().is_empty());
}

#[test]
fn bad_settings_are_json_errors() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    for extra in [
        &["--method", "awq", "--bits", "9"][..],
        &["--method", "smoothquant", "--bits", "8", "--alpha", "1.5"][..],
        &["--method", "awq", "--awq-grid", "0"][..],
        &["--method", "billm", "--blocksize", "100"][..],
        &["--method", "billm", "--billm-fix", "everything"][..],
        &["--method", "rtn", "--gptaq", "0.25"][..],
        &["--method", "gptq", "--gptaq", "1.5"][..],
        &["--method", "awq", "--refine", "3"][..],
        &["--method", "gptq", "--refine", "101"][..],
        &["--method", "gptq", "--refit-scales", "2"][..],
        &["--method", "rtn", "--foem", "0.2"][..],
        &["--method", "gptq", "--foem", "1"][..],
        &["--method", "gptq", "--norm-refit", "-1"][..],
        &["--method", "rtn", "--norm-refit"][..],
        &["--method", "gptq", "--router-refit"][..],
        &["--method", "gptq", "--gptaq", "1", "--router-refit", "0"][..],
        &[
            "--method",
            "gptq",
            "--gptaq",
            "1",
            "--router-refit",
            "--no-true-sequential",
        ][..],
    ] {
        let (ok, v, _) = quantize(extra);
        assert!(!ok, "{extra:?} should fail");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
}

#[test]
fn billm_reports_both_bit_figures() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let (ok, v, err) = quantize(&["--method", "billm", "--billm-fix", "quantiles"]);
    assert!(ok, "{v} {err}");
    assert_eq!(v["method"], "billm");
    assert_eq!(v["pipeline"], "billm");
    // The reference's figure: 1 + the last block's salient fraction (at most 49 of 128 columns).
    let reference = v["reference_bits"].as_f64().unwrap();
    assert!(
        reference > 1.0 && reference < 1.0 + 49.0 / 128.0 + 1e-9,
        "{reference}"
    );
    // The packed layout's true cost: 2 bits + the (row, block) tables + the salient map.
    let honest = v["bits_per_weight"].as_f64().unwrap();
    assert!((honest - 2.627).abs() < 0.01, "{honest}");
    assert_eq!(v["linears"].as_array().unwrap().len(), 56);
    assert!(v["eval"]["docs"]["ppl"].as_f64().unwrap().is_finite());
}

/// `bench gemv --binary` times BiLLM's packed layout: it stores less than half the bytes of
/// 4-bit g128 codes for the same shape.
#[test]
fn bench_times_binary_weights() {
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "gemv",
            "--bits",
            "4",
            "--rows",
            "256",
            "--cols",
            "1024",
            "--seconds",
            "0.1",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (ok, v, err) = run(&args);
        assert!(ok, "{v} {err}");
        v
    };
    let (binary, four) = (bench(&["--binary"]), bench(&[]));
    assert_eq!(binary["weights"], "binary (BiLLM)");
    assert_eq!(four["weights"], "4-bit g128");
    let bytes = |v: &Value| v["weight_bytes_per_call"].as_f64().unwrap();
    // 2 bits + tables (0.625) + salient map vs 4 bits + scales and zeros per group of 128.
    assert!(bytes(&binary) < 0.7 * bytes(&four), "{binary} {four}");
    assert!(binary["us_per_call"].as_f64().unwrap() > 0.0);
}

#[test]
fn calibration_that_does_not_fit_in_memory_is_a_typed_error_before_allocating() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    // 64 × 1024 tokens of a 512-wide model: 64 · 1024 · 512 · 12 B = 403 MB of f32 activations
    // (inputs, outputs, the embedding they start from), plus one layer's GPTQ working set: the
    // f32 layer (12.6 MB), 16 · 1536² B of Hessian and factors and 3 copies of down_proj:
    // 59.8 MB. With `--sub-block-inputs keep`, down_proj's inputs too: 4 · 1536 B per token.
    let run = |keep: bool| {
        let mut args = vec![
            "quantize".to_string(),
            "--model".into(),
            format!("{ASSETS}/models/qwen3-micro"),
        ];
        for a in [
            "--method",
            "gptq",
            "--calib",
            "docs",
            "--samples",
            "64",
            "--seq-len",
            "1024",
            "--memory-budget-mb",
            "300",
            "--json",
        ] {
            args.push(a.into());
        }
        if keep {
            args.extend(["--sub-block-inputs".into(), "keep".into()]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_qwen3-quant"))
            .args(&args)
            .env("QWEN3_QUANT_QUIET", "1")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["error"].as_str().unwrap().to_string()
    };
    // (0.9 × 300 MB − 42.5 MB) / 6.29 MB = 36.2 samples; bf16 (4.19 MB per sample): 54.2.
    let e = run(false);
    assert!(e.contains("at most 36 calibration samples"), "{e}");
    assert!(
        e.contains("--bf16-activations") && e.contains("54 samples fit"),
        "{e}"
    );
    // Kept down_proj inputs: 12.58 MB per sample, 18.1 samples; bf16 (10.49 MB): 21.7.
    let e = run(true);
    assert!(e.contains("at most 18 calibration samples"), "{e}");
    assert!(
        e.contains("--bf16-activations") && e.contains("21 samples fit"),
        "{e}"
    );
}

#[test]
fn expert_policy_is_parsed_and_reported() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("moe-native");
    let run = |policy: &str| {
        Command::new(env!("CARGO_BIN_EXE_qwen3-quant"))
            .args([
                "quantize",
                "--out",
                out_dir.to_str().unwrap(),
                "--format",
                "native",
                "--model",
                &format!("{ASSETS}/models/qwen3-moe-micro"),
                "--method",
                "gptq",
                "--calib",
                "docs",
                "--samples",
                "2",
                "--seq-len",
                "256",
                "--expert-policy",
                policy,
                "--json",
            ])
            .env("QWEN3_QUANT_QUIET", "1")
            .output()
            .unwrap()
    };
    let out = run("threshold-then-all:100000");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["expert_policy"]
        .as_str()
        .unwrap()
        .contains("ThresholdThenAllTokens"));
    let experts: Vec<&serde_json::Value> = v["linears"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["module"].as_str().unwrap().contains("experts."))
        .collect();
    assert!(!experts.is_empty());
    // Every expert is below 100000 routed tokens: all use every token's statistics.
    assert!(experts.iter().all(|l| l["fallback"]
        .as_str()
        .is_some_and(|f| f.contains("all-token"))));
    // The checkpoint records the routed token counts and the policy next to its config.
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("quantization_report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["expert_tokens"], v["expert_tokens"], "{report}");
    let routed: u64 = report["expert_tokens"]["0"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(routed, 2 * 256 * 2, "top-2 routing of 2 × 256 tokens");
    assert!(report["expert_policy"]
        .as_str()
        .unwrap()
        .contains("ThresholdThenAllTokens"));
    let bad = run("sometimes");
    assert!(!bad.status.success());
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("threshold:N"), "{v}");
}

/// `--norm-refit` refits both norms of every layer after GPTQ and reports each fit as a
/// `norm-refit` transform whose error is below the norm's own; the ridge is recorded.
#[test]
fn norm_refit_is_reported_per_norm() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let (ok, v, err) = quantize(&["--method", "gptq", "--bits", "3", "--norm-refit"]);
    assert!(ok, "{v} {err}");
    assert_eq!(v["norm_refit"].as_f64(), Some(0.01));
    let fits: Vec<&Value> = v["transforms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["transform"] == "norm-refit")
        .collect();
    assert_eq!(fits.len(), 16, "{v}");
    let applied: Vec<&&Value> = fits.iter().filter(|t| t["fallback"].is_null()).collect();
    assert!(!applied.is_empty());
    for t in applied {
        assert!(
            t["loss"].as_f64().unwrap() < t["baseline_loss"].as_f64().unwrap(),
            "{t}"
        );
    }
    assert!(v["eval"]["docs"]["ppl"].as_f64().unwrap().is_finite());
}

#[test]
fn router_refit_is_reported_per_moe_layer() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    let (ok, v, err) = quantize_on(
        "qwen3-moe-micro",
        &[
            "--method",
            "gptq",
            "--bits",
            "3",
            "--gptaq",
            "1",
            "--router-refit",
        ],
    );
    assert!(ok, "{v} {err}");
    assert_eq!(v["router_refit"].as_f64(), Some(0.01));
    let fits: Vec<&Value> = v["transforms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["transform"] == "router-refit")
        .collect();
    assert_eq!(fits.len(), 4, "{v}");
    for t in fits {
        assert_eq!(t["target"], "mlp.gate");
        assert!(t["fallback"].is_null(), "{t}");
        assert!(
            t["loss"].as_f64().unwrap() < t["baseline_loss"].as_f64().unwrap(),
            "{t}"
        );
        let agreement = t["ratio"].as_f64().unwrap();
        assert!(agreement > 0.5 && agreement <= 1.0, "{t}");
    }
    assert!(v["eval"]["docs"]["ppl"].as_f64().unwrap().is_finite());
}
