//! Reading the quantization configuration of a checkpoint directory: which format, and the
//! scheme fields each reader needs.

use std::path::Path;

use serde_json::Value;

use crate::error::{file_err, FormatError, Result};

/// GPTQ zero-point convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptqZeros {
    /// AutoGPTQ-era files (`checkpoint_format: "gptq"`): `qzeros` holds `zero − 1`.
    V1,
    /// GPTQModel's `gptq_v2`: `qzeros` holds the zero points as they are.
    V2,
}

impl GptqZeros {
    /// The `checkpoint_format` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GptqZeros::V1 => "gptq",
            GptqZeros::V2 => "gptq_v2",
        }
    }
}

/// The scheme of a GPTQ checkpoint (formats.md §2.1).
#[derive(Clone, Debug, PartialEq)]
pub struct GptqScheme {
    /// Code width.
    pub bits: u8,
    /// Group size, `None` for `-1` (per channel).
    pub group_size: Option<usize>,
    /// Act-order (`desc_act`).
    pub desc_act: bool,
    /// Symmetric (`sym`, `true` when missing as AutoGPTQ assumes).
    pub sym: bool,
    /// Declared zero convention (`checkpoint_format`, else `format`, else v1).
    pub zeros: GptqZeros,
    /// The quantizer that wrote the file (`meta.quantizer`), if recorded.
    pub quantizer: Option<String>,
}

/// The scheme of an AutoAWQ GEMM checkpoint (formats.md §2.2).
#[derive(Clone, Debug, PartialEq)]
pub struct AwqScheme {
    /// Code width (4).
    pub bits: u8,
    /// Group size.
    pub group_size: usize,
    /// Whether zero points are stored (`zero_point`).
    pub zero_point: bool,
}

/// The weight scheme of a compressed-tensors checkpoint (formats.md §2.3).
#[derive(Clone, Debug, PartialEq)]
pub struct CompressedScheme {
    /// `pack-quantized` (weight-only) or `int-quantized` (W8A8 int8 weights).
    pub format: String,
    /// Weight bits.
    pub bits: u8,
    /// Symmetric weights.
    pub symmetric: bool,
    /// Group size (`strategy: group`), `None` for `channel`.
    pub group_size: Option<usize>,
    /// Activation bits when `input_activations` are quantized.
    pub act_bits: Option<u8>,
    /// Modules listed in `ignore`.
    pub ignore: Vec<String>,
}

/// The recognised quantization configuration of a directory.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum QuantConfig {
    /// GPTQ (AutoGPTQ, GPTQModel, this project).
    Gptq(GptqScheme),
    /// AutoAWQ GEMM.
    Awq(AwqScheme),
    /// compressed-tensors (llm-compressor).
    CompressedTensors(CompressedScheme),
    /// This project's native format; the full JSON object is kept for the reader.
    Native(Value),
}

impl QuantConfig {
    /// Short name of the format.
    pub fn format_name(&self) -> &'static str {
        match self {
            QuantConfig::Gptq(_) => "gptq",
            QuantConfig::Awq(_) => "awq",
            QuantConfig::CompressedTensors(_) => "compressed-tensors",
            QuantConfig::Native(_) => "native",
        }
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(file_err(path))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| FormatError::Config(format!("{}: {e}", path.display())))
}

/// The raw quantization config of a directory: `config.json["quantization_config"]`, else
/// `quantize_config.json` (GPTQ), else `quant_config.json` (AutoAWQ). `None` for a
/// full-precision checkpoint.
///
/// # Errors
/// Unreadable or non-JSON files.
pub fn raw_quant_config(dir: &Path) -> Result<Option<Value>> {
    if let Some(cfg) = read_json(&dir.join("config.json"))? {
        if let Some(q) = cfg.get("quantization_config") {
            if !q.is_null() {
                return Ok(Some(q.clone()));
            }
        }
    }
    for name in ["quantize_config.json", "quant_config.json"] {
        if let Some(v) = read_json(&dir.join(name))? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

fn get<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| v.get(*k)).filter(|x| !x.is_null())
}

fn bits_of(v: &Value, keys: &[&str]) -> Result<u8> {
    let b = get(v, keys)
        .and_then(Value::as_u64)
        .ok_or_else(|| FormatError::Config(format!("missing or non-integer {}", keys[0])))?;
    u8::try_from(b)
        .ok()
        .filter(|b| (1..=8).contains(b))
        .ok_or_else(|| FormatError::UnsupportedBits {
            module: "model".into(),
            bits: b.min(u32::MAX as u64) as u32,
            format: "this loader",
        })
}

fn group_of(v: &Value, keys: &[&str]) -> Result<Option<usize>> {
    match get(v, keys) {
        None => Ok(None),
        Some(g) => match g.as_i64() {
            Some(-1) => Ok(None),
            Some(g) if g > 0 => Ok(Some(g as usize)),
            _ => Err(FormatError::Config(format!("bad {}: {g}", keys[0]))),
        },
    }
}

/// Parses a quantization config object into the scheme of its format.
///
/// # Errors
/// [`FormatError::Config`] for an unknown `quant_method` or missing required fields,
/// [`FormatError::UnsupportedBits`] for widths outside 1–8.
pub fn parse_quant_config(q: &Value) -> Result<QuantConfig> {
    let method = get(q, &["quant_method"])
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    // AutoGPTQ's quantize_config.json may lack quant_method; AutoAWQ's quant_config.json uses w_bit.
    let method = match method {
        Some(m) => m,
        None if q.get("w_bit").is_some() => "awq".into(),
        None if q.get("bits").is_some() => "gptq".into(),
        None => return Err(FormatError::Config("no quant_method".into())),
    };
    match method.as_str() {
        "gptq" => {
            let fmt = get(q, &["checkpoint_format", "format"])
                .and_then(Value::as_str)
                .unwrap_or("gptq");
            let zeros = match fmt {
                "gptq" => GptqZeros::V1,
                "gptq_v2" => GptqZeros::V2,
                other => {
                    return Err(FormatError::Config(format!(
                        "GPTQ checkpoint_format {other:?} is not gptq or gptq_v2"
                    )))
                }
            };
            if let Some(p) = get(q, &["pack_dtype"]).and_then(Value::as_str) {
                if p != "int32" {
                    return Err(FormatError::Config(format!(
                        "pack_dtype {p:?}: only int32 packing is interoperable and supported"
                    )));
                }
            }
            let quantizer = q
                .get("meta")
                .and_then(|m| m.get("quantizer"))
                .and_then(|v| match v {
                    Value::Array(a) => a.first().and_then(Value::as_str).map(String::from),
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                });
            Ok(QuantConfig::Gptq(GptqScheme {
                bits: bits_of(q, &["bits", "w_bit"])?,
                group_size: group_of(q, &["group_size", "q_group_size"])?,
                desc_act: get(q, &["desc_act"])
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                sym: get(q, &["sym"]).and_then(Value::as_bool).unwrap_or(true),
                zeros,
                quantizer,
            }))
        }
        "awq" => {
            if let Some(v) = get(q, &["version"]).and_then(Value::as_str) {
                if !v.eq_ignore_ascii_case("gemm") {
                    return Err(FormatError::Config(format!(
                        "AWQ version {v:?}: only the GEMM layout is supported"
                    )));
                }
            }
            let group_size = group_of(q, &["group_size", "q_group_size"])?
                .ok_or_else(|| FormatError::Config("AWQ needs a positive group_size".into()))?;
            Ok(QuantConfig::Awq(AwqScheme {
                bits: bits_of(q, &["bits", "w_bit"])?,
                group_size,
                zero_point: get(q, &["zero_point"])
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            }))
        }
        "compressed-tensors" => parse_compressed(q).map(QuantConfig::CompressedTensors),
        "qwen3-quant" => Ok(QuantConfig::Native(q.clone())),
        other => Err(FormatError::Config(format!(
            "quant_method {other:?} is not one of gptq, awq, compressed-tensors, qwen3-quant"
        ))),
    }
}

fn parse_compressed(q: &Value) -> Result<CompressedScheme> {
    let bad = |r: &str| FormatError::Config(format!("compressed-tensors: {r}"));
    let format = get(q, &["format"])
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no format"))?
        .to_string();
    if format != "pack-quantized" && format != "int-quantized" {
        return Err(bad(&format!(
            "format {format:?} (supported: pack-quantized, int-quantized)"
        )));
    }
    let groups = get(q, &["config_groups"])
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no config_groups"))?;
    if groups.len() != 1 {
        return Err(bad("only one config group is supported"));
    }
    let group = groups.values().next().expect("one group");
    let w = group
        .get("weights")
        .ok_or_else(|| bad("no weights scheme"))?;
    if get(w, &["type"]).and_then(Value::as_str).unwrap_or("int") != "int" {
        return Err(bad("only integer weights are supported"));
    }
    let strategy = get(w, &["strategy"])
        .and_then(Value::as_str)
        .unwrap_or("channel");
    let group_size = match strategy {
        "group" => Some(
            group_of(w, &["group_size"])?
                .ok_or_else(|| bad("group strategy without group_size"))?,
        ),
        "channel" => None,
        other => return Err(bad(&format!("weight strategy {other:?}"))),
    };
    let act_bits = match group.get("input_activations") {
        Some(a) if !a.is_null() => Some(bits_of(a, &["num_bits"])?),
        _ => None,
    };
    let ignore = get(q, &["ignore"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    Ok(CompressedScheme {
        format,
        bits: bits_of(w, &["num_bits"])?,
        symmetric: get(w, &["symmetric"])
            .and_then(Value::as_bool)
            .unwrap_or(true),
        group_size,
        act_bits,
        ignore,
    })
}

/// The parsed quantization config of a directory, `None` when it is full precision.
///
/// # Errors
/// See [`raw_quant_config`] and [`parse_quant_config`].
pub fn read_quant_config(dir: &Path) -> Result<Option<QuantConfig>> {
    raw_quant_config(dir)?
        .map(|q| parse_quant_config(&q))
        .transpose()
}
