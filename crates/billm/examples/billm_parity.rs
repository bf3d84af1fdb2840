//! The BiLLM parity run on qwen3-micro (protocol of `assets/golden/reference_ppl.json`):
//! calibrate on the first 128 windows of 1024 tokens of the docs `calib` split, binarize every
//! decoder linear, and print docs_32 and wiki2_32 perplexity next to the reference, both bit
//! figures and the wall time of the quantization.
//!
//! ```sh
//! cargo run --release -p qwen3-quant-billm --example billm_parity            # reference config
//! cargo run --release -p qwen3-quant-billm --example billm_parity -- --fix weights,quantiles,intra
//! cargo run --release -p qwen3-quant-billm --example billm_parity -- --metric magnitude --all-docs
//! ```
//! Options: `--fix LIST` (any of `weights` = search on W, `quantiles` = quantiles over the
//! non-salient entries, `intra` = intra-block feedback), `--no-feedback`, `--metric
//! hessian|magnitude`, `--block N`, `--samples N` (default 128), `--all-docs` (also every docs
//! `valid` window), `--packed` (also run the packed kernels and compare perplexities).

use std::time::Instant;

use qwen3_quant_billm::{reference_bits, Billm, BillmConfig, SalientMetric};
use qwen3_quant_calib::{
    first_windows, quantize_checkpoint, quantize_model, DriverOptions, WeightMode,
};
use qwen3_quant_eval::{self as eval, data::read_token_tensor, PplOptions, Progress};
use qwen3_quant_io::Checkpoint;
use qwen3_quant_model::{Qwen3Model, Tokenizer};

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets");

fn ppl(model: &Qwen3Model, ids: &[u32], windows: Option<usize>) -> f64 {
    let opts = PplOptions::default()
        .with_seq_len(1024)
        .with_max_windows(windows)
        .with_batch_size(4)
        .with_stride(None);
    eval::evaluate_ppl(model, ids, &opts, Progress::Hidden)
        .expect("perplexity")
        .ppl
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`, 100 ticks/s).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let mut cfg = BillmConfig::default();
    if let Some(fixes) = value("--fix") {
        for f in fixes.split(',') {
            match f.trim() {
                "weights" => cfg.search_on_weights = true,
                "quantiles" => cfg.quantiles_over_non_salient = true,
                "intra" => cfg.intra_block_feedback = true,
                "" => {}
                other => return Err(format!("unknown fix {other:?}").into()),
            }
        }
    }
    if args.iter().any(|a| a == "--no-feedback") {
        cfg.error_feedback = false;
    }
    if let Some(m) = value("--metric") {
        cfg.salient_metric = match m.as_str() {
            "hessian" => SalientMetric::Hessian,
            "magnitude" => SalientMetric::Magnitude,
            other => return Err(format!("unknown metric {other:?}").into()),
        };
    }
    if let Some(b) = value("--block") {
        cfg.block_size = b.parse()?;
    }
    let samples: usize = value("--samples").map_or(Ok(128), |s| s.parse())?;
    let method = Billm::new(cfg)?;

    let model_dir = format!("{ASSETS}/models/qwen3-micro");
    let tokens = format!("{ASSETS}/data/docs/docs.tokens.safetensors");
    let calib = first_windows(&read_token_tensor(tokens.as_ref(), "calib")?, samples, 1024)?;
    let docs = read_token_tensor(tokens.as_ref(), "valid")?;
    let tok = Tokenizer::from_dir(&model_dir)?;
    let wiki = eval::load_dataset(
        &eval::Dataset::WikiText2,
        format!("{ASSETS}/data").as_ref(),
        Some(&tok),
    )?
    .ids;

    let mut model = Qwen3Model::load(&model_dir)?;
    let t0 = Instant::now();
    let cpu0 = cpu_seconds();
    let run = quantize_model(&mut model, Some(&calib), &method, &DriverOptions::default())?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
    let method_seconds: f64 = run.records.iter().map(|r| r.seconds).sum();
    let weights: Vec<_> = run.quantized.iter().map(|(_, q)| q).collect();
    let ref_bits = reference_bits(weights.iter().copied()).unwrap_or(f64::NAN);
    let n_w: usize = weights
        .iter()
        .map(|q| q.out_features() * q.in_features())
        .sum();
    let salient: f64 = weights
        .iter()
        .filter_map(|q| q.as_binary())
        .map(|b| b.salient_fraction() * (b.out_features() * b.in_features()) as f64)
        .sum::<f64>()
        / n_w as f64;
    let docs_32 = ppl(&model, &docs, Some(32));
    let wiki_32 = ppl(&model, &wiki, Some(32));
    let (rd, rw) = (26.7758, 216.0021);
    println!("config: {cfg:?}");
    println!(
        "calibration {samples} x 1024, quantization {seconds:.1} s wall ({} CPU; BiLLM itself \
         {method_seconds:.1} s of it, the rest is the calibration forward passes), {} threads",
        cpu.map_or("?".into(), |c| format!("{c:.1} s")),
        rayon::current_num_threads()
    );
    println!(
        "docs_32 {docs_32:.4} (reference {rd}, x{:.4})  wiki2_32 {wiki_32:.4} (reference {rw}, x{:.4})",
        docs_32 / rd,
        wiki_32 / rw
    );
    println!(
        "bits: reference-style {ref_bits:.4} (reference 1.1441), salient fraction over all blocks {salient:.4}, honest storage {:.4} bits/weight",
        run.bits_per_weight()
    );
    if args.iter().any(|a| a == "--all-docs") {
        println!("docs (all windows) {:.4}", ppl(&model, &docs, None));
    }
    if args.iter().any(|a| a == "--packed") {
        let ckpt = Checkpoint::open(&model_dir)?;
        let opts = DriverOptions::default().with_weight_mode(WeightMode::Packed);
        let (packed, _) = quantize_checkpoint(&ckpt, Some(&calib), &method, &opts)?;
        let p = ppl(&packed, &docs, Some(32));
        println!(
            "packed docs_32 {p:.4} (fake quant {docs_32:.4}, rel {:+.2e}); linear bytes {} (f32 {})",
            p / docs_32 - 1.0,
            packed.linear_bytes(),
            Qwen3Model::load(&model_dir)?.linear_bytes()
        );
    }
    Ok(())
}
