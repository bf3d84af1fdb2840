//! The `qwen3-quant` binary: `sweep` (grid, resume, shards, merge, outputs) and `--json`
//! argument errors.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

fn qwen3_quant(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qwen3-quant"))
        .args(args)
        .env("QWEN3_QUANT_QUIET", "1")
        .env("QWEN3_QUANT_DATA", format!("{ASSETS}/data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), v, stderr)
}

#[test]
fn argument_errors_are_json_with_json() {
    for args in [
        &["quantize", "--model", "m", "--method", "nope", "--json"][..],
        &["eval", "--json", "--no-such-flag"][..],
        &["sweep", "--json"][..],
        &["inspect", "--json"][..],
        &[
            "generate",
            "--json",
            "--model",
            "m",
            "--prompt",
            "x",
            "--max-new-tokens",
            "many",
        ][..],
        &["bench", "gemv", "--bits", "4", "--json"][..],
        &["frobnicate", "--json"][..],
    ] {
        let (code, v, stderr) = qwen3_quant(args);
        assert_eq!(code, 2, "{args:?}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{args:?}: {v}"));
        assert!(!msg.is_empty() && !msg.contains("Usage"), "{args:?}: {msg}");
        // The usual message still goes to stderr.
        assert!(stderr.contains("error:"), "{args:?}: {stderr}");
    }
    let (_, v, _) = qwen3_quant(&["quantize", "--model", "m", "--method", "nope", "--json"]);
    assert!(v["error"].as_str().unwrap().contains("'nope'"), "{v}");
    // Without --json, clap's own text and exit status.
    let out = Command::new(env!("CARGO_BIN_EXE_qwen3-quant"))
        .args(["eval", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    // --help is not an error.
    let out = Command::new(env!("CARGO_BIN_EXE_qwen3-quant"))
        .args(["sweep", "--help", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--shard"));
}

fn sweep(out: &Path, extra: &[&str]) -> (i32, Value, String) {
    let model = format!("{ASSETS}/models/qwen3-micro");
    let out = out.to_str().unwrap();
    let mut args = vec![
        "sweep",
        "--model",
        model.as_str(),
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
        out,
        "--json",
    ];
    args.extend_from_slice(extra);
    qwen3_quant(&args)
}

fn ppl(v: &Value, cell: &str) -> f64 {
    v["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == cell)
        .unwrap_or_else(|| panic!("no {cell} in {v}"))["report"]["ppl"]["docs"]["ppl"]
        .as_f64()
        .unwrap()
}

/// `results.md` with the last column of its tables ("quantize s") emptied.
fn without_times(md: &str) -> String {
    md.lines()
        .map(|l| match l.strip_suffix(" |") {
            Some(row) if l.starts_with('|') => match row.rfind('|') {
                Some(i) => format!("{} |", &row[..=i]),
                None => l.to_string(),
            },
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn sweep_resumes_shards_and_merges() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let (code, v, err) = sweep(&full, &[]);
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(
        v["ran"],
        serde_json::json!(["fp", "rtn_w8_g128", "rtn_w3_g128"])
    );
    let (fp, w8, w3) = (
        ppl(&v, "fp"),
        ppl(&v, "rtn_w8_g128"),
        ppl(&v, "rtn_w3_g128"),
    );
    // 8 bits is indistinguishable from full precision here; 3 bits is clearly worse.
    assert!((w8 / fp - 1.0).abs() < 2e-3, "{fp} {w8}");
    assert!(w3 > fp * 1.02, "{fp} {w3}");
    let w3_bpw = v["cells"][2]["bits_per_weight"].as_f64().unwrap();
    assert!(w3_bpw > 3.0 && w3_bpw < 3.3, "{w3_bpw}");
    for f in [
        "results.md",
        "results.csv",
        "results.json",
        "plots/ppl_docs.png",
        "cells/fp.json",
        "cells/rtn_w3_g128.json",
    ] {
        assert!(full.join(f).is_file(), "{f}");
    }
    let png = std::fs::read(full.join("plots/ppl_docs.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let md = std::fs::read_to_string(full.join("results.md")).unwrap();
    assert!(md.contains("| RTN | 3 | 16 | 128 |"), "{md}");
    let csv = std::fs::read_to_string(full.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.lines().next().unwrap().ends_with("ppl:docs"));

    // Resumed: every cell is already there; a lost cell is recomputed identically.
    std::fs::remove_file(full.join("cells/rtn_w8_g128.json")).unwrap();
    let (code, again, err) = sweep(&full, &[]);
    assert_eq!(code, 0, "{again} {err}");
    assert_eq!(again["ran"], serde_json::json!(["rtn_w8_g128"]));
    assert_eq!(again["skipped"].as_array().unwrap().len(), 2);
    assert_eq!(ppl(&again, "rtn_w8_g128"), w8);

    // Another protocol in the same folder is refused, not mixed.
    let (code, bad, _) = sweep(&full, &["--calib", "docs"]);
    assert_ne!(code, 0);
    assert!(
        bad["error"].as_str().unwrap().contains("another protocol"),
        "{bad}"
    );

    // Two shards split the grid (cell k to shard k mod 2) and merge into the same table.
    let (s0, s1, merged) = (
        tmp.path().join("s0"),
        tmp.path().join("s1"),
        tmp.path().join("merged"),
    );
    let (code, a, err) = sweep(&s0, &["--shard", "0/2"]);
    assert_eq!(code, 0, "{a} {err}");
    assert_eq!(a["ran"], serde_json::json!(["fp", "rtn_w3_g128"]));
    let (code, b, err) = sweep(&s1, &["--shard", "1/2"]);
    assert_eq!(code, 0, "{b} {err}");
    assert_eq!(b["ran"], serde_json::json!(["rtn_w8_g128"]));
    let (code, m, err) = qwen3_quant(&[
        "sweep",
        "--merge",
        s0.to_str().unwrap(),
        s1.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{m} {err}");
    for cell in ["fp", "rtn_w8_g128", "rtn_w3_g128"] {
        assert_eq!(ppl(&m, cell), ppl(&v, cell), "{cell}");
    }
    // The same table, but for the wall times, which differ from run to run (RTN's cells take
    // about half a second, so their rounded seconds flip between 0 and 1).
    assert_eq!(
        without_times(&std::fs::read_to_string(merged.join("results.md")).unwrap()),
        without_times(&md)
    );
    let (code, bad, _) = sweep(&s0, &["--shard", "2/2"]);
    assert_ne!(code, 0);
    assert!(bad["error"].as_str().unwrap().contains("shard"), "{bad}");
}
