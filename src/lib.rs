//! # qwen3-quant
//!
//! Post-training quantization (PTQ) of Qwen3 and Qwen3-MoE language models on the CPU, in Rust:
//! calibration-based methods (GPTQ today; AWQ, SmoothQuant and BiLLM plug into the same driver),
//! round-to-nearest, packed low-bit kernels, and an evaluator that reproduces the protocols of
//! "An Empirical Study of Qwen3 Quantization" (arXiv 2505.02214).
//!
//! ## Overview
//!
//! The pipeline, one crate per stage (each re-exported here as a module):
//!
//! | stage | module | crate |
//! |---|---|---|
//! | safetensors (mmap, sharded), `config.json`, atomic writes | [`io`] | `qwen3-quant-io` |
//! | the Qwen3 / Qwen3-MoE forward pass, tokenizer | [`model`] | `qwen3-quant-model` |
//! | calibration sets, statistics, the sequential driver | [`calib`] | `qwen3-quant-calib` |
//! | schemes, quantized linears, the [`Quantizer`] trait | [`core`] | `qwen3-quant-core` |
//! | round-to-nearest | [`rtn`] | `qwen3-quant-rtn` |
//! | GPTQ | [`gptq`] | `qwen3-quant-gptq` |
//! | packed layouts and CPU kernels | [`kernels`] | `qwen3-quant-kernels` |
//! | perplexity, zero-shot tasks, MMLU, reports | [`eval`] | `qwen3-quant-eval` |
//!
//! ## Usage
//!
//! ```no_run
//! use qwen3_quant::{calib, eval, gptq, model};
//!
//! let dir = "assets/models/qwen3-micro";
//! let mut m = model::Qwen3Model::load(dir)?;
//! let tok = model::Tokenizer::from_dir(dir)?;
//!
//! // 128 windows of 1024 tokens of the bundled calibration text.
//! let ids = eval::data::read_token_tensor("assets/data/docs/docs.tokens.safetensors".as_ref(), "calib")?;
//! let set = calib::first_windows(&ids, 128, 1024)?;
//!
//! // GPTQ, 4-bit, group 128, act-order, true-sequential (the paper's settings).
//! let method = gptq::Gptq::new(gptq::GptqConfig::default())?;
//! let run = calib::quantize_model(&mut m, Some(&set), &method, &calib::DriverOptions::default())?;
//! println!("{} linears, {:.3} bits/weight", run.quantized.len(), run.bits_per_weight());
//!
//! // Perplexity with the GPTQ protocol.
//! let valid = eval::data::read_token_tensor("assets/data/docs/docs.tokens.safetensors".as_ref(), "valid")?;
//! let opts = eval::PplOptions { seq_len: 1024, max_windows: Some(32), ..Default::default() };
//! let r = eval::evaluate_ppl(&m, &valid, &opts, eval::Progress::Hidden)?;
//! println!("docs ppl {:.4}", r.ppl);
//! # let _ = tok;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
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
//! that detected it, never a panic. Outputs are written atomically; inputs are never modified.
#![deny(missing_docs)]

pub use qwen3_quant_calib as calib;
pub use qwen3_quant_core as core;
pub use qwen3_quant_eval as eval;
pub use qwen3_quant_gptq as gptq;
pub use qwen3_quant_io as io;
pub use qwen3_quant_kernels as kernels;
pub use qwen3_quant_model as model;
pub use qwen3_quant_rtn as rtn;

pub use qwen3_quant_core::{Bits, GroupSize, QuantScheme, Quantizer};
