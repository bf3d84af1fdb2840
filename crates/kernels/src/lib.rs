//! Packed low-bit weight layouts and CPU matrix kernels for qwen3-quant.
//!
//! This crate is a leaf: it knows nothing about models or quantization methods.
#![warn(missing_docs)]

pub mod dense;
