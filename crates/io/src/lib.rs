//! Tensor I/O for Qwen3 checkpoints.
//!
//! This crate owns the bytes on disk: validated, memory-mapped safetensors files (single or
//! sharded through `model.safetensors.index.json`), `config.json` for `qwen3` and `qwen3_moe`,
//! and atomic writers. It knows nothing about the forward pass (that is `qwen3-quant-model`) or
//! about quantization methods.
//!
//! Every malformed input is an [`IoError`], never a panic: truncated files, header lengths beyond
//! the file, offsets outside the data, overlapping tensors, unknown dtypes, shape × dtype not
//! matching the byte length, missing tensors, missing config fields.
//!
//! ```
//! # let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else { return Ok(()); };
//! use qwen3_quant_io::Checkpoint;
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/models/qwen3-micro");
//! let ckpt = Checkpoint::open(dir)?;
//! let cfg = ckpt.config()?;
//! assert_eq!(cfg.num_hidden_layers, 8);
//! let norm = ckpt.load_f32("model.norm.weight", &[cfg.hidden_size])?;
//! assert_eq!(norm.len(), 512);
//! # Ok::<(), qwen3_quant_io::IoError>(())
//! ```
#![warn(missing_docs)]

pub mod assets;
pub mod checkpoint;
pub mod config;
mod dtype;
mod error;
pub mod fuzzing;
pub mod safetensors_file;
pub mod synthetic;
pub mod write;

pub use checkpoint::Checkpoint;
pub use config::{Architecture, ModelConfig, MoeConfig};
pub use dtype::{f32_to_bf16_bits, Dtype};
pub use error::{IoError, Result};
pub use safetensors_file::{SafetensorsFile, TensorView};
