//! # qwen3-quant
//!
//! Post-training quantization (PTQ) of Qwen3 and Qwen3-MoE language models on the CPU, in Rust:
//! RTN, GPTQ, AWQ (and AWQ's scales followed by GPTQ), SmoothQuant and BiLLM through one
//! sequential driver, packed low-bit kernels, checkpoint formats the serving stacks read, and an
//! evaluator that reproduces the protocols of "An Empirical Study of Qwen3 Quantization"
//! (arXiv 2505.02214).
//!
//! ## Quantize a model in ten lines
//!
//! ```
//! # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
//! use qwen3_quant::{Calibration, Evaluation, Format, Generation, GptqConfig, Model, Quantize};
//!
//! let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
//! let quantized = Quantize::gptq(GptqConfig::default().with_bits(4).with_group_size(Some(128)).with_act_order(true))
//!     .calibration(Calibration::docs().windows(8, 256)) // the study: Calibration::c4(), 128 x 2048
//!     .run(&model)?;
//! let report = quantized.evaluate(&Evaluation::perplexity(["docs"]).seq_len(256).windows(4))?;
//! println!("docs ppl {:.3}", report.ppl.get("docs").unwrap().ppl);
//! let out = std::env::temp_dir().join(format!("qwen3-quant-doc-{}", std::process::id()));
//! quantized.save(&out, Format::Gptq)?; // loads in vLLM, transformers, GPTQModel
//! println!("{}", Model::open(&out)?.generate("The kernel scheduler", &Generation::greedy(16))?);
//! # std::fs::remove_dir_all(&out).ok();
//! # Ok::<(), qwen3_quant::Error>(())
//! ```
//!
//! ## The facade
//!
//! | item | what it does |
//! |---|---|
//! | [`Model`] | open any model directory (full precision or a quantized checkpoint); logits and weights as `ndarray`; [`Model::evaluate`], [`Model::generate`] |
//! | [`Quantize`] | one constructor per method ([`Quantize::rtn`], [`Quantize::gptq`], [`Quantize::awq`], [`Quantize::awq_then_gptq`], [`Quantize::smoothquant`], [`Quantize::billm`]), then [`Quantize::calibration`], [`Quantize::progress`], [`Quantize::run`] |
//! | [`RtnConfig`], [`GptqConfig`], [`AwqConfig`], [`SmoothQuantConfig`], [`BillmConfig`] | settings whose `Default` is the study's, changed with `with_*` setters (the structs are `#[non_exhaustive]`: fields may be added) |
//! | [`QuantizedModel`] | the result: a [`Model`] plus the run's record; [`QuantizedModel::save`] in a [`Format`] |
//! | [`Calibration`], [`Evaluation`], [`Generation`] | calibration data, evaluation protocol, decoding settings |
//! | [`ProgressSink`] | where progress goes: a closure, [`ConsoleProgress`] (bars with ETA) or [`NoProgress`] |
//! | [`quantize_weight`], [`gptq_weight`] | one matrix at a time, `ndarray` in and out |
//! | [`sweep`] | the study's grid (methods × bits × groups), resumable, sharded, with tables and plots |
//! | [`data`] | where the bundled evaluation data is found once installed |
//!
//! ## The focused crates
//!
//! For pipelines of your own, each stage is re-exported as a module:
//!
//! | stage | module | crate |
//! |---|---|---|
//! | safetensors (mmap, sharded), `config.json`, atomic writes | [`io`] | `qwen3-quant-io` |
//! | packed layouts and CPU kernels | [`kernels`] | `qwen3-quant-kernels` |
//! | schemes, quantized linears, the [`Quantizer`] and `LayerTransform` traits | [`core`] | `qwen3-quant-core` |
//! | the Qwen3 / Qwen3-MoE forward pass, tokenizer, generation | [`model`] | `qwen3-quant-model` |
//! | calibration sets, statistics, the sequential driver and its `Pipeline` | [`calib`] | `qwen3-quant-calib` |
//! | the methods | [`rtn`], [`gptq`], [`awq`], [`smoothquant`], [`billm`] | `qwen3-quant-{rtn,gptq,awq,smoothquant,billm}` |
//! | checkpoint formats (GPTQ, AWQ, compressed-tensors, native) | [`formats`] | `qwen3-quant-formats` |
//! | perplexity, zero-shot tasks, MMLU, reports, plots | [`eval`] | `qwen3-quant-eval` |
//!
//! ```
//! # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
//! // AWQ's scales, then GPTQ, composed by hand from the focused crates.
//! use qwen3_quant::{awq, calib, core::LayerTransform, gptq, model};
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro");
//! let mut m = model::Qwen3Model::load(dir)?;
//! let ids: Vec<u32> = (0..2048).map(|i| (i * 7919 % 8000) as u32).collect();
//! let set = calib::first_windows(&ids, 4, 256)?;
//! let mut search = awq::AwqConfig::default(); // 4-bit g128, the reference's grid
//! (search.grid, search.clip) = (4, false); // coarser and faster, for the example
//! let scales = awq::Awq::new(search)?;
//! let method = gptq::Gptq::new(gptq::GptqConfig::default())?;
//! let transforms: [&dyn LayerTransform; 1] = [&scales];
//! let pipeline = calib::Pipeline::new(&method).with_transforms(&transforms);
//! let run = calib::quantize_model_with(&mut m, Some(&set), &pipeline, &Default::default())?;
//! assert_eq!((pipeline.name(), run.quantized.len()), ("awq+gptq".to_string(), 56));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Crate features
//!
//! The libraries have no optional Cargo features: SIMD kernels are chosen at run time (AVX2,
//! AVX-512, NEON, with a scalar fallback), and the bundled models and data sets are not part of
//! the published crates. Tests and examples that need them find them through
//! [`io::assets`] (`QWEN3_QUANT_ASSETS`, else the repository's `assets/`) and skip otherwise.
//! The command-line crate `qwen3-quant-cli` has one feature, `embedded-data` (default), which
//! embeds the small evaluation sets in the binary when it is built from the repository.
//!
//! ## Numerics and determinism
//!
//! Quantization rounds half to even (`round_ties_even`), as `torch.round` does. Forward passes run
//! in f32; Hessians accumulate in f32 as the reference does, and GPTQ factorises them in f64.
//! Multi-threaded reductions may change the last bits between machines with different core counts.
//!
//! ## Errors
//!
//! Bad input — truncated or lying safetensors headers, wrong dtypes or shapes, missing config
//! fields, NaN weights, singular Hessians, impossible bit widths — is a typed error of the crate
//! that detected it (wrapped in [`Error`]), never a panic. Outputs are written atomically; inputs
//! are never modified.
#![deny(missing_docs)]

mod calibration;
mod config;
pub mod data;
mod error;
mod evaluate;
mod matrix;
mod model_handle;
mod progress;
mod quantize;
pub mod sweep;

pub use calibration::{Calibration, PAPER_SAMPLES, PAPER_SEQ_LEN};
pub use config::{AwqConfig, GptqConfig, RtnConfig, SmoothQuantConfig, PAPER_GROUP_SIZE};
pub use error::{Error, Result};
pub use evaluate::{Evaluation, TASKS};
pub use matrix::{gptq_weight, quantize_weight, QuantizedMatrix};
pub use model_handle::{Generation, Model};
pub use progress::{ConsoleProgress, NoProgress, ProgressEvent, ProgressSink, Stage};
pub use quantize::{Quantize, QuantizedModel};
pub use qwen3_quant_calib::ExpertPolicy;
pub use qwen3_quant_kernels::dense::Compute;

/// BiLLM's settings; `Default` is the study's command (`run.py c4 braq --blocksize 128
/// --salient_metric hessian`), the reference's quirks included.
///
/// ```
/// let c = qwen3_quant::BillmConfig::default();
/// assert_eq!((c.block_size, c.percdamp), (128, 0.01));
/// ```
pub type BillmConfig = qwen3_quant_billm::BillmConfig;

pub use qwen3_quant_core::{Bits, GroupSize, LinearId, LinearKind, QuantScheme, Quantizer};
pub use qwen3_quant_eval::{EvalReport, PplResult};
pub use qwen3_quant_formats::{Format, WriteReport};

/// The `ndarray` version of this API's arrays.
pub use ndarray;

pub use qwen3_quant_awq as awq;
pub use qwen3_quant_billm as billm;
pub use qwen3_quant_calib as calib;
pub use qwen3_quant_core as core;
pub use qwen3_quant_eval as eval;
pub use qwen3_quant_formats as formats;
pub use qwen3_quant_gptq as gptq;
pub use qwen3_quant_io as io;
pub use qwen3_quant_kernels as kernels;
pub use qwen3_quant_model as model;
pub use qwen3_quant_rotate as rotate;
pub use qwen3_quant_rtn as rtn;
pub use qwen3_quant_smoothquant as smoothquant;
