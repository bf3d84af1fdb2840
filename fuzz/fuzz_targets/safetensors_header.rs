//! Any byte string is either a valid safetensors file whose tensors can all be read, or an error.
//! The property lives in `qwen3_quant_io::fuzzing`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qwen3_quant_io::fuzzing::check_safetensors(data));
