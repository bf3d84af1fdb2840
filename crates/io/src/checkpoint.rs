//! A Hugging Face model directory: `config.json` plus one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`. Tensors are looked up lazily in the memory-mapped shards.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::config::ModelConfig;
use crate::error::{io_err, IoError, Result};
use crate::safetensors_file::{SafetensorsFile, TensorView};

/// A checkpoint directory opened for reading.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<SafetensorsFile>,
    /// Tensor name -> index into `shards`.
    location: HashMap<String, usize>,
}

impl Checkpoint {
    /// Opens `dir`: `model.safetensors`, or every shard named in `model.safetensors.index.json`.
    ///
    /// ```
    /// # let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else { return; };
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/models/qwen3-micro");
    /// let ckpt = qwen3_quant_io::Checkpoint::open(dir).unwrap();
    /// let emb = ckpt.tensor("model.embed_tokens.weight").unwrap();
    /// assert_eq!(emb.shape, &[8192, 512]);
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            Self::open_sharded(dir, &index)
        } else if single.is_file() {
            let file = SafetensorsFile::open(&single)?;
            let location = file.names().map(|n| (n.to_string(), 0)).collect();
            Ok(Checkpoint {
                dir,
                shards: vec![file],
                location,
            })
        } else {
            Err(IoError::NoCheckpoint(dir))
        }
    }

    fn open_sharded(dir: PathBuf, index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(io_err(index))?;
        let invalid = |reason: String| IoError::InvalidIndex {
            path: index.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| invalid("missing weight_map object".into()))?;
        let mut shard_names: BTreeMap<String, usize> = BTreeMap::new();
        let mut wanted: Vec<(String, String)> = Vec::with_capacity(map.len());
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| invalid(format!("{tensor}: shard name is not a string")))?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(invalid(format!(
                    "{tensor}: shard name {file:?} must be a plain file name"
                )));
            }
            let next = shard_names.len();
            shard_names.entry(file.to_string()).or_insert(next);
            wanted.push((tensor.clone(), file.to_string()));
        }
        let mut shards: Vec<Option<SafetensorsFile>> =
            (0..shard_names.len()).map(|_| None).collect();
        for (name, &i) in &shard_names {
            shards[i] = Some(SafetensorsFile::open(dir.join(name))?);
        }
        let shards: Vec<SafetensorsFile> = shards
            .into_iter()
            .map(|s| s.expect("every shard opened"))
            .collect();
        let mut location = HashMap::with_capacity(wanted.len());
        for (tensor, file) in wanted {
            let i = shard_names[&file];
            if !shards[i].header().tensors.contains_key(&tensor) {
                return Err(invalid(format!(
                    "{tensor} is listed in {file} but not stored there"
                )));
            }
            location.insert(tensor, i);
        }
        Ok(Checkpoint {
            dir,
            shards,
            location,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads and validates `config.json` of the directory.
    pub fn config(&self) -> Result<ModelConfig> {
        ModelConfig::from_file(self.dir.join("config.json"))
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.location.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The shards (one for a single-file checkpoint).
    pub fn shards(&self) -> &[SafetensorsFile] {
        &self.shards
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let &i = self
            .location
            .get(name)
            .ok_or_else(|| IoError::MissingTensor(name.to_string()))?;
        self.shards[i].tensor(name)
    }

    /// Releases the mapped pages of every tensor whose name starts with `prefix` (see
    /// [`SafetensorsFile::release`]): once a layer has been widened to f32, its file pages need
    /// not stay resident.
    pub fn release_prefix(&self, prefix: &str) {
        for (name, &i) in &self.location {
            if name.starts_with(prefix) {
                let _ = self.shards[i].release(name);
            }
        }
    }

    /// Releases bytes `[start, start + len)` of tensor `name`'s mapped data
    /// ([`SafetensorsFile::release_range`]); nothing for an unknown name.
    pub fn release_range(&self, name: &str, start: usize, len: usize) {
        if let Some(&i) = self.location.get(name) {
            let _ = self.shards[i].release_range(name, start, len);
        }
    }

    /// [`Self::load_f32`] that releases the tensor's mapped pages as it widens them, 8 MB at a
    /// time, for a loader that keeps only the f32 copy: the file pages and the f32 copy of a
    /// large tensor are never resident together (the pages stay in the page cache).
    pub fn load_f32_releasing(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensor_of_shape(name, shape)?;
        let elem = t.dtype.size();
        if !t.dtype.is_float() || elem == 0 {
            return Err(IoError::WrongDtype {
                tensor: name.into(),
                got: t.dtype,
                wanted: "a float type",
            });
        }
        let step = (8 << 20) / elem * elem;
        let mut out = Vec::with_capacity(t.numel());
        let mut part = Vec::new();
        for (k, bytes) in t.data.chunks(step).enumerate() {
            crate::dtype::floats_to_f32(t.dtype, bytes, &mut part);
            out.extend_from_slice(&part);
            self.release_range(name, k * step, bytes.len());
        }
        if let Some(index) = out.iter().position(|x| !x.is_finite()) {
            return Err(IoError::NonFinite {
                tensor: name.into(),
                index,
            });
        }
        Ok(out)
    }

    /// A float tensor widened to f32, checked against an expected shape and for non-finite values.
    pub fn load_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.tensor_of_shape(name, shape)?.to_f32_finite()
    }

    /// Tensor `name`, checked against an expected shape.
    fn tensor_of_shape(&self, name: &str, shape: &[usize]) -> Result<TensorView<'_>> {
        let t = self.tensor(name)?;
        if t.shape != shape {
            return Err(IoError::WrongShape {
                tensor: name.into(),
                got: t.shape.to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(t)
    }
}
