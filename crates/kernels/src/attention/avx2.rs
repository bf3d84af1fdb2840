//! The AVX2 + FMA fused causal attention: the AVX-512 module's algorithm on the AVX2 tiles of
//! [`crate::dense::avx2`] (12 queries × 16 keys per tile, 8-lane `exp`). Keys are packed in
//! 16-key panels and values copied to a contiguous `[seq][head_dim]` block, once per kv group.

use std::arch::x86_64::*;

use super::{CausalShape, KEY_CHUNK};
use crate::dense::avx2::{exp8, tile, tile_with, transpose4, MR, NR};
use crate::dense::avx512::TileStore;

/// Pointers to rows `t0..t0 + 4` (null from `end` on) of `x` (row stride `rs`) of the sequence
/// starting at row `row0`, at column `col`.
fn rows4(x: &[f32], rs: usize, row0: usize, col: usize, t0: usize, end: usize) -> [*const f32; 4] {
    std::array::from_fn(|i| {
        let t = t0 + i;
        if t < end {
            x[(row0 + t) * rs + col..].as_ptr()
        } else {
            std::ptr::null()
        }
    })
}

/// All query heads of kv group `g` of sequence `b` (see `super::causal_attention`).
///
/// # Safety
/// AVX2 and FMA; the extents asserted by `causal_attention`; `out` valid for the rows and
/// columns of this group.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
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
    // Keys of this group as 16-key panels [hd][NR], zero past the last key.
    let panels = seq.div_ceil(NR);
    let mut kp = vec![0.0f32; panels * hd * NR];
    for p in 0..panels {
        for r in (0..NR).step_by(4) {
            let src = rows4(k, kv_rs, row0, g * hd, p * NR + r, seq);
            // SAFETY: non-null rows hold `hd` floats; lanes `u·NR + r..+4` of panel p.
            unsafe { transpose4(src, hd, None, false, kp[p * hd * NR + r..].as_mut_ptr(), NR) };
        }
    }
    // Values of this group, contiguous `[seq][hd]`: in place, rows `kv_rs` floats apart (4 KB
    // for Qwen3 shapes) would all fall in one L1 set and one page each.
    // Rows are padded to a multiple of 16 floats, the lanes a tile reads.
    let ldv = hd.next_multiple_of(NR);
    let mut vp = vec![0.0f32; seq * ldv];
    for (t, dst) in vp.chunks_exact_mut(ldv).enumerate() {
        dst[..hd].copy_from_slice(&v[(row0 + t) * kv_rs + g * hd..][..hd]);
    }
    let mut qa = vec![0.0f32; hd * MR];
    let mut sc = vec![0.0f32; MR * KEY_CHUNK];
    let mut acc = vec![0.0f32; MR * hd];
    let per_group = s.heads / s.kv_heads;
    for h in g * per_group..(g + 1) * per_group {
        let mut i0 = 0;
        while i0 < seq {
            let rows = MR.min(seq - i0);
            for r in (0..MR).step_by(4) {
                let src = rows4(q, q_rs, row0, h * hd, i0 + r, i0 + rows);
                // SAFETY: non-null rows hold `hd` floats; `qa` holds `hd·MR`.
                unsafe { transpose4(src, hd, None, false, qa[r..].as_mut_ptr(), MR) };
            }
            // SAFETY: as documented for this function.
            unsafe {
                panel(
                    s.scale,
                    hd,
                    i0,
                    rows,
                    &qa,
                    &kp,
                    vp.as_ptr(),
                    ldv,
                    &mut sc,
                    &mut acc,
                )
            };
            for i in 0..rows {
                // SAFETY: row i0 + i of this sequence, the columns of head h.
                unsafe {
                    let dst = out.add((row0 + i0 + i) * out_rs + h * hd);
                    std::ptr::copy_nonoverlapping(acc[i * hd..].as_ptr(), dst, hd);
                }
            }
            i0 += rows;
        }
    }
}

/// Attention of the query panel rows `i0..i0 + rows` into `acc` `[MR][hd]` (normalised; rows
/// from `rows` on are scratch).
///
/// # Safety
/// AVX2 and FMA; `kp` packs keys `0..` at least `i0 + rows`; `v` has those rows at stride `ldv`
/// with `hd` rounded up to a multiple of [`NR`] readable floats each.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
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
        for j in (0..kc).step_by(NR) {
            let p = (c0 + j) / NR;
            // SAFETY: panel p of kp holds hd·NR floats; sc rows have KEY_CHUNK floats, a
            // multiple of NR.
            unsafe {
                tile(
                    hd,
                    qa.as_ptr(),
                    kp[p * hd * NR..].as_ptr(),
                    sc[j..].as_mut_ptr(),
                    KEY_CHUNK,
                    rows,
                    NR,
                    TileStore::Overwrite,
                )
            };
        }
        // SAFETY: AVX2 and FMA are enabled for this function.
        unsafe { online_softmax(scale, i0, rows, c0, kc, sc, &mut m, &mut l, acc, hd) };
        for d0 in (0..hd).step_by(NR) {
            // SAFETY: keys c0..c0 + kc are rows of v with NR readable floats from d0 < hd;
            // the tile writes columns d0..hd of acc;
            // P rows (sc) of KEY_CHUNK floats, all MR of them initialised.
            unsafe {
                tile_with::<1, KEY_CHUNK>(
                    kc,
                    sc.as_ptr(),
                    v.add(c0 * ldv + d0),
                    ldv,
                    acc[d0..].as_mut_ptr(),
                    hd,
                    rows,
                    (hd - d0).min(NR),
                    TileStore::Add,
                )
            };
        }
        c0 += kc;
    }
    for i in 0..rows {
        let inv = 1.0 / l[i];
        acc[i * hd..(i + 1) * hd].iter_mut().for_each(|a| *a *= inv);
    }
}

/// Lanes `0..n` (all for `n ≥ 8`) of an 8-lane mask.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn first_lanes(n: usize) -> __m256 {
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), iota))
}

/// The online softmax of one key chunk: per row, the running max `m` and sum `l` are updated
/// over the row's visible keys among `c0..c0 + kc`, `acc` is rescaled, and the scores in `sc`
/// are replaced by `exp(score·scale − m)` (0 where not visible, and in rows from `rows` on).
///
/// # Safety
/// AVX2 and FMA; `sc` holds `MR` rows of `KEY_CHUNK`, `acc` `MR` rows of `hd`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
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
    let vscale = _mm256_set1_ps(scale);
    for i in 0..MR {
        let row = &mut sc[i * KEY_CHUNK..(i + 1) * KEY_CHUNK];
        let visible = if i < rows {
            (i0 + i + 1).saturating_sub(c0).min(kc)
        } else {
            0
        };
        if visible == 0 {
            row[..kc].fill(0.0);
            continue;
        }
        // Full 8-lane loads stay inside the row (KEY_CHUNK is a multiple of 8, j < kc); lanes
        // past `visible` are masked off.
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut j = 0;
        while j < visible {
            // SAFETY: j + 8 ≤ KEY_CHUNK.
            let x = _mm256_mul_ps(unsafe { _mm256_loadu_ps(row[j..].as_ptr()) }, vscale);
            let x = _mm256_blendv_ps(vmax, x, first_lanes(visible - j));
            vmax = _mm256_max_ps(vmax, x);
            j += 8;
        }
        let new_m = m[i].max(hmax(vmax));
        let alpha = if m[i] == f32::NEG_INFINITY {
            0.0
        } else {
            (m[i] - new_m).exp()
        };
        m[i] = new_m;
        let vm = _mm256_set1_ps(new_m);
        let mut vsum = _mm256_setzero_ps();
        let mut j = 0;
        while j < kc {
            // SAFETY: j + 8 ≤ KEY_CHUNK, as above.
            let x = unsafe { _mm256_loadu_ps(row[j..].as_ptr()) };
            let e = exp8(_mm256_sub_ps(_mm256_mul_ps(x, vscale), vm));
            let e = _mm256_and_ps(e, first_lanes(visible.saturating_sub(j)));
            vsum = _mm256_add_ps(vsum, e);
            // SAFETY: as the load.
            unsafe { _mm256_storeu_ps(row[j..].as_mut_ptr(), e) };
            j += 8;
        }
        // SAFETY: AVX2 and FMA are enabled for this function.
        l[i] = l[i] * alpha + unsafe { crate::arch::x86::hsum256(vsum) };
        if alpha != 1.0 {
            acc[i * hd..(i + 1) * hd]
                .iter_mut()
                .for_each(|a| *a *= alpha);
        }
    }
}

/// The largest of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hmax(v: __m256) -> f32 {
    let h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)))
}
