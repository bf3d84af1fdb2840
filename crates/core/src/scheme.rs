//! Quantization schemes and the scalar quantizer shared by every method.
//!
//! All rounding goes through [`round_half_even`] (`torch.round` semantics); Rust's `f32::round`
//! rounds half away from zero and would break parity on exact `.5` ties.

use std::num::NonZeroUsize;

use crate::error::{Error, Result};

/// Round half to even, the rounding used by every reference quantizer (`torch.round`).
///
/// This is the only rounding helper of the workspace; do not use `f32::round` for codes.
/// Bit-identical to `f32::round_ties_even`, without its libm call on the x86-64 baseline
/// ([`qwen3_quant_kernels::round`]).
#[inline(always)]
pub fn round_half_even(x: f32) -> f32 {
    qwen3_quant_kernels::round::round_half_even(x)
}

/// A weight bit width in `1..=8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bits(u8);

impl Bits {
    /// 2 bits.
    pub const B2: Bits = Bits(2);
    /// 3 bits.
    pub const B3: Bits = Bits(3);
    /// 4 bits.
    pub const B4: Bits = Bits(4);
    /// 8 bits.
    pub const B8: Bits = Bits(8);

    /// Validated constructor (same as `TryFrom<u8>`).
    pub fn new(bits: u8) -> Result<Self> {
        Self::try_from(bits)
    }

    /// The width in bits.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Largest code, `2^bits − 1`.
    pub fn maxq(self) -> u8 {
        ((1u16 << self.0) - 1) as u8
    }
}

impl TryFrom<u8> for Bits {
    type Error = Error;
    fn try_from(bits: u8) -> Result<Self> {
        if (1..=8).contains(&bits) {
            Ok(Bits(bits))
        } else {
            Err(Error::InvalidBits { bits })
        }
    }
}

impl From<Bits> for u8 {
    fn from(b: Bits) -> u8 {
        b.0
    }
}

impl std::fmt::Display for Bits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which weights share one `(scale, zero)` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupSize {
    /// One pair for the whole tensor (repeated for every output row when stored).
    PerTensor,
    /// One pair per output row (`--groupsize -1` in the reference).
    PerChannel,
    /// One pair per output row and per run of `n` consecutive input columns.
    ///
    /// If `n` does not divide `in_features`, the last group is ragged: it covers the remaining
    /// `in_features % n` columns (GPTQ's `W[:, col:col+groupsize]` slicing does the same; llm-awq
    /// would reject such a shape).
    Group(NonZeroUsize),
}

impl GroupSize {
    /// `Group(n)`, or an error for `n == 0`.
    pub fn group(n: usize) -> Result<Self> {
        NonZeroUsize::new(n)
            .map(GroupSize::Group)
            .ok_or(Error::InvalidConfig {
                field: "group_size",
                reason: "group size must be positive",
            })
    }

    /// Number of groups along a row of `in_features` columns (1 unless `Group`).
    pub fn n_groups(self, in_features: usize) -> usize {
        match self {
            GroupSize::Group(g) => in_features.div_ceil(g.get()),
            _ => 1,
        }
    }

    /// The group size as stored in [`crate::QuantizedLinear`] (`None` = one group per row).
    pub fn as_option(self) -> Option<usize> {
        match self {
            GroupSize::Group(g) => Some(g.get()),
            _ => None,
        }
    }
}

/// How the `(scale, zero)` pair is derived from a group's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RangeConvention {
    /// GPTQ's `Quantizer.find_params`: the range is `[min(x,0), max(x,0)]` (always contains 0),
    /// no clamping of the scale, an all-zero group uses `[-1, 1]`;
    /// `zero = round(-xmin/scale)` (asym) or `(maxq+1)/2` (sym).
    Gptq,
    /// llm-awq's `pseudo_quantize_tensor`: plain group `[min, max]`,
    /// `scale = max(max−min, 1e-5)/maxq`, `zero = clamp(-round(min/scale), 0, maxq)`.
    /// Asymmetric only (see [`QuantScheme::new`]).
    Awq,
    /// SmoothQuant's `quantize_weight_per_channel_absmax`: symmetric around 0 with
    /// `scale = max(absmax, 1e-5) / (2^(b−1) − 1)`, so codes span `±(2^(b−1) − 1)` (the level
    /// `−2^(b−1)` is never used; at 2 bits the grid is ternary). Stored with the symmetric zero
    /// point `2^(b−1)`. Symmetric only, 2 bits or more.
    AbsMax,
}

/// A complete weight quantization scheme. Construct with [`QuantScheme::new`] (validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantScheme {
    bits: Bits,
    group: GroupSize,
    sym: bool,
    convention: RangeConvention,
}

impl QuantScheme {
    /// Validated constructor.
    ///
    /// # Errors
    /// `sym = true` with [`RangeConvention::Awq`] is rejected with [`Error::InvalidConfig`]: the
    /// reference's symmetric AWQ path (`--no_zero_point`) raises a NameError, so there is no
    /// behaviour to reproduce. Use [`RangeConvention::Gptq`] for symmetric quantization.
    pub fn new(
        bits: Bits,
        group: GroupSize,
        sym: bool,
        convention: RangeConvention,
    ) -> Result<Self> {
        if sym && convention == RangeConvention::Awq {
            return Err(Error::InvalidConfig {
                field: "sym",
                reason: "symmetric quantization is not defined for the AWQ range convention",
            });
        }
        if convention == RangeConvention::AbsMax && (!sym || bits.get() < 2) {
            return Err(Error::InvalidConfig {
                field: "convention",
                reason: "the absmax convention is symmetric and needs at least 2 bits",
            });
        }
        Ok(Self {
            bits,
            group,
            sym,
            convention,
        })
    }

    /// Bit width.
    pub fn bits(&self) -> Bits {
        self.bits
    }
    /// Grouping.
    pub fn group(&self) -> GroupSize {
        self.group
    }
    /// Symmetric (`true`) or asymmetric.
    pub fn sym(&self) -> bool {
        self.sym
    }
    /// Range convention.
    pub fn convention(&self) -> RangeConvention {
        self.convention
    }
    /// Largest code.
    pub fn maxq(&self) -> u8 {
        self.bits.maxq()
    }
}

/// One `(scale, zero)` pair. `zero` is an integer held in an `f32`, as in the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantParams {
    /// Step between codes.
    pub scale: f32,
    /// Code that represents 0.0 (integer-valued).
    pub zero: f32,
}

impl QuantParams {
    /// The zero point as a code (`zero` is integral and within `0..=maxq` for every scheme).
    pub fn zero_code(&self) -> u8 {
        self.zero.clamp(0.0, 255.0) as u8
    }
}

/// Minimum and maximum of `values` (`(+inf, -inf)` for an empty slice).
pub fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Range `[xmin, xmax]` of a group after the convention's adjustments (before any MSE shrink).
///
/// For [`RangeConvention::Gptq`] this includes 0, the symmetric widening and the all-zero
/// `[-1, 1]` fix; for [`RangeConvention::Awq`] it is the raw min/max.
pub fn base_range(values: &[f32], scheme: &QuantScheme) -> (f32, f32) {
    let (mn, mx) = min_max(values);
    match scheme.convention {
        RangeConvention::Gptq => {
            let mut xmin = mn.min(0.0);
            let mut xmax = mx.max(0.0);
            if scheme.sym {
                xmax = xmin.abs().max(xmax);
                if xmin < 0.0 {
                    xmin = -xmax;
                }
            }
            if xmin == 0.0 && xmax == 0.0 {
                xmin = -1.0;
                xmax = 1.0;
            }
            (xmin, xmax)
        }
        RangeConvention::Awq => {
            if values.is_empty() {
                (0.0, 0.0)
            } else {
                (mn, mx)
            }
        }
        RangeConvention::AbsMax => {
            let a = mn.abs().max(mx.abs());
            if values.is_empty() {
                (0.0, 0.0)
            } else {
                (-a, a)
            }
        }
    }
}

/// `(scale, zero)` for a range `[xmin, xmax]` already adjusted by [`base_range`] (and possibly
/// shrunk by an MSE search), with the convention's formulas in f32.
pub fn params_from_range(xmin: f32, xmax: f32, scheme: &QuantScheme) -> QuantParams {
    let maxq = scheme.maxq() as f32;
    match scheme.convention {
        RangeConvention::Gptq => {
            let scale = (xmax - xmin) / maxq;
            let zero = if scheme.sym {
                (maxq + 1.0) / 2.0
            } else {
                round_half_even(-xmin / scale)
            };
            QuantParams { scale, zero }
        }
        RangeConvention::Awq => {
            let scale = (xmax - xmin).max(1e-5) / maxq;
            let zero = (-round_half_even(xmin / scale)).clamp(0.0, maxq);
            QuantParams { scale, zero }
        }
        RangeConvention::AbsMax => {
            let qmax = ((maxq + 1.0) / 2.0) - 1.0;
            let scale = xmax.abs().max(xmin.abs()).max(1e-5) / qmax;
            QuantParams {
                scale,
                zero: (maxq + 1.0) / 2.0,
            }
        }
    }
}

/// `(scale, zero)` for one group of values, bit-for-bit the reference formulas in f32
/// (see [`RangeConvention`]). Only `bits`, `sym` and `convention` of `scheme` are used; the caller
/// slices the group. Values must be finite (methods check this before).
pub fn find_params(values: &[f32], scheme: &QuantScheme) -> QuantParams {
    let (xmin, xmax) = base_range(values, scheme);
    params_from_range(xmin, xmax, scheme)
}

/// An error-minimising search of a group's range: GPTQ's `Quantizer(mse=True)`
/// (reference-methods §2.1), in the spirit of llama.cpp's and HQQ's error-minimising scales.
/// For `i in 0..int(max_shrink·grid)` the base range is shrunk by `p = 1 − i/grid` and the
/// `(scale, zero)` with the smallest `Σ_j c_j·|fake_quant(x_j) − x_j|^norm` wins (strictly
/// smaller; `c_j = 1`, or per-value weights such as the Hessian diagonal, see
/// [`find_params_mse`]). `p = 1` is always a candidate, so the search is never worse than min/max
/// on its own criterion.
///
/// With [`RangeConvention::Awq`] the same search shrinks llm-awq's raw `[min, max]` and applies
/// its formulas (clamped scale and zero); the reference has no such combination.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct MseSearch {
    /// Grid resolution (`grid = 100`).
    pub grid: usize,
    /// Largest shrink fraction (`maxshrink = 0.8`); f64 so `int(max_shrink*grid)` matches Python.
    pub max_shrink: f64,
    /// Error exponent (`norm = 2.4`).
    pub norm: f32,
}

crate::setters!(MseSearch {
    grid: usize => with_grid,
    max_shrink: f64 => with_max_shrink,
    norm: f32 => with_norm,
});

impl Default for MseSearch {
    /// The reference's values: grid 100, shrink up to 0.8, norm 2.4.
    fn default() -> Self {
        Self {
            grid: 100,
            max_shrink: 0.8,
            norm: 2.4,
        }
    }
}

impl MseSearch {
    /// Checks `grid > 0`, `max_shrink` in `(0, 1]` and a positive, finite `norm`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason| Err(Error::InvalidConfig { field, reason });
        if self.grid == 0 {
            return bad("mse.grid", "must be positive");
        }
        if !(self.max_shrink > 0.0 && self.max_shrink <= 1.0) {
            return bad("mse.max_shrink", "must be in (0, 1]");
        }
        if !(self.norm.is_finite() && self.norm > 0.0) {
            return bad("mse.norm", "must be positive and finite");
        }
        Ok(())
    }
}

/// [`find_params`] refined by the range search `m` (see [`MseSearch`]); `weights` (one per
/// value, e.g. the Hessian diagonal of the group's columns) scale each value's error.
///
/// ```
/// use qwen3_quant_core::{find_params, find_params_mse, fake_quantize, Bits, GroupSize,
///     MseSearch, QuantScheme, RangeConvention};
/// let s = QuantScheme::new(Bits::new(3)?, GroupSize::group(16)?, false, RangeConvention::Gptq)?;
/// // One large weight stretches the min/max grid; a range shrunk by 4% serves the group better.
/// let x = [0.11, -0.12, 0.09, 0.05, -0.07, 0.1, -0.02, 0.06, 0.03, -0.05, 0.08, -0.1, 0.04,
///          0.02, -0.09, 0.35];
/// let err = |p| x.iter().map(|&v| (v - fake_quantize(v, p, s.maxq())).abs().powf(2.4)).sum::<f32>();
/// let (plain, searched) = (find_params(&x, &s), find_params_mse(&x, &s, None, &MseSearch::default()));
/// assert!(searched.scale < plain.scale && err(searched) < err(plain));
/// # Ok::<(), qwen3_quant_core::Error>(())
/// ```
pub fn find_params_mse(
    values: &[f32],
    scheme: &QuantScheme,
    weights: Option<&[f32]>,
    m: &MseSearch,
) -> QuantParams {
    let (xmin, xmax) = base_range(values, scheme);
    let base = params_from_range(xmin, xmax, scheme);
    let maxq = scheme.maxq();
    let weights = weights.filter(|w| w.len() == values.len());
    let steps = (m.max_shrink * m.grid as f64) as usize;
    // With non-negative weights every term is >= 0, so the running sum never decreases and a
    // step whose partial sum already reaches the best error cannot win: it stops there. The
    // chosen parameters are exactly those of the full search (the `powf` calls were 58% of a
    // `--recipe best` run).
    let prunable = weights.is_none_or(|c| c.iter().all(|&c| c >= 0.0));
    let mut best_err = f64::INFINITY;
    let mut best = base;
    for i in 0..steps {
        let p = (1.0 - i as f64 / m.grid as f64) as f32;
        let prm = params_from_range(p * xmin, p * xmax, scheme);
        let stop = if prunable { best_err } else { f64::INFINITY };
        let err = step_error(values, weights, prm, maxq, m.norm, stop);
        // Strictly smaller: ties keep the wider range, a NaN error never wins.
        if err < best_err {
            best_err = err;
            best = prm;
        }
    }
    best
}

/// How often [`step_error`] compares its running sum with the best error (a compare is far
/// cheaper than the `powf` of each term).
const PRUNE_EVERY: usize = 4;

/// `Σ c·|fq(x) − x|^norm` in the order of `values` (`c = 1` without weights), or a partial
/// sum `>= stop` as soon as one is reached (checked every [`PRUNE_EVERY`] terms).
fn step_error(
    values: &[f32],
    weights: Option<&[f32]>,
    prm: QuantParams,
    maxq: u8,
    norm: f32,
    stop: f64,
) -> f64 {
    let e = |x: f32| ((fake_quantize(x, prm, maxq) - x).abs().powf(norm)) as f64;
    let mut err = 0.0f64;
    for (k, chunk) in values.chunks(PRUNE_EVERY).enumerate() {
        match weights {
            Some(c) => {
                for (&x, &c) in chunk.iter().zip(&c[k * PRUNE_EVERY..]) {
                    err += c as f64 * e(x);
                }
            }
            None => {
                for &x in chunk {
                    err += e(x);
                }
            }
        }
        if err >= stop {
            break;
        }
    }
    err
}

/// Integer code `clamp(round(x/scale) + zero, 0, maxq)`.
#[inline]
pub fn quantize_code(x: f32, params: QuantParams, maxq: u8) -> u8 {
    let q = round_half_even(x / params.scale) + params.zero;
    // NaN (0/0 scale) maps to 0 through `as`; callers reject non-finite inputs beforehand.
    q.clamp(0.0, maxq as f32) as u8
}

/// Value of a code: `scale * (code − zero)`.
#[inline]
pub fn dequantize_code(code: u8, params: QuantParams) -> f32 {
    params.scale * (code as f32 - params.zero)
}

/// Fake quantization `scale * (clamp(round(x/scale) + zero, 0, maxq) − zero)`.
#[inline]
pub fn fake_quantize(x: f32, params: QuantParams, maxq: u8) -> f32 {
    dequantize_code(quantize_code(x, params, maxq), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(bits: u8, sym: bool, c: RangeConvention) -> QuantScheme {
        QuantScheme::new(Bits::new(bits).unwrap(), GroupSize::PerChannel, sym, c).unwrap()
    }

    /// The reference's search: every step's full sum, no early stop.
    fn full_search(
        values: &[f32],
        scheme: &QuantScheme,
        weights: Option<&[f32]>,
        m: &MseSearch,
    ) -> QuantParams {
        let (xmin, xmax) = base_range(values, scheme);
        let mut best = params_from_range(xmin, xmax, scheme);
        let mut best_err = f64::INFINITY;
        for i in 0..(m.max_shrink * m.grid as f64) as usize {
            let p = (1.0 - i as f64 / m.grid as f64) as f32;
            let prm = params_from_range(p * xmin, p * xmax, scheme);
            let e = |x: f32| {
                ((fake_quantize(x, prm, scheme.maxq()) - x)
                    .abs()
                    .powf(m.norm)) as f64
            };
            let err: f64 = match weights {
                Some(c) => values.iter().zip(c).map(|(&x, &c)| c as f64 * e(x)).sum(),
                None => values.iter().map(|&x| e(x)).sum(),
            };
            if err < best_err {
                best_err = err;
                best = prm;
            }
        }
        best
    }

    #[test]
    fn the_pruned_range_search_picks_what_the_full_search_picks() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let m = MseSearch::default();
        for bits in [2u8, 3, 4] {
            for sym in [false, true] {
                let s = scheme(bits, sym, RangeConvention::Gptq);
                for len in [1usize, 15, 16, 17, 128, 100] {
                    for trial in 0..20 {
                        // Heavy tails now and then, so that clipping wins and loses.
                        let x: Vec<f32> = (0..len)
                            .map(|k| next() * if (k + trial) % 29 == 0 { 8.0 } else { 1.0 })
                            .collect();
                        let c: Vec<f32> = (0..len).map(|_| next() + 0.5).collect();
                        let signed: Vec<f32> = (0..len).map(|_| next()).collect();
                        for w in [None, Some(&c[..]), Some(&signed[..])] {
                            assert_eq!(
                                find_params_mse(&x, &s, w, &m),
                                full_search(&x, &s, w, &m),
                                "bits {bits} sym {sym} len {len} trial {trial}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ties_round_to_even() {
        for (x, e) in [
            (0.5, 0.0),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, -0.0),
            (-1.5, -2.0),
            (-2.5, -2.0),
            (3.5, 4.0),
        ] {
            assert_eq!(round_half_even(x), e, "{x}");
        }
        // A tie inside quantize_code: x/scale = 2.5 -> 2, + zero.
        let p = QuantParams {
            scale: 1.0,
            zero: 3.0,
        };
        assert_eq!(quantize_code(2.5, p, 15), 5);
        assert_eq!(quantize_code(3.5, p, 15), 7);
        assert_eq!(quantize_code(-0.5, p, 15), 3);
    }

    #[test]
    fn bits_validation() {
        assert!(Bits::try_from(0).is_err());
        assert!(Bits::try_from(9).is_err());
        assert_eq!(Bits::try_from(1).unwrap().maxq(), 1);
        assert_eq!(Bits::try_from(8).unwrap().maxq(), 255);
        assert_eq!(Bits::B4.maxq(), 15);
    }

    #[test]
    fn sym_awq_rejected() {
        assert!(
            QuantScheme::new(Bits::B4, GroupSize::PerChannel, true, RangeConvention::Awq).is_err()
        );
        assert!(GroupSize::group(0).is_err());
        assert_eq!(GroupSize::group(128).unwrap().n_groups(300), 3);
    }

    #[test]
    fn gptq_asym_params() {
        let s = scheme(4, false, RangeConvention::Gptq);
        // all-positive: range widened to [0, 3]
        let p = find_params(&[1.0, 2.0, 3.0], &s);
        assert_eq!(p.scale, 3.0 / 15.0);
        assert_eq!(p.zero, 0.0);
        // mixed
        let p = find_params(&[-1.0, 2.0], &s);
        assert_eq!(p.scale, 3.0f32 / 15.0);
        assert_eq!(p.zero, round_half_even(1.0 / (3.0f32 / 15.0)));
        assert_eq!(p.zero, 5.0);
        // all zero -> [-1, 1]
        let p = find_params(&[0.0; 4], &s);
        assert_eq!(p.scale, 2.0 / 15.0);
        // 1/(2/15) is 7.4999995 in f32, so this is not a tie: 7 (as torch computes it)
        assert_eq!(p.zero, 7.0);
        assert_eq!(fake_quantize(0.0, p, 15), 0.0);
    }

    #[test]
    fn gptq_sym_params() {
        let s = scheme(4, true, RangeConvention::Gptq);
        let p = find_params(&[-2.0, 1.0], &s);
        assert_eq!(p.scale, 4.0 / 15.0);
        assert_eq!(p.zero, 8.0);
        // all-positive row: xmin stays 0, half the grid is wasted (reference behaviour)
        let p = find_params(&[1.0, 3.0], &s);
        assert_eq!(p.scale, 3.0 / 15.0);
        assert_eq!(p.zero, 8.0);
        assert_eq!(quantize_code(3.0, p, 15), 15); // clipped: 15 + 8 -> 15
        assert_eq!(fake_quantize(3.0, p, 15), 7.0 * (3.0f32 / 15.0));
    }

    #[test]
    fn absmax_params() {
        assert!(QuantScheme::new(
            Bits::B4,
            GroupSize::PerChannel,
            false,
            RangeConvention::AbsMax
        )
        .is_err());
        let s = scheme(8, true, RangeConvention::AbsMax);
        let p = find_params(&[-0.5, 1.27, 0.2], &s);
        assert_eq!(p.scale, 1.27 / 127.0);
        assert_eq!(p.zero, 128.0);
        assert_eq!(fake_quantize(1.27, p, 255), 127.0 * (1.27f32 / 127.0));
        assert_eq!(quantize_code(-1.27, p, 255), 1); // -127 + 128: the -128 level stays unused
        let s4 = scheme(4, true, RangeConvention::AbsMax);
        let p = find_params(&[0.0, 0.0], &s4);
        assert_eq!(p.scale, 1e-5 / 7.0);
        assert_eq!(fake_quantize(0.0, p, 15), 0.0);
        let p = find_params(&[-2.0, 0.7], &s4);
        assert_eq!(p.scale, 2.0 / 7.0);
        // 0.7 / (2/7) = 2.45 -> 2
        assert_eq!(fake_quantize(0.7, p, 15), 2.0 * (2.0f32 / 7.0));
    }

    #[test]
    fn awq_params() {
        let s = scheme(4, false, RangeConvention::Awq);
        let p = find_params(&[1.0, 2.5, 4.0], &s);
        assert_eq!(p.scale, 3.0 / 15.0);
        // -round(1/0.2) = -5 -> clamp 0
        assert_eq!(p.zero, 0.0);
        let p = find_params(&[-1.0, 2.0], &s);
        assert_eq!(p.scale, 3.0 / 15.0);
        assert_eq!(p.zero, 5.0);
        // constant group: scale clamp 1e-5
        let p = find_params(&[0.0; 3], &s);
        assert_eq!(p.scale, 1e-5 / 15.0);
        assert_eq!(p.zero, 0.0);
        assert_eq!(fake_quantize(0.0, p, 15), 0.0);
    }
}
