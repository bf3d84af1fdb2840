//! Weight-activation integer products (SmoothQuant W8A8, W4A8): symmetric int8 weight codes with
//! one scale per output row, times activations quantized per token to symmetric codes of at most
//! 8 bits, with exact i32 accumulation.
//!
//! `y[i, r] = (Σ_k xq[i,k] · w[r,k]) as f32 · (x_scales[i] · w_scales[r])`. The integer sum is
//! exact in every implementation as long as it fits in i32, which holds for `cols ≤`
//! [`MAX_COLS`] with codes in `[-128, 127]`; the final scaling is the same f32 expression
//! everywhere, so all implementations agree bit for bit.
//!
//! # Layout and kernels
//! [`Int8Matrix`] stores rows in panels of 16: for each group of 4 columns, 64 bytes holding the
//! 4 codes of each of the 16 rows, as `code + 128` (`code ^ 0x80`). That is the unsigned operand
//! of AVX-512-VNNI's `vpdpbusd`, which multiplies it with 4 signed activation codes broadcast
//! from memory and adds into 16 i32 lanes, one per row; `128·Σ_k xq[i,k]`, computed while
//! quantizing, removes the offset. The VNNI kernel keeps a tile of 6 tokens × 4 panels (64 rows)
//! in 24 accumulators for the whole reduction. Without VNNI (AVX2, NEON, scalar) the same layout
//! is read back as signed codes and multiplied exactly in 16-bit lanes. Work is split into
//! blocks of tokens × 64 rows over rayon.
//!
//! # Activation quantization
//! [`QuantizedActivations::quantize`] follows SmoothQuant's `quantize_activation_per_token_absmax`:
//! per token `s = max(max_j |x_j|, 1e-5) / (2^(bits−1) − 1)`, `q = round_half_even(x / s)`
//! (clamped to `±(2^(bits−1) − 1)`), so `q·s` is exactly the fake-quantized activation. A token
//! with a NaN or infinite value gets a NaN scale (its outputs are NaN, as in f32).
//!
//! ```
//! use qwen3_quant_kernels::int8::{Int8Matrix, QuantizedActivations};
//! // W = [[1, -2], [3, 4]] · 0.5 (codes and one scale per row), x = [[2, 1]].
//! let w = Int8Matrix::new(vec![1, -2, 3, 4], vec![0.5, 0.5], 2, 2)?;
//! let x = QuantizedActivations::quantize(&[2.0, 1.0], 1, 2, 8)?;
//! let mut y = [0.0f32; 2];
//! w.gemm_quantized(&x, &mut y)?;
//! // x's scale is 2/127 and 1.0 / (2/127) = 63.5 rounds half to even to 64: codes [127, 64].
//! assert_eq!(x.codes(), vec![127, 64]);
//! let s = x.scales()[0] * 0.5;
//! assert_eq!(y, [(127 - 128) as f32 * s, (3 * 127 + 4 * 64) as f32 * s]); // exact integer sums
//! assert!((y[1] - 5.0).abs() < 0.02); // x · w_1 = 2 · 1.5 + 1 · 2 in f32
//! # Ok::<(), qwen3_quant_kernels::KernelError>(())
//! ```

use rayon::prelude::*;

use crate::dispatch::{active_kernel, KernelChoice};
use crate::{check_len, checked_mul, KernelError, Result};

/// SmoothQuant's lower clamp on a token's absmax before dividing by `2^(bits−1) − 1`.
pub const ABSMAX_CLAMP: f32 = 1e-5;

/// Largest `cols` for which the i32 accumulation is exact whatever the codes (`128² · cols < 2³¹`).
pub const MAX_COLS: usize = (1 << 17) - 1;

/// Rows per panel of the stored layout (one zmm of i32 lanes).
const PANEL: usize = 16;
/// Tokens per VNNI tile.
#[cfg_attr(not(all(target_arch = "x86_64", qwen3_avx512)), allow(dead_code))]
const MR_VNNI: usize = 6;
/// Panels per VNNI tile (64 rows).
#[cfg_attr(not(all(target_arch = "x86_64", qwen3_avx512)), allow(dead_code))]
const NP_VNNI: usize = 4;
/// Tokens per tile of the non-VNNI kernels.
const MR_SMALL: usize = 2;
/// Tokens per rayon task (a multiple of both tile heights).
const TOKEN_BLOCK: usize = 96;
/// Panels per rayon task (64 rows: the block of weights every token of the task streams past).
const PANEL_BLOCK: usize = 4;

/// The largest code of a symmetric `bits`-bit quantizer, `2^(bits−1) − 1`, for `bits` in `2..=8`.
///
/// # Errors
/// [`KernelError::UnsupportedBits`] outside `2..=8` (1 bit has no symmetric level besides 0).
pub fn symmetric_qmax(bits: u8) -> Result<i32> {
    if (2..=8).contains(&bits) {
        Ok((1i32 << (bits - 1)) - 1)
    } else {
        Err(KernelError::UnsupportedBits { bits })
    }
}

/// Per-token symmetric int8 quantization of `x [m, k]`: `scale = max(absmax, 1e-5) / 127`,
/// `q = round_half_even(x / scale)` clamped to `[-127, 127]`. Returns `(q [m, k], scales [m])`.
///
/// # Panics
/// If `x.len() != m·k`; use [`try_quantize_per_token`] for an error instead.
pub fn quantize_per_token(x: &[f32], m: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    match try_quantize_per_token(x, m, k) {
        Ok(v) => v,
        Err(e) => panic!("quantize_per_token: {e}"),
    }
}

/// [`quantize_per_token`] returning [`KernelError::ShapeMismatch`] on a wrong `x` length.
pub fn try_quantize_per_token(x: &[f32], m: usize, k: usize) -> Result<(Vec<i8>, Vec<f32>)> {
    try_quantize_per_token_bits(x, m, k, 8)
}

/// Per-token symmetric quantization of `x [m, k]` at `bits` (2..=8): returns `(q [m, k], scales [m])`
/// with `q` in `±(2^(bits−1) − 1)`; see the module docs for the rule.
///
/// # Errors
/// [`KernelError::ShapeMismatch`] for a wrong `x` length, [`KernelError::UnsupportedBits`].
pub fn try_quantize_per_token_bits(
    x: &[f32],
    m: usize,
    k: usize,
    bits: u8,
) -> Result<(Vec<i8>, Vec<f32>)> {
    let a = QuantizedActivations::quantize(x, m, k, bits)?;
    Ok((a.codes(), a.scales))
}

/// Scalar rule for one token (the reference the SIMD version matches bit for bit).
fn quantize_row_scalar(x: &[f32], q: &mut [i8], qmax: f32) -> (f32, i32) {
    if !x.iter().all(|v| v.is_finite()) {
        q.fill(0);
        return (f32::NAN, 0);
    }
    let absmax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let scale = absmax.max(ABSMAX_CLAMP) / qmax;
    let mut sum = 0i32;
    for (d, &v) in q.iter_mut().zip(x) {
        let c = crate::round::round_half_even(v / scale).clamp(-qmax, qmax) as i8;
        sum += i32::from(c);
        *d = c;
    }
    (scale, sum)
}

fn quantize_row(choice: KernelChoice, x: &[f32], q: &mut [i8], qmax: f32) -> (f32, i32) {
    debug_assert!(q.len() >= x.len());
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    if choice == KernelChoice::Avx512 {
        // SAFETY: AVX-512 is supported (the choice is clamped); `x` has `x.len()` floats and `q`
        // at least as many bytes.
        return unsafe {
            crate::arch::x86_avx512::quantize_row_avx512(x.as_ptr(), x.len(), q.as_mut_ptr(), qmax)
        };
    }
    let _ = choice;
    quantize_row_scalar(x, &mut q[..x.len()], qmax)
}

/// Activations `[m, cols]` quantized per token to symmetric codes, laid out for
/// [`Int8Matrix::gemm_quantized`] (rows padded to a multiple of 4 codes with zeros).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedActivations {
    m: usize,
    cols: usize,
    stride: usize,
    /// `[m, stride]`, zero padded.
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// `128 · Σ_k codes[i, k]`, the offset `vpdpbusd`'s unsigned weights add.
    sums128: Vec<i32>,
}

impl QuantizedActivations {
    /// Quantizes `x [m, cols]` per token at `bits` (2..=8); see the module docs.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] for a wrong `x` length, [`KernelError::UnsupportedBits`].
    pub fn quantize(x: &[f32], m: usize, cols: usize, bits: u8) -> Result<Self> {
        Self::quantize_with(active_kernel(), x, m, cols, bits)
    }

    /// [`QuantizedActivations::quantize`] with an explicit implementation (clamped to the CPU);
    /// every implementation gives the same codes and scales.
    pub fn quantize_with(
        choice: KernelChoice,
        x: &[f32],
        m: usize,
        cols: usize,
        bits: u8,
    ) -> Result<Self> {
        let qmax = symmetric_qmax(bits)? as f32;
        check_len("x", checked_mul("x", m, cols)?, x.len())?;
        let choice = choice.clamp_to_supported();
        let stride = cols.div_ceil(4) * 4;
        let mut codes = vec![0i8; checked_mul("x", m, stride)?];
        let mut scales = vec![0f32; m];
        let mut sums128 = vec![0i32; m];
        if cols == 0 {
            scales.fill(ABSMAX_CLAMP / qmax);
        } else if stride > 0 {
            type Item<'a> = ((&'a mut [i8], &'a mut f32), (&'a mut i32, &'a [f32]));
            let task = |((q, s), (sum, row)): Item| {
                let (scale, total) = quantize_row(choice, row, q, qmax);
                *s = scale;
                *sum = total.wrapping_mul(128);
            };
            if m * cols >= 1 << 16 && rayon::current_num_threads() > 1 {
                codes
                    .par_chunks_mut(stride)
                    .zip(scales.par_iter_mut())
                    .zip(sums128.par_iter_mut().zip(x.par_chunks(cols)))
                    .with_min_len(16)
                    .for_each(task);
            } else {
                codes
                    .chunks_mut(stride)
                    .zip(scales.iter_mut())
                    .zip(sums128.iter_mut().zip(x.chunks(cols)))
                    .for_each(task);
            }
        }
        Ok(Self {
            m,
            cols,
            stride,
            codes,
            scales,
            sums128,
        })
    }

    /// Wraps existing codes `[m, cols]` and per-token scales.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] for wrong lengths.
    pub fn from_codes(codes: &[i8], scales: &[f32], m: usize, cols: usize) -> Result<Self> {
        check_len("xq", checked_mul("xq", m, cols)?, codes.len())?;
        check_len("x_scales", m, scales.len())?;
        let stride = cols.div_ceil(4) * 4;
        let mut padded = vec![0i8; checked_mul("xq", m, stride)?];
        let mut sums128 = vec![0i32; m];
        if cols > 0 {
            for ((d, s), sum) in padded
                .chunks_mut(stride)
                .zip(codes.chunks(cols))
                .zip(sums128.iter_mut())
            {
                d[..cols].copy_from_slice(s);
                *sum = s
                    .iter()
                    .map(|&v| i32::from(v))
                    .sum::<i32>()
                    .wrapping_mul(128);
            }
        }
        Ok(Self {
            m,
            cols,
            stride,
            codes: padded,
            scales: scales.to_vec(),
            sums128,
        })
    }

    /// Tokens.
    pub fn rows(&self) -> usize {
        self.m
    }
    /// Columns per token.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Per-token scales.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    /// The codes `[m, cols]`.
    pub fn codes(&self) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.m * self.cols);
        for i in 0..self.m {
            out.extend_from_slice(&self.codes[i * self.stride..i * self.stride + self.cols]);
        }
        out
    }
    /// The fake-quantized activations `codes · scale`, `[m, cols]` (SmoothQuant's `x_q`).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.m * self.cols];
        self.dequantize_into(&mut out);
        out
    }

    /// [`QuantizedActivations::dequantize`] into a buffer of `m·cols` floats.
    ///
    /// # Panics
    /// If `out.len() != m·cols`.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.m * self.cols, "dequantize_into: length");
        if self.cols == 0 {
            return;
        }
        out.par_chunks_mut(self.cols)
            .zip(self.codes.par_chunks(self.stride))
            .zip(self.scales.par_iter())
            .with_min_len(64)
            .for_each(|((o, q), &s)| {
                for (d, &c) in o.iter_mut().zip(q) {
                    *d = f32::from(c) * s;
                }
            });
    }
}

/// Symmetric int8 weight `[rows, cols]` with one f32 scale per row (see the module docs for the
/// layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Matrix {
    rows: usize,
    cols: usize,
    /// Groups of 4 columns (`ceil(cols / 4)`).
    kq: usize,
    /// `[panels, kq, 16, 4]` bytes `code ^ 0x80`; padding is code 0.
    packed: Vec<u8>,
    /// `[panels · 16]`, padded with zeros.
    scales: Vec<f32>,
}

impl Int8Matrix {
    /// Wraps `codes [rows, cols]` (row-major) and per-row `scales [rows]`.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] for wrong lengths or `cols >` [`MAX_COLS`],
    /// [`KernelError::NonFinite`] for a NaN/inf scale.
    pub fn new(codes: Vec<i8>, scales: Vec<f32>, rows: usize, cols: usize) -> Result<Self> {
        check_len("codes", checked_mul("codes", rows, cols)?, codes.len())?;
        check_len("scales", rows, scales.len())?;
        if cols > MAX_COLS {
            return Err(KernelError::ShapeMismatch {
                what: "int8 columns (at most MAX_COLS for exact i32 sums)",
                expected: MAX_COLS,
                got: cols,
            });
        }
        if !scales.iter().all(|s| s.is_finite()) {
            return Err(KernelError::NonFinite { what: "scales" });
        }
        let kq = cols.div_ceil(4);
        let panels = rows.div_ceil(PANEL);
        let panel_bytes = kq * 4 * PANEL;
        let mut packed = vec![0x80u8; panels * panel_bytes];
        for r in 0..rows {
            let (p, lane) = (r / PANEL, r % PANEL);
            let base = p * panel_bytes + lane * 4;
            for (c, &v) in codes[r * cols..(r + 1) * cols].iter().enumerate() {
                packed[base + (c / 4) * 4 * PANEL + c % 4] = (v as u8) ^ 0x80;
            }
        }
        let mut padded_scales = scales;
        padded_scales.resize(panels * PANEL, 0.0);
        Ok(Self {
            rows,
            cols,
            kq,
            packed,
            scales: padded_scales,
        })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Per-row scales.
    pub fn scales(&self) -> &[f32] {
        &self.scales[..self.rows]
    }

    fn code(&self, r: usize, c: usize) -> i8 {
        let panel_bytes = self.kq * 4 * PANEL;
        let i = (r / PANEL) * panel_bytes + (c / 4) * 4 * PANEL + (r % PANEL) * 4 + c % 4;
        (self.packed[i] ^ 0x80) as i8
    }

    /// The codes `[rows, cols]` as given to [`Int8Matrix::new`].
    pub fn codes(&self) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            out.extend((0..self.cols).map(|c| self.code(r, c)));
        }
        out
    }

    /// The weight `codes · scale` as f32 `[rows, cols]` (equal to the fake-quantized weight).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            let s = self.scales[r];
            out.extend((0..self.cols).map(|c| f32::from(self.code(r, c)) * s));
        }
        out
    }

    /// Bytes held: codes (padded to 16 rows and 4 columns) and scales.
    pub fn storage_bytes(&self) -> usize {
        self.packed.len() + 4 * self.scales.len()
    }

    /// `y[m, rows] = (xq[m, cols] · Wᵀ) ⊙ (x_scales ⊗ scales)` with exact i32 accumulation,
    /// using [`active_kernel`] (VNNI when the CPU has it).
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] for wrong `xq`, `x_scales` or `y` lengths.
    pub fn gemm(&self, xq: &[i8], x_scales: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        self.gemm_with(active_kernel(), xq, x_scales, m, y)
    }

    /// [`Int8Matrix::gemm`] with an explicit implementation (clamped to what the CPU supports).
    pub fn gemm_with(
        &self,
        choice: KernelChoice,
        xq: &[i8],
        x_scales: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<()> {
        let a = QuantizedActivations::from_codes(xq, x_scales, m, self.cols)?;
        self.gemm_quantized_with(choice, &a, y)
    }

    /// `y[m, rows]` from activations quantized by [`QuantizedActivations::quantize`].
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] for a column count or `y` length that does not match.
    pub fn gemm_quantized(&self, x: &QuantizedActivations, y: &mut [f32]) -> Result<()> {
        self.gemm_quantized_with(active_kernel(), x, y)
    }

    /// [`Int8Matrix::gemm_quantized`] with an explicit implementation (clamped to the CPU).
    pub fn gemm_quantized_with(
        &self,
        choice: KernelChoice,
        x: &QuantizedActivations,
        y: &mut [f32],
    ) -> Result<()> {
        check_len("activation columns", self.cols, x.cols)?;
        check_len("y", checked_mul("y", x.m, self.rows)?, y.len())?;
        let m = x.m;
        if m == 0 || self.rows == 0 {
            return Ok(());
        }
        if self.kq == 0 {
            y.fill(0.0);
            return Ok(());
        }
        let imp = Impl::pick(choice.clamp_to_supported());
        let panels = self.rows.div_ceil(PANEL);
        let t_blocks = m.div_ceil(TOKEN_BLOCK);
        let p_blocks = panels.div_ceil(PANEL_BLOCK);
        let out = SendPtr(y.as_mut_ptr());
        let task = |b: usize| {
            let (tb, pb) = (b / p_blocks, b % p_blocks);
            let t0 = tb * TOKEN_BLOCK;
            let p0 = pb * PANEL_BLOCK;
            // SAFETY: the block's tokens and panels lie inside `x` and `self`, and `out` has
            // `m·rows` floats (checked above); blocks write disjoint (token, row) pairs.
            unsafe {
                self.block(
                    imp,
                    x,
                    t0..(t0 + TOKEN_BLOCK).min(m),
                    p0..(p0 + PANEL_BLOCK).min(panels),
                    &out,
                )
            };
        };
        let n_tasks = t_blocks * p_blocks;
        if rayon::current_num_threads() > 1 && n_tasks > 1 && m * self.rows * self.cols >= 1 << 20 {
            (0..n_tasks).into_par_iter().for_each(task);
        } else {
            (0..n_tasks).for_each(task);
        }
        Ok(())
    }

    /// Quantizes `x [m, cols]` per token at `act_bits` and multiplies: `y ≈ x · Wᵀ`.
    ///
    /// # Errors
    /// As [`QuantizedActivations::quantize`] and [`Int8Matrix::gemm_quantized`].
    pub fn forward(&self, x: &[f32], m: usize, act_bits: u8, y: &mut [f32]) -> Result<()> {
        let a = QuantizedActivations::quantize(x, m, self.cols, act_bits)?;
        self.gemm_quantized(&a, y)
    }

    /// The tile description for tokens from `t` and panels from `p`.
    fn tile(&self, x: &QuantizedActivations, t: usize, p: usize, np: usize, out: &SendPtr) -> Tile {
        let panel_stride = self.kq * 4 * PANEL;
        let last_row = ((p + np) * PANEL).min(self.rows);
        // SAFETY (offsets): t < m and p < panels, so every base pointer is in bounds.
        unsafe {
            Tile {
                x: x.codes.as_ptr().add(t * x.stride),
                x_stride: x.stride,
                x_scales: x.scales.as_ptr().add(t),
                x_sums128: x.sums128.as_ptr().add(t),
                w: self.packed.as_ptr().add(p * panel_stride),
                panel_stride,
                w_scales: self.scales.as_ptr().add(p * PANEL),
                kq: self.kq,
                y: out.0.add(t * self.rows + p * PANEL),
                y_stride: self.rows,
                last_rows: last_row - (p + np - 1) * PANEL,
            }
        }
    }

    /// Computes tokens `ts` × panels `ps` of `y`.
    ///
    /// # Safety
    /// `ts` inside `0..x.m`, `ps` inside `0..panels`, `out` points at `x.m · rows` floats, and
    /// no other thread writes this block.
    unsafe fn block(
        &self,
        imp: Impl,
        x: &QuantizedActivations,
        ts: std::ops::Range<usize>,
        ps: std::ops::Range<usize>,
        out: &SendPtr,
    ) {
        match imp {
            #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
            Impl::Vnni => {
                let mut p = ps.start;
                while p < ps.end {
                    let np = NP_VNNI.min(ps.end - p);
                    let mut t = ts.start;
                    while t < ts.end {
                        let mr = MR_VNNI.min(ts.end - t);
                        let tile = self.tile(x, t, p, np, out);
                        // SAFETY: VNNI detected (Impl::pick); the tile covers mr tokens and np
                        // panels inside the buffers, as `tile` describes.
                        unsafe { vnni_tile(mr, np, &tile) };
                        t += mr;
                    }
                    p += np;
                }
            }
            _ => {
                for p in ps {
                    let mut t = ts.start;
                    while t < ts.end {
                        let mr = MR_SMALL.min(ts.end - t);
                        let tile = self.tile(x, t, p, 1, out);
                        // SAFETY: the tile covers mr tokens and one panel inside the buffers.
                        unsafe { small_tile(imp, mr, &tile) };
                        t += mr;
                    }
                }
            }
        }
    }
}

/// Which tile kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Scalar,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    Vnni,
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Neon,
}

impl Impl {
    fn pick(choice: KernelChoice) -> Self {
        match choice {
            KernelChoice::Scalar => Impl::Scalar,
            KernelChoice::Neon => Impl::Neon,
            #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
            KernelChoice::Avx512 if crate::dispatch::cpu().avx512vnni => Impl::Vnni,
            _ => Impl::Avx2,
        }
    }
}

/// One tile's pointers (see `arch::*::int8_tile_*`): `MR` token rows of codes from `x`, panels
/// of 16 weight rows from `w`, output rows from `y`.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub x: *const i8,
    pub x_stride: usize,
    pub x_scales: *const f32,
    #[cfg_attr(not(all(target_arch = "x86_64", qwen3_avx512)), allow(dead_code))]
    pub x_sums128: *const i32,
    pub w: *const u8,
    #[cfg_attr(not(all(target_arch = "x86_64", qwen3_avx512)), allow(dead_code))]
    pub panel_stride: usize,
    pub w_scales: *const f32,
    pub kq: usize,
    pub y: *mut f32,
    pub y_stride: usize,
    /// Valid rows of the tile's last panel (1..=16).
    pub last_rows: usize,
}

#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
/// # Safety
/// See `int8_tile_vnni`: VNNI available, `mr ≤ 6` tokens and `np ≤ 4` panels described by `t`.
unsafe fn vnni_tile(mr: usize, np: usize, t: &Tile) {
    use crate::arch::x86_avx512::int8_tile_vnni as k;
    // SAFETY: forwarded caller guarantee.
    unsafe {
        match (mr, np) {
            (6, 4) => k::<6, 4>(t),
            (6, 3) => k::<6, 3>(t),
            (6, 2) => k::<6, 2>(t),
            (6, 1) => k::<6, 1>(t),
            (5, 4) => k::<5, 4>(t),
            (4, 4) => k::<4, 4>(t),
            (3, 4) => k::<3, 4>(t),
            (2, 4) => k::<2, 4>(t),
            (1, 4) => k::<1, 4>(t),
            (m, n) => {
                // Remainders of both: one panel at a time.
                for p in 0..n {
                    let mut tp = *t;
                    tp.w = t.w.add(p * t.panel_stride);
                    tp.w_scales = t.w_scales.add(p * PANEL);
                    tp.y = t.y.add(p * PANEL);
                    tp.last_rows = if p + 1 == n { t.last_rows } else { PANEL };
                    match m {
                        5 => k::<5, 1>(&tp),
                        4 => k::<4, 1>(&tp),
                        3 => k::<3, 1>(&tp),
                        2 => k::<2, 1>(&tp),
                        _ => k::<1, 1>(&tp),
                    }
                }
            }
        }
    }
}

/// # Safety
/// `mr ≤ 2` tokens and one panel described by `t`; the ISA of `imp` available.
unsafe fn small_tile(imp: Impl, mr: usize, t: &Tile) {
    match imp {
        #[cfg(target_arch = "x86_64")]
        Impl::Avx2 => {
            // SAFETY: AVX2 supported (the choice was clamped); forwarded ranges.
            unsafe {
                if mr == 2 {
                    crate::arch::x86::int8_tile_avx2::<2>(t)
                } else {
                    crate::arch::x86::int8_tile_avx2::<1>(t)
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        Impl::Neon => {
            // SAFETY: NEON is baseline on AArch64; forwarded ranges.
            unsafe {
                if mr == 2 {
                    crate::arch::neon::int8_tile_neon::<2>(t)
                } else {
                    crate::arch::neon::int8_tile_neon::<1>(t)
                }
            }
        }
        // SAFETY: forwarded ranges.
        _ => unsafe { scalar_tile(mr, t) },
    }
}

/// Portable tile: `mr` tokens × one panel, straight from the stored layout.
///
/// # Safety
/// The ranges `t` describes are readable/writable.
unsafe fn scalar_tile(mr: usize, t: &Tile) {
    // SAFETY: every offset stays inside the ranges the caller guarantees.
    unsafe {
        for i in 0..mr {
            let x = std::slice::from_raw_parts(t.x.add(i * t.x_stride), 4 * t.kq);
            let w = std::slice::from_raw_parts(t.w, 64 * t.kq);
            let mut acc = [0i32; PANEL];
            for (xq, wq) in x.chunks_exact(4).zip(w.chunks_exact(4 * PANEL)) {
                for (a, wr) in acc.iter_mut().zip(wq.chunks_exact(4)) {
                    for (&xv, &wv) in xq.iter().zip(wr) {
                        *a = a.wrapping_add(i32::from(xv) * i32::from((wv ^ 0x80) as i8));
                    }
                }
            }
            let xs = *t.x_scales.add(i);
            let y = t.y.add(i * t.y_stride);
            for (r, &a) in acc.iter().enumerate().take(t.last_rows) {
                *y.add(r) = a as f32 * (xs * *t.w_scales.add(r));
            }
        }
    }
}

struct SendPtr(*mut f32);
// SAFETY: shared only to let tasks write disjoint elements.
unsafe impl Sync for SendPtr {}
// SAFETY: as above.
unsafe impl Send for SendPtr {}

/// Scalar reference `acc[m, rows]` for tests: plain i32 sums of products.
pub fn reference_i32(xq: &[i8], w: &[i8], m: usize, rows: usize, cols: usize) -> Vec<i32> {
    let mut out = vec![0i32; m * rows];
    for i in 0..m {
        for r in 0..rows {
            out[i * rows + r] = (0..cols)
                .map(|k| i32::from(xq[i * cols + k]) * i32::from(w[r * cols + k]))
                .sum();
        }
    }
    out
}
