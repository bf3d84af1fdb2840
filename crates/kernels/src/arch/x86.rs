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

/// `Σ x[k]·w[k]` over `len` signed bytes (sign-extend to i16, `vpmaddwd`).
///
/// # Safety
/// AVX2 available; `len` a multiple of 16 and both pointers readable for `len` bytes.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot_i8i8_avx2(x: *const i8, w: *const i8, len: usize) -> i32 {
    let mut a0 = _mm256_setzero_si256();
    let mut a1 = _mm256_setzero_si256();
    let mut k = 0;
    // SAFETY: loads of 16 bytes at k with k + 16 <= len (and k + 32 <= len in the pair loop).
    unsafe {
        while k + 32 <= len {
            let x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.add(k) as *const __m128i));
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(k) as *const __m128i));
            let x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.add(k + 16) as *const __m128i));
            let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(k + 16) as *const __m128i));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(x0, w0));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(x1, w1));
            k += 32;
        }
        while k < len {
            let x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.add(k) as *const __m128i));
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(k) as *const __m128i));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(x0, w0));
            k += 16;
        }
    }
    let s = _mm256_add_epi32(a0, a1);
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// One segment of a row: chunks `start..end`, its group's scale, its bias vector.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(qwen3_avx512), allow(dead_code))]
pub(crate) struct Seg {
    pub start: u32,
    pub end: u32,
    pub group: u32,
}
