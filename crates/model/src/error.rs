//! Errors of the model crate.

/// What can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Reading the checkpoint or its config failed.
    #[error(transparent)]
    Io(#[from] qwen3_quant_io::IoError),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// Inputs whose sizes do not agree.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// Expected element count.
        expected: usize,
        /// Actual element count.
        got: usize,
    },
    /// A layer index beyond the model.
    #[error("layer {layer} does not exist (the model has {layers})")]
    NoSuchLayer {
        /// Requested layer.
        layer: usize,
        /// Number of layers.
        layers: usize,
    },
    /// A linear weight that cannot replace the existing one.
    #[error("replacement for {id}: {reason}")]
    BadReplacement {
        /// Which linear.
        id: String,
        /// Why.
        reason: String,
    },
    /// A packed-kernel failure.
    #[error(transparent)]
    Kernel(#[from] qwen3_quant_kernels::KernelError),
    /// Activation quantization could not be set up (see [`crate::act_quant`]).
    #[error(transparent)]
    ActQuant(#[from] crate::act_quant::ActQuantError),
    /// The tokenizer failed to load or encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
