//! Fused causal attention (flash-attention style) for prefill and calibration: scores of 14
//! queries × up to [`KEY_CHUNK`] keys at a time, an online softmax with a vectorised `exp`, and
//! `P · V` accumulated into a 14 × head_dim tile, so the `[seq, seq]` score matrix is never
//! materialised and nothing but the output is written to memory.
//!
//! Available with AVX-512 ([`fused_available`]); the model keeps its straightforward path
//! (the `gemm` crate and a row softmax) elsewhere, and tests compare the two.

use rayon::prelude::*;

/// Keys whose scores are held at once for one 14-query panel.
pub const KEY_CHUNK: usize = 256;

/// Shapes of one batched causal GQA attention over rows of a token-major buffer.
#[derive(Clone, Copy, Debug)]
pub struct CausalShape {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` is a multiple of it).
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Score scale (`1/sqrt(head_dim)`).
    pub scale: f32,
}

/// Whether [`causal_attention`] runs here (AVX-512 selected).
pub fn fused_available() -> bool {
    cfg!(all(target_arch = "x86_64", qwen3_avx512))
        && crate::dispatch::active_kernel() == crate::KernelChoice::Avx512
}

/// `out[t, h·hd..] = softmax(q_h(t) · K_g(..=t)ᵀ · scale) · V_g(..=t)` for every token `t` of
/// every sequence and every query head `h` (`g = h / (heads / kv_heads)`).
///
/// `q`, `k`, `v` are token-major: token `t` (row `b·seq + s`) of head `h` is at
/// `q[t·q_rs + h·hd..][..hd]` (likewise `k`, `v` with `kv_rs` and the kv head); `out` rows
/// have stride `out_rs` and get `heads·hd` values. The three inputs may be column ranges of one
/// buffer (fused q/k/v projections).
///
/// # Panics
/// If [`fused_available`] is false, or a slice is shorter than the shapes say.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    shape: CausalShape,
    q: &[f32],
    q_rs: usize,
    k: &[f32],
    v: &[f32],
    kv_rs: usize,
    out: &mut [f32],
    out_rs: usize,
) {
    assert!(fused_available(), "fused attention needs AVX-512");
    let CausalShape {
        batch,
        seq,
        heads,
        kv_heads,
        head_dim: hd,
        ..
    } = shape;
    let rows = batch * seq;
    if rows == 0 || heads == 0 {
        return;
    }
    assert!(
        kv_heads > 0 && heads % kv_heads == 0,
        "attention: heads not a multiple of kv heads"
    );
    assert!(q_rs >= heads * hd && kv_rs >= kv_heads * hd && out_rs >= heads * hd);
    assert!(
        q.len() >= (rows - 1) * q_rs + heads * hd,
        "attention: q too short"
    );
    assert!(
        k.len() >= (rows - 1) * kv_rs + kv_heads * hd,
        "attention: k too short"
    );
    assert!(
        v.len() >= (rows - 1) * kv_rs + kv_heads * hd,
        "attention: v too short"
    );
    assert!(
        out.len() >= (rows - 1) * out_rs + heads * hd,
        "attention: out too short"
    );
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    {
        let out_addr = out.as_mut_ptr() as usize;
        (0..batch * kv_heads).into_par_iter().for_each(|bg| {
            let (b, g) = (bg / kv_heads, bg % kv_heads);
            // SAFETY: AVX-512 checked above; bounds asserted above; each task writes the
            // columns of the query heads of its kv group in the rows of its sequence only.
            unsafe {
                fused::group(
                    shape,
                    b,
                    g,
                    q,
                    q_rs,
                    k,
                    v,
                    kv_rs,
                    out_addr as *mut f32,
                    out_rs,
                );
            }
        });
    }
    #[cfg(not(all(target_arch = "x86_64", qwen3_avx512)))]
    let _ = (q, k, v, out);
}

#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
#[allow(clippy::incompatible_msrv)] // gated on the compiler version by build.rs
mod fused {
    use std::arch::x86_64::*;

    use super::{CausalShape, KEY_CHUNK};
    use crate::dense::avx512::{exp16, lanes, tile, tile_with, TileStore, MR, NR};

    /// All query heads of kv group `g` of sequence `b`.
    ///
    /// # Safety
    /// AVX-512F; the extents asserted by `causal_attention`; `out` valid for those rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn group(
        s: CausalShape,
        b: usize,
        g: usize,
        q: &[f32],
        q_rs: usize,
        k: &[f32],
        v: &[f32],
        kv_rs: usize,
        out: *mut f32,
        out_rs: usize,
    ) {
        let (seq, hd) = (s.seq, s.head_dim);
        let row0 = b * seq;
        // Keys of this group packed as 32-key panels [hd][NR] (zero past the end).
        let panels = seq.div_ceil(NR);
        let mut kp = vec![0.0f32; panels * hd * NR];
        for t in 0..seq {
            let src = &k[(row0 + t) * kv_rs + g * hd..][..hd];
            let dst = &mut kp[(t / NR) * hd * NR + t % NR..];
            for (d, &x) in src.iter().enumerate() {
                dst[d * NR] = x;
            }
        }
        let vbase = v[row0 * kv_rs + g * hd..].as_ptr();
        let mut qa = vec![0.0f32; hd * MR];
        let mut sc = vec![0.0f32; MR * KEY_CHUNK];
        let mut acc = vec![0.0f32; MR * hd];
        let group = s.heads / s.kv_heads;
        for h in g * group..(g + 1) * group {
            let mut i0 = 0;
            while i0 < seq {
                let rows = MR.min(seq - i0);
                // Query panel [hd][MR].
                qa.fill(0.0);
                for i in 0..rows {
                    let src = &q[(row0 + i0 + i) * q_rs + h * hd..][..hd];
                    for (d, &x) in src.iter().enumerate() {
                        qa[d * MR + i] = x;
                    }
                }
                // SAFETY: as documented for this function.
                unsafe {
                    panel(
                        s.scale, hd, i0, rows, &qa, &kp, vbase, kv_rs, &mut sc, &mut acc,
                    );
                    for i in 0..rows {
                        let dst = out.add((row0 + i0 + i) * out_rs + h * hd);
                        std::ptr::copy_nonoverlapping(acc[i * hd..].as_ptr(), dst, hd);
                    }
                }
                i0 += rows;
            }
        }
    }

    /// Attention of the query panel rows `i0..i0 + rows` into `acc` `[MR][hd]` (normalised).
    ///
    /// # Safety
    /// AVX-512F; `kp` packs keys `0..` at least `i0 + rows`, `v` has those rows at stride `ldv`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn panel(
        scale: f32,
        hd: usize,
        i0: usize,
        rows: usize,
        qa: &[f32],
        kp: &[f32],
        v: *const f32,
        ldv: usize,
        sc: &mut [f32],
        acc: &mut [f32],
    ) {
        let keys = i0 + rows; // keys 0..keys are visible to some row of the panel
        let mut m = [f32::NEG_INFINITY; MR];
        let mut l = [0.0f32; MR];
        acc.fill(0.0);
        let vscale = _mm512_set1_ps(scale);
        let mut c0 = 0;
        while c0 < keys {
            let kc = KEY_CHUNK.min(keys - c0);
            // Scores [MR][kc] of this chunk, 32 keys per tile.
            for j in (0..kc).step_by(NR) {
                let p = (c0 + j) / NR;
                // SAFETY: panel p of kp holds hd·NR floats; sc rows have KEY_CHUNK floats.
                unsafe {
                    tile(
                        hd,
                        qa.as_ptr(),
                        kp[p * hd * NR..].as_ptr(),
                        NR,
                        sc[j..].as_mut_ptr(),
                        KEY_CHUNK,
                        MR,
                        NR.min(KEY_CHUNK - j),
                        TileStore::Overwrite,
                    );
                }
            }
            // Online softmax of each row over its visible keys of the chunk; P replaces S.
            for i in 0..MR {
                let row = &mut sc[i * KEY_CHUNK..i * KEY_CHUNK + kc];
                let visible = if i < rows {
                    (i0 + i + 1).saturating_sub(c0).min(kc)
                } else {
                    0
                };
                if visible == 0 {
                    row.fill(0.0);
                    continue;
                }
                let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
                let mut j = 0;
                while j < visible {
                    let mask = lanes(visible - j);
                    // SAFETY: j + 16 lanes masked to the row.
                    let x = unsafe { _mm512_maskz_loadu_ps(mask, row[j..].as_ptr()) };
                    let x = _mm512_mul_ps(x, vscale);
                    vmax = _mm512_mask_max_ps(vmax, mask, vmax, x);
                    j += 16;
                }
                let new_m = m[i].max(_mm512_reduce_max_ps(vmax));
                let alpha = if m[i] == f32::NEG_INFINITY {
                    0.0
                } else {
                    (m[i] - new_m).exp()
                };
                m[i] = new_m;
                let vm = _mm512_set1_ps(new_m);
                let mut vsum = _mm512_setzero_ps();
                let mut j = 0;
                while j < kc {
                    let mask = lanes(visible.saturating_sub(j));
                    // SAFETY: loads masked to the visible part; stores masked to kc.
                    unsafe {
                        let x = _mm512_maskz_loadu_ps(mask, row[j..].as_ptr());
                        let e = exp16(_mm512_sub_ps(_mm512_mul_ps(x, vscale), vm));
                        let e = _mm512_maskz_mov_ps(mask, e);
                        vsum = _mm512_add_ps(vsum, e);
                        _mm512_mask_storeu_ps(row[j..].as_mut_ptr(), lanes(kc - j), e);
                    }
                    j += 16;
                }
                l[i] = l[i] * alpha + _mm512_reduce_add_ps(vsum);
                if alpha != 1.0 {
                    acc[i * hd..(i + 1) * hd]
                        .iter_mut()
                        .for_each(|a| *a *= alpha);
                }
            }
            // acc += P · V over the keys that exist (those past the panel's rows have P = 0).
            for d0 in (0..hd).step_by(NR) {
                // SAFETY: keys c0..c0 + kc < seq are rows of v; columns d0.. masked to hd.
                unsafe {
                    tile_with::<KEY_CHUNK, 1>(
                        kc,
                        sc.as_ptr(),
                        v.add(c0 * ldv + d0),
                        ldv,
                        acc[d0..].as_mut_ptr(),
                        hd,
                        MR,
                        (hd - d0).min(NR),
                        TileStore::Add,
                    );
                }
            }
            c0 += kc;
        }
        for i in 0..rows {
            let inv = 1.0 / l[i];
            acc[i * hd..(i + 1) * hd].iter_mut().for_each(|a| *a *= inv);
        }
    }
}
