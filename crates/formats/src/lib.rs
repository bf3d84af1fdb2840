//! Quantized checkpoint formats: GPTQ (v1/v2 zeros), AutoAWQ GEMM, compressed-tensors and a
//! native format, written from a quantization run and loaded back packed.
//!
//! * [`write_checkpoint`] writes a quantized model (the model a method returned, for the
//!   embeddings, norms, router and `lm_head`, which AWQ and SmoothQuant may have transformed, plus
//!   the method's quantized linears) as a sharded safetensors directory in one of the four
//!   [`Format`]s, with the `quantization_config` each ecosystem reader expects. Writes are atomic
//!   and the source directory is never modified.
//! * [`load_model`] loads any of them — including GPTQ files written by other tools (v1 and v2
//!   zeros, `desc_act` with an arbitrary `g_idx`, dense and MoE) — into a
//!   [`qwen3_quant_model::Qwen3Model`] whose quantized linears are packed codes run by the CPU
//!   kernels, never expanded to f32. A GPTQ file whose zero points contradict its declared
//!   convention is reported ([`FormatError::MislabeledZeros`]).
//! * [`inspect`] summarises a directory from its files: format, method, bits, groups, and the
//!   honest bits per weight (every byte of every tensor of the quantized linears).
//!
//! The layouts are documented in `docs/checkpoints.md` (and `docs/formats.md` for the ecosystem
//! ones); the native format is versioned ([`NATIVE_FORMAT_VERSION`]).
//!
//! ```no_run
//! use qwen3_quant_formats::{load_model, write_checkpoint, Format, WriteOptions};
//! # fn run(model: &qwen3_quant_model::Qwen3Model,
//! #        quantized: &[(qwen3_quant_core::LinearId, qwen3_quant_core::QuantizedWeight)])
//! #        -> Result<(), qwen3_quant_formats::FormatError> {
//! let src = std::path::Path::new("assets/models/qwen3-micro");
//! let out = std::path::Path::new("/tmp/qwen3-micro-gptq");
//! let report = write_checkpoint(out, src, model, quantized, &WriteOptions::new(Format::Gptq))?;
//! println!("{:?}", report.serving);
//! let loaded = load_model(out, &Default::default())?;
//! assert_eq!(loaded.packed_linears, quantized.len());
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod awq;
mod compressed;
pub mod config;
mod decoded;
mod error;
mod gptq;
mod inspect;
mod loader;
mod native;
pub mod resume;
mod tensors;
mod writer;

pub use config::{read_quant_config, GptqZeros, QuantConfig};
pub use decoded::DecodedLinear;
pub use error::{FormatError, Result};
pub use inspect::{inspect, Inspection};
pub use loader::{load_model, LoadOptions, LoadedModel};
pub use native::NATIVE_FORMAT_VERSION;
pub use resume::{Fingerprint, ResumeDir, SavedLayers};
pub use writer::{
    check_output_dir, check_space_for_run, free_space, write_checkpoint, write_checkpoint_streamed,
    Format, LayerSource, LayerVisitor, MethodMeta, WriteOptions, WriteReport,
};
