//! One weight matrix at a time, with `ndarray` in and out: for numerical code that is not a
//! whole model.

use ndarray::{Array2, ArrayView2};
use qwen3_quant_core::{
    Hessian, LinearId, LinearInput, LinearKind, LinearStats, QuantizedWeight, Quantizer,
};

use crate::config::{GptqConfig, RtnConfig};
use crate::error::{Error, Result};

/// A quantized weight matrix `[out, in]`.
///
/// ```
/// use qwen3_quant::{ndarray::Array2, quantize_weight, RtnConfig};
/// let w = Array2::from_shape_fn((4, 256), |(r, c)| ((r * 256 + c) as f32 * 0.37).sin());
/// let q = quantize_weight(w.view(), &RtnConfig::default().with_bits(8))?;
/// assert_eq!(q.dim(), (4, 256));
/// let err = (&q.dequantize() - &w).iter().fold(0f32, |m, e| m.max(e.abs()));
/// assert!(err < 2.0 / 255.0); // half a step of an 8-bit grid over [-1, 1]
/// assert!(q.bits_per_weight() > 8.0);
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    weight: QuantizedWeight,
    loss: f64,
}

impl QuantizedMatrix {
    /// `(out, in)`.
    pub fn dim(&self) -> (usize, usize) {
        (self.weight.out_features(), self.weight.in_features())
    }

    /// The dequantized values `[out, in]`.
    pub fn dequantize(&self) -> Array2<f32> {
        Array2::from_shape_vec(self.dim(), self.weight.dequantize())
            .expect("dequantize returns out x in values")
    }

    /// Storage bits per weight, codes and metadata included.
    pub fn bits_per_weight(&self) -> f64 {
        self.weight.bits_per_weight()
    }

    /// The method's loss (RTN: `Σ (w − q)²`; GPTQ: `Σ (w − q)² / d² / 2`).
    pub fn loss(&self) -> f64 {
        self.loss
    }

    /// The codes, scales and zeros (or BiLLM's binary weights) of the core crate.
    pub fn weight(&self) -> &QuantizedWeight {
        &self.weight
    }
}

fn run(
    method: &dyn Quantizer,
    weight: ArrayView2<'_, f32>,
    stats: &LinearStats,
) -> Result<QuantizedMatrix> {
    let (out, inp) = weight.dim();
    let w: Vec<f32> = weight.iter().copied().collect();
    let outcome = method.quantize_linear(
        LinearInput {
            id: LinearId::new(0, LinearKind::Q),
            weight: &w,
            out_features: out,
            in_features: inp,
        },
        stats,
    )?;
    Ok(QuantizedMatrix {
        weight: outcome.linear,
        loss: outcome.loss,
    })
}

/// Round-to-nearest quantization of one matrix `[out, in]`.
///
/// # Errors
/// Non-finite weights, impossible bits or a group size that does not divide the columns.
pub fn quantize_weight(weight: ArrayView2<'_, f32>, config: &RtnConfig) -> Result<QuantizedMatrix> {
    run(&config.method()?, weight, &LinearStats::default())
}

/// GPTQ on one matrix `[out, in]`, with the Hessian of calibration inputs `[tokens, in]` (one
/// sequence per call of `inputs`; pass several views for several sequences).
///
/// ```
/// use qwen3_quant::{gptq_weight, ndarray::Array2, quantize_weight, GptqConfig, RtnConfig};
/// let (out, inp, tokens) = (16, 128, 512);
/// let w = Array2::from_shape_fn((out, inp), |(r, c)| ((r * inp + c) as f32 * 0.61).sin());
/// // Inputs with a few loud channels, as in real activations.
/// let x = Array2::from_shape_fn((tokens, inp), |(t, c)| {
///     let loud = if c % 32 == 0 { 20.0 } else { 1.0 };
///     loud * ((t * 7 + c * 13) as f32 * 0.11).cos()
/// });
/// let g = gptq_weight(w.view(), &[x.view()], &GptqConfig::default().with_bits(3))?;
/// let r = quantize_weight(w.view(), &RtnConfig::default().with_bits(3))?;
/// // GPTQ minimises the output error ‖X·(W − Q)ᵀ‖, which is what matters downstream.
/// let out_err = |q: &qwen3_quant::QuantizedMatrix| (x.dot(&(&q.dequantize() - &w).t())).mapv(|e| e * e).sum();
/// assert!(out_err(&g) < out_err(&r));
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
///
/// # Errors
/// Inputs whose width is not the weight's, non-finite values, impossible settings.
pub fn gptq_weight(
    weight: ArrayView2<'_, f32>,
    inputs: &[ArrayView2<'_, f32>],
    config: &GptqConfig,
) -> Result<QuantizedMatrix> {
    let inp = weight.ncols();
    let mut h = Hessian::new(inp);
    let mut tokens = 0;
    for x in inputs {
        if x.ncols() != inp {
            return Err(Error::invalid(format!(
                "calibration inputs have {} columns, the weight {inp}",
                x.ncols()
            )));
        }
        let flat: Vec<f32> = x.iter().copied().collect();
        h.accumulate(&flat, x.nrows())?;
        tokens += x.nrows();
    }
    let stats = LinearStats {
        hessian: Some(h),
        channels: None,
        cross: None,
        tokens,
    };
    run(&config.method()?, weight, &stats)
}
