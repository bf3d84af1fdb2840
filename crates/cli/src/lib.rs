//! The qwen3-quant command line.
