//! The properties the fuzz targets (`fuzz/fuzz_targets/`) check, shared with the test that
//! replays their corpora (`tests/fuzz_corpus.rs`), so that what CI replays is exactly what the
//! fuzzer explores. Each function panics when a property fails and returns quietly otherwise,
//! whether the input parsed or was rejected with an error.
//!
//! ```
//! qwen3_quant_io::fuzzing::check_config_json(b"{\"hidden_size\": 1}");
//! qwen3_quant_io::fuzzing::check_safetensors(&[0u8; 3]);
//! ```

use crate::{ModelConfig, SafetensorsFile};

/// Any text is either a configuration whose invariants hold, or an error (never a panic).
pub fn check_config_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = ModelConfig::from_json(text) {
        assert!(c.num_key_value_heads > 0 && c.num_attention_heads % c.num_key_value_heads == 0);
        assert!(c.head_dim % 2 == 0 && c.head_dim > 0);
        for i in 0..c.num_hidden_layers.min(64) {
            let _ = c.is_moe_layer(i);
        }
    }
}

/// Any byte string is either a safetensors file whose listed tensors can all be read with
/// lengths that match their shapes and dtypes, or an error (never a panic).
pub fn check_safetensors(data: &[u8]) {
    if let Ok(file) = SafetensorsFile::from_bytes(data.to_vec(), "fuzz.safetensors") {
        let names: Vec<String> = file.names().map(str::to_string).collect();
        for n in names {
            let t = file.tensor(&n).expect("listed tensors exist");
            assert_eq!(t.data.len(), t.numel() * t.dtype.size());
            let _ = t.to_f32();
            let _ = t.to_i64();
        }
    }
}
