//! The main job on the bundled model, through the facade: open qwen3-micro, measure its docs
//! perplexity (the reference protocol: the first 32 windows of 1024 tokens), quantize it with
//! GPTQ 4-bit g128 (act-order, true-sequential) on 32 windows of 1024 tokens of the bundled
//! calibration text, measure again, save a GPTQ checkpoint, load it back (packed, run by the
//! low-bit kernels), measure it and continue a prompt with it. (The reference protocol
//! calibrates on 128 windows: `Calibration::docs().windows(128, 1024)`, 18.79 in the README's
//! table, about a minute longer; 32 windows keep this example under two minutes on two cores.)
//!
//! ```text
//! cargo run --release --example quickstart [-- OUT_DIR]
//! ```
//!
//! Expected: docs ppl 18.5676 → about 18.8, the reloaded checkpoint within 0.1% of the
//! in-memory model (its scales are f16), about 4.2 bits per weight.

use std::time::Instant;

use qwen3_quant::{
    Calibration, ConsoleProgress, Evaluation, Format, Generation, GptqConfig, Model, Quantize,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let out = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("qwen3-micro-gptq-w4g128"));
    let bars = ConsoleProgress::new();
    let docs_32 = Evaluation::perplexity(["docs"]).seq_len(1024).windows(32);
    let ppl = |m: &Model| -> Result<f64, qwen3_quant::Error> {
        Ok(docs_32
            .run(m, &bars)?
            .ppl
            .get("docs")
            .map_or(f64::NAN, |r| r.ppl))
    };
    let prompt = "The kernel scheduler";

    let model = Model::open(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/models/qwen3-micro"
    ))?;
    let before = ppl(&model)?;
    println!("qwen3-micro (f32): docs ppl {before:.4}");

    let quantized = Quantize::gptq(
        GptqConfig::default()
            .with_bits(4)
            .with_group_size(Some(128))
            .with_act_order(true),
    )
    .calibration(Calibration::docs().windows(32, 1024))
    .progress(&bars)
    .run(&model)?;
    let after = ppl(&quantized)?;
    println!(
        "GPTQ w4 g128: docs ppl {after:.4} ({} linears, {:.3} bits/weight, quantized in {:.1} s)",
        quantized.linears(),
        quantized.bits_per_weight(),
        quantized.seconds()
    );

    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    let written = quantized.save(&out, Format::Gptq)?;
    println!(
        "saved {} ({:.2} MB of tensors; serving: {})",
        written.dir.display(),
        written.tensor_file_bytes as f64 / 1e6,
        written.serving.join("; ")
    );

    let reloaded = Model::open(&out)?;
    let back = ppl(&reloaded)?;
    println!(
        "reloaded ({} checkpoint, packed): docs ppl {back:.4}",
        reloaded.format().unwrap_or("?")
    );
    let text = reloaded.generate(prompt, &Generation::greedy(24))?;
    println!("  greedy: {prompt}{text}");
    println!("total {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
