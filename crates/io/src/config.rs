//! `config.json` of Qwen3 (`qwen3`) and Qwen3-MoE (`qwen3_moe`) checkpoints, in both the
//! transformers 4.51 spelling (`rope_theta`, `torch_dtype`, `num_experts`) and the 5.x spelling
//! (`rope_parameters.rope_theta`, `dtype`, `num_local_experts`).
//!
//! The raw JSON is parsed leniently, then validated into [`ModelConfig`], whose invariants hold
//! (heads divisible by KV heads, even head_dim, every required field present).

use std::path::Path;

use serde_json::Value;

use crate::error::{io_err, Result};

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// A required field is absent (or null).
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong JSON type or an invalid value.
    #[error("field `{field}`: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A valid configuration this crate does not implement (e.g. rope scaling, attention bias).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Architecture family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Dense Qwen3 (`Qwen3ForCausalLM`).
    Qwen3,
    /// Mixture-of-experts Qwen3 (`Qwen3MoeForCausalLM`).
    Qwen3Moe,
}

/// Mixture-of-experts settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Number of routed experts.
    pub num_experts: usize,
    /// Experts chosen per token.
    pub num_experts_per_tok: usize,
    /// Hidden width of each expert's SwiGLU.
    pub moe_intermediate_size: usize,
    /// Renormalise the top-k router probabilities to sum to one.
    pub norm_topk_prob: bool,
    /// Every `decoder_sparse_step`-th layer is sparse.
    pub decoder_sparse_step: usize,
    /// Layers that use a dense MLP regardless.
    pub mlp_only_layers: Vec<usize>,
}

/// A validated Qwen3 / Qwen3-MoE configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Family.
    pub architecture: Architecture,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Dense MLP width (used by dense layers).
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Maximum positions (informational).
    pub max_position_embeddings: usize,
    /// Stored weight dtype (`torch_dtype` / `dtype`), if given.
    pub dtype: Option<String>,
    /// End-of-sequence token id(s).
    pub eos_token_ids: Vec<u32>,
    /// MoE settings for `qwen3_moe`.
    pub moe: Option<MoeConfig>,
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn usize_field(v: &Value, key: &'static str) -> std::result::Result<Option<usize>, ConfigError> {
    match get(v, key) {
        None => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ConfigError::InvalidField {
                field: key,
                reason: format!("expected a non-negative integer, got {x}"),
            }),
    }
}

fn req_usize(v: &Value, key: &'static str) -> std::result::Result<usize, ConfigError> {
    let n = usize_field(v, key)?.ok_or(ConfigError::MissingField(key))?;
    if n == 0 {
        return Err(ConfigError::InvalidField {
            field: key,
            reason: "must be positive".into(),
        });
    }
    Ok(n)
}

fn f64_field(v: &Value, key: &'static str) -> std::result::Result<Option<f64>, ConfigError> {
    match get(v, key) {
        None => Ok(None),
        Some(x) => x
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| ConfigError::InvalidField {
                field: key,
                reason: format!("expected a finite number, got {x}"),
            }),
    }
}

fn bool_field(v: &Value, key: &'static str) -> std::result::Result<Option<bool>, ConfigError> {
    match get(v, key) {
        None => Ok(None),
        Some(x) => x
            .as_bool()
            .map(Some)
            .ok_or_else(|| ConfigError::InvalidField {
                field: key,
                reason: format!("expected a boolean, got {x}"),
            }),
    }
}

impl ModelConfig {
    /// Reads and validates a `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Ok(Self::from_json(&text)?)
    }

    /// Parses and validates the text of a `config.json`.
    ///
    /// ```
    /// use qwen3_quant_io::config::{ModelConfig, ConfigError};
    /// let err = ModelConfig::from_json(r#"{"model_type": "qwen3"}"#).unwrap_err();
    /// assert_eq!(err, ConfigError::MissingField("vocab_size"));
    /// ```
    pub fn from_json(text: &str) -> std::result::Result<Self, ConfigError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::NotJson(e.to_string()))?;
        if !v.is_object() {
            return Err(ConfigError::NotJson("top level is not an object".into()));
        }
        let architecture = match get(&v, "model_type").and_then(Value::as_str) {
            Some("qwen3") => Architecture::Qwen3,
            Some("qwen3_moe") => Architecture::Qwen3Moe,
            Some(other) => {
                return Err(ConfigError::Unsupported(format!(
                    "model_type {other:?} (expected qwen3 or qwen3_moe)"
                )))
            }
            None => return Err(ConfigError::MissingField("model_type")),
        };
        let vocab_size = req_usize(&v, "vocab_size")?;
        let hidden_size = req_usize(&v, "hidden_size")?;
        let num_hidden_layers = req_usize(&v, "num_hidden_layers")?;
        let num_attention_heads = req_usize(&v, "num_attention_heads")?;
        let num_key_value_heads = match usize_field(&v, "num_key_value_heads")? {
            Some(0) => {
                return Err(ConfigError::InvalidField {
                    field: "num_key_value_heads",
                    reason: "must be positive".into(),
                })
            }
            Some(n) => n,
            None => num_attention_heads,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(ConfigError::InvalidField {
                field: "num_key_value_heads",
                reason: format!("{num_attention_heads} query heads are not a multiple of {num_key_value_heads} KV heads"),
            });
        }
        let head_dim = match usize_field(&v, "head_dim")? {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => return Err(ConfigError::MissingField("head_dim")),
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ConfigError::InvalidField {
                field: "head_dim",
                reason: format!("{head_dim} must be positive and even (RoPE)"),
            });
        }
        let rms_norm_eps = f64_field(&v, "rms_norm_eps")?.unwrap_or(1e-6);
        let rope_theta = match f64_field(&v, "rope_theta")? {
            Some(t) => t,
            None => match get(&v, "rope_parameters") {
                Some(p) => f64_field(p, "rope_theta")?
                    .ok_or(ConfigError::MissingField("rope_parameters.rope_theta"))?,
                None => return Err(ConfigError::MissingField("rope_theta")),
            },
        };
        if rope_theta <= 0.0 {
            return Err(ConfigError::InvalidField {
                field: "rope_theta",
                reason: "must be positive".into(),
            });
        }
        // Only plain RoPE is implemented; YaRN and friends would silently give wrong logits.
        let scaling = get(&v, "rope_scaling").or_else(|| get(&v, "rope_parameters"));
        if let Some(s) = scaling {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(ConfigError::Unsupported(format!(
                    "rope scaling of type {kind:?}"
                )));
            }
        }
        if bool_field(&v, "attention_bias")?.unwrap_or(false) {
            return Err(ConfigError::Unsupported("attention_bias = true".into()));
        }
        if bool_field(&v, "use_sliding_window")?.unwrap_or(false) {
            return Err(ConfigError::Unsupported("use_sliding_window = true".into()));
        }
        if let Some(act) = get(&v, "hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(ConfigError::Unsupported(format!("hidden_act {act:?}")));
            }
        }
        let tie_word_embeddings = bool_field(&v, "tie_word_embeddings")?.unwrap_or(false);
        let max_position_embeddings = usize_field(&v, "max_position_embeddings")?.unwrap_or(40960);
        let dtype = get(&v, "torch_dtype")
            .or_else(|| get(&v, "dtype"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let eos_token_ids = match get(&v, "eos_token_id") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect(),
            Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        };

        let moe = match architecture {
            Architecture::Qwen3 => None,
            Architecture::Qwen3Moe => {
                let num_experts = match usize_field(&v, "num_experts")? {
                    Some(n) => n,
                    None => usize_field(&v, "num_local_experts")?
                        .ok_or(ConfigError::MissingField("num_experts"))?,
                };
                let num_experts_per_tok = req_usize(&v, "num_experts_per_tok")?;
                if num_experts == 0 || num_experts_per_tok > num_experts {
                    return Err(ConfigError::InvalidField {
                        field: "num_experts_per_tok",
                        reason: format!("top-{num_experts_per_tok} of {num_experts} experts"),
                    });
                }
                let mlp_only_layers = match get(&v, "mlp_only_layers") {
                    None => Vec::new(),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|x| x.as_u64().map(|n| n as usize))
                        .collect::<Option<Vec<_>>>()
                        .ok_or(ConfigError::InvalidField {
                            field: "mlp_only_layers",
                            reason: "expected integers".into(),
                        })?,
                    Some(_) => {
                        return Err(ConfigError::InvalidField {
                            field: "mlp_only_layers",
                            reason: "expected a list".into(),
                        })
                    }
                };
                Some(MoeConfig {
                    num_experts,
                    num_experts_per_tok,
                    moe_intermediate_size: req_usize(&v, "moe_intermediate_size")?,
                    norm_topk_prob: bool_field(&v, "norm_topk_prob")?.unwrap_or(false),
                    decoder_sparse_step: usize_field(&v, "decoder_sparse_step")?
                        .unwrap_or(1)
                        .max(1),
                    mlp_only_layers,
                })
            }
        };
        let needs_dense = moe
            .as_ref()
            .is_none_or(|m| (0..num_hidden_layers).any(|i| !m.is_sparse(i)));
        let intermediate_size = match usize_field(&v, "intermediate_size")? {
            Some(n) if n > 0 => n,
            _ if needs_dense => return Err(ConfigError::MissingField("intermediate_size")),
            _ => 0,
        };
        Ok(ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            tie_word_embeddings,
            max_position_embeddings,
            dtype,
            eos_token_ids,
            moe,
        })
    }

    /// Whether decoder layer `i` uses the sparse MoE block.
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| m.is_sparse(i))
    }

    /// Width of the query projection output (`heads × head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of the key/value projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

impl MoeConfig {
    /// transformers' rule: sparse unless listed in `mlp_only_layers`, on every `decoder_sparse_step`-th layer.
    pub fn is_sparse(&self, layer: usize) -> bool {
        !self.mlp_only_layers.contains(&layer)
            && self.num_experts > 0
            && (layer + 1) % self.decoder_sparse_step == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DENSE_451: &str = r#"{"model_type":"qwen3","vocab_size":100,"hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,
        "rope_theta":1000000,"torch_dtype":"bfloat16","tie_word_embeddings":true,"rope_scaling":null}"#;

    #[test]
    fn parses_transformers_451_style() {
        let c = ModelConfig::from_json(DENSE_451).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen3);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
        assert!(c.tie_word_embeddings);
        assert_eq!(c.q_dim(), 64);
        assert_eq!(c.kv_dim(), 32);
    }

    #[test]
    fn parses_transformers_5_style_moe() {
        let text = r#"{"model_type":"qwen3_moe","vocab_size":100,"hidden_size":64,"num_hidden_layers":3,
            "num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"dtype":"bfloat16",
            "rope_parameters":{"rope_type":"default","rope_theta":10000.0},"num_local_experts":8,
            "num_experts_per_tok":2,"moe_intermediate_size":32,"norm_topk_prob":true,"mlp_only_layers":[1],
            "intermediate_size":96}"#;
        let c = ModelConfig::from_json(text).unwrap();
        assert_eq!(c.rope_theta, 10000.0);
        let m = c.moe.as_ref().unwrap();
        assert_eq!(m.num_experts, 8);
        assert!(c.is_moe_layer(0) && !c.is_moe_layer(1) && c.is_moe_layer(2));
    }

    #[test]
    fn missing_and_invalid_fields_are_typed_errors() {
        for field in [
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "rope_theta",
            "intermediate_size",
        ] {
            let mut v: serde_json::Value = serde_json::from_str(DENSE_451).unwrap();
            v.as_object_mut().unwrap().remove(field);
            assert_eq!(
                ModelConfig::from_json(&v.to_string()).unwrap_err(),
                ConfigError::MissingField(field),
                "{field}"
            );
        }
        let bad = DENSE_451.replace("\"num_key_value_heads\":2", "\"num_key_value_heads\":3");
        assert!(matches!(
            ModelConfig::from_json(&bad),
            Err(ConfigError::InvalidField { .. })
        ));
        let bad = DENSE_451.replace("\"head_dim\":16", "\"head_dim\":15");
        assert!(matches!(
            ModelConfig::from_json(&bad),
            Err(ConfigError::InvalidField {
                field: "head_dim",
                ..
            })
        ));
        let bad = DENSE_451.replace(
            "\"rope_scaling\":null",
            "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}",
        );
        assert!(matches!(
            ModelConfig::from_json(&bad),
            Err(ConfigError::Unsupported(_))
        ));
        let bad = DENSE_451.replace("\"hidden_size\":64", "\"hidden_size\":\"64\"");
        assert!(matches!(
            ModelConfig::from_json(&bad),
            Err(ConfigError::InvalidField {
                field: "hidden_size",
                ..
            })
        ));
        assert!(matches!(
            ModelConfig::from_json("[1,2]"),
            Err(ConfigError::NotJson(_))
        ));
        assert!(matches!(
            ModelConfig::from_json("{"),
            Err(ConfigError::NotJson(_))
        ));
        let llama = DENSE_451.replace("qwen3", "llama");
        assert!(matches!(
            ModelConfig::from_json(&llama),
            Err(ConfigError::Unsupported(_))
        ));
    }
}
