//! Linear layers whose weight representation can be swapped without touching the rest of the model.

use qwen3_quant_kernels::int8::Int8Matrix;
use qwen3_quant_kernels::{dense, BinaryMatrix, PackedMatrix};

use crate::act_quant::ActQuantizer;
use crate::error::{ModelError, Result};

/// The weight of one `nn.Linear` (no bias in Qwen3): `y = x · Wᵀ`, `W` `[out, in]`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum LinearWeight {
    /// Dense f32 weights `[out, in]` row-major (full precision, or fake-quantized values).
    Dense {
        /// Output features.
        out_features: usize,
        /// Input features.
        in_features: usize,
        /// Row-major weights.
        weight: Vec<f32>,
    },
    /// Packed low-bit codes computed on directly by the packed kernels.
    Packed(PackedMatrix),
    /// Packed BiLLM binary weights computed on directly by the binary kernels.
    Binary(BinaryMatrix),
    /// Any weight whose input is fake-quantized per token first (`act`, see
    /// [`crate::act_quant`]): quantize, dequantize, then `inner`'s own product.
    ActQuant {
        /// The weight (in the smoothed input space when `act` carries smoothing factors).
        inner: Box<LinearWeight>,
        /// The per-token activation quantizer.
        act: ActQuantizer,
    },
    /// Real integer execution (W8A8, W4A8, …): per-row symmetric int8 weight codes, the input
    /// quantized per token by `act` to int8 codes, exact i32 products ([`Int8Matrix`]).
    Int8 {
        /// Weight codes and per-row scales.
        matrix: Int8Matrix,
        /// The per-token activation quantizer.
        act: ActQuantizer,
    },
}

impl LinearWeight {
    /// A dense weight, checking the length.
    pub fn dense(out_features: usize, in_features: usize, weight: Vec<f32>) -> Result<Self> {
        if weight.len() != out_features * in_features {
            return Err(ModelError::Shape {
                what: "dense weight",
                expected: out_features * in_features,
                got: weight.len(),
            });
        }
        Ok(LinearWeight::Dense {
            out_features,
            in_features,
            weight,
        })
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        match self {
            LinearWeight::Dense { out_features, .. } => *out_features,
            LinearWeight::Packed(p) => p.rows(),
            LinearWeight::Binary(b) => b.rows(),
            LinearWeight::ActQuant { inner, .. } => inner.out_features(),
            LinearWeight::Int8 { matrix, .. } => matrix.rows(),
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        match self {
            LinearWeight::Dense { in_features, .. } => *in_features,
            LinearWeight::Packed(p) => p.cols(),
            LinearWeight::Binary(b) => b.cols(),
            LinearWeight::ActQuant { inner, .. } => inner.in_features(),
            LinearWeight::Int8 { matrix, .. } => matrix.cols(),
        }
    }

    /// The weight as dense f32 `[out, in]`: borrowed when it is stored dense, else as
    /// [`Self::to_dense`] computes it. Saves a copy of the largest linear (200 MB for an 8B
    /// model's `down_proj`) when a method only reads the weight.
    pub fn dense_view(&self) -> std::borrow::Cow<'_, [f32]> {
        match self {
            LinearWeight::Dense { weight, .. } => std::borrow::Cow::Borrowed(weight),
            _ => std::borrow::Cow::Owned(self.to_dense()),
        }
    }

    /// The dense f32 values, to overwrite in place; `None` unless the weight is stored dense.
    pub fn dense_mut(&mut self) -> Option<&mut [f32]> {
        match self {
            LinearWeight::Dense { weight, .. } => Some(weight),
            _ => None,
        }
    }

    /// The weight as dense f32 `[out, in]` (dequantized if packed; for activation-quantized
    /// linears the weight alone, in the original input space).
    pub fn to_dense(&self) -> Vec<f32> {
        match self {
            LinearWeight::Dense { weight, .. } => weight.clone(),
            LinearWeight::Packed(p) => p.dequantize(),
            LinearWeight::Binary(b) => b.dequantize(),
            LinearWeight::ActQuant { .. } | LinearWeight::Int8 { .. } => self.to_dense_act_quant(),
        }
    }

    /// Bytes the weight occupies in memory.
    pub fn storage_bytes(&self) -> usize {
        match self {
            LinearWeight::Dense { weight, .. } => weight.len() * 4,
            LinearWeight::Packed(p) => p.storage_bytes(),
            LinearWeight::Binary(b) => b.storage_bytes(),
            LinearWeight::ActQuant { .. } | LinearWeight::Int8 { .. } => {
                self.storage_bytes_act_quant()
            }
        }
    }

    /// `y[m, out] = x[m, in] · Wᵀ`.
    pub fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        let (n, k) = (self.out_features(), self.in_features());
        if x.len() != m * k {
            return Err(ModelError::Shape {
                what: "linear input",
                expected: m * k,
                got: x.len(),
            });
        }
        if y.len() != m * n {
            return Err(ModelError::Shape {
                what: "linear output",
                expected: m * n,
                got: y.len(),
            });
        }
        match self {
            LinearWeight::Dense { weight, .. } => dense::matmul_wt(x, m, k, weight, n, y),
            LinearWeight::Packed(p) if m == 1 => p.gemv(x, y)?,
            LinearWeight::Packed(p) => p.gemm(x, m, y)?,
            LinearWeight::Binary(b) => b.gemm(x, m, y)?,
            LinearWeight::ActQuant { .. } | LinearWeight::Int8 { .. } => {
                self.forward_act_quant(x, m, y)?
            }
        }
        Ok(())
    }

    /// Convenience: allocate and return `x · Wᵀ`.
    pub fn apply(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let mut y = vec![0.0f32; m * self.out_features()];
        self.forward(x, m, &mut y)?;
        Ok(y)
    }
}

/// Largest packed weight (in f32 bytes) that a prefill dequantizes whole for the dense kernels
/// (every linear of Qwen3-8B but its gate/up/down); larger ones keep the packed GEMM, which
/// dequantizes a block of rows at a time.
const PREFILL_DEQUANT_BYTES: usize = 64 << 20;

/// The f32 weights of `ws` for an `m`-token product through the dense kernels, when each is
/// dense or a packed weight whose f32-activation GEMM would dequantize it for those kernels
/// anyway ([`PackedMatrix::dequantized_for_prefill`]); `None` otherwise (a decode step, int8
/// prefill activations, binary weights, a weight over [`PREFILL_DEQUANT_BYTES`]). With them,
/// a packed model's prefill runs the dense model's fused products (q/k/v as one product,
/// gate/up with the SwiGLU epilogue, o/down adding into the residual) on the dequantized
/// values, one dequantization per weight and forward.
pub(crate) fn prefill_dense<'a>(
    ws: &[&'a LinearWeight],
    m: usize,
) -> Option<Vec<std::borrow::Cow<'a, [f32]>>> {
    use std::borrow::Cow;
    if !ws.iter().any(|w| matches!(w, LinearWeight::Packed(_))) {
        return None;
    }
    ws.iter()
        .map(|w| match w {
            LinearWeight::Dense { weight, .. } => Some(Cow::Borrowed(weight.as_slice())),
            LinearWeight::Packed(p) => p
                .dequantized_for_prefill(m, PREFILL_DEQUANT_BYTES)
                .map(Cow::Owned),
            _ => None,
        })
        .collect()
}

/// `x · W_iᵀ` of every linear in `ws` side by side into `y` (`m` rows of stride `y_rs`) when
/// all are packed and their int8 prefill activations can be shared
/// ([`PackedMatrix::gemm_int8_side_by_side`]: one quantization of `x` for q/k/v or gate/up);
/// `false`, `y` untouched, otherwise.
pub(crate) fn int8_side_by_side(
    ws: &[&LinearWeight],
    x: &[f32],
    m: usize,
    y: &mut [f32],
    y_rs: usize,
) -> Result<bool> {
    match all_packed(ws, x.len() / m.max(1)) {
        Some(mats) => Ok(PackedMatrix::gemm_int8_side_by_side(&mats, x, m, y, y_rs)?),
        None => Ok(false),
    }
}

/// The packed matrices of `ws` if every one is packed with `cols` columns.
fn all_packed<'a>(ws: &[&'a LinearWeight], cols: usize) -> Option<Vec<&'a PackedMatrix>> {
    ws.iter()
        .map(|w| match w {
            LinearWeight::Packed(p) if p.cols() == cols => Some(p),
            _ => None,
        })
        .collect()
}

/// `x · Wᵀ` of every linear in `ws` for one token `x` that they all read (a decode step's
/// q/k/v, or gate/up): packed weights run as one parallel region
/// ([`PackedMatrix::gemv_many`], the same numbers as separate GEMVs), anything else one product
/// at a time.
pub(crate) fn apply_to_one_token(ws: &[&LinearWeight], x: &[f32]) -> Result<Vec<Vec<f32>>> {
    let Some(mats) = all_packed(ws, x.len()) else {
        return ws.iter().map(|w| w.apply(x, 1)).collect();
    };
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.0f32; m.rows()]).collect();
    let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
    PackedMatrix::gemv_many(&mats, x, &mut refs)?;
    Ok(outs)
}
