//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while writing, loading or inspecting a quantized checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Reading or writing the files failed (includes every malformed safetensors file).
    #[error(transparent)]
    Io(#[from] qwen3_quant_io::IoError),
    /// Building the model failed.
    #[error(transparent)]
    Model(#[from] qwen3_quant_model::ModelError),
    /// The packed kernels rejected a layout.
    #[error(transparent)]
    Kernel(#[from] qwen3_quant_kernels::KernelError),
    /// A quantized linear was rejected by the core types.
    #[error(transparent)]
    Core(#[from] qwen3_quant_core::Error),
    /// An operating-system error outside the safetensors files (directories, JSON files).
    #[error("{path}: {error}")]
    File {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// `config.json["quantization_config"]` (or `quantize_config.json`) is malformed.
    #[error("quantization config: {0}")]
    Config(String),
    /// A bit width this format (or the kernels) cannot hold.
    #[error("{module}: unsupported bit width {bits} for {format}")]
    UnsupportedBits {
        /// The linear.
        module: String,
        /// The width found or requested.
        bits: u32,
        /// The format.
        format: &'static str,
    },
    /// The tensors of one linear disagree with each other or with `config.json`.
    #[error("{module}: {reason}")]
    Inconsistent {
        /// The linear (tensor prefix).
        module: String,
        /// What disagrees.
        reason: String,
    },
    /// A group index outside `0..groups`.
    #[error("{module}: g_idx[{column}] = {value} is outside 0..{groups}")]
    GIdxOutOfRange {
        /// The linear.
        module: String,
        /// The input column.
        column: usize,
        /// The stored group index.
        value: i64,
        /// Number of groups (rows of `scales`).
        groups: usize,
    },
    /// A checkpoint declares GPTQ v1 zeros but its zeros are off by one in the way v2
    /// ("raw zeros") checkpoints are: decoding it as declared would give garbage.
    #[error("{declared} checkpoint whose zero points look like {detected}: mean (code − zero) is {mean_declared:.3} as declared and {mean_other:.3} the other way (≈ 0 is expected); set LoadOptions::gptq_zeros to force a convention")]
    MislabeledZeros {
        /// The declared convention.
        declared: &'static str,
        /// The convention the data fits.
        detected: &'static str,
        /// Mean of `code − zero` over all weights with the declared convention.
        mean_declared: f64,
        /// The same with the other convention.
        mean_other: f64,
    },
    /// What the caller asked to write cannot be represented in the chosen format.
    #[error("the {format} format cannot hold {module}: {reason} (the native format can)")]
    UnsupportedByFormat {
        /// The format.
        format: &'static str,
        /// The linear (or "model").
        module: String,
        /// Why.
        reason: String,
    },
    /// The output's file system has less free space than the checkpoint would take; nothing
    /// was written.
    #[error(
        "output {path}: needs about {needed_mb:.1} MB, the file system has {available_mb:.1} MB free"
    )]
    NoSpace {
        /// The output directory.
        path: PathBuf,
        /// Projected size of the checkpoint (tensors, with a margin for metadata).
        needed_mb: f64,
        /// Free space for this user on the output's file system.
        available_mb: f64,
    },
    /// `--resume` found the state of a different job: the model, the calibration set, the
    /// method's options or the program version changed since the state was saved.
    #[error("cannot resume from {path}: the {part} changed since it was saved (saved {saved}, now {now}); run without resume to start over")]
    ResumeMismatch {
        /// The state directory.
        path: PathBuf,
        /// Which part of the fingerprint differs (`model`, `calibration`, `method`, `version`).
        part: String,
        /// Its saved value.
        saved: String,
        /// Its value for this run.
        now: String,
    },
    /// The calibration driver failed.
    #[error(transparent)]
    Calib(#[from] qwen3_quant_calib::CalibError),
    /// The output directory is not usable (exists and is not empty, or is the input directory).
    #[error("output {path}: {reason}")]
    Output {
        /// The output directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, FormatError>;

pub(crate) fn file_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FormatError {
    let path = path.into();
    move |error| FormatError::File { path, error }
}

pub(crate) fn inconsistent(module: &str, reason: impl Into<String>) -> FormatError {
    FormatError::Inconsistent {
        module: module.to_string(),
        reason: reason.into(),
    }
}
