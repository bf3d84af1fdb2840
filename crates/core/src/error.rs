//! Errors of the quantization vocabulary (schemes, quantized linears, statistics).

/// Errors raised while building or validating the shared quantization types.
///
/// Method crates wrap these in [`crate::method::MethodError::InvalidConfig`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bit width outside `1..=8`.
    #[error("unsupported bit width {bits} (expected 1..=8)")]
    InvalidBits {
        /// The rejected width.
        bits: u8,
    },
    /// A configuration value or combination that is not allowed.
    #[error("invalid configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The offending field (or combination of fields).
        field: &'static str,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A buffer whose length does not match the declared shape.
    #[error("shape mismatch for {what}: expected {expected} elements, got {actual}")]
    ShapeMismatch {
        /// Which buffer.
        what: &'static str,
        /// Length implied by the shape.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// An integer value (code, zero point, group index, permutation entry) out of its range.
    #[error("{what}[{index}] = {value} is out of range (must be <= {max})")]
    OutOfRange {
        /// Which buffer.
        what: &'static str,
        /// Flat index of the first bad entry.
        index: usize,
        /// The bad value.
        value: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// `g_idx` or `perm` are inconsistent with the group size (see [`crate::QuantizedLinear`]).
    #[error("inconsistent group layout: {reason} (at column {column})")]
    InconsistentGroups {
        /// Column (original order) where the inconsistency was found.
        column: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The packed kernels rejected a layout (see [`crate::QuantizedLinear::to_packed`]).
    #[error(transparent)]
    Kernel(#[from] qwen3_quant_kernels::KernelError),
    /// A value that must be positive (a smoothing factor, a scale) is zero or negative.
    #[error("non-positive value in {what} at index {index}")]
    NonPositive {
        /// Which buffer.
        what: &'static str,
        /// Flat index of the first bad value.
        index: usize,
    },
    /// A NaN or infinity where finite values are required.
    #[error("non-finite value in {what} at index {index}")]
    NonFinite {
        /// Which buffer.
        what: &'static str,
        /// Flat index of the first non-finite value.
        index: usize,
    },
}

/// `Result` with the core [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Index of the first non-finite value in `values`, if any.
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    values.iter().position(|v| !v.is_finite())
}
