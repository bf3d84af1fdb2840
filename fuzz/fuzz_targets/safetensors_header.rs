//! Any byte string is either a valid safetensors file whose tensors can all be read, or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwen3_quant_io::SafetensorsFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = SafetensorsFile::from_bytes(data.to_vec(), "fuzz.safetensors") {
        let names: Vec<String> = file.names().map(str::to_string).collect();
        for n in names {
            let t = file.tensor(&n).expect("listed tensors exist");
            assert_eq!(t.data.len(), t.numel() * t.dtype.size());
            let _ = t.to_f32();
            let _ = t.to_i64();
        }
    }
});
