//! Round-to-nearest (RTN) weight quantization: per-channel, per-group or per-tensor,
//! symmetric or asymmetric, with either reference range convention
//! ([`RangeConvention::Gptq`]: `qwen.py --nearest`; [`RangeConvention::Awq`]: llm-awq's
//! `pseudo_quantize_tensor`), 1–8 bits, and GPTQ's optional MSE clip search.
//!
//! Note: the reference `qwen.py --nearest` path ignores `--groupsize` (it is always per-channel);
//! here the group size in the scheme is honoured, so pick [`GroupSize::PerChannel`] to reproduce
//! that path and `Group(128)` + [`RangeConvention::Awq`] for llm-awq's g128 RTN.
//!
//! ```
//! use qwen3_quant_core::{Bits, GroupSize, QuantScheme, RangeConvention};
//! use qwen3_quant_rtn::{quantize_weight, RtnConfig};
//!
//! let (out, inp) = (4, 64);
//! let w: Vec<f32> = (0..out * inp).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
//! let scheme = QuantScheme::new(Bits::B4, GroupSize::group(32)?, false, RangeConvention::Awq)?;
//! let q = quantize_weight(&w, out, inp, &RtnConfig::new(scheme))?;
//! let deq = q.dequantize();
//! let max_err = w.iter().zip(&deq).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
//! assert!(max_err <= 1.0 / 15.0 / 2.0 + 1e-6); // half a step (range <= 1.0 per group)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use rayon::prelude::*;

use qwen3_quant_core::method::check_weight;
use qwen3_quant_core::{
    base_range, canonical_g_idx, params_from_range, quantize_code, GroupSize, LinearInput,
    LinearStats, MethodError, Propagation, QuantOutcome, QuantParams, QuantScheme, QuantizedLinear,
    Quantizer, RangeConvention, StatsRequest,
};

pub use qwen3_quant_core::{Bits, Error as CoreError};

/// `Result` of this crate.
pub type Result<T> = std::result::Result<T, MethodError>;

pub use qwen3_quant_core::MseSearch;

/// RTN configuration. `Default` is the reference `qwen.py --nearest`: 4-bit, per-channel,
/// asymmetric, GPTQ range convention, no MSE search.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RtnConfig {
    /// Bits, grouping, symmetry and range convention (validated on construction).
    pub scheme: QuantScheme,
    /// Optional MSE clip search.
    pub mse: Option<MseSearch>,
}

qwen3_quant_core::setters!(RtnConfig {
    scheme: QuantScheme => with_scheme,
});

impl Default for RtnConfig {
    fn default() -> Self {
        Self {
            scheme: QuantScheme::new(
                Bits::B4,
                GroupSize::PerChannel,
                false,
                RangeConvention::Gptq,
            )
            .expect("valid default scheme"),
            mse: None,
        }
    }
}

impl RtnConfig {
    /// A config without MSE search.
    pub fn new(scheme: QuantScheme) -> Self {
        Self { scheme, mse: None }
    }

    /// Enables the MSE clip search.
    pub fn with_mse(mut self, mse: MseSearch) -> Self {
        self.mse = Some(mse);
        self
    }

    /// Checks the MSE parameters (the scheme is valid by construction).
    ///
    /// # Errors
    /// [`MethodError::InvalidConfig`] for `grid == 0`, `max_shrink` outside `(0, 1]` or a
    /// non-positive / non-finite `norm`.
    pub fn validate(&self) -> Result<()> {
        match &self.mse {
            Some(m) => m.validate().map_err(MethodError::InvalidConfig),
            None => Ok(()),
        }
    }
}

/// `(scale, zero)` for one group: the scheme's convention, then the optional MSE search.
pub fn group_params(values: &[f32], scheme: &QuantScheme, mse: Option<&MseSearch>) -> QuantParams {
    match mse {
        None => {
            let (xmin, xmax) = base_range(values, scheme);
            params_from_range(xmin, xmax, scheme)
        }
        Some(m) => qwen3_quant_core::find_params_mse(values, scheme, None, m),
    }
}

/// Quantizes a `[out_features, in_features]` row-major weight with RTN.
///
/// Rows are processed in parallel (rayon). Per-tensor schemes compute one pair over the whole
/// tensor (with the MSE search over all values, if enabled) and store it for every row.
///
/// # Errors
/// [`MethodError::InvalidShape`] (wrong length or an empty dimension), [`MethodError::NonFinite`]
/// (NaN/Inf weight; `id` is `None`), [`MethodError::InvalidConfig`].
pub fn quantize_weight(
    w: &[f32],
    out_features: usize,
    in_features: usize,
    config: &RtnConfig,
) -> Result<QuantizedLinear> {
    config.validate()?;
    check_weight(w, out_features, in_features)?;
    if out_features == 0 || in_features == 0 {
        return Err(MethodError::InvalidShape {
            id: None,
            what: "weight (empty dimension)",
            expected: 1,
            actual: 0,
        });
    }
    let scheme = &config.scheme;
    let maxq = scheme.maxq();
    let group = scheme.group();
    let gs = match group {
        GroupSize::Group(g) => g.get().min(in_features),
        _ => in_features,
    };
    let n_groups = group.n_groups(in_features);
    let tensor_params =
        (group == GroupSize::PerTensor).then(|| group_params(w, scheme, config.mse.as_ref()));

    let mut codes = vec![0u8; out_features * in_features];
    let row_params: Vec<Vec<QuantParams>> = codes
        .par_chunks_mut(in_features)
        .zip(w.par_chunks(in_features))
        .map(|(crow, wrow)| {
            let mut ps = Vec::with_capacity(n_groups);
            for (cg, wg) in crow.chunks_mut(gs).zip(wrow.chunks(gs)) {
                let p =
                    tensor_params.unwrap_or_else(|| group_params(wg, scheme, config.mse.as_ref()));
                for (c, &x) in cg.iter_mut().zip(wg) {
                    *c = quantize_code(x, p, maxq);
                }
                ps.push(p);
            }
            ps
        })
        .collect();

    let mut scales = vec![0f32; n_groups * out_features];
    let mut zeros = vec![0u8; n_groups * out_features];
    for (r, ps) in row_params.iter().enumerate() {
        for (g, p) in ps.iter().enumerate() {
            scales[g * out_features + r] = p.scale;
            zeros[g * out_features + r] = p.zero_code();
        }
    }
    let gsize = group.as_option();
    let g_idx = canonical_g_idx(in_features, gsize, None);
    Ok(QuantizedLinear::new(
        out_features,
        in_features,
        scheme.bits(),
        gsize,
        scheme.sym(),
        codes,
        scales,
        zeros,
        g_idx,
        None,
    )?)
}

/// The RTN method as a [`Quantizer`]: needs no statistics, propagates quantized outputs, and is
/// not true-sequential (it does not look at activations at all).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rtn {
    /// Configuration.
    pub config: RtnConfig,
}

impl Rtn {
    /// A quantizer with this configuration.
    ///
    /// # Errors
    /// See [`RtnConfig::validate`].
    pub fn new(config: RtnConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }
}

impl Quantizer for Rtn {
    fn name(&self) -> &'static str {
        "rtn"
    }
    fn stats_required(&self) -> StatsRequest {
        StatsRequest::default()
    }
    fn propagation(&self) -> Propagation {
        Propagation::Quantized
    }
    fn true_sequential(&self) -> bool {
        false
    }
    /// Quantizes with [`quantize_weight`]; `loss` is `Σ (w − q)²` over the weight, `damp` is 0.
    fn quantize_linear(
        &self,
        input: LinearInput<'_>,
        _stats: &LinearStats,
    ) -> Result<QuantOutcome> {
        let linear = quantize_weight(
            input.weight,
            input.out_features,
            input.in_features,
            &self.config,
        )
        .map_err(|e| e.with_id(input.id))?;
        let loss = linear.squared_error(input.weight)?;
        Ok(QuantOutcome {
            linear: linear.into(),
            loss,
            damp: 0.0,
        })
    }
}

#[cfg(test)]
mod tests;
