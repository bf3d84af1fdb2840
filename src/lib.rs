//! qwen3-quant facade.
