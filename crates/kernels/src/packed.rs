//! [`PackedMatrix`]: packed b-bit weights with per-group affine parameters, and its kernels.
//!
//! # Layout
//! Each row is padded to a multiple of [`SUPER`] = 128 columns (padding codes are 0 and the
//! kernels pad activations with 0, so padding contributes nothing). A row is cut into 16-column
//! *chunks*; chunk `t` covers storage columns `16t .. 16t+16`. For `b ∈ {1, 2, 4, 8}` a 128-column
//! superblock occupies `16·b` bytes, made of `b` 16-byte *units*; unit `u` holds the `8/b`
//! consecutive chunks `u·8/b ..`, chunk `f` of the unit in bits `f·b .. f·b+b` of each byte (byte
//! `l` of the unit carries lane `l` of every one of its chunks). So one 16-byte load,
//! zero-extended to 16 × i32, yields 16 consecutive columns after one shift and one mask: the
//! same for AVX-512 (one register) and AVX2 (two). 3-bit codes are split into a 2-bit plane
//! (low bits) followed by a 1-bit plane (high bit), both in the layout above, so a row costs
//! exactly 3 bits per (padded) weight.

use rayon::prelude::*;

use crate::dispatch::{active_kernel, KernelChoice};

mod gemv_many;
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
mod q8_gemm;
use crate::{check_len, checked_mul, KernelError, Result};

/// Columns per superblock (row padding unit).
pub(crate) const SUPER: usize = 128;
/// Columns per chunk.
pub(crate) const CHUNK: usize = 16;

/// A weight matrix `W [rows = out_features, cols = in_features]` stored as packed b-bit codes
/// (b ∈ {1, 2, 3, 4, 8}) with per-group scales and offsets (see the module docs for the layout).
///
/// Dequantized weight: `W[r, perm[j]] = scales[r, j / group_size] · codes[r, j] + offsets[r, j / group_size]`.
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    bits: u8,
    rows: usize,
    cols: usize,
    group_size: usize,
    n_groups: usize,
    pad_cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
    scales: Vec<f32>,
    offsets: Vec<f32>,
    perm: Option<Vec<u32>>,
    /// Per-input-column factors applied to `x` before the product (original column order).
    input_scale: Option<Vec<f32>>,
}

/// (byte index, shift) of storage column `j` in a plane of `b ∈ {1,2,4,8}` bits.
#[inline]
fn plane_pos(b: usize, j: usize) -> (usize, u32) {
    let sb = j / SUPER;
    let jj = j % SUPER;
    let ch = jj / CHUNK;
    let lane = jj % CHUNK;
    let k = 8 / b;
    let (u, f) = (ch / k, ch % k);
    (sb * 16 * b + u * 16 + lane, (f * b) as u32)
}

/// The 16 bytes and shift holding chunk `t` of a `b`-bit plane.
#[inline]
fn plane_chunk(plane: &[u8], b: usize, t: usize) -> (&[u8], u32) {
    let k = 8 / b;
    let sb = t / 8;
    let ch = t % 8;
    let start = sb * 16 * b + (ch / k) * 16;
    (&plane[start..start + 16], ((ch % k) * b) as u32)
}

impl PackedMatrix {
    /// Packs `codes` (`[rows, cols]` row-major, storage column order, each `< 2^bits`) with
    /// `scales`/`offsets` (`[rows, ceil(cols / group_size)]` row-major). If `perm` is given,
    /// storage column `j` holds original input column `perm[j]` (act-order).
    ///
    /// # Errors
    /// [`KernelError::UnsupportedBits`] unless `bits ∈ {1,2,3,4,8}`; [`KernelError::InvalidGroupSize`]
    /// for a zero group size; [`KernelError::ShapeMismatch`] for wrong slice lengths;
    /// [`KernelError::CodeOutOfRange`]; [`KernelError::NonFinite`] for NaN/inf scales or offsets;
    /// [`KernelError::InvalidPermutation`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bits: u8,
        rows: usize,
        cols: usize,
        group_size: usize,
        codes: &[u8],
        scales: &[f32],
        offsets: &[f32],
        perm: Option<Vec<u32>>,
    ) -> Result<Self> {
        if !matches!(bits, 1 | 2 | 3 | 4 | 8) {
            return Err(KernelError::UnsupportedBits { bits });
        }
        if group_size == 0 {
            return Err(KernelError::InvalidGroupSize { group_size, cols });
        }
        let n_groups = cols.div_ceil(group_size);
        check_len("codes", checked_mul("codes", rows, cols)?, codes.len())?;
        check_len(
            "scales",
            checked_mul("scales", rows, n_groups)?,
            scales.len(),
        )?;
        check_len("offsets", rows * n_groups, offsets.len())?;
        let limit = 1u16 << bits;
        if let Some((index, &code)) = codes
            .iter()
            .enumerate()
            .find(|(_, &c)| u16::from(c) >= limit)
        {
            return Err(KernelError::CodeOutOfRange { index, code, bits });
        }
        if !scales.iter().all(|s| s.is_finite()) {
            return Err(KernelError::NonFinite { what: "scales" });
        }
        if !offsets.iter().all(|s| s.is_finite()) {
            return Err(KernelError::NonFinite { what: "offsets" });
        }
        if let Some(p) = &perm {
            check_len("perm", cols, p.len())?;
            let mut seen = vec![false; cols];
            for &v in p {
                let v = v as usize;
                if v >= cols || seen[v] {
                    return Err(KernelError::InvalidPermutation);
                }
                seen[v] = true;
            }
        }
        let pad_cols = cols.div_ceil(SUPER) * SUPER;
        let row_bytes = pad_cols * bits as usize / 8;
        let mut data = vec![0u8; checked_mul("packed data", rows, row_bytes)?];
        if row_bytes > 0 {
            for (r, dst) in data.chunks_exact_mut(row_bytes).enumerate() {
                let src = &codes[r * cols..(r + 1) * cols];
                pack_row(bits, pad_cols, src, dst);
            }
        }
        Ok(Self {
            bits,
            rows,
            cols,
            group_size,
            n_groups,
            pad_cols,
            row_bytes,
            data,
            scales: scales.to_vec(),
            offsets: offsets.to_vec(),
            perm,
            input_scale: None,
        })
    }

    /// Multiplies every input column `j` by `scale[j]` (original column order) before the
    /// product: the kernels then compute `y = W · (x ⊙ scale)`, and [`PackedMatrix::dequantize`]
    /// returns the equivalent `W · diag(scale)`. SmoothQuant stores `W·diag(s)` and divides the
    /// activations by `s`, so it passes `scale = 1/s`.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] unless `scale.len() == cols`; [`KernelError::NonFinite`]
    /// for NaN/inf factors.
    pub fn with_input_scale(mut self, scale: Vec<f32>) -> Result<Self> {
        check_len("input scale", self.cols, scale.len())?;
        if !scale.iter().all(|v| v.is_finite()) {
            return Err(KernelError::NonFinite {
                what: "input scale",
            });
        }
        self.input_scale = Some(scale);
        Ok(self)
    }

    /// The per-input-column factors of [`PackedMatrix::with_input_scale`], if any.
    pub fn input_scale(&self) -> Option<&[f32]> {
        self.input_scale.as_deref()
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bits per code.
    pub fn bits(&self) -> u8 {
        self.bits
    }
    /// Columns per group (storage order).
    pub fn group_size(&self) -> usize {
        self.group_size
    }
    /// Groups per row, `ceil(cols / group_size)`.
    pub fn n_groups(&self) -> usize {
        self.n_groups
    }
    /// The act-order permutation (storage column `j` holds original column `perm[j]`).
    pub fn perm(&self) -> Option<&[u32]> {
        self.perm.as_deref()
    }
    /// Scales `[rows, n_groups]`, as given to [`PackedMatrix::new`].
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    /// Offsets `[rows, n_groups]`, as given to [`PackedMatrix::new`].
    pub fn offsets(&self) -> &[f32] {
        &self.offsets
    }

    /// Bytes actually held: packed codes (including row padding to 128 columns), f32 scales and
    /// offsets, the u32 permutation and the f32 input scale.
    pub fn storage_bytes(&self) -> usize {
        self.data.len()
            + 4 * (self.scales.len() + self.offsets.len())
            + 4 * self.perm.as_ref().map_or(0, Vec::len)
            + 4 * self.input_scale.as_ref().map_or(0, Vec::len)
    }

    fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Decodes chunk `t` (storage columns `16t..16t+16`) of a packed row.
    #[inline]
    fn decode_chunk(&self, row: &[u8], t: usize, out: &mut [u8; CHUNK]) {
        decode_chunk(self.bits, self.pad_cols, row, t, out);
    }

    /// The codes `[rows, cols]` in storage order (the inverse of what [`PackedMatrix::new`] got).
    pub fn unpack_codes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.rows * self.cols];
        let mut buf = [0u8; CHUNK];
        for r in 0..self.rows {
            let row = self.row(r);
            let dst = &mut out[r * self.cols..(r + 1) * self.cols];
            for (t, d) in dst.chunks_mut(CHUNK).enumerate() {
                self.decode_chunk(row, t, &mut buf);
                d.copy_from_slice(&buf[..d.len()]);
            }
        }
        out
    }

    /// Dequantizes storage columns `k0 .. k0 + kw` of rows `r0 .. r0 + nr` into `out`
    /// (`[nr, kw]` row-major, storage order). `k0` must be a multiple of 16.
    fn dequant_tile(&self, r0: usize, nr: usize, k0: usize, kw: usize, out: &mut [f32]) {
        debug_assert!(k0 % CHUNK == 0);
        let gs = self.group_size;
        let uniform = gs % CHUNK == 0;
        let mut buf = [0u8; CHUNK];
        for i in 0..nr {
            let r = r0 + i;
            let row = self.row(r);
            let sc = &self.scales[r * self.n_groups..(r + 1) * self.n_groups];
            let of = &self.offsets[r * self.n_groups..(r + 1) * self.n_groups];
            let dst = &mut out[i * kw..(i + 1) * kw];
            for (ci, d) in dst.chunks_mut(CHUNK).enumerate() {
                let col0 = k0 + ci * CHUNK;
                self.decode_chunk(row, col0 / CHUNK, &mut buf);
                if uniform {
                    let g = col0 / gs;
                    let (s, o) = (sc[g], of[g]);
                    for (dv, &c) in d.iter_mut().zip(&buf) {
                        *dv = s * f32::from(c) + o;
                    }
                } else {
                    for (l, dv) in d.iter_mut().enumerate() {
                        let g = (col0 + l) / gs;
                        *dv = sc[g] * f32::from(buf[l]) + of[g];
                    }
                }
            }
        }
    }

    /// The dense f32 weight `[rows, cols]` in **original** column order.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols == 0 {
            return out;
        }
        match &self.perm {
            None => self.dequant_tile(0, self.rows, 0, self.cols, &mut out),
            Some(p) => {
                let mut tmp = vec![0f32; self.cols];
                for r in 0..self.rows {
                    self.dequant_tile(r, 1, 0, self.cols, &mut tmp);
                    let dst = &mut out[r * self.cols..(r + 1) * self.cols];
                    for (j, &pj) in p.iter().enumerate() {
                        dst[pj as usize] = tmp[j];
                    }
                }
            }
        }
        if let Some(sc) = &self.input_scale {
            for row in out.chunks_exact_mut(self.cols) {
                row.iter_mut().zip(sc).for_each(|(w, s)| *w *= s);
            }
        }
        out
    }

    /// The dense f32 weight for an `m`-token product, when [`PackedMatrix::gemm`] would run it
    /// through the dense blocked kernel on f32 activations anyway (enough tokens for the blocked
    /// kernel, no int8 prefill activations that apply to this matrix) and the weight takes at
    /// most `max_bytes` in f32. A caller that has several such weights reading the same input
    /// (q/k/v, gate/up) multiplies them in one fused dense product, with the dense model's
    /// epilogues, instead of one product each; the values are those of
    /// [`PackedMatrix::dequantize`] (original column order, input scale applied), dequantized
    /// in parallel by the SIMD kernels.
    ///
    /// ```
    /// use qwen3_quant_kernels::PackedMatrix;
    /// let codes: Vec<u8> = (0..64 * 128).map(|i| (i % 16) as u8).collect();
    /// let params = vec![0.5f32; 64];
    /// let p = PackedMatrix::new(4, 64, 128, 128, &codes, &params, &params, None).unwrap();
    /// if let Some(w) = p.dequantized_for_prefill(256, 1 << 20) {
    ///     // The SIMD dequantization fuses `scale·code + offset` into one rounding.
    ///     let exact = p.dequantize();
    ///     assert!(w.iter().zip(&exact).all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0)));
    /// }
    /// assert!(p.dequantized_for_prefill(1, 1 << 20).is_none()); // one token: the GEMV kernels
    /// assert!(p.dequantized_for_prefill(256, 1024).is_none()); // over the size limit
    /// ```
    pub fn dequantized_for_prefill(&self, m: usize, max_bytes: usize) -> Option<Vec<f32>> {
        let choice = active_kernel().clamp_to_supported();
        let int8 = prefill_int8() && self.int8_gemm_runs();
        let bytes = self.rows.checked_mul(self.cols)?.checked_mul(4)?;
        if m <= GEMV_MAX_TOKENS
            || int8
            || choice == KernelChoice::Scalar
            || !crate::dense::blocked_available(m)
            || bytes > max_bytes
            || self.rows == 0
            || self.cols == 0
        {
            return None;
        }
        let cols = self.cols;
        let mut out = vec![0f32; self.rows * cols];
        out.par_chunks_mut(16 * cols)
            .enumerate()
            .for_each(|(c, dst)| {
                let n = dst.len() / cols;
                self.dequant_tile_with(choice, 16 * c, n, 0, cols, dst);
                if let Some(p) = &self.perm {
                    let mut row = vec![0f32; cols];
                    for r in dst.chunks_exact_mut(cols) {
                        row.copy_from_slice(r);
                        for (j, &pj) in p.iter().enumerate() {
                            r[pj as usize] = row[j];
                        }
                    }
                }
                if let Some(sc) = &self.input_scale {
                    for r in dst.chunks_exact_mut(cols) {
                        r.iter_mut().zip(sc).for_each(|(w, s)| *w *= s);
                    }
                }
            });
        Some(out)
    }

    /// The prefill products of matrices that read the same `x` (`[m, cols]`: q/k/v, or
    /// gate/up) with **shared int8 activations**: where int8 prefill activations are selected
    /// ([`prefill_int8`]) and apply to every matrix in the same input layout (same columns,
    /// groups, act-order permutation and input scale), `x` is quantized once and the outputs go
    /// side by side into `y`, `m` rows of stride `y_rs`, matrix `i` from column
    /// `Σ_{j<i} rows_j`. Each matrix's columns are the same numbers as its own
    /// [`PackedMatrix::gemm`]. Returns `Ok(false)` with `y` untouched where this does not apply
    /// (a decode step, f32 activations, different layouts, no int8 kernel); the caller then
    /// runs the products its own way.
    ///
    /// ```
    /// use qwen3_quant_kernels::{set_prefill_int8, PackedMatrix};
    /// let (cols, m) = (256, 8);
    /// let make = |rows: usize| {
    ///     let codes: Vec<u8> = (0..rows * cols).map(|i| (i % 16) as u8).collect();
    ///     let params = vec![0.01f32; rows * 2];
    ///     PackedMatrix::new(4, rows, cols, 128, &codes, &params, &params, None).unwrap()
    /// };
    /// let (q, k) = (make(32), make(16));
    /// let x: Vec<f32> = (0..m * cols).map(|i| ((i % 37) as f32 - 18.0) / 9.0).collect();
    /// set_prefill_int8(Some(true));
    /// let mut y = vec![0f32; m * 48];
    /// if PackedMatrix::gemm_int8_side_by_side(&[&q, &k], &x, m, &mut y, 48)? {
    ///     let mut alone = vec![0f32; m * 16];
    ///     k.gemm(&x, m, &mut alone)?;
    ///     assert!((0..m).all(|i| y[i * 48 + 32..(i + 1) * 48] == alone[i * 16..(i + 1) * 16]));
    /// }
    /// set_prefill_int8(None);
    /// # Ok::<(), qwen3_quant_kernels::KernelError>(())
    /// ```
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if a matrix's columns times `m` differ from `x.len()`,
    /// the matrices' rows exceed `y_rs`, or `y` is shorter than `m` rows of stride `y_rs`.
    pub fn gemm_int8_side_by_side(
        mats: &[&PackedMatrix],
        x: &[f32],
        m: usize,
        y: &mut [f32],
        y_rs: usize,
    ) -> Result<bool> {
        let Some(first) = mats.first() else {
            return Ok(false);
        };
        for p in mats {
            check_len("x", checked_mul("x", m, p.cols)?, x.len())?;
        }
        let width: usize = mats.iter().map(|p| p.rows).sum();
        if width > y_rs {
            return Err(KernelError::ShapeMismatch {
                what: "y row stride",
                expected: width,
                got: y_rs,
            });
        }
        if m > 0 && y.len() < checked_mul("y", m - 1, y_rs)? + width {
            return Err(KernelError::ShapeMismatch {
                what: "y",
                expected: (m - 1) * y_rs + width,
                got: y.len(),
            });
        }
        if m <= GEMV_MAX_TOKENS || !prefill_int8() || first.cols == 0 {
            return Ok(false);
        }
        Ok(Self::shared_int8_products(mats, x, m, y, y_rs))
    }

    /// [`PackedMatrix::gemm_int8_side_by_side`] after its checks of the shapes and of the
    /// prefill mode: runs the products if an int8 kernel applies to every matrix in one
    /// layout.
    fn shared_int8_products(
        mats: &[&PackedMatrix],
        x: &[f32],
        m: usize,
        y: &mut [f32],
        y_rs: usize,
    ) -> bool {
        #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
        if mats
            .iter()
            .all(|p| p.rows > 0 && p.int8_gemm_runs() && mats[0].shares_q8_input(p))
        {
            PackedMatrix::gemm_q8_side_by_side(mats, x, m, y, y_rs);
            return true;
        }
        let _ = (mats, x, m, y, y_rs);
        false
    }

    /// Whether this build has the int8 prefill GEMM and it applies to this matrix here
    /// ([`PackedMatrix::gemm_q8`] runs it for more than 4 tokens).
    fn int8_gemm_runs(&self) -> bool {
        #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
        return self.q8_gemm_applies();
        #[cfg(not(all(target_arch = "x86_64", qwen3_avx512)))]
        false
    }

    /// Whether the SIMD row kernels apply (group boundaries on 16-column chunk boundaries).
    fn chunk_aligned_groups(&self) -> bool {
        self.group_size % CHUNK == 0 || self.n_groups <= 1
    }

    /// Chunks per group for the chunked kernels.
    fn chunks_per_group(&self) -> usize {
        if self.n_groups <= 1 {
            self.pad_cols / CHUNK
        } else {
            self.group_size / CHUNK
        }
    }

    /// Activations permuted to storage order and zero-padded to `pad_cols`, and per-group sums.
    fn prepare_x(&self, x: &[f32], xs: &mut Vec<f32>, xsum: &mut Vec<f32>) {
        xs.clear();
        match (&self.perm, &self.input_scale) {
            (None, None) => xs.extend_from_slice(x),
            (Some(p), None) => xs.extend(p.iter().map(|&j| x[j as usize])),
            (None, Some(sc)) => xs.extend(x.iter().zip(sc).map(|(v, s)| v * s)),
            (Some(p), Some(sc)) => xs.extend(p.iter().map(|&j| x[j as usize] * sc[j as usize])),
        }
        xsum.clear();
        xsum.extend(xs.chunks(self.group_size).map(group_sum));
        xs.resize(self.pad_cols, 0.0);
    }

    /// `Σ_g scale_g · Σ_{j∈g} code_j · xs_j` for one row, portable version (any group size).
    fn row_dot_scalar(&self, r: usize, xs: &[f32]) -> f32 {
        let row = self.row(r);
        let sc = &self.scales[r * self.n_groups..(r + 1) * self.n_groups];
        let nchunks = self.cols.div_ceil(CHUNK);
        let mut buf = [0u8; CHUNK];
        let mut total = 0f32;
        if self.chunk_aligned_groups() {
            let cpg = self.chunks_per_group();
            let mut t = 0;
            let mut g = 0;
            while t < nchunks {
                let end = (t + cpg).min(nchunks);
                let mut acc = [0f32; CHUNK];
                while t < end {
                    self.decode_chunk(row, t, &mut buf);
                    let xc = &xs[t * CHUNK..t * CHUNK + CHUNK];
                    for l in 0..CHUNK {
                        acc[l] += f32::from(buf[l]) * xc[l];
                    }
                    t += 1;
                }
                total += sc[g] * acc.iter().sum::<f32>();
                g += 1;
            }
        } else {
            let gs = self.group_size;
            let mut acc = 0f32;
            let mut g = 0;
            let mut boundary = gs;
            for t in 0..nchunks {
                self.decode_chunk(row, t, &mut buf);
                for (l, &code) in buf.iter().enumerate() {
                    let col = t * CHUNK + l;
                    if col >= self.cols {
                        break;
                    }
                    if col == boundary {
                        total += sc[g] * acc;
                        acc = 0.0;
                        g += 1;
                        boundary += gs;
                    }
                    acc += f32::from(code) * xs[col];
                }
            }
            if self.n_groups > 0 {
                total += sc[g] * acc;
            }
        }
        total
    }

    /// One row's `Σ_g scale_g · Σ code·x` with the given implementation.
    #[inline]
    fn row_dot(&self, choice: KernelChoice, r: usize, xs: &[f32], bf: Option<&Bf16Prep>) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            #[cfg(qwen3_avx512)]
            if let Some(bf) = bf {
                let row = self.row(r);
                let scales = &self.scales[r * self.n_groups..(r + 1) * self.n_groups];
                debug_assert!(bf.xh.len() == self.pad_cols && bf.xl.len() == self.pad_cols);
                debug_assert!(bf.bias.len() == 8 * bf.segs.len());
                // SAFETY: `bf` exists only when the clamped choice is AVX-512 and AVX-512-BF16 was
                // detected (see `bf16_prep`), and bits ≤ 4; segments cover chunks < cols/16 rounded
                // up ≤ pad/16 with groups < n_groups = scales.len(); xh/xl hold pad_cols entries,
                // bias 8 per segment; the row holds pad_cols·bits/8 bytes.
                return unsafe {
                    crate::arch::x86_avx512::row_dot_bf16(
                        self.bits,
                        row.as_ptr(),
                        self.pad_cols,
                        bf.xh.as_ptr(),
                        bf.xl.as_ptr(),
                        scales.as_ptr(),
                        &bf.segs,
                        bf.bias.as_ptr(),
                    )
                };
            }
            if choice != KernelChoice::Scalar && self.chunk_aligned_groups() && self.cols > 0 {
                let row = self.row(r);
                let scales = &self.scales[r * self.n_groups..(r + 1) * self.n_groups];
                let nchunks = self.cols.div_ceil(CHUNK);
                let cpg = self.chunks_per_group();
                debug_assert!(xs.len() >= nchunks * CHUNK && row.len() == self.row_bytes);
                debug_assert!(scales.len() >= nchunks.div_ceil(cpg));
                match choice {
                    // SAFETY: `choice` came through `clamp_to_supported` (set_kernel_choice, the env var,
                    // detection, or the explicit *_with entry points), so the CPU has AVX-512F/BW/VL;
                    // the row holds `pad_cols·bits/8` bytes and `xs` `pad_cols` floats, covering every
                    // chunk `< nchunks`, and `scales` has one entry per group of `cpg` chunks.
                    #[cfg(qwen3_avx512)]
                    KernelChoice::Avx512 => unsafe {
                        return crate::arch::x86_avx512::row_dot_avx512(
                            self.bits,
                            row.as_ptr(),
                            self.pad_cols,
                            xs.as_ptr(),
                            scales.as_ptr(),
                            nchunks,
                            cpg,
                        );
                    },
                    // SAFETY: as above, with AVX2+FMA detected (any clamped non-scalar choice).
                    _ => unsafe {
                        return crate::arch::x86::row_dot_avx2(
                            self.bits,
                            row.as_ptr(),
                            self.pad_cols,
                            xs.as_ptr(),
                            scales.as_ptr(),
                            nchunks,
                            cpg,
                        );
                    },
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        if choice == KernelChoice::Neon && self.chunk_aligned_groups() && self.cols > 0 {
            let nchunks = self.cols.div_ceil(CHUNK);
            let scales = &self.scales[r * self.n_groups..(r + 1) * self.n_groups];
            // SAFETY: NEON is baseline on AArch64; the row holds `pad_cols·bits/8` bytes and `xs`
            // `pad_cols` floats, covering every chunk `< nchunks`, and `scales` has one entry per
            // group of `chunks_per_group` chunks.
            return unsafe {
                crate::arch::neon::row_dot_neon(
                    self.bits,
                    self.row(r).as_ptr(),
                    self.pad_cols,
                    xs.as_ptr(),
                    scales.as_ptr(),
                    nchunks,
                    self.chunks_per_group(),
                )
            };
        }
        let _ = (choice, bf);
        self.row_dot_scalar(r, xs)
    }

    /// Rows `r` and `r + 1` with the bf16 kernel (`bf` exists only where it applies).
    #[allow(unused_variables)]
    fn row2_dot_bf16(&self, r: usize, bf: &Bf16Prep) -> (f32, f32) {
        #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
        {
            let ng = self.n_groups;
            let (row0, row1) = (self.row(r), self.row(r + 1));
            let (s0, s1) = (
                &self.scales[r * ng..(r + 1) * ng],
                &self.scales[(r + 1) * ng..(r + 2) * ng],
            );
            // SAFETY: as for `row_dot_bf16` in `row_dot`, for both rows (both < rows, checked by
            // the slicing above).
            unsafe {
                crate::arch::x86_avx512::row2_dot_bf16(
                    self.bits,
                    row0.as_ptr(),
                    row1.as_ptr(),
                    self.pad_cols,
                    bf.xh.as_ptr(),
                    bf.xl.as_ptr(),
                    s0.as_ptr(),
                    s1.as_ptr(),
                    &bf.segs,
                    bf.bias.as_ptr(),
                )
            }
        }
        #[cfg(not(all(target_arch = "x86_64", qwen3_avx512)))]
        {
            unreachable!("the bf16 plan is only built with the AVX-512 kernels")
        }
    }

    /// Precomputation for the AVX-512-BF16 GEMV (None where that path does not apply).
    fn bf16_prep(&self, choice: KernelChoice, xs: &[f32]) -> Option<Bf16Prep> {
        #[cfg(target_arch = "x86_64")]
        {
            use half::bf16;
            if choice != KernelChoice::Avx512
                || !crate::dispatch::cpu().avx512bf16
                || self.bits > 4
                || self.cols == 0
            {
                return None;
            }
            if !self.chunk_aligned_groups() {
                return None;
            }
            let mut xh = Vec::with_capacity(self.pad_cols);
            let mut xl = Vec::with_capacity(self.pad_cols);
            let mut xb = Vec::with_capacity(self.pad_cols);
            for &v in xs {
                let h = bf16::from_f32(v);
                let l = bf16::from_f32(v - h.to_f32());
                xh.push(h.to_bits());
                xl.push(l.to_bits());
                xb.push(f64::from(h.to_f32()) + f64::from(l.to_f32()));
            }
            let nchunks = self.cols.div_ceil(CHUNK);
            let cpg = self.chunks_per_group();
            let mut segs = Vec::new();
            let mut bias = Vec::new();
            let mut g = 0usize;
            while g * cpg < nchunks {
                let gend = ((g + 1) * cpg).min(nchunks);
                let mut t = g * cpg;
                while t < gend {
                    let end = gend.min((t / 8 + 1) * 8);
                    segs.push(crate::arch::x86::Seg {
                        start: t as u32,
                        end: end as u32,
                        group: g as u32,
                    });
                    for i in 0..8 {
                        let s: f64 = (t..end)
                            .map(|c| xb[c * CHUNK + 2 * i] + xb[c * CHUNK + 2 * i + 1])
                            .sum();
                        bias.push((128.0 * s) as f32);
                    }
                    t = end;
                }
                g += 1;
            }
            Some(Bf16Prep { xh, xl, segs, bias })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (choice, xs);
            None
        }
    }

    /// `y[rows] = W · x` with `x[cols]` in original column order: the decode (one-token) path.
    ///
    /// Like llama.cpp's CPU kernels, it runs the int8-activation kernel [`PackedMatrix::gemv_q8`]
    /// where that applies (AVX-512-VNNI or AVX2, codes of at most 4 bits, 128-aligned groups), which is
    /// 2–3× faster than the exact kernel and within its documented activation-rounding bound;
    /// otherwise, or with `QWEN3_QUANT_GEMV=exact` (read once), the exact
    /// [`PackedMatrix::gemv_exact`]. Prefill and evaluation ([`PackedMatrix::gemm`]) are exact.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if `x.len() != cols` or `y.len() != rows`.
    pub fn gemv(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        if gemv_exact_only() {
            return self.gemv_exact(x, y);
        }
        self.gemv_q8(x, y)
    }

    /// `y[rows] = W · x` with f32 activations, using [`active_kernel`]: equal to
    /// `x · dequantize(W)ᵀ` within f32 rounding ([`crate::tolerance`]). Never materialises the
    /// f32 weight: codes are decoded 16 at a time in registers.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if `x.len() != cols` or `y.len() != rows`.
    pub fn gemv_exact(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.gemv_with(active_kernel(), x, y)
    }

    /// [`PackedMatrix::gemv_exact`] with an explicit implementation (clamped to what the CPU
    /// supports); for tests and benchmarks.
    pub fn gemv_with(&self, choice: KernelChoice, x: &[f32], y: &mut [f32]) -> Result<()> {
        check_len("x", self.cols, x.len())?;
        check_len("y", self.rows, y.len())?;
        let choice = choice.clamp_to_supported();
        let mut xs = Vec::new();
        let mut xsum = Vec::new();
        self.prepare_x(x, &mut xs, &mut xsum);
        let ng = self.n_groups;
        let bf = self.bf16_prep(choice, &xs);
        let off = |r: usize| -> f32 {
            let of = &self.offsets[r * ng..(r + 1) * ng];
            of.iter().zip(&xsum).map(|(o, s)| o * s).sum()
        };
        // Rows `r0 .. r0 + ys.len()`; pairs of rows share activation loads on the bf16 path.
        let block = |r0: usize, ys: &mut [f32]| {
            let mut i = 0;
            if let Some(bf) = bf.as_ref() {
                while i + 2 <= ys.len() {
                    let (a, b) = self.row2_dot_bf16(r0 + i, bf);
                    ys[i] = a + off(r0 + i);
                    ys[i + 1] = b + off(r0 + i + 1);
                    i += 2;
                }
            }
            for (k, yr) in ys[i..].iter_mut().enumerate() {
                let r = r0 + i + k;
                *yr = self.row_dot(choice, r, &xs, bf.as_ref()) + off(r);
            }
        };
        for_row_blocks(y, self.rows * self.cols, 8, 16, 2, block);
        Ok(())
    }

    /// Whether [`PackedMatrix::gemv_q8`] runs an int8-activation kernel for this matrix: AVX-512
    /// chosen with AVX-512-VNNI present, or AVX2 chosen; 1/2/3/4-bit codes; groups of a
    /// multiple of 128 columns or per-channel. Otherwise `gemv_q8` is the exact
    /// [`PackedMatrix::gemv`].
    pub fn q8_gemv_applies(&self) -> bool {
        self.q8_applies(active_kernel().clamp_to_supported())
    }

    fn q8_applies(&self, choice: KernelChoice) -> bool {
        let _ = choice;
        #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
        {
            let vnni = choice == KernelChoice::Avx512
                && crate::dispatch::cpu().avx512vnni
                && matches!(self.bits, 1..=4);
            let avx2 = choice == KernelChoice::Avx2 && matches!(self.bits, 1..=4);
            (vnni || avx2) && self.cols > 0 && (self.n_groups <= 1 || self.group_size % SUPER == 0)
        }
        #[cfg(not(all(target_arch = "x86_64", qwen3_avx512)))]
        {
            false
        }
    }

    /// `y = W · x` with **int8 activations** (like llama.cpp's Q8 activation blocks): `x` is
    /// quantized once per call to `q = round(x / dx)`, `dx = max|x| / 127` per block of 32
    /// (4-bit codes), 64 (2-, 3-bit) or 128 (1-bit) columns in storage order, and each block's
    /// `Σ code·q` is an exact i32 sum (AVX-512-VNNI `vpdpbusd`, or AVX2 `vpmaddubsw` + `vpmaddwd`;
    /// codes as the unsigned operand),
    /// scaled once by `scale·dx`. The offset term `Σ_g offset_g·Σ_{j∈g} x_j` uses the exact f32
    /// activations.
    ///
    /// Its error against `x · dequantize(W)ᵀ` is that of the activation rounding, bounded by
    /// [`crate::tolerance::q8_gemv_bound`], not the f32 tolerance of
    /// [`PackedMatrix::gemv_exact`]. Where it does not apply (see
    /// [`PackedMatrix::q8_gemv_applies`]) it runs the exact kernel. [`PackedMatrix::gemv`] (the
    /// decode path) uses it unless `QWEN3_QUANT_GEMV=exact` is set.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if `x.len() != cols` or `y.len() != rows`.
    pub fn gemv_q8(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.gemv_q8_with(active_kernel(), x, y)
    }

    /// [`PackedMatrix::gemv_q8`] with an explicit implementation (clamped to what the CPU supports).
    pub fn gemv_q8_with(&self, choice: KernelChoice, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.gemv_q8_impl(choice, x, y, crate::dispatch::cpu().gfni)
    }

    /// [`PackedMatrix::gemv_q8_with`], choosing the code extraction (GFNI affine ops, which the
    /// caller has checked the CPU has, or shifts and masks).
    fn gemv_q8_impl(
        &self,
        choice: KernelChoice,
        x: &[f32],
        y: &mut [f32],
        gfni: bool,
    ) -> Result<()> {
        let _ = gfni;
        check_len("x", self.cols, x.len())?;
        check_len("y", self.rows, y.len())?;
        let choice = choice.clamp_to_supported();
        if !self.q8_applies(choice) {
            return self.gemv_with(choice, x, y);
        }
        #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
        {
            let mut xs = Vec::new();
            let mut xsum = Vec::new();
            self.prepare_x(x, &mut xs, &mut xsum);
            let prep = self.q8_prep(&xs);
            let view = crate::arch::x86_avx512::Q8View {
                bits: self.bits,
                pad: self.pad_cols,
                row_bytes: self.row_bytes,
                xq_a: &prep.xq_a,
                dx_a: &prep.dx_a,
                gidx: &prep.gidx,
                xsum: &xsum,
                n_groups: self.n_groups,
                gfni,
            };
            let block = |r0: usize, ys: &mut [f32]| {
                // SAFETY: `q8_applies` checked AVX-512 (clamped choice) and VNNI, or AVX2;
                // rows r0..r0+ys.len() < rows; `data`, `scales`, `offsets` hold
                // every row; the view was built by `q8_prep` for this matrix.
                unsafe { self.q8_rows(choice, &view, r0, ys) }
            };
            // About 16 row blocks per thread, at least 64 rows each (multiples of 8 rows): task
            // overhead stays far below the per-block work, and the last tasks are short enough
            // to balance two threads slowed unevenly by a shared machine. On 2-core Zen 3 VMs,
            // 4 blocks per thread gave 80% of the read probe, 16 gave 84% (`gemv_bandwidth`).
            for_row_blocks(y, self.rows * self.cols, 16, 64, 8, block);
        }
        Ok(())
    }

    /// The int8-activation rows `r0..r0 + ys.len()` with the kernel of `choice`.
    ///
    /// # Safety
    /// [`PackedMatrix::q8_applies`] holds for `choice`; the rows exist; `view` was built by
    /// `q8_prep` for this matrix.
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    pub(crate) unsafe fn q8_rows(
        &self,
        choice: KernelChoice,
        view: &crate::arch::x86_avx512::Q8View<'_>,
        r0: usize,
        ys: &mut [f32],
    ) {
        let (d, s, o) = (
            self.data.as_ptr(),
            self.scales.as_ptr(),
            self.offsets.as_ptr(),
        );
        // SAFETY: forwarded caller contract (the CPU features of `choice` were checked by
        // `q8_applies`).
        unsafe {
            if choice == KernelChoice::Avx512 {
                crate::arch::x86_avx512::gemv_q8_rows(view, d, s, o, r0, ys)
            } else {
                crate::arch::x86_avx2_q8::gemv_q8_rows(view, d, s, o, r0, ys)
            }
        }
    }

    /// Columns per activation scale in the int8-activation GEMV: the columns one i32 lane of the
    /// VNNI kernel sums (see `q8_prep`), 32 for 4-bit codes, 64 for 2- and 3-bit, 128 for 1-bit.
    #[cfg_attr(not(all(target_arch = "x86_64", qwen3_avx512)), allow(dead_code))]
    fn q8_block(&self) -> usize {
        match self.bits {
            4 => 32,
            2 | 3 => 64,
            _ => SUPER,
        }
    }

    /// Int8 activations arranged for the VNNI kernel (see `arch::x86_avx512`), from the
    /// storage-order, zero-padded activations `xs`.
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    fn q8_prep(&self, xs: &[f32]) -> Q8Prep {
        let n_sb = self.pad_cols / SUPER;
        let block = self.q8_block();
        let (q, dx) = quantize_x_q8(xs, block);
        let arrange = |p: usize| -> (Vec<i8>, Vec<f32>) {
            let k = 8 / p;
            let nsb = 4 / p;
            let nblk = n_sb.div_ceil(nsb);
            let mut xq = vec![0i8; nblk * 64 * k];
            let mut dv = vec![0f32; nblk * 16];
            for blk in 0..nblk {
                for f in 0..k {
                    for lane in 0..4 {
                        let sb = blk * nsb + lane / p;
                        if sb >= n_sb {
                            continue;
                        }
                        let chunk = (lane % p) * k + f;
                        let col = sb * SUPER + chunk * CHUNK;
                        let dst = blk * 64 * k + f * 64 + lane * 16;
                        xq[dst..dst + 16].copy_from_slice(&q[col..col + 16]);
                    }
                }
                // i32 lane `i` sums bytes 4i..4i+4 of unit `u = i / 4` over every shift: columns
                // of the unit's first chunk onwards, all inside one `block`.
                for i in 0..16 {
                    let u = i / 4;
                    let sb = blk * nsb + u / p;
                    if sb < n_sb {
                        let col = sb * SUPER + (u % p) * k * CHUNK;
                        dv[blk * 16 + i] = dx[col / block];
                    }
                }
            }
            (xq, dv)
        };
        let (xq_a, dx_a) = arrange(if self.bits == 3 {
            2
        } else {
            self.bits as usize
        });
        let gidx = (0..n_sb.next_multiple_of(4))
            .map(|sb| {
                if self.n_groups <= 1 {
                    0
                } else {
                    ((sb * SUPER / self.group_size).min(self.n_groups - 1)) as u32
                }
            })
            .collect();
        Q8Prep { xq_a, dx_a, gidx }
    }

    /// `y[m, rows] = x[m, cols] · Wᵀ` with **int8 activations** for more than 4 tokens (the
    /// prefill counterpart of [`PackedMatrix::gemv_q8`]: activations quantized per token and per
    /// 32-column block, exact i32 `vpdpbusd` sums per block scaled by `scale·dx`, the offset
    /// term on the exact activation sums). Where it does not apply (no AVX-512-VNNI, groups not
    /// whole 32-column blocks) it is [`PackedMatrix::gemm`] with f32 activations.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if `x.len() != m·cols` or `y.len() != m·rows`.
    pub fn gemm_q8(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        check_len("x", checked_mul("x", m, self.cols)?, x.len())?;
        check_len("y", checked_mul("y", m, self.rows)?, y.len())?;
        #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
        if m > GEMV_MAX_TOKENS && self.rows > 0 && self.int8_gemm_runs() {
            self.gemm_q8_int8(x, m, y);
            return Ok(());
        }
        self.gemm_with(active_kernel(), x, m, y)
    }

    /// `y[m, rows] = x[m, cols] · Wᵀ` (prefill path), using [`active_kernel`]: f32 activations
    /// ([`PackedMatrix::gemm_with`]) unless int8 prefill activations were selected
    /// ([`set_prefill_int8`] or `QWEN3_QUANT_GEMM=q8`), then [`PackedMatrix::gemm_q8`].
    ///
    /// Small `m` runs the GEMV kernel per token. Otherwise the weight is dequantized one
    /// `[ROW_BLOCK, K_PANEL]` tile at a time into a per-task scratch buffer (cache resident) and
    /// multiplied with the `gemm` crate's f32 micro-kernels, accumulating over K panels.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] if `x.len() != m·cols` or `y.len() != m·rows`.
    pub fn gemm(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        if prefill_int8() {
            return self.gemm_q8(x, m, y);
        }
        self.gemm_with(active_kernel(), x, m, y)
    }

    /// [`PackedMatrix::gemm`] with an explicit implementation (clamped to what the CPU supports).
    pub fn gemm_with(
        &self,
        choice: KernelChoice,
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<()> {
        self.gemm_exact_with(choice, x, m, y)
    }

    /// The f32-activation GEMM.
    fn gemm_exact_with(
        &self,
        choice: KernelChoice,
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<()> {
        check_len("x", checked_mul("x", m, self.cols)?, x.len())?;
        check_len("y", checked_mul("y", m, self.rows)?, y.len())?;
        let choice = choice.clamp_to_supported();
        if m == 0 || self.rows == 0 {
            return Ok(());
        }
        if self.cols == 0 {
            y.fill(0.0);
            return Ok(());
        }
        if m <= GEMV_MAX_TOKENS {
            let mut yt = vec![0f32; self.rows];
            for i in 0..m {
                self.gemv_with(choice, &x[i * self.cols..(i + 1) * self.cols], &mut yt)?;
                y[i * self.rows..(i + 1) * self.rows].copy_from_slice(&yt);
            }
            return Ok(());
        }
        let permuted;
        let xs: &[f32] = if self.perm.is_none() && self.input_scale.is_none() {
            x
        } else {
            let (mut v, mut xsum) = (Vec::with_capacity(m * self.pad_cols), Vec::new());
            let mut row = Vec::new();
            for src in x.chunks_exact(self.cols) {
                self.prepare_x(src, &mut row, &mut xsum);
                v.extend_from_slice(&row[..self.cols]);
            }
            permuted = v;
            &permuted
        };
        let rows = self.rows;
        let cols = self.cols;
        if choice != KernelChoice::Scalar && crate::dense::blocked_available(m) {
            self.gemm_dense_blocks(choice, xs, m, y);
            return Ok(());
        }
        let n_blocks = rows.div_ceil(ROW_BLOCK);
        let yp = SendPtr(y.as_mut_ptr());
        let task = |b: usize| {
            let yp = &yp;
            let r0 = b * ROW_BLOCK;
            let nr = ROW_BLOCK.min(rows - r0);
            let mut tile = vec![0f32; nr * K_PANEL.min(cols)];
            let mut k0 = 0;
            while k0 < cols {
                let kw = K_PANEL.min(cols - k0);
                self.dequant_tile_with(choice, r0, nr, k0, kw, &mut tile[..nr * kw]);
                // SAFETY: lhs `xs[i, k0 + p]` at `i·cols + k0 + p` < m·cols (checked length);
                // rhs tile `(p, j)` at `j·kw + p` < nr·kw; dst `y[i, r0 + j]` at `i·rows + r0 + j`
                // < m·rows (checked length). Tasks write disjoint column ranges `r0..r0+nr` of `y`,
                // so no two threads touch the same element, and `y` outlives the scope.
                unsafe {
                    gemm::gemm(
                        m,
                        nr,
                        kw,
                        yp.0.add(r0),
                        1,
                        rows as isize,
                        k0 > 0,
                        xs.as_ptr().add(k0),
                        1,
                        cols as isize,
                        tile.as_ptr(),
                        kw as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                k0 += kw;
            }
        };
        if rayon::current_num_threads() > 1 && n_blocks > 1 {
            (0..n_blocks).into_par_iter().for_each(task);
        } else {
            (0..n_blocks).for_each(task);
        }
        Ok(())
    }

    /// The f32-activation GEMM through the dense blocked kernel: [`dense_rows`] weight rows at
    /// a time are dequantized (in parallel) into f32 rows and multiplied by
    /// [`crate::dense::gemm_wt`], so the result is bit for bit the dense product with the
    /// dequantized weight, the fake-quant model's arithmetic. `xs` is in storage order.
    fn gemm_dense_blocks(&self, choice: KernelChoice, xs: &[f32], m: usize, y: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        let block = dense_rows(rows, cols);
        let mut w = vec![0f32; block * cols];
        for r0 in (0..rows).step_by(block) {
            let nr = block.min(rows - r0);
            w[..nr * cols]
                .par_chunks_mut(16 * cols)
                .enumerate()
                .for_each(|(c, dst)| {
                    let n = dst.len() / cols;
                    self.dequant_tile_with(choice, r0 + 16 * c, n, 0, cols, dst);
                });
            let lhs = crate::dense::Lhs::new(xs, m, cols);
            let epilogue = crate::dense::Epilogue::Store;
            crate::dense::gemm_wt(lhs, &[&w[..nr * cols]], epilogue, &mut y[r0..], rows);
        }
    }

    fn dequant_tile_with(
        &self,
        choice: KernelChoice,
        r0: usize,
        nr: usize,
        k0: usize,
        kw: usize,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if choice != KernelChoice::Scalar && self.chunk_aligned_groups() {
                let cpg = self.chunks_per_group();
                for i in 0..nr {
                    let r = r0 + i;
                    let row = self.row(r);
                    let sc = &self.scales[r * self.n_groups..(r + 1) * self.n_groups];
                    let of = &self.offsets[r * self.n_groups..(r + 1) * self.n_groups];
                    let dst = &mut out[i * kw..(i + 1) * kw];
                    // SAFETY: the choice is clamped to a supported ISA (AVX2 or AVX-512 implies AVX2+FMA);
                    // chunks `k0/16 .. ceil((k0+kw)/16)` lie inside the padded row; the kernel writes
                    // only `dst[..kw]` (the tail chunk through a bounded copy) and reads
                    // `sc`/`of` at `t / cpg` for those chunks, which are < n_groups.
                    unsafe {
                        crate::arch::x86::dequant_row_avx2(
                            self.bits,
                            row.as_ptr(),
                            self.pad_cols,
                            sc.as_ptr(),
                            of.as_ptr(),
                            cpg,
                            k0 / CHUNK,
                            dst,
                        );
                    }
                }
                return;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if choice == KernelChoice::Neon && self.chunk_aligned_groups() {
            let cpg = self.chunks_per_group();
            for i in 0..nr {
                let r = r0 + i;
                let sc = &self.scales[r * self.n_groups..(r + 1) * self.n_groups];
                let of = &self.offsets[r * self.n_groups..(r + 1) * self.n_groups];
                // SAFETY: NEON is baseline on AArch64; chunks `k0/16 .. ceil((k0+kw)/16)` lie inside
                // the padded row; the kernel writes only `out[i·kw..(i+1)·kw]` and reads `sc`/`of`
                // at `t / cpg` for those chunks, which are < n_groups.
                unsafe {
                    crate::arch::neon::dequant_row_neon(
                        self.bits,
                        self.row(r).as_ptr(),
                        self.pad_cols,
                        sc.as_ptr(),
                        of.as_ptr(),
                        cpg,
                        k0 / CHUNK,
                        &mut out[i * kw..(i + 1) * kw],
                    );
                }
            }
            return;
        }
        let _ = choice;
        self.dequant_tile(r0, nr, k0, kw, out);
    }
}

/// Activations prepared for the AVX-512-BF16 GEMV: `x ≈ hi + lo` as bf16 bits, the row's
/// segments (≤ 8 chunks of one group) and each segment's per-lane bias `128·Σ(hi + lo)`.
#[allow(dead_code)] // read only by the AVX-512 kernels, which some targets/compilers lack
struct Bf16Prep {
    xh: Vec<u16>,
    xl: Vec<u16>,
    #[cfg(target_arch = "x86_64")]
    segs: Vec<crate::arch::x86::Seg>,
    bias: Vec<f32>,
}

/// Int8 activations for the VNNI GEMV (see [`PackedMatrix::gemv_q8`]).
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
struct Q8Prep {
    xq_a: Vec<i8>,
    dx_a: Vec<f32>,
    gidx: Vec<u32>,
}

/// Int8 activations per `block` columns (32, 64 or 128; `xs.len()` a multiple of 128):
/// `q = round_half_even(x / dx)` clamped to ±127 with `dx = max|x| / 127` per block. Smaller
/// blocks keep an outlier channel (Qwen3 has a few "massive" activation channels) from coarsening
/// the step of more than its own block.
#[cfg_attr(not(all(target_arch = "x86_64", qwen3_avx512)), allow(dead_code))]
pub(crate) fn quantize_x_q8(xs: &[f32], block: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; xs.len()];
    let mut dx = vec![0f32; xs.len() / block];
    quantize_x_q8_into(xs, block, &mut q, &mut dx);
    (q, dx)
}

/// [`quantize_x_q8`] into caller-owned buffers: `q` of `xs.len()` codes and `dx` of one step
/// per block (every element written).
#[cfg_attr(not(all(target_arch = "x86_64", qwen3_avx512)), allow(dead_code))]
pub(crate) fn quantize_x_q8_into(xs: &[f32], block: usize, q: &mut [i8], dx: &mut [f32]) {
    debug_assert!(xs.len() % SUPER == 0 && matches!(block, 32 | 64 | 128));
    debug_assert!(q.len() == xs.len() && dx.len() == xs.len() / block);
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    {
        // The vector quantizer of the CPU and its lanes per vector.
        type Block = unsafe fn(*const f32, *mut i8, usize) -> f32;
        let cpu = crate::dispatch::cpu();
        let vector: Option<(Block, usize)> = if cpu.avx512 {
            Some((crate::arch::x86_avx512::quantize_block_q8, 16))
        } else if cpu.avx2 {
            Some((crate::arch::x86_avx2_q8::quantize_block_q8, 8))
        } else {
            None
        };
        if let Some((quantize, lanes)) = vector {
            let blocks = xs.chunks_exact(block).zip(q.chunks_exact_mut(block));
            for ((xb, qb), d) in blocks.zip(dx.iter_mut()) {
                // SAFETY: the CPU has the quantizer's features (checked above); both blocks hold
                // exactly `block` elements, a multiple of `lanes`.
                *d = unsafe { quantize(xb.as_ptr(), qb.as_mut_ptr(), block / lanes) };
            }
            return;
        }
    }
    quantize_x_q8_scalar(xs, block, q, dx);
}

/// Portable [`quantize_x_q8_into`].
#[cfg_attr(not(all(target_arch = "x86_64", qwen3_avx512)), allow(dead_code))]
pub(crate) fn quantize_x_q8_scalar(xs: &[f32], block: usize, q: &mut [i8], dx: &mut [f32]) {
    let blocks = xs.chunks_exact(block).zip(q.chunks_exact_mut(block));
    for ((xb, qb), dx) in blocks.zip(dx.iter_mut()) {
        let amax = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        *dx = d;
        if d > 0.0 && d.is_finite() {
            let inv = 1.0 / d;
            for (qv, &v) in qb.iter_mut().zip(xb) {
                *qv = crate::round::round_half_even(v * inv).clamp(-127.0, 127.0) as i8;
            }
        } else {
            qb.fill(0);
        }
    }
}

/// The exact activation sum of one group (accumulated in f64), which the offset term multiplies.
pub(crate) fn group_sum(xs: &[f32]) -> f32 {
    xs.iter().map(|&v| f64::from(v)).sum::<f64>() as f32
}

/// 0: not set (read `QWEN3_QUANT_GEMM`), 1: exact, 2: int8.
static PREFILL_INT8: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Selects int8 activations (`Some(true)`), f32 activations (`Some(false)`) or the environment's
/// choice (`None`: `QWEN3_QUANT_GEMM=q8` for int8, read once; f32 otherwise) for
/// [`PackedMatrix::gemm`], process-wide. The GEMV (decode) has its own switch.
pub fn set_prefill_int8(choice: Option<bool>) {
    let v = match choice {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    };
    PREFILL_INT8.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`PackedMatrix::gemm`] quantizes activations to int8 (see [`set_prefill_int8`]).
pub fn prefill_int8() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    match PREFILL_INT8.load(std::sync::atomic::Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => *ENV.get_or_init(|| {
            std::env::var("QWEN3_QUANT_GEMM").is_ok_and(|v| v.trim().eq_ignore_ascii_case("q8"))
        }),
    }
}

/// Whether [`PackedMatrix::gemv`] must stay exact (`QWEN3_QUANT_GEMV=exact`).
fn gemv_exact_only() -> bool {
    static EXACT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *EXACT.get_or_init(|| {
        std::env::var("QWEN3_QUANT_GEMV").is_ok_and(|v| v.trim().eq_ignore_ascii_case("exact"))
    })
}

/// Up to this many tokens, [`PackedMatrix::gemm`] runs GEMV per token.
const GEMV_MAX_TOKENS: usize = 4;
/// Output rows per GEMM task.
const ROW_BLOCK: usize = 256;
/// Bytes of dequantized f32 weight rows the dense blocked path holds at a time. Each block is
/// one product that packs the activations again, so a whole matrix up to this size (every
/// linear of qwen3-micro; 4096 rows at Qwen3-1.7B's 2048 columns) is one block.
const DENSE_BLOCK_BYTES: usize = 32 << 20;

/// Weight rows per block of the dense blocked path: [`DENSE_BLOCK_BYTES`] of f32 rows, in
/// multiples of 16 and at least 256 (4 MB at 4096 columns).
fn dense_rows(rows: usize, cols: usize) -> usize {
    (DENSE_BLOCK_BYTES / (4 * cols.max(1)) / 16 * 16)
        .max(256)
        .min(rows)
}
/// Input columns per dequantized panel (multiple of 128).
const K_PANEL: usize = 512;

struct SendPtr(*mut f32);
// SAFETY: used only to let GEMM tasks write disjoint column ranges of one output buffer.
unsafe impl Sync for SendPtr {}
// SAFETY: as above.
unsafe impl Send for SendPtr {}

/// Decodes chunk `t` of a packed row into 16 codes.
#[inline]
pub(crate) fn decode_chunk(bits: u8, pad_cols: usize, row: &[u8], t: usize, out: &mut [u8; CHUNK]) {
    if bits == 3 {
        let (lo, sl) = plane_chunk(&row[..pad_cols / 4], 2, t);
        let (hi, sh) = plane_chunk(&row[pad_cols / 4..], 1, t);
        for l in 0..CHUNK {
            out[l] = ((lo[l] >> sl) & 3) | (((hi[l] >> sh) & 1) << 2);
        }
    } else {
        let b = bits as usize;
        let (p, s) = plane_chunk(row, b, t);
        let mask = ((1u16 << b) - 1) as u8;
        for l in 0..CHUNK {
            out[l] = (p[l] >> s) & mask;
        }
    }
}

pub(crate) fn pack_row(bits: u8, pad_cols: usize, src: &[u8], dst: &mut [u8]) {
    if bits == 3 {
        let (lo, hi) = dst.split_at_mut(pad_cols / 4);
        for (j, &c) in src.iter().enumerate() {
            let (i, s) = plane_pos(2, j);
            lo[i] |= (c & 3) << s;
            let (i, s) = plane_pos(1, j);
            hi[i] |= ((c >> 2) & 1) << s;
        }
    } else {
        let b = bits as usize;
        for (j, &c) in src.iter().enumerate() {
            let (i, s) = plane_pos(b, j);
            dst[i] |= c << s;
        }
    }
}

/// Runs `block(first_row, rows_of_y)` over `y` split into row blocks across rayon threads
/// (`blocks_per_thread` blocks each, at least `min_rows` rows, a multiple of `multiple`), or in
/// one call when the product is too small (`work` = rows·cols) to repay the fork/join.
fn for_row_blocks(
    y: &mut [f32],
    work: usize,
    blocks_per_thread: usize,
    min_rows: usize,
    multiple: usize,
    block: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    let threads = rayon::current_num_threads();
    if threads > 1 && work >= 1 << 18 {
        let chunk = (y.len() / (threads * blocks_per_thread))
            .max(min_rows)
            .next_multiple_of(multiple);
        y.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(ci, ys)| block(ci * chunk, ys));
    } else {
        block(0, y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD activation quantizer is bit-identical to the portable one, ties included.
    #[test]
    fn q8_activation_quantizer_matches_scalar() {
        let mut xs: Vec<f32> = (0..1024)
            .map(|i| (((i * 2654435761u64 as usize) >> 9) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        // Exact .5 ties after scaling: max 127 makes d = 1, so x/d = x.
        xs[..128]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i as f32 - 64.0) + 0.5);
        xs[0] = 127.0;
        xs[256..384].fill(0.0);
        for block in [32, 64, 128] {
            let (q, dx) = quantize_x_q8(&xs, block);
            let (mut q2, mut dx2) = (vec![1i8; xs.len()], vec![f32::NAN; xs.len() / block]);
            quantize_x_q8_scalar(&xs, block, &mut q2, &mut dx2);
            assert_eq!(q, q2, "block {block}");
            assert_eq!(dx, dx2, "block {block}");
            assert_eq!(dx.len(), xs.len() / block);
            // The AVX2 quantizer too, where the dispatch above took the AVX-512 one.
            #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
            if crate::dispatch::cpu().avx2 {
                let mut q3 = vec![0i8; xs.len()];
                for (b, (xb, qb)) in xs
                    .chunks_exact(block)
                    .zip(q3.chunks_exact_mut(block))
                    .enumerate()
                {
                    // SAFETY: AVX2 checked; both blocks hold `block` (a multiple of 8) elements.
                    let d = unsafe {
                        crate::arch::x86_avx2_q8::quantize_block_q8(
                            xb.as_ptr(),
                            qb.as_mut_ptr(),
                            block / 8,
                        )
                    };
                    assert_eq!(d, dx2[b], "AVX2 block {block}");
                }
                assert_eq!(q3, q2, "AVX2 block {block}");
            }
        }
        assert_eq!(quantize_x_q8(&xs, 128).0[1], -62); // -62.5 rounds to even
    }

    /// The f32 AVX-512 / AVX2 row kernels for every width (the public entry points prefer the
    /// bf16 kernel for ≤ 4 bits where the CPU has it, so exercise the others directly).
    #[test]
    fn every_row_kernel_matches_scalar() {
        let (rows, cols) = (3usize, 300usize);
        for bits in [1u8, 2, 3, 4, 8] {
            for gs in [16usize, 32, 128, cols] {
                let ng = cols.div_ceil(gs);
                let max = (1u32 << bits) - 1;
                let codes: Vec<u8> = (0..rows * cols)
                    .map(|i| ((i * 2654435761) >> 7) as u32 % (max + 1))
                    .map(|c| c as u8)
                    .collect();
                let scales: Vec<f32> = (0..rows * ng)
                    .map(|i| 0.01 + 0.001 * (i % 7) as f32)
                    .collect();
                let offsets: Vec<f32> = (0..rows * ng).map(|i| -0.02 * (i % 5) as f32).collect();
                let p = PackedMatrix::new(bits, rows, cols, gs, &codes, &scales, &offsets, None)
                    .unwrap();
                let x: Vec<f32> = (0..cols)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                    .collect();
                let (mut xs, mut xsum) = (Vec::new(), Vec::new());
                p.prepare_x(&x, &mut xs, &mut xsum);
                for choice in crate::available_kernels() {
                    let bf = p.bf16_prep(choice, &xs);
                    for r in 0..rows {
                        let reference = p.row_dot_scalar(r, &xs);
                        for (name, got) in [
                            ("f32", p.row_dot(choice, r, &xs, None)),
                            ("default", p.row_dot(choice, r, &xs, bf.as_ref())),
                        ] {
                            let tol = 1e-4 * (1.0 + reference.abs()) * (max as f32).sqrt();
                            assert!(
                                (got - reference).abs() <= tol,
                                "{choice:?} {name} bits {bits} gs {gs}: {got} vs {reference}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The largest integer sums the int8 GEMV can meet: every code at its maximum and every
    /// activation at ±127 after quantization. The AVX2 kernel adds code·activation pairs in i16
    /// over all the shifts of a byte before widening; an overflow there would be far off.
    #[test]
    fn q8_gemv_exact_at_extreme_codes_and_activations() {
        let _g = crate::test_support::hold_globals();
        let (rows, cols, gs) = (16usize, 1024usize, 128usize);
        let ng = cols / gs;
        for bits in [1u8, 2, 3, 4] {
            let max = ((1u32 << bits) - 1) as u8;
            let codes = vec![max; rows * cols];
            let scales = vec![1.0f32; rows * ng];
            let offsets = vec![0.0f32; rows * ng];
            let p =
                PackedMatrix::new(bits, rows, cols, gs, &codes, &scales, &offsets, None).unwrap();
            for sign in [1.0f32, -1.0] {
                let x = vec![sign; cols];
                for choice in crate::available_kernels() {
                    let mut y = vec![f32::NAN; rows];
                    p.gemv_q8_with(choice, &x, &mut y).unwrap();
                    let want = sign * f32::from(max) * cols as f32;
                    for (r, v) in y.iter().enumerate() {
                        assert!(
                            (v - want).abs() <= want.abs() * 1e-6,
                            "{choice:?} bits {bits} row {r}: {v} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The int8-activation GEMV equals its own definition (f64 evaluation of
    /// `Σ scale·dx·Σ code·q + Σ offset·xsum`) to f32 rounding, and stays within the documented
    /// activation-rounding bound of `x · dequantize(W)ᵀ`; every width, group layout, odd shapes,
    /// act-order, serial and parallel row blocks.
    #[test]
    fn q8_gemv_matches_definition_and_bound() {
        let _g = crate::test_support::hold_globals();
        for &(rows, cols) in &[(7usize, 300usize), (5, 128), (66, 1000), (600, 1024)] {
            for bits in [1u8, 2, 3, 4, 8] {
                for gs in [32usize, 128, 256, cols] {
                    let ng = cols.div_ceil(gs);
                    let max = (1u32 << bits) - 1;
                    let codes: Vec<u8> = (0..rows * cols)
                        .map(|i| (((i * 2654435761) >> 7) as u32 % (max + 1)) as u8)
                        .collect();
                    let scales: Vec<f32> = (0..rows * ng)
                        .map(|i| 0.01 + 0.001 * (i % 7) as f32)
                        .collect();
                    let offsets: Vec<f32> =
                        (0..rows * ng).map(|i| -0.02 * (i % 5) as f32).collect();
                    let perm: Option<Vec<u32>> =
                        (cols == 300).then(|| (0..cols as u32).rev().collect());
                    let p = PackedMatrix::new(
                        bits,
                        rows,
                        cols,
                        gs,
                        &codes,
                        &scales,
                        &offsets,
                        perm.clone(),
                    )
                    .unwrap();
                    let x: Vec<f32> = (0..cols)
                        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0 * (1.0 + (i % 13) as f32))
                        .collect();
                    for choice in crate::available_kernels() {
                        let mut y = vec![f32::NAN; rows];
                        p.gemv_q8_with(choice, &x, &mut y).unwrap();
                        // The shift-and-mask extraction gives the same integer sums as GFNI's.
                        let mut y2 = vec![f32::NAN; rows];
                        p.gemv_q8_impl(choice, &x, &mut y2, false).unwrap();
                        assert_eq!(
                            y, y2,
                            "{choice:?} bits {bits} gs {gs} {rows}x{cols}: GFNI vs shift/mask"
                        );
                        let (mut xs, mut xsum) = (Vec::new(), Vec::new());
                        p.prepare_x(&x, &mut xs, &mut xsum);
                        let block = p.q8_block();
                        let (q, dx) = quantize_x_q8(&xs, block);
                        // Every kernel with an int8 path takes it: AVX-512-VNNI and AVX2.
                        let applies = p.q8_applies(choice);
                        let vnni =
                            choice == KernelChoice::Avx512 && crate::dispatch::cpu().avx512vnni;
                        let avx2 = choice == KernelChoice::Avx2 && matches!(bits, 1..=4);
                        assert_eq!(
                            applies,
                            cfg!(all(target_arch = "x86_64", qwen3_avx512))
                                && (vnni || avx2)
                                && (ng <= 1 || gs % SUPER == 0)
                        );
                        for r in 0..rows {
                            let (mut def, mut exact, mut bound_sum, mut xn, mut wn) =
                                (0f64, 0f64, 0f64, 0f64, 0f64);
                            for j in 0..cols {
                                let g = j / gs;
                                let (s, o) = (
                                    f64::from(scales[r * ng + g]),
                                    f64::from(offsets[r * ng + g]),
                                );
                                let c = f64::from(codes[r * cols + j]);
                                let b = j / block;
                                def += s * c * f64::from(dx[b]) * f64::from(q[j])
                                    + o * f64::from(xs[j]);
                                exact += (s * c + o) * f64::from(xs[j]);
                                bound_sum += (s * c).abs() * f64::from(dx[b]);
                                xn += f64::from(xs[j]).powi(2);
                                wn += (s * c + o).powi(2);
                            }
                            let (xn, wn) = (xn.sqrt() as f32, wn.sqrt() as f32);
                            let got = f64::from(y[r]);
                            let tol = f64::from(
                                crate::tolerance::rel_tol(bits) * xn * wn
                                    + crate::tolerance::ABS_FLOOR,
                            );
                            if applies {
                                assert!((got - def).abs() <= tol, "{choice:?} bits {bits} gs {gs} {rows}x{cols} row {r}: {got} vs definition {def}");
                                let b = f64::from(crate::tolerance::q8_gemv_bound(
                                    bound_sum as f32,
                                    xn,
                                    wn,
                                ));
                                assert!(
                                (got - exact).abs() <= b,
                                "{choice:?} bits {bits} gs {gs} row {r}: {got} vs exact {exact} (bound {b})"
                            );
                            } else {
                                assert!(
                                (got - exact).abs() <= tol,
                                "{choice:?} fallback bits {bits} gs {gs} row {r}: {got} vs {exact}"
                            );
                            }
                        }
                    }
                }
            }
        }
    }
}
