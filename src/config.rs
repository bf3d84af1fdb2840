//! The facade's method settings: plain fields (bits as `u8`, groups as `Option<usize>`) whose
//! `Default` is the study's setting, converted into the method crates' validated configurations.

use qwen3_quant_core::{Bits, GroupSize, QuantScheme, RangeConvention};

use crate::error::Result;

/// The study's group size (`--groupsize 128`); `None` in a config means per output channel.
pub const PAPER_GROUP_SIZE: usize = 128;

fn group_of(group_size: Option<usize>) -> Result<GroupSize> {
    Ok(match group_size {
        None => GroupSize::PerChannel,
        Some(g) => GroupSize::group(g)?,
    })
}

/// Round-to-nearest. `Default`: 4 bits, group 128, asymmetric, no clip search.
///
/// Range convention, as the study's two RTN code paths: per-group asymmetric grids use the
/// group's own min/max (llm-awq's fake quantizer); per-channel or symmetric grids use GPTQ's
/// quantizer (range widened to include 0).
///
/// ```
/// use qwen3_quant::RtnConfig;
/// let c = RtnConfig::default().with_bits(3).with_group_size(None); // w3 per-channel
/// assert_eq!(c.method()?.config.scheme.bits().get(), 3);
/// assert!(RtnConfig::default().with_bits(9).method().is_err());
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RtnConfig {
    /// Weight bits, 1..=8.
    pub bits: u8,
    /// Columns per group; `None` = one scale per output channel.
    pub group_size: Option<usize>,
    /// Symmetric grid.
    pub sym: bool,
    /// Search a clipping range per group minimising the 2.4-norm error (GPTQ's `mse` grid).
    pub mse_clip: bool,
}

impl Default for RtnConfig {
    fn default() -> Self {
        RtnConfig {
            bits: 4,
            group_size: Some(PAPER_GROUP_SIZE),
            sym: false,
            mse_clip: false,
        }
    }
}

impl RtnConfig {
    /// The weight scheme (bits, grouping, symmetry, convention).
    ///
    /// # Errors
    /// Impossible bits or group size.
    pub fn scheme(&self) -> Result<QuantScheme> {
        let convention = if self.sym || self.group_size.is_none() {
            RangeConvention::Gptq
        } else {
            RangeConvention::Awq
        };
        Ok(QuantScheme::new(
            Bits::new(self.bits)?,
            group_of(self.group_size)?,
            self.sym,
            convention,
        )?)
    }

    /// The validated method.
    ///
    /// # Errors
    /// Impossible bits or group size.
    pub fn method(&self) -> Result<qwen3_quant_rtn::Rtn> {
        let mut c = qwen3_quant_rtn::RtnConfig::new(self.scheme()?);
        if self.mse_clip {
            c = c.with_mse(qwen3_quant_rtn::MseSearch::default());
        }
        Ok(qwen3_quant_rtn::Rtn::new(c)?)
    }
}

/// GPTQ. `Default`: the study's command (`qwen.py c4 --wbits 4 --groupsize 128 --act-order
/// --true-sequential`): 4 bits, group 128, asymmetric, act-order, true-sequential, damping 0.01.
///
/// ```
/// use qwen3_quant::GptqConfig;
/// let c = GptqConfig::default().with_bits(3);
/// let m = c.method()?;
/// assert_eq!((m.config().bits.get(), m.config().group_size), (3, Some(128)));
/// assert!(GptqConfig::default().with_bits(1).method().is_err()); // BiLLM is the 1-bit method
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct GptqConfig {
    /// Weight bits, 2..=8.
    pub bits: u8,
    /// Columns per group; `None` = per output channel.
    pub group_size: Option<usize>,
    /// Symmetric grid.
    pub sym: bool,
    /// Quantize columns by decreasing Hessian diagonal.
    pub act_order: bool,
    /// Quantize `[k,v,q] → [o] → [up,gate] → [down]` with inputs recomputed in between.
    pub true_sequential: bool,
    /// Dampening, a fraction of the mean Hessian diagonal.
    pub damp: f32,
    /// With act-order: group parameters computed up front on the original weights.
    pub static_groups: bool,
    /// Group parameters from GPTQ's `mse=True` range search instead of min/max.
    pub mse: bool,
    /// The range search weights each column's error by the Hessian diagonal (implies `mse`).
    pub mse_hessian_weighted: bool,
    /// Asymmetric calibration with this correction strength in `(0, 1]` (GPTAQ's objective:
    /// see [`qwen3_quant_gptq::GptqConfig::asymmetric`]); `None` = plain GPTQ.
    pub asymmetric: Option<f32>,
    /// Coordinate-descent passes over the codes after GPTQ's column loop (see
    /// [`qwen3_quant_gptq::GptqConfig::refine_passes`]); 0 = plain GPTQ.
    pub refine_passes: usize,
    /// Rounds of scale refitting with the refinement (see
    /// [`qwen3_quant_gptq::GptqConfig::refit_scales`]).
    pub refit_scales: usize,
    /// First-order error compensation (FOEM) with this `beta` in `(0, 1)` (see
    /// [`qwen3_quant_gptq::GptqConfig::first_order`]); `None` = plain GPTQ.
    pub first_order: Option<f32>,
}

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig {
            bits: 4,
            group_size: Some(PAPER_GROUP_SIZE),
            sym: false,
            act_order: true,
            true_sequential: true,
            damp: 0.01,
            static_groups: false,
            mse: false,
            mse_hessian_weighted: false,
            asymmetric: None,
            refine_passes: 0,
            refit_scales: 0,
            first_order: None,
        }
    }
}

impl GptqConfig {
    /// The `best` recipe at `bits` and `group_size` (see
    /// [`qwen3_quant_gptq::GptqConfig::recipe_best`]): act-order with static groups, the range
    /// search of the group parameters, dampening 0.05, asymmetric calibration, refinement of the
    /// codes and scales.
    ///
    /// ```
    /// use qwen3_quant::GptqConfig;
    /// let c = GptqConfig::best(3, Some(128));
    /// assert!(c.static_groups && c.mse && c.act_order);
    /// assert_eq!((c.bits, c.group_size), (3, Some(128)));
    /// ```
    pub fn best(bits: u8, group_size: Option<usize>) -> Self {
        let m = qwen3_quant_gptq::GptqConfig::recipe_best();
        GptqConfig {
            bits,
            group_size,
            sym: m.sym,
            act_order: m.act_order,
            true_sequential: m.true_sequential,
            damp: m.percdamp,
            static_groups: m.static_groups,
            mse: m.mse.is_some(),
            mse_hessian_weighted: m.mse_hessian_weighted,
            asymmetric: m.asymmetric,
            refine_passes: m.refine_passes,
            refit_scales: m.refit_scales,
            first_order: m.first_order,
        }
    }

    /// The method crate's configuration.
    ///
    /// # Errors
    /// Impossible bits.
    pub fn method_config(&self) -> Result<qwen3_quant_gptq::GptqConfig> {
        Ok(qwen3_quant_gptq::GptqConfig::default()
            .with_bits(Bits::new(self.bits)?)
            .with_group_size(self.group_size)
            .with_sym(self.sym)
            .with_act_order(self.act_order)
            .with_true_sequential(self.true_sequential)
            .with_percdamp(self.damp)
            .with_static_groups(self.static_groups)
            .with_mse(
                (self.mse || self.mse_hessian_weighted).then(qwen3_quant_core::MseSearch::default),
            )
            .with_mse_hessian_weighted(self.mse_hessian_weighted)
            .with_asymmetric(self.asymmetric)
            .with_refine_passes(self.refine_passes)
            .with_refit_scales(self.refit_scales)
            .with_first_order(self.first_order))
    }

    /// The validated method.
    ///
    /// # Errors
    /// Bits outside 2..=8, a zero group size, a negative damping.
    pub fn method(&self) -> Result<qwen3_quant_gptq::Gptq> {
        Ok(qwen3_quant_gptq::Gptq::new(self.method_config()?)?)
    }
}

/// AWQ's scale and clip search. `Default`: llm-awq's (4 bits, group 128, asymmetric, a 20-point
/// scale grid, clipping up to 50% over 20 steps on 512 tokens, no `v → o` scaling under GQA).
///
/// ```
/// use qwen3_quant::AwqConfig;
/// let awq = AwqConfig::default().with_bits(3).method()?;
/// assert_eq!(awq.quantizer()?.config.scheme.bits().get(), 3);
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct AwqConfig {
    /// Weight bits the search optimises for.
    pub bits: u8,
    /// Columns per group; `None` = per output channel.
    pub group_size: Option<usize>,
    /// Symmetric grid (the reference has none; this uses GPTQ's symmetric quantizer).
    pub sym: bool,
    /// Scale grid: ratios `i / grid`, `i < grid`.
    pub grid: usize,
    /// Run the per-channel scale search.
    pub search_scales: bool,
    /// Run the clip search.
    pub clip: bool,
    /// Largest clip shrink tried, in `[0, 1)`.
    pub max_shrink: f32,
    /// Tokens subsampled for the clip search.
    pub clip_samples: usize,
    /// Also scale `v → o` under GQA (one scale per value channel; the reference skips it).
    pub scale_v_o_gqa: bool,
}

impl Default for AwqConfig {
    fn default() -> Self {
        let d = qwen3_quant_awq::AwqConfig::default();
        AwqConfig {
            bits: 4,
            group_size: Some(PAPER_GROUP_SIZE),
            sym: false,
            grid: d.grid,
            search_scales: d.search_scales,
            clip: d.clip,
            max_shrink: d.max_shrink,
            clip_samples: d.clip_samples,
            scale_v_o_gqa: d.scale_v_o_gqa,
        }
    }
}

impl AwqConfig {
    /// The validated transform.
    ///
    /// # Errors
    /// Impossible bits or group size, an empty grid, a shrink outside `[0, 1)`.
    pub fn method(&self) -> Result<qwen3_quant_awq::Awq> {
        let convention = if self.sym {
            RangeConvention::Gptq
        } else {
            RangeConvention::Awq
        };
        let scheme = QuantScheme::new(
            Bits::new(self.bits)?,
            group_of(self.group_size)?,
            self.sym,
            convention,
        )?;
        let mut c = qwen3_quant_awq::AwqConfig::with_scheme(scheme);
        c.grid = self.grid;
        c.search_scales = self.search_scales;
        c.clip = self.clip;
        c.max_shrink = self.max_shrink;
        c.clip_samples = self.clip_samples;
        c.scale_v_o_gqa = self.scale_v_o_gqa;
        Ok(qwen3_quant_awq::Awq::new(c)?)
    }
}

/// SmoothQuant's weight-activation settings. `Default`: W8A8 with α = 0.5 on the two RMSNorm
/// pairs; weights symmetric absmax per output channel, activations symmetric per token.
///
/// `smooth: false` is what the study's script measured (its `smooth_lm` is never called):
/// per-channel weights and per-token activations, no migration, no calibration.
///
/// ```
/// use qwen3_quant::SmoothQuantConfig;
/// let w4a4 = SmoothQuantConfig::default().with_weight_bits(4).with_act_bits(Some(4));
/// assert_eq!(w4a4.label(), "w4a4");
/// assert!(SmoothQuantConfig::default().with_alpha(1.5).transform().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct SmoothQuantConfig {
    /// Weight bits, 2..=8.
    pub weight_bits: u8,
    /// Activation bits of every decoder linear's input (`None`: weights only).
    pub act_bits: Option<u8>,
    /// Migration strength α in `[0, 1]`.
    pub alpha: f32,
    /// Smooth at all (off: the study's unsmoothed measurement).
    pub smooth: bool,
    /// Also smooth `o_proj`'s input into `v_proj`'s rows.
    pub smooth_o: bool,
    /// Also smooth `down_proj`'s input into `up_proj`'s rows.
    pub smooth_down: bool,
}

impl Default for SmoothQuantConfig {
    fn default() -> Self {
        SmoothQuantConfig {
            weight_bits: 8,
            act_bits: Some(8),
            alpha: 0.5,
            smooth: true,
            smooth_o: false,
            smooth_down: false,
        }
    }
}

impl SmoothQuantConfig {
    /// `w8a8`-style name.
    pub fn label(&self) -> String {
        match self.act_bits {
            Some(a) => format!("w{}a{a}", self.weight_bits),
            None => format!("w{}", self.weight_bits),
        }
    }

    /// The smoothing transform (`None` when `smooth` is off).
    ///
    /// # Errors
    /// α outside `[0, 1]`.
    pub fn transform(&self) -> Result<Option<qwen3_quant_smoothquant::SmoothQuant>> {
        if !self.smooth {
            return Ok(None);
        }
        let mut c = qwen3_quant_smoothquant::SmoothQuantConfig::with_alpha(self.alpha);
        c.smooth_o = self.smooth_o;
        c.smooth_down = self.smooth_down;
        Ok(Some(qwen3_quant_smoothquant::SmoothQuant::new(c)?))
    }

    /// The weight quantizer (symmetric absmax per output channel).
    ///
    /// # Errors
    /// Bits outside 2..=8.
    pub fn weight_quantizer(&self) -> Result<qwen3_quant_rtn::Rtn> {
        Ok(qwen3_quant_smoothquant::weight_quantizer(Bits::new(
            self.weight_bits,
        )?)?)
    }
}

// Builder-style setters, one per field: the configurations are `#[non_exhaustive]` (fields may
// be added), so outside this crate they are built as `Default::default()` plus `with_*` calls.
qwen3_quant_core::setters!(RtnConfig {
    bits: u8 => with_bits,
    group_size: Option<usize> => with_group_size,
    sym: bool => with_sym,
    mse_clip: bool => with_mse_clip,
});

qwen3_quant_core::setters!(GptqConfig {
    bits: u8 => with_bits,
    group_size: Option<usize> => with_group_size,
    sym: bool => with_sym,
    act_order: bool => with_act_order,
    true_sequential: bool => with_true_sequential,
    damp: f32 => with_damp,
    static_groups: bool => with_static_groups,
    mse: bool => with_mse,
    mse_hessian_weighted: bool => with_mse_hessian_weighted,
    asymmetric: Option<f32> => with_asymmetric,
    refine_passes: usize => with_refine_passes,
    refit_scales: usize => with_refit_scales,
    first_order: Option<f32> => with_first_order,
});

qwen3_quant_core::setters!(AwqConfig {
    bits: u8 => with_bits,
    group_size: Option<usize> => with_group_size,
    sym: bool => with_sym,
    grid: usize => with_grid,
    search_scales: bool => with_search_scales,
    clip: bool => with_clip,
    max_shrink: f32 => with_max_shrink,
    clip_samples: usize => with_clip_samples,
    scale_v_o_gqa: bool => with_scale_v_o_gqa,
});

qwen3_quant_core::setters!(SmoothQuantConfig {
    weight_bits: u8 => with_weight_bits,
    act_bits: Option<u8> => with_act_bits,
    alpha: f32 => with_alpha,
    smooth: bool => with_smooth,
    smooth_o: bool => with_smooth_o,
    smooth_down: bool => with_smooth_down,
});
