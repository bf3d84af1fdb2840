//! A resumable run's state on disk: [`ResumeDir`], the formats crate's
//! [`qwen3_quant_calib::LayerStore`].
//!
//! Layout of the state directory (by convention [`ResumeDir::beside`] the output, so that the
//! output itself is still written atomically at the end):
//!
//! * `fingerprint.json`: the job the state belongs to ([`Fingerprint`]);
//! * `layer-NNNN/model.safetensors`: finished layer `NNNN` — norms, router and the linears no
//!   method quantized as exact f32, the quantized linears in the native encoding with f32 scales
//!   (their schemes in the file's metadata), so that they come back bit for bit;
//! * `layer-NNNN/log.json`: the layer's per-linear and transform log lines and expert counts;
//! * `activations-NNNN.bin`: the calibration inputs of layer `NNNN + 1`;
//! * `fp-activations-NNNN.bin`: its inputs in the full-precision model (asymmetric calibration);
//! * `progress.json`: `{"layers_done": k}`, written last. It is the commit point: a run killed
//!   at any moment resumes after the last layer it names, whatever else is half-written.
//!
//! Every file is written to a temporary name, synced and renamed into place.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use qwen3_quant_calib::{
    ActivationStore, CalibError, FinishedLayer, LayerStore, LinearRecord, Restore, RestoredLayer,
    RestoredRun, TransformLog,
};
use qwen3_quant_core::{LinearId, PackedWeight, QuantizedWeight};
use qwen3_quant_io::write::{write_atomic, write_safetensors, TensorData};
use qwen3_quant_io::Checkpoint;
use qwen3_quant_model::{DecoderLayer, LinearWeight, ModelConfig, Qwen3Model};
use serde_json::{json, Value};

use crate::error::{file_err, FormatError, Result};
use crate::native;
use crate::writer::{layer_float_tensors, LayerSource, LayerVisitor};

const FINGERPRINT_FILE: &str = "fingerprint.json";
const PROGRESS_FILE: &str = "progress.json";
const SCHEMES_KEY: &str = "qwen3_quant.schemes";

/// 64-bit FNV-1a, the same on every platform and version (unlike `std`'s hasher).
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Hex FNV-1a 64 of `bytes`: a short, stable digest for fingerprints.
pub fn digest(bytes: &[u8]) -> String {
    let mut h = Fnv::new();
    h.update(bytes);
    h.hex()
}

/// What identifies a job, part by part: a resumed run must match the saved one on every part.
///
/// ```
/// use qwen3_quant_formats::resume::Fingerprint;
/// let a = Fingerprint::new().with("method", "gptq w4 g128").with("calibration", "abc");
/// let b = Fingerprint::new().with("method", "gptq w3 g128").with("calibration", "abc");
/// assert_eq!(a.first_difference(&b).unwrap().0, "method");
/// assert!(a.first_difference(&a.clone()).is_none());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    parts: BTreeMap<String, String>,
}

impl Fingerprint {
    /// An empty fingerprint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) part `name`.
    pub fn with(mut self, name: &str, value: impl fmt::Display) -> Self {
        self.parts.insert(name.to_string(), value.to_string());
        self
    }

    /// The parts.
    pub fn parts(&self) -> &BTreeMap<String, String> {
        &self.parts
    }

    /// The first part (by name) that differs, with this fingerprint's value and the other's
    /// (`"(absent)"` where one has no such part).
    pub fn first_difference(&self, other: &Fingerprint) -> Option<(String, String, String)> {
        let names: std::collections::BTreeSet<&String> =
            self.parts.keys().chain(other.parts.keys()).collect();
        names.into_iter().find_map(|n| {
            let (a, b) = (self.parts.get(n), other.parts.get(n));
            (a != b).then(|| {
                let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(absent)".into());
                (n.clone(), show(a), show(b))
            })
        })
    }

    /// A digest of a model directory: `config.json`, and for every safetensors file its name,
    /// length, header and 16 evenly spaced 64 KiB samples of its data. Reading every byte of a
    /// 60 GB checkpoint would cost minutes; this catches a different or re-exported model, a
    /// changed config and a rewritten shard.
    ///
    /// # Errors
    /// [`FormatError::File`] when a file cannot be read.
    pub fn model_digest(dir: &Path) -> Result<String> {
        let mut h = Fnv::new();
        let cfg = dir.join("config.json");
        h.update(&std::fs::read(&cfg).map_err(file_err(&cfg))?);
        let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(file_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        shards.sort();
        for p in shards {
            let mut f = std::fs::File::open(&p).map_err(file_err(&p))?;
            let len = f.metadata().map_err(file_err(&p))?.len();
            h.update(p.file_name().unwrap_or_default().as_encoded_bytes());
            h.update(&len.to_le_bytes());
            let mut n = [0u8; 8];
            if f.read_exact(&mut n).is_ok() {
                let header = u64::from_le_bytes(n)
                    .min(len.saturating_sub(8))
                    .min(1 << 26);
                let mut buf = vec![0u8; header as usize];
                f.read_exact(&mut buf).map_err(file_err(&p))?;
                h.update(&buf);
            }
            let mut sample = vec![0u8; 1 << 16];
            for i in 0..16u64 {
                let at = len.saturating_sub(sample.len() as u64) * i / 15;
                f.seek(SeekFrom::Start(at)).map_err(file_err(&p))?;
                let got = f.read(&mut sample).map_err(file_err(&p))?;
                h.update(&sample[..got]);
            }
        }
        Ok(h.hex())
    }

    fn to_json(&self) -> Value {
        json!(self.parts)
    }

    fn from_json(v: &Value) -> Option<Self> {
        let parts = v
            .as_object()?
            .iter()
            .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect::<Option<BTreeMap<_, _>>>()?;
        Some(Fingerprint { parts })
    }
}

/// The per-layer state of one job in a directory: a [`LayerStore`] that the calibration driver
/// (`quantize_checkpoint_resumable`) saves every finished layer to and resumes from.
#[derive(Debug)]
pub struct ResumeDir {
    dir: PathBuf,
    layers_done: usize,
    save_seconds: f64,
    bytes_saved: u64,
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("serialisable JSON");
    Ok(write_atomic(path, format!("{text}\n").as_bytes())?)
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(file_err(path))?;
    serde_json::from_str(&text).map_err(|e| FormatError::Config(format!("{}: {e}", path.display())))
}

/// Makes the directory entry of a just-created file or directory durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn to_calib(e: FormatError) -> CalibError {
    match e {
        FormatError::Calib(c) => c,
        other => CalibError::Resume(other.to_string()),
    }
}

impl ResumeDir {
    /// The state directory used for output `out`: `.NAME.qq-resume` next to it.
    pub fn beside(out: &Path) -> PathBuf {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        out.with_file_name(format!(".{name}.qq-resume"))
    }

    /// Starts a fresh state for `fingerprint` in `dir`, discarding whatever was there.
    ///
    /// # Errors
    /// [`FormatError::File`] when the directory cannot be replaced or written.
    pub fn create(dir: &Path, fingerprint: &Fingerprint) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(file_err(dir))?;
        }
        std::fs::create_dir_all(dir).map_err(file_err(dir))?;
        write_json(&dir.join(FINGERPRINT_FILE), &fingerprint.to_json())?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent);
        }
        Ok(ResumeDir {
            dir: dir.to_path_buf(),
            layers_done: 0,
            save_seconds: 0.0,
            bytes_saved: 0,
        })
    }

    /// Opens the state in `dir` to continue it; a missing directory (nothing to resume) starts
    /// a fresh one.
    ///
    /// # Errors
    /// [`FormatError::ResumeMismatch`] when the saved fingerprint differs from `fingerprint`
    /// (the state is left untouched), [`FormatError::Config`] for unreadable state files.
    pub fn open(dir: &Path, fingerprint: &Fingerprint) -> Result<Self> {
        let fp_path = dir.join(FINGERPRINT_FILE);
        if !fp_path.is_file() {
            return Self::create(dir, fingerprint);
        }
        let saved = Fingerprint::from_json(&read_json(&fp_path)?).ok_or_else(|| {
            FormatError::Config(format!("{}: not a fingerprint", fp_path.display()))
        })?;
        if let Some((part, saved, now)) = saved.first_difference(fingerprint) {
            return Err(FormatError::ResumeMismatch {
                path: dir.to_path_buf(),
                part,
                saved,
                now,
            });
        }
        let progress = dir.join(PROGRESS_FILE);
        let layers_done = if progress.is_file() {
            read_json(&progress)?
                .get("layers_done")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    FormatError::Config(format!("{}: no layers_done", progress.display()))
                })? as usize
        } else {
            0
        };
        Ok(ResumeDir {
            dir: dir.to_path_buf(),
            layers_done,
            save_seconds: 0.0,
            bytes_saved: 0,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Layers the saved state holds (0 for a fresh state).
    pub fn layers_done(&self) -> usize {
        self.layers_done
    }

    /// Seconds this process spent making layers durable (writing and syncing the state).
    pub fn save_seconds(&self) -> f64 {
        self.save_seconds
    }

    /// Bytes this process wrote to the state (layers and activations).
    pub fn bytes_saved(&self) -> u64 {
        self.bytes_saved
    }

    /// Deletes the state once the job's output is safely written.
    ///
    /// # Errors
    /// [`FormatError::File`].
    pub fn finish(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(file_err(&self.dir))
    }

    fn layer_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("layer-{i:04}"))
    }

    fn activations_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("activations-{i:04}.bin"))
    }

    fn fp_activations_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("fp-activations-{i:04}.bin"))
    }

    fn save_layer(&mut self, done: &FinishedLayer<'_>) -> Result<()> {
        let t0 = std::time::Instant::now();
        let layer = done.layer;
        let i = layer.index;
        if i != self.layers_done {
            return Err(FormatError::Config(format!(
                "layer {i} finished while the state holds {} layers",
                self.layers_done
            )));
        }
        let ldir = self.layer_dir(i);
        if ldir.exists() {
            // Left by a run killed after writing it and before committing progress.
            std::fs::remove_dir_all(&ldir).map_err(file_err(&ldir))?;
        }
        std::fs::create_dir_all(&ldir).map_err(file_err(&ldir))?;
        sync_dir(&self.dir);
        let (tensors, schemes) = layer_tensors(layer, done.quantized)?;
        let mut meta = BTreeMap::new();
        meta.insert(SCHEMES_KEY.to_string(), schemes.to_string());
        write_safetensors(ldir.join("model.safetensors"), &tensors, &meta)?;
        self.bytes_saved += tensors.iter().map(|t| t.bytes.len() as u64).sum::<u64>();
        let log = json!({
            "quantized": done.quantized.iter().map(|(id, _)| format!("model.{id}")).collect::<Vec<_>>(),
            "records": done.records,
            "transforms": done.transforms,
            "expert_tokens": done.expert_tokens,
        });
        write_json(&ldir.join("log.json"), &log)?;
        for (h, path) in [
            (done.activations, self.activations_path(i)),
            (done.fp_activations, self.fp_activations_path(i)),
        ] {
            if let Some(h) = h {
                write_activations(&path, h)?;
                self.bytes_saved += h.bytes() as u64;
            }
        }
        write_json(
            &self.dir.join(PROGRESS_FILE),
            &json!({"layers_done": i + 1}),
        )?;
        self.layers_done = i + 1;
        if i > 0 {
            let _ = std::fs::remove_file(self.activations_path(i - 1));
            let _ = std::fs::remove_file(self.fp_activations_path(i - 1));
        }
        self.save_seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }

    fn load_layers(&self, config: &ModelConfig, restore: Restore) -> Result<Option<RestoredRun>> {
        let k = self.layers_done;
        if k == 0 {
            return Ok(None);
        }
        let build = match restore {
            Restore::Packed => Build::Packed,
            Restore::LogOnly => Build::LogOnly,
            _ => Build::Dense,
        };
        let mut layers = Vec::with_capacity(k);
        for i in 0..k {
            layers.push(restore_layer(&self.layer_dir(i), config, i, build)?);
        }
        let read = |path: PathBuf| -> Result<Option<ActivationStore>> {
            Ok(if path.is_file() {
                Some(ActivationStore::read_file(&path)?)
            } else {
                None
            })
        };
        Ok(Some(RestoredRun {
            layers,
            activations: read(self.activations_path(k - 1))?,
            fp_activations: read(self.fp_activations_path(k - 1))?,
        }))
    }
}

impl LayerStore for ResumeDir {
    fn load(
        &mut self,
        config: &ModelConfig,
        restore: Restore,
    ) -> qwen3_quant_calib::Result<Option<RestoredRun>> {
        self.load_layers(config, restore).map_err(to_calib)
    }

    fn save(&mut self, done: FinishedLayer<'_>) -> qwen3_quant_calib::Result<()> {
        self.save_layer(&done).map_err(to_calib)
    }
}

impl ResumeDir {
    /// The saved layers as a [`LayerSource`] for [`crate::write_checkpoint_streamed`]: each
    /// layer is read back when the writer asks for it and dropped after.
    pub fn saved_layers<'a>(&'a self, config: &'a ModelConfig) -> SavedLayers<'a> {
        SavedLayers {
            state: self,
            config,
        }
    }
}

/// The layers of a [`ResumeDir`], read one at a time ([`ResumeDir::saved_layers`]).
#[derive(Debug)]
pub struct SavedLayers<'a> {
    state: &'a ResumeDir,
    config: &'a ModelConfig,
}

impl LayerSource for SavedLayers<'_> {
    fn with_layer(&mut self, i: usize, f: &mut LayerVisitor<'_>) -> Result<()> {
        if i >= self.state.layers_done {
            return Err(FormatError::Config(format!(
                "{}: layer {i} was never saved ({} layers are)",
                self.state.dir.display(),
                self.state.layers_done
            )));
        }
        let r = restore_layer(&self.state.layer_dir(i), self.config, i, Build::CodesOnly)?;
        let layer = r.layer.expect("built");
        let refs: Vec<(LinearId, &QuantizedWeight)> =
            r.quantized.iter().map(|(id, q)| (*id, q)).collect();
        f(&layer, &refs)
    }
}

fn write_activations(path: &Path, h: &ActivationStore) -> Result<()> {
    let tmp = path.with_extension("bin.tmp");
    let result = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
        h.write_to(&mut w)?;
        w.flush()?;
        drop(w);
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(file_err(path))?;
    if let Some(d) = path.parent() {
        sync_dir(d);
    }
    Ok(())
}

/// Every tensor of `layer` as the state keeps it, and the schemes of its quantized linears.
fn layer_tensors(
    layer: &DecoderLayer,
    quantized: &[(LinearId, QuantizedWeight)],
) -> Result<(Vec<TensorData>, Value)> {
    let exact = |name: String, shape: Vec<usize>, v: &[f32]| TensorData::f32(name, shape, v);
    let mut t = layer_float_tensors(layer, &exact);
    let by_id: BTreeMap<LinearId, &QuantizedWeight> =
        quantized.iter().map(|(id, q)| (*id, q)).collect();
    let mut schemes = serde_json::Map::new();
    for id in layer.linear_ids() {
        let prefix = format!("model.{id}");
        match by_id.get(&id) {
            Some(q) => {
                t.extend(native::encode(&prefix, q, true));
                schemes.insert(prefix, native::scheme_of(q, None));
            }
            None => {
                let w = layer
                    .linear(id.kind, id.expert)
                    .ok_or_else(|| FormatError::Config(format!("{prefix} missing")))?;
                t.push(TensorData::f32(
                    format!("{prefix}.weight"),
                    vec![w.out_features(), w.in_features()],
                    &w.to_dense(),
                ));
            }
        }
    }
    Ok((t, Value::Object(schemes)))
}

/// What [`restore_layer`] builds of a saved layer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Build {
    /// Quantized linears dequantized to f32, as a fake-quant run holds them.
    Dense,
    /// Quantized linears packed for the kernels.
    Packed,
    /// Quantized linears as codes only (their weight slot left empty): for writing.
    CodesOnly,
    /// Nothing but the logs.
    LogOnly,
}

/// Rebuilds layer `i` from its state directory: dense f32 where it was stored so, the quantized
/// linears decoded and put back as `build` asks.
fn restore_layer(
    dir: &Path,
    config: &ModelConfig,
    i: usize,
    build: Build,
) -> Result<RestoredLayer> {
    if build == Build::LogOnly {
        let (records, transforms, expert_tokens) = read_log(dir)?;
        return Ok(RestoredLayer {
            index: i,
            layer: None,
            quantized: Vec::new(),
            records,
            transforms,
            expert_tokens,
        });
    }
    let ckpt = Checkpoint::open(dir)?;
    let schemes: Value = ckpt
        .shards()
        .first()
        .and_then(|s| s.header().metadata.get(SCHEMES_KEY))
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| {
            FormatError::Config(format!("{}: no quantization schemes", dir.display()))
        })?;
    let mut decoded: BTreeMap<String, QuantizedWeight> = BTreeMap::new();
    let layer = Qwen3Model::assemble_layer(&ckpt, config, i, &mut |prefix: &str, out, inp| {
        let Some(scheme) = schemes.get(prefix) else {
            let w = ckpt.load_f32(&format!("{prefix}.weight"), &[out, inp])?;
            return Ok::<_, FormatError>(LinearWeight::dense(out, inp, w)?);
        };
        let q = native::decode(&ckpt, prefix, out, inp, scheme)?;
        let weight = match build {
            Build::Packed => match q.to_packed()? {
                PackedWeight::Affine(p) => LinearWeight::Packed(p),
                PackedWeight::Binary(b) => LinearWeight::Binary(b),
            },
            Build::CodesOnly => LinearWeight::dense(0, 0, Vec::new())?,
            _ => LinearWeight::dense(out, inp, q.dequantize())?,
        };
        decoded.insert(prefix.to_string(), q);
        Ok(weight)
    })?;
    let log = read_json(&dir.join("log.json"))?;
    let bad = |what: &str| FormatError::Config(format!("{}/log.json: {what}", dir.display()));
    let ids: BTreeMap<String, LinearId> = layer
        .linear_ids()
        .into_iter()
        .map(|id| (format!("model.{id}"), id))
        .collect();
    let mut quantized = Vec::new();
    for name in log
        .get("quantized")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no quantized list"))?
    {
        let name = name
            .as_str()
            .ok_or_else(|| bad("a linear name is not a string"))?;
        let (Some(id), Some(q)) = (ids.get(name), decoded.remove(name)) else {
            return Err(bad(&format!("{name} is not a saved quantized linear")));
        };
        quantized.push((*id, q));
    }
    if !decoded.is_empty() {
        return Err(bad("quantized linears missing from the list"));
    }
    let (records, transforms, expert_tokens) = read_log(dir)?;
    Ok(RestoredLayer {
        index: i,
        layer: Some(layer),
        quantized,
        records,
        transforms,
        expert_tokens,
    })
}

/// Per-layer log lines and expert counts of a saved layer.
type LayerLog = (Vec<LinearRecord>, Vec<TransformLog>, Option<Vec<usize>>);

fn read_log(dir: &Path) -> Result<LayerLog> {
    let log = read_json(&dir.join("log.json"))?;
    let bad = |what: &str| FormatError::Config(format!("{}/log.json: {what}", dir.display()));
    let records: Vec<LinearRecord> = serde_json::from_value(log["records"].clone())
        .map_err(|e| bad(&format!("records: {e}")))?;
    let transforms: Vec<TransformLog> = serde_json::from_value(log["transforms"].clone())
        .map_err(|e| bad(&format!("transforms: {e}")))?;
    let expert_tokens: Option<Vec<usize>> = serde_json::from_value(log["expert_tokens"].clone())
        .map_err(|e| bad(&format!("expert_tokens: {e}")))?;
    Ok((records, transforms, expert_tokens))
}
