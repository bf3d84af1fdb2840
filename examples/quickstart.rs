//! The main job on the bundled model: load qwen3-micro, print its docs perplexity on a few
//! windows, quantize it with RTN 4-bit g128 and print the perplexity again, and continue a prompt
//! greedily with both.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use qwen3_quant::core::{Bits, GroupSize, QuantScheme, RangeConvention};
use qwen3_quant::{calib, eval, model, rtn};

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");

fn ppl(m: &model::Qwen3Model, ids: &[u32]) -> Result<eval::PplResult, eval::EvalError> {
    let opts = eval::PplOptions {
        seq_len: 1024,
        max_windows: Some(4),
        batch_size: 4,
        stride: None,
    };
    eval::evaluate_ppl(m, ids, &opts, eval::Progress::Hidden)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = format!("{ASSETS}/models/qwen3-micro");
    let mut m = model::Qwen3Model::load(&dir)?;
    let tok = model::Tokenizer::from_dir(&dir)?;
    let valid = eval::data::read_token_tensor(
        format!("{ASSETS}/data/docs/docs.tokens.safetensors").as_ref(),
        "valid",
    )?;
    let prompt = "The kernel scheduler";
    let prompt_ids = tok.encode(prompt)?;

    let r = ppl(&m, &valid)?;
    println!(
        "qwen3-micro f32: docs ppl {:.4} on {} windows of {} tokens ({:.0} tokens/s)",
        r.ppl, r.windows, r.seq_len, r.tokens_per_s
    );
    let out = m.generate_greedy(&prompt_ids, 24, &m.config.eos_token_ids)?;
    println!("  greedy: {prompt}{}", tok.decode(&out)?);

    let scheme = QuantScheme::new(
        Bits::new(4)?,
        GroupSize::group(128)?,
        false,
        RangeConvention::Awq,
    )?;
    let method = rtn::Rtn::new(rtn::RtnConfig::new(scheme))?;
    let run = calib::quantize_model(&mut m, None, &method, &calib::DriverOptions::default())?;
    let r = ppl(&m, &valid)?;
    println!(
        "RTN w4 g128 ({} linears, {:.3} bits/weight, {:.2} s): docs ppl {:.4}",
        run.quantized.len(),
        run.bits_per_weight(),
        run.seconds,
        r.ppl
    );
    let out = m.generate_greedy(&prompt_ids, 24, &m.config.eos_token_ids)?;
    println!("  greedy: {prompt}{}", tok.decode(&out)?);
    Ok(())
}
