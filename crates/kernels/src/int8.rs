//! W8A8: symmetric int8 weights (one scale per output row) times int8 activations (one scale per
//! token), with exact i32 accumulation.
//!
//! `y[i, r] = (Σ_k xq[i,k] · w[r,k]) as f32 · (x_scales[i] · w_scales[r])`. The integer sum is
//! exact in every implementation (AVX-512-VNNI `vpdpbusd`, AVX2 `vpmaddwd`, scalar) as long as it
//! fits in i32, which holds for `cols < 2^17` with codes in `[-128, 127]`; the final scaling is
//! shared code, so all implementations agree bit for bit.

use rayon::prelude::*;

use crate::dispatch::{active_kernel, cpu, KernelChoice};
use crate::{check_len, checked_mul, KernelError, Result};

/// SmoothQuant's lower clamp on a token's absmax before dividing by 127.
pub const ABSMAX_CLAMP: f32 = 1e-5;

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
    check_len("x", checked_mul("x", m, k)?, x.len())?;
    let mut q = vec![0i8; m * k];
    let mut scales = vec![0f32; m];
    if k == 0 {
        scales.fill(ABSMAX_CLAMP / 127.0);
        return Ok((q, scales));
    }
    for ((row, qrow), s) in x
        .chunks_exact(k)
        .zip(q.chunks_exact_mut(k))
        .zip(scales.iter_mut())
    {
        let absmax = row.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let scale = absmax.max(ABSMAX_CLAMP) / 127.0;
        *s = scale;
        for (qv, &v) in qrow.iter_mut().zip(row) {
            *qv = (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    }
    Ok((q, scales))
}

/// Column padding of the stored codes (one AVX-512 register of i8).
const KPAD: usize = 64;
/// Weight rows per GEMM task (the block stays L2-resident while all tokens stream past it).
const ROW_BLOCK: usize = 64;

/// Symmetric int8 weight `[rows, cols]` with one f32 scale per row.
#[derive(Clone, Debug)]
pub struct Int8Matrix {
    rows: usize,
    cols: usize,
    kpad: usize,
    /// `[rows, kpad]`, zero padded.
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// `128 · Σ_k w[r,k]`, the correction for the unsigned activations of `vpdpbusd`.
    row_sums128: Vec<i32>,
}

impl Int8Matrix {
    /// Wraps `codes [rows, cols]` (row-major) and per-row `scales [rows]`.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] for wrong lengths, [`KernelError::NonFinite`] for a NaN/inf scale.
    pub fn new(codes: Vec<i8>, scales: Vec<f32>, rows: usize, cols: usize) -> Result<Self> {
        check_len("codes", checked_mul("codes", rows, cols)?, codes.len())?;
        check_len("scales", rows, scales.len())?;
        if !scales.iter().all(|s| s.is_finite()) {
            return Err(KernelError::NonFinite { what: "scales" });
        }
        let kpad = cols.div_ceil(KPAD) * KPAD;
        let mut padded = vec![0i8; rows * kpad];
        let mut row_sums128 = vec![0i32; rows];
        for r in 0..rows {
            let src = &codes[r * cols..(r + 1) * cols];
            padded[r * kpad..r * kpad + cols].copy_from_slice(src);
            row_sums128[r] = 128 * src.iter().map(|&v| i32::from(v)).sum::<i32>();
        }
        Ok(Self {
            rows,
            cols,
            kpad,
            codes: padded,
            scales,
            row_sums128,
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
        &self.scales
    }
    /// The codes `[rows, cols]` as given to [`Int8Matrix::new`].
    pub fn codes(&self) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            out.extend_from_slice(&self.codes[r * self.kpad..r * self.kpad + self.cols]);
        }
        out
    }
    /// Bytes held: codes (padded to 64 columns) and scales.
    pub fn storage_bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
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
        check_len("xq", checked_mul("xq", m, self.cols)?, xq.len())?;
        check_len("x_scales", m, x_scales.len())?;
        check_len("y", checked_mul("y", m, self.rows)?, y.len())?;
        let choice = choice.clamp_to_supported();
        let mut acc = vec![0i32; m * self.rows];
        self.gemm_i32(choice, xq, m, &mut acc);
        for i in 0..m {
            for r in 0..self.rows {
                y[i * self.rows + r] =
                    acc[i * self.rows + r] as f32 * (x_scales[i] * self.scales[r]);
            }
        }
        Ok(())
    }

    /// The exact integer products `acc[m, rows] = xq · Wᵀ` (lengths already checked).
    fn gemm_i32(&self, choice: KernelChoice, xq: &[i8], m: usize, acc: &mut [i32]) {
        let (rows, cols, kpad) = (self.rows, self.cols, self.kpad);
        if m == 0 || rows == 0 {
            return;
        }
        let use_vnni = choice == KernelChoice::Avx512 && cpu().avx512vnni;
        // Activations padded to kpad; for VNNI stored as x + 128 (u8), i.e. x ^ 0x80.
        let mut xp = vec![0u8; m * kpad];
        for i in 0..m {
            for (d, &v) in xp[i * kpad..i * kpad + cols]
                .iter_mut()
                .zip(&xq[i * cols..(i + 1) * cols])
            {
                *d = if use_vnni { (v as u8) ^ 0x80 } else { v as u8 };
            }
            if use_vnni {
                // Padding must also be "x = 0", i.e. 128 as u8; the weights there are 0 anyway.
                xp[i * kpad + cols..(i + 1) * kpad].fill(0x80);
            }
        }
        let n_blocks = rows.div_ceil(ROW_BLOCK);
        let out = SendPtr(acc.as_mut_ptr());
        let task = |b: usize| {
            let out = &out;
            let r0 = b * ROW_BLOCK;
            let r1 = (r0 + ROW_BLOCK).min(rows);
            for i in 0..m {
                let x = &xp[i * kpad..(i + 1) * kpad];
                for r in r0..r1 {
                    let w = &self.codes[r * kpad..(r + 1) * kpad];
                    let d = dot_i8(choice, use_vnni, x, w)
                        - if use_vnni { self.row_sums128[r] } else { 0 };
                    // SAFETY: i < m and r < rows, so the index is inside `acc` (len m·rows);
                    // tasks own disjoint row ranges, so writes never alias.
                    unsafe { *out.0.add(i * rows + r) = d };
                }
            }
        };
        if rayon::current_num_threads() > 1 && n_blocks > 1 && m * rows * cols >= 1 << 20 {
            (0..n_blocks).into_par_iter().for_each(task);
        } else {
            (0..n_blocks).for_each(task);
        }
    }
}

struct SendPtr(*mut i32);
// SAFETY: shared only to let tasks write disjoint elements.
unsafe impl Sync for SendPtr {}
// SAFETY: as above.
unsafe impl Send for SendPtr {}

/// Exact dot of two padded rows (`x` as u8 = x+128 when `vnni`, else as i8 bit patterns).
#[inline]
fn dot_i8(choice: KernelChoice, vnni: bool, x: &[u8], w: &[i8]) -> i32 {
    debug_assert_eq!(x.len(), w.len());
    debug_assert_eq!(x.len() % KPAD, 0);
    #[cfg(target_arch = "x86_64")]
    {
        #[cfg(qwen3_avx512)]
        if vnni {
            // SAFETY: `vnni` is set only when the choice is AVX-512 and AVX-512-VNNI was detected;
            // both slices have the same length, a multiple of 64.
            return unsafe {
                crate::arch::x86_avx512::dot_u8i8_vnni(x.as_ptr(), w.as_ptr(), x.len())
            };
        }
        if choice != KernelChoice::Scalar {
            // SAFETY: AVX2 (implied by any non-scalar clamped choice); same lengths, multiple of 64.
            return unsafe {
                crate::arch::x86::dot_i8i8_avx2(x.as_ptr() as *const i8, w.as_ptr(), x.len())
            };
        }
    }
    #[cfg(target_arch = "aarch64")]
    if choice == KernelChoice::Neon {
        // SAFETY: NEON is baseline on AArch64; same lengths, a multiple of 64.
        return unsafe {
            crate::arch::neon::dot_i8i8_neon(x.as_ptr() as *const i8, w.as_ptr(), x.len())
        };
    }
    let _ = (choice, vnni);
    dot_i8_scalar(x, w)
}

fn dot_i8_scalar(x: &[u8], w: &[i8]) -> i32 {
    x.iter()
        .zip(w)
        .map(|(&a, &b)| i32::from(a as i8) * i32::from(b))
        .sum()
}

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
