//! Dense f32 matrix products used by the model (the baseline every packed kernel is compared with).
//!
//! Weights follow `nn.Linear`: `W` is `[out, in]` row-major, and `Y = X · Wᵀ` with `X` `[m, in]`.
//!
//! On x86-64 CPUs with AVX-512 or with AVX2 + FMA the products of [`gemm_wt`], [`gemm_swiglu`]
//! and [`matmul_wt`] run our own blocked kernel. With AVX-512 (`dense/avx512.rs`) `W` is packed
//! into 32-column panels, `X` into 14-row panels (applying an RMSNorm on the fly when asked,
//! [`RowNorm`]), and a 14 × 32 register tile accumulates over up to [`KC`] columns of `k`; with
//! AVX2 (`dense/avx2.rs`) the panels are 16 columns and 12 rows and the tile two 6 × 16 register
//! blocks. Both compute each output as one FMA chain over each `KC` block, in the same order, so
//! they give the same bits. Their epilogues fuse what the model does next while the tile is in
//! registers: the residual add ([`Epilogue::Add`]) and SwiGLU's `silu(gate)·up`
//! ([`gemm_swiglu`], gate and up panels interleaved). Several weights can share one product (q,
//! k and v: one pass over `X`). Elsewhere (NEON, scalar), and for fewer than
//! [`MIN_BLOCKED_ROWS`] rows, the `gemm` crate does the product and the epilogues run as
//! separate passes; `benches/gemm_choice.rs` and `examples/dense_gemm.rs` compare them.
//!
//! Blocking: an `X` block of `MC ≈ 64K / kc` rows × `kc` columns (≤ 256 KB) stays in L2 while
//! the 32-column `W` micro-panels (`kc × 32`, 64 KB at `kc = 512`) stream past it, each reused by
//! every 14-row panel of the block; only the packed `W` (all of it, once per call) lives in L3,
//! so the footprint does not depend on the L3 size (32 MB and 105 MB machines alike).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
pub(crate) mod avx2;
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
pub(crate) mod avx512;

/// Columns of `k` one pass of the blocked kernel accumulates (longer products add up passes).
pub const KC: usize = 512;
/// Fewer rows than this go to the `gemm` crate (packing `W` would not pay off).
pub const MIN_BLOCKED_ROWS: usize = 16;
/// Target floats of one packed `X` block (256 KB, half an L2 of the smallest machine).
const A_BLOCK_FLOATS: usize = 64 * 1024;

/// The arithmetic of the dense products (process-wide, [`set_compute`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compute {
    /// f32 × f32 (exact: the reference perplexities).
    #[default]
    F32,
    /// Activations rounded to bf16 (round half to even) × weights rounded to bf16, products
    /// accumulated in f32: `vdpbf16ps` with AVX-512-BF16, the same numbers through the f32
    /// kernels elsewhere. For Qwen3's bf16 checkpoints only the activations round.
    Bf16,
}

impl Compute {
    /// Parses `f32` or `bf16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Some(Compute::F32),
            "bf16" => Some(Compute::Bf16),
            _ => None,
        }
    }
}

static COMPUTE: AtomicU8 = AtomicU8::new(0);

/// Selects the arithmetic of every dense product of this process ([`gemm_wt`],
/// [`gemm_swiglu`], [`matmul_wt`]; the attention stays f32). For an evaluation run, set it once
/// before the model runs (`qwen3-quant eval --compute bf16`).
pub fn set_compute(c: Compute) {
    COMPUTE.store(c as u8, Ordering::Relaxed);
}

/// The arithmetic [`set_compute`] selected (f32 by default).
pub fn compute() -> Compute {
    if COMPUTE.load(Ordering::Relaxed) == Compute::Bf16 as u8 {
        Compute::Bf16
    } else {
        Compute::F32
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as f32.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// How the blocked kernel multiplies.
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    F32,
    /// bf16 pairs and `vdpbf16ps`.
    Bf16,
    /// Operands rounded to bf16 while packing, f32 tiles (no AVX-512-BF16).
    Bf16Emulated,
}

#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
impl Flavor {
    fn current() -> Flavor {
        match compute() {
            Compute::F32 => Flavor::F32,
            Compute::Bf16 if wide() && crate::dispatch::cpu().avx512bf16 => Flavor::Bf16,
            Compute::Bf16 => Flavor::Bf16Emulated,
        }
    }
    /// Packed units (f32 values or bf16 pairs) of `k` columns.
    fn units(self, k: usize) -> usize {
        if self == Flavor::Bf16 {
            k.div_ceil(2)
        } else {
            k
        }
    }
}

/// The `exp` every vectorised exponential of this crate evaluates (and the model's softmax, in
/// scalar form): Cody–Waite reduction `r = x − n·LN2_HI − n·LN2_LO` with `n = round(x·log2 e)`,
/// then `exp(r) ≈ 1 + r + r²·p(r)`, `p` the Cephes `expf` minimax polynomial (coefficients
/// highest degree first, Horner order), and `exp(x) = 2ⁿ·exp(r)`: about 2 ulp.
pub mod exp_poly {
    /// The high part of ln 2 (exact in few bits, so `n·LN2_HI` is exact).
    pub const LN2_HI: f32 = 0.693_359_4;
    /// ln 2 − `LN2_HI`.
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// `p(r)`'s coefficients, highest degree first.
    pub const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
}

/// How many threads a dense product may use.
fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    // Tiny products are faster on one thread than paying rayon's fork/join.
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * n * k < 64 * 64 * 64 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// An RMSNorm applied to each row of the left operand as it is read:
/// `x̂[i, j] = weight[j] · (x[i, j] · inv_rms[i])`, bit for bit what `rms_norm` computes.
#[derive(Clone, Copy, Debug)]
pub struct RowNorm<'a> {
    /// `1 / sqrt(mean(x[i]²) + eps)` of each row.
    pub inv_rms: &'a [f32],
    /// The norm's weight, one per column.
    pub weight: &'a [f32],
}

/// The left operand of a product: `m` rows of `k` values, row `i` at `x[i·rs..]`.
#[derive(Clone, Copy, Debug)]
pub struct Lhs<'a> {
    /// Row-major values.
    pub x: &'a [f32],
    /// Rows.
    pub m: usize,
    /// Columns (the reduction length).
    pub k: usize,
    /// Row stride (≥ `k`).
    pub rs: usize,
    /// Normalise each row first.
    pub norm: Option<RowNorm<'a>>,
}

impl<'a> Lhs<'a> {
    /// A contiguous `[m, k]` operand.
    pub fn new(x: &'a [f32], m: usize, k: usize) -> Self {
        Lhs {
            x,
            m,
            k,
            rs: k,
            norm: None,
        }
    }

    /// The same operand, RMS-normalised on the fly.
    pub fn normed(self, norm: RowNorm<'a>) -> Self {
        Lhs {
            norm: Some(norm),
            ..self
        }
    }

    fn check(&self) {
        assert!(self.rs >= self.k, "dense: row stride below k");
        assert!(
            self.m == 0 || self.x.len() >= (self.m - 1) * self.rs + self.k,
            "dense: lhs too short"
        );
        if let Some(n) = self.norm {
            assert!(
                n.inv_rms.len() >= self.m && n.weight.len() >= self.k,
                "dense: norm too short"
            );
        }
    }

    /// The operand as a contiguous `[m, k]` buffer, normalised if asked (for products the
    /// fused kernels do not run, e.g. packed or activation-quantized weights).
    pub fn materialise(&self) -> std::borrow::Cow<'a, [f32]> {
        match self.norm {
            None if self.rs == self.k => std::borrow::Cow::Borrowed(&self.x[..self.m * self.k]),
            _ => {
                let mut out = Vec::with_capacity(self.m * self.k);
                for i in 0..self.m {
                    let row = &self.x[i * self.rs..i * self.rs + self.k];
                    match self.norm {
                        Some(n) => {
                            let inv = n.inv_rms[i];
                            out.extend(row.iter().zip(n.weight).map(|(v, w)| w * (v * inv)));
                        }
                        None => out.extend_from_slice(row),
                    }
                }
                std::borrow::Cow::Owned(out)
            }
        }
    }
}

/// What a product does with the rows it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// `y = x · Wᵀ`.
    Store,
    /// `y += x · Wᵀ` (a residual connection).
    Add,
}

/// `y[:, c..c + n_i] (=|+=) lhs · W_iᵀ` for the weights `W_i` (`[n_i, k]` row-major, `n_i =
/// len / k`) side by side, `c` the sum of the earlier `n_i`: one pass over `lhs` for several
/// linears of the same input (q, k and v). `y` has rows of stride `y_rs ≥ Σ n_i`.
///
/// ```
/// use qwen3_quant_kernels::dense::{gemm_wt, Epilogue, Lhs};
/// let x = [1.0f32, 2.0]; // [1, 2]
/// let (a, b) = ([1.0f32, 0.0, 0.0, 1.0], [1.0f32, 1.0]); // [2, 2] and [1, 2]
/// let mut y = [0.0f32; 3];
/// gemm_wt(Lhs::new(&x, 1, 2), &[&a, &b], Epilogue::Store, &mut y, 3);
/// assert_eq!(y, [1.0, 2.0, 3.0]);
/// ```
///
/// # Panics
/// If a slice is shorter than its shape says or a weight's length is not a multiple of `k`
/// (internal invariants; callers check shapes).
pub fn gemm_wt(lhs: Lhs<'_>, weights: &[&[f32]], epilogue: Epilogue, y: &mut [f32], y_rs: usize) {
    lhs.check();
    let k = lhs.k;
    let n: usize = weights
        .iter()
        .map(|w| {
            assert!(
                k > 0 && w.len() % k == 0,
                "dense: weight length not a multiple of k"
            );
            w.len() / k
        })
        .sum();
    if lhs.m == 0 || n == 0 {
        return;
    }
    assert!(
        y_rs >= n && y.len() >= (lhs.m - 1) * y_rs + n,
        "dense: y too short"
    );
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    if blocked_available(lhs.m) {
        let packed = pack_concat(weights, k);
        let store = match epilogue {
            Epilogue::Store => avx512::TileStore::Overwrite,
            Epilogue::Add => avx512::TileStore::Add,
        };
        blocked(&lhs, &packed, n, store, y, y_rs);
        return;
    }
    let x = rounded(lhs.materialise());
    let mut col = 0;
    for w in weights {
        let ni = w.len() / k;
        let w = rounded(std::borrow::Cow::Borrowed(w));
        gemm_crate_wt(
            &x,
            lhs.m,
            k,
            &w,
            ni,
            &mut y[col..],
            y_rs,
            epilogue == Epilogue::Add,
        );
        col += ni;
    }
}

/// The values rounded to bf16 when [`Compute::Bf16`] is selected (the fallback path).
fn rounded(v: std::borrow::Cow<'_, [f32]>) -> std::borrow::Cow<'_, [f32]> {
    match compute() {
        Compute::F32 => v,
        Compute::Bf16 => std::borrow::Cow::Owned(v.iter().map(|&x| round_bf16(x)).collect()),
    }
}

/// SwiGLU's input of `down_proj`: `y[:, 0..n] = silu(lhs · gateᵀ) ⊙ (lhs · upᵀ)`, gate and up
/// `[n, k]`, computed tile by tile so the `[m, n]` gate and up products are never stored.
///
/// ```
/// use qwen3_quant_kernels::dense::{gemm_swiglu, Lhs};
/// let x = [1.0f32, -1.0];
/// let (gate, up) = ([2.0f32, 0.0], [1.0f32, 1.0]);
/// let mut y = [0.0f32; 1];
/// gemm_swiglu(Lhs::new(&x, 1, 2), &gate, &up, &mut y, 1);
/// let silu2 = 2.0 / (1.0 + (-2.0f32).exp());
/// assert!((y[0] - silu2 * 0.0).abs() < 1e-6);
/// ```
///
/// # Panics
/// As [`gemm_wt`]; also if `gate` and `up` differ in length.
pub fn gemm_swiglu(lhs: Lhs<'_>, gate: &[f32], up: &[f32], y: &mut [f32], y_rs: usize) {
    lhs.check();
    let k = lhs.k;
    assert!(
        k > 0 && gate.len() == up.len() && gate.len() % k == 0,
        "dense: gate/up shapes"
    );
    let n = gate.len() / k;
    if lhs.m == 0 || n == 0 {
        return;
    }
    assert!(
        y_rs >= n && y.len() >= (lhs.m - 1) * y_rs + n,
        "dense: y too short"
    );
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    if blocked_available(lhs.m) {
        let packed = pack_pairs(gate, up, k);
        blocked(&lhs, &packed, n, avx512::TileStore::SiluMul, y, y_rs);
        return;
    }
    let x = rounded(lhs.materialise());
    let (gate, up) = (rounded(gate.into()), rounded(up.into()));
    let mut g = vec![0.0f32; lhs.m * n];
    let mut u = vec![0.0f32; lhs.m * n];
    gemm_crate_wt(&x, lhs.m, k, &gate, n, &mut g, n, false);
    gemm_crate_wt(&x, lhs.m, k, &up, n, &mut u, n, false);
    for i in 0..lhs.m {
        let (gr, ur) = (&g[i * n..(i + 1) * n], &u[i * n..(i + 1) * n]);
        for ((o, &a), &b) in y[i * y_rs..i * y_rs + n].iter_mut().zip(gr).zip(ur) {
            *o = silu(a) * b;
        }
    }
}

/// [`gemm_swiglu`] with the weights supplied a block of rows at a time: `fill(r0, gate, up)`
/// writes rows `r0..r0 + gate.len() / k` of both weights, and the block's outputs go to columns
/// `r0..` of `y`. For a caller that holds `gate` and `up` only in a compressed form (quantized
/// codes): at most `2·block·k` f32 of weights exist at once instead of `2·n·k`.
///
/// Bit for bit [`gemm_swiglu`] on the whole weights where the blocked kernel takes the product
/// (each output is one FMA chain over `k`, whatever the split of the weight's rows); elsewhere
/// (the `gemm` crate chooses its blocking from the shape) the weights are filled whole, once.
///
/// # Errors
/// The first error `fill` returns.
///
/// # Panics
/// As [`gemm_swiglu`], on inconsistent shapes.
pub fn gemm_swiglu_by_rows<E>(
    lhs: Lhs<'_>,
    n: usize,
    block: usize,
    mut fill: impl FnMut(usize, &mut [f32], &mut [f32]) -> Result<(), E>,
    y: &mut [f32],
    y_rs: usize,
) -> Result<(), E> {
    let k = lhs.k;
    let block = if swiglu_row_blocks_are_exact(lhs.m) {
        block.clamp(1, n.max(1))
    } else {
        n.max(1)
    };
    let (mut g, mut u) = (vec![0f32; block * k], vec![0f32; block * k]);
    for r0 in (0..n).step_by(block) {
        let nr = block.min(n - r0);
        fill(r0, &mut g[..nr * k], &mut u[..nr * k])?;
        gemm_swiglu(lhs, &g[..nr * k], &u[..nr * k], &mut y[r0..], y_rs);
    }
    Ok(())
}

/// Whether [`gemm_swiglu`] on `m` rows gives each output the same bits whatever the number of
/// weight rows in the call (the blocked kernel: one FMA chain per output).
pub fn swiglu_row_blocks_are_exact(m: usize) -> bool {
    blocked_available(m)
}

/// `ln Σ exp(row)`, stable (the maximum is subtracted first), with the sum accumulated in f64:
/// the log-softmax normaliser of one row of logits. With AVX-512 (AVX2) the exponentials are
/// 16-lane (8-lane) polynomials (about 2 ulp, summed in f64 lanes); elsewhere libm's `exp` in
/// f64.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max as f64;
    }
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    match crate::dispatch::active_kernel() {
        // SAFETY: AVX-512F is selected, so the CPU has it.
        crate::KernelChoice::Avx512 => {
            return max as f64 + unsafe { avx512::sum_exp_minus(row, max) }.ln()
        }
        // SAFETY: AVX2 + FMA is selected, so the CPU has them.
        crate::KernelChoice::Avx2 => {
            return max as f64 + unsafe { avx2::sum_exp_minus(row, max) }.ln()
        }
        _ => {}
    }
    let m = max as f64;
    m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

/// `x · sigmoid(x)`, as the model's scalar path computes it.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `g[i] = silu(g[i]) · u[i]`: SwiGLU's combination of separately computed gate and up
/// products (packed weights), with the vector `exp` of the fused dense epilogue where the CPU
/// has AVX2, so both paths round alike.
///
/// # Panics
/// If `u` is shorter than `g`.
pub fn silu_mul_in_place(g: &mut [f32], u: &[f32]) {
    assert!(u.len() >= g.len(), "silu_mul_in_place: u shorter than g");
    #[cfg(target_arch = "x86_64")]
    if matches!(
        crate::active_kernel(),
        crate::KernelChoice::Avx2 | crate::KernelChoice::Avx512
    ) {
        // SAFETY: either choice implies AVX2 and FMA (the dispatcher clamps to the CPU); u
        // covers g.
        unsafe { avx2::silu_mul_in_place(g, u) };
        return;
    }
    for (a, &b) in g.iter_mut().zip(u) {
        *a = silu(*a) * b;
    }
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` (overwrites `y`).
///
/// # Panics
/// If a slice is shorter than its shape says (an internal invariant; callers check shapes).
pub fn matmul_wt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && y.len() >= m * n,
        "matmul_wt: shape mismatch"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y[..m * n].fill(0.0);
        return;
    }
    if compute() == Compute::Bf16
        || cfg!(all(target_arch = "x86_64", qwen3_avx512)) && blocked_available(m)
    {
        gemm_wt(Lhs::new(x, m, k), &[&w[..n * k]], Epilogue::Store, y, n);
        return;
    }
    gemm_crate_wt(x, m, k, w, n, y, n, false);
}

/// A `[n, k]` weight matrix packed once for the blocked kernel, for one operand multiplied
/// with many blocks of rows ([`matmul_wt_packed`]): the perplexity head runs `lm_head` over
/// blocks of 128 rows whose logits stay in cache, and would otherwise repack the whole
/// embedding table for each block. Products are bit for bit those of [`matmul_wt`].
///
/// ```
/// use qwen3_quant_kernels::dense::{matmul_wt, matmul_wt_packed, PackedWeight};
/// let w: Vec<f32> = (0..3 * 4).map(|i| i as f32 * 0.5).collect();
/// let x: Vec<f32> = (0..20 * 4).map(|i| (i % 7) as f32 - 3.0).collect();
/// let packed = PackedWeight::new(&w, 3, 4);
/// let (mut a, mut b) = (vec![0.0f32; 20 * 3], vec![0.0f32; 20 * 3]);
/// matmul_wt_packed(&x, 20, &packed, &mut a);
/// matmul_wt(&x, 20, 4, &w, 3, &mut b);
/// assert_eq!(a, b);
/// ```
pub struct PackedWeight<'w> {
    w: &'w [f32],
    n: usize,
    k: usize,
    /// The panels, with the arithmetic and panel shape they were packed for (a product under
    /// another falls back to [`matmul_wt`]).
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    packed: Option<(PackedB, Flavor, (usize, usize))>,
}

/// The largest weight [`PackedWeight::new`] packs (a copy of it is kept): 1 GiB.
pub const MAX_PACKED_WEIGHT_BYTES: usize = 1 << 30;

impl<'w> PackedWeight<'w> {
    /// Packs `w` (`[n, k]`, row-major) when the blocked kernel runs here and the packed copy
    /// stays within [`MAX_PACKED_WEIGHT_BYTES`]; otherwise keeps the reference only.
    ///
    /// # Panics
    /// If `w` is shorter than `n·k`.
    pub fn new(w: &'w [f32], n: usize, k: usize) -> Self {
        assert!(w.len() >= n * k, "PackedWeight: w too short");
        let w = &w[..n * k];
        #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
        {
            let fits = n * k * 4 <= MAX_PACKED_WEIGHT_BYTES;
            let packed = (fits && k > 0 && n > 0 && blocked_available(MIN_BLOCKED_ROWS))
                .then(|| (pack_concat(&[w], k), Flavor::current(), panel_shape()));
            PackedWeight { w, n, k, packed }
        }
        #[cfg(not(all(target_arch = "x86_64", qwen3_avx512)))]
        PackedWeight { w, n, k }
    }
}

/// `y[m, n] = x[m, k] · wᵀ` for a [`PackedWeight`]: [`matmul_wt`] without packing `w` again.
///
/// # Panics
/// If `x` or `y` is shorter than its shape.
pub fn matmul_wt_packed(x: &[f32], m: usize, w: &PackedWeight<'_>, y: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    assert!(
        x.len() >= m * k && y.len() >= m * n,
        "matmul_wt_packed: shape mismatch"
    );
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    if let Some((packed, flavor, shape)) = &w.packed {
        if m > 0 && blocked_available(m) && *flavor == Flavor::current() && *shape == panel_shape()
        {
            blocked(
                &Lhs::new(&x[..m * k], m, k),
                packed,
                n,
                avx512::TileStore::Overwrite,
                y,
                n,
            );
            return;
        }
    }
    matmul_wt(x, m, k, w.w, n, y);
}

/// The `gemm` crate's `y (+)= x · wᵀ` with `y` rows of stride `y_rs`.
#[allow(clippy::too_many_arguments)]
fn gemm_crate_wt(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    y: &mut [f32],
    y_rs: usize,
    accumulate: bool,
) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && y.len() >= (m - 1) * y_rs + n,
        "matmul_wt: shape mismatch"
    );
    // SAFETY: the asserts above guarantee every index gemm touches is inside the slices:
    // lhs (i, p) at i*k + p, rhs (p, j) at j*k + p, dst (i, j) at i*y_rs + j.
    unsafe {
        gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            y_rs as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

/// Whether the blocked kernel (AVX-512, or AVX2 + FMA) takes a product of `m` rows.
pub(crate) fn blocked_available(m: usize) -> bool {
    cfg!(all(target_arch = "x86_64", qwen3_avx512))
        && m >= MIN_BLOCKED_ROWS
        && matches!(
            crate::dispatch::active_kernel(),
            crate::KernelChoice::Avx512 | crate::KernelChoice::Avx2
        )
}

/// Whether the blocked kernel runs its AVX-512 tiles (else the AVX2 ones, with activation
/// panels of [`avx2::MR`] rows, packed by [`avx2::transpose4`]).
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
fn wide() -> bool {
    crate::dispatch::active_kernel() == crate::KernelChoice::Avx512
}

/// Rows of an activation panel and columns of a weight panel of the blocked kernel in use.
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
fn panel_shape() -> (usize, usize) {
    if wide() {
        (avx512::MR, avx512::NR)
    } else {
        (avx2::MR, avx2::NR)
    }
}

thread_local! {
    /// Packed `X` blocks, reused across calls on this thread.
    static A_PANELS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Packed weights, reused across calls made from this thread (taken out during a call, so a
    /// nested call on the same thread simply allocates its own).
    static B_PANELS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of at least `len` floats whose contents are unspecified (every float the kernels
/// read is written first), from `cell` when it is free.
fn scratch(cell: &'static std::thread::LocalKey<RefCell<Vec<f32>>>, len: usize) -> Vec<f32> {
    let mut v = cell.with(|c| std::mem::take(&mut *c.borrow_mut()));
    if v.len() < len {
        v = vec![0.0f32; len];
    }
    v
}

fn give_back(cell: &'static std::thread::LocalKey<RefCell<Vec<f32>>>, v: Vec<f32>) {
    cell.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < v.len() {
            *c = v;
        }
    });
}

/// Packed weights: panel `p` (`nr` output columns, [`panel_shape`]) is `[k][nr]` at `p·k·nr`.
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
struct PackedB {
    data: Vec<f32>,
    panels: usize,
    /// Packed units per panel row (`k`, or `⌈k/2⌉` bf16 pairs).
    units: usize,
}

#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
impl Drop for PackedB {
    fn drop(&mut self) {
        give_back(&B_PANELS, std::mem::take(&mut self.data));
    }
}

/// Packs `[rows, k]` sources lane by lane: `src(p, l)` is the row feeding lane `l` of panel `p`.
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
fn pack_b<'w>(
    flavor: Flavor,
    panels: usize,
    k: usize,
    src: impl Fn(usize, usize) -> Option<&'w [f32]> + Sync,
) -> PackedB {
    use avx512::NR;
    let ku = flavor.units(k);
    let (wide, nr) = (wide(), panel_shape().1);
    let mut data = scratch(&B_PANELS, panels * ku * nr);
    data[..panels * ku * nr]
        .par_chunks_mut(ku * nr)
        .enumerate()
        .for_each(|(p, dst)| {
            if !wide {
                // F32 or Bf16Emulated (Bf16 needs the wide kernel).
                let round = flavor == Flavor::Bf16Emulated;
                for l4 in (0..nr).step_by(4) {
                    let ptrs: [*const f32; 4] = std::array::from_fn(|r| {
                        src(p, l4 + r).map_or(std::ptr::null(), |row| row[..k].as_ptr())
                    });
                    // SAFETY: `blocked_available` checked AVX2 + FMA; each source row holds `k`
                    // floats; the writes `u·nr + l4 + r` (u < k, r < 4) stay in this panel.
                    unsafe { avx2::transpose4(ptrs, k, None, round, dst[l4..].as_mut_ptr(), nr) };
                }
                return;
            }
            if flavor == Flavor::Bf16Emulated {
                // AVX-512 without BF16: scalar rounding (the AVX2 path rounds in its transposes).
                for l in 0..nr {
                    match src(p, l) {
                        Some(row) => row[..k]
                            .iter()
                            .enumerate()
                            .for_each(|(u, &v)| dst[u * nr + l] = round_bf16(v)),
                        None => (0..ku).for_each(|u| dst[u * nr + l] = 0.0),
                    }
                }
                return;
            }
            for half in 0..NR / 16 {
                let ptrs: [*const f32; 16] = std::array::from_fn(|i| {
                    src(p, half * 16 + i).map_or(std::ptr::null(), |r| r[..k].as_ptr())
                });
                // SAFETY: `blocked_available` checked AVX-512F (and `Flavor::current` BF16 for
                // `Flavor::Bf16`); each source row holds `k` floats; the writes
                // `c·NR + half·16 + r` (c < ku, r < 16) stay inside this panel's `ku·NR` lanes.
                unsafe {
                    transpose_into(
                        flavor,
                        &ptrs,
                        k,
                        None,
                        dst[half * 16..].as_mut_ptr(),
                        NR,
                        16,
                    )
                };
            }
        });
    PackedB {
        data,
        panels,
        units: ku,
    }
}

/// [`avx512::transpose_rows`] of f32 values or, for [`Flavor::Bf16`], its bf16-pair
/// counterpart; `store_lanes` of each output row are written.
///
/// # Safety
/// As the transpose `flavor` selects (AVX-512F; AVX-512-BF16 for [`Flavor::Bf16`]), with
/// `floats` values per source row.
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
unsafe fn transpose_into(
    flavor: Flavor,
    src: &[*const f32; 16],
    floats: usize,
    norm: Option<avx512::LoadNorm<'_>>,
    dst: *mut f32,
    ld: usize,
    store_lanes: usize,
) {
    let store = avx512::lanes(store_lanes);
    // SAFETY: forwarded caller contract.
    unsafe {
        if flavor == Flavor::Bf16 {
            avx512::transpose_rows_bf16(src, floats, norm, dst, ld, store)
        } else {
            avx512::transpose_rows(src, floats, norm, dst, ld, store)
        }
    }
}

/// Panels of the weights side by side (output column `j` = lane `j % nr` of panel `j / nr`).
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
fn pack_concat(weights: &[&[f32]], k: usize) -> PackedB {
    let nr = panel_shape().1;
    let n: usize = weights.iter().map(|w| w.len() / k).sum();
    let row = |j: usize| -> Option<&[f32]> {
        let mut j = j;
        for w in weights {
            let ni = w.len() / k;
            if j < ni {
                return Some(&w[j * k..(j + 1) * k]);
            }
            j -= ni;
        }
        None
    };
    pack_b(Flavor::current(), n.div_ceil(nr), k, |p, l| row(p * nr + l))
}

/// Panels of `h` gate rows then the same `h` up rows (output columns `hp..hp + h`), `h` half a
/// panel's columns.
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
fn pack_pairs(gate: &[f32], up: &[f32], k: usize) -> PackedB {
    let n = gate.len() / k;
    let h = panel_shape().1 / 2;
    pack_b(Flavor::current(), n.div_ceil(h), k, |p, l| {
        let (w, j) = if l < h {
            (gate, p * h + l)
        } else {
            (up, p * h + l - h)
        };
        (j < n).then(|| &w[j * k..(j + 1) * k])
    })
}

/// Packs rows `i0..i0 + rows` and columns `k0..k0 + kc` of `lhs` into `MR`-row panels
/// `[units][MR]` (rows past the end are zero; bf16 pairs for [`Flavor::Bf16`]).
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
#[allow(clippy::too_many_arguments)]
fn pack_a(
    flavor: Flavor,
    lhs: &Lhs<'_>,
    i0: usize,
    rows: usize,
    k0: usize,
    kc: usize,
    dst: &mut [f32],
    row_buf: &mut [f32],
) {
    let (wide, mr) = (wide(), panel_shape().0);
    let ku = flavor.units(kc);
    for (r, panel) in dst[..rows.div_ceil(mr) * mr * ku]
        .chunks_mut(mr * ku)
        .enumerate()
    {
        let live = mr.min(rows - r * mr);
        let src = |i: usize| {
            let row = i0 + r * mr + i;
            &lhs.x[row * lhs.rs + k0..row * lhs.rs + k0 + kc]
        };
        if !wide {
            // F32 or Bf16Emulated (Bf16 needs the wide kernel).
            let round = flavor == Flavor::Bf16Emulated;
            for i4 in (0..mr).step_by(4) {
                let ptrs: [*const f32; 4] = std::array::from_fn(|j| {
                    if i4 + j < live {
                        src(i4 + j).as_ptr()
                    } else {
                        std::ptr::null()
                    }
                });
                let norm = lhs.norm.map(|n| {
                    let inv = std::array::from_fn(|j| {
                        if i4 + j < live {
                            n.inv_rms[i0 + r * mr + i4 + j]
                        } else {
                            0.0
                        }
                    });
                    (n.weight[k0..k0 + kc].as_ptr(), inv)
                });
                // SAFETY: `blocked_available` checked AVX2 + FMA; every non-null source is an
                // `lhs` row slice of `kc` floats, the norm weights `kc` floats; the writes
                // `u·mr + i4 + r` (u < kc, r < 4) stay inside this panel.
                unsafe { avx2::transpose4(ptrs, kc, norm, round, panel[i4..].as_mut_ptr(), mr) };
            }
            continue;
        }
        if flavor == Flavor::Bf16Emulated {
            // AVX-512 without BF16: scalar rounding (the AVX2 path rounds in its transposes).
            for i in 0..mr {
                if i >= live {
                    (0..ku).for_each(|u| panel[u * mr + i] = 0.0);
                    continue;
                }
                let vals = normalised(lhs, i0 + r * mr + i, k0, src(i), row_buf);
                vals.iter()
                    .enumerate()
                    .for_each(|(u, &v)| panel[u * mr + i] = round_bf16(v));
            }
            continue;
        }
        const MR: usize = avx512::MR;
        let ptrs: [*const f32; 16] = std::array::from_fn(|i| {
            if i < live {
                src(i).as_ptr()
            } else {
                std::ptr::null()
            }
        });
        let mut inv = [0f32; 16];
        if let Some(n) = lhs.norm {
            for (i, v) in inv.iter_mut().enumerate().take(live) {
                *v = n.inv_rms[i0 + r * MR + i];
            }
        }
        let norm = lhs.norm.map(|n| avx512::LoadNorm {
            inv: &inv,
            weight: n.weight[k0..k0 + kc].as_ptr(),
        });
        // SAFETY: `blocked_available` checked AVX-512F (and `Flavor::current` BF16 for
        // `Flavor::Bf16`); every non-null source is an `lhs` row slice of `kc` floats, the norm
        // weights `kc` floats; the writes `u·MR + i` (u < ku, i < MR) stay inside this panel.
        unsafe { transpose_into(flavor, &ptrs, kc, norm, panel.as_mut_ptr(), MR, MR) };
    }
}

/// Row `row` of `lhs` (columns `src`, starting at `k0`), RMS-normalised into `row_buf` if the
/// operand asks for it.
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
fn normalised<'a>(
    lhs: &Lhs<'_>,
    row: usize,
    k0: usize,
    src: &'a [f32],
    row_buf: &'a mut [f32],
) -> &'a [f32] {
    match lhs.norm {
        Some(n) => {
            let inv = n.inv_rms[row];
            let w = &n.weight[k0..k0 + src.len()];
            for ((o, &v), &w) in row_buf.iter_mut().zip(src).zip(w) {
                *o = w * (v * inv);
            }
            &row_buf[..src.len()]
        }
        None => src,
    }
}

/// The blocked product over packed weights: output columns `n` (SiluMul: 16 per panel, else 32).
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
fn blocked(
    lhs: &Lhs<'_>,
    b: &PackedB,
    n: usize,
    store: avx512::TileStore,
    y: &mut [f32],
    y_rs: usize,
) {
    use avx512::TileStore;
    let flavor = Flavor::current();
    let (wide, (mr, nr)) = (wide(), panel_shape());
    let (m, k) = (lhs.m, lhs.k);
    let kc_max = if store == TileStore::SiluMul {
        k
    } else {
        KC.min(k)
    };
    let mc = ((A_BLOCK_FLOATS / kc_max).max(mr) / mr * mr).min(m.div_ceil(mr) * mr);
    let m_blocks = m.div_ceil(mc);
    let threads = rayon::current_num_threads().max(1);
    let groups = (4 * threads).div_ceil(m_blocks).clamp(1, b.panels);
    let per_group = b.panels.div_ceil(groups);
    let out_per_panel = if store == TileStore::SiluMul {
        nr / 2
    } else {
        nr
    };
    let y_addr = y.as_mut_ptr() as usize;
    let task = |t: usize| {
        let (mb, g) = (t / groups, t % groups);
        let (i0, p0) = (mb * mc, g * per_group);
        let rows = mc.min(m - i0);
        let p1 = (p0 + per_group).min(b.panels);
        let mut abuf = scratch(&A_PANELS, mc * kc_max + kc_max);
        let (a, row_buf) = abuf.split_at_mut(mc * kc_max);
        let mut k0 = 0;
        while k0 < k {
            let kc = kc_max.min(k - k0);
            let ku = flavor.units(kc);
            pack_a(flavor, lhs, i0, rows, k0, kc, a, row_buf);
            let st = if k0 > 0 { TileStore::Add } else { store };
            for p in p0..p1 {
                let bp = &b.data[p * b.units * nr + flavor.units(k0) * nr..];
                let c0 = p * out_per_panel;
                let cols = out_per_panel.min(n - c0);
                for r in 0..rows.div_ceil(mr) {
                    let c = (y_addr as *mut f32).wrapping_add((i0 + r * mr) * y_rs + c0);
                    let ap = a[r * mr * ku..].as_ptr();
                    let tile_rows = mr.min(rows - r * mr);
                    // SAFETY: AVX-512F (`wide`) or AVX2 + FMA was checked by
                    // `blocked_available` (and AVX-512-BF16 by `Flavor::current`); the packed
                    // panels hold ku·mr and ku·nr units; the
                    // tile writes rows i0 + r·mr.. (< m) and columns c0..c0 + cols (≤ n ≤ y_rs)
                    // of y, whose length was asserted; tasks write disjoint (row block, panel
                    // range) parts of y.
                    unsafe {
                        if !wide {
                            avx2::tile(ku, ap, bp.as_ptr(), c, y_rs, tile_rows, cols, st);
                        } else if flavor == Flavor::Bf16 {
                            avx512::tile_bf16(
                                ku,
                                ap as *const u32,
                                bp.as_ptr() as *const u32,
                                c,
                                y_rs,
                                tile_rows,
                                cols,
                                st,
                            );
                        } else {
                            let ldb = avx512::NR;
                            avx512::tile(ku, ap, bp.as_ptr(), ldb, c, y_rs, tile_rows, cols, st);
                        }
                    }
                }
            }
            k0 += kc;
        }
        give_back(&A_PANELS, abuf);
    };
    let tasks = m_blocks * groups;
    if threads == 1 || (m * n * k) < 64 * 64 * 64 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// `y[m, n] = x[m, k] · b[k, n]` for a row-major `b` (used by attention: `P · V`).
pub fn matmul(x: &[f32], m: usize, k: usize, b: &[f32], n: usize, y: &mut [f32]) {
    matmul_strided(x, m, k, k, b, n, n, y, n, false);
}

/// General strided product `y = x · b` (or `y += x · b` with `accumulate`), all row-major with
/// explicit row strides, so attention can work on per-head column slices without copies.
///
/// `x` is `[m, k]` with row stride `x_rs`, `b` is `[k, n]` with row stride `b_rs`, `y` is `[m, n]`
/// with row stride `y_rs`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    x: &[f32],
    m: usize,
    k: usize,
    x_rs: usize,
    b: &[f32],
    n: usize,
    b_rs: usize,
    y: &mut [f32],
    y_rs: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(x.len() >= (m - 1) * x_rs + k, "matmul_strided: x too short");
    assert!(
        k == 0 || b.len() >= (k - 1) * b_rs + n,
        "matmul_strided: b too short"
    );
    assert!(y.len() >= (m - 1) * y_rs + n, "matmul_strided: y too short");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                y[i * y_rs..i * y_rs + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: bounds asserted above for the given strides.
    unsafe {
        gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            y_rs as isize,
            accumulate,
            x.as_ptr(),
            1,
            x_rs as isize,
            b.as_ptr(),
            1,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` with explicit row strides and no threading (for use inside
/// rayon tasks, e.g. `Q · Kᵀ` per attention head).
#[allow(clippy::too_many_arguments)]
pub fn matmul_wt_strided(
    x: &[f32],
    m: usize,
    k: usize,
    x_rs: usize,
    w: &[f32],
    n: usize,
    w_rs: usize,
    y: &mut [f32],
    y_rs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        x.len() >= (m - 1) * x_rs + k,
        "matmul_wt_strided: x too short"
    );
    assert!(
        w.len() >= (n - 1) * w_rs + k,
        "matmul_wt_strided: w too short"
    );
    assert!(
        y.len() >= (m - 1) * y_rs + n,
        "matmul_wt_strided: y too short"
    );
    // SAFETY: bounds asserted above for the given strides.
    unsafe {
        gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            y_rs as isize,
            false,
            x.as_ptr(),
            1,
            x_rs as isize,
            w.as_ptr(),
            w_rs as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_wt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += x[i * k + p] as f64 * w[j * k + p] as f64;
                }
                y[i * n + j] = s as f32;
            }
        }
        y
    }

    #[test]
    fn silu_mul_matches_the_scalar_definition() {
        // 21 elements: two vectors and a tail; large magnitudes saturate the exp clamp.
        let g: Vec<f32> = (0..21).map(|i| (i as f32 - 10.0) * 9.7).collect();
        let u: Vec<f32> = (0..21).map(|i| 0.5 - i as f32 * 0.125).collect();
        let mut y = g.clone();
        silu_mul_in_place(&mut y, &u);
        for ((&a, &gv), &uv) in y.iter().zip(&g).zip(&u) {
            let want = f64::from(gv) / (1.0 + (-f64::from(gv)).exp()) * f64::from(uv);
            assert!(
                (f64::from(a) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "silu({gv})·{uv}: {a} vs {want}"
            );
        }
    }

    /// Weights filled a block of rows at a time give the whole product's bits (where the
    /// blocked kernel runs: a `k` over two `KC` passes, blocks that split the 16- and 32-column
    /// panels); and exactly the requested rows are asked for.
    #[test]
    fn swiglu_by_row_blocks_equals_the_whole_product() {
        let _g = crate::test_support::hold_globals();
        let (m, k, n) = (40, KC + 200, 203);
        let x = data(m * k, 1);
        let (gate, up) = (data(n * k, 2), data(n * k, 3));
        let mut whole = vec![0f32; m * n];
        gemm_swiglu(Lhs::new(&x, m, k), &gate, &up, &mut whole, n);
        for block in [1, 7, 16, 33, 64, 203, 500] {
            let mut asked = Vec::new();
            let mut y = vec![f32::NAN; m * n];
            gemm_swiglu_by_rows(
                Lhs::new(&x, m, k),
                n,
                block,
                |r0, g: &mut [f32], u: &mut [f32]| {
                    asked.push((r0, g.len() / k));
                    g.copy_from_slice(&gate[r0 * k..r0 * k + g.len()]);
                    u.copy_from_slice(&up[r0 * k..r0 * k + u.len()]);
                    Ok::<(), ()>(())
                },
                &mut y,
                n,
            )
            .unwrap();
            assert_eq!(asked.iter().map(|a| a.1).sum::<usize>(), n, "block {block}");
            if swiglu_row_blocks_are_exact(m) {
                assert_eq!(asked.len(), n.div_ceil(block.min(n)), "block {block}");
                let same = y
                    .iter()
                    .zip(&whole)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "block {block}: not bit for bit the whole product");
            } else {
                close(&y, &whole, "swiglu by rows");
            }
        }
    }

    #[test]
    fn matmul_wt_matches_naive_on_odd_shapes() {
        let _g = crate::test_support::hold_globals();
        for &(m, k, n) in &[(1, 1, 1), (3, 17, 5), (65, 130, 33), (128, 64, 96)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
                .collect();
            let mut y = vec![f32::NAN; m * n];
            matmul_wt(&x, m, k, &w, n, &mut y);
            let r = naive_wt(&x, m, k, &w, n);
            for (a, b) in y.iter().zip(&r) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 131) % 1009) as f32 - 504.0) / 300.0)
            .collect()
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 2e-5 * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    /// Every kernel choice this CPU has (the blocked path and the `gemm` crate fallback), with
    /// the arithmetic `compute`.
    fn each_kernel(compute: Compute, f: impl Fn()) {
        let _g = crate::test_support::hold_globals();
        set_compute(compute);
        for c in crate::available_kernels() {
            crate::set_kernel_choice(Some(c));
            f();
        }
        crate::set_kernel_choice(None);
        set_compute(Compute::F32);
    }

    /// The register transpose that packs both GEMM operands moves exactly the values the scalar
    /// packing did: every length's tail, absent rows as zeros, partial store masks, and the
    /// normalisation's two products in the same order.
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    #[test]
    fn register_transpose_packs_like_the_scalar_loops() {
        if !crate::dispatch::cpu().avx512 {
            return;
        }
        for &(len, ld, store_lanes) in &[
            (1usize, 16usize, 16usize),
            (16, 16, 16),
            (37, 14, 14),
            (70, 32, 16),
        ] {
            let rows: Vec<Vec<f32>> = (0..16).map(|r| data(len, r + 1)).collect();
            let weight = data(len, 99);
            let inv: [f32; 16] = std::array::from_fn(|r| 0.5 + r as f32 / 7.0);
            for with_norm in [false, true] {
                let ptrs: [*const f32; 16] = std::array::from_fn(|r| {
                    if r % 5 == 3 {
                        std::ptr::null()
                    } else {
                        rows[r].as_ptr()
                    }
                });
                let norm = with_norm.then_some(avx512::LoadNorm {
                    inv: &inv,
                    weight: weight.as_ptr(),
                });
                let mut got = vec![f32::NAN; len * ld + 16];
                // SAFETY: AVX-512F checked; rows and weights hold `len` floats; `got` holds
                // every lane `c·ld + r` with r < 16.
                unsafe {
                    avx512::transpose_rows(
                        &ptrs,
                        len,
                        norm,
                        got.as_mut_ptr(),
                        ld,
                        avx512::lanes(store_lanes),
                    )
                };
                for c in 0..len {
                    for r in 0..store_lanes {
                        let want = if r % 5 == 3 {
                            0.0
                        } else if with_norm {
                            weight[c] * (rows[r][c] * inv[r])
                        } else {
                            rows[r][c]
                        };
                        let g = got[c * ld + r];
                        assert_eq!(g.to_bits(), want.to_bits(), "len {len} ld {ld} c {c} r {r}");
                    }
                }
                // Lanes outside the store mask are never written.
                if store_lanes < ld {
                    assert!(got[store_lanes].is_nan());
                }
            }
        }
    }

    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    #[test]
    fn vector_bf16_pairs_match_the_scalar_conversion() {
        if !crate::dispatch::cpu().avx512bf16 {
            return;
        }
        /// The scalar reference: a bf16 pair, `lo` in the low half (`half`'s rounding).
        fn pair(lo: f32, hi: f32) -> u32 {
            let b = |x: f32| u32::from(half::bf16::from_f32(x).to_bits());
            b(lo) | (b(hi) << 16)
        }
        // Ties in both directions, values that round up into the exponent, ±inf, NaN, and
        // every length's tail (odd lengths pair the last value with 0).
        let mut v: Vec<f32> = data(67, 3).into_iter().map(|a| a * 1e3).collect();
        v.extend([
            f32::from_bits(0x3f80_8000), // tie, even below: rounds down
            f32::from_bits(0x3f81_8000), // tie, odd below: rounds up
            f32::from_bits(0x3fff_ffff), // carries into the exponent
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -0.0,
            f32::MIN_POSITIVE,
        ]);
        for len in 0..v.len() {
            let want =
                |s: &[f32], u: usize| pair(s[2 * u], s.get(2 * u + 1).copied().unwrap_or(0.0));
            // Rows rotated so that every value meets every lane and position.
            let rows: Vec<Vec<f32>> = (0..16)
                .map(|r| (0..len).map(|j| v[(j + 5 * r) % v.len()]).collect())
                .collect();
            let ptrs: [*const f32; 16] = std::array::from_fn(|r| rows[r].as_ptr());
            let units = len.div_ceil(2);
            let mut packed = vec![0f32; units * 16];
            // SAFETY: AVX-512-BF16 checked; each row holds `len` floats; `packed` holds
            // `units · 16` lanes.
            unsafe {
                avx512::transpose_rows_bf16(&ptrs, len, None, packed.as_mut_ptr(), 16, 0xffff)
            };
            for u in 0..units {
                for (r, row) in rows.iter().enumerate() {
                    assert_eq!(
                        packed[u * 16 + r].to_bits(),
                        want(row, u),
                        "len {len} unit {u} row {r}"
                    );
                }
            }
        }
        let nan = [f32::NAN, 1.0];
        let ptrs: [*const f32; 16] = std::array::from_fn(|_| nan.as_ptr());
        let mut packed = [0f32; 16];
        // SAFETY: AVX-512-BF16 checked; each row holds 2 floats; one unit of 16 lanes.
        unsafe { avx512::transpose_rows_bf16(&ptrs, 2, None, packed.as_mut_ptr(), 16, 0xffff) };
        assert!(half::bf16::from_bits(packed[0].to_bits() as u16).is_nan());
    }

    #[test]
    fn bf16_products_are_f32_products_of_rounded_operands() {
        for &(m, k, n) in &[(3, 7, 5), (40, 515, 70), (33, 64, 16)] {
            // Small values: sums of order 1, so silu(g)·u does not amplify rounding.
            let small = |v: Vec<f32>| v.into_iter().map(|a| a * 0.05).collect::<Vec<f32>>();
            let x = small(data(m * k, 7));
            let w = data(n * k, 8);
            let up = data(n * k, 9);
            let gamma = data(k, 10);
            let inv: Vec<f32> = (0..m).map(|i| 0.7 + i as f32 * 0.003).collect();
            let xn: Vec<f32> = (0..m * k)
                .map(|t| round_bf16(gamma[t % k] * (x[t] * inv[t / k])))
                .collect();
            let r = |v: &[f32]| v.iter().map(|&a| round_bf16(a)).collect::<Vec<f32>>();
            let want = naive_wt(&xn, m, k, &r(&w), n);
            let want_u = naive_wt(&xn, m, k, &r(&up), n);
            // The f32 product differs from the bf16 one by far more than the tolerance.
            let exact = naive_wt(&x, m, k, &w, n);
            assert!(exact
                .iter()
                .zip(&naive_wt(&r(&x), m, k, &r(&w), n))
                .any(|(a, b)| (a - b).abs() > 1e-4 * (1.0 + b.abs())));
            each_kernel(Compute::Bf16, || {
                let lhs = Lhs::new(&x, m, k).normed(RowNorm {
                    inv_rms: &inv,
                    weight: &gamma,
                });
                let mut y = vec![f32::NAN; m * n];
                gemm_wt(lhs, &[&w], Epilogue::Store, &mut y, n);
                close(&y, &want, "bf16 gemm_wt");
                let mut y = vec![f32::NAN; m * n];
                gemm_swiglu(lhs, &w, &up, &mut y, n);
                let sw: Vec<f32> = want
                    .iter()
                    .zip(&want_u)
                    .map(|(&g, &u)| silu(g) * u)
                    .collect();
                close(&y, &sw, "bf16 gemm_swiglu");
                let xr = r(&x);
                let mut y = vec![f32::NAN; m * n];
                matmul_wt(&x, m, k, &w, n, &mut y);
                close(&y, &naive_wt(&xr, m, k, &r(&w), n), "bf16 matmul_wt");
            });
        }
    }

    #[test]
    fn log_sum_exp_matches_f64_on_every_kernel() {
        // The vectorised exponentials (AVX-512, AVX2) are within a few f32 ulp of libm's f64
        // exp, so the normaliser is within 1e-6 of the f64 reference; tails of every length,
        // −inf entries and terms far below the maximum (which must count as 0, not as the
        // clamped exp(−87)).
        let _g = crate::test_support::hold_globals();
        let mut rows: Vec<Vec<f32>> = [1, 7, 8, 9, 33, 8192]
            .iter()
            .map(|&n| data(n, n).iter().map(|v| v * 12.0).collect())
            .collect();
        rows.push(vec![f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY, -1.0, 0.5]);
        rows.push((0..40).map(|i| if i == 5 { 0.0 } else { -200.0 }).collect());
        for c in crate::available_kernels() {
            crate::set_kernel_choice(Some(c));
            for row in &rows {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let want = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
                let got = log_sum_exp(row);
                assert!(
                    (got - want).abs() <= 1e-6,
                    "{c:?} len {}: {got} vs {want}",
                    row.len()
                );
            }
        }
        crate::set_kernel_choice(None);
    }

    #[test]
    fn blocked_kernels_are_fma_chains_in_k_order() {
        // Both blocked kernels (AVX-512 and AVX2 + FMA) compute each output as one fused
        // multiply-add chain over k per KC block, the blocks added in order: the same bits on
        // every x86-64 CPU, whichever tile width it has. Edges of both tile shapes, k over KC.
        let kernels: Vec<_> = crate::available_kernels()
            .into_iter()
            .filter(|c| matches!(c, crate::KernelChoice::Avx2 | crate::KernelChoice::Avx512))
            .collect();
        for &(m, k, n) in &[
            (16, 5, 7),
            (29, 700, 33),
            (45, 1030, 40),
            (13 * 12 + 5, 64, 70),
        ] {
            let (rs, y_rs) = (k + 3, n + 2);
            let (x, w, gamma, base) = (
                data(m * rs, 1),
                data(n * k, 2),
                data(k, 3),
                data(m * y_rs, 4),
            );
            let inv: Vec<f32> = (0..m).map(|i| 0.5 + i as f32 * 0.01).collect();
            for &c in &kernels {
                let _g = crate::test_support::hold_globals();
                crate::set_kernel_choice(Some(c));
                for epi in [Epilogue::Store, Epilogue::Add] {
                    let mut y = base.clone();
                    let lhs = Lhs::new(&x, m, k).normed(RowNorm {
                        inv_rms: &inv,
                        weight: &gamma,
                    });
                    let lhs = Lhs { rs, ..lhs };
                    gemm_wt(lhs, &[&w], epi, &mut y, y_rs);
                    for i in 0..m {
                        for j in 0..n {
                            let mut want = if epi == Epilogue::Add {
                                base[i * y_rs + j]
                            } else {
                                0.0
                            };
                            for k0 in (0..k).step_by(KC) {
                                let acc = (k0..(k0 + KC).min(k)).fold(0f32, |acc, p| {
                                    let a = gamma[p] * (x[i * rs + p] * inv[i]);
                                    a.mul_add(w[j * k + p], acc)
                                });
                                want = if k0 == 0 && epi == Epilogue::Store {
                                    acc
                                } else {
                                    want + acc
                                };
                            }
                            assert_eq!(
                                y[i * y_rs + j].to_bits(),
                                want.to_bits(),
                                "{c:?} {m}x{k}x{n} ({i}, {j})"
                            );
                        }
                    }
                }
                crate::set_kernel_choice(None);
            }
        }
    }

    #[test]
    fn fused_products_match_the_straightforward_ones() {
        // Odd shapes: row/column edges of the 14 × 32 tile, k over KC, strided rows.
        for &(m, k, n1, n2) in &[
            (1, 3, 2, 1),
            (17, 5, 33, 7),
            (45, 700, 40, 24),
            (130, 64, 96, 0),
        ] {
            let rs = k + 3;
            let x = data(m * rs, 1);
            let (w1, w2) = (data(n1 * k, 2), data(n2 * k, 3));
            let gamma = data(k, 4);
            let inv: Vec<f32> = (0..m).map(|i| 0.5 + i as f32 * 0.01).collect();
            // Reference: normalise, then each product with the naive loop.
            let xn: Vec<f32> = (0..m)
                .flat_map(|i| (0..k).map(move |j| (i, j)))
                .map(|(i, j)| gamma[j] * (x[i * rs + j] * inv[i]))
                .collect();
            let (r1, r2) = (naive_wt(&xn, m, k, &w1, n1), naive_wt(&xn, m, k, &w2, n2));
            let n = n1 + n2;
            let y_rs = n + 5;
            let base = data(m * y_rs, 5);
            each_kernel(Compute::F32, || {
                let lhs = Lhs {
                    x: &x,
                    m,
                    k,
                    rs,
                    norm: None,
                }
                .normed(RowNorm {
                    inv_rms: &inv,
                    weight: &gamma,
                });
                for epi in [Epilogue::Store, Epilogue::Add] {
                    let mut y = base.clone();
                    gemm_wt(lhs, &[&w1, &w2], epi, &mut y, y_rs);
                    for i in 0..m {
                        let add = |j: usize| {
                            if epi == Epilogue::Add {
                                base[i * y_rs + j]
                            } else {
                                0.0
                            }
                        };
                        let want: Vec<f32> = (0..n1)
                            .map(|j| add(j) + r1[i * n1 + j])
                            .chain((0..n2).map(|j| add(n1 + j) + r2[i * n2 + j]))
                            .collect();
                        close(&y[i * y_rs..i * y_rs + n], &want, "gemm_wt");
                        assert_eq!(
                            y[i * y_rs + n..(i + 1) * y_rs],
                            base[i * y_rs + n..(i + 1) * y_rs]
                        );
                    }
                }
                if n2 == 0 {
                    return;
                }
                let up = data(n1 * k, 6);
                let ru = naive_wt(&xn, m, k, &up, n1);
                let mut y = base.clone();
                gemm_swiglu(lhs, &w1, &up, &mut y, y_rs);
                for i in 0..m {
                    let want: Vec<f32> = (0..n1)
                        .map(|j| silu(r1[i * n1 + j]) * ru[i * n1 + j])
                        .collect();
                    close(&y[i * y_rs..i * y_rs + n1], &want, "gemm_swiglu");
                    assert_eq!(
                        y[i * y_rs + n1..(i + 1) * y_rs],
                        base[i * y_rs + n1..(i + 1) * y_rs]
                    );
                }
            });
        }
    }

    #[test]
    fn strided_product_accumulates() {
        let (m, k, n) = (4, 3, 2);
        let x: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32) * 0.5).collect();
        let mut y = vec![1.0f32; m * n];
        matmul_strided(&x, m, k, k, &b, n, n, &mut y, n, true);
        for i in 0..m {
            for j in 0..n {
                let mut s = 1.0;
                for p in 0..k {
                    s += x[i * k + p] * b[p * n + j];
                }
                assert!((y[i * n + j] - s).abs() < 1e-4);
            }
        }
    }
}
