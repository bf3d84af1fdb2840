//! Qwen3 and Qwen3-MoE forward pass with a layer-wise API, swappable linear weights and the tokenizer.
