//! Errors of the calibration crate.

use qwen3_quant_core::MethodError;

/// What can go wrong while calibrating and quantizing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CalibError {
    /// The calibration source is too short for the requested windows.
    #[error("not enough calibration tokens: need {needed}, have {available}")]
    NotEnoughTokens {
        /// Tokens needed.
        needed: usize,
        /// Tokens available.
        available: usize,
    },
    /// Inconsistent options.
    #[error("invalid calibration options: {0}")]
    InvalidOptions(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] qwen3_quant_model::ModelError),
    /// The method failed on a linear.
    #[error(transparent)]
    Method(#[from] MethodError),
    /// Statistics accumulation failed (shape or non-finite activations).
    #[error("statistics of {site}: {source}")]
    Stats {
        /// Where.
        site: String,
        /// Why.
        #[source]
        source: qwen3_quant_core::Error,
    },
    /// The calibration activations and one layer's working set would not fit in memory;
    /// nothing was allocated.
    #[error(
        "the calibration activations and one layer's working set need {needed_mb:.0} MB but \
         about {available_mb:.0} MB are available: {advice}"
    )]
    OutOfMemory {
        /// Megabytes the activation buffers and one layer's working set need.
        needed_mb: f64,
        /// Megabytes available (the OS's `MemAvailable`, a cgroup limit, or the configured budget).
        available_mb: f64,
        /// What would fit: fewer samples, bf16 activations.
        advice: String,
    },
    /// The saved state of an interrupted run cannot be used (unreadable, inconsistent, or made by
    /// a different job).
    #[error("resume: {0}")]
    Resume(String),
    /// Packing a quantized linear for the kernels failed.
    #[error("packing {id}: {reason}")]
    Pack {
        /// Which linear.
        id: String,
        /// Why.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, CalibError>;
