//! Projected GPTQ cost (FLOPs, activation memory, ETA at this machine's measured GEMM rate) for
//! the Qwen3 family at the paper's calibration size (128 × 2048), and for the bundled micro model
//! at the parity protocol (128 × 1024).
//!
//! ```text
//! cargo run --release -p qwen3-quant-calib --example gptq_projection
//! ```
//! Layer shapes of the real models are those of their `config.json` (layers, hidden, heads,
//! intermediate; head_dim 128, vocab 151936).

use qwen3_quant_calib::{measure_gemm_gflops, project};
use qwen3_quant_core::StatsRequest;
use qwen3_quant_io::ModelConfig;

fn dense(layers: usize, hidden: usize, heads: usize, inter: usize) -> ModelConfig {
    ModelConfig::from_json(&format!(
        r#"{{"model_type":"qwen3","vocab_size":151936,"hidden_size":{hidden},"intermediate_size":{inter},
            "num_hidden_layers":{layers},"num_attention_heads":{heads},"num_key_value_heads":8,"head_dim":128,
            "rope_theta":1000000}}"#
    ))
    .expect("valid config")
}

fn main() {
    let gflops = measure_gemm_gflops();
    println!(
        "measured f32 GEMM rate: {gflops:.0} GFLOP/s on {} threads",
        rayon::current_num_threads()
    );
    println!("| model | tokens | TFLOP | activations GB | ETA |");
    println!("|---|---:|---:|---:|---:|");
    let req = StatsRequest {
        hessian: true,
        channel_stats: false,
    };
    let micro = ModelConfig::from_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../assets/models/qwen3-micro/config.json"
    ))
    .expect("bundled config");
    let rows: Vec<(&str, ModelConfig, usize)> = vec![
        ("qwen3-micro", micro, 1024),
        ("Qwen3-0.6B", dense(28, 1024, 16, 3072), 2048),
        ("Qwen3-1.7B", dense(28, 2048, 16, 6144), 2048),
        ("Qwen3-4B", dense(36, 2560, 32, 9728), 2048),
        ("Qwen3-8B", dense(36, 4096, 32, 12288), 2048),
        ("Qwen3-14B", dense(40, 5120, 40, 17408), 2048),
        ("Qwen3-32B", dense(64, 5120, 64, 25600), 2048),
    ];
    for (name, cfg, seq) in rows {
        let p = project(&cfg, 128, seq, req, true);
        let eta = p.eta_seconds(gflops);
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} | {} |",
            p.tokens,
            p.total_flops / 1e12,
            p.activation_bytes / 1e9,
            if eta < 3600.0 {
                format!("{:.0} s", eta)
            } else {
                format!("{:.1} h", eta / 3600.0)
            }
        );
    }
}
