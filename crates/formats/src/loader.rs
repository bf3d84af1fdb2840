//! Loading any checkpoint (full precision, GPTQ v1/v2, AWQ GEMM, compressed-tensors, native) into
//! a [`Qwen3Model`] whose quantized linears are packed codes run by the CPU kernels: a quantized
//! weight is never expanded to f32.

use std::path::Path;

use qwen3_quant_io::{Checkpoint, ModelConfig};
use qwen3_quant_model::{DecoderLayer, LinearWeight, Qwen3Model};
use serde_json::Value;

use crate::config::{read_quant_config, GptqZeros, QuantConfig};
use crate::error::{FormatError, Result};
use crate::gptq::ZeroEvidence;
use crate::{awq, compressed, gptq, native};

/// Options of [`load_model`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Decode GPTQ zeros with this convention whatever the file declares and whatever the
    /// detection says (for files known to be mislabeled).
    pub gptq_zeros: Option<GptqZeros>,
}

qwen3_quant_core::setters!(LoadOptions {
    gptq_zeros: Option<GptqZeros> => with_gptq_zeros,
});

/// A loaded checkpoint.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model, quantized linears packed.
    pub model: Qwen3Model,
    /// The quantization config, `None` for a full-precision checkpoint.
    pub quant: Option<QuantConfig>,
    /// Linears loaded packed (the others are dense).
    pub packed_linears: usize,
    /// Things worth telling the user (activation quantization not simulated, …).
    pub notes: Vec<String>,
}

struct Source<'a> {
    ckpt: &'a Checkpoint,
    quant: &'a QuantConfig,
    zeros: Option<GptqZeros>,
    evidence: ZeroEvidence,
    packed: usize,
}

impl Source<'_> {
    fn linear(&mut self, prefix: &str, out: usize, inp: usize) -> Result<LinearWeight> {
        let dense_name = format!("{prefix}.weight");
        // Modules a format skips (GPTQ `dynamic`, compressed-tensors `ignore`, the native
        // `unquantized` list) are stored in full precision under their usual name.
        // (compressed-tensors int-quantized stores its int8 codes under `weight` too.)
        let dense = self
            .ckpt
            .tensor(&dense_name)
            .is_ok_and(|t| t.dtype.is_float());
        if dense {
            let w = self.ckpt.load_f32(&dense_name, &[out, inp])?;
            return Ok(LinearWeight::dense(out, inp, w)?);
        }
        // W8A8 int8 checkpoints run on the integer path: int8 weights, per-token int8 activations.
        if let QuantConfig::CompressedTensors(s) = self.quant {
            if s.format == "int-quantized" {
                if let Some(act_bits) = s.act_bits {
                    let d = compressed::decode(self.ckpt, prefix, out, inp, s)?;
                    d.validate(prefix)?;
                    let codes: Vec<i8> = d
                        .codes
                        .iter()
                        .map(|&c| (i16::from(c) - 128) as i8)
                        .collect();
                    self.packed += 1;
                    return LinearWeight::int8(codes, d.scales, out, inp, act_bits)
                        .map_err(|e| crate::error::inconsistent(prefix, e.to_string()));
                }
            }
        }
        let decoded = match self.quant {
            QuantConfig::Gptq(s) => {
                let z = self.zeros.unwrap_or(s.zeros);
                let d = gptq::decode(self.ckpt, prefix, out, inp, s, z)?;
                self.evidence
                    .add(&d, if z == GptqZeros::V1 { 1.0 } else { 0.0 });
                d
            }
            QuantConfig::Awq(s) => awq::decode(self.ckpt, prefix, out, inp, s)?,
            QuantConfig::CompressedTensors(s) => {
                compressed::decode(self.ckpt, prefix, out, inp, s)?
            }
            QuantConfig::Native(cfg) => {
                let scheme = native_scheme(cfg, prefix)?;
                let q = native::decode(self.ckpt, prefix, out, inp, &scheme)?;
                self.packed += 1;
                return Ok(match q.to_packed()? {
                    qwen3_quant_core::PackedWeight::Affine(p) => LinearWeight::Packed(p),
                    qwen3_quant_core::PackedWeight::Binary(b) => LinearWeight::Binary(b),
                });
            }
        };
        self.packed += 1;
        Ok(LinearWeight::Packed(decoded.to_packed(prefix)?))
    }
}

/// The scheme of module `prefix` in a native config (`overrides`, else `default`).
pub(crate) fn native_scheme(cfg: &Value, prefix: &str) -> Result<Value> {
    let version = cfg
        .get("format_version")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if version == 0 || version > native::NATIVE_FORMAT_VERSION {
        return Err(FormatError::Config(format!(
            "native format_version {version}: this build reads versions 1..={}",
            native::NATIVE_FORMAT_VERSION
        )));
    }
    cfg.get("overrides")
        .and_then(|o| o.get(prefix))
        .or_else(|| cfg.get("default"))
        .filter(|v| v.is_object())
        .cloned()
        .ok_or_else(|| FormatError::Config(format!("native config has no scheme for {prefix}")))
}

fn build_layer(src: &mut Source<'_>, c: &ModelConfig, i: usize) -> Result<DecoderLayer> {
    let ckpt = src.ckpt;
    Qwen3Model::assemble_layer(ckpt, c, i, &mut |prefix: &str, out, inp| {
        src.linear(prefix, out, inp)
    })
}

/// Loads a checkpoint directory of any supported format. Quantized linears become
/// [`LinearWeight::Packed`] (or [`LinearWeight::Binary`]); modules a format keeps in full
/// precision, embeddings, norms, the MoE router and `lm_head` are f32.
///
/// ```
/// # let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro-gptq-w4g128-actorder") else { return Ok(()); };
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/models/qwen3-micro-gptq-w4g128-actorder");
/// let loaded = qwen3_quant_formats::load_model(dir.as_ref(), &Default::default())?;
/// assert_eq!(loaded.packed_linears, 8 * 7);
/// assert_eq!(loaded.quant.as_ref().unwrap().format_name(), "gptq");
/// # Ok::<(), qwen3_quant_formats::FormatError>(())
/// ```
///
/// # Errors
/// Malformed files and configs, shapes that disagree, `g_idx` out of range, unsupported
/// widths (typed [`FormatError`]s), and [`FormatError::MislabeledZeros`] for a GPTQ file whose
/// zero points contradict its declared convention (unless [`LoadOptions::gptq_zeros`] forces one).
pub fn load_model(dir: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let ckpt = Checkpoint::open(dir)?;
    let config = ckpt.config()?;
    let quant = read_quant_config(dir)?;
    let Some(quant) = quant else {
        let model = Qwen3Model::from_checkpoint(&ckpt, config)?;
        return Ok(LoadedModel {
            model,
            quant: None,
            packed_linears: 0,
            notes: Vec::new(),
        });
    };
    let mut model = Qwen3Model::skeleton(&ckpt, config)?;
    let mut src = Source {
        ckpt: &ckpt,
        quant: &quant,
        zeros: opts.gptq_zeros,
        evidence: ZeroEvidence::default(),
        packed: 0,
    };
    for i in 0..model.config.num_hidden_layers {
        let layer = build_layer(&mut src, &model.config, i)?;
        model.layers.push(layer);
    }
    if let (QuantConfig::Gptq(s), None) = (&quant, opts.gptq_zeros) {
        if let Some(found) = src.evidence.verdict() {
            if found != s.zeros {
                let m = src.evidence.mean_raw();
                let (declared, other) = match s.zeros {
                    GptqZeros::V1 => (m - 1.0, m),
                    GptqZeros::V2 => (m, m - 1.0),
                };
                return Err(FormatError::MislabeledZeros {
                    declared: s.zeros.as_str(),
                    detected: found.as_str(),
                    mean_declared: declared,
                    mean_other: other,
                });
            }
        }
    }
    let mut notes = Vec::new();
    // compressed-tensors W8A8 runs its activations in int8 (above); the native format records
    // activation bits but its loader is weight-only for now.
    let act_bits = match &quant {
        QuantConfig::Native(v) => v.get("act_bits").and_then(Value::as_u64).map(|b| b as u8),
        _ => None,
    };
    if let Some(a) = act_bits {
        notes.push(format!(
            "the checkpoint asks for {a}-bit activations; this loader runs the packed weights with f32 activations (weight-only)"
        ));
    }
    let packed_linears = src.packed;
    Ok(LoadedModel {
        model,
        quant: Some(quant),
        packed_linears,
        notes,
    })
}
