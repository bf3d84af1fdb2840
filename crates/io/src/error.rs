//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading or writing checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// An operating-system error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is shorter than the 8-byte header length prefix.
    #[error("{path}: truncated file ({len} bytes; a safetensors file needs at least 8)")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },
    /// The header length prefix points past the end of the file.
    #[error("{path}: header length {header_len} exceeds the file size {file_len}")]
    HeaderTooLong {
        /// The file.
        path: PathBuf,
        /// The declared header length.
        header_len: u64,
        /// The file length.
        file_len: u64,
    },
    /// The header is not valid UTF-8 JSON of the expected shape.
    #[error("{path}: invalid safetensors header: {reason}")]
    InvalidHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A dtype string that safetensors does not define or that this crate cannot read.
    #[error("{path}: tensor {tensor}: unknown dtype {dtype:?}")]
    UnknownDtype {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The dtype string found.
        dtype: String,
    },
    /// The tensors do not tile the data section: offsets out of order, overlapping, with gaps,
    /// beyond the file, or a byte range that does not match shape × dtype.
    #[error("{path}: invalid tensor layout: {reason}")]
    InvalidLayout {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the caller asked for is not in the checkpoint.
    #[error("tensor {0} not found in the checkpoint")]
    MissingTensor(String),
    /// A tensor has another dtype than the caller can use.
    #[error("tensor {tensor}: dtype {got} cannot be read as {wanted}")]
    WrongDtype {
        /// The tensor name.
        tensor: String,
        /// The dtype in the file.
        got: crate::Dtype,
        /// What was asked for.
        wanted: &'static str,
    },
    /// A tensor's shape does not match what the configuration implies.
    #[error("tensor {tensor}: shape {got:?}, expected {expected:?}")]
    WrongShape {
        /// The tensor name.
        tensor: String,
        /// The shape in the file.
        got: Vec<usize>,
        /// The shape the config implies.
        expected: Vec<usize>,
    },
    /// A non-finite value (NaN or ±Inf) in a tensor that must be finite.
    #[error("tensor {tensor}: non-finite value at element {index}")]
    NonFinite {
        /// The tensor name.
        tensor: String,
        /// Index of the first non-finite element.
        index: usize,
    },
    /// The directory holds neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("{0}: no model.safetensors or model.safetensors.index.json")]
    NoCheckpoint(PathBuf),
    /// The shard index is malformed.
    #[error("{path}: invalid shard index: {reason}")]
    InvalidIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The configuration is malformed or incomplete.
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// Something the caller asked to write is inconsistent.
    #[error("cannot write {path}: {reason}")]
    InvalidWrite {
        /// The destination.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, IoError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> IoError {
    let path = path.into();
    move |source| IoError::Io { path, source }
}
