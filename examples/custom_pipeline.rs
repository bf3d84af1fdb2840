//! Compose the focused crates by hand: AWQ's scale and clip search on each decoder layer, then
//! GPTQ on the scaled weights, in one pass of the one driver; compare with GPTQ alone.
//!
//! ```text
//! cargo run --release --example custom_pipeline -- [BITS] [WINDOWS]
//! ```
//!
//! Defaults: 3 bits, g128, 32 calibration windows of 1024 tokens of the bundled docs text,
//! evaluation on the first 8 docs validation windows (a few minutes on 2 cores). The protocol of
//! the README tables uses 128 windows and 32 evaluation windows.

use qwen3_quant::awq::{Awq, AwqConfig};
use qwen3_quant::calib::{first_windows, quantize_model_with, DriverOptions, Pipeline};
use qwen3_quant::core::{Bits, GroupSize, LayerTransform, QuantScheme, RangeConvention};
use qwen3_quant::eval::{self, data::read_token_tensor, PplOptions, Progress};
use qwen3_quant::gptq::{Gptq, GptqConfig};
use qwen3_quant::model::Qwen3Model;

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");

fn ppl(model: &Qwen3Model, ids: &[u32]) -> Result<f64, Box<dyn std::error::Error>> {
    let opts = PplOptions::default()
        .with_seq_len(1024)
        .with_max_windows(Some(8))
        .with_batch_size(4)
        .with_stride(None);
    Ok(eval::evaluate_ppl(model, ids, &opts, Progress::Hidden)?.ppl)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bits: u8 = args.next().map_or(Ok(3), |a| a.parse())?;
    let windows: usize = args.next().map_or(Ok(32), |a| a.parse())?;
    let dir = format!("{ASSETS}/models/qwen3-micro");
    let tokens = std::path::PathBuf::from(format!("{ASSETS}/data/docs/docs.tokens.safetensors"));
    let calib = first_windows(&read_token_tensor(&tokens, "calib")?, windows, 1024)?;
    let valid = read_token_tensor(&tokens, "valid")?;
    let bits = Bits::new(bits)?;

    // The transform: AWQ's search for the same grid GPTQ will use (asymmetric g128).
    let scheme = QuantScheme::new(bits, GroupSize::group(128)?, false, RangeConvention::Awq)?;
    let awq = Awq::new(AwqConfig::with_scheme(scheme))?;
    // The per-linear method: GPTQ with the paper's defaults (act-order, true-sequential).
    let gptq = Gptq::new(GptqConfig::default().with_bits(bits))?;
    let transforms: [&dyn LayerTransform; 1] = [&awq];
    let opts = DriverOptions::default();

    let mut plain = Qwen3Model::load(&dir)?;
    let run = quantize_model_with(&mut plain, Some(&calib), &Pipeline::new(&gptq), &opts)?;
    let plain_ppl = ppl(&plain, &valid)?;
    println!(
        "gptq      w{} g128: docs ppl {plain_ppl:.4} ({:.1} s)",
        bits.get(),
        run.seconds
    );

    let mut both = Qwen3Model::load(&dir)?;
    let pipeline = Pipeline::new(&gptq).with_transforms(&transforms);
    let run = quantize_model_with(&mut both, Some(&calib), &pipeline, &opts)?;
    let both_ppl = ppl(&both, &valid)?;
    println!(
        "{:<9} w{} g128: docs ppl {both_ppl:.4} ({:.1} s, {} scale/clip decisions)",
        pipeline.name(),
        bits.get(),
        run.seconds,
        run.transforms.len()
    );
    Ok(())
}
