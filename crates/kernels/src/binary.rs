//! [`BinaryMatrix`]: BiLLM-style binary weights (residual binarization of salient columns, two
//! binary groups for the rest), packed at 2 bits per weight, and its kernels.
//!
//! # What is stored
//! BiLLM works on 128-column blocks. In each block, a set of *salient* columns (shared by all
//! rows) is binarized twice (residual, order 2); the other weights of each row are split into a
//! *sparse* and a *concentrated* group, each binarized once. Every binarization has its own mean
//! and scale per (row, block): `b = μ + α·sign`. So each weight carries two bits: its first sign,
//! and either its group (non-salient) or its second-order sign (salient), and each (row, block)
//! has four (μ, α) pairs, [`BinaryParams`]. The kernels fold these into an 8-entry table per
//! (row, block), indexed by `salient << 2 | bit1 << 1 | sign`, whose entries are computed exactly
//! as the reference sums them (`(μ₁ + α₁·s₁) + (μ₂ + α₂·s₂)` for salient columns), so
//! [`BinaryMatrix::dequantize`] is bit-identical to the method's fake quantization.
//!
//! The two bits use [`crate::PackedMatrix`]'s 2-bit plane layout, so decoding is the same one
//! load, shift and mask per 16 columns, followed by one table lookup (`vpermps`) on AVX-512.

use rayon::prelude::*;

use crate::dispatch::{active_kernel, KernelChoice};
use crate::packed::{decode_chunk, pack_row, CHUNK, SUPER};
use crate::{check_len, checked_mul, KernelError, Result};

/// Columns per BiLLM block (the span of one set of [`BinaryParams`]).
pub const BINARY_BLOCK: usize = SUPER;

/// Mean and scale of the four binarizations of one (row, 128-column block): each is
/// `μ + α·sign`, `sign = ±1`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BinaryParams {
    /// Non-salient weights of the *sparse* group (BiLLM's mask 1): `(μ, α)`.
    pub sparse: [f32; 2],
    /// Non-salient weights of the *concentrated* group (mask 2): `(μ, α)`.
    pub concentrated: [f32; 2],
    /// Salient columns (mask 3), first-order binarization: `(μ, α)`.
    pub salient_first: [f32; 2],
    /// Salient columns, second-order binarization of the residual: `(μ, α)`.
    pub salient_second: [f32; 2],
}

impl BinaryParams {
    /// The 8 weight values, indexed by `salient << 2 | bit1 << 1 | sign` (`sign`, `bit1` ∈ {0, 1},
    /// 1 = positive). For salient columns `bit1` is the second-order sign; otherwise it selects
    /// the concentrated group.
    pub fn table(&self) -> [f32; 8] {
        let b = |p: [f32; 2], s: usize| p[0] + if s == 1 { p[1] } else { -p[1] };
        let mut t = [0f32; 8];
        for (i, v) in t.iter_mut().enumerate() {
            let (sign, bit1, salient) = (i & 1, (i >> 1) & 1, i >> 2);
            *v = match (salient, bit1) {
                (0, 0) => b(self.sparse, sign),
                (0, _) => b(self.concentrated, sign),
                _ => b(self.salient_first, sign) + b(self.salient_second, bit1),
            };
        }
        t
    }

    fn is_finite(&self) -> bool {
        [
            self.sparse,
            self.concentrated,
            self.salient_first,
            self.salient_second,
        ]
        .iter()
        .flatten()
        .all(|v| v.is_finite())
    }
}

/// A BiLLM-binarized weight `W [rows = out_features, cols = in_features]` (see the module docs).
#[derive(Clone, Debug)]
pub struct BinaryMatrix {
    rows: usize,
    cols: usize,
    pad_cols: usize,
    row_bytes: usize,
    /// 2-bit codes `bit1 << 1 | sign` in the 2-bit plane layout, `row_bytes` per row.
    data: Vec<u8>,
    /// Per 16-column chunk: bit `l` set when column `16t + l` is salient.
    salient: Vec<u16>,
    /// Per (row, block): the 8-entry table of [`BinaryParams::table`].
    tables: Vec<[f32; 8]>,
}

impl BinaryMatrix {
    /// Packs a binarized weight.
    ///
    /// * `signs`, `bit1`: `[rows, cols]`, each 0 or 1 (`bit1`: concentrated group for
    ///   non-salient columns, second-order sign for salient ones);
    /// * `salient`: `[cols]`, the salient columns;
    /// * `params`: `[rows, ceil(cols / 128)]` row-major.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] for wrong lengths, [`KernelError::CodeOutOfRange`] for a
    /// bit that is not 0 or 1, [`KernelError::NonFinite`] for NaN/inf parameters.
    pub fn new(
        rows: usize,
        cols: usize,
        signs: &[u8],
        bit1: &[u8],
        salient: &[bool],
        params: &[BinaryParams],
    ) -> Result<Self> {
        let n = checked_mul("signs", rows, cols)?;
        check_len("signs", n, signs.len())?;
        check_len("bit1", n, bit1.len())?;
        check_len("salient", cols, salient.len())?;
        let n_blocks = cols.div_ceil(BINARY_BLOCK);
        check_len(
            "params",
            checked_mul("params", rows, n_blocks)?,
            params.len(),
        )?;
        for v in [signs, bit1] {
            if let Some((index, &code)) = v.iter().enumerate().find(|(_, &b)| b > 1) {
                return Err(KernelError::CodeOutOfRange {
                    index,
                    code,
                    bits: 1,
                });
            }
        }
        if !params.iter().all(BinaryParams::is_finite) {
            return Err(KernelError::NonFinite {
                what: "binary params",
            });
        }
        let pad_cols = cols.div_ceil(SUPER) * SUPER;
        let row_bytes = pad_cols / 4;
        let mut data = vec![0u8; checked_mul("packed data", rows, row_bytes)?];
        let mut codes = vec![0u8; cols];
        if row_bytes > 0 {
            for (r, dst) in data.chunks_exact_mut(row_bytes).enumerate() {
                for (j, c) in codes.iter_mut().enumerate() {
                    *c = bit1[r * cols + j] << 1 | signs[r * cols + j];
                }
                pack_row(2, pad_cols, &codes, dst);
            }
        }
        let mut mask = vec![0u16; pad_cols / CHUNK];
        for (j, _) in salient.iter().enumerate().filter(|(_, &s)| s) {
            mask[j / CHUNK] |= 1 << (j % CHUNK);
        }
        Ok(Self {
            rows,
            cols,
            pad_cols,
            row_bytes,
            data,
            salient: mask,
            tables: params.iter().map(BinaryParams::table).collect(),
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

    /// Bytes held: 2 bits per (padded) weight, the salient-column bitmap, and the four (μ, α)
    /// pairs per (row, block) as f32. (The 8-entry tables are derived; a checkpoint stores the
    /// pairs, so they are counted as 32 bytes, not 32 + 32.)
    pub fn storage_bytes(&self) -> usize {
        self.data.len() + 2 * self.salient.len() + 32 * self.tables.len()
    }

    fn n_blocks(&self) -> usize {
        self.cols.div_ceil(BINARY_BLOCK)
    }

    fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Table indices of chunk `t` of row `r`.
    fn chunk_index(&self, r: usize, t: usize, out: &mut [u8; CHUNK]) {
        decode_chunk(2, self.pad_cols, self.row(r), t, out);
        let s = self.salient[t];
        for (l, v) in out.iter_mut().enumerate() {
            *v |= (((s >> l) & 1) as u8) << 2;
        }
    }

    /// Dequantized row `r` into `out` (`cols` values).
    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let mut idx = [0u8; CHUNK];
        for (t, dst) in out.chunks_mut(CHUNK).enumerate() {
            self.chunk_index(r, t, &mut idx);
            let table = &self.tables[r * self.n_blocks() + t * CHUNK / BINARY_BLOCK];
            for (d, &i) in dst.iter_mut().zip(&idx) {
                *d = table[i as usize];
            }
        }
    }

    /// The f32 weight `[rows, cols]`, bit-identical to the binarization that produced it.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            w.par_chunks_mut(self.cols)
                .enumerate()
                .for_each(|(r, row)| self.dequantize_row(r, row));
        }
        w
    }

    fn row_dot_scalar(&self, r: usize, xs: &[f32]) -> f32 {
        let mut idx = [0u8; CHUNK];
        let mut total = 0f32;
        for t in 0..self.pad_cols / CHUNK {
            self.chunk_index(r, t, &mut idx);
            let table = &self.tables[r * self.n_blocks() + t * CHUNK / BINARY_BLOCK];
            let xc = &xs[t * CHUNK..(t + 1) * CHUNK];
            total += idx
                .iter()
                .zip(xc)
                .map(|(&i, &x)| table[i as usize] * x)
                .sum::<f32>();
        }
        total
    }

    fn row_dot(&self, choice: KernelChoice, r: usize, xs: &[f32]) -> f32 {
        #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
        if choice == KernelChoice::Avx512 {
            // SAFETY: AVX-512 is the clamped choice; the row holds pad/16 chunks of 2-bit codes,
            // `xs` is padded to `pad_cols`, the salient mask has pad/16 entries and the row's
            // tables cover every 128-column block (pad/128 of them).
            return unsafe {
                crate::arch::x86_avx512::row_dot_table(
                    self.row(r).as_ptr(),
                    xs.as_ptr(),
                    self.tables[r * self.n_blocks()..].as_ptr().cast(),
                    self.salient.as_ptr(),
                    self.pad_cols / CHUNK,
                )
            };
        }
        #[cfg(target_arch = "aarch64")]
        if choice == KernelChoice::Neon {
            // SAFETY: NEON is baseline on AArch64; same ranges as the AVX-512 call above.
            return unsafe {
                crate::arch::neon::row_dot_table_neon(
                    self.row(r).as_ptr(),
                    xs.as_ptr(),
                    self.tables[r * self.n_blocks()..].as_ptr().cast(),
                    self.salient.as_ptr(),
                    self.pad_cols / CHUNK,
                )
            };
        }
        let _ = choice;
        self.row_dot_scalar(r, xs)
    }

    /// `y[rows] = W · x` (f32 activations, using [`active_kernel`]).
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if `x.len() != cols` or `y.len() != rows`.
    pub fn gemv(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.gemv_with(active_kernel(), x, y)
    }

    /// [`BinaryMatrix::gemv`] with an explicit implementation (clamped to what the CPU supports).
    pub fn gemv_with(&self, choice: KernelChoice, x: &[f32], y: &mut [f32]) -> Result<()> {
        check_len("x", self.cols, x.len())?;
        check_len("y", self.rows, y.len())?;
        let choice = choice.clamp_to_supported();
        let mut xs = x.to_vec();
        xs.resize(self.pad_cols, 0.0);
        let work = |(r, yr): (usize, &mut f32)| *yr = self.row_dot(choice, r, &xs);
        if self.rows * self.cols >= 1 << 18 {
            y.par_iter_mut().enumerate().with_min_len(16).for_each(work);
        } else {
            y.iter_mut().enumerate().for_each(work);
        }
        Ok(())
    }

    /// `y[m, rows] = x[m, cols] · Wᵀ`: up to 4 tokens by GEMV, otherwise blocks of 64 rows are
    /// dequantized into a scratch tile and multiplied with the f32 GEMM.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if `x.len() != m·cols` or `y.len() != m·rows`.
    pub fn gemm(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        check_len("x", checked_mul("x", m, self.cols)?, x.len())?;
        check_len("y", checked_mul("y", m, self.rows)?, y.len())?;
        if m <= 4 {
            let mut yt = vec![0f32; self.rows];
            for i in 0..m {
                self.gemv(&x[i * self.cols..(i + 1) * self.cols], &mut yt)?;
                y[i * self.rows..(i + 1) * self.rows].copy_from_slice(&yt);
            }
            return Ok(());
        }
        const ROWS: usize = 64;
        let (rows, cols) = (self.rows, self.cols);
        // Each task returns its `[m, nr]` block; the blocks are scattered into `y` afterwards.
        let blocks: Vec<(usize, usize, Vec<f32>)> = (0..rows.div_ceil(ROWS))
            .into_par_iter()
            .map(|b| {
                let (r0, nr) = (b * ROWS, ROWS.min(rows - b * ROWS));
                let mut tile = vec![0f32; nr * cols];
                for (i, row) in tile.chunks_mut(cols.max(1)).enumerate().take(nr) {
                    self.dequantize_row(r0 + i, row);
                }
                let mut yb = vec![0f32; m * nr];
                crate::dense::matmul_wt_strided(x, m, cols, cols, &tile, nr, cols, &mut yb, nr);
                (r0, nr, yb)
            })
            .collect();
        for (r0, nr, yb) in blocks {
            for i in 0..m {
                y[i * rows + r0..i * rows + r0 + nr].copy_from_slice(&yb[i * nr..(i + 1) * nr]);
            }
        }
        Ok(())
    }
}
