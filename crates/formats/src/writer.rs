//! Writing a quantized model as a checkpoint directory in one of the four formats.
//!
//! The output is assembled in a temporary sibling directory and renamed into place at the end,
//! so a crash leaves either no output or a complete one; every file inside is itself written
//! atomically. The source directory is only read (its `config.json` and tokenizer files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qwen3_quant_core::{LinearId, QuantizedLinear, QuantizedWeight};

use qwen3_quant_io::write::{write_atomic, StreamingSafetensors, TensorData};
use qwen3_quant_io::Dtype;
use qwen3_quant_model::{DecoderLayer, FeedForward, Qwen3Model};
use serde_json::{json, Map, Value};

use crate::config::GptqZeros;
use crate::error::{file_err, FormatError, Result};
use crate::tensors::{float_dtype, float_tensor};
use crate::{awq, compressed, gptq, native};

/// A checkpoint format this crate writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// This project's format (anything the methods produce).
    Native,
    /// GPTQ v1 (v2 zeros only where v1 cannot hold a zero point of 0).
    Gptq,
    /// AutoAWQ GEMM (4-bit).
    Awq,
    /// compressed-tensors `pack-quantized` (W4A16/W8A16…) or `int-quantized` (W8A8).
    CompressedTensors,
}

impl Format {
    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::Gptq => "gptq",
            Format::Awq => "awq",
            Format::CompressedTensors => "compressed-tensors",
        }
    }
}

/// The file next to the config that records per-expert calibration token counts and the
/// expert policy of an MoE run.
pub const REPORT_FILE: &str = "quantization_report.json";

/// What the method did, recorded in the quantization config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MethodMeta {
    /// Method name (`rtn`, `gptq`, `awq`, `smoothquant`, `billm`).
    pub method: String,
    /// Activation bits the model is meant to run with (SmoothQuant W8A8, W4A8), if any.
    pub act_bits: Option<u8>,
    /// GPTQ true-sequential.
    pub true_sequential: Option<bool>,
    /// GPTQ dampening fraction.
    pub damp_percent: Option<f64>,
    /// GPTQ static groups.
    pub static_groups: Option<bool>,
    /// MoE: calibration tokens routed to each expert, per layer (empty for dense models).
    pub expert_tokens: Vec<(usize, Vec<usize>)>,
    /// MoE: the expert policy that chose each expert's statistics, as text.
    pub expert_policy: Option<String>,
}

/// Options of [`write_checkpoint`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WriteOptions {
    /// The format.
    pub format: Format,
    /// Largest shard in bytes before a new one is started (GPTQModel's default is 4 GB).
    pub max_shard_bytes: usize,
    /// Force GPTQ zeros; `None` writes v1 unless some zero point is 0 (then v2, with a warning).
    pub gptq_zeros: Option<GptqZeros>,
    /// Replace an existing non-empty output directory.
    pub overwrite: bool,
    /// What the method did.
    pub meta: MethodMeta,
}

qwen3_quant_core::setters!(WriteOptions {
    format: Format => with_format,
    max_shard_bytes: usize => with_max_shard_bytes,
    gptq_zeros: Option<GptqZeros> => with_gptq_zeros,
    overwrite: bool => with_overwrite,
    meta: MethodMeta => with_meta,
});

impl WriteOptions {
    /// Defaults for `format`: 2 GB shards, automatic GPTQ zeros, no overwrite.
    pub fn new(format: Format) -> Self {
        WriteOptions {
            format,
            max_shard_bytes: 2_000_000_000,
            gptq_zeros: None,
            overwrite: false,
            meta: MethodMeta::default(),
        }
    }
}

/// What [`write_checkpoint`] wrote.
#[derive(Clone, Debug)]
pub struct WriteReport {
    /// The output directory.
    pub dir: PathBuf,
    /// The format.
    pub format: Format,
    /// Files written (relative names).
    pub files: Vec<String>,
    /// Total bytes of the safetensors shards.
    pub tensor_file_bytes: u64,
    /// Things the user should know (a GPTQ file written with v2 zeros, …).
    pub warnings: Vec<String>,
    /// Which serving stacks accept this checkpoint, one line each.
    pub serving: Vec<String>,
}

/// Files copied from the source directory when present.
const COPIED: [&str; 9] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "LICENSE",
];

/// The common scheme of the affine linears, for the ecosystem formats (which hold one scheme).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Uniform {
    bits: u8,
    group_size: Option<usize>,
    sym: bool,
    act_order: bool,
}

fn uniform(format: Format, linears: &[LinearSummary]) -> Result<Uniform> {
    let fmt = format.as_str();
    let mut u: Option<Uniform> = None;
    for l in linears {
        let module = format!("model.{}", l.id);
        let Some((this, smoothing)) = l.affine else {
            return Err(FormatError::UnsupportedByFormat {
                format: fmt,
                module,
                reason: "BiLLM binary weights".into(),
            });
        };
        if smoothing {
            return Err(FormatError::UnsupportedByFormat {
                format: fmt,
                module,
                reason: "SmoothQuant factors that are not folded into the preceding norm".into(),
            });
        }
        match &mut u {
            None => u = Some(this),
            Some(prev) => {
                if (prev.bits, prev.group_size, prev.sym) != (this.bits, this.group_size, this.sym)
                {
                    return Err(FormatError::UnsupportedByFormat {
                        format: fmt,
                        module,
                        reason: format!(
                            "a mix of schemes ({} bits/group {:?}/sym {} and {} bits/group {:?}/sym {})",
                            prev.bits, prev.group_size, prev.sym, this.bits, this.group_size, this.sym
                        ),
                    });
                }
                prev.act_order |= this.act_order;
            }
        }
    }
    u.ok_or_else(|| FormatError::UnsupportedByFormat {
        format: fmt,
        module: "model".into(),
        reason: "no quantized linear".into(),
    })
}

/// Which serving stacks load a checkpoint of this format and scheme (formats.md), one line each.
fn serving_notes(
    format: Format,
    u: Option<Uniform>,
    zeros: GptqZeros,
    moe: bool,
    act_bits: Option<u8>,
) -> Vec<String> {
    let mut v = Vec::new();
    match (format, u) {
        (Format::Native, _) | (_, None) => v.push(
            "native format: only qwen3-quant loads it (no Python serving stack reads it)".into(),
        ),
        (Format::Gptq, Some(u)) => {
            let marlin = matches!((u.bits, u.sym), (4, true) | (8, true))
                && matches!(u.group_size, None | Some(32) | Some(64) | Some(128));
            if marlin && zeros == GptqZeros::V1 {
                v.push("vLLM gptq_marlin (fp16 and bf16), Hugging Face transformers, GPTQModel, AutoGPTQ".into());
            } else {
                if !marlin {
                    v.push(format!(
                        "vLLM: not Marlin-compatible ({}-bit, {}, group {}): falls back to the gptq (exllama) kernel, fp16 activations only",
                        u.bits,
                        if u.sym { "symmetric" } else { "asymmetric" },
                        u.group_size.map_or("-1".to_string(), |g| g.to_string())
                    ));
                }
                if zeros == GptqZeros::V2 {
                    v.push("gptq_v2 zeros: GPTQModel and vLLM's non-Marlin gptq path (since vLLM PR #26092) read them; AutoGPTQ and older vLLM do not".into());
                } else {
                    v.push("Hugging Face transformers, GPTQModel, AutoGPTQ (bits 2/3/4/8)".into());
                }
                if moe && !u.sym {
                    v.push("vLLM MoE (MoeWNA16) assumes symmetric GPTQ: asymmetric MoE experts are unsafe there".into());
                }
            }
        }
        (Format::Awq, Some(_)) => {
            v.push("vLLM awq / awq_marlin, Hugging Face transformers (AutoAWQ GEMM layout)".into())
        }
        (Format::CompressedTensors, Some(u)) => {
            if act_bits == Some(8) {
                v.push("vLLM compressed-tensors W8A8 int8 (dynamic per-token activations)".into());
            } else if u.sym {
                v.push(format!("vLLM compressed-tensors W{}A16 (Marlin for 4/8-bit), Hugging Face transformers", u.bits));
            } else {
                v.push(format!(
                    "vLLM compressed-tensors W{}A16 asymmetric (dense models)",
                    u.bits
                ));
                if moe {
                    v.push(
                        "vLLM rejects asymmetric MoE in compressed-tensors (llm-compressor #2628)"
                            .into(),
                    );
                }
            }
        }
    }
    v
}

/// Writes tensors into shards of at most `max` bytes (a tensor larger than that gets a shard of
/// its own), streaming each tensor to disk as it comes: memory holds one tensor, never a shard.
struct Shards {
    dir: PathBuf,
    max: usize,
    current: Option<StreamingSafetensors>,
    written: Vec<(String, Vec<String>)>,
    bytes: u64,
}

impl Shards {
    fn new(dir: PathBuf, max: usize) -> Self {
        Shards {
            dir,
            max,
            current: None,
            written: Vec::new(),
            bytes: 0,
        }
    }

    /// The shard the next `len` bytes go to.
    fn shard_for(&mut self, len: u64) -> Result<&mut StreamingSafetensors> {
        let full = self
            .current
            .as_ref()
            .is_some_and(|c| !c.is_empty() && c.bytes() + len > self.max as u64);
        if full {
            self.flush()?;
        }
        if self.current.is_none() {
            let name = format!("shard-{}.tmp.safetensors", self.written.len());
            let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
            self.current = Some(StreamingSafetensors::create(self.dir.join(name), meta)?);
        }
        Ok(self.current.as_mut().expect("just created"))
    }

    fn push(&mut self, t: TensorData) -> Result<()> {
        self.shard_for(t.bytes.len() as u64)?
            .push(&t.name, t.dtype, t.shape, &t.bytes)?;
        Ok(())
    }

    /// Copies tensor `name` of `src` as it is, 64 MB at a time, releasing the mapped pages it
    /// has read so that a large table never becomes resident as a whole.
    fn copy_from(&mut self, src: &qwen3_quant_io::Checkpoint, name: &str) -> Result<()> {
        let t = src.tensor(name)?;
        let (dtype, shape, data) = (t.dtype, t.shape.to_vec(), t.data);
        let shard = self.shard_for(data.len() as u64)?;
        shard.push_with(name, dtype, shape, data.len() as u64, &mut |w| {
            const CHUNK: usize = 64 << 20;
            for (k, c) in data.chunks(CHUNK).enumerate() {
                w.write_all(c)?;
                src.release_range(name, k * CHUNK, c.len());
            }
            Ok(())
        })?;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let name = format!("shard-{}.tmp.safetensors", self.written.len());
        let names: Vec<String> = cur.names().map(str::to_string).collect();
        self.bytes += cur.bytes();
        cur.finish()?;
        self.written.push((name, names));
        Ok(())
    }

    /// Final names: `model.safetensors` for one shard, else `model-0000i-of-0000n.safetensors`
    /// with `model.safetensors.index.json`.
    fn finish(mut self) -> Result<(Vec<String>, u64)> {
        self.flush()?;
        let n = self.written.len().max(1);
        let mut files = Vec::new();
        let mut weight_map = Map::new();
        for (i, (tmp, names)) in self.written.iter().enumerate() {
            let name = if n == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
            };
            std::fs::rename(self.dir.join(tmp), self.dir.join(&name))
                .map_err(file_err(self.dir.join(&name)))?;
            for t in names {
                weight_map.insert(t.clone(), Value::String(name.clone()));
            }
            files.push(name);
        }
        if n > 1 {
            let index = json!({"metadata": {"total_size": self.bytes}, "weight_map": weight_map});
            write_json(&self.dir.join("model.safetensors.index.json"), &index)?;
            files.push("model.safetensors.index.json".into());
        }
        Ok((files, self.bytes))
    }
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("serialisable JSON");
    Ok(write_atomic(path, format!("{text}\n").as_bytes())?)
}

/// Checks, before any work, that `out` can receive a checkpoint of `source`: refuses an output
/// that is the source or inside it, and one that exists and is not empty (unless `overwrite`).
/// [`write_checkpoint`] checks the same again when it starts writing.
///
/// # Errors
/// [`FormatError::Output`], or [`FormatError::File`] when `source` does not exist.
pub fn check_output_dir(out: &Path, source: &Path, overwrite: bool) -> Result<()> {
    check_output(out, source, overwrite)
}

/// Refuses an output that is the source or inside it, and one that exists and is not empty
/// (unless `overwrite`).
pub(crate) fn check_output(out: &Path, source: &Path, overwrite: bool) -> Result<()> {
    let bad = |reason: &str| FormatError::Output {
        path: out.to_path_buf(),
        reason: reason.into(),
    };
    let src = source.canonicalize().map_err(file_err(source))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(file_err(&parent))?;
    let parent = parent.canonicalize().map_err(file_err(&parent))?;
    let target = parent.join(
        out.file_name()
            .ok_or_else(|| bad("has no directory name"))?,
    );
    if target.starts_with(&src) {
        return Err(bad(
            "is the input directory or inside it (inputs are never modified)",
        ));
    }
    if out.exists() {
        if !out.is_dir() {
            return Err(bad("exists and is not a directory"));
        }
        let empty = std::fs::read_dir(out)
            .map_err(file_err(out))?
            .next()
            .is_none();
        if !empty && !overwrite {
            return Err(bad(
                "exists and is not empty (pass overwrite to replace it)",
            ));
        }
    }
    Ok(())
}

/// Bytes the checkpoint will take: the quantized linears at their storage bits per weight, and
/// every other tensor of the source (embeddings, norms, router, lm_head) at its own size.
fn projected_bytes(source: &Path, linears: &[LinearSummary]) -> Result<u64> {
    let ckpt = qwen3_quant_io::Checkpoint::open(source)?;
    let replaced: std::collections::BTreeSet<String> = linears
        .iter()
        .map(|l| format!("model.{}.weight", l.id))
        .collect();
    let mut bytes = 0u64;
    for name in ckpt.names() {
        if !replaced.contains(name) {
            bytes += ckpt.tensor(name)?.data.len() as u64;
        }
    }
    for l in linears {
        bytes += ((l.out * l.inp) as f64 * l.bits_per_weight / 8.0).ceil() as u64;
    }
    Ok(bytes)
}

/// Bytes that quantizing `source` at `bits_per_weight` will write to `out`'s file system
/// (the checkpoint, plus the resume state kept beside it until the end: the quantized linears
/// once more and `activation_bytes` of calibration inputs), checked against its free space
/// before any work.
///
/// # Errors
/// [`FormatError::NoSpace`] when they do not fit (with 5% and 1 MB of margin); the source's
/// I/O errors.
pub fn check_space_for_run(
    out: &Path,
    source: &Path,
    bits_per_weight: f64,
    activation_bytes: u64,
) -> Result<u64> {
    let ckpt = qwen3_quant_io::Checkpoint::open(source)?;
    let (mut other, mut linear) = (0u64, 0u64);
    for name in ckpt.names() {
        let t = ckpt.tensor(name)?;
        let is_linear = name.ends_with("_proj.weight") && name.contains(".layers.");
        if is_linear {
            linear += (t.numel() as f64 * bits_per_weight / 8.0).ceil() as u64;
        } else {
            other += t.data.len() as u64;
        }
    }
    let needed = other + 2 * linear + activation_bytes;
    check_space(
        out,
        needed,
        free_space(out.parent().unwrap_or(Path::new("."))),
    )?;
    Ok(needed)
}

/// Free bytes for this user on the file system holding `dir` (or its nearest existing
/// ancestor); `None` where the platform does not say.
pub fn free_space(dir: &Path) -> Option<u64> {
    let mut d = dir.to_path_buf();
    while !d.exists() {
        d = d.parent()?.to_path_buf();
    }
    statvfs_available(&d)
}

#[cfg(unix)]
fn statvfs_available(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string and `st` a writable statvfs; the struct is read
    // only when the call reports success.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some, u64 on Linux).
    #[allow(clippy::unnecessary_cast)]
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(not(unix))]
fn statvfs_available(_dir: &Path) -> Option<u64> {
    None
}

/// Refuses to start writing when `needed` (plus 5% and 1 MB for metadata, tokenizer files and
/// the temporary directory's bookkeeping) exceeds `available`.
fn check_space(out: &Path, needed: u64, available: Option<u64>) -> Result<()> {
    let Some(available) = available else {
        return Ok(());
    };
    let needed = needed as f64 * 1.05 + 1e6;
    if needed > available as f64 {
        return Err(FormatError::NoSpace {
            path: out.to_path_buf(),
            needed_mb: needed / 1e6,
            available_mb: available as f64 / 1e6,
        });
    }
    Ok(())
}

fn temp_sibling(out: &Path, tag: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    out.with_file_name(format!(".{name}.{tag}-{}-{nanos}", std::process::id()))
}

/// Writes `model` (embeddings, norms, router and `lm_head` as the method left them; they may
/// have been transformed by AWQ or SmoothQuant) with the quantized linears of `quantized` into
/// `out`, in `opts.format`. Linears of `model` that are not in `quantized` are stored in full
/// precision under their usual `weight` name and declared as skipped. `source` is the directory
/// the model was loaded from: its `config.json` is extended with `quantization_config` and its
/// tokenizer files are copied; it is never modified.
///
/// # Errors
/// [`FormatError::UnsupportedByFormat`] when the format cannot hold a linear (the native format
/// holds everything), [`FormatError::Output`] for an unusable output directory, I/O errors.
pub fn write_checkpoint(
    out: &Path,
    source: &Path,
    model: &Qwen3Model,
    quantized: &[(LinearId, QuantizedWeight)],
    opts: &WriteOptions,
) -> Result<WriteReport> {
    let mut by_layer: Vec<Vec<(LinearId, &QuantizedWeight)>> = vec![Vec::new(); model.layers.len()];
    for (id, q) in quantized {
        let slot = by_layer.get_mut(id.layer).ok_or_else(|| {
            FormatError::Config(format!("{id}: the model has {} layers", model.layers.len()))
        })?;
        slot.push((*id, q));
    }
    let mut layers = InMemory { model, by_layer };
    write_checkpoint_streamed(out, source, model, &mut layers, opts)
}

/// What a [`LayerSource`] calls with one decoder layer and its quantized linears.
pub type LayerVisitor<'a> =
    dyn FnMut(&DecoderLayer, &[(LinearId, &QuantizedWeight)]) -> Result<()> + 'a;

/// The decoder layers a checkpoint is written from, handed over one at a time: a streamed run
/// ([`crate::ResumeDir`]) never holds the whole model.
pub trait LayerSource {
    /// Calls `f` with decoder layer `i` and its quantized linears (the other linears of the
    /// layer are written in full precision as skipped modules).
    ///
    /// # Errors
    /// The source's, and `f`'s.
    fn with_layer(&mut self, i: usize, f: &mut LayerVisitor<'_>) -> Result<()>;
}

/// The layers of a model in memory.
struct InMemory<'a> {
    model: &'a Qwen3Model,
    by_layer: Vec<Vec<(LinearId, &'a QuantizedWeight)>>,
}

impl LayerSource for InMemory<'_> {
    fn with_layer(&mut self, i: usize, f: &mut LayerVisitor<'_>) -> Result<()> {
        let layer = self
            .model
            .layers
            .get(i)
            .ok_or(qwen3_quant_model::ModelError::NoSuchLayer {
                layer: i,
                layers: self.model.layers.len(),
            })?;
        f(layer, &self.by_layer[i])
    }
}

/// What the format checks and the configs need to know of one quantized linear, gathered in a
/// first pass so that the codes themselves are read one layer at a time.
struct LinearSummary {
    id: LinearId,
    out: usize,
    inp: usize,
    bits_per_weight: f64,
    /// Scheme entry of the native config.
    scheme: Value,
    /// The affine layout (`None` for binary weights), and whether it carries SmoothQuant
    /// factors that are not folded.
    affine: Option<(Uniform, bool)>,
    /// Why the chosen format cannot hold it.
    unsupported: Option<String>,
    /// GPTQ v1 can hold its zero points.
    v1_ok: bool,
}

fn summarize(id: LinearId, q: &QuantizedWeight, opts: &WriteOptions, w8a8: bool) -> LinearSummary {
    let unsupported = match (opts.format, q) {
        (Format::Awq, QuantizedWeight::Affine(a)) => awq::unsupported(a),
        (Format::CompressedTensors, QuantizedWeight::Affine(a)) if w8a8 => {
            compressed::int8_unsupported(a)
        }
        (Format::Gptq, QuantizedWeight::Affine(a)) => a
            .out_features()
            .checked_mul(a.bits().get() as usize)
            .filter(|v| v % 32 == 0 && (a.in_features() * a.bits().get() as usize) % 32 == 0)
            .is_none()
            .then(|| "shapes that do not fill 32-bit words".to_string()),
        _ => None,
    };
    LinearSummary {
        id,
        out: q.out_features(),
        inp: q.in_features(),
        bits_per_weight: q.bits_per_weight(),
        scheme: native::scheme_of(q, opts.meta.act_bits),
        affine: q.as_affine().map(|a| {
            (
                Uniform {
                    bits: a.bits().get(),
                    group_size: a.group_size(),
                    sym: a.sym(),
                    act_order: a.perm().is_some(),
                },
                a.smoothing().is_some(),
            )
        }),
        unsupported,
        v1_ok: q.as_affine().is_none_or(gptq::v1_can_hold),
    }
}

/// [`write_checkpoint`] from a [`LayerSource`]: the layers are read twice, once to check the
/// whole model against the format and once to write it, and never held together. `model`
/// gives the configuration and the ends: its embeddings, final norm and `lm_head`, or, when
/// [`Qwen3Model::ends_loaded`] is false (a streamed run), the source's embedding and `lm_head`
/// tensors copied as they are.
///
/// # Errors
/// As [`write_checkpoint`], plus the source's.
pub fn write_checkpoint_streamed(
    out: &Path,
    source: &Path,
    model: &Qwen3Model,
    layers: &mut dyn LayerSource,
    opts: &WriteOptions,
) -> Result<WriteReport> {
    check_output(out, source, opts.overwrite)?;
    let mut cfg_json: Value = {
        let p = source.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(file_err(&p))?;
        serde_json::from_str(&text)
            .map_err(|e| FormatError::Config(format!("{}: {e}", p.display())))?
    };
    // A head of its own (e.g. untied by a residual rotation) is written as lm_head.weight, and
    // loaders must not tie it back to the embeddings.
    if model.lm_head.is_some() && !model.config.tie_word_embeddings {
        if let Some(obj) = cfg_json.as_object_mut() {
            obj.insert("tie_word_embeddings".into(), Value::Bool(false));
        }
    }
    let n_layers = model.config.num_hidden_layers;
    let w8a8 = opts.format == Format::CompressedTensors && opts.meta.act_bits == Some(8);
    // First pass: what every quantized linear is, one layer at a time.
    let mut summaries: Vec<LinearSummary> = Vec::new();
    let mut moe = false;
    for i in 0..n_layers {
        layers.with_layer(i, &mut |layer, qs| {
            moe |= matches!(layer.ffn, FeedForward::Moe(_));
            summaries.extend(qs.iter().map(|(id, q)| summarize(*id, q, opts, w8a8)));
            Ok(())
        })?;
    }

    // Validate the whole model against the format before writing anything.
    let u = match opts.format {
        Format::Native => None,
        f => Some(uniform(f, &summaries)?),
    };
    let mut warnings = Vec::new();
    for s in &summaries {
        if let Some(reason) = &s.unsupported {
            return Err(FormatError::UnsupportedByFormat {
                format: opts.format.as_str(),
                module: format!("model.{}", s.id),
                reason: reason.clone(),
            });
        }
    }
    if opts.format == Format::CompressedTensors && opts.meta.act_bits.is_some_and(|a| a != 8) {
        return Err(FormatError::UnsupportedByFormat {
            format: "compressed-tensors",
            module: "model".into(),
            reason: format!(
                "{:?}-bit activations (only W8A8 int8 is written)",
                opts.meta.act_bits
            ),
        });
    }
    let zeros = match (opts.format, opts.gptq_zeros) {
        (Format::Gptq, Some(z)) => z,
        (Format::Gptq, None) => {
            let bad = summaries.iter().filter(|s| !s.v1_ok).count();
            if bad > 0 {
                warnings.push(format!(
                    "{bad} linear(s) have a zero point of 0, which GPTQ v1 (zero − 1) cannot store: written as gptq_v2 (raw zeros)"
                ));
                GptqZeros::V2
            } else {
                GptqZeros::V1
            }
        }
        _ => GptqZeros::V1,
    };

    check_space(
        out,
        projected_bytes(source, &summaries)?,
        free_space(out.parent().unwrap_or(Path::new("."))),
    )?;
    let tmp = temp_sibling(out, "partial");
    std::fs::create_dir_all(&tmp).map_err(file_err(&tmp))?;
    let result = (|| {
        let dtype = float_dtype(model.config.dtype.as_deref());
        let mut shards = Shards::new(tmp.clone(), opts.max_shard_bytes.max(1));
        let (h, v) = (model.config.hidden_size, model.config.vocab_size);
        let src_ckpt = if model.ends_loaded() {
            None
        } else {
            Some(qwen3_quant_io::Checkpoint::open(source)?)
        };
        match &src_ckpt {
            None => shards.push(float_tensor(
                "model.embed_tokens.weight".into(),
                dtype,
                vec![v, h],
                &model.embed_tokens,
            ))?,
            Some(c) => shards.copy_from(c, "model.embed_tokens.weight")?,
        }
        let mut skipped: Vec<String> = Vec::new();
        for i in 0..n_layers {
            layers.with_layer(i, &mut |layer, qs| {
                let by_id: BTreeMap<LinearId, &QuantizedWeight> =
                    qs.iter().map(|(id, q)| (*id, *q)).collect();
                write_layer(
                    &mut shards,
                    layer,
                    &by_id,
                    &mut skipped,
                    opts,
                    zeros,
                    dtype,
                    w8a8,
                )
            })?;
        }
        shards.push(float_tensor(
            "model.norm.weight".into(),
            dtype,
            vec![h],
            &model.norm,
        ))?;
        match (&src_ckpt, &model.lm_head) {
            (None, Some(lm)) => shards.push(float_tensor(
                "lm_head.weight".into(),
                dtype,
                vec![lm.out_features(), lm.in_features()],
                &lm.to_dense(),
            ))?,
            (Some(c), _) if c.contains("lm_head.weight") => {
                shards.copy_from(c, "lm_head.weight")?
            }
            _ => {}
        }
        let (mut files, bytes) = shards.finish()?;

        let qcfg = quant_config(opts, u, zeros, moe, &skipped, &summaries, w8a8);
        if let Some(obj) = cfg_json.as_object_mut() {
            obj.insert("quantization_config".into(), qcfg.clone());
        }
        write_json(&tmp.join("config.json"), &cfg_json)?;
        files.push("config.json".into());
        match opts.format {
            Format::Gptq => {
                write_json(&tmp.join("quantize_config.json"), &qcfg)?;
                files.push("quantize_config.json".into());
            }
            Format::Awq => {
                let g = u.and_then(|u| u.group_size).unwrap_or(0);
                let q =
                    json!({"zero_point": true, "q_group_size": g, "w_bit": 4, "version": "GEMM"});
                write_json(&tmp.join("quant_config.json"), &q)?;
                files.push("quant_config.json".into());
            }
            _ => {}
        }
        // What the run measured that no ecosystem config has a field for (kept out of
        // `quantization_config`, whose readers may reject unknown keys).
        if !opts.meta.expert_tokens.is_empty() {
            let counts: Map<String, Value> = opts
                .meta
                .expert_tokens
                .iter()
                .map(|(l, c)| (l.to_string(), json!(c)))
                .collect();
            let report = json!({
                "quantizer": format!("qwen3-quant:{}", env!("CARGO_PKG_VERSION")),
                "method": opts.meta.method,
                "expert_policy": opts.meta.expert_policy,
                "expert_tokens": counts,
            });
            write_json(&tmp.join(REPORT_FILE), &report)?;
            files.push(REPORT_FILE.into());
        }
        for name in COPIED {
            let src = source.join(name);
            if src.is_file() {
                let bytes = std::fs::read(&src).map_err(file_err(&src))?;
                write_atomic(tmp.join(name), &bytes)?;
                files.push(name.into());
            }
        }
        Ok((files, bytes))
    })();
    let (files, bytes) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // Move the finished directory into place.
    let old = if out.exists() {
        let old = temp_sibling(out, "old");
        std::fs::rename(out, &old).map_err(file_err(out))?;
        Some(old)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&tmp, out) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, out);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(file_err(out)(e));
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(old);
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(WriteReport {
        dir: out.to_path_buf(),
        format: opts.format,
        files,
        tensor_file_bytes: bytes,
        serving: serving_notes(opts.format, u, zeros, moe, opts.meta.act_bits),
        warnings,
    })
}

/// Encodes one float tensor (name, shape, values).
pub(crate) type FloatEncoder<'a> = dyn Fn(String, Vec<usize>, &[f32]) -> TensorData + 'a;

/// The full-precision tensors of a decoder layer besides its linears, in writing order: the two
/// norms, Qwen3's per-head q/k norms, attention biases (LLaMA-derived models, stored as
/// `<module>.bias` where transformers' and vLLM's quantized linears read them) and the MoE
/// router; `make` encodes each (the checkpoint's dtype, or exact f32 for the resume state).
pub(crate) fn layer_float_tensors(
    layer: &DecoderLayer,
    make: &FloatEncoder<'_>,
) -> Vec<TensorData> {
    let p = format!("model.layers.{}", layer.index);
    let mut t = vec![
        make(
            format!("{p}.input_layernorm.weight"),
            vec![layer.input_layernorm.len()],
            &layer.input_layernorm,
        ),
        make(
            format!("{p}.post_attention_layernorm.weight"),
            vec![layer.post_attention_layernorm.len()],
            &layer.post_attention_layernorm,
        ),
    ];
    for (name, norm) in [
        ("q_norm", &layer.attn.q_norm),
        ("k_norm", &layer.attn.k_norm),
    ] {
        if let Some(w) = norm {
            t.push(make(
                format!("{p}.self_attn.{name}.weight"),
                vec![w.len()],
                w,
            ));
        }
    }
    let b = &layer.attn.bias;
    for (name, bias) in [
        ("q_proj", &b.q),
        ("k_proj", &b.k),
        ("v_proj", &b.v),
        ("o_proj", &b.o),
    ] {
        if let Some(v) = bias {
            t.push(make(format!("{p}.self_attn.{name}.bias"), vec![v.len()], v));
        }
    }
    if let FeedForward::Moe(m) = &layer.ffn {
        let r = &m.router;
        t.push(make(
            format!("{p}.mlp.gate.weight"),
            vec![r.out_features(), r.in_features()],
            &r.to_dense(),
        ));
    }
    t
}

/// Pushes every tensor of one decoder layer.
#[allow(clippy::too_many_arguments)]
fn write_layer(
    shards: &mut Shards,
    layer: &DecoderLayer,
    by_id: &BTreeMap<LinearId, &QuantizedWeight>,
    skipped: &mut Vec<String>,
    opts: &WriteOptions,
    zeros: GptqZeros,
    dtype: Dtype,
    w8a8: bool,
) -> Result<()> {
    let float = |name: String, shape: Vec<usize>, v: &[f32]| float_tensor(name, dtype, shape, v);
    for t in layer_float_tensors(layer, &float) {
        shards.push(t)?;
    }
    for id in layer.linear_ids() {
        let prefix = format!("model.{id}");
        let tensors = match by_id.get(&id) {
            Some(q) => encode_linear(&prefix, q, opts, zeros, dtype, w8a8)?,
            None => {
                let w = layer
                    .linear(id.kind, id.expert)
                    .expect("listed linear exists");
                skipped.push(prefix.clone());
                vec![float_tensor(
                    format!("{prefix}.weight"),
                    dtype,
                    vec![w.out_features(), w.in_features()],
                    &w.to_dense(),
                )]
            }
        };
        for t in tensors {
            shards.push(t)?;
        }
    }
    Ok(())
}

fn encode_linear(
    prefix: &str,
    q: &QuantizedWeight,
    opts: &WriteOptions,
    zeros: GptqZeros,
    dtype: Dtype,
    w8a8: bool,
) -> Result<Vec<TensorData>> {
    let affine = |q: &QuantizedWeight| -> Result<QuantizedLinear> {
        q.as_affine()
            .cloned()
            .ok_or_else(|| FormatError::UnsupportedByFormat {
                format: opts.format.as_str(),
                module: prefix.into(),
                reason: "BiLLM binary weights".into(),
            })
    };
    match opts.format {
        Format::Native => Ok(native::encode(prefix, q, false)),
        Format::Gptq => gptq::encode(prefix, &affine(q)?, zeros),
        Format::Awq => awq::encode(prefix, &affine(q)?),
        Format::CompressedTensors if w8a8 => compressed::encode_int8(prefix, &affine(q)?, dtype),
        Format::CompressedTensors => compressed::encode_packed(prefix, &affine(q)?, dtype),
    }
}

/// Escapes a module name for a Python regular expression.
fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

fn quant_config(
    opts: &WriteOptions,
    u: Option<Uniform>,
    zeros: GptqZeros,
    moe: bool,
    skipped: &[String],
    linears: &[LinearSummary],
    w8a8: bool,
) -> Value {
    let quantizer = format!("qwen3-quant:{}", env!("CARGO_PKG_VERSION"));
    let m = &opts.meta;
    match (opts.format, u) {
        (Format::Native, _) | (_, None) => {
            // A default scheme (the most common one) plus per-module overrides.
            let mut counts: BTreeMap<String, (usize, Value)> = BTreeMap::new();
            for l in linears {
                let s = l.scheme.clone();
                counts.entry(s.to_string()).or_insert((0, s)).0 += 1;
            }
            let default = counts
                .values()
                .max_by_key(|(n, _)| *n)
                .map(|(_, s)| s.clone())
                .unwrap_or(Value::Null);
            let mut overrides = Map::new();
            for l in linears {
                if l.scheme != default {
                    overrides.insert(format!("model.{}", l.id), l.scheme.clone());
                }
            }
            json!({
                "quant_method": "qwen3-quant", "format": "qwen3-quant-native",
                "format_version": native::NATIVE_FORMAT_VERSION, "method": m.method,
                "act_bits": m.act_bits, "default": default, "overrides": overrides,
                "unquantized": skipped, "quantizer": quantizer,
            })
        }
        (Format::Gptq, Some(u)) => {
            let mut dynamic = Map::new();
            if moe {
                dynamic.insert("-:.*\\.mlp\\.gate$".into(), json!({}));
            }
            for s in skipped {
                dynamic.insert(format!("-:^{}$", regex_escape(s)), json!({}));
            }
            let damp = m.damp_percent.unwrap_or(0.01);
            let mut c = json!({
                "bits": u.bits, "group_size": u.group_size.map_or(-1, |g| g as i64),
                "desc_act": u.act_order, "sym": u.sym, "lm_head": false,
                "quant_method": "gptq", "method": "gptq",
                "checkpoint_format": zeros.as_str(), "format": zeros.as_str(), "pack_dtype": "int32",
                "true_sequential": m.true_sequential.unwrap_or(true), "damp_percent": damp,
                "static_groups": m.static_groups.unwrap_or(false),
                "meta": {"quantizer": [quantizer], "uri": "https://example.invalid/qwen3-quant",
                         "method": m.method, "damp_percent": damp,
                         "true_sequential": m.true_sequential.unwrap_or(true),
                         "static_groups": m.static_groups.unwrap_or(false)},
            });
            if !dynamic.is_empty() {
                c["dynamic"] = Value::Object(dynamic);
            }
            c
        }
        (Format::Awq, Some(u)) => {
            let skip: Vec<Value> = skipped.iter().map(|s| Value::String(s.clone())).collect();
            json!({
                "quant_method": "awq", "zero_point": true, "group_size": u.group_size,
                "bits": 4, "version": "gemm",
                "modules_to_not_convert": if skip.is_empty() { Value::Null } else { Value::Array(skip) },
                "quantizer": quantizer, "method": m.method,
            })
        }
        (Format::CompressedTensors, Some(u)) => {
            let mut ignore = vec![Value::String("lm_head".into())];
            if moe {
                ignore.push(Value::String("re:.*mlp.gate$".into()));
            }
            ignore.extend(
                skipped
                    .iter()
                    .map(|s| Value::String(s.trim_start_matches("model.").to_string())),
            );
            let (format, weights, input) = if w8a8 {
                (
                    "int-quantized",
                    json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel",
                           "group_size": null, "block_structure": null, "dynamic": false, "actorder": null, "observer": "minmax"}),
                    json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": "token",
                           "group_size": null, "block_structure": null, "dynamic": true, "actorder": null, "observer": null}),
                )
            } else {
                (
                    "pack-quantized",
                    json!({"num_bits": u.bits, "type": "int", "symmetric": u.sym,
                           "strategy": if u.group_size.is_some() { "group" } else { "channel" },
                           "group_size": u.group_size, "block_structure": null, "dynamic": false,
                           "actorder": if u.act_order { Value::String("group".into()) } else { Value::Null },
                           "observer": "minmax"}),
                    Value::Null,
                )
            };
            json!({
                "quant_method": "compressed-tensors", "format": format,
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                               "input_activations": input, "output_activations": null, "format": format}},
                "ignore": ignore, "quantization_status": "compressed", "kv_cache_scheme": null,
                "global_compression_ratio": null, "sparsity_config": {}, "transform_config": {},
                "version": "0.12.2", "quantizer": quantizer,
            })
        }
    }
}

#[cfg(test)]
mod space_tests {
    use super::*;

    #[test]
    fn a_checkpoint_larger_than_the_free_space_is_refused_before_writing() {
        let out = Path::new("/nonexistent/out");
        assert!(check_space(out, 10_000_000, Some(20_000_000)).is_ok());
        let e = check_space(out, 10_000_000, Some(10_000_000)).unwrap_err();
        assert!(matches!(e, FormatError::NoSpace { .. }), "{e:?}");
        assert!(
            e.to_string().contains("11.5 MB") && e.to_string().contains("10.0 MB"),
            "{e}"
        );
        assert!(check_space(out, u64::MAX / 2, None).is_ok());
    }

    #[test]
    fn free_space_is_known_here() {
        if cfg!(unix) {
            let tmp = std::env::temp_dir();
            assert!(free_space(&tmp.join("not/yet/there")).is_some_and(|b| b > 0));
        }
    }
}
