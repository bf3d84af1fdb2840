//! Quantization vocabulary shared by every PTQ method of `qwen3-quant`: schemes, quantized
//! linears, statistics types and the [`method::Quantizer`] trait.
//!
//! Conventions:
//! - weights are `[out_features, in_features]` row-major f32, as in `nn.Linear`;
//! - all rounding is half-to-even ([`round_half_even`], `torch.round` semantics);
//! - [`find_params`] reproduces the reference quantizers' `(scale, zero)` formulas in f32
//!   (GPTQ's `Quantizer` and llm-awq's `pseudo_quantize_tensor`, see [`RangeConvention`]).
//!
//! ```
//! use qwen3_quant_core::{find_params, fake_quantize, Bits, GroupSize, QuantScheme, RangeConvention};
//! let scheme = QuantScheme::new(Bits::B4, GroupSize::PerChannel, false, RangeConvention::Gptq)?;
//! let row = [-1.0f32, 0.25, 2.0];
//! let p = find_params(&row, &scheme);
//! assert_eq!(p.scale, 3.0 / 15.0);
//! assert_eq!(p.zero, 5.0);
//! assert_eq!(fake_quantize(2.0, p, scheme.maxq()), 2.0);
//! # Ok::<(), qwen3_quant_core::Error>(())
//! ```

pub mod asymmetric;
mod binary;
pub mod error;
pub mod id;
pub mod linalg;
pub mod linear;
pub mod method;
pub mod norm_refit;
mod pack;
pub mod scheme;
mod setters;
pub mod stats;
pub mod transform;

pub use binary::{BinaryLinear, PackedWeight, QuantizedWeight};
pub use error::{Error, Result};
pub use id::{LinearId, LinearKind};
pub use linear::{canonical_g_idx, QuantizedLinear};
pub use method::{LinearInput, MethodError, Propagation, QuantOutcome, Quantizer, StatsRequest};
pub use qwen3_quant_kernels::{BinaryParams, BinaryTable};
pub use scheme::{
    base_range, dequantize_code, fake_quantize, find_params, find_params_mse, min_max,
    params_from_range, quantize_code, round_half_even, Bits, GroupSize, MseSearch, QuantParams,
    QuantScheme, RangeConvention,
};
pub use stats::{ChannelStats, CrossCovariance, Hessian, LinearStats};
pub use transform::{
    CandidateFn, CandidateWeights, LayerContext, LayerTransform, LossRequest, ResidualRotation,
    ScalePair, ScaleProducer, ScoredBlock, TransformNeeds, TransformRecord,
};
