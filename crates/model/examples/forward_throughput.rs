//! Forward throughput and perplexity of the docs_32 workload (32 windows × 1024 tokens of the
//! bundled validation text): the workload the side-by-side benchmarks use (`docs/performance.md`).
//!
//! ```text
//! cargo run --release -p qwen3-quant-model --example forward_throughput -- [MODEL_DIR] [WINDOWS] [BATCH]
//! ```
//! Prints tokens/s and the perplexity (which must read 18.5676 for qwen3-micro at 32 windows).

use std::time::Instant;

use qwen3_quant_io::SafetensorsFile;
use qwen3_quant_model::Qwen3Model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets");
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| format!("{root}/models/qwen3-micro"));
    let windows: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let seq = 1024;
    let model = Qwen3Model::load(&dir)?;
    let docs = SafetensorsFile::open(format!("{root}/data/docs/docs.tokens.safetensors"))?;
    let ids: Vec<u32> = docs
        .tensor("valid")?
        .to_i64()?
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let v = model.config.vocab_size;
    let mut nll_sum = 0.0f64;
    let start = Instant::now();
    let mut w = 0;
    let mut forward_secs = 0.0f64;
    while w < windows {
        let b = batch.min(windows - w);
        let chunk = &ids[w * seq..(w + b) * seq];
        let t0 = Instant::now();
        let logits = model.forward(chunk, b, seq)?;
        forward_secs += t0.elapsed().as_secs_f64();
        for s in 0..b {
            let mut nll = 0.0f64;
            for t in 0..seq - 1 {
                let row = &logits[(s * seq + t) * v..(s * seq + t + 1) * v];
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let lse = row
                    .iter()
                    .map(|x| ((x - max) as f64).exp())
                    .sum::<f64>()
                    .ln()
                    + max as f64;
                nll += lse - row[chunk[s * seq + t + 1] as usize] as f64;
            }
            nll_sum += nll / (seq - 1) as f64;
        }
        w += b;
    }
    let secs = start.elapsed().as_secs_f64();
    let tokens = windows * seq;
    println!(
        "{{\"windows\": {windows}, \"seq_len\": {seq}, \"batch\": {batch}, \"threads\": {}, \"seconds\": {secs:.3}, \"forward_seconds\": {forward_secs:.3}, \"forward_tokens_per_s\": {:.1}, \"tokens_per_s\": {:.1}, \"ppl\": {:.4}}}",
        rayon::current_num_threads(),
        tokens as f64 / forward_secs,
        tokens as f64 / secs,
        (nll_sum / windows as f64).exp()
    );
    Ok(())
}
