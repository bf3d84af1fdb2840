//! Synthetic Qwen3-shaped checkpoints of any size: random bf16 weights in the exact Hugging Face
//! layout (sharded, with `model.safetensors.index.json` and `config.json`), for benchmarks of
//! memory and time on model shapes that do not fit this machine or its downloads.
//!
//! The values are uniform in `±0.02·√3` (standard deviation 0.02, the Qwen3 initializer's) from
//! a counter-based generator, so a checkpoint is the same for the same shape and seed whatever
//! the number of threads. Norm weights are 1. Nothing here is a trained model: use it for
//! resources, never for quality.
//!
//! ```
//! use qwen3_quant_io::synthetic::{write_synthetic, SyntheticShape};
//! let dir = std::env::temp_dir().join(format!("qq-synth-doc-{}", std::process::id()));
//! let shape = SyntheticShape::qwen3_8b().with_layers(1).with_vocab(256).with_hidden(128, 256, 2, 1, 64);
//! let bytes = write_synthetic(&dir, &shape, 7)?;
//! assert_eq!(bytes, shape.bytes());
//! let ckpt = qwen3_quant_io::Checkpoint::open(&dir)?;
//! assert_eq!(ckpt.config()?.num_hidden_layers, 1);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), qwen3_quant_io::IoError>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::dtype::Dtype;
use crate::error::{io_err, Result};
use crate::write::{write_atomic, write_safetensors, TensorData};

/// The mixture-of-experts part of a shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntheticMoe {
    /// Experts per layer.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Each expert's intermediate size.
    pub intermediate: usize,
}

/// The dimensions of a Qwen3 model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticShape {
    /// A name for reports (`qwen3-8b`).
    pub name: String,
    /// Decoder layers.
    pub layers: usize,
    /// Residual width.
    pub hidden: usize,
    /// Dense MLP width.
    pub intermediate: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// `lm_head` shares the embedding table.
    pub tie_word_embeddings: bool,
    /// Experts, for Qwen3-MoE shapes.
    pub moe: Option<SyntheticMoe>,
}

impl SyntheticShape {
    /// Qwen3-0.6B: 28 layers, hidden 1024, tied embeddings.
    pub fn qwen3_0_6b() -> Self {
        Self::dense("qwen3-0.6b", 28, 1024, 3072, 16, 8, true)
    }

    /// Qwen3-8B: 36 layers, hidden 4096, MLP 12288, 32/8 heads.
    pub fn qwen3_8b() -> Self {
        Self::dense("qwen3-8b", 36, 4096, 12288, 32, 8, false)
    }

    /// Qwen3-32B: 64 layers, hidden 5120, MLP 25600, 64/8 heads.
    pub fn qwen3_32b() -> Self {
        Self::dense("qwen3-32b", 64, 5120, 25600, 64, 8, false)
    }

    /// Qwen3-30B-A3B: 48 layers, hidden 2048, 128 experts of 768, 8 per token, 32/4 heads.
    pub fn qwen3_30b_a3b() -> Self {
        SyntheticShape {
            moe: Some(SyntheticMoe {
                experts: 128,
                top_k: 8,
                intermediate: 768,
            }),
            ..Self::dense("qwen3-30b-a3b", 48, 2048, 6144, 32, 4, false)
        }
    }

    /// A shape by name: `qwen3-0.6b`, `qwen3-8b`, `qwen3-32b` or `qwen3-30b-a3b`.
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "qwen3-0.6b" => Some(Self::qwen3_0_6b()),
            "qwen3-8b" => Some(Self::qwen3_8b()),
            "qwen3-32b" => Some(Self::qwen3_32b()),
            "qwen3-30b-a3b" => Some(Self::qwen3_30b_a3b()),
            _ => None,
        }
    }

    fn dense(
        name: &str,
        layers: usize,
        hidden: usize,
        intermediate: usize,
        heads: usize,
        kv_heads: usize,
        tie: bool,
    ) -> Self {
        SyntheticShape {
            name: name.into(),
            layers,
            hidden,
            intermediate,
            heads,
            kv_heads,
            head_dim: 128,
            vocab: 151_936,
            tie_word_embeddings: tie,
            moe: None,
        }
    }

    /// The same shape with `layers` decoder layers.
    pub fn with_layers(mut self, layers: usize) -> Self {
        self.layers = layers;
        self
    }

    /// The same shape with another vocabulary.
    pub fn with_vocab(mut self, vocab: usize) -> Self {
        self.vocab = vocab;
        self
    }

    /// The same shape with other widths (for small tests).
    pub fn with_hidden(
        mut self,
        hidden: usize,
        intermediate: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        (
            self.hidden,
            self.intermediate,
            self.heads,
            self.kv_heads,
            self.head_dim,
        ) = (hidden, intermediate, heads, kv_heads, head_dim);
        if let Some(m) = &mut self.moe {
            m.intermediate = intermediate;
        }
        self
    }

    /// Weights of one decoder layer.
    pub fn layer_params(&self) -> usize {
        let (h, q, kv) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        );
        let attn = h * q * 2 + h * kv * 2 + 2 * self.head_dim;
        let mlp = match self.moe {
            Some(m) => m.experts * 3 * h * m.intermediate + m.experts * h,
            None => 3 * h * self.intermediate,
        };
        attn + mlp + 2 * h
    }

    /// Weights of the embeddings, final norm and (untied) `lm_head`.
    pub fn end_params(&self) -> usize {
        let table = self.vocab * self.hidden;
        table * if self.tie_word_embeddings { 1 } else { 2 } + self.hidden
    }

    /// Bytes of the bf16 tensors of the whole checkpoint.
    pub fn bytes(&self) -> u64 {
        2 * (self.end_params() + self.layers * self.layer_params()) as u64
    }

    /// The `config.json` of this shape.
    pub fn config_json(&self) -> Value {
        let mut c = json!({
            "architectures": [if self.moe.is_some() { "Qwen3MoeForCausalLM" } else { "Qwen3ForCausalLM" }],
            "attention_bias": false, "attention_dropout": 0.0,
            "bos_token_id": 151643, "eos_token_id": 151645,
            "head_dim": self.head_dim, "hidden_act": "silu", "hidden_size": self.hidden,
            "initializer_range": 0.02, "intermediate_size": self.intermediate,
            "max_position_embeddings": 40960, "max_window_layers": self.layers,
            "model_type": if self.moe.is_some() { "qwen3_moe" } else { "qwen3" },
            "num_attention_heads": self.heads, "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads, "rms_norm_eps": 1e-6, "rope_scaling": null,
            "rope_theta": 1_000_000, "sliding_window": null,
            "tie_word_embeddings": self.tie_word_embeddings, "torch_dtype": "bfloat16",
            "use_cache": true, "use_sliding_window": false, "vocab_size": self.vocab,
            "synthetic": {"shape": self.name, "note": "random weights from qwen3-quant's generator"},
        });
        if let Some(m) = self.moe {
            let o = c.as_object_mut().expect("object");
            o.insert("num_experts".into(), json!(m.experts));
            o.insert("num_experts_per_tok".into(), json!(m.top_k));
            o.insert("moe_intermediate_size".into(), json!(m.intermediate));
            o.insert("norm_topk_prob".into(), json!(true));
            o.insert("decoder_sparse_step".into(), json!(1));
            o.insert("mlp_only_layers".into(), json!([]));
            o.insert("router_aux_loss_coef".into(), json!(0.001));
            o.insert("output_router_logits".into(), json!(false));
        }
        c
    }
}

/// SplitMix64 of a counter: value `i` of stream `seed` without generating the others.
fn splitmix(seed: u64, i: u64) -> u64 {
    let mut z = seed
        .wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A bf16 tensor of `n` random values (std 0.02), filled on every core.
fn random_bf16(name: String, shape: Vec<usize>, seed: u64) -> TensorData {
    let n: usize = shape.iter().product();
    let mut bytes = vec![0u8; 2 * n];
    let a = 0.02f32 * 3f32.sqrt();
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = n.div_ceil(threads).max(1 << 16);
    std::thread::scope(|s| {
        for (c, chunk) in bytes.chunks_mut(2 * per).enumerate() {
            s.spawn(move || {
                for (j, out) in chunk.chunks_exact_mut(2).enumerate() {
                    let r = splitmix(seed, (c * per + j) as u64);
                    // 24 random bits to [-1, 1).
                    let u = (r >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                    let b = crate::dtype::f32_to_bf16_bits(u * a);
                    out.copy_from_slice(&b.to_le_bytes());
                }
            });
        }
    });
    TensorData {
        name,
        dtype: Dtype::BF16,
        shape,
        bytes,
    }
}

fn ones(name: String, n: usize) -> TensorData {
    TensorData::bf16(name, vec![n], &vec![1.0; n])
}

/// Stable per-tensor seed.
fn tensor_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes a synthetic checkpoint of `shape` into `dir` (created if needed): one shard for the
/// embeddings, final norm and `lm_head`, one per decoder layer, so that writing it never holds
/// more than one layer. Returns the bytes of tensor data written ([`SyntheticShape::bytes`]).
///
/// # Errors
/// I/O errors of the files written.
pub fn write_synthetic(dir: &Path, shape: &SyntheticShape, seed: u64) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let n_shards = shape.layers + 1;
    let shard_name = |i: usize| format!("model-{:05}-of-{:05}.safetensors", i + 1, n_shards);
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    let mut write = |i: usize, tensors: Vec<TensorData>| -> Result<()> {
        let name = shard_name(i);
        for t in &tensors {
            weight_map.insert(t.name.clone(), Value::String(name.clone()));
            total += t.bytes.len() as u64;
        }
        write_safetensors(dir.join(&name), &tensors, &meta)
    };
    let (h, v) = (shape.hidden, shape.vocab);
    let rnd = |name: String, shape: Vec<usize>| {
        let s = tensor_seed(seed, &name);
        random_bf16(name, shape, s)
    };
    let mut ends = vec![
        rnd("model.embed_tokens.weight".into(), vec![v, h]),
        ones("model.norm.weight".into(), h),
    ];
    if !shape.tie_word_embeddings {
        ends.push(rnd("lm_head.weight".into(), vec![v, h]));
    }
    write(0, ends)?;
    let (q, kv) = (
        shape.heads * shape.head_dim,
        shape.kv_heads * shape.head_dim,
    );
    for l in 0..shape.layers {
        let p = format!("model.layers.{l}");
        let mut t = vec![
            ones(format!("{p}.input_layernorm.weight"), h),
            ones(format!("{p}.post_attention_layernorm.weight"), h),
            ones(format!("{p}.self_attn.q_norm.weight"), shape.head_dim),
            ones(format!("{p}.self_attn.k_norm.weight"), shape.head_dim),
            rnd(format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
            rnd(format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            rnd(format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            rnd(format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
        ];
        match shape.moe {
            None => {
                let i = shape.intermediate;
                t.push(rnd(format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
                t.push(rnd(format!("{p}.mlp.up_proj.weight"), vec![i, h]));
                t.push(rnd(format!("{p}.mlp.down_proj.weight"), vec![h, i]));
            }
            Some(m) => {
                t.push(rnd(format!("{p}.mlp.gate.weight"), vec![m.experts, h]));
                for e in 0..m.experts {
                    let x = format!("{p}.mlp.experts.{e}");
                    let i = m.intermediate;
                    t.push(rnd(format!("{x}.gate_proj.weight"), vec![i, h]));
                    t.push(rnd(format!("{x}.up_proj.weight"), vec![i, h]));
                    t.push(rnd(format!("{x}.down_proj.weight"), vec![h, i]));
                }
            }
        }
        write(l + 1, t)?;
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_atomic(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)
            .expect("JSON")
            .as_bytes(),
    )?;
    write_atomic(
        dir.join("config.json"),
        serde_json::to_string_pretty(&shape.config_json())
            .expect("JSON")
            .as_bytes(),
    )?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_dense_and_moe_shapes_load_with_the_declared_sizes() {
        for shape in [
            SyntheticShape::qwen3_8b()
                .with_layers(2)
                .with_vocab(300)
                .with_hidden(64, 96, 2, 1, 32),
            SyntheticShape::qwen3_30b_a3b()
                .with_layers(2)
                .with_vocab(300)
                .with_hidden(64, 48, 2, 1, 32),
        ] {
            let dir = std::env::temp_dir().join(format!(
                "qq-synth-{}-{}",
                shape.name,
                std::process::id()
            ));
            let bytes = write_synthetic(&dir, &shape, 1).unwrap();
            assert_eq!(bytes, shape.bytes());
            let ckpt = crate::Checkpoint::open(&dir).unwrap();
            let cfg = ckpt.config().unwrap();
            assert_eq!(cfg.num_hidden_layers, 2);
            assert_eq!(cfg.moe.is_some(), shape.moe.is_some());
            let w = ckpt
                .load_f32("model.layers.1.self_attn.q_proj.weight", &[64, 64])
                .unwrap();
            let sd = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
            assert!((sd - 0.02).abs() < 0.002, "std {sd}");
            // Same seed, same bytes; the layers differ from each other.
            let again = dir.with_extension("again");
            write_synthetic(&again, &shape, 1).unwrap();
            let name = "model-00002-of-00003.safetensors";
            assert_eq!(
                std::fs::read(dir.join(name)).unwrap(),
                std::fs::read(again.join(name)).unwrap()
            );
            let w0 = ckpt
                .load_f32("model.layers.0.self_attn.q_proj.weight", &[64, 64])
                .unwrap();
            assert_ne!(w0, w);
            std::fs::remove_dir_all(&dir).ok();
            std::fs::remove_dir_all(&again).ok();
        }
    }
}
