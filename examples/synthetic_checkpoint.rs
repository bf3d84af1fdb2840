//! Synthetic Qwen3-shaped checkpoints for memory and time benchmarks, and the projection of a
//! measured run to full-size models (`scripts/bench-streaming.sh` runs both around the CLI).
//!
//! ```text
//! cargo run --release --example synthetic_checkpoint -- write --shape qwen3-8b --layers 16 --out DIR
//! cargo run --release --example synthetic_checkpoint -- project --model DIR --rtn rtn.json --gptq gptq.json
//! ```
//!
//! `write` makes a checkpoint of random bf16 weights in the Hugging Face layout (shapes:
//! qwen3-0.6b, qwen3-8b, qwen3-32b, qwen3-30b-a3b; `--layers` cuts the depth) and copies the
//! Qwen3 tokenizer next to it. `project` reads the `--json` reports of `qwen3-quant quantize`
//! runs on it and scales their measured times to Qwen3-8B, 32B and 30B-A3B on this machine:
//! RTN by the number of weights, GPTQ by the FLOPs the driver's own cost model counts
//! (`qwen3_quant::calib::project`) at the measured calibration size and at the paper's
//! 128 × 2048.

use std::path::PathBuf;

use qwen3_quant::calib::project;
use qwen3_quant::core::StatsRequest;
use qwen3_quant::io::synthetic::{write_synthetic, SyntheticShape};
use qwen3_quant::io::ModelConfig;
use serde_json::Value;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("write") => write(&args),
        Some("project") => project_runs(&args),
        _ => Err("usage: synthetic_checkpoint write --shape S [--layers N] --out DIR [--seed S] | project --model DIR --rtn JSON --gptq JSON".into()),
    }
}

fn write(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let name = arg(args, "--shape").unwrap_or_else(|| "qwen3-8b".into());
    let mut shape = SyntheticShape::by_name(&name).ok_or(format!("unknown shape {name}"))?;
    if let Some(l) = arg(args, "--layers") {
        shape = shape.with_layers(l.parse()?);
    }
    let out = PathBuf::from(arg(args, "--out").ok_or("--out DIR")?);
    let seed = arg(args, "--seed").map_or(Ok(0), |s| s.parse())?;
    eprintln!(
        "writing {} with {} layers: {:.2} GB of bf16 tensors",
        shape.name,
        shape.layers,
        shape.bytes() as f64 / 1e9
    );
    let t0 = std::time::Instant::now();
    let bytes = write_synthetic(&out, &shape, seed)?;
    // The real Qwen3 tokenizer, so that calibration text tokenizes into this vocabulary.
    let tok = qwen3_quant::io::assets::require("models/qwen3-tokenizer")
        .ok_or("the bundled Qwen3 tokenizer (assets/models/qwen3-tokenizer) is missing")?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        if tok.join(f).is_file() {
            std::fs::copy(tok.join(f), out.join(f))?;
        }
    }
    println!(
        "{}: {:.2} GB in {:.1} s",
        out.display(),
        bytes as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn report(path: &str) -> Result<Value, Box<dyn std::error::Error>> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn project_runs(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(arg(args, "--model").ok_or("--model DIR")?);
    let cfg = ModelConfig::from_file(dir.join("config.json"))?;
    let synthetic = SyntheticShape::by_name("qwen3-8b")
        .expect("shape")
        .with_layers(cfg.num_hidden_layers);
    let params = |s: &SyntheticShape| (s.layers * s.layer_params()) as f64;
    let targets = [
        SyntheticShape::qwen3_8b(),
        SyntheticShape::qwen3_32b(),
        SyntheticShape::qwen3_30b_a3b(),
    ];
    let config_of = |s: &SyntheticShape| ModelConfig::from_json(&s.config_json().to_string());
    println!(
        "| run | synthetic model | measured | peak RSS | Qwen3-8B | Qwen3-32B | Qwen3-30B-A3B |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    if let Some(p) = arg(args, "--rtn") {
        let r = report(&p)?;
        let secs = r["seconds"].as_f64().unwrap_or(0.0);
        let mut row = format!(
            "| RTN w4 g128 | {} layers | {secs:.0} s | {:.0} MB |",
            cfg.num_hidden_layers,
            r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN)
        );
        for t in &targets {
            row += &format!(" {:.2} h |", secs * params(t) / params(&synthetic) / 3600.0);
        }
        println!("{row}");
    }
    if let Some(p) = arg(args, "--gptq") {
        let r = report(&p)?;
        let secs = r["seconds"].as_f64().unwrap_or(0.0);
        let (samples, seq) = (
            r["calibration"]["samples"].as_u64().unwrap_or(0) as usize,
            r["calibration"]["seq_len"].as_u64().unwrap_or(0) as usize,
        );
        let req = StatsRequest {
            hessian: true,
            channel_stats: false,
        };
        let measured = project(&cfg, samples, seq, req, true).total_flops;
        for (label, (n, l)) in [
            (format!("{samples} × {seq}"), (samples, seq)),
            ("128 × 2048 (paper)".to_string(), (128, 2048)),
        ] {
            let mut row = format!(
                "| GPTQ w4 g128, calibration {label} | {} layers | {secs:.0} s | {:.0} MB |",
                cfg.num_hidden_layers,
                r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN)
            );
            for t in &targets {
                let flops = project(&config_of(t)?, n, l, req, true).total_flops;
                row += &format!(" {:.1} h |", secs * flops / measured / 3600.0);
            }
            println!("{row}");
        }
    }
    Ok(())
}
