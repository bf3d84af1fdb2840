//! AVX2 and AVX-512 kernels for the packed layout (see `packed.rs`) and for int8 GEMM.
//!
//! Every function here is `unsafe`: callers guarantee the CPU features named in its
//! `#[target_feature]` and the pointer ranges stated in its doc comment.

use std::arch::x86_64::*;

// ---------------------------------------------------------------------------------------------
// AVX2: one chunk = two ymm of i32 codes.
// ---------------------------------------------------------------------------------------------

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane256<const B: usize>(plane: *const u8, t: usize) -> (__m256i, __m256i) {
    let k = 8 / B;
    let sb = t >> 3;
    let ch = t & 7;
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let (lo, hi) = unsafe {
        let p = plane.add(sb * 16 * B + (ch / k) * 16);
        (
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)),
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8) as *const __m128i)),
        )
    };
    if B == 8 {
        (lo, hi)
    } else {
        let sh = _mm_cvtsi32_si128(((ch % k) * B) as i32);
        let m = _mm256_set1_epi32((1 << B) - 1);
        (
            _mm256_and_si256(_mm256_srl_epi32(lo, sh), m),
            _mm256_and_si256(_mm256_srl_epi32(hi, sh), m),
        )
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn chunk256<const B: usize>(row: *const u8, pad: usize, t: usize) -> (__m256, __m256) {
    // SAFETY: forwarded caller guarantee.
    let (a, b) = unsafe {
        match B {
            3 => {
                let (l0, l1) = plane256::<2>(row, t);
                let (h0, h1) = plane256::<1>(row.add(pad / 4), t);
                (
                    _mm256_or_si256(l0, _mm256_slli_epi32::<2>(h0)),
                    _mm256_or_si256(l1, _mm256_slli_epi32::<2>(h1)),
                )
            }
            1 => plane256::<1>(row, t),
            2 => plane256::<2>(row, t),
            4 => plane256::<4>(row, t),
            _ => plane256::<8>(row, t),
        }
    };
    (_mm256_cvtepi32_ps(a), _mm256_cvtepi32_ps(b))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn row_dot_256<const B: usize>(
    row: *const u8,
    pad: usize,
    xs: *const f32,
    scales: *const f32,
    nchunks: usize,
    cpg: usize,
) -> f32 {
    let mut yv = _mm256_setzero_ps();
    let mut t = 0;
    let mut g = 0;
    // SAFETY (whole body): see `row_dot_avx2`.
    unsafe {
        while t < nchunks {
            let end = (t + cpg).min(nchunks);
            let mut a0 = _mm256_setzero_ps();
            let mut a1 = _mm256_setzero_ps();
            let mut a2 = _mm256_setzero_ps();
            let mut a3 = _mm256_setzero_ps();
            while t + 2 <= end {
                let (c0, c1) = chunk256::<B>(row, pad, t);
                let (c2, c3) = chunk256::<B>(row, pad, t + 1);
                let x = xs.add(t * 16);
                a0 = _mm256_fmadd_ps(c0, _mm256_loadu_ps(x), a0);
                a1 = _mm256_fmadd_ps(c1, _mm256_loadu_ps(x.add(8)), a1);
                a2 = _mm256_fmadd_ps(c2, _mm256_loadu_ps(x.add(16)), a2);
                a3 = _mm256_fmadd_ps(c3, _mm256_loadu_ps(x.add(24)), a3);
                t += 2;
            }
            if t < end {
                let (c0, c1) = chunk256::<B>(row, pad, t);
                let x = xs.add(t * 16);
                a0 = _mm256_fmadd_ps(c0, _mm256_loadu_ps(x), a0);
                a1 = _mm256_fmadd_ps(c1, _mm256_loadu_ps(x.add(8)), a1);
                t += 1;
            }
            let a = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            yv = _mm256_fmadd_ps(_mm256_set1_ps(*scales.add(g)), a, yv);
            g += 1;
        }
        hsum256(yv)
    }
}

/// `Σ_g scales[g] · Σ_{t in group g} codes(t) · xs(t)` over chunks `0..nchunks`, groups of `cpg` chunks.
///
/// # Safety
/// AVX2 and FMA available; `row` points at a packed row of `pad·bits/8` bytes
/// (`pad` a multiple of 128, `nchunks ≤ pad/16`); `xs` has `16·nchunks` readable floats;
/// `scales` has `ceil(nchunks / cpg)` readable floats; `cpg ≥ 1`; `bits ∈ {1,2,3,4,8}`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn row_dot_avx2(
    bits: u8,
    row: *const u8,
    pad: usize,
    xs: *const f32,
    scales: *const f32,
    nchunks: usize,
    cpg: usize,
) -> f32 {
    // SAFETY: forwarded caller contract.
    unsafe {
        match bits {
            1 => row_dot_256::<1>(row, pad, xs, scales, nchunks, cpg),
            2 => row_dot_256::<2>(row, pad, xs, scales, nchunks, cpg),
            3 => row_dot_256::<3>(row, pad, xs, scales, nchunks, cpg),
            4 => row_dot_256::<4>(row, pad, xs, scales, nchunks, cpg),
            _ => row_dot_256::<8>(row, pad, xs, scales, nchunks, cpg),
        }
    }
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dequant_row_256<const B: usize>(
    row: *const u8,
    pad: usize,
    sc: *const f32,
    of: *const f32,
    cpg: usize,
    t0: usize,
    dst: &mut [f32],
) {
    let kw = dst.len();
    let n = kw.div_ceil(16);
    let out = dst.as_mut_ptr();
    for ci in 0..n {
        let t = t0 + ci;
        let g = t / cpg;
        // SAFETY: see `dequant_row_avx2`; full chunks store inside `dst[..kw]`, the tail goes
        // through a local buffer and a bounded copy.
        unsafe {
            let (c0, c1) = chunk256::<B>(row, pad, t);
            let s = _mm256_set1_ps(*sc.add(g));
            let o = _mm256_set1_ps(*of.add(g));
            let v0 = _mm256_fmadd_ps(c0, s, o);
            let v1 = _mm256_fmadd_ps(c1, s, o);
            if ci * 16 + 16 <= kw {
                _mm256_storeu_ps(out.add(ci * 16), v0);
                _mm256_storeu_ps(out.add(ci * 16 + 8), v1);
            } else {
                let mut tmp = [0f32; 16];
                _mm256_storeu_ps(tmp.as_mut_ptr(), v0);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), v1);
                let rem = kw - ci * 16;
                dst[ci * 16..].copy_from_slice(&tmp[..rem]);
            }
        }
    }
}

/// Dequantizes chunks `t0 .. t0 + ceil(dst.len()/16)` of a packed row into `dst`
/// (`dst[i] = sc[g]·code + of[g]`, `g = chunk / cpg`).
///
/// # Safety
/// AVX2 and FMA available; `row` is a packed row of `pad·bits/8` bytes and all those chunks are
/// `< pad/16`; `sc`/`of` readable at every `chunk / cpg`; `bits ∈ {1,2,3,4,8}`; `cpg ≥ 1`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dequant_row_avx2(
    bits: u8,
    row: *const u8,
    pad: usize,
    sc: *const f32,
    of: *const f32,
    cpg: usize,
    t0: usize,
    dst: &mut [f32],
) {
    // SAFETY: forwarded caller contract.
    unsafe {
        match bits {
            1 => dequant_row_256::<1>(row, pad, sc, of, cpg, t0, dst),
            2 => dequant_row_256::<2>(row, pad, sc, of, cpg, t0, dst),
            3 => dequant_row_256::<3>(row, pad, sc, of, cpg, t0, dst),
            4 => dequant_row_256::<4>(row, pad, sc, of, cpg, t0, dst),
            _ => dequant_row_256::<8>(row, pad, sc, of, cpg, t0, dst),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// int8 dot products.
// ---------------------------------------------------------------------------------------------

/// One W8A8 tile without VNNI: `MR` tokens times one 16-row panel of an
/// [`crate::int8::Int8Matrix`], exact i32 sums with `vpmaddwd` on sign-extended codes, then the
/// shared epilogue `y = acc as f32 · (x_scale · w_scale)`.
///
/// Per 4-column step the panel's 64 bytes (16 rows × 4 codes, stored as `code ^ 0x80`) become
/// four vectors of 4 rows × 4 i16; each token's 4 codes are widened and broadcast, and one
/// `vpmaddwd` per vector adds two pair sums per row.
///
/// # Safety
/// AVX2 available; `t` describes `MR` readable token rows of `4·t.kq` bytes, one readable panel
/// of `64·t.kq` bytes with 16 readable scales, `MR` scales, and an output of `MR` rows with
/// room for `t.last_rows` floats each; `1 ≤ t.last_rows ≤ 16`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn int8_tile_avx2<const MR: usize>(t: &crate::int8::Tile) {
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    let mut acc = [[_mm256_setzero_si256(); 4]; MR];
    // SAFETY (whole body): every pointer stays inside the ranges the caller guarantees.
    unsafe {
        let mut wp = t.w;
        let mut xp = t.x;
        for _ in 0..t.kq {
            let lo = _mm256_xor_si256(_mm256_loadu_si256(wp as *const __m256i), flip);
            let hi = _mm256_xor_si256(_mm256_loadu_si256(wp.add(32) as *const __m256i), flip);
            let w = [
                _mm256_cvtepi8_epi16(_mm256_castsi256_si128(lo)),
                _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(lo)),
                _mm256_cvtepi8_epi16(_mm256_castsi256_si128(hi)),
                _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(hi)),
            ];
            for (i, row) in acc.iter_mut().enumerate() {
                let x4 = (xp.add(i * t.x_stride) as *const i32).read_unaligned();
                let xb = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(x4)));
                for (a, &wv) in row.iter_mut().zip(&w) {
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(wv, xb));
                }
            }
            wp = wp.add(64);
            xp = xp.add(4);
        }
        for (i, row) in acc.iter().enumerate() {
            let mut lanes = [0i32; 32];
            for (j, &a) in row.iter().enumerate() {
                _mm256_storeu_si256(lanes.as_mut_ptr().add(8 * j) as *mut __m256i, a);
            }
            let xs = *t.x_scales.add(i);
            let y = t.y.add(i * t.y_stride);
            for r in 0..t.last_rows {
                let d = lanes[2 * r].wrapping_add(lanes[2 * r + 1]);
                *y.add(r) = d as f32 * (xs * *t.w_scales.add(r));
            }
        }
    }
}

/// One segment of a row: chunks `start..end`, its group's scale, its bias vector.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(qwen3_avx512), allow(dead_code))]
pub(crate) struct Seg {
    pub start: u32,
    pub end: u32,
    pub group: u32,
}

/// `Σ_c Σ_l table_b[code | salient << 2] · x` for one binary row (see `BinaryMatrix`) with f32
/// activations: per 8 columns the 2-bit codes are zero-extended, shifted into place, OR'ed with
/// 4 where the column is salient and looked up with `vpermps` in the (row, block) table
/// `code · scale` (8 entries: one ymm).
///
/// # Safety
/// AVX2 and FMA available; `row` describes one row of a `BinaryMatrix` (its `n_chunks` chunks of
/// 16 code bytes, one table and scale per block `0 ..= (n_chunks − 1) / m`); `xs` holds
/// `64·n_chunks` floats and `salient` `n_chunks` words.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn row_dot_binary_avx2(
    row: &crate::binary::BinaryRow,
    xs: *const f32,
    salient: *const u64,
) -> f32 {
    let (n_chunks, m) = (row.n_chunks, row.chunks_per_block);
    let three = _mm256_set1_epi32(3);
    let bias = _mm256_set1_epi32(128);
    // Lane l of an 8-column salient mask: bit l, moved to bit 2 (value 4) by a left shift of
    // 2 − l (l ≤ 2) or a right shift of l − 2.
    let (left, right) = (
        _mm256_setr_epi32(2, 1, 0, 0, 0, 0, 0, 0),
        _mm256_setr_epi32(0, 0, 0, 1, 2, 3, 4, 5),
    );
    let four = _mm256_set1_epi32(4);
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    // SAFETY: every read is inside the ranges the caller guarantees.
    unsafe {
        let mut c = 0;
        let mut b = 0;
        while c < n_chunks {
            let t8 = _mm_cvtsi64_si128(*row.tables.add(b * row.table_stride) as i64);
            let t32 = _mm256_sub_epi32(_mm256_cvtepu8_epi32(t8), bias);
            let s = f32::from_bits(u32::from(*row.scales.add(b)) << 16);
            let table = _mm256_mul_ps(_mm256_cvtepi32_ps(t32), _mm256_set1_ps(s));
            let end = (c + m).min(n_chunks);
            while c < end {
                let p = row.codes.add(c * row.chunk_stride);
                let sal = *salient.add(c);
                let x = xs.add(64 * c);
                for half in 0..2 {
                    let v =
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8 * half) as *const __m128i));
                    for f in 0..4 {
                        let col = 16 * f + 8 * half;
                        let code = _mm256_and_si256(
                            _mm256_srlv_epi32(v, _mm256_set1_epi32(2 * f as i32)),
                            three,
                        );
                        let bits = _mm256_set1_epi32(((sal >> col) & 0xFF) as i32);
                        let at2 = _mm256_srlv_epi32(_mm256_sllv_epi32(bits, left), right);
                        let idx = _mm256_or_si256(code, _mm256_and_si256(at2, four));
                        let w = _mm256_permutevar8x32_ps(table, idx);
                        let xv = _mm256_loadu_ps(x.add(col));
                        if f % 2 == 0 {
                            a0 = _mm256_fmadd_ps(w, xv, a0);
                        } else {
                            a1 = _mm256_fmadd_ps(w, xv, a1);
                        }
                    }
                }
                c += 1;
            }
            b += 1;
        }
        hsum256(_mm256_add_ps(a0, a1))
    }
}
