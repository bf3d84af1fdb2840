//! Weight-activation quantization (SmoothQuant's W8A8, W4A8, W8A4, W4A4): per-token symmetric
//! quantization of the inputs of the seven decoder linears, run either as fake quantization
//! (quantize, dequantize, f32 product) or as a real integer product (int8 codes × int8 codes →
//! exact i32, [`qwen3_quant_kernels::int8`]).
//!
//! The rule is SmoothQuant's `quantize_activation_per_token_absmax`: per token (row of the
//! linear's input) `s = max(max_j |x_j|, 1e-5) / (2^(a−1) − 1)`, `x_q = round_half_even(x / s)·s`.
//! Both executions quantize with the same code, so they multiply the same numbers; the integer
//! sum is exact, and the only difference is the f32 summation order of the fake product.
//!
//! The integer path needs weights with one scale per output row and integer codes that fit in
//! int8: per-channel symmetric absmax (SmoothQuant's weight rule at 2..=8 bits) or any per-channel
//! grid whose `code − zero` fits in `[-128, 127]`. Group-wise scales cannot be factored out of the
//! integer sum; such weights run fake-quantized.
//!
//! ```
//! use qwen3_quant_model::{ActExecution, LinearWeight};
//! // A 2 x 3 weight already on a per-row symmetric 8-bit grid (codes times one scale per row).
//! let (s0, s1) = (0.01f32, 0.02f32);
//! let codes: [i8; 6] = [127, -3, 40, -127, 0, 64];
//! let w: Vec<f32> = codes.iter().enumerate()
//!     .map(|(i, &c)| c as f32 * if i < 3 { s0 } else { s1 })
//!     .collect();
//! let dense = LinearWeight::dense(2, 3, w)?;
//! let int8 = dense.clone().with_act_quant(8, ActExecution::Integer)?;
//! let fake = dense.with_act_quant(8, ActExecution::Fake)?;
//! let x = [0.5f32, -1.0, 0.25];
//! let (yi, yf) = (int8.apply(&x, 1)?, fake.apply(&x, 1)?);
//! assert!(yi.iter().zip(&yf).all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0)));
//! assert_eq!(int8.act_bits(), Some(8));
//! # Ok::<(), qwen3_quant_model::ModelError>(())
//! ```

use qwen3_quant_core::{LinearId, QuantizedLinear};
use qwen3_quant_kernels::int8::{Int8Matrix, QuantizedActivations};
use qwen3_quant_kernels::round::round_half_even;
use qwen3_quant_kernels::PackedMatrix;
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::linear::LinearWeight;
use crate::model::Qwen3Model;

/// What can go wrong when setting up activation quantization.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ActQuantError {
    /// Activation (or weight-grid) bits outside `2..=8`.
    #[error("activation bits {bits} outside 2..=8")]
    InvalidBits {
        /// The rejected width.
        bits: u8,
    },
    /// A NaN or infinite value where a finite one is needed.
    #[error("{what} has a non-finite value at index {index}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// First offending index.
        index: usize,
    },
    /// A weight whose length is not `rows · cols`.
    #[error("weight of {got} values where rows · cols = {expected}")]
    Shape {
        /// `rows · cols`.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A smoothing factor that is zero or negative.
    #[error("smoothing factor {index} is not positive")]
    NonPositive {
        /// First offending index.
        index: usize,
    },
    /// A row of a dense weight is not on a symmetric per-row grid of 2..=8 bits.
    #[error(
        "row {row} is not on a symmetric per-row grid of 2..=8 bits (its values are not integer \
         multiples of max|W_row| / (2^(b-1) - 1)); integer execution needs per-channel symmetric \
         absmax weights, other weights run with ActExecution::Fake"
    )]
    NotOnGrid {
        /// First offending row.
        row: usize,
    },
    /// A quantized weight whose scheme the integer kernels cannot run.
    #[error("integer execution needs per-row int8 codes: {reason}")]
    UnsupportedScheme {
        /// Why.
        reason: String,
    },
    /// The failure of one linear of a model.
    #[error("{id}: {source}")]
    InLinear {
        /// Which linear (`layers.3.self_attn.q_proj`).
        id: String,
        /// What went wrong.
        source: Box<ActQuantError>,
    },
}

fn err(e: ActQuantError) -> ModelError {
    ModelError::ActQuant(e)
}

/// How activation-quantized linears execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ActExecution {
    /// Quantize and dequantize the input, then run the weight's own f32/packed product.
    Fake,
    /// int8 × int8 → exact i32 ([`Int8Matrix`]): weights must be on a per-row integer grid.
    Integer,
}

/// Per-token symmetric activation quantizer: bits, and optional SmoothQuant factors `s` by which
/// each input column is divided first (when they are not folded into the previous layer).
#[derive(Clone, Debug, PartialEq)]
pub struct ActQuantizer {
    bits: u8,
    smoothing: Option<Vec<f32>>,
}

impl ActQuantizer {
    /// A quantizer at `bits` (2..=8) with no smoothing.
    ///
    /// # Errors
    /// [`ActQuantError::InvalidBits`].
    pub fn new(bits: u8) -> Result<Self> {
        if !(2..=8).contains(&bits) {
            return Err(err(ActQuantError::InvalidBits { bits }));
        }
        Ok(Self {
            bits,
            smoothing: None,
        })
    }

    /// Divides input column `j` by `s[j]` before quantizing (SmoothQuant's `x / s` when `1/s` is
    /// not folded into the previous layer); the weight must then hold `W·diag(s)`.
    ///
    /// # Errors
    /// [`ActQuantError::NonFinite`], [`ActQuantError::NonPositive`].
    pub fn with_smoothing(mut self, s: Vec<f32>) -> Result<Self> {
        if let Some(index) = s.iter().position(|v| !v.is_finite()) {
            return Err(err(ActQuantError::NonFinite {
                what: "smoothing",
                index,
            }));
        }
        if let Some(index) = s.iter().position(|&v| v <= 0.0) {
            return Err(err(ActQuantError::NonPositive { index }));
        }
        self.smoothing = Some(s);
        Ok(self)
    }

    /// Activation bits.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// The smoothing factors, if any.
    pub fn smoothing(&self) -> Option<&[f32]> {
        self.smoothing.as_deref()
    }

    /// Checks the smoothing length against a linear's input width.
    fn check_width(&self, in_features: usize) -> Result<()> {
        match &self.smoothing {
            Some(s) if s.len() != in_features => Err(ModelError::Shape {
                what: "smoothing factors",
                expected: in_features,
                got: s.len(),
            }),
            _ => Ok(()),
        }
    }

    /// Per-token codes and scales of `x [m, k]` (after the smoothing division).
    pub fn quantize(&self, x: &[f32], m: usize, k: usize) -> Result<QuantizedActivations> {
        let q = match &self.smoothing {
            None => QuantizedActivations::quantize(x, m, k, self.bits)?,
            Some(s) => {
                if x.len() != m * k {
                    return Err(ModelError::Shape {
                        what: "linear input",
                        expected: m * k,
                        got: x.len(),
                    });
                }
                let xs: Vec<f32> = x
                    .chunks_exact(k.max(1))
                    .flat_map(|row| row.iter().zip(s).map(|(v, f)| v / f))
                    .collect();
                QuantizedActivations::quantize(&xs, m, k, self.bits)?
            }
        };
        Ok(q)
    }

    /// The fake-quantized input `round(x / s_t)·s_t` per token, `[m, k]`.
    pub fn fake_quantize(&self, x: &[f32], m: usize, k: usize) -> Result<Vec<f32>> {
        Ok(self.quantize(x, m, k)?.dequantize())
    }

    /// Bytes of the smoothing factors.
    fn storage_bytes(&self) -> usize {
        4 * self.smoothing.as_ref().map_or(0, Vec::len)
    }

    /// Divides the columns of a dense `[out, in]` weight by the smoothing factors (the weight
    /// in the original input space).
    fn unsmooth(&self, mut w: Vec<f32>) -> Vec<f32> {
        if let Some(s) = &self.smoothing {
            for row in w.chunks_exact_mut(s.len().max(1)) {
                row.iter_mut().zip(s).for_each(|(v, f)| *v /= f);
            }
        }
        w
    }
}

/// Where a [`QuantizedLinear`]'s SmoothQuant factors are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SmoothingInput {
    /// The linear receives the original input and divides it by `s` itself.
    InLinear,
    /// `1/s` is already folded into the previous layer (RMSNorm weight): the linear receives
    /// the smoothed input and uses the codes as stored.
    Folded,
}

/// Per-row symmetric codes of a dense weight on a grid of some 2..=8 bits, if it is on one.
///
/// For each row the scale is recomputed from SmoothQuant's rule `max(max|W_r|, 1e-5) / qmax`,
/// trying `qmax = 127, 63, …, 1`, and from the GPTQ-style symmetric rule whose extreme level is
/// `-2^(b-1)` (`max|W_r| / 2^(b-1)`, codes `-128..=127` at 8 bits); a row fits when every value
/// is within `1e-3·scale` of a multiple of the scale (f32 rounding of the fake-quantized product
/// is far below that, while a weight off the grid misses by up to half a step).
pub fn symmetric_grid_codes(
    w: &[f32],
    rows: usize,
    cols: usize,
) -> std::result::Result<(Vec<i8>, Vec<f32>), ActQuantError> {
    if Some(w.len()) != rows.checked_mul(cols) {
        return Err(ActQuantError::Shape {
            expected: rows.saturating_mul(cols),
            got: w.len(),
        });
    }
    if let Some(index) = w.iter().position(|v| !v.is_finite()) {
        return Err(ActQuantError::NonFinite {
            what: "weight",
            index,
        });
    }
    let mut codes = vec![0i8; rows * cols];
    let mut scales = vec![0f32; rows];
    if cols == 0 {
        scales.fill(qwen3_quant_kernels::int8::ABSMAX_CLAMP / 127.0);
        return Ok((codes, scales));
    }
    let bad_row = codes
        .par_chunks_mut(cols)
        .zip(scales.par_iter_mut())
        .zip(w.par_chunks(cols))
        .enumerate()
        .filter_map(|(r, ((c, s), row))| (!grid_row(row, c, s)).then_some(r))
        .min();
    match bad_row {
        Some(row) => Err(ActQuantError::NotOnGrid { row }),
        None => Ok((codes, scales)),
    }
}

/// One row of [`symmetric_grid_codes`]: writes codes and scale, or returns false.
fn grid_row(row: &[f32], codes: &mut [i8], scale: &mut f32) -> bool {
    let absmax = row.iter().fold(0f32, |a, &v| a.max(v.abs()));
    // Divisors 2^(b-1) - 1 (SmoothQuant's absmax rule) and 2^(b-1) (GPTQ-style symmetric
    // grids, whose most negative level is -2^(b-1)), widest first.
    for b in (2..=8u8).rev() {
        for levels in [(1i32 << (b - 1)) - 1, 1i32 << (b - 1)] {
            let d = levels as f32;
            let s = absmax.max(qwen3_quant_kernels::int8::ABSMAX_CLAMP) / d;
            let tol = 1e-3 * s;
            let fits = row.iter().all(|&v| {
                let c = round_half_even(v / s);
                (-128.0..=127.0).contains(&c) && c.abs() <= d && (v - c * s).abs() <= tol
            });
            if fits {
                *scale = s;
                for (dst, &v) in codes.iter_mut().zip(row) {
                    *dst = round_half_even(v / s) as i8;
                }
                return true;
            }
        }
    }
    false
}

impl LinearWeight {
    /// The integer W·A linear from per-row symmetric weight codes `[rows, cols]` (the codes of
    /// SmoothQuant's per-channel absmax rule, or any int8 codes) and per-row scales; its input is
    /// quantized per token at `act_bits` and multiplied with exact i32 accumulation.
    ///
    /// # Errors
    /// [`ActQuantError::InvalidBits`]; shape and NaN errors from [`Int8Matrix::new`].
    pub fn int8(
        codes: Vec<i8>,
        scales: Vec<f32>,
        rows: usize,
        cols: usize,
        act_bits: u8,
    ) -> Result<Self> {
        let act = ActQuantizer::new(act_bits)?;
        Ok(LinearWeight::Int8 {
            matrix: Int8Matrix::new(codes, scales, rows, cols)?,
            act,
        })
    }

    /// An activation-quantized linear from a method's [`QuantizedLinear`].
    ///
    /// `Integer` needs one scale per row (no groups, no act-order permutation) and every
    /// `code − zero` in `[-128, 127]` (any symmetric scheme of ≤ 8 bits, any asymmetric one of
    /// ≤ 7 bits); `Fake` takes any scheme. SmoothQuant factors are divided out of the input by
    /// the linear ([`SmoothingInput::InLinear`]) or assumed folded upstream ([`SmoothingInput::Folded`]).
    ///
    /// # Errors
    /// [`ActQuantError::InvalidBits`], [`ActQuantError::UnsupportedScheme`].
    pub fn from_quantized_act(
        q: &QuantizedLinear,
        act_bits: u8,
        exec: ActExecution,
        smoothing: SmoothingInput,
    ) -> Result<Self> {
        let mut act = ActQuantizer::new(act_bits)?;
        if let (Some(s), SmoothingInput::InLinear) = (q.smoothing(), smoothing) {
            act = act.with_smoothing(s.to_vec())?;
        }
        let (rows, cols) = (q.out_features(), q.in_features());
        if exec == ActExecution::Fake {
            let inner = LinearWeight::dense(rows, cols, q.dequantize_stored())?;
            return Ok(LinearWeight::ActQuant {
                inner: Box::new(inner),
                act,
            });
        }
        let unsupported = |reason: &str| {
            err(ActQuantError::UnsupportedScheme {
                reason: reason.into(),
            })
        };
        if q.n_groups() != 1 {
            return Err(unsupported(
                "group-wise scales cannot be factored out of the integer sum (use per-channel weights or fake execution)",
            ));
        }
        if q.perm().is_some() {
            return Err(unsupported("act-order permutation"));
        }
        let mut codes = vec![0i8; rows * cols];
        for r in 0..rows {
            let z = i32::from(q.zeros()[r]);
            for c in 0..cols {
                let v = i32::from(q.codes()[r * cols + c]) - z;
                codes[r * cols + c] = i8::try_from(v).map_err(|_| {
                    unsupported(&format!(
                        "row {r}: code − zero = {v} does not fit in int8 (asymmetric 8-bit weights)"
                    ))
                })?;
            }
        }
        Ok(LinearWeight::Int8 {
            matrix: Int8Matrix::new(codes, q.scales().to_vec(), rows, cols)?,
            act,
        })
    }

    /// The same weight with its input quantized per token at `act_bits`, executed as `exec`.
    ///
    /// An already activation-quantized weight keeps its weight and smoothing and changes bits
    /// and execution. `Integer` needs the weight on a per-row symmetric grid (see
    /// [`symmetric_grid_codes`]); `Fake` takes any weight except a packed one carrying its own
    /// input scale (that scale would apply after the quantization; build such linears with
    /// [`LinearWeight::from_quantized_act`]).
    ///
    /// # Errors
    /// [`ActQuantError::InvalidBits`], [`ActQuantError::NotOnGrid`], [`ActQuantError::NonFinite`],
    /// [`ActQuantError::UnsupportedScheme`].
    pub fn with_act_quant(self, act_bits: u8, exec: ActExecution) -> Result<Self> {
        let act = self.act_plan(act_bits)?;
        match exec {
            ActExecution::Fake => Ok(self.into_fake(act)),
            ActExecution::Integer => self.to_int8(act),
        }
    }

    /// The quantizer this weight gets at `act_bits` (an activation-quantized weight keeps its
    /// smoothing factors), after the checks every execution needs.
    fn act_plan(&self, act_bits: u8) -> Result<ActQuantizer> {
        let fresh = ActQuantizer::new(act_bits)?;
        let (act, weight) = match self {
            LinearWeight::ActQuant { inner, act } => (act.clone(), &**inner),
            LinearWeight::Int8 { act, .. } => (act.clone(), self),
            other => (fresh, other),
        };
        if let LinearWeight::Packed(p) = weight {
            if PackedMatrix::input_scale(p).is_some() {
                return Err(err(ActQuantError::UnsupportedScheme {
                    reason: "packed weight with its own input scale: the scale would apply after the activation quantization; use LinearWeight::from_quantized_act".into(),
                }));
            }
        }
        act.check_width(self.in_features())?;
        Ok(ActQuantizer {
            bits: act_bits,
            ..act
        })
    }

    /// Fake execution of this weight's product with `act` (checked by `act_plan`).
    fn into_fake(self, act: ActQuantizer) -> Self {
        let inner = match self {
            LinearWeight::ActQuant { inner, .. } => *inner,
            LinearWeight::Int8 { matrix, .. } => LinearWeight::Dense {
                out_features: matrix.rows(),
                in_features: matrix.cols(),
                weight: matrix.dequantize(),
            },
            other => other,
        };
        LinearWeight::ActQuant {
            inner: Box::new(inner),
            act,
        }
    }

    /// Integer execution with `act` (checked by `act_plan`); reads the weight, which stays.
    fn to_int8(&self, act: ActQuantizer) -> Result<Self> {
        let (rows, cols) = (self.out_features(), self.in_features());
        let dense = match self {
            LinearWeight::Int8 { matrix, .. } => {
                return Ok(LinearWeight::Int8 {
                    matrix: matrix.clone(),
                    act,
                })
            }
            LinearWeight::ActQuant { inner, .. } => inner.to_dense(),
            other => other.to_dense(),
        };
        let (codes, scales) = symmetric_grid_codes(&dense, rows, cols).map_err(err)?;
        drop(dense);
        Ok(LinearWeight::Int8 {
            matrix: Int8Matrix::new(codes, scales, rows, cols)?,
            act,
        })
    }

    /// The weight without activation quantization (an integer weight becomes dense f32
    /// `codes·scale`, in the original input space when it carried smoothing factors).
    pub fn without_act_quant(self) -> Self {
        match self {
            LinearWeight::ActQuant { inner, act } if act.smoothing.is_none() => *inner,
            w @ (LinearWeight::ActQuant { .. } | LinearWeight::Int8 { .. }) => {
                let (rows, cols) = (w.out_features(), w.in_features());
                LinearWeight::Dense {
                    out_features: rows,
                    in_features: cols,
                    weight: w.to_dense(),
                }
            }
            w => w,
        }
    }

    /// The activation quantizer, when the input is quantized.
    pub fn act_quantizer(&self) -> Option<&ActQuantizer> {
        match self {
            LinearWeight::ActQuant { act, .. } | LinearWeight::Int8 { act, .. } => Some(act),
            _ => None,
        }
    }

    /// Activation bits, when the input is quantized.
    pub fn act_bits(&self) -> Option<u8> {
        self.act_quantizer().map(ActQuantizer::bits)
    }

    /// How the activation-quantized product executes (`None` for weight-only linears).
    pub fn act_execution(&self) -> Option<ActExecution> {
        match self {
            LinearWeight::ActQuant { .. } => Some(ActExecution::Fake),
            LinearWeight::Int8 { .. } => Some(ActExecution::Integer),
            _ => None,
        }
    }

    /// `forward` of the two activation-quantized variants (shapes already checked).
    pub(crate) fn forward_act_quant(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        let k = self.in_features();
        match self {
            LinearWeight::ActQuant { inner, act } => {
                inner.forward(&act.fake_quantize(x, m, k)?, m, y)
            }
            LinearWeight::Int8 { matrix, act } => {
                Ok(matrix.gemm_quantized(&act.quantize(x, m, k)?, y)?)
            }
            _ => unreachable!("forward_act_quant on a weight-only linear"),
        }
    }

    /// `to_dense` of the two activation-quantized variants: the weight in the original input space.
    pub(crate) fn to_dense_act_quant(&self) -> Vec<f32> {
        match self {
            LinearWeight::ActQuant { inner, act } => act.unsmooth(inner.to_dense()),
            LinearWeight::Int8 { matrix, act } => act.unsmooth(matrix.dequantize()),
            _ => unreachable!("to_dense_act_quant on a weight-only linear"),
        }
    }

    /// `storage_bytes` of the two activation-quantized variants.
    pub(crate) fn storage_bytes_act_quant(&self) -> usize {
        match self {
            LinearWeight::ActQuant { inner, act } => inner.storage_bytes() + act.storage_bytes(),
            LinearWeight::Int8 { matrix, act } => matrix.storage_bytes() + act.storage_bytes(),
            _ => unreachable!("storage_bytes_act_quant on a weight-only linear"),
        }
    }
}

/// What activation quantization a model runs (see [`Qwen3Model::activation_quantization`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActQuantSummary {
    /// Decoder linears (q, k, v, o, gate, up, down; experts counted one by one).
    pub linears: usize,
    /// Linears running the integer product.
    pub integer: usize,
    /// Linears with fake-quantized inputs.
    pub fake: usize,
    /// Distinct activation bit widths in use, ascending.
    pub act_bits: Vec<u8>,
}

impl ActQuantSummary {
    /// Whether every decoder linear quantizes its input.
    pub fn is_weight_activation(&self) -> bool {
        self.linears > 0 && self.integer + self.fake == self.linears
    }

    /// The execution shared by every linear, if there is one.
    pub fn execution(&self) -> Option<ActExecution> {
        if self.linears == 0 {
            None
        } else if self.integer == self.linears {
            Some(ActExecution::Integer)
        } else if self.fake == self.linears {
            Some(ActExecution::Fake)
        } else {
            None
        }
    }
}

impl std::fmt::Display for ActQuantSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.integer + self.fake == 0 {
            return write!(f, "weight-only ({} linears)", self.linears);
        }
        let bits: Vec<String> = self.act_bits.iter().map(|b| format!("A{b}")).collect();
        write!(
            f,
            "{} activations: {} of {} linears integer, {} fake",
            bits.join("/"),
            self.integer,
            self.linears,
            self.fake
        )
    }
}

impl Qwen3Model {
    /// Quantizes the inputs of every decoder linear (q, k, v, o, gate, up, down, MoE experts
    /// included; never the router or `lm_head`) per token at `act_bits`.
    ///
    /// `Fake` wraps any weight. `Integer` converts every linear to the int8 product, which needs
    /// per-row symmetric weights (SmoothQuant's per-channel absmax at 2..=8 bits): W8A8 and W4A8
    /// run int8 × int8, and so do A4 settings, since 4-bit codes are int8 codes too (the integer
    /// sum is exact, so the result equals fake quantization up to f32 summation order). If any
    /// linear cannot convert, the model is left unchanged. Calling it again changes bits and
    /// execution.
    ///
    /// ```no_run
    /// use qwen3_quant_model::{ActExecution, Qwen3Model};
    /// let mut model = Qwen3Model::load("assets/models/qwen3-micro")?;
    /// // ... quantize the weights per channel, symmetric absmax, 8 bits ...
    /// let summary = model.quantize_activations(8, ActExecution::Integer)?;
    /// assert_eq!(summary.execution(), Some(ActExecution::Integer));
    /// # Ok::<(), qwen3_quant_model::ModelError>(())
    /// ```
    ///
    /// # Errors
    /// [`ActQuantError::InvalidBits`]; for `Integer`, [`ActQuantError::InLinear`] naming the
    /// first linear that is not on a per-row integer grid.
    pub fn quantize_activations(
        &mut self,
        act_bits: u8,
        exec: ActExecution,
    ) -> Result<ActQuantSummary> {
        ActQuantizer::new(act_bits)?;
        let ids: Vec<LinearId> = self.layers.iter().flat_map(|l| l.linear_ids()).collect();
        fn in_linear(id: &LinearId) -> impl Fn(ModelError) -> ModelError + '_ {
            move |e| match e {
                ModelError::ActQuant(source) => err(ActQuantError::InLinear {
                    id: id.to_string(),
                    source: Box::new(source),
                }),
                other => other,
            }
        }
        // Check (and for Integer, convert) everything first, so that a failure leaves the model
        // as it was; only int8 copies are held, never a second f32 model.
        let mut plans = Vec::with_capacity(ids.len());
        for id in &ids {
            let w = self.layers[id.layer]
                .linear(id.kind, id.expert)
                .expect("id from linear_ids");
            let act = w.act_plan(act_bits).map_err(in_linear(id))?;
            plans.push(match exec {
                ActExecution::Fake => Err(act),
                ActExecution::Integer => Ok(w.to_int8(act).map_err(in_linear(id))?),
            });
        }
        for (id, plan) in ids.iter().zip(plans) {
            let slot = self.layers[id.layer]
                .linear_mut(id.kind, id.expert)
                .expect("id from linear_ids");
            *slot = match plan {
                Ok(int8) => int8,
                Err(act) => {
                    let placeholder = LinearWeight::Dense {
                        out_features: 0,
                        in_features: 0,
                        weight: Vec::new(),
                    };
                    std::mem::replace(slot, placeholder).into_fake(act)
                }
            };
        }
        Ok(self.activation_quantization())
    }

    /// [`Qwen3Model::quantize_activations`] with `Integer` when every linear is on a per-row
    /// integer grid, else with `Fake` (e.g. group-wise weights). Returns what it set up.
    ///
    /// # Errors
    /// [`ActQuantError::InvalidBits`], or any error other than an off-grid/unsupported weight.
    pub fn quantize_activations_best(&mut self, act_bits: u8) -> Result<ActQuantSummary> {
        match self.quantize_activations(act_bits, ActExecution::Integer) {
            Err(ModelError::ActQuant(ActQuantError::InLinear { source, .. }))
                if matches!(
                    *source,
                    ActQuantError::NotOnGrid { .. } | ActQuantError::UnsupportedScheme { .. }
                ) =>
            {
                self.quantize_activations(act_bits, ActExecution::Fake)
            }
            other => other,
        }
    }

    /// Removes activation quantization from every decoder linear (integer weights become dense
    /// f32 `codes·scale`).
    pub fn remove_activation_quantization(&mut self) -> Result<()> {
        let ids: Vec<LinearId> = self.layers.iter().flat_map(|l| l.linear_ids()).collect();
        for id in &ids {
            let layer = &mut self.layers[id.layer];
            let w = layer
                .linear(id.kind, id.expert)
                .expect("id from linear_ids");
            if w.act_bits().is_some() {
                let plain = w.clone().without_act_quant();
                layer.replace_linear(id, plain)?;
            }
        }
        Ok(())
    }

    /// What activation quantization the decoder linears run.
    pub fn activation_quantization(&self) -> ActQuantSummary {
        let mut s = ActQuantSummary::default();
        for l in &self.layers {
            for id in l.linear_ids() {
                let Some(w) = l.linear(id.kind, id.expert) else {
                    continue;
                };
                s.linears += 1;
                match w.act_execution() {
                    Some(ActExecution::Integer) => s.integer += 1,
                    Some(ActExecution::Fake) => s.fake += 1,
                    None => {}
                }
                if let Some(b) = w.act_bits() {
                    if !s.act_bits.contains(&b) {
                        s.act_bits.push(b);
                    }
                }
            }
        }
        s.act_bits.sort_unstable();
        s
    }
}
