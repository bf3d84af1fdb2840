//! Calibration for qwen3-quant: calibration sets, statistics accumulators and the one sequential
//! driver that every quantization method plugs into ([`quantize_model`]).
//!
//! Data flows one way: the driver runs the model (`qwen3-quant-model`) layer by layer, collects
//! the statistics a method asks for ([`qwen3_quant_core::StatsRequest`]), hands each linear to the
//! method ([`qwen3_quant_core::Quantizer`]) and swaps the result back into the model. Methods see
//! only f32 weights and statistics, never the model or its storage.
//!
//! ```
//! # let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else { return Ok(()); };
//! use qwen3_quant_calib::{first_windows, project};
//! use qwen3_quant_core::StatsRequest;
//! let cfg = qwen3_quant_io::ModelConfig::from_file(concat!(
//!     env!("CARGO_MANIFEST_DIR"),
//!     "/../../assets/models/qwen3-micro/config.json"
//! ))?;
//! // The parity protocol's calibration set: the first 128 windows of 1024 tokens.
//! let ids: Vec<u32> = (0..131_072).map(|i| (i % 8000) as u32).collect();
//! let set = first_windows(&ids, 128, 1024)?;
//! assert_eq!(set.tokens(), 131_072);
//! // What a GPTQ run over it will cost, before starting it.
//! let p = project(&cfg, set.len(), set.seq_len, StatsRequest { hessian: true, channel_stats: false }, true);
//! assert!(p.total_flops > 1e13);
//! // Then: `quantize_model(&mut model, Some(&set), &method, &DriverOptions::default())` with any
//! // `Quantizer` (see the facade crate's docs for a complete GPTQ example).
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod activations;
pub mod data;
pub mod driver;
mod error;
mod paired;
pub mod projection;
pub mod resume;
pub mod stats;
mod transform_ctx;

pub use activations::{ActivationDtype, ActivationStore};
pub use data::{awq_blocks, first_windows, gptq_windows, random_windows, CalibrationSet};
pub use driver::{
    peak_rss_mb, quantize_checkpoint, quantize_checkpoint_resumable, quantize_checkpoint_streamed,
    quantize_checkpoint_with, quantize_model, quantize_model_with, DriverOptions, ExpertPolicy,
    LinearRecord, Pipeline, QuantizationRun, SubBlockInputs, TransformLog, WeightMode,
};
pub use error::{CalibError, Result};
pub use projection::{measure_gemm_gflops, project, Projection, SearchCost};
pub use resume::{FinishedLayer, LayerStore, Restore, RestoredLayer, RestoredRun};
pub use stats::StatsCollector;
