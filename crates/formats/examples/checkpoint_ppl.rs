//! Perplexity of any checkpoint directory on the bundled docs validation text, loaded with
//! `load_model` (quantized linears packed): the figures of `docs/checkpoints.md`.
//!
//! ```sh
//! cargo run --release -p qwen3-quant-formats --example checkpoint_ppl -- assets/models/qwen3-micro-gptq-w4g128-actorder
//! cargo run --release -p qwen3-quant-formats --example checkpoint_ppl -- assets/models/qwen3-moe-micro-gptq-w4g128 32
//! ```
//! The optional second argument limits the number of 1024-token windows (default: all).

use qwen3_quant_eval::{data::read_token_tensor, evaluate_ppl, PplOptions, Progress};
use qwen3_quant_formats::{load_model, LoadOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: checkpoint_ppl DIR [WINDOWS]")?;
    let windows: Option<usize> = args.next().map(|w| w.parse()).transpose()?;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let ids = read_token_tensor(
        format!("{root}/assets/data/docs/docs.tokens.safetensors").as_ref(),
        "valid",
    )?;
    let t = std::time::Instant::now();
    let loaded = load_model(dir.as_ref(), &LoadOptions::default())?;
    let load_s = t.elapsed().as_secs_f64();
    let opts = PplOptions::default()
        .with_seq_len(1024)
        .with_max_windows(windows);
    let r = evaluate_ppl(&loaded.model, &ids, &opts, Progress::Hidden)?;
    println!(
        "{dir}: format {}, {} packed linears, linear bytes {}, loaded in {load_s:.2} s; docs ppl {:.4} over {} windows of {} ({:.0} tokens/s)",
        loaded.quant.as_ref().map_or("full-precision", |q| q.format_name()),
        loaded.packed_linears,
        loaded.model.linear_bytes(),
        r.ppl,
        r.windows,
        r.seq_len,
        r.tokens_per_s
    );
    Ok(())
}
