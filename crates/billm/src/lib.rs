//! BiLLM (Huang et al., 2024): residual binarization of weights with Hessian-based salient
//! columns, about 1.1 bits per weight by the method's own count, following the paper's reference
//! code (`BiLLM/bigptq.py`, `binary.py`, `utils/{structure,autosearch,mask}.py`; reference
//! methods §5).
//!
//! Per linear, with the input Hessian `H` (collected in one full-precision pass over a decoder
//! layer; the quantized layer then produces the next layer's inputs):
//! 1. `U`, the upper Cholesky factor of `(H + damp·I)⁻¹` (f64, faer), with GPTQ's relative
//!    damping and automatic retries; dead columns are zeroed.
//! 2. Per block of 128 columns: saliency `S = w²/d²` (`d = diag U`); the top `k` columns by
//!    `Σ|S|` are salient, `k ∈ 1..49` minimising the order-2 reconstruction error; the other
//!    weights are split at one of 81 quantiles (0.10–0.90, numpy linear interpolation) of `|S|`
//!    into a sparse and a concentrated group; salient columns get an order-2 residual
//!    binarization, each group an order-1 one, each with a per-row mean and scale.
//! 3. GPTQ-style error feedback between blocks: `W[:, end:] -= (W − Q)/d · U[block, end:]`.
//!
//! By default the reference's quirks are reproduced: the searches work on `S` rather than on
//! `W`, the split quantiles include the zeros at salient positions, and there is no feedback
//! inside a block. [`BillmConfig`] has one switch per fix.
//!
//! **Bits.** [`qwen3_quant_core::BinaryLinear::reference_bits`] is the reference's figure
//! (`1 +` the salient fraction of each matrix's *last* block; [`reference_bits`] averages it over
//! a model as `run.py` does), [`qwen3_quant_core::BinaryLinear::bits_per_weight`] the true
//! storage of the packed layout (2 bits per weight, the salient map, and an 8-entry int8 table
//! with a bf16 scale per (row, block): about 2.63). The (row, block) values are rounded to that
//! table inside the method, so the error feedback sees the stored weights and fake quantization
//! equals packed inference bit for bit.
//!
//! ```
//! use qwen3_quant_core::{Hessian, LinearId, LinearInput, LinearKind, LinearStats, Quantizer};
//! use qwen3_quant_billm::{Billm, BillmConfig};
//!
//! let (out, inp, tokens) = (8, 128, 256);
//! let w: Vec<f32> = (0..out * inp).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
//! let x: Vec<f32> = (0..tokens * inp).map(|i| ((i * 53 % 97) as f32 - 48.0) / 50.0).collect();
//! let mut h = Hessian::new(inp);
//! h.accumulate(&x, tokens)?;
//! let stats = LinearStats { hessian: Some(h), tokens, ..Default::default() };
//! let billm = Billm::new(BillmConfig::default())?;
//! let id = LinearId::new(0, LinearKind::Q);
//! let outcome = billm.quantize_linear(
//!     LinearInput { id, weight: &w, out_features: out, in_features: inp },
//!     &stats,
//! )?;
//! let b = outcome.linear.as_binary().unwrap();
//! assert_eq!(b.dequantize().len(), out * inp);
//! assert!(b.reference_bits() > 1.0 && b.reference_bits() < 1.4);
//! assert!(b.bits_per_weight() > 2.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]

mod config;
mod hessian;
mod quantile;
mod quantize;
mod residual;
mod search;

pub use config::{BillmConfig, SalientMetric};
pub use quantize::{binarize_weight, BillmOutput};

use qwen3_quant_core::{
    LinearInput, LinearStats, MethodError, Propagation, QuantOutcome, QuantizedWeight, Quantizer,
    StatsRequest,
};

/// `Result` of this crate.
pub type Result<T> = std::result::Result<T, MethodError>;

/// The BiLLM method as a [`Quantizer`]: needs the input Hessian, collects all seven linears of a
/// layer in one full-precision pass (no true-sequential) and propagates the quantized outputs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Billm {
    config: BillmConfig,
}

impl Billm {
    /// A validated quantizer.
    ///
    /// # Errors
    /// See [`BillmConfig::validate`].
    pub fn new(config: BillmConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &BillmConfig {
        &self.config
    }
}

impl Quantizer for Billm {
    fn name(&self) -> &'static str {
        "billm"
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
        false
    }
    /// Runs [`binarize_weight`] with `stats.hessian` normalised as the reference
    /// ([`qwen3_quant_core::Hessian::scaled`], `2/N_seq · ΣXᵀX`, which only affects `loss`).
    fn quantize_linear(&self, input: LinearInput<'_>, stats: &LinearStats) -> Result<QuantOutcome> {
        let id = input.id;
        let h = qwen3_quant_core::method::required_hessian(stats, &input)?;
        let out = binarize_weight(
            input.weight,
            input.out_features,
            input.in_features,
            &h.scaled(),
            &self.config,
        )
        .map_err(|e| e.with_id(id))?;
        Ok(QuantOutcome {
            linear: out.linear.into(),
            loss: out.loss,
            damp: out.damp,
        })
    }
}

/// The model-level bit figure of the reference `run.py`: `Σ numel · reference_bits / Σ numel`
/// over the binary weights (`1 +` each matrix's last-block salient fraction, weighted by its
/// size); `None` when there is no binary weight.
///
/// ```
/// use qwen3_quant_billm::reference_bits;
/// assert_eq!(reference_bits(&[]), None);
/// ```
pub fn reference_bits<'a>(weights: impl IntoIterator<Item = &'a QuantizedWeight>) -> Option<f64> {
    let (mut bits, mut n) = (0f64, 0usize);
    for w in weights {
        if let Some(b) = w.reference_bits() {
            let numel = w.out_features() * w.in_features();
            bits += b * numel as f64;
            n += numel;
        }
    }
    (n > 0).then(|| bits / n as f64)
}

#[cfg(test)]
mod tests;
