//! `qwen3-quant inspect DIR`.

use std::collections::BTreeMap;

use anyhow::Context;
use qwen3_quant_io::config::RopeScaling;
use qwen3_quant_io::Checkpoint;
use serde_json::{json, Value};

use crate::args::InspectArgs;
use crate::output::print_json;

/// The quantization scheme recorded in a directory, if any (`quantize_config.json` or
/// `config.json["quantization_config"]`).
fn quantization_scheme(dir: &std::path::Path) -> Option<Value> {
    if let Ok(text) = std::fs::read_to_string(dir.join("quantize_config.json")) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            return Some(v);
        }
    }
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("quantization_config").cloned()
}

pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let ckpt = Checkpoint::open(&a.dir).with_context(|| format!("opening {}", a.dir.display()))?;
    let cfg = ckpt.config()?;
    let mut dtypes: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut params: u64 = 0;
    let mut tensor_bytes: u64 = 0;
    for name in ckpt.names() {
        let t = ckpt.tensor(name)?;
        let bytes = t.data.len() as u64;
        let e = dtypes.entry(t.dtype.to_string()).or_default();
        e.0 += 1;
        e.1 += bytes;
        params += t.numel() as u64;
        tensor_bytes += bytes;
    }
    let file_bytes: u64 = ckpt
        .shards()
        .iter()
        .filter_map(|s| std::fs::metadata(s.path()).ok())
        .map(|m| m.len())
        .sum();
    let scheme = quantization_scheme(&a.dir);
    let summary = qwen3_quant_formats::inspect(&a.dir)
        .with_context(|| format!("reading the quantization of {}", a.dir.display()))?;
    let moe = cfg.moe.as_ref().map(|m| {
        json!({"num_experts": m.num_experts, "num_experts_per_tok": m.num_experts_per_tok,
               "moe_intermediate_size": m.moe_intermediate_size, "norm_topk_prob": m.norm_topk_prob,
               "sparse_layers": (0..cfg.num_hidden_layers).filter(|&i| cfg.is_moe_layer(i)).count()})
    });
    let arch = cfg.architecture.model_type();
    let class = cfg.architecture.class_name();
    let rope_scaling = cfg.rope_scaling.map(|s| match s {
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings}),
    });
    let report = json!({
        "dir": a.dir,
        "architecture": arch,
        "class": class,
        "qk_norm": cfg.architecture.has_qk_norm(),
        "attention_bias": cfg.attention_bias,
        "rope_scaling": rope_scaling,
        "num_hidden_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "dtype": cfg.dtype,
        "moe": moe,
        "tensors": ckpt.names().len(),
        "shards": ckpt.shards().len(),
        "parameters": params,
        "tensor_bytes": tensor_bytes,
        "file_bytes": file_bytes,
        "dtypes": dtypes.iter().map(|(k, (n, b))| (k.clone(), json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "quantization": scheme,
        "quantized": summary.to_json(),
    });
    if a.json {
        print_json(&report);
    } else {
        println!("{}  ({arch}, {class})", a.dir.display());
        println!(
            "  layers {}  hidden {}  heads {}/{} x {}  intermediate {}  vocab {}  tied {}",
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.intermediate_size,
            cfg.vocab_size,
            cfg.tie_word_embeddings
        );
        let scaling = match cfg.rope_scaling {
            None => String::new(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => format!(
                ", llama3 scaling x{factor} (low {low_freq_factor}, high {high_freq_factor}, original {original_max_position_embeddings})"
            ),
        };
        println!(
            "  rope theta {}{scaling}  q/k norm {}  attention bias {}",
            cfg.rope_theta,
            cfg.architecture.has_qk_norm(),
            cfg.attention_bias
        );
        if let Some(m) = &cfg.moe {
            println!(
                "  experts {} (top-{}), expert width {}",
                m.num_experts, m.num_experts_per_tok, m.moe_intermediate_size
            );
        }
        println!(
            "  {} tensors in {} shard(s), {:.2} M parameters, {:.2} MB on disk",
            ckpt.names().len(),
            ckpt.shards().len(),
            params as f64 / 1e6,
            file_bytes as f64 / 1e6
        );
        for (k, (n, b)) in &dtypes {
            println!("    {k:>5}: {n} tensors, {:.2} MB", *b as f64 / 1e6);
        }
        if summary.quantized_linears == 0 {
            println!("  quantization: none (full precision)");
        } else {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            println!(
                "  quantization: {} format, method {}, {} bits, group {}, sym {}, act-order {}{}",
                summary.format,
                opt(summary.method.clone()),
                opt(summary.bits.map(|b| b.to_string())),
                summary
                    .group_size
                    .map_or("per-channel".to_string(), |g| g.to_string()),
                opt(summary.sym.map(|b| b.to_string())),
                opt(summary.act_order.map(|b| b.to_string())),
                summary
                    .act_bits
                    .map_or(String::new(), |b| format!(", {b}-bit activations")),
            );
            if let Some(f) = &summary.checkpoint_format {
                println!(
                    "    zeros: {f}{}",
                    summary
                        .quantizer
                        .as_ref()
                        .map_or(String::new(), |q| format!(", written by {q}"))
                );
            }
            println!(
                "    {} quantized linears ({:.2} M weights, {:.2} MB), {} dense: {:.3} bits/weight (every code, scale, zero and index counted)",
                summary.quantized_linears,
                summary.quantized_weights as f64 / 1e6,
                summary.quantized_bytes as f64 / 1e6,
                summary.dense_linears,
                summary.bits_per_weight
            );
        }
    }
    Ok(())
}
