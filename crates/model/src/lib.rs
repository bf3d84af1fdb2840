//! The Qwen3 and Qwen3-MoE forward pass, in f32, with a layer-wise API for calibration.
//!
//! What this crate owns: the architecture (RMSNorm, q/k/v with per-head `q_norm`/`k_norm`, RoPE,
//! causal GQA attention, SwiGLU MLP, the sparse MoE block), loading it from a checkpoint through
//! `qwen3-quant-io`, swapping any linear's weight representation ([`LinearWeight`]: dense f32,
//! fake-quantized, packed) in place, observing linear inputs ([`Observer`]), and the tokenizer.
//! What it does not own: file formats (`qwen3-quant-io`), quantization methods, kernels' internals.
//!
//! ```
//! # let Some(micro) = qwen3_quant_io::assets::require("models/qwen3-micro") else { return Ok(()) };
//! # std::env::set_current_dir(micro.join("../../..")).unwrap(); // the folder that holds assets/
//! use qwen3_quant_model::{Qwen3Model, Tokenizer};
//! let model = Qwen3Model::load("assets/models/qwen3-micro")?;
//! let tok = Tokenizer::from_dir("assets/models/qwen3-micro")?;
//! let ids = tok.encode("The kernel scheduler")?;
//! let out = model.generate_greedy(&ids, 8, &model.config.eos_token_ids)?;
//! println!("{}", tok.decode(&out)?);
//! # Ok::<(), qwen3_quant_model::ModelError>(())
//! ```
#![warn(missing_docs)]

pub mod act_quant;
pub mod attention;
pub mod chat;
mod error;
pub mod generation;
pub mod layer;
pub mod linear;
pub mod mlp;
pub mod model;
pub mod norm;
pub mod observer;
pub mod rope;
pub mod rotation;
mod softmax;
pub mod tokenizer;
pub mod transform;

pub use act_quant::{ActExecution, ActQuantError, ActQuantSummary, ActQuantizer, SmoothingInput};
pub use attention::LayerKv;
pub use error::{ModelError, Result};
pub use layer::{DecoderLayer, FeedForward};
pub use linear::LinearWeight;
pub use model::{KvCache, Qwen3Model};
pub use observer::{NoObserver, Observer, Site};
pub use qwen3_quant_io::ModelConfig;
pub use rope::Rope;
pub use rotation::Rotation;
pub use tokenizer::Tokenizer;
pub use transform::{BlockInput, LinearOverrides};
