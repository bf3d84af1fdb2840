//! [`GptqConfig`]: the reference `fasterquant` / `qwen.py` knobs, validated once.

use qwen3_quant_core::{Bits, Error as CoreError, MethodError, MseSearch};

/// The most coordinate-descent passes [`GptqConfig::refine_passes`] accepts.
pub const MAX_REFINE_PASSES: usize = 100;

/// GPTQ configuration. `Default` mirrors the reference defaults (`qwen.py` + `fasterquant`),
/// except `act_order = true` (the README runs pass `--act-order`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct GptqConfig {
    /// Weight bits (`--wbits`, default 4). 2..=8; 1-bit is rejected (see [`GptqConfig::validate`]).
    pub bits: Bits,
    /// Group size (`--groupsize`, default `None` = per-channel, i.e. `-1`).
    pub group_size: Option<usize>,
    /// Symmetric quantization (`--sym`, default false).
    pub sym: bool,
    /// Process columns by descending Hessian diagonal (`--act-order`, default true).
    pub act_order: bool,
    /// Compute all group params up front on the original weight, over original column groups
    /// (AutoGPTQ's `static_groups`; not in the reference, default false).
    pub static_groups: bool,
    /// Relative damping `percdamp` (default 0.01): `damp = percdamp · mean(diag H)`.
    pub percdamp: f32,
    /// Lazy-batch block size (`blocksize`, default 128).
    pub block_size: usize,
    /// True-sequential layer order (`--true-sequential`, default true); reported through
    /// [`qwen3_quant_core::Quantizer::true_sequential`] for the driver.
    pub true_sequential: bool,
    /// How many times the damping is multiplied by 10 when Cholesky fails (default 4).
    pub max_damp_retries: u32,
    /// Group (or channel) parameters from an error-minimising range search instead of the
    /// plain min/max (default `None`, the reference's default; its `mse=True` is
    /// `Some(MseSearch::default())`). See [`MseSearch`].
    pub mse: Option<MseSearch>,
    /// Weight each column's error in the range search by the Hessian diagonal `H_jj` (the
    /// column's input energy), so the range serves the columns that matter (default false).
    pub mse_hessian_weighted: bool,
    /// Asymmetric calibration (GPTAQ's objective, default `None`): with `Some(alpha)` the
    /// quantized linear is fitted, on the quantized model's inputs `X̃`, to the full-precision
    /// model's outputs `W·X` rather than to `W·X̃`. The unconstrained optimum of that fit is
    /// `W* = W + W·D·H⁻¹` (`D = Σ (X − X̃)ᵀX̃`, `H = Σ X̃ᵀX̃`, damped as GPTQ damps it); GPTQ then
    /// quantizes `W + alpha·W·D·H⁻¹`, and `alpha` in `(0, 1]` shrinks the correction (GPTAQ
    /// scales its asymmetry term by 0.25). The driver runs the full-precision model alongside
    /// ([`qwen3_quant_core::Quantizer::full_precision_targets`]); a linear without the
    /// statistics (an expert no calibration token reached) gets plain GPTQ.
    pub asymmetric: Option<f32>,
    /// Calibration tokens per input feature below which a linear gets plain GPTQ instead of
    /// the asymmetric target (default [`crate::ASYMMETRIC_MIN_TOKENS_PER_INPUT`]): the target
    /// solves a least-squares problem in the input dimension that a few tokens (a rarely routed
    /// expert) do not determine.
    pub asymmetric_min_tokens_per_input: usize,
    /// Coordinate-descent passes over the codes after the column loop (default 0, the
    /// reference): with the grid fixed, each code moves to the grid point that minimises the
    /// layer loss `(q − w)ᵀ H (q − w)` given all the others, so that early columns see the later
    /// ones (QuantEase's refinement). The loss never increases; passes stop once nothing moves.
    /// [`crate::Gptq`] skips it for a linear calibrated on fewer than
    /// [`crate::REFINE_MIN_TOKENS_PER_INPUT`] tokens per input feature.
    pub refine_passes: usize,
    /// Rounds of scale refitting with the refinement (default 0; needs `refine_passes > 0`):
    /// each round refits every row's scales to its codes by least squares under the same loss
    /// (zeros kept, so the layout is unchanged), then runs the code passes again. [`crate::Gptq`]
    /// skips it below [`crate::REFIT_MIN_TOKENS_PER_INPUT`] tokens per input feature.
    pub refit_scales: usize,
    /// First-order error compensation (FOEM, arXiv 2507.11017; default `None`): with
    /// `Some(beta)` the column loop treats the drift of each latent column from its target
    /// (`w − w_target`, which GPTQ's earlier updates accumulated) as the loss gradient's
    /// first-order term. The error it propagates is `((w − q) − beta·(w − w_target)) / d`
    /// instead of `(w − q) / d`, and after each column the next column's drift is shrunk by
    /// `beta`. `beta` in `(0, 1)`; the FOEM authors recommend 0.1–0.25.
    pub first_order: Option<f32>,
}

qwen3_quant_core::setters!(GptqConfig {
    bits: Bits => with_bits,
    group_size: Option<usize> => with_group_size,
    sym: bool => with_sym,
    act_order: bool => with_act_order,
    static_groups: bool => with_static_groups,
    percdamp: f32 => with_percdamp,
    block_size: usize => with_block_size,
    true_sequential: bool => with_true_sequential,
    max_damp_retries: u32 => with_max_damp_retries,
    mse: Option<MseSearch> => with_mse,
    mse_hessian_weighted: bool => with_mse_hessian_weighted,
    asymmetric: Option<f32> => with_asymmetric,
    asymmetric_min_tokens_per_input: usize => with_asymmetric_min_tokens_per_input,
    refine_passes: usize => with_refine_passes,
    refit_scales: usize => with_refit_scales,
    first_order: Option<f32> => with_first_order,
});

impl Default for GptqConfig {
    fn default() -> Self {
        Self {
            bits: Bits::B4,
            group_size: None,
            sym: false,
            act_order: true,
            static_groups: false,
            percdamp: 0.01,
            block_size: 128,
            true_sequential: true,
            max_damp_retries: 4,
            mse: None,
            mse_hessian_weighted: false,
            asymmetric: None,
            asymmetric_min_tokens_per_input: crate::ASYMMETRIC_MIN_TOKENS_PER_INPUT,
            refine_passes: 0,
            refit_scales: 0,
            first_order: None,
        }
    }
}

impl GptqConfig {
    /// The `best` recipe (`qwen3-quant quantize --recipe best`, docs/beyond-the-study.md): act-order
    /// with static groups, the range search of the group parameters, dampening 0.05, true
    /// sequential, asymmetric calibration at full strength (GPTAQ's objective, `asymmetric = 1`:
    /// targets from the full-precision model's outputs), then 5 refinement passes over the codes
    /// with 2 rounds of scale refitting. At 2, 3 and 4 bits, group 128 it beat every method of
    /// the study on qwen3-micro; set `bits` and `group_size` as usual.
    ///
    /// ```
    /// use qwen3_quant_core::Bits;
    /// use qwen3_quant_gptq::GptqConfig;
    /// let c = GptqConfig::recipe_best().with_bits(Bits::new(3)?).with_group_size(Some(128));
    /// assert!(c.static_groups && c.act_order && c.mse.is_some());
    /// assert_eq!((c.refine_passes, c.refit_scales, c.asymmetric), (5, 2, Some(1.0)));
    /// c.validate()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recipe_best() -> Self {
        GptqConfig {
            act_order: true,
            static_groups: true,
            percdamp: 0.05,
            true_sequential: true,
            mse: Some(MseSearch::default()),
            mse_hessian_weighted: false,
            refine_passes: 5,
            refit_scales: 2,
            asymmetric: Some(1.0),
            ..GptqConfig::default()
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// - [`MethodError::UnsupportedBits`] for 1 bit: GPTQ's quantizer at `maxq = 1` is a
    ///   two-level grid that includes 0 (not a binarisation), the reference offers no 1-bit
    ///   option, and BiLLM is the method for 1 bit.
    /// - [`MethodError::InvalidConfig`] for `group_size = Some(0)`, `block_size = 0`, or a
    ///   negative / non-finite `percdamp`.
    pub fn validate(&self) -> Result<(), MethodError> {
        let bad = |field, reason| {
            Err(MethodError::InvalidConfig(CoreError::InvalidConfig {
                field,
                reason,
            }))
        };
        if self.bits.get() < 2 {
            return Err(MethodError::UnsupportedBits {
                method: "gptq",
                bits: self.bits.get(),
            });
        }
        if self.group_size == Some(0) {
            return bad("group_size", "must be positive");
        }
        if self.block_size == 0 {
            return bad("block_size", "must be positive");
        }
        if !(self.percdamp.is_finite() && self.percdamp >= 0.0) {
            return bad("percdamp", "must be finite and >= 0");
        }
        if let Some(m) = &self.mse {
            m.validate().map_err(MethodError::InvalidConfig)?;
        }
        if self.refine_passes > MAX_REFINE_PASSES {
            return bad(
                "refine_passes",
                "at most 100 (passes stop once nothing moves)",
            );
        }
        if self.refit_scales > MAX_REFINE_PASSES {
            return bad("refit_scales", "at most 100 rounds");
        }
        if self.refit_scales > 0 && self.refine_passes == 0 {
            return bad("refit_scales", "needs refine_passes > 0");
        }
        if let Some(b) = self.first_order {
            if !(b.is_finite() && b > 0.0 && b < 1.0) {
                return bad("first_order", "beta must be in (0, 1)");
            }
        }
        if let Some(a) = self.asymmetric {
            if !(a.is_finite() && a > 0.0 && a <= 1.0) {
                return bad("asymmetric", "alpha must be in (0, 1]");
            }
        }
        Ok(())
    }
}
