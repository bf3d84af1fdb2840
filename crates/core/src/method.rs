//! The method trait: what every PTQ algorithm implements, and its error type.
//!
//! Weights are always `[out_features, in_features]` row-major f32, as in `nn.Linear`.
//! Methods never see how the model is stored.

use crate::binary::QuantizedWeight;
use crate::error::{first_non_finite, Error};
use crate::id::LinearId;
use crate::stats::LinearStats;

/// Which outputs feed the next decoder layer during sequential quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Propagation {
    /// The quantized layer's outputs (GPTQ, BiLLM, RTN).
    Quantized,
    /// The full-precision layer's outputs (AWQ).
    FullPrecision,
}

/// Calibration statistics a method needs; the driver collects only these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StatsRequest {
    /// The input Hessian `XᵀX` ([`crate::Hessian`]).
    pub hessian: bool,
    /// Per-input-channel `|x|` max/mean ([`crate::ChannelStats`]).
    pub channel_stats: bool,
}

/// Read-only view of one full-precision linear.
#[derive(Debug, Clone, Copy)]
pub struct LinearInput<'a> {
    /// Which linear.
    pub id: LinearId,
    /// `[out_features, in_features]` row-major weight.
    pub weight: &'a [f32],
    /// Rows.
    pub out_features: usize,
    /// Columns.
    pub in_features: usize,
}

impl LinearInput<'_> {
    /// Checks `weight.len()` against the shape and that every weight is finite.
    ///
    /// # Errors
    /// [`MethodError::InvalidShape`] or [`MethodError::NonFinite`] naming the linear.
    pub fn validate(&self) -> Result<(), MethodError> {
        check_weight(self.weight, self.out_features, self.in_features)
            .map_err(|e| e.with_id(self.id))
    }
}

/// Shape and finiteness check of a `[out, in]` weight (errors carry no id yet).
///
/// # Errors
/// [`MethodError::InvalidShape`] or [`MethodError::NonFinite`].
pub fn check_weight(
    weight: &[f32],
    out_features: usize,
    in_features: usize,
) -> Result<(), MethodError> {
    let expected = out_features.saturating_mul(in_features);
    if weight.len() != expected {
        return Err(MethodError::InvalidShape {
            id: None,
            what: "weight",
            expected,
            actual: weight.len(),
        });
    }
    if let Some(index) = first_non_finite(weight) {
        return Err(MethodError::NonFinite {
            id: None,
            what: "weight",
            index,
        });
    }
    Ok(())
}

/// [`check_weight`] for a second-order method: also no empty dimension and an `[in, in]` Hessian
/// (its values are checked where it is prepared).
///
/// # Errors
/// [`MethodError::InvalidShape`] or [`MethodError::NonFinite`].
pub fn check_weight_and_hessian(
    weight: &[f32],
    out_features: usize,
    in_features: usize,
    hessian: &[f32],
) -> Result<(), MethodError> {
    check_weight(weight, out_features, in_features)?;
    if out_features == 0 || in_features == 0 {
        return Err(MethodError::InvalidShape {
            id: None,
            what: "weight (empty dimension)",
            expected: 1,
            actual: 0,
        });
    }
    let n2 = in_features.saturating_mul(in_features);
    if hessian.len() != n2 {
        return Err(MethodError::InvalidShape {
            id: None,
            what: "hessian",
            expected: n2,
            actual: hessian.len(),
        });
    }
    Ok(())
}

/// The input Hessian a second-order method needs, checked against the linear's width.
///
/// # Errors
/// [`MethodError::MissingStatistics`] or [`MethodError::InvalidShape`] (with the linear's id).
pub fn required_hessian<'a>(
    stats: &'a LinearStats,
    input: &LinearInput<'_>,
) -> Result<&'a crate::Hessian, MethodError> {
    let id = input.id;
    let h = stats
        .hessian
        .as_ref()
        .ok_or(MethodError::MissingStatistics {
            id: Some(id),
            what: "hessian",
        })?;
    if h.dim != input.in_features {
        return Err(MethodError::InvalidShape {
            id: Some(id),
            what: "hessian dim",
            expected: input.in_features,
            actual: h.dim,
        });
    }
    Ok(h)
}

/// Result of quantizing one linear.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantOutcome {
    /// The quantized weight (affine codes, or BiLLM's binary weights).
    pub linear: QuantizedWeight,
    /// Method-specific loss (GPTQ: `Σ (w−q)²/d²/2`; RTN: `Σ (w−q)²`).
    pub loss: f64,
    /// Damping finally added to the Hessian diagonal (0 if not applicable).
    pub damp: f64,
}

/// A post-training quantization method. Object-safe: hold it as `Box<dyn Quantizer>`.
pub trait Quantizer: Send + Sync {
    /// Short name for logs and metadata (`"rtn"`, `"gptq"`).
    fn name(&self) -> &'static str;
    /// Statistics the driver must collect.
    fn stats_required(&self) -> StatsRequest;
    /// Whether the next layer sees quantized or full-precision outputs.
    fn propagation(&self) -> Propagation;
    /// GPTQ's true-sequential order: `[k,v,q] → [o] → [up,gate] → [down]`, with inputs
    /// recomputed (through the already-quantized linears) between groups.
    fn true_sequential(&self) -> bool;
    /// Asymmetric calibration (GPTAQ): fit the quantized layer's outputs on the quantized
    /// model's inputs `X̃` to the full-precision model's outputs on its own inputs `X`, rather
    /// than to the full-precision layer on `X̃`. When true, the driver runs the full-precision
    /// model next to the quantized one and fills [`LinearStats::cross`] for dense layers.
    /// Default: false.
    fn full_precision_targets(&self) -> bool {
        false
    }
    /// Quantizes one linear.
    ///
    /// # Errors
    /// See [`MethodError`].
    fn quantize_linear(
        &self,
        input: LinearInput<'_>,
        stats: &LinearStats,
    ) -> Result<QuantOutcome, MethodError>;
    /// [`Self::quantize_linear`] for a caller that no longer needs `stats`: a method may consume
    /// them to hold less memory at once (GPTQ halves the Hessian before factoring it). The
    /// result must be the same. Default: borrows them.
    ///
    /// # Errors
    /// See [`MethodError`].
    fn quantize_linear_owned(
        &self,
        input: LinearInput<'_>,
        stats: LinearStats,
    ) -> Result<QuantOutcome, MethodError> {
        self.quantize_linear(input, &stats)
    }
}

fn show(id: &Option<LinearId>) -> String {
    id.map_or_else(|| "<unnamed linear>".to_owned(), |i| i.to_string())
}

/// Errors a method can return. Variants naming a linear carry `Option<LinearId>`: free functions
/// that do not know the id leave it `None`; [`MethodError::with_id`] fills it in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MethodError {
    /// A NaN/Inf in the weight, the statistics or a result.
    #[error("non-finite value in {what} of {} (flat index {index})", show(.id))]
    NonFinite {
        /// The linear.
        id: Option<LinearId>,
        /// `"weight"`, `"hessian"`, `"scales"`, ….
        what: &'static str,
        /// Flat index of the first offending value.
        index: usize,
    },
    /// A statistic the method asked for (see [`Quantizer::stats_required`]) was not provided.
    #[error("missing {what} statistics for {}", show(.id))]
    MissingStatistics {
        /// The linear.
        id: Option<LinearId>,
        /// `"hessian"` or `"channel_stats"`.
        what: &'static str,
    },
    /// Cholesky failed even after the allowed damping increases.
    #[error("hessian of {} is not positive definite (pivot at column {column}, damp {damp:e})", show(.id))]
    HessianNotPositiveDefinite {
        /// The linear.
        id: Option<LinearId>,
        /// Column (in the processing order) where the factorisation failed.
        column: usize,
        /// Last damping tried.
        damp: f64,
    },
    /// A bit width the method does not support.
    #[error("{method} does not support {bits}-bit quantization")]
    UnsupportedBits {
        /// Method name.
        method: &'static str,
        /// Requested width.
        bits: u8,
    },
    /// A buffer whose length does not match the declared shape.
    #[error("shape mismatch for {what} of {}: expected {expected}, got {actual}", show(.id))]
    InvalidShape {
        /// The linear.
        id: Option<LinearId>,
        /// Which buffer.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// Invalid configuration or a violated invariant of a core type.
    #[error(transparent)]
    InvalidConfig(#[from] Error),
    /// The layer context (the driver running the model for a transform) failed.
    #[error("layer context: {0}")]
    Context(String),
}

impl MethodError {
    /// Sets the linear id where the variant has one and it is still `None`.
    pub fn with_id(mut self, linear: LinearId) -> Self {
        match &mut self {
            MethodError::NonFinite { id, .. }
            | MethodError::MissingStatistics { id, .. }
            | MethodError::HessianNotPositiveDefinite { id, .. }
            | MethodError::InvalidShape { id, .. } => {
                id.get_or_insert(linear);
            }
            _ => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::LinearKind;

    #[test]
    fn error_names_linear() {
        let e = check_weight(&[1.0, f32::NAN], 1, 2)
            .unwrap_err()
            .with_id(LinearId::new(2, LinearKind::K));
        assert!(e.to_string().contains("layers.2.self_attn.k_proj"), "{e}");
        assert!(matches!(
            check_weight(&[1.0], 1, 2),
            Err(MethodError::InvalidShape { .. })
        ));
        // object safety
        fn _obj(_: &dyn Quantizer) {}
    }
}
