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
/// The header is parsed by the `safetensors` crate (the project's one parser, which also checks
/// that the tensors tile the data section exactly: contiguous from 0, no overlap, shape × dtype
/// equal to each byte range, nothing missing or left over); on top of it this adds the checks of
/// this crate: the dtypes it can read, and typed errors for each failure. `path` is only used in
/// error messages. This is the entry point of the fuzz target.
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
    let (n, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| crate_error(e, path, file_len))?;
    let mut header = Header {
        data_offset: 8 + n,
        ..Header::default()
    };
    if let Some(m) = meta.metadata() {
        header.metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    for (name, info) in meta.tensors() {
        let dtype = Dtype::from_safetensors(info.dtype).ok_or_else(|| IoError::UnknownDtype {
            path: path.into(),
            tensor: name.clone(),
            dtype: format!("{:?}", info.dtype),
        })?;
        let (start, end) = info.data_offsets;
        header.tensors.insert(
            name,
            TensorInfo {
                dtype,
                shape: info.shape.clone(),
                start,
                end,
            },
        );
    }
    Ok(header)
}

/// Maps the `safetensors` crate's errors to this crate's typed errors.
fn crate_error(e: safetensors::SafeTensorError, path: &Path, file_len: u64) -> IoError {
    use safetensors::SafeTensorError as E;
    let path = path.to_path_buf();
    match e {
        E::HeaderTooSmall => IoError::Truncated { path, len: file_len },
        E::HeaderTooLarge | E::InvalidHeaderLength => IoError::HeaderTooLong {
            path,
            header_len: u64::MAX,
            file_len,
        },
        E::InvalidHeaderDeserialization(ref j) if j.to_string().contains("unknown variant") => {
            // serde names the unknown dtype between backticks.
            let msg = j.to_string();
            let dtype = msg.split('`').nth(1).unwrap_or("?").to_string();
            IoError::UnknownDtype {
                path,
                tensor: "(header)".into(),
                dtype,
            }
        }
        E::InvalidOffset(tensor) => IoError::InvalidLayout {
            path,
            reason: format!("tensor {tensor}: offsets must tile the data section (contiguous from 0, no overlap, end >= start)"),
        },
        E::TensorInvalidInfo | E::ValidationOverflow => IoError::InvalidLayout {
            path,
            reason: "a tensor's shape x dtype size does not equal its byte range (or overflows)".into(),
        },
        E::MetadataIncompleteBuffer => IoError::InvalidLayout {
            path,
            reason: format!("the tensors do not end at the end of the file ({file_len} bytes): truncated or trailing bytes"),
        },
        other => IoError::InvalidHeader {
            path,
            reason: other.to_string(),
        },
    }
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

    /// Rows `rows` of a 2-D float tensor widened to f32, `[rows.len(), cols]`: an embedding
    /// lookup that reads only the rows it needs (the table is never widened as a whole).
    ///
    /// # Errors
    /// [`IoError::WrongDtype`] for a non-float or non-2-D tensor, [`IoError::MissingTensor`]
    /// naming the row for an index past the end.
    pub fn rows_to_f32(&self, rows: &[u32]) -> Result<Vec<f32>> {
        let (&[n, cols], true) = (self.shape, self.dtype.is_float()) else {
            return Err(IoError::WrongDtype {
                tensor: self.name.into(),
                got: self.dtype,
                wanted: "a 2-D float tensor",
            });
        };
        let row_bytes = cols * self.dtype.size();
        let mut out = Vec::with_capacity(rows.len() * cols);
        let mut row = Vec::with_capacity(cols);
        for &r in rows {
            if r as usize >= n {
                return Err(IoError::MissingTensor(format!(
                    "{}[{r}] (of {n} rows)",
                    self.name
                )));
            }
            let at = r as usize * row_bytes;
            floats_to_f32(self.dtype, &self.data[at..at + row_bytes], &mut row);
            out.extend_from_slice(&row);
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

    /// Tells the OS that the mapped pages of tensor `name` are no longer needed, so that they
    /// leave this process's resident set (file pages a process touched count in it). A later
    /// read faults them back in from the file: nothing is lost. A no-op for in-memory files and
    /// where the OS has no such advice.
    ///
    /// # Errors
    /// [`IoError::MissingTensor`].
    pub fn release(&self, name: &str) -> Result<()> {
        self.release_range(name, 0, usize::MAX)
    }

    /// [`Self::release`] for bytes `[start, start + len)` of tensor `name`'s data (clamped to
    /// it): a long copy can release what it has read as it goes.
    ///
    /// # Errors
    /// [`IoError::MissingTensor`].
    pub fn release_range(&self, name: &str, start: usize, len: usize) -> Result<()> {
        let info = self
            .header
            .tensors
            .get(name)
            .ok_or_else(|| IoError::MissingTensor(name.to_string()))?;
        #[cfg(unix)]
        if let Backing::Mmap(m) = &self.backing {
            let size = info.end - info.start;
            let from = start.min(size);
            let to = from.saturating_add(len).min(size);
            let base = self.header.data_offset + info.start;
            // Whole pages inside the range only: the neighbours' pages stay mapped as they were.
            let page = 4096;
            let first = (base + from).div_ceil(page) * page;
            let end = (base + to) / page * page;
            if end > first {
                // SAFETY: the map is read-only and file-backed, so MADV_DONTNEED only drops
                // clean pages, which the kernel re-reads from the file on the next access; no
                // data changes under any live reference.
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = (info, start, len);
        Ok(())
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
