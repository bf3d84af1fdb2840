//! GPTQ (Frantar et al.): Hessian-based sequential weight quantization of one linear, with
//! act-order, groups (desc_act or static), relative damping and lazy-batch blocking, following the
//! paper's reference code (`GPTQ-for-Qwen/gptq.py::fasterquant`, reference-methods §2.3).
//!
//! Decisions and numerics:
//! - The damped Hessian is factorised in **f64** with faer. The reference computes
//!   `cholesky(cholesky_inverse(cholesky(H)), upper=True)`; we compute the same matrix (the upper Cholesky factor
//!   of `H⁻¹` is unique) as `J·L⁻¹·J` with `J·H·J = L·Lᵀ` (`J` reverses the index order): one
//!   Cholesky plus one triangular inverse, without forming `H⁻¹`. On failure the damping is
//!   multiplied by 10, up to [`GptqConfig::max_damp_retries`] times, then
//!   [`qwen3_quant_core::MethodError::HessianNotPositiveDefinite`] names the linear and the
//!   (original) column. A negative diagonal entry is rejected at once (no Gram matrix has one).
//! - The column loop and the lazy GEMM run in **f32** like the reference; rows are independent in
//!   GPTQ, so row chunks run in parallel (rayon) with an AVX2 build of the loop picked at runtime
//!   (no FMA, bit-identical to the generic path).
//! - Rounding is half-to-even. Act-order ties (equal diagonal entries) keep the original column
//!   order (stable sort); torch's `argsort` leaves that order unspecified.
//! - Group params are found on the partially updated W at each group boundary, reading W as it
//!   was at the start of the enclosing block (as the reference, which reads `W`, not `W1`).
//!   With `static_groups`, they are computed up front on the original W over original columns.
//! - 1-bit is rejected ([`qwen3_quant_core::MethodError::UnsupportedBits`]); use BiLLM.
//! - `loss` is the reference's `Σ (w−q)²/d²/2` with the Hessian normalised as `2/N_seq·ΣXᵀX`.
//!
//! ```
//! use qwen3_quant_core::{Hessian, LinearId, LinearInput, LinearKind, LinearStats, Quantizer};
//! use qwen3_quant_gptq::{Gptq, GptqConfig};
//!
//! let (out, inp, tokens) = (8, 32, 64);
//! let w: Vec<f32> = (0..out * inp).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
//! let x: Vec<f32> = (0..tokens * inp).map(|i| ((i * 53 % 97) as f32 - 48.0) / 50.0).collect();
//! let mut h = Hessian::new(inp);
//! h.accumulate(&x, tokens)?;
//! let stats = LinearStats { hessian: Some(h), tokens, ..Default::default() };
//! let gptq = Gptq::new(GptqConfig::default().with_group_size(Some(16)))?;
//! let id = LinearId::new(0, LinearKind::Q);
//! let outcome = gptq.quantize_linear(LinearInput { id, weight: &w, out_features: out, in_features: inp }, &stats)?;
//! assert_eq!(outcome.linear.dequantize().len(), out * inp);
//! assert!(outcome.loss >= 0.0 && outcome.damp > 0.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod hessian;
mod quantize;
mod refine;

pub use config::{GptqConfig, MAX_REFINE_PASSES};
pub use hessian::act_order_perm;
pub use quantize::{
    quantize_weight, quantize_weight_scaled, quantize_weight_scaled_owned, GptqOutput,
};
pub use qwen3_quant_core::asymmetric::asymmetric_target;

use qwen3_quant_core::{
    LinearInput, LinearStats, MethodError, Propagation, QuantOutcome, Quantizer, StatsRequest,
};

/// `Result` of this crate.
pub type Result<T> = std::result::Result<T, MethodError>;

/// Calibration tokens per input feature below which [`Gptq`] skips the refinement of
/// [`GptqConfig::refine_passes`] for a linear: its Hessian is too noisy to fit more tightly
/// than GPTQ's column loop does.
pub const REFINE_MIN_TOKENS_PER_INPUT: usize = 16;

/// Calibration tokens per input feature below which [`Gptq`] skips the scale refitting of
/// [`GptqConfig::refit_scales`], keeping the code passes. On qwen3-moe-micro with 32 × 1024
/// calibration tokens, refitting the experts that saw fewer raised the docs perplexity; with
/// 128 × 1024 tokens refitting lowered it (docs/beyond-the-study.md).
pub const REFIT_MIN_TOKENS_PER_INPUT: usize = 64;

/// The default of [`GptqConfig::asymmetric_min_tokens_per_input`]: calibration tokens per input
/// feature below which [`Gptq`] quantizes a linear towards its own weight instead of the
/// asymmetric target of [`GptqConfig::asymmetric`]. The target
/// `W + α·W·D·H⁻¹` solves a least-squares problem in the input dimension, which a rarely routed
/// expert's few tokens determine no better than they determine the refit scales. On
/// qwen3-moe-micro (128 × 1024 calibration tokens) the recipe with full-strength asymmetric
/// calibration on every expert gave docs_32 25.7487 against 25.5924 without it.
pub const ASYMMETRIC_MIN_TOKENS_PER_INPUT: usize = 64;

/// The GPTQ method as a [`Quantizer`]: needs the input Hessian, propagates quantized outputs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Gptq {
    config: GptqConfig,
}

impl Gptq {
    /// A validated quantizer.
    ///
    /// # Errors
    /// See [`GptqConfig::validate`].
    pub fn new(config: GptqConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &GptqConfig {
        &self.config
    }

    /// Asymmetric calibration's strength and cross term for this linear, where it applies:
    /// configured, a cross term of the right width from the driver, and enough tokens per input
    /// to estimate it (plain GPTQ otherwise).
    fn asymmetric_cross<'s>(
        &self,
        stats: &'s LinearStats,
        input: &LinearInput<'_>,
    ) -> Option<(f32, &'s qwen3_quant_core::CrossCovariance)> {
        let per_input = stats.tokens / input.in_features.max(1);
        match (self.config.asymmetric, &stats.cross) {
            (Some(alpha), Some(d))
                if d.dim == input.in_features
                    && per_input >= self.config.asymmetric_min_tokens_per_input =>
            {
                Some((alpha, d))
            }
            _ => None,
        }
    }

    /// The configuration for a linear with `per_input` calibration tokens per input feature:
    /// the refinement fits the Hessian more tightly than the column loop, the scale refit most;
    /// a Hessian from few tokens per input (a rarely routed expert) is noise they would fit too.
    fn effective_config(&self, per_input: usize) -> GptqConfig {
        if per_input < REFINE_MIN_TOKENS_PER_INPUT {
            self.config.with_refine_passes(0).with_refit_scales(0)
        } else if per_input < REFIT_MIN_TOKENS_PER_INPUT {
            self.config.with_refit_scales(0)
        } else {
            self.config
        }
    }
}

impl Quantizer for Gptq {
    fn name(&self) -> &'static str {
        "gptq"
    }
    fn stats_required(&self) -> StatsRequest {
        StatsRequest {
            hessian: true,
            channel_stats: false,
        }
    }
    fn propagation(&self) -> Propagation {
        Propagation::Quantized
    }
    fn true_sequential(&self) -> bool {
        self.config.true_sequential
    }
    fn full_precision_targets(&self) -> bool {
        self.config.asymmetric.is_some()
    }
    /// [`Quantizer::quantize_linear`] with the statistics handed over: where nothing reads the
    /// whole Hessian after the factorisation (no refinement, no asymmetric target), it runs
    /// [`quantize_weight_scaled_owned`], which halves the Hessian before factoring it. The
    /// result is the same.
    fn quantize_linear_owned(
        &self,
        input: LinearInput<'_>,
        mut stats: LinearStats,
    ) -> Result<QuantOutcome> {
        let id = input.id;
        qwen3_quant_core::method::required_hessian(&stats, &input)?;
        let per_input = stats.tokens / input.in_features.max(1);
        let config = self.effective_config(per_input);
        if self.asymmetric_cross(&stats, &input).is_some() || config.refine_passes > 0 {
            return self.quantize_linear(input, &stats);
        }
        let Some(h) = stats.hessian.take() else {
            return self.quantize_linear(input, &stats);
        };
        let scale = h.scale();
        let out = quantize_weight_scaled_owned(
            input.weight,
            input.out_features,
            input.in_features,
            h.data,
            scale,
            &config,
        )
        .map_err(|e| e.with_id(id))?;
        Ok(outcome(out))
    }
    /// Runs [`quantize_weight_scaled`] with `stats.hessian` normalised as the reference
    /// ([`qwen3_quant_core::Hessian::scale`], `2/N_seq · ΣXᵀX`, which only affects `loss`).
    fn quantize_linear(&self, input: LinearInput<'_>, stats: &LinearStats) -> Result<QuantOutcome> {
        let id = input.id;
        let h = qwen3_quant_core::method::required_hessian(stats, &input)?;
        let per_input = stats.tokens / input.in_features.max(1);
        // Asymmetric calibration: quantize the weight that best reproduces the full-precision
        // outputs from the quantized inputs (plain GPTQ where the driver had no cross term, or
        // too few tokens to estimate it).
        let target = match self.asymmetric_cross(stats, &input) {
            Some((alpha, d)) => Some(
                asymmetric_target(
                    input.weight,
                    input.out_features,
                    input.in_features,
                    &h.data,
                    &d.data,
                    alpha,
                    self.config.percdamp,
                )
                .map_err(|e| e.with_id(id))?,
            ),
            None => None,
        };
        let config = self.effective_config(per_input);
        let out = quantize_weight_scaled(
            target.as_deref().unwrap_or(input.weight),
            input.out_features,
            input.in_features,
            &h.data,
            h.scale(),
            &config,
        )
        .map_err(|e| e.with_id(id))?;
        Ok(outcome(out))
    }
}

/// The trait's view of GPTQ's result (the fake-quantized copy is not needed there).
fn outcome(out: GptqOutput) -> QuantOutcome {
    QuantOutcome {
        linear: out.linear.into(),
        loss: out.loss,
        damp: out.damp,
    }
}

#[cfg(test)]
mod tests;
