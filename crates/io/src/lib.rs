//! Tensor I/O for Qwen3 checkpoints: memory-mapped safetensors (single and sharded), config.json, atomic writes.
