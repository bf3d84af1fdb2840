//! A memory-mapped safetensors file with a fully validated header.
//!
//! The header is checked once, when the file is opened, so that every later access is a bounds-safe
//! slice of the mapping: lengths, offsets, overlaps, dtypes and shape × dtype sizes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::dtype::floats_to_f32;
use crate::error::{io_err, IoError, Result};
use crate::Dtype;

/// Upper bound on the header size (the safetensors specification uses 100 MB).
const MAX_HEADER_LEN: u64 = 100_000_000;

/// Where one tensor lives inside the data section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: Dtype,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Byte range relative to the start of the data section.
    pub start: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A validated safetensors header: tensor table, free-form metadata and where the data starts.
#[derive(Clone, Debug, Default)]
pub struct Header {
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The `__metadata__` string map.
    pub metadata: BTreeMap<String, String>,
    /// Byte offset of the data section in the file (8 + header length).
    pub data_offset: usize,
}

/// Parses and validates the header of a complete safetensors byte buffer.
///
/// `path` is only used in error messages. This is the entry point of the fuzz target.
///
/// ```
/// use qwen3_quant_io::safetensors_file::parse_header;
/// let err = parse_header(&[1, 2, 3], "x.safetensors".as_ref()).unwrap_err();
/// assert!(err.to_string().contains("truncated"));
/// ```
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<Header> {
    let file_len = bytes.len() as u64;
    if file_len < 8 {
        return Err(IoError::Truncated {
            path: path.into(),
            len: file_len,
        });
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_LEN || header_len > file_len - 8 {
        return Err(IoError::HeaderTooLong {
            path: path.into(),
            header_len,
            file_len,
        });
    }
    let data_offset = 8 + header_len as usize;
    let invalid = |reason: String| IoError::InvalidHeader {
        path: path.into(),
        reason,
    };
    let text = std::str::from_utf8(&bytes[8..data_offset])
        .map_err(|e| invalid(format!("not UTF-8: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("the header is not a JSON object".into()))?;
    let data_len = file_len - data_offset as u64;

    let mut header = Header {
        data_offset,
        ..Header::default()
    };
    for (name, entry) in obj {
        if name == "__metadata__" {
            let map = entry
                .as_object()
                .ok_or_else(|| invalid("__metadata__ is not an object".into()))?;
            for (k, v) in map {
                let v = v
                    .as_str()
                    .ok_or_else(|| invalid(format!("__metadata__.{k} is not a string")))?;
                header.metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        let info = parse_entry(name, entry, path, data_len)?;
        header.tensors.insert(name.clone(), info);
    }
    check_overlaps(&header.tensors, path)?;
    Ok(header)
}

fn parse_entry(
    name: &str,
    entry: &serde_json::Value,
    path: &Path,
    data_len: u64,
) -> Result<TensorInfo> {
    let invalid = |reason: String| IoError::InvalidHeader {
        path: path.into(),
        reason: format!("tensor {name}: {reason}"),
    };
    let obj = entry
        .as_object()
        .ok_or_else(|| invalid("entry is not an object".into()))?;
    let dtype_str = obj
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| invalid("missing dtype".into()))?;
    let dtype = Dtype::parse(dtype_str).ok_or_else(|| IoError::UnknownDtype {
        path: path.into(),
        tensor: name.into(),
        dtype: dtype_str.into(),
    })?;
    let shape_val = obj
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| invalid("missing shape".into()))?;
    let mut shape = Vec::with_capacity(shape_val.len());
    for d in shape_val {
        let d = d
            .as_u64()
            .ok_or_else(|| invalid("shape entries must be non-negative integers".into()))?;
        shape.push(usize::try_from(d).map_err(|_| invalid("dimension too large".into()))?);
    }
    let offsets = obj
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .filter(|o| o.len() == 2)
        .ok_or_else(|| invalid("data_offsets must be [start, end]".into()))?;
    let start = offsets[0]
        .as_u64()
        .ok_or_else(|| invalid("bad start offset".into()))?;
    let end = offsets[1]
        .as_u64()
        .ok_or_else(|| invalid("bad end offset".into()))?;
    if start > end || end > data_len {
        return Err(IoError::OffsetsOutOfBounds {
            path: path.into(),
            tensor: name.into(),
            start,
            end,
            data_len,
        });
    }
    let expected = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| invalid("shape overflows".into()))?;
    if expected != end - start {
        return Err(IoError::ByteLengthMismatch {
            path: path.into(),
            tensor: name.into(),
            shape,
            dtype,
            expected,
            got: end - start,
        });
    }
    Ok(TensorInfo {
        dtype,
        shape,
        start: start as usize,
        end: end as usize,
    })
}

fn check_overlaps(tensors: &BTreeMap<String, TensorInfo>, path: &Path) -> Result<()> {
    let mut ranges: Vec<(&str, usize, usize)> = tensors
        .iter()
        .filter(|(_, t)| t.end > t.start)
        .map(|(n, t)| (n.as_str(), t.start, t.end))
        .collect();
    ranges.sort_by_key(|r| (r.1, r.2));
    for w in ranges.windows(2) {
        if w[1].1 < w[0].2 {
            return Err(IoError::OverlappingTensors {
                path: path.into(),
                first: w[0].0.into(),
                second: w[1].0.into(),
            });
        }
    }
    Ok(())
}

/// Bytes backing a file: a read-only memory map, or an owned buffer (empty files cannot be mapped).
enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// One memory-mapped `.safetensors` file.
pub struct SafetensorsFile {
    path: PathBuf,
    backing: Backing,
    header: Header,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

/// A borrowed tensor: its metadata and raw little-endian bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// The tensor name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: &'a [usize],
    /// Raw bytes (little-endian).
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values widened to f32 (float dtypes only).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.numel());
        if !floats_to_f32(self.dtype, self.data, &mut out) {
            return Err(IoError::WrongDtype {
                tensor: self.name.into(),
                got: self.dtype,
                wanted: "a float type",
            });
        }
        Ok(out)
    }

    /// The values widened to f32, with an error on NaN or ±Inf (for weights).
    pub fn to_f32_finite(&self) -> Result<Vec<f32>> {
        let v = self.to_f32()?;
        if let Some(index) = v.iter().position(|x| !x.is_finite()) {
            return Err(IoError::NonFinite {
                tensor: self.name.into(),
                index,
            });
        }
        Ok(v)
    }

    /// Integer values as i64 (I64/I32/I16/I8/U8/Bool).
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        let d = self.data;
        Ok(match self.dtype {
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
                .collect(),
            Dtype::I16 => d
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            Dtype::I8 => d.iter().map(|&b| b as i8 as i64).collect(),
            Dtype::U8 | Dtype::Bool => d.iter().map(|&b| b as i64).collect(),
            other => {
                return Err(IoError::WrongDtype {
                    tensor: self.name.into(),
                    got: other,
                    wanted: "an integer type",
                })
            }
        })
    }

    /// I32 values (packed GPTQ/AWQ words).
    pub fn to_i32(&self) -> Result<Vec<i32>> {
        if self.dtype != Dtype::I32 {
            return Err(IoError::WrongDtype {
                tensor: self.name.into(),
                got: self.dtype,
                wanted: "I32",
            });
        }
        Ok(self
            .data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4")))
            .collect())
    }
}

impl SafetensorsFile {
    /// Opens and validates a safetensors file, memory-mapping it read-only.
    ///
    /// The mapping is private and read-only; the file is never written. If another process truncates
    /// the file while it is mapped, reads may fault (a limitation of every mmap-based reader).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        let backing = if len == 0 {
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and we never hand out mutable views; concurrent truncation of the
            // file by another process is documented above as unsupported.
            Backing::Mmap(unsafe { Mmap::map(&file) }.map_err(io_err(&path))?)
        };
        let header = parse_header(backing.bytes(), &path)?;
        Ok(SafetensorsFile {
            path,
            backing,
            header,
        })
    }

    /// Validates an in-memory safetensors buffer (tests, fuzzing, data embedded in binaries).
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<PathBuf>) -> Result<Self> {
        let path = name.into();
        let header = parse_header(&bytes, &path)?;
        Ok(SafetensorsFile {
            path,
            backing: Backing::Owned(bytes),
            header,
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.header.tensors.keys().map(String::as_str)
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let (name, info) = self
            .header
            .tensors
            .get_key_value(name)
            .ok_or_else(|| IoError::MissingTensor(name.to_string()))?;
        let base = self.header.data_offset;
        Ok(TensorView {
            name,
            dtype: info.dtype,
            shape: &info.shape,
            data: &self.backing.bytes()[base + info.start..base + info.end],
        })
    }
}
