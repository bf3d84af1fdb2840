//! The `qwen3-quant` binary with checkpoints: `quantize --out --format`, then `inspect`, `eval`
//! and `generate` on what it wrote and on a checkpoint written by another tool.

use std::process::Command;

use serde_json::Value;

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

fn run(args: &[&str]) -> (bool, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_qwen3-quant"))
        .args(args)
        .env("QWEN3_QUANT_QUIET", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), v)
}

#[test]
fn quantize_writes_checkpoints_that_eval_inspect_and_generate_read() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = format!("{ASSETS}/models/qwen3-micro");
    for format in ["gptq", "compressed-tensors", "native", "awq"] {
        let out = tmp.path().join(format);
        let out_s = out.to_str().unwrap();
        let (ok, q) = run(&[
            "quantize",
            "--model",
            &model,
            "--method",
            "rtn",
            "--bits",
            "4",
            "--group-size",
            "128",
            "--seq-len",
            "256",
            "--out",
            out_s,
            "--format",
            format,
            "--eval",
            "docs:1",
            "--json",
        ]);
        assert!(ok, "{q}");
        assert_eq!(q["checkpoint"]["format"], format);
        assert!(!q["checkpoint"]["serving"].as_array().unwrap().is_empty());
        let (ok, i) = run(&["inspect", out_s, "--json"]);
        assert!(ok, "{i}");
        assert_eq!(i["quantized"]["format"], format);
        assert_eq!(i["quantized"]["bits"], 4);
        assert_eq!(i["quantized"]["quantized_linears"], 56);
        let bpw = i["quantized"]["bits_per_weight"].as_f64().unwrap();
        assert!(bpw > 4.1 && bpw < 4.3, "{format}: {bpw}");
        // One docs window of the checkpoint, with `extra` options.
        let eval = |extra: &[&str]| {
            let mut args = vec![
                "eval",
                "--model",
                out_s,
                "--dataset",
                "docs",
                "--windows",
                "1",
                "--seq-len",
                "256",
                "--json",
            ];
            args.extend_from_slice(extra);
            run(&args)
        };
        let (ok, e) = eval(&[]);
        assert!(ok, "{e}");
        let (loaded, fake) = (
            e["ppl"]["docs"]["ppl"].as_f64().unwrap(),
            q["eval"]["docs"]["ppl"].as_f64().unwrap(),
        );
        assert!(
            (loaded / fake - 1.0).abs() < 1e-3,
            "{format}: {loaded} vs {fake}"
        );
        assert_eq!(e["int8_activations"], false);
        // int8 prefill activations: a different perplexity (the rounding shows), close to it.
        let (ok, e8) = eval(&["--int8-activations"]);
        assert!(ok, "{e8}");
        assert_eq!(e8["int8_activations"], true);
        let int8 = e8["ppl"]["docs"]["ppl"].as_f64().unwrap();
        assert!(
            (int8 / loaded - 1.0).abs() < 1e-2,
            "{format}: {int8} vs {loaded}"
        );
        let applies = qwen3_quant_kernels::bench::random_packed(4, 16, 256, 128, 0)
            .unwrap()
            .q8_gemm_applies();
        assert_eq!(int8 != loaded, applies, "{format}: {int8} vs {loaded}");
    }
    // A format that cannot hold the request fails before quantizing, with a JSON error.
    let (ok, e) = run(&[
        "quantize",
        "--model",
        &model,
        "--method",
        "rtn",
        "--bits",
        "3",
        "--out",
        tmp.path().join("x").to_str().unwrap(),
        "--format",
        "awq",
        "--json",
    ]);
    assert!(!ok && e["error"].as_str().unwrap().contains("4-bit"), "{e}");
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn generate_samples_reproducibly_from_a_gptqmodel_checkpoint() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro-gptq-w4g128-actorder") else {
        return;
    };
    let model = format!("{ASSETS}/models/qwen3-micro-gptq-w4g128-actorder");
    let args = [
        "generate",
        "--model",
        &model,
        "--prompt",
        "The kernel scheduler",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--top-p",
        "0.95",
        "--seed",
        "7",
        "--json",
    ];
    let (ok, a) = run(&args);
    assert!(ok, "{a}");
    let (_, b) = run(&args);
    assert_eq!(a["completion"], b["completion"], "same seed, same text");
    assert!(a["tokens"].as_u64().unwrap() <= 12);
    let mut other = args.to_vec();
    other[14] = "8";
    let (_, c) = run(&other);
    assert_ne!(
        a["completion"], c["completion"],
        "another seed, another sample"
    );
    // --chat needs a template; the micro model ships none: a clear error.
    let (ok, e) = run(&[
        "generate", "--model", &model, "--prompt", "hi", "--chat", "--json",
    ]);
    assert!(
        !ok && e["error"].as_str().unwrap().contains("chat template"),
        "{e}"
    );
}

/// `--recipe best` (GPTQ, static groups, range search) writes a GPTQ checkpoint that loads back
/// with the in-process perplexity; with `--rotate` the untied, rotated head and embeddings load
/// back too. Both are within 5% of the full-precision model's perplexity at 4 bits.
#[test]
fn the_best_recipe_writes_a_gptq_checkpoint_that_loads_back() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = format!("{ASSETS}/models/qwen3-micro");
    let eval = |dir: &str| {
        let (ok, e) = run(&[
            "eval",
            "--model",
            dir,
            "--dataset",
            "docs",
            "--windows",
            "2",
            "--seq-len",
            "256",
            "--json",
        ]);
        assert!(ok, "{e}");
        e["ppl"]["docs"]["ppl"].as_f64().unwrap()
    };
    let fp = eval(&model);
    for rotate in [false, true] {
        let out = tmp.path().join(format!("best-{rotate}"));
        let out_s = out.to_str().unwrap();
        let mut args = vec![
            "quantize",
            "--model",
            &model,
            "--recipe",
            "best",
            "--bits",
            "4",
            "--calib",
            "docs",
            "--samples",
            "4",
            "--seq-len",
            "256",
            "--out",
            out_s,
            "--format",
            "gptq",
            "--eval",
            "docs:2",
            "--json",
        ];
        if rotate {
            args.push("--rotate");
        }
        let (ok, q) = run(&args);
        assert!(ok, "{q}");
        let pipeline = if rotate { "hadamard+gptq" } else { "gptq" };
        assert_eq!(q["pipeline"], pipeline);
        assert_eq!(q["recipe"], "best");
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        // qwen3-micro ties its head; a rotation unties it.
        assert_eq!(cfg["tie_word_embeddings"], !rotate, "{cfg}");
        let loaded = eval(out_s);
        let in_process = q["eval"]["docs"]["ppl"].as_f64().unwrap();
        assert!(
            (loaded / in_process - 1.0).abs() < 2e-3,
            "{pipeline}: loaded {loaded} vs in-process {in_process}"
        );
        assert!(loaded / fp < 1.05, "{pipeline}: w4 {loaded} vs fp {fp}");
    }
    // A recipe is GPTQ-based; another method is refused, an unknown name too.
    let (ok, e) = run(&[
        "quantize", "--model", &model, "--recipe", "best", "--method", "awq", "--json",
    ]);
    assert!(!ok && e["error"].as_str().unwrap().contains("GPTQ"), "{e}");
    let (ok, e) = run(&[
        "quantize", "--model", &model, "--recipe", "fastest", "--json",
    ]);
    assert!(
        !ok && e["error"].as_str().unwrap().contains("recipe"),
        "{e}"
    );
}
