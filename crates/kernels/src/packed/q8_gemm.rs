//! The prefill GEMM of [`PackedMatrix`] with **int8 activations**: each token's activations are
//! quantized like the decode path's (`q = round(x / dx)`, `dx = max|x| / 127` per block of 32
//! storage columns, [`super::quantize_x_q8`]), the codes are unpacked once per call into 16-row
//! panels of bytes, and a tile of tokens × 16 rows forms the exact i32 sum of each 32-column
//! block, then adds `scale_g · dx_b` times that sum into f32 accumulators. The offset term
//! `Σ_g offset_g · Σ_{j∈g} x_j` uses the exact f32 activation sums, as in the GEMV.
//!
//! Two tiles compute the same integers, so the same bits:
//! - AVX-512-VNNI, 12 tokens: `vpdpbusd` (unsigned code × signed activation, 4 products per i32
//!   lane), any code width.
//! - AVX2, 6 tokens: `vpmaddubsw` (pairs of products summed into i16 lanes), added in i16 over
//!   the block's 8 steps and widened once per block by `vpmaddwd` with ones. That needs codes of
//!   at most 4 bits: a lane then holds at most 8 · 2 · 15 · 128 = 30720 < 2¹⁵.

#![allow(clippy::incompatible_msrv)] // gated on the compiler version by build.rs

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{PackedMatrix, CHUNK};

/// Tokens per tile of the VNNI kernel.
const TM: usize = 12;
/// Tokens per tile of the AVX2 kernel: 12 i16 accumulators, two weight registers, the
/// broadcast and one product (all 16 `ymm` registers; the compiler spills one accumulator,
/// which measured no slower than 5 tokens without a spill).
const TM_AVX2: usize = 6;
/// Widest codes the AVX2 tile takes (its i16 block sums must not overflow).
const AVX2_MAX_BITS: u8 = 4;
/// Output rows per tile (one register of i32 / f32 lanes).
const TN: usize = 16;
/// Activation block (columns sharing one `dx`).
const QB: usize = 32;
/// Tokens per task block (their int8 rows stay in L2 while the weight panels stream), rounded
/// down to whole tiles.
const TOKENS_PER_TASK: usize = 8 * TM;

/// The int8 tile a CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Q8Tile {
    Vnni,
    Avx2,
}

impl Q8Tile {
    fn tokens(self) -> usize {
        match self {
            Q8Tile::Vnni => TM,
            Q8Tile::Avx2 => TM_AVX2,
        }
    }
}

impl PackedMatrix {
    /// The int8 tile for this matrix here, if any: groups must be whole 32-column blocks (or
    /// one group per row); VNNI where AVX-512 is selected and the CPU has it, else AVX2 for codes
    /// of at most 4 bits where AVX2 or AVX-512 is selected.
    fn q8_gemm_tile(&self) -> Option<Q8Tile> {
        use crate::KernelChoice::{Avx2, Avx512};
        if self.cols == 0 || !(self.n_groups <= 1 || self.group_size % QB == 0) {
            return None;
        }
        let (kernel, cpu) = (crate::dispatch::active_kernel(), crate::dispatch::cpu());
        if kernel == Avx512 && cpu.avx512vnni {
            Some(Q8Tile::Vnni)
        } else if matches!(kernel, Avx2 | Avx512) && cpu.avx2 && self.bits <= AVX2_MAX_BITS {
            Some(Q8Tile::Avx2)
        } else {
            None
        }
    }

    /// Whether [`PackedMatrix::gemm_q8`] runs an int8 kernel here: AVX-512-VNNI (any code
    /// width), or AVX2 with codes of at most 4 bits; groups must be whole 32-column blocks (or
    /// one group per row).
    pub fn q8_gemm_applies(&self) -> bool {
        self.q8_gemm_tile().is_some()
    }

    /// The int8-activation product (see the module docs); `x` `[m, cols]` in original column
    /// order, `y` `[m, rows]`. Callers check shapes and [`PackedMatrix::q8_gemm_applies`].
    pub(super) fn gemm_q8_int8(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let Some(kind) = self.q8_gemm_tile() else {
            unreachable!("callers check q8_gemm_applies")
        };
        let acts = self.q8_activations(kind, x, m);
        // SAFETY: `y` holds `m` rows of `rows` floats.
        unsafe { self.gemm_q8_prepared(kind, &acts, m, y.as_mut_ptr(), self.rows) };
    }

    /// Whether `other` reads its input in the same int8 layout on the same tile (same
    /// columns, padding, groups, act-order permutation and input scale), so that one
    /// [`Q8Activations`] serves both.
    pub(super) fn shares_q8_input(&self, other: &PackedMatrix) -> bool {
        self.q8_gemm_tile() == other.q8_gemm_tile()
            && (self.cols, self.pad_cols, self.group_size, self.n_groups)
                == (other.cols, other.pad_cols, other.group_size, other.n_groups)
            && self.perm == other.perm
            && self.input_scale == other.input_scale
    }

    /// `y[:, c_i .. c_i + rows_i] = x · W_iᵀ` for matrices that read the same `x` in the same
    /// int8 layout, side by side in rows of stride `y_rs` (`c_i` the rows of the matrices before
    /// `i`): the activations are quantized once for all of them. Each matrix's columns are the
    /// same numbers as its own [`PackedMatrix::gemm_q8`]. Callers check shapes, `m > 4` and
    /// [`PackedMatrix::q8_gemm_applies`] and [`PackedMatrix::shares_q8_input`] for all.
    pub(super) fn gemm_q8_side_by_side(
        mats: &[&PackedMatrix],
        x: &[f32],
        m: usize,
        y: &mut [f32],
        y_rs: usize,
    ) {
        let Some(kind) = mats[0].q8_gemm_tile() else {
            unreachable!("callers check q8_gemm_applies")
        };
        let acts = mats[0].q8_activations(kind, x, m);
        let mut c0 = 0;
        for p in mats {
            // SAFETY: `y` holds `m` rows of stride `y_rs ≥ c0 + rows` (checked by the caller).
            unsafe { p.gemm_q8_prepared(kind, &acts, m, y.as_mut_ptr().add(c0), y_rs) };
            c0 += p.rows;
        }
    }

    /// The int8 activations of `m` tokens of `x` (`[m, cols]`, original column order) in this
    /// matrix's storage layout, padded with zero tokens to whole tiles of `kind` (a tile always
    /// computes all its tokens).
    fn q8_activations(&self, kind: Q8Tile, x: &[f32], m: usize) -> Q8Activations {
        let kp = self.pad_cols;
        let nb = kp / QB;
        let ng = self.n_groups.max(1);
        let mp = m.div_ceil(kind.tokens()) * kind.tokens();
        let mut q = vec![0i8; mp * kp];
        let mut dx = vec![0f32; mp * nb];
        let mut xsum = vec![0f32; mp * ng];
        q.par_chunks_mut(kp)
            .zip(dx.par_chunks_mut(nb))
            .zip(xsum.par_chunks_mut(ng))
            .take(m)
            .enumerate()
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(xs, sums), (i, ((qi, di), si))| {
                    let xi = &x[i * self.cols..(i + 1) * self.cols];
                    if self.perm.is_none() && self.input_scale.is_none() && kp == self.cols {
                        // Storage order, nothing to pad: quantize the row where it is.
                        super::quantize_x_q8_into(xi, QB, qi, di);
                        for (s, c) in si.iter_mut().zip(xi.chunks(self.group_size.max(1))) {
                            *s = super::group_sum(c);
                        }
                        return;
                    }
                    self.prepare_x(xi, xs, sums);
                    super::quantize_x_q8_into(xs, QB, qi, di);
                    si[..sums.len()].copy_from_slice(sums);
                },
            );
        Q8Activations { q, dx, xsum }
    }

    /// The product of this matrix with prepared activations into `y`: `m` rows of stride
    /// `y_rs`, this matrix's `rows` columns from `y`.
    ///
    /// # Safety
    /// `acts` comes from [`PackedMatrix::q8_activations`] of `m` tokens with `kind` on a matrix
    /// that [`PackedMatrix::shares_q8_input`] with this one; `y` is valid for `m` rows of stride
    /// `y_rs` with `rows` columns each, and no other thread writes them during the call.
    unsafe fn gemm_q8_prepared(
        &self,
        kind: Q8Tile,
        acts: &Q8Activations,
        m: usize,
        y: *mut f32,
        y_rs: usize,
    ) {
        let tm_tile = kind.tokens();
        let (rows, kp) = (self.rows, self.pad_cols);
        let nb = kp / QB;
        let ng = self.n_groups.max(1);
        let Q8Activations { q, dx, xsum } = acts;
        // Weights: panels of 16 rows, [kp/4][16][4] code bytes; scales/offsets [ng][16].
        let panels = rows.div_ceil(TN);
        let mut w8 = vec![0u8; panels * kp * TN];
        let mut sc = vec![0f32; panels * ng * TN];
        let mut of = vec![0f32; panels * ng * TN];
        w8.par_chunks_mut(kp * TN)
            .zip(sc.par_chunks_mut(ng * TN))
            .zip(of.par_chunks_mut(ng * TN))
            .enumerate()
            .for_each(|(p, ((w, s), o))| {
                let mut buf = [0u8; CHUNK];
                for l in 0..TN.min(rows - p * TN) {
                    let r = p * TN + l;
                    let row = self.row(r);
                    for t in 0..kp / CHUNK {
                        self.decode_chunk(row, t, &mut buf);
                        // Four consecutive codes of the row go together to [k4][l][0..4].
                        for (c4, codes) in buf.chunks_exact(4).enumerate() {
                            let k4 = (t * CHUNK) / 4 + c4;
                            w[k4 * TN * 4 + l * 4..][..4].copy_from_slice(codes);
                        }
                    }
                    for g in 0..self.n_groups {
                        s[g * TN + l] = self.scales[r * self.n_groups + g];
                        o[g * TN + l] = self.offsets[r * self.n_groups + g];
                    }
                }
            });
        let blocks_per_group = if self.n_groups <= 1 {
            nb
        } else {
            self.group_size / QB
        };
        let shape = Shape {
            kp,
            nb,
            ng: self.n_groups,
            blocks_per_group,
            y_rs,
        };
        let y_addr = y as usize;
        let per_task = TOKENS_PER_TASK / tm_tile * tm_tile;
        let token_blocks = m.div_ceil(per_task);
        let groups = (4 * rayon::current_num_threads())
            .div_ceil(token_blocks)
            .clamp(1, panels);
        let per_group = panels.div_ceil(groups);
        (0..token_blocks * groups).into_par_iter().for_each(|t| {
            let (tb, g) = (t / groups, t % groups);
            let i0 = tb * per_task;
            let i1 = (i0 + per_task).min(m);
            for p in g * per_group..((g + 1) * per_group).min(panels) {
                let mut i = i0;
                while i < i1 {
                    let tm = tm_tile.min(i1 - i);
                    let args = TileArgs {
                        w: &w8[p * kp * TN..(p + 1) * kp * TN],
                        sc: &sc[p * ng * TN..(p + 1) * ng * TN],
                        of: &of[p * ng * TN..(p + 1) * ng * TN],
                        q: &q[i * kp..],
                        dx: &dx[i * nb..],
                        xsum: &xsum[i * ng..],
                        tm,
                        y: (y_addr as *mut f32).wrapping_add(i * y_rs + p * TN),
                        cols: TN.min(rows - p * TN),
                    };
                    // SAFETY: the CPU has the tile's features (q8_gemm_tile); the panel and
                    // activation slices cover the tile (activations padded to whole tiles);
                    // the tile writes rows i..i+tm (< m) and columns p·16.. (< rows) of y,
                    // disjoint between tasks; the AVX2 tile gets codes of at most 4 bits.
                    unsafe {
                        match kind {
                            Q8Tile::Vnni => tile(&shape, &args),
                            Q8Tile::Avx2 => tile_avx2(&shape, &args),
                        }
                    }
                    i += tm;
                }
            }
        });
    }
}

/// Int8 activations of a product (see [`PackedMatrix::q8_activations`]): codes `[mp][kp]`, a
/// scale per 32-column block `[mp][nb]` and the exact sums per group `[mp][ng]`.
struct Q8Activations {
    q: Vec<i8>,
    dx: Vec<f32>,
    xsum: Vec<f32>,
}

struct Shape {
    kp: usize,
    nb: usize,
    ng: usize,
    blocks_per_group: usize,
    /// Row stride of the output.
    y_rs: usize,
}

/// One tile's operands: a 16-row weight panel (`[kp/4][16][4]` code bytes, scales and offsets
/// `[ng][16]`) and the activations from the tile's first token.
struct TileArgs<'a> {
    w: &'a [u8],
    sc: &'a [f32],
    of: &'a [f32],
    q: &'a [i8],
    dx: &'a [f32],
    xsum: &'a [f32],
    /// Tokens stored (the tile computes all of its own).
    tm: usize,
    y: *mut f32,
    /// Output rows stored, at most 16.
    cols: usize,
}

/// 12 tokens × 16 rows, of which the first `tm` tokens are stored.
///
/// # Safety
/// AVX-512F/BW and AVX-512-VNNI; `q`, `dx`, `xsum` hold 12 tokens' rows; `y` is valid for
/// `tm` rows of stride `s.y_rs` with `cols` columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile(s: &Shape, a: &TileArgs<'_>) {
    let TileArgs {
        w,
        sc,
        of,
        q,
        dx,
        xsum,
        tm,
        y,
        cols,
    } = *a;
    let mut f = [_mm512_setzero_ps(); TM];
    let zero = _mm512_setzero_si512();
    for b in 0..s.nb {
        let mut acc = [zero; TM];
        for st in 0..QB / 4 {
            let k4 = b * (QB / 4) + st;
            // SAFETY: k4 < kp/4, so the 64 bytes are inside the panel.
            let wv = unsafe { _mm512_loadu_si512(w[k4 * TN * 4..].as_ptr() as *const _) };
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: token i's codes have kp bytes; 4·k4 + 4 ≤ kp.
                let qv =
                    unsafe { (q.as_ptr().add(i * s.kp + 4 * k4) as *const i32).read_unaligned() };
                *a = _mm512_dpbusd_epi32(*a, wv, _mm512_set1_epi32(qv));
            }
        }
        let g = if s.ng <= 1 { 0 } else { b / s.blocks_per_group };
        // SAFETY: g < ng, 16 scales per group.
        let scv = unsafe { _mm512_loadu_ps(sc[g * TN..].as_ptr()) };
        for i in 0..TM {
            let d = _mm512_mul_ps(scv, _mm512_set1_ps(dx[i * s.nb + b]));
            f[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i]), d, f[i]);
        }
    }
    let mask = if cols >= TN {
        0xffff
    } else {
        ((1u32 << cols) - 1) as __mmask16
    };
    for (i, fi) in f.iter_mut().enumerate().take(tm) {
        for g in 0..s.ng.max(1) {
            // SAFETY: 16 offsets per group.
            let ov = unsafe { _mm512_loadu_ps(of[g * TN..].as_ptr()) };
            *fi = _mm512_fmadd_ps(ov, _mm512_set1_ps(xsum[i * s.ng.max(1) + g]), *fi);
        }
        // SAFETY: row i of the tile, `cols` lanes.
        unsafe { _mm512_mask_storeu_ps(y.add(i * s.y_rs), mask, *fi) };
    }
}

/// 6 tokens × 16 rows (two halves of 8), of which the first `tm` tokens are stored; the same
/// sums as [`tile`] (see the module docs).
///
/// # Safety
/// AVX2 and FMA; codes of at most [`AVX2_MAX_BITS`] bits; `q`, `dx`, `xsum` hold 6 tokens'
/// rows; `y` is valid for `tm` rows of stride `s.y_rs` with `cols` columns.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(s: &Shape, a: &TileArgs<'_>) {
    const T: usize = TM_AVX2;
    let ones = _mm256_set1_epi16(1);
    let mut f = [[_mm256_setzero_ps(); 2]; T];
    let (w, q) = (a.w.as_ptr(), a.q.as_ptr());
    for b in 0..s.nb {
        macro_rules! block {
            ($( $r:ident $i:literal ),*) => {{
                $( let mut $r = [_mm256_setzero_si256(); 2]; )*
                for st in 0..QB / 4 {
                    let k4 = b * (QB / 4) + st;
                    // SAFETY: k4 < kp/4: the panel's 64 bytes of this step, and 4 bytes of
                    // each token's kp codes.
                    let (w0, w1) = unsafe {
                        let wp = w.add(k4 * TN * 4);
                        (
                            _mm256_loadu_si256(wp as *const __m256i),
                            _mm256_loadu_si256(wp.add(32) as *const __m256i),
                        )
                    };
                    $(
                        let xv = _mm256_set1_epi32(unsafe {
                            (q.add($i * s.kp + 4 * k4) as *const i32).read_unaligned()
                        });
                        $r[0] = _mm256_add_epi16($r[0], _mm256_maddubs_epi16(w0, xv));
                        $r[1] = _mm256_add_epi16($r[1], _mm256_maddubs_epi16(w1, xv));
                    )*
                }
                [$($r),*]
            }};
        }
        let acc = block!(r0 0, r1 1, r2 2, r3 3, r4 4, r5 5);
        let g = if s.ng <= 1 { 0 } else { b / s.blocks_per_group };
        // SAFETY: g < ng, 16 scales per group.
        let scv = unsafe {
            [
                _mm256_loadu_ps(a.sc.as_ptr().add(g * TN)),
                _mm256_loadu_ps(a.sc.as_ptr().add(g * TN + 8)),
            ]
        };
        for (i, (fi, ai)) in f.iter_mut().zip(&acc).enumerate() {
            let d = _mm256_set1_ps(a.dx[i * s.nb + b]);
            for h in 0..2 {
                let sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(ai[h], ones));
                fi[h] = _mm256_fmadd_ps(sum, _mm256_mul_ps(scv[h], d), fi[h]);
            }
        }
    }
    let ng = s.ng.max(1);
    for (i, fi) in f.iter_mut().enumerate().take(a.tm) {
        for g in 0..ng {
            let xs = _mm256_set1_ps(a.xsum[i * ng + g]);
            for (h, fh) in fi.iter_mut().enumerate() {
                // SAFETY: 16 offsets per group.
                let ov = unsafe { _mm256_loadu_ps(a.of.as_ptr().add(g * TN + 8 * h)) };
                *fh = _mm256_fmadd_ps(ov, xs, *fh);
            }
        }
        // SAFETY: row i of the tile has `cols` writable lanes; 16 floats of `row`.
        unsafe {
            let dst = a.y.add(i * s.y_rs);
            if a.cols == TN {
                _mm256_storeu_ps(dst, fi[0]);
                _mm256_storeu_ps(dst.add(8), fi[1]);
            } else {
                let mut row = [0f32; TN];
                _mm256_storeu_ps(row.as_mut_ptr(), fi[0]);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), fi[1]);
                std::ptr::copy_nonoverlapping(row.as_ptr(), dst, a.cols);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::PackedMatrix;

    /// The int8 product by its definition, in f64: each token's activations quantized per
    /// 32-column block (`q = round(x / dx)`, `dx = max|x| / 127`), the codes' part of each
    /// weight times `q·dx`, and each group's offset times the exact activation sum. Columns in
    /// storage order (no act-order permutation).
    fn int8_definition(p: &PackedMatrix, x: &[f32], m: usize) -> Vec<f64> {
        let (rows, cols, ng) = (p.rows, p.cols, p.n_groups.max(1));
        let w = p.dequantize();
        let mut y = vec![0f64; m * rows];
        for i in 0..m {
            let xi = &x[i * cols..(i + 1) * cols];
            let mut xq = vec![0f64; cols];
            for (b, blk) in xi.chunks(super::QB).enumerate() {
                let d = blk.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                for (j, &v) in blk.iter().enumerate() {
                    let q = if d > 0.0 {
                        crate::round::round_half_even(v * (1.0 / d)).clamp(-127.0, 127.0)
                    } else {
                        0.0
                    };
                    xq[b * super::QB + j] = f64::from(q) * f64::from(d);
                }
            }
            for r in 0..rows {
                let mut acc = 0f64;
                for j in 0..cols {
                    let g = (j / p.group_size).min(ng - 1);
                    let off = f64::from(p.offsets[r * p.n_groups + g]);
                    acc += (f64::from(w[r * cols + j]) - off) * xq[j] + off * f64::from(xi[j]);
                }
                y[i * rows + r] = acc;
            }
        }
        y
    }

    #[test]
    fn int8_gemm_is_the_int8_definition_at_every_width_it_takes() {
        let _g = crate::test_support::hold_globals();
        let mut checked = 0;
        // Row edges of the 16-row panel, token edges of both tiles (12 and 6 tokens), one group
        // per row, and the widest codes everywhere (the AVX2 tile's i16 bound).
        for bits in [1u8, 2, 3, 4, 8] {
            for &(rows, cols, gs, m, extreme) in &[
                (37, 256, 128, 29, false),
                (16, 384, 128, 7, false),
                (50, 192, 192, 13, false),
                (24, 256, 64, 19, true),
            ] {
                let mut p =
                    crate::test_support::packed_matrix(bits, rows, cols, gs, bits.into(), false);
                if extreme {
                    let top = vec![(1u8 << bits) - 1; rows * cols];
                    let ng = cols.div_ceil(gs);
                    p = PackedMatrix::new(
                        bits,
                        rows,
                        cols,
                        gs,
                        &top,
                        &vec![0.01; rows * ng],
                        &vec![-0.02; rows * ng],
                        None,
                    )
                    .unwrap();
                }
                if !p.q8_gemm_applies() {
                    continue;
                }
                let x: Vec<f32> = if extreme {
                    // Every activation code ±127: the largest sums a block can hold.
                    (0..m * cols)
                        .map(|i| if (i / cols) % 2 == 0 { 3.0 } else { -3.0 })
                        .collect()
                } else {
                    (0..m * cols)
                        .map(|i| (((i * 7919) % 1013) as f32 - 506.0) / 200.0)
                        .collect()
                };
                let mut y = vec![f32::NAN; m * rows];
                p.gemm_q8(&x, m, &mut y).unwrap();
                let want = int8_definition(&p, &x, m);
                for (k, (&a, &b)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(a) - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{bits}-bit {rows}x{cols} g{gs}: token {} row {}: {a} vs {b}",
                        k / rows,
                        k % rows
                    );
                }
                // And it is not the f32-activation product (the rounding shows).
                if !extreme {
                    let mut ye = vec![0.0f32; m * rows];
                    p.gemm_with(crate::KernelChoice::Scalar, &x, m, &mut ye)
                        .unwrap();
                    assert!(y
                        .iter()
                        .zip(&ye)
                        .any(|(a, b)| (a - b).abs() > 1e-4 * (1.0 + b.abs())));
                }
                checked += 1;
            }
        }
        let cpu = crate::dispatch::cpu();
        if cpu.avx2
            && matches!(
                crate::active_kernel(),
                crate::KernelChoice::Avx2 | crate::KernelChoice::Avx512
            )
        {
            // Widths 1 to 4 everywhere with AVX2, 8 too with VNNI.
            assert!(checked >= 16, "only {checked} cases ran");
        }
    }

    #[test]
    fn side_by_side_products_quantize_once_and_equal_each_product() {
        let _g = crate::test_support::hold_globals();
        let (cols, m) = (256, 13);
        let x: Vec<f32> = (0..m * cols)
            .map(|i| (((i * 7919) % 1013) as f32 - 506.0) / 200.0)
            .collect();
        for perm in [false, true] {
            // q/k/v-like: three heights, one layout; 5 spare columns per output row.
            let mats: Vec<PackedMatrix> = [(48, 1), (16, 2), (37, 3)]
                .iter()
                .map(|&(rows, seed)| {
                    crate::test_support::packed_matrix(4, rows, cols, 128, seed, perm)
                })
                .collect();
            if !mats[0].q8_gemm_applies() {
                return; // no int8 kernel on this CPU
            }
            let refs: Vec<&PackedMatrix> = mats.iter().collect();
            let y_rs = 48 + 16 + 37 + 5;
            let mut y = vec![f32::NAN; m * y_rs];
            assert!(PackedMatrix::shared_int8_products(
                &refs, &x, m, &mut y, y_rs
            ));
            let mut c0 = 0;
            for p in &mats {
                let mut alone = vec![0.0f32; m * p.rows];
                p.gemm_q8(&x, m, &mut alone).unwrap();
                for i in 0..m {
                    let got = &y[i * y_rs + c0..i * y_rs + c0 + p.rows];
                    let want = &alone[i * p.rows..(i + 1) * p.rows];
                    assert!(
                        got.iter()
                            .zip(want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "perm {perm} token {i} from column {c0}"
                    );
                }
                c0 += p.rows;
            }
            assert!((0..m).all(|i| y[i * y_rs + c0..(i + 1) * y_rs].iter().all(|v| v.is_nan())));
        }
        // Different act-order permutations read different int8 rows: not shared, y untouched.
        let a = crate::test_support::packed_matrix(4, 16, cols, 128, 1, false);
        let b = crate::test_support::packed_matrix(4, 16, cols, 128, 1, true);
        let mut y = vec![f32::NAN; m * 32];
        assert!(!PackedMatrix::shared_int8_products(
            &[&a, &b],
            &x,
            m,
            &mut y,
            32
        ));
        assert!(y.iter().all(|v| v.is_nan()));
        // Shapes are checked before anything else.
        assert!(PackedMatrix::gemm_int8_side_by_side(&[&a, &b], &x, m, &mut y, 31).is_err());
        assert!(PackedMatrix::gemm_int8_side_by_side(&[&a], &x[1..], m, &mut y, 32).is_err());
        assert!(PackedMatrix::gemm_int8_side_by_side(&[&a], &x, m, &mut y[..40], 32).is_err());
    }

    #[test]
    fn int8_gemm_equals_the_int8_gemv_row_by_row() {
        let _g = crate::test_support::hold_globals();
        // Row edges of the 16-row panel, token edges of the tiles, act-order.
        for &(rows, cols, gs, m, perm) in &[
            (37, 256, 128, 29, false),
            (16, 384, 128, 5, true),
            (50, 200, 200, 13, false),
        ] {
            let p = crate::test_support::packed_matrix(4, rows, cols, gs, 0, perm);
            if !(p.q8_gemm_applies() && p.q8_gemv_applies()) {
                continue; // nothing to compare on this CPU
            }
            let x: Vec<f32> = (0..m * cols)
                .map(|i| (((i * 7919) % 1013) as f32 - 506.0) / 200.0)
                .collect();
            let mut y = vec![f32::NAN; m * rows];
            p.gemm_q8(&x, m, &mut y).unwrap();
            let mut yr = vec![0.0f32; rows];
            for i in 0..m {
                p.gemv_q8(&x[i * cols..(i + 1) * cols], &mut yr).unwrap();
                for (r, (&a, &b)) in y[i * rows..(i + 1) * rows].iter().zip(&yr).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "token {i} row {r}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
