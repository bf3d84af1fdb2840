//! The qwen3-quant side of `scripts/bench-vs-pytorch.sh`: one workload, timed, as one JSON line
//! with the same fields as `scripts/bench_vs_pytorch/torch_bench.py`.
//!
//! ```text
//! cargo run --release --example bench_workload -- [--workload docs32|prefill]
//!     [--mode f32|bf16|w4|w4-exact] [--model DIR] [--windows 32] [--batch 4] [--seq-len 1024]
//! ```
//! * `docs32`: the evaluator's perplexity protocol ([`eval::evaluate_ppl`], what `qwen3-quant
//!   eval --dataset docs` runs) on the first `windows` windows of the bundled docs validation text.
//! * `prefill`: the same windows through every layer and `lm_head` of the last position only.
//! * `--mode f32`: the f32 forward; `bf16`: the dense products in bf16 × bf16 with f32
//!   accumulation ([`dense::set_compute`], what `qwen3-quant eval --compute bf16` selects);
//!   `w4`: the model quantized with RTN 4-bit g128 (asymmetric) and kept packed, so the linears
//!   run the packed GEMM kernels with int8 activations (VNNI, or AVX2 `vpmaddubsw`;
//!   [`kernels::set_prefill_int8`]; the quantization is not timed); `w4-exact`: the same weights with f32 activations.
//!
//! One untimed warm-up batch comes first, as on the PyTorch side. The JSON carries the workload's
//! `gflop_per_token` (the multiply-adds of every linear, the head and the causal attention, 2
//! FLOPs each), so that tokens/s converts to GFLOP/s; `--peak` prints the machine's f32 FMA
//! ceiling instead ([`kernels::bench::fma_peak_gflops`]).

use std::time::Instant;

use qwen3_quant::calib::{quantize_checkpoint, DriverOptions, WeightMode};
use qwen3_quant::core::{Bits, GroupSize, QuantScheme, RangeConvention};
use qwen3_quant::eval::{self, PplOptions, Progress};
use qwen3_quant::io::Checkpoint;
use qwen3_quant::kernels::{self, dense};
use qwen3_quant::model::Qwen3Model;
use qwen3_quant::rtn::{Rtn, RtnConfig};

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");

struct Args {
    peak: bool,
    model: String,
    workload: String,
    mode: String,
    windows: usize,
    batch: usize,
    seq_len: usize,
}

fn parse_args() -> Result<Args, Box<dyn std::error::Error>> {
    let mut a = Args {
        peak: false,
        model: format!("{ASSETS}/models/qwen3-micro"),
        workload: "docs32".into(),
        mode: "f32".into(),
        windows: 32,
        batch: 4,
        seq_len: 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--peak" => a.peak = true,
            "--model" => a.model = val()?,
            "--workload" => a.workload = val()?,
            "--mode" => a.mode = val()?,
            "--windows" => a.windows = val()?.parse()?,
            "--batch" => a.batch = val()?.parse()?,
            "--seq-len" => a.seq_len = val()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if !matches!(a.workload.as_str(), "docs32" | "prefill") {
        return Err(format!("--workload {}: expected docs32 or prefill", a.workload).into());
    }
    Ok(a)
}

fn load(a: &Args) -> Result<Qwen3Model, Box<dyn std::error::Error>> {
    match a.mode.as_str() {
        "f32" => Ok(Qwen3Model::load(&a.model)?),
        "bf16" => {
            dense::set_compute(dense::Compute::Bf16);
            Ok(Qwen3Model::load(&a.model)?)
        }
        "w4" | "w4-exact" => {
            // int8 prefill activations (VNNI) unless the exact path is asked for.
            kernels::set_prefill_int8(Some(a.mode == "w4"));
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
            Ok(quantize_checkpoint(&Checkpoint::open(&a.model)?, None, &rtn, &opts)?.0)
        }
        other => Err(format!("--mode {other}: expected f32, bf16, w4 or w4-exact").into()),
    }
}

/// Hidden states of the windows `[w0, w0 + b)` and the logits of each one's last position.
fn prefill(
    m: &Qwen3Model,
    ids: &[u32],
    w0: usize,
    b: usize,
    n: usize,
) -> Result<(), eval::EvalError> {
    let err = |e: qwen3_quant::model::ModelError| eval::EvalError::Model(e.to_string());
    let h = m
        .forward_hidden(&ids[w0 * n..(w0 + b) * n], b, n)
        .map_err(err)?;
    let hs = m.config.hidden_size;
    let last: Vec<f32> = (0..b)
        .flat_map(|j| h[((j + 1) * n - 1) * hs..(j + 1) * n * hs].iter().copied())
        .collect();
    m.lm_head(&last).map_err(err)?;
    Ok(())
}

/// FLOPs per token of the workload: every linear of every layer, the head (at every position for
/// `docs32`, at each window's last for `prefill`), and `Q·Kᵀ` and `P·V` over the causal keys.
fn gflop_per_token(c: &qwen3_quant::io::ModelConfig, workload: &str, n: usize) -> f64 {
    let (h, q, kv) = (
        c.hidden_size,
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    // A routed MLP computes its chosen experts (every layer taken as sparse).
    let mlp = match &c.moe {
        Some(m) => 3 * h * m.moe_intermediate_size * m.num_experts_per_tok,
        None => 3 * h * c.intermediate_size,
    };
    let linears = c.num_hidden_layers * (h * (q + 2 * kv) + q * h + mlp);
    let attention = c.num_hidden_layers * 2 * q * (n + 1) / 2;
    let head = h * c.vocab_size / if workload == "prefill" { n } else { 1 };
    2.0 * (linears + attention + head) as f64 / 1e9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse_args()?;
    if a.peak {
        let gflops = kernels::bench::fma_peak_gflops(2.0);
        println!(
            "{{\"impl\": \"peak\", \"threads\": {}, \"gflops\": {gflops:.1}}}",
            rayon::current_num_threads()
        );
        return Ok(());
    }
    let model = load(&a)?;
    let ids = eval::data::read_token_tensor(
        format!("{ASSETS}/data/docs/docs.tokens.safetensors").as_ref(),
        "valid",
    )?;
    let (n, b) = (a.seq_len, a.batch);
    if ids.len() < a.windows * n {
        return Err(format!("{} tokens are fewer than {} windows", ids.len(), a.windows).into());
    }
    // Warm-up, untimed.
    prefill(&model, &ids, 0, b.min(a.windows), n)?;
    let start = Instant::now();
    let mut ppl = None;
    if a.workload == "docs32" {
        let opts = PplOptions::default()
            .with_seq_len(n)
            .with_max_windows(Some(a.windows))
            .with_batch_size(b)
            .with_stride(None);
        ppl = Some(eval::evaluate_ppl(&model, &ids, &opts, Progress::Hidden)?.ppl);
    } else {
        let mut w0 = 0;
        while w0 < a.windows {
            let bb = b.min(a.windows - w0);
            prefill(&model, &ids, w0, bb, n)?;
            w0 += bb;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let ppl = ppl.map_or(String::new(), |p| format!(", \"ppl\": {p:.4}"));
    println!(
        "{{\"impl\": \"qwen3-quant\", \"compute\": \"{}\", \"workload\": \"{}\", \"windows\": {}, \"seq_len\": {n}, \"batch\": {b}, \"threads\": {}, \"seconds\": {secs:.3}, \"tokens_per_s\": {:.1}, \"gflop_per_token\": {:.5}{ppl}}}",
        a.mode,
        a.workload,
        a.windows,
        rayon::current_num_threads(),
        (a.windows * n) as f64 / secs,
        gflop_per_token(&model.config, &a.workload, n)
    );
    Ok(())
}
