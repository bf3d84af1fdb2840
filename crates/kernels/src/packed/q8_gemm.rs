//! The prefill GEMM of [`PackedMatrix`] with **int8 activations** (AVX-512-VNNI): each token's
//! activations are quantized like the decode path's (`q = round(x / dx)`, `dx = max|x| / 127` per
//! block of 32 storage columns, [`super::quantize_x_q8`]), the codes are unpacked once per call
//! into 16-row panels of bytes, and a 12-token × 16-row tile adds `vpdpbusd` (unsigned code ×
//! signed activation, exact i32 sums of 4 products) over each 32-column block, then
//! `scale_g · dx_b` times that sum into f32 accumulators. The offset term
//! `Σ_g offset_g · Σ_{j∈g} x_j` uses the exact f32 activation sums, as in the GEMV.

#![allow(clippy::incompatible_msrv)] // gated on the compiler version by build.rs

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{PackedMatrix, CHUNK};

/// Tokens per tile.
const TM: usize = 12;
/// Output rows per tile (one register of i32 / f32 lanes).
const TN: usize = 16;
/// Activation block (columns sharing one `dx`).
const QB: usize = 32;
/// Tokens per task block (their int8 rows stay in L2 while the weight panels stream).
const TOKENS_PER_TASK: usize = 8 * TM;

impl PackedMatrix {
    /// Whether [`PackedMatrix::gemm_q8`] runs its VNNI kernel here: AVX-512 selected with VNNI,
    /// and groups that are whole 32-column blocks (or one group per row).
    pub fn q8_gemm_applies(&self) -> bool {
        crate::dispatch::active_kernel() == crate::KernelChoice::Avx512
            && crate::dispatch::cpu().avx512vnni
            && self.cols > 0
            && (self.n_groups <= 1 || self.group_size % QB == 0)
    }

    /// The int8-activation product (see the module docs); `x` `[m, cols]` in original column
    /// order, `y` `[m, rows]`. Callers check shapes and [`PackedMatrix::q8_gemm_applies`].
    pub(super) fn gemm_q8_vnni(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let (rows, kp) = (self.rows, self.pad_cols);
        let nb = kp / QB;
        let ng = self.n_groups.max(1);
        // Activations: int8 codes [m][kp], dx [m][nb], group sums [m][ng], padded with zero
        // tokens to whole 12-token tiles (the tile always computes 12).
        let mp = m.div_ceil(TM) * TM;
        let mut q = vec![0i8; mp * kp];
        let mut dx = vec![0f32; mp * nb];
        let mut xsum = vec![0f32; mp * ng];
        q.par_chunks_mut(kp)
            .zip(dx.par_chunks_mut(nb))
            .zip(xsum.par_chunks_mut(ng))
            .take(m)
            .enumerate()
            .for_each(|(i, ((qi, di), si))| {
                let (mut xs, mut sums) = (Vec::new(), Vec::new());
                self.prepare_x(&x[i * self.cols..(i + 1) * self.cols], &mut xs, &mut sums);
                let (qq, dd) = super::quantize_x_q8(&xs, QB);
                qi.copy_from_slice(&qq);
                di.copy_from_slice(&dd);
                si[..sums.len()].copy_from_slice(&sums);
            });
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
                        for (c, &code) in buf.iter().enumerate() {
                            let j = t * CHUNK + c;
                            w[(j / 4) * TN * 4 + l * 4 + j % 4] = code;
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
            rows,
        };
        let y_addr = y.as_mut_ptr() as usize;
        let token_blocks = m.div_ceil(TOKENS_PER_TASK);
        let groups = (4 * rayon::current_num_threads())
            .div_ceil(token_blocks)
            .clamp(1, panels);
        let per_group = panels.div_ceil(groups);
        (0..token_blocks * groups).into_par_iter().for_each(|t| {
            let (tb, g) = (t / groups, t % groups);
            let i0 = tb * TOKENS_PER_TASK;
            let i1 = (i0 + TOKENS_PER_TASK).min(m);
            for p in g * per_group..((g + 1) * per_group).min(panels) {
                let mut i = i0;
                while i < i1 {
                    let tm = TM.min(i1 - i);
                    // SAFETY: AVX-512F/BW + VNNI (q8_gemm_applies); the panel and activation
                    // slices cover the tile; the tile writes rows i..i+tm (< m) and columns
                    // p·16.. (< rows) of y, disjoint between tasks.
                    unsafe {
                        tile(
                            &shape,
                            &w8[p * kp * TN..(p + 1) * kp * TN],
                            &sc[p * ng * TN..(p + 1) * ng * TN],
                            &of[p * ng * TN..(p + 1) * ng * TN],
                            &q[i * kp..],
                            &dx[i * nb..],
                            &xsum[i * ng..],
                            tm,
                            (y_addr as *mut f32).wrapping_add(i * rows + p * TN),
                            TN.min(rows - p * TN),
                        );
                    }
                    i += tm;
                }
            }
        });
    }
}

struct Shape {
    kp: usize,
    nb: usize,
    ng: usize,
    blocks_per_group: usize,
    rows: usize,
}

/// 12 tokens × 16 rows, of which the first `tm` tokens are stored.
///
/// # Safety
/// AVX-512F/BW and AVX-512-VNNI; `q`, `dx`, `xsum` hold 12 tokens' rows; `y` is valid for
/// `tm` rows of stride `s.rows` with `cols` columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    s: &Shape,
    w: &[u8],
    sc: &[f32],
    of: &[f32],
    q: &[i8],
    dx: &[f32],
    xsum: &[f32],
    tm: usize,
    y: *mut f32,
    cols: usize,
) {
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
        unsafe { _mm512_mask_storeu_ps(y.add(i * s.rows), mask, *fi) };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn int8_gemm_equals_the_int8_gemv_row_by_row() {
        let _g = crate::test_support::hold_globals();
        if !crate::dispatch::cpu().avx512vnni
            || crate::active_kernel() != crate::KernelChoice::Avx512
        {
            return; // nothing to compare on this CPU
        }
        // Row edges of the 16-row panel, token edges of the 12-token tile, act-order.
        for &(rows, cols, gs, m, perm) in &[
            (37, 256, 128, 29, false),
            (16, 384, 128, 5, true),
            (50, 200, 200, 13, false),
        ] {
            let p = crate::test_support::packed_matrix(4, rows, cols, gs, 0, perm);
            assert!(p.q8_gemm_applies() && p.q8_gemv_applies());
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
            // And it is not the f32-activation product (the rounding shows).
            let mut ye = vec![0.0f32; m * rows];
            p.gemm_with(crate::KernelChoice::Avx512, &x, m, &mut ye)
                .unwrap();
            assert!(y
                .iter()
                .zip(&ye)
                .any(|(a, b)| (a - b).abs() > 1e-4 * (1.0 + b.abs())));
        }
    }
}
