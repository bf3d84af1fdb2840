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

/// Writes one safetensors file tensor by tensor without holding them: each tensor's bytes go
/// to a temporary data file as it arrives; [`StreamingSafetensors::finish`] writes the header
/// and copies the data into the destination atomically, tensors ordered by element size
/// (largest first) then name, so that every tensor is aligned to its element size as the
/// `safetensors` crate's own writer does.
///
/// ```
/// use qwen3_quant_io::write::StreamingSafetensors;
/// use qwen3_quant_io::{Dtype, SafetensorsFile};
/// let dir = std::env::temp_dir().join(format!("qq-stream-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("s.safetensors");
/// let mut w = StreamingSafetensors::create(&path, Default::default()).unwrap();
/// w.push("codes", Dtype::U8, vec![3], &[1, 2, 3]).unwrap();
/// w.push("scale", Dtype::F32, vec![1], &2.5f32.to_le_bytes()).unwrap();
/// w.finish().unwrap();
/// let f = SafetensorsFile::open(&path).unwrap();
/// assert_eq!(f.tensor("scale").unwrap().to_f32().unwrap(), vec![2.5]);
/// assert_eq!(f.tensor("codes").unwrap().data, &[1, 2, 3]);
/// ```
#[derive(Debug)]
pub struct StreamingSafetensors {
    path: PathBuf,
    data_path: PathBuf,
    data: Option<BufWriter<File>>,
    /// (name, dtype, shape, offset in the data file, length).
    entries: Vec<(String, Dtype, Vec<usize>, u64, u64)>,
    len: u64,
    metadata: BTreeMap<String, String>,
}

impl StreamingSafetensors {
    /// Starts the file `path` (nothing appears there before [`Self::finish`]).
    ///
    /// # Errors
    /// [`IoError::Io`] when the temporary data file cannot be created.
    pub fn create(path: impl AsRef<Path>, metadata: BTreeMap<String, String>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let data_path = temp_path(&path).with_extension("data");
        let file = File::create(&data_path).map_err(io_err(&data_path))?;
        Ok(StreamingSafetensors {
            path,
            data_path,
            data: Some(BufWriter::with_capacity(1 << 20, file)),
            entries: Vec::new(),
            len: 0,
            metadata,
        })
    }

    /// Bytes of tensor data pushed so far.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Whether no tensor was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names pushed so far, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.0.as_str())
    }

    /// Appends a tensor.
    ///
    /// # Errors
    /// [`IoError::InvalidWrite`] for a duplicate or reserved name or a byte count that does not
    /// match the shape; I/O errors.
    pub fn push(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: Vec<usize>,
        bytes: &[u8],
    ) -> Result<()> {
        let len = bytes.len() as u64;
        self.push_with(name, dtype, shape, len, &mut |w| w.write_all(bytes))
    }

    /// Appends a tensor of `len` bytes that `fill` writes (in pieces, e.g. from a memory map
    /// whose pages the caller releases as it goes).
    ///
    /// # Errors
    /// As [`Self::push`]; also when `fill` writes another number of bytes.
    pub fn push_with(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: Vec<usize>,
        len: u64,
        fill: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        let invalid = |reason: String| IoError::InvalidWrite {
            path: self.path.clone(),
            reason,
        };
        if name == "__metadata__" || self.entries.iter().any(|e| e.0 == name) {
            return Err(invalid(format!("duplicate or reserved tensor name {name}")));
        }
        let expected = (shape.iter().product::<usize>() * dtype.size()) as u64;
        if expected != len {
            return Err(invalid(format!(
                "tensor {name}: shape {shape:?} of {dtype} needs {expected} bytes, got {len}"
            )));
        }
        let w = self.data.as_mut().expect("open until finish");
        let mut counter = CountingWriter { inner: w, n: 0 };
        fill(&mut counter).map_err(io_err(&self.data_path))?;
        if counter.n != len {
            return Err(invalid(format!(
                "tensor {name}: {} bytes written for {len}",
                counter.n
            )));
        }
        self.entries
            .push((name.to_string(), dtype, shape, self.len, len));
        self.len += len;
        Ok(())
    }

    /// Writes the header and the data into the destination (atomically, synced) and removes
    /// the temporary data file.
    ///
    /// # Errors
    /// I/O errors; the destination is then left as it was.
    pub fn finish(mut self) -> Result<()> {
        let data = self.data.take().expect("open until finish");
        data.into_inner().map_err(|e| IoError::Io {
            path: self.data_path.clone(),
            source: e.into_error(),
        })?;
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.sort_by(|&a, &b| {
            let (ea, eb) = (&self.entries[a], &self.entries[b]);
            eb.1.size().cmp(&ea.1.size()).then_with(|| ea.0.cmp(&eb.0))
        });
        let mut header = serde_json::Map::new();
        if !self.metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::json!(self.metadata));
        }
        let mut at = 0u64;
        for &i in &order {
            let (name, dtype, shape, _, len) = &self.entries[i];
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype.as_str(), "shape": shape, "data_offsets": [at, at + len]}),
            );
            at += len;
        }
        let mut text = serde_json::to_string(&header).expect("JSON");
        while text.len() % 8 != 0 {
            text.push(' ');
        }
        let source = File::open(&self.data_path).map_err(io_err(&self.data_path))?;
        let entries = &self.entries;
        let result = write_atomic_with(&self.path, |w| {
            use std::io::{Read, Seek, SeekFrom};
            w.write_all(&(text.len() as u64).to_le_bytes())?;
            w.write_all(text.as_bytes())?;
            let mut src = std::io::BufReader::with_capacity(1 << 20, &source);
            for &i in &order {
                let (_, _, _, offset, len) = &entries[i];
                src.seek(SeekFrom::Start(*offset))?;
                let copied = std::io::copy(&mut (&mut src).take(*len), w)?;
                if copied != *len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "temporary data file shorter than written",
                    ));
                }
            }
            Ok(())
        });
        let _ = fs::remove_file(&self.data_path);
        result
    }
}

impl Drop for StreamingSafetensors {
    fn drop(&mut self) {
        if self.data.take().is_some() {
            let _ = fs::remove_file(&self.data_path);
        }
    }
}

/// Counts the bytes written through it.
struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
