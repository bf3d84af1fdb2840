//! [`BinaryMatrix`]: BiLLM's binary residual weights, packed at 2 bits per weight plus one
//! 8-entry int8 table per (row, block), and its GEMV/GEMM kernels.
//!
//! # What is stored
//! BiLLM works on blocks of columns (128 by default). In each block, a set of *salient* columns
//! (shared by all rows) is binarized twice (residual, order 2); the other weights of each row are
//! split into a *sparse* and a *concentrated* group, each binarized once. Every binarization has
//! its own mean and scale per (row, block): `b = μ + α·sign` ([`BinaryParams`]). Each weight
//! therefore takes one of 8 values of its (row, block), indexed by
//! `salient << 2 | bit1 << 1 | sign` ([`table_index`]): `sign` is the first sign, `bit1` the group
//! (non-salient) or the second-order sign (salient). Those 8 values are stored as a
//! [`BinaryTable`]: 8 int8 codes and one bf16 scale (`value = code · scale`, exact in f32).
//!
//! # Layout and storage cost
//! * **Codes**: 2 bits per weight (`bit1 << 1 | sign`), 16 bytes per row and 64-column chunk;
//!   bits `2f, 2f + 1` of byte `i` hold column `16f + i` of the chunk, so one 16-byte load
//!   broadcast to the four 128-bit lanes and one per-lane shift put the 64 codes of a chunk in
//!   column order, one per byte. Rows are stored in groups of 4, chunk-major
//!   inside a group (the 4 rows' 16 bytes of chunk 0, then of chunk 1, …; one cache line per
//!   chunk), so the 4-row GEMV kernel reads one sequential stream.
//! * **Salient map**: 1 bit per column (shared by all rows).
//! * **Tables**: 80 bits per (row, block): 8 × int8 + a bf16 scale.
//!
//! So a `[rows, cols]` matrix with 128-column blocks costs `2 + 80/128 + 1/rows` = about
//! **2.63 bits per weight** ([`BinaryMatrix::storage_bytes_for`]). The two bits are the floor of
//! this representation (a non-salient weight needs its sign and its group, a salient one its two
//! signs); the tables are BiLLM's own per-(row, block) means and scales (four `(μ, α)` pairs,
//! folded into 8 values), which in f16 would cost 1 bit per weight and in f32 2 bits.
//!
//! # Kernels
//! * [`BinaryMatrix::gemv`] (decode): with AVX-512-VNNI or AVX2, the activations are quantized
//!   to int8 once per call, one scale per block (`dx = max|x| / 127`, round half to even, like
//!   the packed 4-bit decode path); per row and 64-column chunk, the codes are shifted into
//!   place, OR'ed with the salient bits (one `vpternlogd`), looked up in the (row, block) table
//!   with one `vpshufb` (the table sits in every 128-bit lane) and multiplied with the int8
//!   activations by one `vpdpbusd` (AVX2: signed codes, `vpsignb` and `vpmaddubsw`, see
//!   `arch::x86_avx2_binary`); each block's exact i32 sum gets one FMA with `scale · dx`. Four
//!   rows share each activation load. Elsewhere, or with `QWEN3_QUANT_GEMV=exact`, it is the
//!   exact kernel.
//! * [`BinaryMatrix::gemv_exact`]: f32 activations, one `vpermps` lookup per 16 columns
//!   (AVX-512) or 8 columns (AVX2), a `tbl` gather (NEON) or scalar code.
//! * [`BinaryMatrix::gemm`] (prefill, evaluation): blocks of 64 rows are dequantized into a
//!   scratch tile and multiplied with the f32 GEMM, so evaluation sees exactly
//!   [`BinaryMatrix::dequantize`].

use half::bf16;
use rayon::prelude::*;

use crate::dispatch::{active_kernel, KernelChoice};
use crate::{check_len, checked_mul, KernelError, Result};

/// Default columns per BiLLM block (the span of one [`BinaryTable`]); any positive multiple of
/// [`BINARY_CHUNK`] is accepted by [`BinaryMatrix::from_tables`].
pub const BINARY_BLOCK: usize = 128;

/// Columns per packed chunk (16 bytes of codes per row); block sizes are multiples of it.
pub const BINARY_CHUNK: usize = 64;

/// Storage bits of one [`BinaryTable`]: 8 int8 codes and a bf16 scale.
pub const BINARY_TABLE_BITS: usize = 80;

/// Rows interleaved chunk by chunk in the packed codes and tables (see the module docs).
pub(crate) const ROW_GROUP: usize = 4;

const CHUNK_BYTES: usize = BINARY_CHUNK / 4;
const QUARTER: usize = BINARY_CHUNK / 4;

/// Index of a weight's value in its (row, block) table: `salient << 2 | bit1 << 1 | sign`.
#[inline]
pub fn table_index(salient: bool, bit1: u8, sign: u8) -> usize {
    usize::from(salient) << 2 | usize::from(bit1 & 1) << 1 | usize::from(sign & 1)
}

/// Mean and scale of the four binarizations of one (row, block): each is `μ + α·sign`,
/// `sign = ±1`.
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
    /// The 8 weight values, indexed by [`table_index`] (`sign`, `bit1` ∈ {0, 1}, 1 = positive).
    /// For salient columns `bit1` is the second-order sign; otherwise it selects the concentrated
    /// group. Salient values are summed as the reference does: `(μ₁ ± α₁) + (μ₂ ± α₂)`.
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

    /// [`BinaryParams::table`] rounded to its stored form.
    ///
    /// # Errors
    /// See [`BinaryTable::quantize`].
    pub fn quantized_table(&self) -> Result<BinaryTable> {
        BinaryTable::quantize(&self.table())
    }
}

/// The stored form of one (row, block)'s 8 weight values: int8 codes times a bf16 scale.
///
/// `value_i = code_i · scale` is exact in f32 (a 7-bit integer times an 8-bit mantissa), so
/// dequantization is bit-identical everywhere it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BinaryTable {
    codes: [i8; 8],
    scale: u16,
}

impl BinaryTable {
    /// Rounds 8 values to the stored form: `scale = bf16(max|v| / 127)` (round half to even),
    /// `code = clamp(round_half_even(v / scale), −127, 127)`. The largest value maps to ±127
    /// (a bf16 scale is within 2⁻⁹ of `max|v| / 127`), so each value is off by at most
    /// `scale / 2`.
    ///
    /// # Errors
    /// [`KernelError::NonFinite`] if a value is NaN or infinite.
    pub fn quantize(values: &[f32; 8]) -> Result<Self> {
        if !values.iter().all(|v| v.is_finite()) {
            return Err(KernelError::NonFinite {
                what: "binary table values",
            });
        }
        let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = bf16::from_f32(amax / 127.0);
        let s = scale.to_f32();
        let mut codes = [0i8; 8];
        if s > 0.0 {
            for (c, &v) in codes.iter_mut().zip(values) {
                *c = crate::round::round_half_even(v / s).clamp(-127.0, 127.0) as i8;
            }
        }
        Ok(Self {
            codes,
            scale: scale.to_bits(),
        })
    }

    /// Index of a weight's value: [`table_index`].
    #[inline]
    pub fn index(salient: bool, bit1: u8, sign: u8) -> usize {
        table_index(salient, bit1, sign)
    }

    /// A table from its stored parts (`scale_bits`: a bf16 bit pattern).
    ///
    /// # Errors
    /// [`KernelError::NonFinite`] if the scale is NaN or infinite.
    pub fn from_parts(codes: [i8; 8], scale_bits: u16) -> Result<Self> {
        if !bf16::from_bits(scale_bits).is_finite() {
            return Err(KernelError::NonFinite {
                what: "binary table scale",
            });
        }
        Ok(Self {
            codes,
            scale: scale_bits,
        })
    }

    /// The int8 codes, indexed by [`table_index`].
    pub fn codes(&self) -> [i8; 8] {
        self.codes
    }

    /// The scale's bf16 bit pattern.
    pub fn scale_bits(&self) -> u16 {
        self.scale
    }

    /// The scale as f32.
    pub fn scale(&self) -> f32 {
        bf16::from_bits(self.scale).to_f32()
    }

    /// The 8 weight values `code · scale`.
    pub fn values(&self) -> [f32; 8] {
        let s = self.scale();
        self.codes.map(|c| f32::from(c) * s)
    }

    /// The codes as the kernels hold them: byte `i` is `code_i + 128` (little endian).
    fn biased(&self) -> u64 {
        u64::from_le_bytes(self.codes.map(|c| (c as u8) ^ 0x80))
    }
}

/// A BiLLM-binarized weight `W [rows = out_features, cols = in_features]` (see the module docs).
#[derive(Clone, Debug)]
pub struct BinaryMatrix {
    rows: usize,
    cols: usize,
    block: usize,
    n_blocks: usize,
    n_chunks: usize,
    /// 2-bit codes, `16 · n_chunks` bytes per row, rows interleaved in groups of
    /// [`ROW_GROUP`] (see the module docs and `row_codes`).
    codes: Vec<u8>,
    /// Bit `l` of entry `c`: column `64c + l` is salient.
    salient: Vec<u64>,
    /// The salient map as one byte per column (4 = salient), for the int8 kernel (derived).
    #[cfg_attr(not(all(target_arch = "x86_64", qwen3_avx512)), allow(dead_code))]
    salient_bytes: Vec<u8>,
    /// Per (row, block): the table codes, biased by 128 ([`BinaryTable::biased`]), rows
    /// interleaved like the codes (`table_offset`).
    tables: Vec<u64>,
    /// Per row, `scale_stride` bf16 scales (one per block, zero padded).
    scales: Vec<u16>,
    scale_stride: usize,
}

impl BinaryMatrix {
    /// Packs a binarized weight with 128-column blocks, rounding each (row, block)'s
    /// [`BinaryParams::table`] to its stored [`BinaryTable`].
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
        let tables = params
            .iter()
            .map(BinaryParams::quantized_table)
            .collect::<Result<Vec<_>>>()?;
        Self::from_tables(rows, cols, BINARY_BLOCK, signs, bit1, salient, &tables)
    }

    /// Packs a binarized weight from its stored tables.
    ///
    /// `block` (columns per table) must be a positive multiple of [`BINARY_CHUNK`]; `tables` is
    /// `[rows, ceil(cols / block)]` row-major; the other arguments are as in [`BinaryMatrix::new`].
    ///
    /// # Errors
    /// [`KernelError::InvalidGroupSize`] for `block = 0`, [`KernelError::NotMultiple`] for a
    /// block that is not a multiple of 64, and the errors of [`BinaryMatrix::new`].
    pub fn from_tables(
        rows: usize,
        cols: usize,
        block: usize,
        signs: &[u8],
        bit1: &[u8],
        salient: &[bool],
        tables: &[BinaryTable],
    ) -> Result<Self> {
        check_block(block, cols)?;
        let n = checked_mul("signs", rows, cols)?;
        check_len("signs", n, signs.len())?;
        check_len("bit1", n, bit1.len())?;
        check_len("salient", cols, salient.len())?;
        let n_blocks = cols.div_ceil(block);
        check_len(
            "tables",
            checked_mul("tables", rows, n_blocks)?,
            tables.len(),
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
        let n_chunks = cols.div_ceil(BINARY_CHUNK);
        let row_bytes = n_chunks * CHUNK_BYTES;
        let mut codes = vec![0u8; checked_mul("packed codes", rows, row_bytes)?];
        if row_bytes > 0 {
            // One group of ROW_GROUP rows per task (groups are contiguous).
            codes
                .par_chunks_mut(ROW_GROUP * row_bytes)
                .enumerate()
                .for_each(|(g, dst)| {
                    let t = dst.len() / row_bytes;
                    for i in 0..t {
                        let r = g * ROW_GROUP + i;
                        let (s, b) = (&signs[r * cols..][..cols], &bit1[r * cols..][..cols]);
                        for (j, (&sj, &bj)) in s.iter().zip(b).enumerate() {
                            let (c, l) = (j / BINARY_CHUNK, j % BINARY_CHUNK);
                            let (f, k) = (l / QUARTER, l % QUARTER);
                            dst[c * CHUNK_BYTES * t + i * CHUNK_BYTES + k] |=
                                (bj << 1 | sj) << (2 * f);
                        }
                    }
                });
        }
        let mut mask = vec![0u64; n_chunks];
        let mut salient_bytes = vec![0u8; n_chunks * BINARY_CHUNK];
        for (j, _) in salient.iter().enumerate().filter(|(_, &s)| s) {
            mask[j / BINARY_CHUNK] |= 1 << (j % BINARY_CHUNK);
            salient_bytes[j] = 4;
        }
        let scale_stride = n_blocks.next_multiple_of(16);
        let mut scales = vec![0u16; checked_mul("scales", rows, scale_stride)?];
        for (r, dst) in scales.chunks_exact_mut(scale_stride.max(1)).enumerate() {
            for (d, t) in dst
                .iter_mut()
                .zip(&tables[r * n_blocks..(r + 1) * n_blocks])
            {
                *d = t.scale;
            }
        }
        Ok(Self {
            rows,
            cols,
            block,
            n_blocks,
            n_chunks,
            codes,
            salient: mask,
            salient_bytes,
            tables: {
                let mut t = vec![0u64; tables.len()];
                for (r, row) in tables.chunks_exact(n_blocks.max(1)).enumerate() {
                    for (b, tb) in row.iter().enumerate() {
                        t[table_offset(rows, n_blocks, r, b)] = tb.biased();
                    }
                }
                t
            },
            scales,
            scale_stride,
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
    /// Columns per table.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Stored bytes of a `[rows, cols]` binary matrix with `block`-column tables: 2 bits per
    /// weight (columns padded to 64), the salient bitmap (1 bit per padded column) and 10 bytes
    /// per (row, block) table.
    pub fn storage_bytes_for(rows: usize, cols: usize, block: usize) -> usize {
        let n_chunks = cols.div_ceil(BINARY_CHUNK);
        let n_blocks = cols.div_ceil(block.max(1));
        rows * n_chunks * CHUNK_BYTES + n_chunks * 8 + rows * n_blocks * BINARY_TABLE_BITS / 8
    }

    /// Stored bytes ([`BinaryMatrix::storage_bytes_for`]); what a GEMV reads, up to the
    /// per-column salient bytes (`cols` bytes, shared by all rows) the int8 kernel uses.
    pub fn storage_bytes(&self) -> usize {
        Self::storage_bytes_for(self.rows, self.cols, self.block)
    }

    /// The stored table of row `r`, block `b`.
    pub fn table(&self, r: usize, b: usize) -> BinaryTable {
        let i = table_offset(self.rows, self.n_blocks, r, b);
        BinaryTable {
            codes: self.tables[i].to_le_bytes().map(|v| (v ^ 0x80) as i8),
            scale: self.scales[r * self.scale_stride + b],
        }
    }

    fn chunks_per_block(&self) -> usize {
        self.block / BINARY_CHUNK
    }

    /// Byte offset of row `r`'s chunk 0 in `codes`, and the stride between its chunks.
    fn row_codes(&self, r: usize) -> (usize, usize) {
        let rb = self.n_chunks * CHUNK_BYTES;
        let (g, i) = (r / ROW_GROUP, r % ROW_GROUP);
        let t = group_rows(self.rows, g);
        (g * ROW_GROUP * rb + i * CHUNK_BYTES, t * CHUNK_BYTES)
    }

    /// Table indices of chunk `c` of row `r` (64 columns, in column order).
    fn chunk_index(&self, r: usize, c: usize, out: &mut [u8; BINARY_CHUNK]) {
        let (base, stride) = self.row_codes(r);
        let bytes = &self.codes[base + c * stride..][..CHUNK_BYTES];
        let sal = self.salient[c];
        for (l, v) in out.iter_mut().enumerate() {
            let (f, i) = (l / QUARTER, l % QUARTER);
            *v = ((bytes[i] >> (2 * f)) & 3) | (((sal >> l) & 1) as u8) << 2;
        }
    }

    /// Dequantized row `r` into `out` (`cols` values).
    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let mut idx = [0u8; BINARY_CHUNK];
        let m = self.chunks_per_block();
        for (c, dst) in out.chunks_mut(BINARY_CHUNK).enumerate() {
            self.chunk_index(r, c, &mut idx);
            let table = self.table(r, c / m).values();
            for (d, &i) in dst.iter_mut().zip(&idx) {
                *d = table[i as usize];
            }
        }
    }

    /// The f32 weight `[rows, cols]`: every weight is its table value `code · scale`.
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
        let mut idx = [0u8; BINARY_CHUNK];
        let m = self.chunks_per_block();
        let mut total = 0f32;
        for c in 0..self.n_chunks {
            self.chunk_index(r, c, &mut idx);
            let table = self.table(r, c / m).values();
            let xc = &xs[c * BINARY_CHUNK..(c + 1) * BINARY_CHUNK];
            total += idx
                .iter()
                .zip(xc)
                .map(|(&i, &x)| table[i as usize] * x)
                .sum::<f32>();
        }
        total
    }

    /// Row `r`'s codes, tables and scales for the exact SIMD kernels.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    fn exact_row(&self, r: usize) -> BinaryRow {
        let (base, chunk_stride) = self.row_codes(r);
        let t0 = table_offset(self.rows, self.n_blocks, r, 0);
        BinaryRow {
            codes: self.codes[base..].as_ptr(),
            chunk_stride,
            tables: self.tables[t0..].as_ptr(),
            table_stride: group_rows(self.rows, r / ROW_GROUP),
            scales: self.scales[r * self.scale_stride..].as_ptr(),
            n_chunks: self.n_chunks,
            chunks_per_block: self.chunks_per_block(),
        }
    }

    fn row_dot(&self, choice: KernelChoice, r: usize, xs: &[f32]) -> f32 {
        #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
        if choice == KernelChoice::Avx512 {
            // SAFETY: AVX-512 is the clamped choice; the row holds `n_chunks` chunks of 16 code
            // bytes, `xs` is padded to `64·n_chunks`, the salient map has `n_chunks` words, the
            // row has `n_blocks` tables and `scale_stride ≥ n_blocks` scales, and every chunk's
            // block `c / m` is below `n_blocks`.
            return unsafe {
                crate::arch::x86_avx512_binary::row_dot_exact(
                    &self.exact_row(r),
                    xs.as_ptr(),
                    self.salient.as_ptr(),
                )
            };
        }
        #[cfg(target_arch = "x86_64")]
        if choice == KernelChoice::Avx2 {
            // SAFETY: AVX2 + FMA is the clamped choice; same ranges as the AVX-512 call above.
            return unsafe {
                crate::arch::x86::row_dot_binary_avx2(
                    &self.exact_row(r),
                    xs.as_ptr(),
                    self.salient.as_ptr(),
                )
            };
        }
        #[cfg(target_arch = "aarch64")]
        if choice == KernelChoice::Neon {
            // SAFETY: NEON is baseline on AArch64; same ranges as the AVX-512 call above.
            return unsafe {
                crate::arch::neon::row_dot_binary_neon(
                    &self.exact_row(r),
                    xs.as_ptr(),
                    self.salient.as_ptr(),
                )
            };
        }
        let _ = choice;
        self.row_dot_scalar(r, xs)
    }

    /// `y[rows] = W · x`, the decode path: [`BinaryMatrix::gemv_q8`] (int8 activations) where
    /// it applies, otherwise or with `QWEN3_QUANT_GEMV=exact` (read once)
    /// [`BinaryMatrix::gemv_exact`].
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if `x.len() != cols` or `y.len() != rows`.
    pub fn gemv(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        if gemv_exact_only() {
            return self.gemv_exact(x, y);
        }
        self.gemv_q8(x, y)
    }

    /// `y[rows] = W · x` with f32 activations (using [`active_kernel`]), equal to
    /// `x · dequantize(W)ᵀ` within f32 rounding.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if `x.len() != cols` or `y.len() != rows`.
    pub fn gemv_exact(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.gemv_with(active_kernel(), x, y)
    }

    /// [`BinaryMatrix::gemv_exact`] with an explicit implementation (clamped to what the CPU
    /// supports).
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if `x.len() != cols` or `y.len() != rows`.
    pub fn gemv_with(&self, choice: KernelChoice, x: &[f32], y: &mut [f32]) -> Result<()> {
        check_len("x", self.cols, x.len())?;
        check_len("y", self.rows, y.len())?;
        if self.cols == 0 {
            y.fill(0.0);
            return Ok(());
        }
        let choice = choice.clamp_to_supported();
        let mut xs = x.to_vec();
        xs.resize(self.n_chunks * BINARY_CHUNK, 0.0);
        split_rows(y, self.rows * self.cols, 1, |r0, ys| {
            for (i, yr) in ys.iter_mut().enumerate() {
                *yr = self.row_dot(choice, r0 + i, &xs);
            }
        });
        Ok(())
    }

    /// Whether [`BinaryMatrix::gemv_q8_with`] runs an int8 kernel for `choice` (AVX-512 with
    /// VNNI, or AVX2); otherwise it is the exact kernel.
    pub fn q8_applies(&self, choice: KernelChoice) -> bool {
        cfg!(all(target_arch = "x86_64", qwen3_avx512))
            && matches!(
                choice.clamp_to_supported(),
                KernelChoice::Avx512 | KernelChoice::Avx2
            )
    }

    /// `y[rows] = W · x` with the activations rounded to int8, one scale per block
    /// (`dx = max|x| / 127`, round half to even), using [`active_kernel`]. Each output is within
    /// `Σ_j |w_j| · dx_j / 2` (plus f32 rounding) of `x · dequantize(W)ᵀ`.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if `x.len() != cols` or `y.len() != rows`.
    pub fn gemv_q8(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.gemv_q8_with(active_kernel(), x, y)
    }

    /// [`BinaryMatrix::gemv_q8`] with an explicit implementation: the exact kernel where the
    /// int8 one does not apply ([`BinaryMatrix::q8_applies`]).
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if `x.len() != cols` or `y.len() != rows`.
    pub fn gemv_q8_with(&self, choice: KernelChoice, x: &[f32], y: &mut [f32]) -> Result<()> {
        check_len("x", self.cols, x.len())?;
        check_len("y", self.rows, y.len())?;
        if !self.q8_applies(choice) || self.cols == 0 {
            return self.gemv_with(choice, x, y);
        }
        #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
        {
            let prep = self.q8_prep(x);
            let view = crate::arch::x86_avx512_binary::BinaryQ8View {
                xq: &prep.xq,
                dx: &prep.dx,
                corr: &prep.corr,
                salient: &self.salient_bytes,
                codes: &self.codes,
                tables: &self.tables,
                scales: &self.scales,
                n_chunks: self.n_chunks,
                n_blocks: self.n_blocks,
                chunks_per_block: self.chunks_per_block(),
                scale_stride: self.scale_stride,
                rows: self.rows,
            };
            let rows_per_group = crate::arch::x86_avx512_binary::Q8_ROWS;
            let scratch = rows_per_group * self.scale_stride;
            let vnni = choice.clamp_to_supported() == KernelChoice::Avx512
                && crate::dispatch::cpu().avx512vnni;
            split_rows(y, self.rows * self.cols, rows_per_group, |r0, ys| {
                // SAFETY: `q8_applies` checked AVX-512 (+ VNNI here) or AVX2 + FMA; the view was
                // built for this matrix (activations cover every block, `dx`/`corr` hold
                // `scale_stride` values, `salient` one byte per chunk column); rows
                // `r0 .. r0 + ys.len()` exist; `coef` holds `Q8_ROWS · scale_stride` floats.
                unsafe {
                    if vnni {
                        let mut coef = vec![0f32; scratch];
                        crate::arch::x86_avx512_binary::gemv_q8_rows(&view, r0, ys, &mut coef)
                    } else {
                        crate::arch::x86_avx2_binary::gemv_q8_rows(&view, r0, ys)
                    }
                }
            });
            return Ok(());
        }
        #[allow(unreachable_code)]
        self.gemv_with(choice, x, y)
    }

    /// Int8 activations for the q8 kernel: one scale per block, plus the per-block correction
    /// `128 · dx · Σq` for the tables' +128 bias.
    #[cfg_attr(not(all(target_arch = "x86_64", qwen3_avx512)), allow(dead_code))]
    fn q8_prep(&self, x: &[f32]) -> Q8Prep {
        let len = (self.n_blocks * self.block).max(self.n_chunks * BINARY_CHUNK);
        let mut xq = vec![0i8; len];
        let mut dx = vec![0f32; self.scale_stride];
        let mut corr = vec![0f32; self.scale_stride];
        for (b, xb) in x.chunks(self.block).enumerate() {
            let (d, sum) = quantize_block_i8(xb, &mut xq[b * self.block..][..xb.len()]);
            dx[b] = d;
            corr[b] = 128.0 * d * sum as f32;
        }
        Q8Prep { xq, dx, corr }
    }

    /// `y[m, rows] = x[m, cols] · Wᵀ`: up to 4 tokens by [`BinaryMatrix::gemv`], otherwise
    /// blocks of 64 rows are dequantized into a scratch tile and multiplied with the f32 GEMM.
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

/// One row of a [`BinaryMatrix`] for the exact SIMD kernels: chunk `c`'s 16 code bytes start at
/// `codes + c·chunk_stride`, block `b`'s table is `tables[b·table_stride]`, its scale
/// `scales[b]`.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) struct BinaryRow {
    pub codes: *const u8,
    pub chunk_stride: usize,
    pub tables: *const u64,
    pub table_stride: usize,
    pub scales: *const u16,
    pub n_chunks: usize,
    pub chunks_per_block: usize,
}

/// Rows in group `g` (the last group may hold fewer than [`ROW_GROUP`]).
fn group_rows(rows: usize, g: usize) -> usize {
    (rows - g * ROW_GROUP).min(ROW_GROUP)
}

/// Index of row `r`, block `b`'s table: rows interleaved in groups of [`ROW_GROUP`].
fn table_offset(rows: usize, n_blocks: usize, r: usize, b: usize) -> usize {
    let (g, i) = (r / ROW_GROUP, r % ROW_GROUP);
    g * ROW_GROUP * n_blocks + b * group_rows(rows, g) + i
}

/// Activations prepared for the int8 kernel.
#[cfg_attr(not(all(target_arch = "x86_64", qwen3_avx512)), allow(dead_code))]
struct Q8Prep {
    xq: Vec<i8>,
    dx: Vec<f32>,
    corr: Vec<f32>,
}

/// `q = clamp(round_half_even(x / dx), ±127)` with `dx = max|x| / 127`; returns `(dx, Σq)`.
#[cfg_attr(not(all(target_arch = "x86_64", qwen3_avx512)), allow(dead_code))]
fn quantize_block_i8(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    if !(d > 0.0 && d.is_finite()) {
        return (0.0, 0);
    }
    let inv = 1.0 / d;
    let mut sum = 0i32;
    for (qv, &v) in q.iter_mut().zip(x) {
        *qv = crate::round::round_half_even(v * inv).clamp(-127.0, 127.0) as i8;
        sum += i32::from(*qv);
    }
    (d, sum)
}

/// Runs `work(first_row, rows_of_y)` over `y`: inline when there is one thread or the product
/// (`size` = rows·cols) is too small to repay a fork/join, otherwise in about four blocks per
/// thread (multiples of `multiple` rows, at least 64).
fn split_rows(
    y: &mut [f32],
    size: usize,
    multiple: usize,
    work: impl Fn(usize, &mut [f32]) + Sync,
) {
    let threads = rayon::current_num_threads();
    if threads > 1 && size >= 1 << 18 {
        let chunk = (y.len() / (4 * threads)).max(64).next_multiple_of(multiple);
        y.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, ys)| work(i * chunk, ys));
    } else {
        work(0, y);
    }
}

fn check_block(block: usize, cols: usize) -> Result<()> {
    if block == 0 {
        return Err(KernelError::InvalidGroupSize {
            group_size: block,
            cols,
        });
    }
    if block % BINARY_CHUNK != 0 {
        return Err(KernelError::NotMultiple {
            what: "binary block",
            value: block,
            multiple: BINARY_CHUNK,
        });
    }
    Ok(())
}

/// Whether [`BinaryMatrix::gemv`] must stay exact (`QWEN3_QUANT_GEMV=exact`, read once).
fn gemv_exact_only() -> bool {
    static EXACT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *EXACT.get_or_init(|| {
        std::env::var("QWEN3_QUANT_GEMV").is_ok_and(|v| v.trim().eq_ignore_ascii_case("exact"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rounding_is_exact_and_idempotent() {
        let t = [0.013f32, -0.2, 0.05, -0.051, 0.4, -0.39, 0.0, 1e-5];
        let q = BinaryTable::quantize(&t).unwrap();
        let v = q.values();
        let s = q.scale();
        assert_eq!(q.codes()[4], 127, "the largest value maps to the top code");
        for (a, b) in t.iter().zip(&v) {
            assert!((a - b).abs() <= 0.5 * s * (1.0 + 1e-6), "{a} vs {b}");
        }
        assert_eq!(BinaryTable::quantize(&v).unwrap(), q);
        assert_eq!(BinaryTable::quantize(&[0.0; 8]).unwrap().values(), [0.0; 8]);
        assert!(BinaryTable::quantize(&[f32::NAN; 8]).is_err());
        assert!(BinaryTable::from_parts([0; 8], bf16::INFINITY.to_bits()).is_err());
    }

    #[test]
    fn biased_codes_round_trip() {
        let q = BinaryTable::from_parts([-127, -1, 0, 1, 2, 50, 127, -128], 0x3c00).unwrap();
        let m =
            BinaryMatrix::from_tables(1, 64, 64, &[0; 64], &[0; 64], &[false; 64], &[q]).unwrap();
        assert_eq!(m.table(0, 0), q);
    }
}
