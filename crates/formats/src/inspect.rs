//! What a checkpoint holds, read from its files alone: format, method, bits, groups, and the
//! honest storage cost (every byte of every tensor of the quantized linears, per weight).

use std::collections::BTreeMap;
use std::path::Path;

use qwen3_quant_io::{Checkpoint, ModelConfig};
use serde_json::{json, Value};

use crate::config::{parse_quant_config, raw_quant_config, QuantConfig};
use crate::error::Result;
use crate::loader::native_scheme;

/// Suffixes of the tensors that belong to a quantized linear, in any format.
const QUANT_SUFFIXES: [&str; 15] = [
    "qweight",
    "qzeros",
    "scales",
    "g_idx",
    "weight_packed",
    "weight_scale",
    "weight_zero_point",
    "weight_g_idx",
    "weight_shape",
    "perm",
    "smoothing",
    "signs",
    "bit1",
    "salient",
    "binary_params",
];

/// Summary of a checkpoint directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Inspection {
    /// `full-precision`, `gptq`, `awq`, `compressed-tensors` or `native`.
    pub format: String,
    /// The algorithm, where the config records it (`gptq`, `rtn`, …).
    pub method: Option<String>,
    /// Weight bits (the most common width for a native mix).
    pub bits: Option<u8>,
    /// Group size, `None` for per-channel (or not applicable).
    pub group_size: Option<usize>,
    /// Symmetric, where recorded.
    pub sym: Option<bool>,
    /// Act-order (`desc_act` or a stored permutation / `g_idx`).
    pub act_order: Option<bool>,
    /// Activation bits, where recorded.
    pub act_bits: Option<u8>,
    /// GPTQ zero convention (`gptq` = v1, `gptq_v2`).
    pub checkpoint_format: Option<String>,
    /// Tool that wrote it (`meta.quantizer`, `quantizer`).
    pub quantizer: Option<String>,
    /// Quantized linears found in the files.
    pub quantized_linears: usize,
    /// Linears stored in full precision.
    pub dense_linears: usize,
    /// Weights of the quantized linears.
    pub quantized_weights: u64,
    /// Bytes of every tensor of the quantized linears (codes, scales, zeros, indices, factors).
    pub quantized_bytes: u64,
    /// `8 · quantized_bytes / quantized_weights`: the honest bits per weight.
    pub bits_per_weight: f64,
    /// Bytes of all tensors.
    pub tensor_bytes: u64,
    /// Bytes of the safetensors files on disk.
    pub file_bytes: u64,
    /// Number of shards.
    pub shards: usize,
}

impl Inspection {
    /// The JSON object `inspect --json` prints under `quantization`.
    pub fn to_json(&self) -> Value {
        json!({
            "format": self.format, "method": self.method, "bits": self.bits, "group_size": self.group_size,
            "sym": self.sym, "act_order": self.act_order, "act_bits": self.act_bits,
            "checkpoint_format": self.checkpoint_format, "quantizer": self.quantizer,
            "quantized_linears": self.quantized_linears, "dense_linears": self.dense_linears,
            "quantized_weights": self.quantized_weights, "quantized_bytes": self.quantized_bytes,
            "bits_per_weight": self.bits_per_weight, "tensor_bytes": self.tensor_bytes,
            "file_bytes": self.file_bytes, "shards": self.shards,
        })
    }
}

/// Every linear prefix of the model with its `[out, in]` shape.
pub(crate) fn linear_shapes(c: &ModelConfig) -> Vec<(String, usize, usize)> {
    let h = c.hidden_size;
    let mut v = Vec::new();
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        v.push((format!("{p}.self_attn.q_proj"), c.q_dim(), h));
        v.push((format!("{p}.self_attn.k_proj"), c.kv_dim(), h));
        v.push((format!("{p}.self_attn.v_proj"), c.kv_dim(), h));
        v.push((format!("{p}.self_attn.o_proj"), h, c.q_dim()));
        match (&c.moe, c.is_moe_layer(i)) {
            (Some(m), true) => {
                for e in 0..m.num_experts {
                    let q = format!("{p}.mlp.experts.{e}");
                    let mi = m.moe_intermediate_size;
                    v.push((format!("{q}.gate_proj"), mi, h));
                    v.push((format!("{q}.up_proj"), mi, h));
                    v.push((format!("{q}.down_proj"), h, mi));
                }
            }
            _ => {
                let it = c.intermediate_size;
                v.push((format!("{p}.mlp.gate_proj"), it, h));
                v.push((format!("{p}.mlp.up_proj"), it, h));
                v.push((format!("{p}.mlp.down_proj"), h, it));
            }
        }
    }
    v
}

/// Inspects a checkpoint directory (full precision or any supported quantized format).
///
/// ```
/// # let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro-gptq-w4g128-actorder") else { return Ok(()); };
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/models/qwen3-micro-gptq-w4g128-actorder");
/// let i = qwen3_quant_formats::inspect(dir.as_ref())?;
/// assert_eq!((i.format.as_str(), i.bits, i.group_size), ("gptq", Some(4), Some(128)));
/// assert!(i.bits_per_weight > 4.0 && i.bits_per_weight < 4.6);
/// # Ok::<(), qwen3_quant_formats::FormatError>(())
/// ```
///
/// # Errors
/// Unreadable or malformed files and configs.
pub fn inspect(dir: &Path) -> Result<Inspection> {
    let ckpt = Checkpoint::open(dir)?;
    let cfg = ckpt.config()?;
    let raw = raw_quant_config(dir)?;
    let quant = raw.as_ref().map(parse_quant_config).transpose()?;
    let mut by_prefix: BTreeMap<&str, u64> = BTreeMap::new();
    let mut tensor_bytes = 0u64;
    for name in ckpt.names() {
        let bytes = ckpt.tensor(name)?.data.len() as u64;
        tensor_bytes += bytes;
        if let Some((prefix, suffix)) = name.rsplit_once('.') {
            if QUANT_SUFFIXES.contains(&suffix) {
                *by_prefix.entry(prefix).or_default() += bytes;
            }
        }
    }
    let (mut qn, mut dn, mut qw, mut qb) = (0usize, 0usize, 0u64, 0u64);
    let int8 =
        matches!(&quant, Some(QuantConfig::CompressedTensors(s)) if s.format == "int-quantized");
    for (prefix, out, inp) in linear_shapes(&cfg) {
        match by_prefix.get(prefix.as_str()) {
            Some(&b) => {
                // int-quantized stores its int8 codes under `weight`.
                let w = if int8 {
                    ckpt.tensor(&format!("{prefix}.weight"))
                        .map(|t| t.data.len() as u64)
                        .unwrap_or(0)
                } else {
                    0
                };
                qn += 1;
                qw += (out * inp) as u64;
                qb += b + w;
            }
            None => dn += 1,
        }
    }
    let file_bytes = ckpt
        .shards()
        .iter()
        .filter_map(|s| std::fs::metadata(s.path()).ok())
        .map(|m| m.len())
        .sum();
    let str_of = |v: Option<&Value>, k: &str| {
        v.and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let mut i = Inspection {
        format: quant
            .as_ref()
            .map_or("full-precision", QuantConfig::format_name)
            .to_string(),
        method: str_of(raw.as_ref(), "method"),
        bits: None,
        group_size: None,
        sym: None,
        act_order: None,
        act_bits: None,
        checkpoint_format: None,
        quantizer: None,
        quantized_linears: qn,
        dense_linears: dn,
        quantized_weights: qw,
        quantized_bytes: qb,
        bits_per_weight: if qw == 0 {
            0.0
        } else {
            8.0 * qb as f64 / qw as f64
        },
        tensor_bytes,
        file_bytes,
        shards: ckpt.shards().len(),
    };
    match &quant {
        None => {}
        Some(QuantConfig::Gptq(s)) => {
            i.bits = Some(s.bits);
            i.group_size = s.group_size;
            i.sym = Some(s.sym);
            i.act_order = Some(s.desc_act);
            i.checkpoint_format = Some(s.zeros.as_str().into());
            i.quantizer = s.quantizer.clone();
            if let Some(m) = raw
                .as_ref()
                .and_then(|r| r.get("meta"))
                .and_then(|m| m.get("method"))
                .and_then(Value::as_str)
            {
                i.method = Some(m.into());
            }
        }
        Some(QuantConfig::Awq(s)) => {
            i.bits = Some(s.bits);
            i.group_size = Some(s.group_size);
            i.sym = Some(!s.zero_point);
            i.act_order = Some(false);
            i.method = i.method.or(Some("awq".into()));
            i.quantizer = str_of(raw.as_ref(), "quantizer");
        }
        Some(QuantConfig::CompressedTensors(s)) => {
            i.bits = Some(s.bits);
            i.group_size = s.group_size;
            i.sym = Some(s.symmetric);
            i.act_bits = s.act_bits;
            i.act_order = Some(
                by_prefix
                    .keys()
                    .any(|p| ckpt.contains(&format!("{p}.weight_g_idx"))),
            );
            i.quantizer = str_of(raw.as_ref(), "quantizer");
        }
        Some(QuantConfig::Native(v)) => {
            let d = native_scheme(v, "")?;
            i.bits = d.get("bits").and_then(Value::as_u64).map(|b| b as u8);
            i.group_size = d
                .get("group_size")
                .and_then(Value::as_u64)
                .map(|g| g as usize);
            i.sym = d.get("sym").and_then(Value::as_bool);
            i.act_order = d.get("act_order").and_then(Value::as_bool);
            i.act_bits = v.get("act_bits").and_then(Value::as_u64).map(|b| b as u8);
            i.quantizer = str_of(Some(v), "quantizer");
            if d.get("type").and_then(Value::as_str) == Some("binary") {
                i.method = i.method.or(Some("billm".into()));
            }
        }
    }
    Ok(i)
}
