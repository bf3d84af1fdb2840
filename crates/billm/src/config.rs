//! [`BillmConfig`]: the reference `run.py` / `BRAGPTQ.fasterquant` knobs and the fidelity fixes,
//! validated once.

use qwen3_quant_core::{Error as CoreError, MethodError};

/// How salient columns are ranked and what the structural searches work on
/// (`--salient_metric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SalientMetric {
    /// `S = w² / d²` with `d` the diagonal of the upper Cholesky factor of `H⁻¹` (GPTQ's
    /// per-column error scale): the reference command's choice.
    #[default]
    Hessian,
    /// `S = w`: plain magnitude.
    Magnitude,
}

/// BiLLM configuration. `Default` is the reference command
/// (`run.py MODEL c4 braq --blocksize 128 --salient_metric hessian`), quirks included; the three
/// `*` booleans below are the fixes, each off by default.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BillmConfig {
    /// Columns per block (`--blocksize`, default 128): the span of one structural search, of one
    /// set of means and scales per row, and of one GPTQ error-feedback step. A positive multiple
    /// of 64 (the packed layout's chunk).
    pub block_size: usize,
    /// Salient metric (`--salient_metric`, default [`SalientMetric::Hessian`]).
    pub salient_metric: SalientMetric,
    /// Relative damping `percdamp` (default 0.01): `damp = percdamp · mean(diag H)`.
    pub percdamp: f32,
    /// How many times the damping is multiplied by 10 when the Cholesky factorisation fails
    /// (default 4; not in the reference, which has no retry).
    pub max_damp_retries: u32,
    /// The salient-column search limit `up_lim` (default 50): the counts `1 .. up_lim − 1` of
    /// top-ranked columns are tried (`range(1, up_lim)`), capped below the block width.
    pub salient_column_limit: usize,
    /// Lowest quantile of the non-salient split search (default 0.10).
    pub split_quantile_low: f64,
    /// Highest quantile of the split search (default 0.90).
    pub split_quantile_high: f64,
    /// Quantiles tried, evenly spaced from low to high (default 81, `torch.linspace(0.1, 0.9, 81)`).
    pub split_quantile_points: usize,
    /// GPTQ-style error feedback between blocks (default true; the reference's
    /// `disable_gptq = False`). Off: every block is binarized from the original weights.
    pub error_feedback: bool,
    /// *Fix.* Run both structural searches on the weights `W` (the reconstruction error of `W`,
    /// and a split of the non-salient weights by `|w|`, the paper's bell-shaped split) instead of
    /// on the saliency matrix `S` (the reference's quirk: for the Hessian metric the errors are
    /// those of binarizing `w²/d²`, and the split is a threshold on `w²/d²`). Salient columns
    /// are still ranked by `Σ|S|`. No effect with [`SalientMetric::Magnitude`], where `S = W`.
    pub search_on_weights: bool,
    /// *Fix.* Take the split candidates as quantiles of the non-salient entries only. The
    /// reference takes them over the whole block with the salient entries zeroed, so the zeros
    /// shift every quantile down (by `k/128` of the range for `k` salient columns).
    pub quantiles_over_non_salient: bool,
    /// *Fix.* GPTQ's error feedback inside each block too: columns are binarized one at a time
    /// (signs chosen on the updated weight, with the block's masks, means and scales fixed at the
    /// block start) and each column's error is spread over the rest of the block. The reference
    /// binarizes the whole block at once from its weights at the block start. Needs
    /// `error_feedback`.
    pub intra_block_feedback: bool,
}

qwen3_quant_core::setters!(BillmConfig {
    block_size: usize => with_block_size,
    salient_metric: SalientMetric => with_salient_metric,
    percdamp: f32 => with_percdamp,
    max_damp_retries: u32 => with_max_damp_retries,
    salient_column_limit: usize => with_salient_column_limit,
    split_quantile_low: f64 => with_split_quantile_low,
    split_quantile_high: f64 => with_split_quantile_high,
    split_quantile_points: usize => with_split_quantile_points,
    error_feedback: bool => with_error_feedback,
    search_on_weights: bool => with_search_on_weights,
    quantiles_over_non_salient: bool => with_quantiles_over_non_salient,
    intra_block_feedback: bool => with_intra_block_feedback,
});

impl Default for BillmConfig {
    fn default() -> Self {
        Self {
            block_size: 128,
            salient_metric: SalientMetric::Hessian,
            percdamp: 0.01,
            max_damp_retries: 4,
            salient_column_limit: 50,
            split_quantile_low: 0.10,
            split_quantile_high: 0.90,
            split_quantile_points: 81,
            error_feedback: true,
            search_on_weights: false,
            quantiles_over_non_salient: false,
            intra_block_feedback: false,
        }
    }
}

impl BillmConfig {
    /// The reference configuration with all three fidelity fixes on.
    pub fn all_fixes() -> Self {
        Self {
            search_on_weights: true,
            quantiles_over_non_salient: true,
            intra_block_feedback: true,
            ..Self::default()
        }
    }

    /// The split quantiles, `points` values evenly spaced over `[low, high]`.
    pub fn split_quantiles(&self) -> Vec<f64> {
        let n = self.split_quantile_points;
        let (lo, hi) = (self.split_quantile_low, self.split_quantile_high);
        (0..n)
            .map(|i| {
                if n == 1 {
                    lo
                } else {
                    lo + (hi - lo) * i as f64 / (n - 1) as f64
                }
            })
            .collect()
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// [`MethodError::InvalidConfig`] for a block size that is not a positive multiple of 64, a
    /// negative or non-finite `percdamp`, a salient limit below 2, quantiles outside
    /// `0 ≤ low ≤ high ≤ 1` or no quantile points, or intra-block feedback without error
    /// feedback.
    pub fn validate(&self) -> Result<(), MethodError> {
        let bad = |field, reason| {
            Err(MethodError::InvalidConfig(CoreError::InvalidConfig {
                field,
                reason,
            }))
        };
        if self.block_size == 0 || self.block_size % 64 != 0 {
            return bad(
                "block_size",
                "must be a positive multiple of 64 (the packed binary layout's chunk)",
            );
        }
        if !(self.percdamp.is_finite() && self.percdamp >= 0.0) {
            return bad("percdamp", "must be finite and >= 0");
        }
        if self.salient_column_limit < 2 {
            return bad(
                "salient_column_limit",
                "must be at least 2 (counts 1 .. limit - 1 are searched)",
            );
        }
        let (lo, hi) = (self.split_quantile_low, self.split_quantile_high);
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi && hi <= 1.0) {
            return bad(
                "split_quantile_low/high",
                "must satisfy 0 <= low <= high <= 1",
            );
        }
        if self.split_quantile_points == 0 {
            return bad("split_quantile_points", "must be positive");
        }
        if self.intra_block_feedback && !self.error_feedback {
            return bad(
                "intra_block_feedback",
                "needs error_feedback (there is no error to feed back otherwise)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_reference_and_validates() {
        let c = BillmConfig::default();
        assert_eq!(c.block_size, 128);
        assert_eq!(c.salient_metric, SalientMetric::Hessian);
        assert_eq!(c.salient_column_limit, 50);
        assert!(!(c.search_on_weights || c.quantiles_over_non_salient || c.intra_block_feedback));
        c.validate().unwrap();
        BillmConfig::all_fixes().validate().unwrap();
        let q = c.split_quantiles();
        assert_eq!(q.len(), 81);
        assert!((q[0] - 0.10).abs() < 1e-15 && (q[80] - 0.90).abs() < 1e-15);
        assert!((q[40] - 0.50).abs() < 1e-15 && (q[1] - 0.11).abs() < 1e-15);
    }

    #[test]
    fn bad_values_are_typed_errors() {
        let bad = [
            BillmConfig::default().with_block_size(0),
            BillmConfig::default().with_block_size(100),
            BillmConfig {
                percdamp: f32::NAN,
                ..BillmConfig::default()
            },
            BillmConfig {
                salient_column_limit: 1,
                ..BillmConfig::default()
            },
            BillmConfig {
                split_quantile_low: 0.95,
                ..BillmConfig::default()
            },
            BillmConfig {
                split_quantile_points: 0,
                ..BillmConfig::default()
            },
            BillmConfig {
                error_feedback: false,
                intra_block_feedback: true,
                ..BillmConfig::default()
            },
        ];
        for c in bad {
            assert!(
                matches!(c.validate(), Err(MethodError::InvalidConfig(_))),
                "{c:?}"
            );
        }
        BillmConfig::default()
            .with_block_size(256)
            .validate()
            .unwrap();
    }
}
