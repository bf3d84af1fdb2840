//! Atomic writers: a temporary file in the destination directory, fsync, rename, fsync the directory.
//! A crash leaves either the old file or the new one, never a torn file.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{io_err, IoError, Result};
use crate::Dtype;

/// A tensor to write: name, dtype, shape and little-endian bytes.
#[derive(Clone, Debug)]
pub struct TensorData {
    /// Name in the file.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes (`shape.product() * dtype.size()` of them).
    pub bytes: Vec<u8>,
}

impl TensorData {
    /// An f32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        TensorData {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A bf16 tensor from f32 values (round to nearest even).
    pub fn bf16(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        let bytes = values
            .iter()
            .flat_map(|v| crate::dtype::f32_to_bf16_bits(*v).to_le_bytes())
            .collect();
        TensorData {
            name: name.into(),
            dtype: Dtype::BF16,
            shape,
            bytes,
        }
    }

    /// An f16 tensor from f32 values (round to nearest even).
    pub fn f16(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        let bytes = values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        TensorData {
            name: name.into(),
            dtype: Dtype::F16,
            shape,
            bytes,
        }
    }

    /// An i32 tensor (packed words, indices).
    pub fn i32(name: impl Into<String>, shape: Vec<usize>, values: &[i32]) -> Self {
        TensorData {
            name: name.into(),
            dtype: Dtype::I32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path.as_ref(), |w| w.write_all(bytes))
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let unique = format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    path.with_file_name(unique)
}

fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = temp_path(path);
    let result = (|| {
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        {
            let mut w = BufWriter::with_capacity(1 << 20, &file);
            fill(&mut w).map_err(io_err(&tmp))?;
            w.flush().map_err(io_err(&tmp))?;
        }
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        // Persist the rename itself; not every platform can open a directory, which is fine.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl safetensors::View for &TensorData {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.to_safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes a safetensors file atomically, serialized by the `safetensors` crate (tensors
/// ordered by alignment then name, header padded to 8 bytes) into a temporary file of the
/// destination directory, which is synced and renamed into place.
///
/// ```
/// use qwen3_quant_io::write::{write_safetensors, TensorData};
/// use qwen3_quant_io::safetensors_file::SafetensorsFile;
/// let dir = std::env::temp_dir().join(format!("qq-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("t.safetensors");
/// write_safetensors(&path, &[TensorData::f32("w", vec![2], &[1.0, 2.0])], &Default::default()).unwrap();
/// let f = SafetensorsFile::open(&path).unwrap();
/// assert_eq!(f.tensor("w").unwrap().to_f32().unwrap(), vec![1.0, 2.0]);
/// ```
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[TensorData],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut sorted: Vec<&TensorData> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for (i, t) in sorted.iter().enumerate() {
        if i > 0 && sorted[i - 1].name == t.name {
            return Err(IoError::InvalidWrite {
                path: path.into(),
                reason: format!("duplicate tensor {}", t.name),
            });
        }
        if t.name == "__metadata__" {
            return Err(IoError::InvalidWrite {
                path: path.into(),
                reason: "reserved tensor name __metadata__".into(),
            });
        }
        let expected = t.shape.iter().product::<usize>() * t.dtype.size();
        if expected != t.bytes.len() {
            return Err(IoError::InvalidWrite {
                path: path.into(),
                reason: format!(
                    "tensor {}: shape {:?} of {} needs {expected} bytes, got {}",
                    t.name,
                    t.shape,
                    t.dtype,
                    t.bytes.len()
                ),
            });
        }
    }
    let meta = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = temp_path(path);
    let result = (|| {
        safetensors::serialize_to_file(sorted.iter().map(|t| (t.name.as_str(), *t)), meta, &tmp)
            .map_err(|e| match e {
                safetensors::SafeTensorError::IoError(source) => IoError::Io {
                    path: tmp.clone(),
                    source,
                },
                other => IoError::InvalidWrite {
                    path: path.into(),
                    reason: other.to_string(),
                },
            })?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
