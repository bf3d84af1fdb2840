//! Calibration for qwen3-quant: calibration sets, statistics accumulators and the one sequential
//! driver that every quantization method plugs into ([`quantize_model`]).
//!
//! Data flows one way: the driver runs the model (`qwen3-quant-model`) layer by layer, collects
//! the statistics a method asks for ([`qwen3_quant_core::StatsRequest`]), hands each linear to the
//! method ([`qwen3_quant_core::Quantizer`]) and swaps the result back into the model. Methods see
//! only f32 weights and statistics, never the model or its storage.
//!
//! ```no_run
//! use qwen3_quant_calib::{first_windows, quantize_model, DriverOptions};
//! # fn method() -> Box<dyn qwen3_quant_core::Quantizer> { unimplemented!() }
//! let mut model = qwen3_quant_model::Qwen3Model::load("assets/models/qwen3-micro")?;
//! let ids: Vec<u32> = (0..8192).map(|i| (i % 8000) as u32).collect();
//! let calib = first_windows(&ids, 8, 1024)?;
//! let run = quantize_model(&mut model, Some(&calib), method().as_ref(), &DriverOptions::default())?;
//! println!("{} linears in {:.1} s", run.quantized.len(), run.seconds);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod activations;
pub mod data;
pub mod driver;
pub mod projection;
mod error;
pub mod stats;

pub use activations::{ActivationDtype, ActivationStore};
pub use data::{awq_blocks, first_windows, gptq_windows, random_windows, CalibrationSet};
pub use driver::{peak_rss_mb, quantize_checkpoint, quantize_model, DriverOptions, LinearRecord, QuantizationRun, WeightMode};
pub use error::{CalibError, Result};
pub use projection::{measure_gemm_gflops, project, Projection};
pub use stats::StatsCollector;
