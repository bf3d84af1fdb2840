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
    /// The study's grid (methods x bits x groups), resumable, sharded, with tables and plots.
    Sweep(SweepArgs),
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
            Command::Sweep(a) => a.json,
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
    /// Arithmetic of the dense products: f32 (exact), or bf16 (activations rounded to bf16,
    /// f32 accumulation; AVX-512-BF16 where the CPU has it; faster, perplexity within 0.1%).
    #[arg(long, value_enum, default_value_t = ComputeArg::F32)]
    pub compute: ComputeArg,
    /// Quantized checkpoints: quantize the prefill activations of packed linears to int8 per
    /// 32-column block and multiply in integers (AVX-512-VNNI for any code width, AVX2 for
    /// codes of up to 4 bits; f32 activations elsewhere). Faster; +0.1% perplexity on 4-bit
    /// qwen3-micro. Default: f32 activations (exact), or `QWEN3_QUANT_GEMM=q8`.
    #[arg(long)]
    pub int8_activations: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ComputeArg {
    F32,
    Bf16,
}

/// `--sub-block-inputs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubBlockInputsArg {
    Auto,
    Keep,
    Recompute,
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
pub enum ActExecArg {
    Auto,
    Integer,
    Fake,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AwqThenArg {
    Rtn,
    Gptq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SalientMetricArg {
    Hessian,
    Magnitude,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Native,
    Gptq,
    Awq,
    CompressedTensors,
}

impl QuantizeArgs {
    /// `--method` (GPTQ when only `--recipe` names it).
    pub fn method(&self) -> MethodArg {
        self.method.unwrap_or(MethodArg::Gptq)
    }
}

#[derive(Debug, Clone, Args)]
pub struct QuantizeArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Quantization method (implied by --recipe).
    #[arg(long, value_enum, required_unless_present = "recipe")]
    pub method: Option<MethodArg>,
    /// A named combination of options: `best` = GPTQ with act-order, static groups, the --mse range search, --damp 0.05, --refine 5 and --refit-scales 2 (docs/beyond-the-study.md).
    #[arg(long)]
    pub recipe: Option<String>,
    /// Weight bits.
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
    /// Activation bits: per-token symmetric quantization of every decoder linear's input (SmoothQuant's settings; any method).
    #[arg(long)]
    pub act_bits: Option<u8>,
    /// How quantized activations run: integer int8 products where the weights allow it (auto), always integer, or fake quantization.
    #[arg(long, value_enum, default_value = "auto")]
    pub act_exec: ActExecArg,
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
    /// Quantize [k,v,q] -> [o] -> [up,gate] -> [down] with inputs recomputed between groups (on by
    /// default; on MoE layers the groups are every expert's gate/up, then every expert's down).
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
    /// SmoothQuant without smoothing: per-channel weights and per-token activations only (what the study's code measured).
    #[arg(long)]
    pub no_smooth: bool,
    /// SmoothQuant: also smooth o_proj's input into v_proj's rows (one factor per value channel under GQA).
    #[arg(long)]
    pub smooth_o: bool,
    /// SmoothQuant: also smooth down_proj's input into up_proj's rows.
    #[arg(long)]
    pub smooth_down: bool,
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
    /// RTN and GPTQ: search a clipping range per group/channel minimising the 2.4-norm rounding error (GPTQ's mse grid).
    #[arg(long)]
    pub mse: bool,
    /// GPTQ: the --mse range search with each column's error weighted by the Hessian diagonal (implies --mse).
    #[arg(long)]
    pub mse_hessian: bool,
    /// GPTQ: asymmetric calibration (GPTAQ's objective) with correction strength ALPHA in (0, 1]: each linear is fitted, on the quantized model's inputs, to the full-precision model's outputs. Runs the full-precision model alongside (twice the activation memory, about 3x the forward time); MoE experts are paired at the tokens the quantized model routes to them; a linear calibrated on fewer than 64 tokens per input feature (a rarely routed expert) keeps plain GPTQ.
    #[arg(long, value_name = "ALPHA")]
    pub gptaq: Option<f32>,
    /// GPTQ: first-order error compensation (FOEM) with strength BETA in (0, 1): each latent column's drift from its target, accumulated by the earlier columns' updates, is treated as the loss gradient's first-order term and partly given back (the FOEM authors recommend 0.1-0.25).
    #[arg(long, value_name = "BETA")]
    pub foem: Option<f32>,
    /// GPTQ: after the column loop, up to N coordinate-descent passes over the codes on the same grid (each code moves to the grid point that minimises the layer loss given all the others; QuantEase's refinement). Stops early once a pass moves nothing.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub refine: usize,
    /// GPTQ with --refine: N rounds that refit every row's scales to its codes by least squares under the same layer loss (zeros and layout unchanged), each followed by the --refine passes again.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub refit_scales: usize,
    /// Rotate the residual stream with a randomized Hadamard matrix folded into the weights before quantizing (QuaRot style; exact in full precision, no run-time cost).
    #[arg(long)]
    pub rotate: bool,
    /// Seed of --rotate's random signs.
    #[arg(long, default_value_t = 0)]
    pub rotate_seed: u64,
    /// AWQ: scale grid size (ratios i/N, i < N).
    #[arg(long, default_value_t = 20)]
    pub awq_grid: usize,
    /// AWQ: skip the per-channel scale search (clipping only).
    #[arg(long)]
    pub no_scale_search: bool,
    /// AWQ: skip the clip search.
    #[arg(long)]
    pub no_clip: bool,
    /// AWQ: also scale v_proj -> o_proj under GQA (one scale per value channel; the reference skips it).
    #[arg(long)]
    pub awq_vo_gqa: bool,
    /// AWQ: the per-linear quantizer applied after the scale/clip transform (rtn = the reference; gptq = AWQ scales, then GPTQ).
    #[arg(long, value_enum, default_value = "rtn")]
    pub awq_then: AwqThenArg,
    /// Arithmetic of the calibration forwards and of AWQ's candidate scoring: f32 (exact, the
    /// reference), or bf16 (activations and weights rounded to bf16, f32 accumulation;
    /// AVX-512-BF16 where the CPU has it). `--eval` always runs f32.
    #[arg(long, value_enum, default_value_t = ComputeArg::F32)]
    pub compute: ComputeArg,
    /// MoE experts that few calibration tokens reach: `threshold:N` (routed statistics, RTN
    /// below N routed tokens; default threshold:1), `all-tokens` (every token through every
    /// expert for statistics only, outputs still routed), or `threshold-then-all:N` (routed
    /// statistics from N tokens, all-token statistics below).
    #[arg(long, default_value = "threshold:1", value_parser = parse_expert_policy)]
    pub expert_policy: qwen3_quant_calib::ExpertPolicy,
    /// After the linears that read a norm are quantized, refit the norm's weight to them in
    /// closed form (least squares on their outputs over the calibration inputs, the ridge
    /// RIDGE pulling the factors towards 1; default 0.01). Hessian methods (GPTQ, BiLLM) only.
    /// No run-time cost: the new norm weights are stored in any format.
    #[arg(long, value_name = "RIDGE", num_args = 0..=1, default_missing_value = "0.01")]
    pub norm_refit: Option<f64>,
    /// MoE, with --gptaq: after each layer's attention is quantized, refit the full-precision
    /// router by least squares so that its logits on the quantized model's inputs match the
    /// full-precision model's (DAMP: relative dampening of the fit, default 0.01). True-sequential
    /// calibration only. No run-time cost: the router stays a full-precision tensor.
    #[arg(long, value_name = "DAMP", num_args = 0..=1, default_missing_value = "0.01")]
    pub router_refit: Option<f64>,
    /// MoE: weight each token of an expert's calibration statistics by its routing weight
    /// (the expert's error reaches the layer's output scaled by it); with `all-tokens`, every
    /// token by the weight the router would have given it.
    #[arg(long)]
    pub routing_weighted: bool,
    /// Megabytes the calibration activations may take (default: what the system reports
    /// available). Checked before anything is allocated; the error says how many samples fit.
    #[arg(long)]
    pub memory_budget_mb: Option<u64>,
    /// True-sequential calibration (GPTQ): keep every window's attention outputs and down_proj
    /// inputs between their statistics and the layer's output (keep), recompute them chunk by
    /// chunk (recompute: same results, one more pass of those sub-blocks, no buffer of
    /// samples × seq × intermediate floats), or keep them when they fit in half of the memory
    /// (auto).
    #[arg(long, value_enum, default_value_t = SubBlockInputsArg::Auto)]
    pub sub_block_inputs: SubBlockInputsArg,
    /// BiLLM: columns per block (structural search, means/scales and error-feedback span; a multiple of 64).
    #[arg(long, default_value_t = 128)]
    pub blocksize: usize,
    /// BiLLM: how salient columns are ranked (hessian = w²/d², the reference command; magnitude = |w|).
    #[arg(long, value_enum, default_value = "hessian")]
    pub salient_metric: SalientMetricArg,
    /// BiLLM fixes of the reference's quirks (comma-separated): weights (search on W, not on w²/d²), quantiles (split quantiles over the non-salient entries only), intra (GPTQ feedback inside each block).
    #[arg(long, value_delimiter = ',')]
    pub billm_fix: Vec<String>,
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
    /// BiLLM binary weights instead of packed codes (--bits is then ignored).
    #[arg(long)]
    pub binary: bool,
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
    /// Wrap the prompt in the model's chat template (tokenizer_config.json) as one user turn.
    #[arg(long)]
    pub chat: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Full-precision model directory (not with --merge).
    #[arg(long, required_unless_present = "merge")]
    pub model: Option<PathBuf>,
    /// Grid: paper (the study's: RTN, GPTQ, AWQ at w8/w4/w3/w2 x g128/per-channel; SmoothQuant W8A8/W4A8/W4A4; BiLLM), extended (adds AWQ then GPTQ) or beyond (RTN/GPTQ/AWQ at w4/w3/w2 g128 next to the combinations of docs/beyond-the-study.md).
    #[arg(long, default_value = "paper")]
    pub grid: String,
    /// Only these methods: rtn, gptq, awq, awqgptq, smoothquant, billm, gptqmse, awqgptqmse, hadgptq, hadgptqmse, gptqfoem, best (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Only these weight bit widths (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub bits: Vec<u8>,
    /// Only these group sizes: a number, or pc for per-channel (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Leave out the full-precision baseline row.
    #[arg(long)]
    pub no_baseline: bool,
    /// Perplexity datasets (default: wikitext2,c4, plus docs when the model uses the bundled micro tokenizer).
    #[arg(long, value_delimiter = ',')]
    pub dataset: Vec<String>,
    /// Evaluate only the first N windows of each dataset.
    #[arg(long)]
    pub windows: Option<usize>,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    /// Windows (or requests) per forward batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Zero-shot tasks and/or mmlu (opt-in), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Score only the first K examples of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Calibration data: c4, docs, wikitext2 or a text file.
    #[arg(long, default_value = "c4")]
    pub calib: String,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 2048)]
    pub calib_seq_len: usize,
    /// Random calibration windows with this seed (default: the first windows).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output folder (cells/, results.md/.csv/.json, plots/).
    #[arg(long, default_value = "qwen3-quant-sweep")]
    pub out: PathBuf,
    /// Run only shard I of N (0-based): cells k with k mod N = I.
    #[arg(long)]
    pub shard: Option<String>,
    /// Join the results of these sweep folders (one per shard) into --out.
    #[arg(long, num_args = 1.., conflicts_with = "model")]
    pub merge: Vec<PathBuf>,
    /// Keep quantized weights packed (evaluated on the low-bit kernels).
    #[arg(long)]
    pub packed: bool,
    /// Arithmetic of the AWQ cells' search: f32 (exact) or bf16 (about 1.7x faster); other methods and all evaluation stay f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub compute: ComputeArg,
    /// Folder with the evaluation and calibration data (default: found automatically).
    #[arg(long, env = "QWEN3_QUANT_DATA")]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `--expert-policy`: `threshold:N`, `all-tokens` or `threshold-then-all:N`.
pub fn parse_expert_policy(v: &str) -> Result<qwen3_quant_calib::ExpertPolicy, String> {
    use qwen3_quant_calib::ExpertPolicy;
    let count = |n: &str| {
        n.parse::<usize>()
            .map_err(|_| format!("`{n}` is not a token count"))
    };
    match v.split_once(':') {
        None if v == "all-tokens" => Ok(ExpertPolicy::AllTokens),
        Some(("threshold", n)) => Ok(ExpertPolicy::Threshold {
            min_tokens: count(n)?,
        }),
        Some(("threshold-then-all", n)) => Ok(ExpertPolicy::ThresholdThenAllTokens {
            min_tokens: count(n)?,
        }),
        _ => Err(format!(
            "`{v}`: expected threshold:N, all-tokens or threshold-then-all:N"
        )),
    }
}
