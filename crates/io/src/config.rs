//! `config.json` of Qwen3 (`qwen3`), Qwen3-MoE (`qwen3_moe`) and LLaMA (`llama`, LLaMA-3 with its
//! "llama3" RoPE scaling) checkpoints, in both the transformers 4.x spelling (`rope_theta`,
//! `rope_scaling`, `torch_dtype`, `num_experts`) and the 5.x spelling (`rope_parameters`, `dtype`,
//! `num_local_experts`).
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
///
/// Exhaustive on purpose: the model crate must implement every architecture it can be handed, so
/// a new one is a breaking (minor, while 0.x) release of the workspace (CHANGELOG.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Dense Qwen3 (`Qwen3ForCausalLM`).
    Qwen3,
    /// Mixture-of-experts Qwen3 (`Qwen3MoeForCausalLM`).
    Qwen3Moe,
    /// LLaMA (`LlamaForCausalLM`, `model_type: "llama"`; LLaMA-3 and models derived from it):
    /// no per-head q/k RMSNorm, optional attention biases, optional "llama3" RoPE scaling.
    Llama,
}

impl Architecture {
    /// The `model_type` of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Qwen3 => "qwen3",
            Architecture::Qwen3Moe => "qwen3_moe",
            Architecture::Llama => "llama",
        }
    }

    /// The transformers class (`architectures[0]` of `config.json`).
    pub fn class_name(self) -> &'static str {
        match self {
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Qwen3Moe => "Qwen3MoeForCausalLM",
            Architecture::Llama => "LlamaForCausalLM",
        }
    }

    /// Whether attention applies a per-head RMSNorm to queries and keys (`q_norm`, `k_norm`).
    pub fn has_qk_norm(self) -> bool {
        matches!(self, Architecture::Qwen3 | Architecture::Qwen3Moe)
    }
}

/// RoPE frequency scaling (`rope_scaling` / `rope_parameters` with a `rope_type`).
///
/// Exhaustive on purpose, like [`Architecture`]: the model must implement every scaling it is
/// handed; an unknown `rope_type` is a [`ConfigError::Unsupported`] when the config is read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// LLaMA-3's "llama3" scaling: with `wavelength = 2π / inv_freq`, wavelengths above
    /// `original_max_position_embeddings / low_freq_factor` are stretched by `factor` (their
    /// frequency divided by it), those below `original_max_position_embeddings /
    /// high_freq_factor` are kept, and the band between is interpolated smoothly.
    Llama3 {
        /// Stretch of the low frequencies.
        factor: f64,
        /// Lower edge of the interpolated band, as `original_max / wavelength`.
        low_freq_factor: f64,
        /// Upper edge of the interpolated band, as `original_max / wavelength`.
        high_freq_factor: f64,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
}

/// Mixture-of-experts settings.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// RoPE frequency scaling, if any (only "llama3" is implemented).
    pub rope_scaling: Option<RopeScaling>,
    /// Whether q/k/v/o carry bias vectors (`attention_bias`; LLaMA-derived models).
    pub attention_bias: bool,
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

/// The RoPE scaling of `rope_scaling` (4.x) or `rope_parameters` (5.x), validated. Only plain RoPE
/// and "llama3" are implemented; YaRN and friends would silently give wrong logits.
fn rope_scaling(v: &Value) -> std::result::Result<Option<RopeScaling>, ConfigError> {
    let (s, field) = match get(v, "rope_scaling") {
        Some(s) => (s, "rope_scaling"),
        None => match get(v, "rope_parameters") {
            Some(s) => (s, "rope_parameters"),
            None => return Ok(None),
        },
    };
    if !s.is_object() {
        return Err(ConfigError::InvalidField {
            field,
            reason: format!("expected an object, got {s}"),
        });
    }
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let req = |key: &'static str| -> std::result::Result<f64, ConfigError> {
                let x = f64_field(s, key)?.ok_or(ConfigError::MissingField(key))?;
                if x > 0.0 {
                    Ok(x)
                } else {
                    Err(ConfigError::InvalidField {
                        field: key,
                        reason: format!("{x} must be positive"),
                    })
                }
            };
            let factor = req("factor")?;
            let low_freq_factor = req("low_freq_factor")?;
            let high_freq_factor = req("high_freq_factor")?;
            if high_freq_factor <= low_freq_factor {
                return Err(ConfigError::InvalidField {
                    field: "high_freq_factor",
                    reason: format!(
                        "{high_freq_factor} must exceed low_freq_factor {low_freq_factor}"
                    ),
                });
            }
            let original_max_position_embeddings =
                req_usize(s, "original_max_position_embeddings")?;
            Ok(Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }))
        }
        other => Err(ConfigError::Unsupported(format!(
            "rope scaling of type {other:?} (only llama3 is implemented)"
        ))),
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
            Some("llama") => Architecture::Llama,
            Some(other) => {
                return Err(ConfigError::Unsupported(format!(
                    "model_type {other:?} (expected qwen3, qwen3_moe or llama)"
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
        let rope_scaling = rope_scaling(&v)?;
        let attention_bias = bool_field(&v, "attention_bias")?.unwrap_or(false);
        if attention_bias && architecture != Architecture::Llama {
            return Err(ConfigError::Unsupported(format!(
                "attention_bias = true for {}",
                architecture.model_type()
            )));
        }
        if bool_field(&v, "mlp_bias")?.unwrap_or(false) {
            return Err(ConfigError::Unsupported(
                "mlp_bias = true (biases on gate/up/down are not implemented)".into(),
            ));
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
            Architecture::Qwen3 | Architecture::Llama => None,
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
            rope_scaling,
            attention_bias,
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
        let mistral = DENSE_451.replace("qwen3", "mistral");
        assert!(matches!(
            ModelConfig::from_json(&mistral),
            Err(ConfigError::Unsupported(_))
        ));
        let qwen_bias = DENSE_451.replace("\"rope_scaling\":null", "\"attention_bias\":true");
        assert!(matches!(
            ModelConfig::from_json(&qwen_bias),
            Err(ConfigError::Unsupported(_))
        ));
    }

    /// Meta's Llama-3.1 spelling (transformers 4.x), without `head_dim`.
    const LLAMA3_4X: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":100,
        "hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"rms_norm_eps":1e-5,"rope_theta":500000.0,"attention_bias":false,
        "mlp_bias":false,"tie_word_embeddings":false,"torch_dtype":"bfloat16",
        "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#;

    #[test]
    fn parses_llama3_in_both_spellings() {
        let c = ModelConfig::from_json(LLAMA3_4X).unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert!(!c.architecture.has_qk_norm() && !c.attention_bias);
        assert_eq!(c.head_dim, 16, "derived from hidden / heads");
        assert_eq!(c.rope_theta, 500000.0);
        let want = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        assert_eq!(c.rope_scaling, want);
        // transformers 5.x: theta and scaling together in `rope_parameters`, biases on.
        let text = r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":32,
            "attention_bias":true,"mlp_bias":false,"dtype":"bfloat16","tie_word_embeddings":true,
            "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
                "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let c5 = ModelConfig::from_json(text).unwrap();
        assert_eq!((c5.rope_theta, c5.rope_scaling), (500000.0, want));
        assert!(c5.attention_bias && c5.tie_word_embeddings);
        assert_eq!((c5.head_dim, c5.q_dim()), (32, 128));
    }

    #[test]
    fn bad_llama3_configs_are_typed_errors() {
        let edit = |from: &str, to: &str| {
            assert!(LLAMA3_4X.contains(from), "{from}");
            ModelConfig::from_json(&LLAMA3_4X.replace(from, to)).unwrap_err()
        };
        assert_eq!(
            edit("\"factor\":8.0,", ""),
            ConfigError::MissingField("factor")
        );
        assert_eq!(
            edit("\"original_max_position_embeddings\":8192,", ""),
            ConfigError::MissingField("original_max_position_embeddings")
        );
        assert!(matches!(
            edit("\"factor\":8.0", "\"factor\":-8.0"),
            ConfigError::InvalidField {
                field: "factor",
                ..
            }
        ));
        assert!(matches!(
            edit("\"high_freq_factor\":4.0", "\"high_freq_factor\":0.5"),
            ConfigError::InvalidField {
                field: "high_freq_factor",
                ..
            }
        ));
        assert!(matches!(
            edit("\"low_freq_factor\":1.0", "\"low_freq_factor\":\"one\""),
            ConfigError::InvalidField {
                field: "low_freq_factor",
                ..
            }
        ));
        assert!(matches!(
            edit("\"rope_type\":\"llama3\"", "\"rope_type\":\"yarn\""),
            ConfigError::Unsupported(_)
        ));
        assert!(matches!(
            edit("\"mlp_bias\":false", "\"mlp_bias\":true"),
            ConfigError::Unsupported(_)
        ));
        assert!(matches!(
            edit("\"attention_bias\":false", "\"attention_bias\":1"),
            ConfigError::InvalidField {
                field: "attention_bias",
                ..
            }
        ));
        assert!(matches!(
            edit("\"num_attention_heads\":4", "\"num_attention_heads\":5"),
            ConfigError::InvalidField { .. }
        ));
        // hidden 64 over 6 heads (and 2 KV heads) leaves no head_dim to derive.
        assert_eq!(
            edit("\"num_attention_heads\":4", "\"num_attention_heads\":6"),
            ConfigError::MissingField("head_dim")
        );
    }
}
