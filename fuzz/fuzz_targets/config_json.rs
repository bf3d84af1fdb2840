//! Any text is either a valid Qwen3 configuration whose invariants hold, or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwen3_quant_io::ModelConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = ModelConfig::from_json(text) {
            assert!(c.num_attention_heads % c.num_key_value_heads == 0);
            assert!(c.head_dim % 2 == 0 && c.head_dim > 0);
            for i in 0..c.num_hidden_layers.min(64) {
                let _ = c.is_moe_layer(i);
            }
        }
    }
});
