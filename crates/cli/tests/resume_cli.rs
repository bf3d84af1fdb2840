//! `quantize --out DIR --resume`: a run killed with SIGKILL at a random layer continues after
//! its last saved layer, and its output files are byte-identical to an uninterrupted run's; a
//! resume with other options, calibration or model is refused; bad `--out`s are refused first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

fn command(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwen3-quant"));
    c.args(args)
        .env("QWEN3_QUANT_QUIET", "1")
        .env("QWEN3_QUANT_DATA", format!("{ASSETS}/data"));
    c
}

fn run(args: &[String]) -> (bool, Value) {
    let out = command(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), v)
}

fn args(model: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "quantize",
        "--model",
        &format!("{ASSETS}/models/{model}"),
        "--calib",
        "docs",
        "--samples",
        "4",
        "--seq-len",
        "256",
        "--json",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(out.display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn state_dir(out: &Path) -> PathBuf {
    let name = out.file_name().unwrap().to_string_lossy();
    out.with_file_name(format!(".{name}.qq-resume"))
}

/// Every file under `dir`, by relative path, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, v: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, v);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                v.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// A layer index in `1..layers - 1` that differs from run to run (the clock's nanoseconds).
fn random_layer(layers: usize) -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    1 + nanos % (layers - 2)
}

/// Starts the run, SIGKILLs it as soon as layer `k`'s state starts to be written (so the kill
/// lands inside a layer's save, the worst moment), and returns the layers the state committed.
fn kill_during_layer(a: &[String], out: &Path, k: usize) -> usize {
    // On a loaded machine the watcher may miss a fast run's layer entirely; a run that ended
    // before it could be killed is thrown away and started again.
    for _ in 0..5 {
        if let Some(committed) = try_kill_during_layer(a, out, k) {
            return committed;
        }
        let _ = std::fs::remove_dir_all(out);
        let _ = std::fs::remove_dir_all(state_dir(out));
    }
    panic!("five runs ended before layer {k} could be killed");
}

/// One attempt of [`kill_during_layer`]; `None` when the run ended before layer `k` was seen.
fn try_kill_during_layer(a: &[String], out: &Path, k: usize) -> Option<usize> {
    let state = state_dir(out);
    // Under `nice`, where there is one, so that this watcher is not starved by the run on a
    // busy 2-core machine and the kill lands at the layer chosen.
    let mut cmd = if Path::new("/usr/bin/nice").exists() {
        let mut c = Command::new("/usr/bin/nice");
        c.args(["-n", "15", env!("CARGO_BIN_EXE_qwen3-quant")])
            .args(a)
            .env("QWEN3_QUANT_QUIET", "1")
            .env("QWEN3_QUANT_DATA", format!("{ASSETS}/data"));
        c
    } else {
        command(a)
    };
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let target = state.join(format!("layer-{k:04}"));
    let t0 = Instant::now();
    while !target.exists() {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "layer {k} never saved"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
    child.kill().unwrap(); // SIGKILL on Unix: no destructor, no flush.
    child.wait().unwrap();
    assert!(
        !out.exists(),
        "a killed run must not leave a partial output"
    );
    let progress: Value =
        serde_json::from_slice(&std::fs::read(state.join("progress.json")).unwrap_or_default())
            .unwrap_or(Value::Null);
    Some(progress["layers_done"].as_u64().unwrap_or(0) as usize)
}

/// An uninterrupted run (with `--eval`, so the model stays in memory), a run killed inside a
/// random layer (streamed: no `--eval`), and its resumption, streamed too unless `resume_eval`:
/// the outputs must be identical file for file and byte for byte, and the in-process
/// perplexity too when the resumed run evaluates.
fn killed_and_resumed_equals_uninterrupted(
    model: &str,
    layers: usize,
    extra: &[&str],
    resume_eval: bool,
) {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let (ok, a) = run(&args(
        model,
        &whole,
        &[extra, &["--eval", "docs:2"]].concat(),
    ));
    assert!(ok, "{a}");
    assert_eq!(a["resumed_layers"], 0);
    assert!(!state_dir(&whole).exists(), "state removed after success");

    let out = tmp.path().join("killed");
    let k = random_layer(layers);
    let committed = kill_during_layer(&args(model, &out, extra), &out, k);
    assert!(
        committed == k || committed == k + 1,
        "killed while saving layer {k}: {committed} layers committed"
    );
    let tail: &[&str] = if resume_eval {
        &["--eval", "docs:2", "--resume"]
    } else {
        &["--resume"]
    };
    let (ok, b) = run(&args(model, &out, &[extra, tail].concat()));
    assert!(ok, "{b}");
    assert_eq!(a["streamed"], false);
    assert_eq!(b["streamed"], !resume_eval);
    eprintln!("{model} {extra:?}: killed in layer {k}, resumed after {committed} layers");
    assert_eq!(b["resumed_layers"], committed as u64, "{b}");
    assert!(!state_dir(&out).exists(), "state removed after success");
    let (fa, fb) = (files(&whole), files(&out));
    assert_eq!(
        fa.iter().map(|f| &f.0).collect::<Vec<_>>(),
        fb.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{model} {extra:?}: {name} differs after resume");
    }
    if resume_eval {
        assert_eq!(a["eval"]["docs"]["ppl"], b["eval"]["docs"]["ppl"]);
    }
    assert_eq!(a["bits_per_weight"], b["bits_per_weight"]);
    assert_eq!(a["reference_bits"], b["reference_bits"]);
    assert_eq!(
        a["linears"].as_array().unwrap().len(),
        b["linears"].as_array().unwrap().len()
    );
    // Every linear of the dense model had calibration statistics: none reports a fallback.
    if model == "qwen3-micro" {
        for r in a["linears"].as_array().unwrap() {
            assert!(r["fallback"].is_null(), "{r}");
        }
    }
}

#[test]
fn gptq_killed_at_a_random_layer_resumes_to_identical_files() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    // True-sequential GPTQ: quantized propagation through the saved activations.
    killed_and_resumed_equals_uninterrupted(
        "qwen3-micro",
        8,
        &["--method", "gptq", "--bits", "3", "--format", "gptq"],
        true,
    );
    // The best recipe with a residual rotation (rotated ends recomputed, layers restored as
    // rotated), packed weights and bf16 activations.
    killed_and_resumed_equals_uninterrupted(
        "qwen3-micro",
        8,
        &[
            "--recipe",
            "best",
            "--bits",
            "3",
            "--rotate",
            "--packed",
            "--bf16-activations",
            "--format",
            "native",
        ],
        true,
    );
}

#[test]
fn awq_and_moe_runs_resume_to_identical_files() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    // AWQ: the transform stage (folded scales, full-precision propagation).
    killed_and_resumed_equals_uninterrupted(
        "qwen3-micro",
        8,
        &[
            "--method",
            "awq",
            "--bits",
            "4",
            "--format",
            "awq",
            "--awq-grid",
            "4",
            // The clip search is two thirds of this run's time and changes no resume logic.
            "--no-clip",
        ],
        false,
    );
    // BiLLM's binary weights in the native format; its reference bits read back from the state.
    killed_and_resumed_equals_uninterrupted(
        "qwen3-micro",
        8,
        &["--method", "billm", "--format", "native"],
        false,
    );
    // MoE with per-expert counts and the all-token policy.
    killed_and_resumed_equals_uninterrupted(
        "qwen3-moe-micro",
        4,
        &[
            "--method",
            "gptq",
            "--bits",
            "4",
            "--format",
            "gptq",
            "--expert-policy",
            "all-tokens",
        ],
        false,
    );
}

#[test]
fn resuming_another_job_is_refused_and_keeps_the_state() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    let base = ["--method", "gptq", "--bits", "3", "--format", "gptq"];
    let committed = kill_during_layer(&args("qwen3-micro", &out, &base), &out, 3);
    assert!(committed >= 3);
    let state = state_dir(&out);
    let before = files(&state);

    let cases: [(&[&str], &str); 3] = [
        (
            &["--method", "gptq", "--bits", "4", "--format", "gptq"],
            "method",
        ),
        (
            &[
                "--method", "gptq", "--bits", "3", "--format", "gptq", "--seed", "7",
            ],
            "calibration",
        ),
        (
            &[
                "--method", "gptq", "--bits", "3", "--format", "gptq", "--damp", "0.02",
            ],
            "method",
        ),
    ];
    for (extra, part) in cases {
        let (ok, v) = run(&args("qwen3-micro", &out, &[extra, &["--resume"]].concat()));
        assert!(!ok);
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(&format!("the {part} changed")), "{e}");
        assert!(!out.exists());
    }
    // Another model: the MoE model's files.
    let mut other = args("qwen3-moe-micro", &out, &base);
    other.push("--resume".into());
    let (ok, v) = run(&other);
    assert!(!ok);
    assert!(
        v["error"].as_str().unwrap().contains("the model changed"),
        "{v}"
    );
    assert_eq!(
        files(&state),
        before,
        "a refused resume must not touch the state"
    );

    // Another --format and --eval are the same job: the resume goes on from the saved layers.
    let (ok, v) = run(&args(
        "qwen3-micro",
        &out,
        &[
            "--method", "gptq", "--bits", "3", "--format", "native", "--resume",
        ],
    ));
    assert!(ok, "{v}");
    assert_eq!(v["resumed_layers"], committed as u64);
}

#[test]
fn bad_outputs_are_refused_before_any_work() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let model = format!("{ASSETS}/models/qwen3-micro");
    let inside = Path::new(&model).join("quantized");
    for (out, want) in [
        (Path::new(&model).to_path_buf(), "input directory"),
        (inside.clone(), "input directory"),
    ] {
        let t0 = Instant::now();
        let (ok, v) = run(&args("qwen3-micro", &out, &["--method", "gptq"]));
        assert!(!ok);
        assert!(v["error"].as_str().unwrap().contains(want), "{v}");
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "refused only after the work"
        );
    }
    assert!(!inside.exists() && !state_dir(&inside).exists());
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep.txt"), b"mine").unwrap();
    let (ok, v) = run(&args("qwen3-micro", &full, &["--method", "gptq"]));
    assert!(!ok);
    assert!(v["error"].as_str().unwrap().contains("not empty"), "{v}");
    assert_eq!(std::fs::read(full.join("keep.txt")).unwrap(), b"mine");
    // --resume needs the --out it continues.
    let mut a = args("qwen3-micro", &full, &["--method", "gptq", "--resume"]);
    let at = a.iter().position(|s| s == "--out").unwrap();
    a.drain(at..at + 2);
    let (ok, v) = run(&a);
    assert!(!ok);
    assert!(v["error"].as_str().unwrap().contains("--resume"), "{v}");
}
