//! AWQ (activation-aware weight quantization) as a layer-level equivalent transform.
//!
//! For every producer/consumer pair of a decoder layer (`input_layernorm → q,k,v`,
//! `post_attention_layernorm → gate,up` — every expert's for MoE —, `up → down`, and `v → o`
//! where the shapes allow), AWQ searches a per-input-channel scale `s = mean|x|^r` over a grid
//! of ratios `r ∈ [0, 1)`, normalised by `sqrt(max(s)·min(s))`, and keeps the one whose
//! quantized consumers `Q(W·diag(s))/s` reproduce the full-precision output of the sub-block
//! that consumes the pair best (mean squared error). The scale is folded into the producer
//! exactly. It then searches a clipping range per output channel and group for `v`, `o`, `gate`,
//! `up` and `down` (not `q`/`k`), minimising the error of per-group partial dot products over a
//! subsample of the calibration tokens. The per-linear quantizer (RTN with the same scheme, or
//! GPTQ for the "AWQ then GPTQ" combination) runs afterwards in the same driver pass.
//!
//! This follows llm-awq as described in `docs/reference-methods.md` §3, computed in f32, with
//! guards the reference lacks: dead or tiny input channels keep a neutral scale, a candidate
//! with a non-finite loss is never chosen, and when no candidate is finite the scale falls back
//! to 1 and the log says so.
//!
//! ```
//! use qwen3_quant_awq::{Awq, AwqConfig};
//! use qwen3_quant_core::{LayerTransform, Quantizer};
//! let awq = Awq::new(AwqConfig::default())?; // 4-bit, g128, asymmetric, the paper's settings
//! let rtn = awq.quantizer()?; // the per-linear quantizer that shares AWQ's scheme
//! assert_eq!((awq.name(), rtn.name()), ("awq", "rtn"));
//! // Run both with `qwen3_quant_calib::Pipeline::new(&rtn).with_transforms(&[&awq])`.
//! # Ok::<(), qwen3_quant_core::MethodError>(())
//! ```

mod clip;
mod scale;

use qwen3_quant_core::{
    Bits, Error as CoreError, GroupSize, LayerContext, LayerTransform, MethodError, Propagation,
    QuantScheme, RangeConvention, TransformNeeds, TransformRecord,
};
use qwen3_quant_rtn::{Rtn, RtnConfig};

pub use clip::clip_search;
pub use scale::candidate_scales;

/// AWQ's settings. `Default` is the reference (llm-awq): 4-bit, group 128, asymmetric with
/// AWQ's min/max convention, a 20-point scale grid, clipping with max shrink 0.5 over 20 steps
/// on 512 subsampled tokens, and no `v → o` scaling under GQA.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct AwqConfig {
    /// The weight quantization the search optimises for (and the per-linear RTN applies).
    pub scheme: QuantScheme,
    /// Scale grid size: ratios `r = i / grid`, `i < grid`.
    pub grid: usize,
    /// Run the scale search (off: clipping only).
    pub search_scales: bool,
    /// Run the clip search.
    pub clip: bool,
    /// Clip grid size (`n_grid`): shrink steps of `1/clip_grid`.
    pub clip_grid: usize,
    /// Largest shrink tried; steps `0..(max_shrink · clip_grid)`.
    pub max_shrink: f32,
    /// Tokens subsampled for the clip search (`n_sample_token`).
    pub clip_samples: usize,
    /// Also scale `v → o` when `v`'s rows and `o`'s columns differ (GQA: one scale per value
    /// channel, shared by the query heads that read it). The reference skips it.
    pub scale_v_o_gqa: bool,
    /// Lower clamp of `mean|x|^r` before normalisation (1e-4 in the reference).
    pub min_scale: f32,
}

qwen3_quant_core::setters!(AwqConfig {
    grid: usize => with_grid,
    search_scales: bool => with_search_scales,
    clip: bool => with_clip,
    clip_grid: usize => with_clip_grid,
    max_shrink: f32 => with_max_shrink,
    clip_samples: usize => with_clip_samples,
    scale_v_o_gqa: bool => with_scale_v_o_gqa,
    min_scale: f32 => with_min_scale,
});

impl Default for AwqConfig {
    fn default() -> Self {
        AwqConfig {
            scheme: QuantScheme::new(
                Bits::B4,
                GroupSize::Group(std::num::NonZeroUsize::new(128).expect("nonzero")),
                false,
                RangeConvention::Awq,
            )
            .expect("valid default scheme"),
            grid: 20,
            search_scales: true,
            clip: true,
            clip_grid: 20,
            max_shrink: 0.5,
            clip_samples: 512,
            scale_v_o_gqa: false,
            min_scale: 1e-4,
        }
    }
}

impl AwqConfig {
    /// The default search with another weight scheme (bits, grouping, symmetry).
    pub fn with_scheme(scheme: QuantScheme) -> Self {
        AwqConfig {
            scheme,
            ..AwqConfig::default()
        }
    }

    /// Checks the search parameters.
    ///
    /// # Errors
    /// [`MethodError::InvalidConfig`] for an empty grid, a shrink outside `[0, 1)`, no clip
    /// samples, or a non-positive `min_scale`.
    pub fn validate(&self) -> Result<(), MethodError> {
        let bad = |field, reason| {
            Err(MethodError::InvalidConfig(CoreError::InvalidConfig {
                field,
                reason,
            }))
        };
        if self.grid == 0 || self.clip_grid == 0 {
            return bad("grid", "must be positive");
        }
        if !(self.max_shrink >= 0.0 && self.max_shrink < 1.0) {
            return bad("max_shrink", "must be in [0, 1)");
        }
        if self.clip_samples == 0 {
            return bad("clip_samples", "must be positive");
        }
        if !(self.min_scale.is_finite() && self.min_scale > 0.0) {
            return bad("min_scale", "must be positive and finite");
        }
        Ok(())
    }
}

/// The AWQ transform ([`LayerTransform`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Awq {
    config: AwqConfig,
}

impl Awq {
    /// A validated AWQ transform.
    ///
    /// # Errors
    /// See [`AwqConfig::validate`].
    pub fn new(config: AwqConfig) -> Result<Self, MethodError> {
        config.validate()?;
        Ok(Awq { config })
    }

    /// The configuration.
    pub fn config(&self) -> &AwqConfig {
        &self.config
    }

    /// The per-linear quantizer AWQ's search assumes: RTN with the same scheme.
    ///
    /// # Errors
    /// Never for a validated config (kept fallible for future schemes).
    pub fn quantizer(&self) -> Result<Rtn, MethodError> {
        Rtn::new(RtnConfig::new(self.config.scheme))
    }
}

impl LayerTransform for Awq {
    fn name(&self) -> &'static str {
        "awq"
    }

    fn needs(&self) -> TransformNeeds {
        TransformNeeds {
            channel_stats: true,
            input_samples: self.config.clip.then_some(self.config.clip_samples),
            block_losses: self.config.search_scales,
        }
    }

    /// Full precision, as llm-awq (`inps = layer(inps)` before scaling and clipping).
    fn propagation(&self) -> Propagation {
        Propagation::FullPrecision
    }

    fn transform_layer(
        &self,
        ctx: &mut dyn LayerContext,
    ) -> Result<Vec<TransformRecord>, MethodError> {
        let mut records = Vec::new();
        if self.config.search_scales {
            let pairs: Vec<_> = ctx
                .scale_pairs()
                .into_iter()
                .filter(|p| p.column_map.is_none() || self.config.scale_v_o_gqa)
                .collect();
            records.extend(scale::search_pairs(ctx, &pairs, &self.config)?);
        }
        if self.config.clip {
            for id in ctx.linear_ids() {
                if matches!(
                    id.kind,
                    qwen3_quant_core::LinearKind::Q | qwen3_quant_core::LinearKind::K
                ) {
                    continue;
                }
                records.push(clip::clip_linear(ctx, id, &self.config)?);
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests;
