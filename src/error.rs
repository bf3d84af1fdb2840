//! The facade's error type: every failure of the crates it composes, plus bad arguments.

use std::path::PathBuf;

/// Anything that can go wrong behind the facade. Each variant keeps the typed error of the crate
/// that detected it (match on it for details; `Display` gives the whole message).
///
/// ```
/// use qwen3_quant::{Error, Model};
/// let err = Model::open("/no/such/model").unwrap_err();
/// assert!(matches!(err, Error::Format(_)));
/// assert!(err.to_string().contains("/no/such/model"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a checkpoint's files (safetensors, `config.json`).
    #[error(transparent)]
    Io(#[from] qwen3_quant_io::IoError),
    /// The model: shapes, tokenizer, forward pass, activation quantization.
    #[error(transparent)]
    Model(#[from] qwen3_quant_model::ModelError),
    /// Calibration data and the quantization driver.
    #[error(transparent)]
    Calib(#[from] qwen3_quant_calib::CalibError),
    /// A method's configuration or its work on one linear (NaN weights, singular Hessians, …).
    #[error(transparent)]
    Method(#[from] qwen3_quant_core::MethodError),
    /// A quantization scheme or another core type.
    #[error(transparent)]
    Core(#[from] qwen3_quant_core::Error),
    /// Evaluation data and scoring.
    #[error(transparent)]
    Eval(#[from] qwen3_quant_eval::EvalError),
    /// Writing or loading a quantized checkpoint.
    #[error(transparent)]
    Format(#[from] qwen3_quant_formats::FormatError),
    /// A file or folder the facade reads or writes itself (sweep results, plots).
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// An argument that cannot work (unknown dataset, empty grid, bad shard, …).
    #[error("{0}")]
    InvalidInput(String),
}

impl Error {
    pub(crate) fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::File {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }
}

/// `Result` with the facade's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
