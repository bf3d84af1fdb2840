//! Fused causal attention (flash-attention style) for prefill and calibration: scores of 14
//! queries × up to [`KEY_CHUNK`] keys at a time, an online softmax with a vectorised `exp`, and
//! `P · V` accumulated into a 14 × head_dim tile, so the `[seq, seq]` score matrix is never
//! materialised and nothing but the output is written to memory.
//!
//! Available with AVX-512, and with AVX2 + FMA (the `avx2` submodule: 12 queries × 16 keys per
//! tile); [`fused_available`] says. The model keeps
//! its straightforward path (the `gemm` crate and a row softmax) elsewhere, and tests compare
//! them. Under
//! [`Compute::Bf16`](crate::dense::Compute) on a CPU with AVX-512-BF16, `Q·Kᵀ` and `P·V` take
//! bf16 operands (`vdpbf16ps`, f32 accumulation) like the dense products; the softmax stays f32.

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

#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
mod avx2;

/// Whether [`causal_attention`] runs here (AVX-512 or AVX2 + FMA selected).
pub fn fused_available() -> bool {
    cfg!(all(target_arch = "x86_64", qwen3_avx512))
        && matches!(
            crate::dispatch::active_kernel(),
            crate::KernelChoice::Avx512 | crate::KernelChoice::Avx2
        )
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
    assert!(
        fused_available(),
        "fused attention needs AVX-512 or AVX2 + FMA"
    );
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
        let wide = crate::dispatch::active_kernel() == crate::KernelChoice::Avx512;
        let bf16 = crate::dense::compute() == crate::dense::Compute::Bf16
            && crate::dispatch::cpu().avx512bf16;
        (0..batch * kv_heads).into_par_iter().for_each(|bg| {
            let (b, g) = (bg / kv_heads, bg % kv_heads);
            // SAFETY: the kernel's features checked above; bounds asserted above; each task
            // writes the columns of the query heads of its kv group in the rows of its
            // sequence only.
            unsafe {
                let group = match (wide, bf16) {
                    (true, true) => fused::group_bf16,
                    (true, false) => fused::group,
                    (false, _) => avx2::group,
                };
                group(
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
    use crate::dense::avx512::{
        exp16, interleave_bf16, lanes, tile, tile_bf16, tile_with, transpose_rows,
        transpose_rows_bf16, LoadNorm, TileStore, MR, NR,
    };

    /// Pointers to rows `t0..t0 + 16` (null from `end` on) of `x` (row stride `rs`) of
    /// sequence `row0`, at column `col`.
    fn rows_of(
        x: &[f32],
        rs: usize,
        row0: usize,
        col: usize,
        t0: usize,
        end: usize,
    ) -> [*const f32; 16] {
        std::array::from_fn(|i| {
            let t = t0 + i;
            if t < end {
                x[(row0 + t) * rs + col..].as_ptr()
            } else {
                std::ptr::null()
            }
        })
    }

    /// One of the operand transposes of `dense::avx512` (f32 values or bf16 pairs).
    type Transpose =
        unsafe fn(&[*const f32; 16], usize, Option<LoadNorm<'_>>, *mut f32, usize, __mmask16);

    /// The keys of one kv group (columns `col..col + head_dim` of `k`, sequence rows from
    /// `row0`) as 32-key panels `[units][NR]`, zero past the last key, written by `transpose`
    /// at `dst` (`units` lanes per key: `head_dim` floats or its bf16 pairs).
    ///
    /// # Safety
    /// The CPU features `transpose` needs; `k` holds the rows; `dst` holds ⌈seq/NR⌉ panels of
    /// `units·NR` lanes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn pack_keys(
        transpose: Transpose,
        k: &[f32],
        kv_rs: usize,
        row0: usize,
        col: usize,
        s: CausalShape,
        units: usize,
        dst: *mut f32,
    ) {
        for p in 0..s.seq.div_ceil(NR) {
            for half in 0..NR / 16 {
                let ptrs = rows_of(k, kv_rs, row0, col, p * NR + half * 16, s.seq);
                // SAFETY: each non-null row holds `head_dim` floats; the writes
                // `u·NR + half·16 + r` stay inside panel `p`'s `units·NR` lanes.
                unsafe {
                    transpose(
                        &ptrs,
                        s.head_dim,
                        None,
                        dst.add(p * units * NR + half * 16),
                        NR,
                        0xffff,
                    )
                };
            }
        }
    }

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
        // SAFETY: AVX-512F (caller); `kp` holds `panels` panels of `hd·NR` floats.
        unsafe {
            pack_keys(
                transpose_rows,
                k,
                kv_rs,
                row0,
                g * hd,
                s,
                hd,
                kp.as_mut_ptr(),
            )
        };
        let vbase = v[row0 * kv_rs + g * hd..].as_ptr();
        let mut qa = vec![0.0f32; hd * MR];
        let mut sc = vec![0.0f32; MR * KEY_CHUNK];
        let mut acc = vec![0.0f32; MR * hd];
        let group = s.heads / s.kv_heads;
        for h in g * group..(g + 1) * group {
            let mut i0 = 0;
            while i0 < seq {
                let rows = MR.min(seq - i0);
                // Query panel [hd][MR] (zero past the last row).
                let ptrs = rows_of(q, q_rs, row0, h * hd, i0, i0 + rows);
                // SAFETY: as documented for this function; each non-null row holds `hd` floats,
                // `qa` the `hd·MR` lanes written.
                unsafe {
                    transpose_rows(&ptrs, hd, None, qa.as_mut_ptr(), MR, lanes(MR));
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

    /// [`group`] with bf16 products: keys packed as `[hd/2][NR]` bf16 pairs per 32-key panel,
    /// values as `[seq/2][NR]` pairs of consecutive keys per 32-column panel, both once per
    /// group.
    ///
    /// # Safety
    /// AVX-512F, AVX-512VL and AVX-512-BF16; as [`group`] otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn group_bf16(
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
        let (hu, su) = (hd.div_ceil(2), seq.div_ceil(2));
        let mut kp = vec![0u32; seq.div_ceil(NR) * hu * NR];
        // SAFETY: the caller guarantees the features; `kp` holds ⌈seq/NR⌉ panels of `hu·NR`
        // lanes.
        unsafe {
            pack_keys(
                transpose_rows_bf16,
                k,
                kv_rs,
                row0,
                g * hd,
                s,
                hu,
                kp.as_mut_ptr() as *mut f32,
            )
        };
        // Values: panel `d / NR`, unit `t / 2`, lane `d % NR`; key pairs (2u, 2u + 1).
        let dpanels = hd.div_ceil(NR);
        let mut vp = vec![0u32; dpanels * su * NR];
        for u in 0..su {
            let lo = &v[(row0 + 2 * u) * kv_rs + g * hd..][..hd];
            let hi = (2 * u + 1 < seq).then(|| &v[(row0 + 2 * u + 1) * kv_rs + g * hd..][..hd]);
            for d0 in (0..hd).step_by(NR) {
                let w = NR.min(hd - d0);
                let dst = &mut vp[(d0 / NR) * su * NR + u * NR..][..w];
                // SAFETY: features as above; `dst` holds the `w` lanes.
                unsafe { interleave_bf16(&lo[d0..d0 + w], hi.map(|h| &h[d0..d0 + w]), dst) };
            }
        }
        let mut qa = vec![0u32; hu * MR];
        let mut pp = vec![0u32; KEY_CHUNK.div_ceil(2) * MR];
        let mut sc = vec![0.0f32; MR * KEY_CHUNK];
        let mut acc = vec![0.0f32; MR * hd];
        let group = s.heads / s.kv_heads;
        for h in g * group..(g + 1) * group {
            let mut i0 = 0;
            while i0 < seq {
                let rows = MR.min(seq - i0);
                let ptrs = rows_of(q, q_rs, row0, h * hd, i0, i0 + rows);
                // SAFETY: as documented for this function; each non-null row holds `hd` floats,
                // `qa` the `hu·MR` lanes written.
                unsafe {
                    transpose_rows_bf16(
                        &ptrs,
                        hd,
                        None,
                        qa.as_mut_ptr() as *mut f32,
                        MR,
                        lanes(MR),
                    );
                    panel_bf16(
                        s.scale, hd, i0, rows, &qa, &kp, &vp, su, &mut pp, &mut sc, &mut acc,
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

    /// [`panel`] over bf16-packed queries, keys and values (see [`group_bf16`]); the softmax is
    /// f32 and `P` is rounded to bf16 pairs of consecutive keys before `P · V`.
    ///
    /// # Safety
    /// AVX-512F, AVX-512VL and AVX-512-BF16; `kp`/`vp` pack at least keys `0..i0 + rows`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512vl,avx512bf16")]
    unsafe fn panel_bf16(
        scale: f32,
        hd: usize,
        i0: usize,
        rows: usize,
        qa: &[u32],
        kp: &[u32],
        vp: &[u32],
        su: usize,
        pp: &mut [u32],
        sc: &mut [f32],
        acc: &mut [f32],
    ) {
        let keys = i0 + rows;
        let hu = hd.div_ceil(2);
        let mut m = [f32::NEG_INFINITY; MR];
        let mut l = [0.0f32; MR];
        acc.fill(0.0);
        let mut c0 = 0;
        while c0 < keys {
            let kc = KEY_CHUNK.min(keys - c0);
            for j in (0..kc).step_by(NR) {
                let p = (c0 + j) / NR;
                // SAFETY: panel p of kp holds hu·NR lanes; sc rows have KEY_CHUNK floats.
                unsafe {
                    tile_bf16(
                        hu,
                        qa.as_ptr(),
                        kp[p * hu * NR..].as_ptr(),
                        sc[j..].as_mut_ptr(),
                        KEY_CHUNK,
                        MR,
                        NR.min(KEY_CHUNK - j),
                        TileStore::Overwrite,
                    );
                }
            }
            // P as bf16 pairs of consecutive keys, [kc/2][MR] (odd tails paired with 0),
            // written by the softmax itself.
            // SAFETY: the features are enabled for this function; `pp` holds ⌈KEY_CHUNK/2⌉·MR.
            unsafe {
                online_softmax_bf16(scale, i0, rows, c0, kc, sc, &mut m, &mut l, acc, hd, pp)
            };
            let ku = kc.div_ceil(2);
            for d0 in (0..hd).step_by(NR) {
                // SAFETY: value panel d0/NR holds su·NR lanes, units c0/2..c0/2 + ku < su
                // (c0 is even); columns masked to hd.
                unsafe {
                    tile_bf16(
                        ku,
                        pp.as_ptr(),
                        vp[(d0 / NR) * su * NR + (c0 / 2) * NR..].as_ptr(),
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
            // SAFETY: AVX-512F is enabled for this function.
            unsafe { online_softmax(scale, i0, rows, c0, kc, sc, &mut m, &mut l, acc, hd) };
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

    /// The online softmax of one key chunk: per row, the running max `m` and sum `l` are
    /// updated over the row's visible keys among `c0..c0 + kc`, `acc` is rescaled, and the
    /// scores in `sc` are replaced by `exp(score·scale − m)` (0 where not visible).
    ///
    /// # Safety
    /// AVX-512F; `sc` holds `MR` rows of `KEY_CHUNK`, `acc` `MR` rows of `hd`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn online_softmax(
        scale: f32,
        i0: usize,
        rows: usize,
        c0: usize,
        kc: usize,
        sc: &mut [f32],
        m: &mut [f32; MR],
        l: &mut [f32; MR],
        acc: &mut [f32],
        hd: usize,
    ) {
        // SAFETY: as documented; the f32 variant writes no panel.
        unsafe {
            softmax_chunk::<false>(
                scale,
                i0,
                rows,
                c0,
                kc,
                sc,
                m,
                l,
                acc,
                hd,
                std::ptr::null_mut(),
            )
        }
    }

    /// [`online_softmax`] that writes the exponentials straight into `P`'s bf16 panel `pp`
    /// (`[⌈kc/2⌉][MR]` pairs of consecutive keys, rounded as `transpose_rows_bf16`, 0 where not
    /// visible) instead of back into `sc`: no second pass over the scores and no scalar
    /// transposition (the scatter puts each row's 8 pairs of 16 keys in their panel lanes).
    ///
    /// # Safety
    /// AVX-512F, AVX-512VL and AVX-512-BF16; as [`online_softmax`], and `pp` holds
    /// `⌈kc/2⌉·MR` lanes.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512vl,avx512bf16")]
    unsafe fn online_softmax_bf16(
        scale: f32,
        i0: usize,
        rows: usize,
        c0: usize,
        kc: usize,
        sc: &mut [f32],
        m: &mut [f32; MR],
        l: &mut [f32; MR],
        acc: &mut [f32],
        hd: usize,
        pp: &mut [u32],
    ) {
        assert!(pp.len() >= kc.div_ceil(2) * MR);
        // SAFETY: as documented; `pp` is large enough (asserted).
        unsafe {
            softmax_chunk::<true>(scale, i0, rows, c0, kc, sc, m, l, acc, hd, pp.as_mut_ptr())
        }
    }

    /// The body of both softmax variants (inlined into each, with its target features).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn softmax_chunk<const BF16: bool>(
        scale: f32,
        i0: usize,
        rows: usize,
        c0: usize,
        kc: usize,
        sc: &mut [f32],
        m: &mut [f32; MR],
        l: &mut [f32; MR],
        acc: &mut [f32],
        hd: usize,
        pp: *mut u32,
    ) {
        // SAFETY: the callers are the two wrappers above, whose target features cover every
        // intrinsic here; pointer extents as documented there.
        unsafe {
            let vscale = _mm512_set1_ps(scale);
            // Panel lanes of one row's 8 consecutive key pairs.
            let vidx = _mm256_setr_epi32(
                0,
                MR as i32,
                2 * MR as i32,
                3 * MR as i32,
                4 * MR as i32,
                5 * MR as i32,
                6 * MR as i32,
                7 * MR as i32,
            );
            for i in 0..MR {
                let row = &mut sc[i * KEY_CHUNK..i * KEY_CHUNK + kc];
                let visible = if i < rows {
                    (i0 + i + 1).saturating_sub(c0).min(kc)
                } else {
                    0
                };
                if visible == 0 {
                    if BF16 {
                        // The caller's `pp` holds ⌈kc/2⌉·MR lanes.
                        (0..kc.div_ceil(2)).for_each(|u| *pp.add(u * MR + i) = 0);
                    } else {
                        row.fill(0.0);
                    }
                    continue;
                }
                let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
                let mut j = 0;
                while j < visible {
                    let mask = lanes(visible - j);
                    // j + 16 lanes masked to the row.
                    let x = _mm512_maskz_loadu_ps(mask, row[j..].as_ptr());
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
                    // Loads masked to the visible part; stores masked to kc (f32) or to the
                    // ⌈(kc − j)/2⌉ ≤ 8 pairs from pair j/2 of the panel (bf16; j is even).
                    let x = _mm512_maskz_loadu_ps(mask, row[j..].as_ptr());
                    let e = exp16(_mm512_sub_ps(_mm512_mul_ps(x, vscale), vm));
                    let e = _mm512_maskz_mov_ps(mask, e);
                    vsum = _mm512_add_ps(vsum, e);
                    if BF16 {
                        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(e));
                        let units = (kc - j).min(16).div_ceil(2);
                        let k = ((1u32 << units) - 1) as __mmask8;
                        _mm256_mask_i32scatter_epi32::<4>(
                            pp.add((j / 2) * MR + i) as *mut i32,
                            k,
                            vidx,
                            h,
                        );
                    } else {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense::{set_compute, Compute};

    /// Straightforward causal GQA attention in f64 on separate q, k, v buffers.
    fn naive(s: CausalShape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (hd, qd, kd) = (s.head_dim, s.heads * s.head_dim, s.kv_heads * s.head_dim);
        let mut out = vec![0.0f32; s.batch * s.seq * qd];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let g = h / (s.heads / s.kv_heads);
                for t in 0..s.seq {
                    let qt = &q[(b * s.seq + t) * qd + h * hd..][..hd];
                    let sc: Vec<f64> = (0..=t)
                        .map(|j| {
                            let kj = &k[(b * s.seq + j) * kd + g * hd..][..hd];
                            qt.iter()
                                .zip(kj)
                                .map(|(a, c)| *a as f64 * *c as f64)
                                .sum::<f64>()
                                * s.scale as f64
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..hd {
                        let o: f64 = (0..=t)
                            .map(|j| e[j] * v[(b * s.seq + j) * kd + g * hd + d] as f64)
                            .sum();
                        out[(b * s.seq + t) * qd + h * hd + d] = (o / z) as f32;
                    }
                }
            }
        }
        out
    }

    fn max_rel(got: &[f32], want: &[f32]) -> f32 {
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        got.iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
            / scale
    }

    #[test]
    fn fused_attention_matches_the_naive_one_in_f32_and_bf16() {
        let _g = crate::test_support::hold_globals();
        for c in crate::available_kernels() {
            crate::set_kernel_choice(Some(c));
            if fused_available() {
                // 64: Qwen3-micro's heads; 40: not a multiple of either kernel's 16 lanes.
                for head_dim in [64, 40] {
                    println!("{c:?} head_dim {head_dim}");
                    check_fused_against_naive(head_dim);
                }
            }
        }
        crate::set_kernel_choice(None);
    }

    fn check_fused_against_naive(head_dim: usize) {
        // 301 tokens: 14-row panels, 32-key tiles and 256-key chunks, and an odd tail.
        let s = CausalShape {
            batch: 2,
            seq: 301,
            heads: 4,
            kv_heads: 2,
            head_dim,
            scale: 0.125,
        };
        let rows = s.batch * s.seq;
        let gen = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + seed * 131) % 1009) as f32 - 504.0) / 500.0)
                .collect()
        };
        let (qd, kd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
        let (q, k, v) = (gen(rows * qd, 1), gen(rows * kd, 2), gen(rows * kd, 3));
        let want = naive(s, &q, &k, &v);
        let run = |c: Compute| {
            set_compute(c);
            let mut out = vec![f32::NAN; rows * qd];
            causal_attention(s, &q, qd, &k, &v, kd, &mut out, qd);
            set_compute(Compute::F32);
            out
        };
        let f32_err = max_rel(&run(Compute::F32), &want);
        assert!(f32_err < 1e-5, "f32 attention off by {f32_err}");
        let bf16_err = max_rel(&run(Compute::Bf16), &want);
        println!("attention error: f32 {f32_err:.2e}, bf16 {bf16_err:.2e}");
        let wide = crate::dispatch::active_kernel() == crate::KernelChoice::Avx512;
        if wide && crate::dispatch::cpu().avx512bf16 {
            // bf16 operands: visibly not the f32 path, and within bf16's 2⁻⁸ relative rounding.
            assert!(bf16_err > 1e-4, "the bf16 path was not taken ({bf16_err})");
            assert!(bf16_err < 1e-2, "bf16 attention off by {bf16_err}");
        } else {
            assert!(
                bf16_err < 1e-5,
                "attention without AVX-512-BF16 stays f32 ({bf16_err})"
            );
        }
    }
}
