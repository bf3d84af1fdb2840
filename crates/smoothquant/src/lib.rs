//! SmoothQuant: migrating activation outliers into the weights, then weight-activation
//! quantization.
//!
//! Per producer/consumer pair, with `max|x_j|` the largest activation of input channel `j` over
//! the calibration set and `max|W_:,j|` the largest weight of that column over all consumers,
//! the migration factor is `s_j = max(max|x_j|^α / max|W_:,j|^(1−α), 1e-5)`. The producer (an
//! RMSNorm weight, or `v_proj`/`up_proj` rows) is divided by `s` and the consumers' columns
//! multiplied by `s`, exactly — the smoothed model computes the same function, but its
//! activations are flatter and its weights carry the outliers, which per-channel weight
//! quantization absorbs better than per-token activation quantization does.
//!
//! The pairs are the architecture's: `input_layernorm → q,k,v` and `post_attention_layernorm →
//! gate,up` (every expert's, and the router's columns, for MoE) always; optionally `v → o` (one
//! factor per value channel, shared by the query heads that read it under GQA) and `up → down`.
//! Weights are then quantized symmetric per output channel with absmax scales
//! ([`weight_quantizer`]); activations per token at run time (the model crate's activation
//! quantization).
//!
//! The study's own SmoothQuant code never applies smoothing to Qwen3 (`reference-methods.md`
//! §4.1): its figures are plain per-channel-weight / per-token-activation RTN. Leave the
//! transform out (the CLI's `--no-smooth`) to reproduce them.
//!
//! ```
//! use qwen3_quant_smoothquant::{weight_quantizer, SmoothQuant, SmoothQuantConfig};
//! use qwen3_quant_core::{Bits, LayerTransform, Quantizer};
//! let sq = SmoothQuant::new(SmoothQuantConfig::with_alpha(0.5))?;
//! let w8 = weight_quantizer(Bits::B8)?;
//! assert_eq!((sq.name(), w8.name()), ("smoothquant", "rtn"));
//! // Run with `qwen3_quant_calib::Pipeline::new(&w8).with_transforms(&[&sq])`, then quantize
//! // the model's activations per token.
//! # Ok::<(), qwen3_quant_core::MethodError>(())
//! ```

use qwen3_quant_core::{
    Bits, Error as CoreError, GroupSize, LayerContext, LayerTransform, LinearKind, MethodError,
    Propagation, QuantScheme, RangeConvention, ScalePair, ScaleProducer, TransformNeeds,
    TransformRecord,
};
use qwen3_quant_rtn::{Rtn, RtnConfig};

/// SmoothQuant's settings. `Default`: α = 0.5 on the two RMSNorm pairs (the algorithm's
/// default and the pairs it defines for Llama-like layers).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct SmoothQuantConfig {
    /// Migration strength α ∈ [0, 1]: the share of each channel's range (in log scale) that
    /// moves from the activations into the weights (α = 1 flattens the activations completely).
    pub alpha: f32,
    /// Also smooth `o_proj`'s input, folding into `v_proj`'s rows.
    pub smooth_o: bool,
    /// Also smooth `down_proj`'s input, folding into `up_proj`'s rows.
    pub smooth_down: bool,
}

qwen3_quant_core::setters!(SmoothQuantConfig {
    smooth_o: bool => with_smooth_o,
    smooth_down: bool => with_smooth_down,
});

impl Default for SmoothQuantConfig {
    fn default() -> Self {
        SmoothQuantConfig {
            alpha: 0.5,
            smooth_o: false,
            smooth_down: false,
        }
    }
}

impl SmoothQuantConfig {
    /// The default pairs with migration strength `alpha`.
    pub fn with_alpha(alpha: f32) -> Self {
        SmoothQuantConfig {
            alpha,
            ..SmoothQuantConfig::default()
        }
    }

    /// Checks α.
    ///
    /// # Errors
    /// [`MethodError::InvalidConfig`] for α outside `[0, 1]` or not finite.
    pub fn validate(&self) -> Result<(), MethodError> {
        if !(self.alpha.is_finite() && (0.0..=1.0).contains(&self.alpha)) {
            return Err(MethodError::InvalidConfig(CoreError::InvalidConfig {
                field: "alpha",
                reason: "must be in [0, 1]",
            }));
        }
        Ok(())
    }
}

/// The smoothing transform ([`LayerTransform`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmoothQuant {
    config: SmoothQuantConfig,
}

impl SmoothQuant {
    /// A validated transform.
    ///
    /// # Errors
    /// See [`SmoothQuantConfig::validate`].
    pub fn new(config: SmoothQuantConfig) -> Result<Self, MethodError> {
        config.validate()?;
        Ok(SmoothQuant { config })
    }

    /// The configuration.
    pub fn config(&self) -> &SmoothQuantConfig {
        &self.config
    }

    fn wants(&self, pair: &ScalePair) -> bool {
        match pair.producer {
            ScaleProducer::InputNorm | ScaleProducer::PostAttentionNorm => true,
            ScaleProducer::Rows(id) => match id.kind {
                LinearKind::V => self.config.smooth_o,
                LinearKind::Up => self.config.smooth_down,
                _ => false,
            },
            _ => false,
        }
    }
}

/// The weight quantizer of SmoothQuant's settings: symmetric, per output channel, absmax scale
/// `max(max|W_r|, 1e-5) / (2^(b−1) − 1)` (`quantize_weight_per_channel_absmax`).
///
/// # Errors
/// [`MethodError::InvalidConfig`] below 2 bits.
pub fn weight_quantizer(bits: Bits) -> Result<Rtn, MethodError> {
    let scheme = QuantScheme::new(bits, GroupSize::PerChannel, true, RangeConvention::AbsMax)?;
    Rtn::new(RtnConfig::new(scheme))
}

/// The migration factors of one pair: `s_j = max(a_j^α / w_j^(1−α), 1e-5)` with `a_j` the
/// channel's activation absmax and `w_j = max(max over consumer rows |W[:, j]|, 1e-5)`.
///
/// Guard (not in the reference): a channel that never activated (`a_j = 0`) keeps `s_j = 1`
/// instead of `1e-5`, which would multiply its RMSNorm weight by 1e5 for nothing.
///
/// ```
/// let s = qwen3_quant_smoothquant::migration_scales(&[4.0, 1.0, 0.0], &[1.0, 4.0, 2.0], 0.5);
/// assert_eq!(s, vec![2.0, 0.5, 1.0]);
/// ```
pub fn migration_scales(act_max: &[f32], weight_max: &[f32], alpha: f32) -> Vec<f32> {
    act_max
        .iter()
        .zip(weight_max)
        .map(|(&a, &w)| {
            if !(a.is_finite() && a > 0.0) {
                return 1.0;
            }
            let w = w.max(1e-5);
            (a.powf(alpha) / w.powf(1.0 - alpha)).max(1e-5)
        })
        .collect()
}

/// Per entry of `s`: the largest value over the columns mapped to it.
fn reduce_max(pair: &ScalePair, per_column: &[f32]) -> Vec<f32> {
    match &pair.column_map {
        None => per_column.to_vec(),
        Some(map) => {
            let mut out = vec![0.0f32; pair.channels];
            for (c, &i) in map.iter().enumerate() {
                if let Some(&v) = per_column.get(c) {
                    out[i as usize] = out[i as usize].max(v);
                }
            }
            out
        }
    }
}

impl LayerTransform for SmoothQuant {
    fn name(&self) -> &'static str {
        "smoothquant"
    }

    fn needs(&self) -> TransformNeeds {
        TransformNeeds {
            channel_stats: true,
            input_samples: None,
            block_losses: false,
        }
    }

    /// Full precision: activation ranges come from the unquantized model, as in SmoothQuant's
    /// `get_act_scales`.
    fn propagation(&self) -> Propagation {
        Propagation::FullPrecision
    }

    fn transform_layer(
        &self,
        ctx: &mut dyn LayerContext,
    ) -> Result<Vec<TransformRecord>, MethodError> {
        let mut records = Vec::new();
        for pair in ctx.scale_pairs() {
            if !self.wants(&pair) {
                continue;
            }
            let t0 = std::time::Instant::now();
            let mut rec = TransformRecord {
                layer: ctx.layer(),
                kind: "smooth",
                target: pair.label(),
                linears: pair.consumers.clone(),
                ratio: Some(self.config.alpha as f64),
                ..TransformRecord::default()
            };
            let Some(stats) = ctx.pair_stats(&pair).filter(|s| s.count > 0) else {
                rec.fallback = Some("no calibration tokens: not smoothed".into());
                records.push(rec);
                continue;
            };
            let act_max = reduce_max(&pair, &stats.abs_max);
            let cols = pair.consumer_columns();
            let mut w_col = vec![0.0f32; cols];
            for &id in &pair.consumers {
                let (w, _, inp) = ctx.weight(id)?;
                if inp != cols {
                    return Err(MethodError::InvalidShape {
                        id: Some(id),
                        what: "consumer columns",
                        expected: cols,
                        actual: inp,
                    });
                }
                for row in w.chunks_exact(inp.max(1)) {
                    w_col
                        .iter_mut()
                        .zip(row)
                        .for_each(|(m, v)| *m = m.max(v.abs()));
                }
            }
            let w_max = reduce_max(&pair, &w_col);
            let s = migration_scales(&act_max, &w_max, self.config.alpha);
            // The loss fields carry the activation range before and after: the largest
            // per-channel absmax over the median one (how peaked the activations are).
            rec.baseline_loss = peak_ratio(&act_max);
            let after: Vec<f32> = act_max.iter().zip(&s).map(|(a, f)| a / f).collect();
            rec.loss = peak_ratio(&after);
            ctx.fold_scale(&pair, &s)?;
            rec.seconds = t0.elapsed().as_secs_f64();
            records.push(rec);
        }
        Ok(records)
    }
}

/// `max / median` of the positive values (1 when there are none).
fn peak_ratio(v: &[f32]) -> f64 {
    let mut p: Vec<f32> = v.iter().copied().filter(|x| *x > 0.0).collect();
    if p.is_empty() {
        return 1.0;
    }
    p.sort_by(f32::total_cmp);
    (p[p.len() - 1] / p[p.len() / 2]) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_is_validated() {
        for a in [-0.1f32, 1.1, f32::NAN] {
            assert!(SmoothQuant::new(SmoothQuantConfig {
                alpha: a,
                ..Default::default()
            })
            .is_err());
        }
        assert!(SmoothQuant::new(SmoothQuantConfig {
            alpha: 1.0,
            ..Default::default()
        })
        .is_ok());
    }

    #[test]
    fn migration_follows_the_formula() {
        // α = 0.5: s = sqrt(a / w)
        let s = migration_scales(&[9.0, 1.0], &[1.0, 0.25], 0.5);
        assert_eq!(s, vec![3.0, 2.0]);
        // α = 1: s = a; α = 0: s = 1 / w
        assert_eq!(migration_scales(&[9.0], &[2.0], 1.0), vec![9.0]);
        assert_eq!(migration_scales(&[9.0], &[2.0], 0.0), vec![0.5]);
        // Zero weight column: clamped at 1e-5, no infinity.
        assert!(migration_scales(&[1.0], &[0.0], 0.5)[0].is_finite());
        // Lower clamp.
        assert_eq!(migration_scales(&[1e-12], &[1e6], 0.5), vec![1e-5]);
    }

    #[test]
    fn absmax_weights_use_the_symmetric_grid() {
        let q = weight_quantizer(Bits::B4).unwrap();
        let w = [0.7f32, -0.35, 0.1, 0.0];
        let ql = qwen3_quant_rtn::quantize_weight(&w, 1, 4, &q.config).unwrap();
        let d = ql.dequantize();
        let s = 0.7f32 / 7.0;
        // round(w/s)·s: 7, -3.5 → -4 (ties to even), 1, 0
        assert_eq!(d, vec![7.0 * s, -4.0 * s, 1.0 * s, 0.0]);
        assert!(weight_quantizer(Bits::new(1).unwrap()).is_err());
    }
}
