//! What int8 prefill activations cost: qwen3-micro quantized with RTN 4-bit g128 and kept packed,
//! evaluated with the packed GEMM on f32 activations (exact: the fake-quant model's numbers) and
//! on int8 activations ([`kernels::set_prefill_int8`]). Prints the mean KL divergence per token
//! of the int8 next-token distribution from the exact one over the first `WINDOWS` docs windows
//! (1024 tokens), and both docs_32 perplexities.
//!
//! ```text
//! cargo run --release --example prefill_int8_kl [-- WINDOWS]
//! ```

use qwen3_quant::calib::{quantize_checkpoint, DriverOptions, WeightMode};
use qwen3_quant::core::{Bits, GroupSize, QuantScheme, RangeConvention};
use qwen3_quant::eval::{self, PplOptions, Progress};
use qwen3_quant::io::Checkpoint;
use qwen3_quant::kernels;
use qwen3_quant::rtn::{Rtn, RtnConfig};

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let lse = kernels::dense::log_sum_exp(row);
    row.iter().map(|&x| x as f64 - lse).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let windows: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(4);
    let dir = format!("{ASSETS}/models/qwen3-micro");
    let scheme = QuantScheme::new(
        Bits::new(4)?,
        GroupSize::group(128)?,
        false,
        RangeConvention::Awq,
    )?;
    let opts = DriverOptions::default()
        .with_weight_mode(WeightMode::Packed)
        .with_progress(false);
    let rtn = Rtn::new(RtnConfig::new(scheme))?;
    let (m, _) = quantize_checkpoint(&Checkpoint::open(&dir)?, None, &rtn, &opts)?;
    let ids = eval::data::read_token_tensor(
        format!("{ASSETS}/data/docs/docs.tokens.safetensors").as_ref(),
        "valid",
    )?;
    let (n, v) = (1024, m.config.vocab_size);
    let (mut kl, mut count) = (0.0f64, 0usize);
    for w in 0..windows {
        let chunk = &ids[w * n..(w + 1) * n];
        kernels::set_prefill_int8(Some(false));
        let exact = m.forward(chunk, 1, n)?;
        kernels::set_prefill_int8(Some(true));
        let int8 = m.forward(chunk, 1, n)?;
        for t in 0..n {
            let p = log_softmax(&exact[t * v..(t + 1) * v]);
            let q = log_softmax(&int8[t * v..(t + 1) * v]);
            kl += p
                .iter()
                .zip(&q)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>();
            count += 1;
        }
    }
    let ppl_opts = PplOptions::default()
        .with_seq_len(n)
        .with_max_windows(Some(32))
        .with_batch_size(4)
        .with_stride(None);
    kernels::set_prefill_int8(Some(false));
    let exact = eval::evaluate_ppl(&m, &ids, &ppl_opts, Progress::Hidden)?;
    kernels::set_prefill_int8(Some(true));
    let int8 = eval::evaluate_ppl(&m, &ids, &ppl_opts, Progress::Hidden)?;
    println!(
        "RTN w4 g128 packed, qwen3-micro: KL(exact || int8 activations) = {:.3e} nats/token over {count} tokens; docs_32 ppl exact {:.4} ({:.0} tok/s), int8 {:.4} ({:.0} tok/s)",
        kl / count as f64,
        exact.ppl,
        exact.tokens_per_s,
        int8.ppl,
        int8.tokens_per_s
    );
    Ok(())
}
