//! Command-line definitions (clap derive). Names are fixed by `docs/cli-contract.md`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Post-training quantization of Qwen3 models on the CPU.
#[derive(Debug, Parser)]
#[command(name = "qwen3-quant", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Architecture, tensors, dtypes, quantization scheme and size of a model directory.
    Inspect(InspectArgs),
    /// Perplexity and zero-shot / MMLU accuracy of a model.
    Eval(EvalArgs),
    /// Quantize a model with RTN, GPTQ, AWQ, SmoothQuant or BiLLM.
    Quantize(QuantizeArgs),
    /// Time the packed matrix kernels against f32.
    Bench(BenchArgs),
    /// Continue a prompt.
    Generate(GenerateArgs),
}

impl Command {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        match self {
            Command::Inspect(a) => a.json,
            Command::Eval(a) => a.json,
            Command::Quantize(a) => a.json,
            Command::Bench(a) => a.json,
            Command::Generate(a) => a.json,
        }
    }
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Model directory.
    pub dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model directory (Hugging Face Qwen3 / Qwen3-MoE, or a checkpoint this tool wrote).
    #[arg(long)]
    pub model: PathBuf,
    /// Perplexity datasets: docs, wikitext2, wikitext2-raw, c4, or a UTF-8 text file (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub dataset: Vec<String>,
    /// Evaluate only the first N windows.
    #[arg(long)]
    pub windows: Option<usize>,
    /// Tokens per window.
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    /// Windows (or requests) per forward batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Zero-shot tasks and/or mmlu, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Score only the first K examples of each task (lm-eval's --limit).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Folder with the evaluation data (default: the bundled assets/data).
    #[arg(long, env = "QWEN3_QUANT_DATA")]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    Rtn,
    Gptq,
    Awq,
    Smoothquant,
    Billm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Native,
    Gptq,
    Awq,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Quantization method.
    #[arg(long, value_enum)]
    pub method: MethodArg,
    /// Weight bits.
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
    /// Activation bits (SmoothQuant).
    #[arg(long)]
    pub act_bits: Option<u8>,
    /// Group size along the input dimension.
    #[arg(long, default_value_t = 128, conflicts_with = "per_channel")]
    pub group_size: usize,
    /// One scale per output channel instead of per group.
    #[arg(long)]
    pub per_channel: bool,
    /// Symmetric quantization (default asymmetric).
    #[arg(long)]
    pub sym: bool,
    /// Quantize columns by decreasing Hessian diagonal (GPTQ; on by default).
    #[arg(long, overrides_with = "no_act_order")]
    pub act_order: bool,
    /// Keep the natural column order (GPTQ).
    #[arg(long)]
    pub no_act_order: bool,
    /// Quantize [k,v,q] -> [o] -> [up,gate] -> [down] with inputs recomputed between groups (on by default).
    #[arg(long, overrides_with = "no_true_sequential")]
    pub true_sequential: bool,
    /// Collect all statistics of a layer in one pass over the full-precision layer.
    #[arg(long)]
    pub no_true_sequential: bool,
    /// GPTQ with act-order: compute group parameters up front on the original weights (static groups).
    #[arg(long)]
    pub static_groups: bool,
    /// Dampening as a fraction of the mean Hessian diagonal (GPTQ, BiLLM).
    #[arg(long, default_value_t = 0.01)]
    pub damp: f32,
    /// Migration strength (SmoothQuant).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
    /// RTN range convention: gptq (range widened to include 0) or awq (plain min/max).
    #[arg(long)]
    pub convention: Option<String>,
    /// Keep quantized layers as packed low-bit codes run by the CPU kernels (only the layer being
    /// quantized is ever held in f32); default: dequantized f32 weights (fake quantization).
    #[arg(long)]
    pub packed: bool,
    /// Hold the calibration activations in bf16 (half the memory) instead of f32.
    #[arg(long)]
    pub bf16_activations: bool,
    /// RTN: search a clipping range per group/channel minimising the 2.4-norm error (GPTQ's grid).
    #[arg(long)]
    pub mse: bool,
    /// Calibration data: docs, c4, wikitext2 or a text file.
    #[arg(long, default_value = "c4")]
    pub calib: String,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Tokens per calibration window (and evaluation window for --eval).
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    /// Random calibration windows with this seed (default: the first N windows).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory for the quantized checkpoint.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Checkpoint format.
    #[arg(long, value_enum, default_value = "native")]
    pub format: FormatArg,
    /// Continue an interrupted run that wrote to the same --out.
    #[arg(long)]
    pub resume: bool,
    /// Evaluate after quantizing: NAME:WINDOWS[,NAME:WINDOWS...] (NAME or NAME:all = every window).
    #[arg(long, value_delimiter = ',')]
    pub eval: Vec<String>,
    /// Folder with the evaluation and calibration data (default: the bundled assets/data).
    #[arg(long, env = "QWEN3_QUANT_DATA")]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelArg {
    Gemv,
    Gemm,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// gemv (one token) or gemm (many tokens).
    #[arg(value_enum)]
    pub kernel: KernelArg,
    /// Weight bits (32 = f32).
    #[arg(long)]
    pub bits: u8,
    /// Group size.
    #[arg(long, default_value_t = 128)]
    pub group_size: usize,
    /// Output features N.
    #[arg(long)]
    pub rows: usize,
    /// Input features K.
    #[arg(long)]
    pub cols: usize,
    /// Tokens (gemm).
    #[arg(long, default_value_t = 512)]
    pub tokens: usize,
    /// Distinct weight matrices cycled through (large enough to measure memory, not cache).
    #[arg(long, default_value_t = 1)]
    pub layers: usize,
    /// Seconds of timing per kernel.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// gemv: time the exact f32-activation kernel instead of the default int8-activation one.
    #[arg(long)]
    pub exact: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the K most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling mass.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}
