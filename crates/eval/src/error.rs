//! Error type of the evaluator.

use std::path::PathBuf;

/// Every fallible operation of this crate returns this error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A data file is malformed (bad JSON line, missing field, bad tensor...).
    #[error("{path}: {message}")]
    Parse {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The model failed to produce logits.
    #[error("model: {0}")]
    Model(String),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Options or inputs are inconsistent (e.g. not enough tokens for one window).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Writing a report, CSV or plot failed.
    #[error("report: {0}")]
    Report(String),
}

impl EvalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn parse(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        EvalError::Parse {
            path: path.into(),
            message: message.into(),
        }
    }
}
