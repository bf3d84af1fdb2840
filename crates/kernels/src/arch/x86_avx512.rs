//! AVX-512 kernels (F/BW/VL, VNNI, BF16), compiled only with Rust ≥ 1.89 (`cfg(qwen3_avx512)`,
//! set by build.rs), where these intrinsics are stable.
//!
//! Every function here is `unsafe`: callers guarantee the CPU features named in its
//! `#[target_feature]` and the pointer ranges stated in its doc comment.
#![allow(clippy::incompatible_msrv)] // gated on the compiler version by build.rs

use std::arch::x86_64::*;

use super::x86::{hsum256, Seg};

// ---------------------------------------------------------------------------------------------
// AVX-512: one chunk (16 columns) = one zmm of i32 codes.
// ---------------------------------------------------------------------------------------------

/// Codes of chunk `t` of a `B`-bit plane (`B ∈ {1,2,4,8}`) as 16 × i32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn plane512<const B: usize>(plane: *const u8, t: usize) -> __m512i {
    let k = 8 / B;
    let sb = t >> 3;
    let ch = t & 7;
    // SAFETY: the caller guarantees chunk `t` lies inside the plane (16 readable bytes at `p`).
    let v = unsafe {
        let p = plane.add(sb * 16 * B + (ch / k) * 16);
        _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i))
    };
    if B == 8 {
        v
    } else {
        let sh = _mm_cvtsi32_si128(((ch % k) * B) as i32);
        _mm512_and_si512(_mm512_srl_epi32(v, sh), _mm512_set1_epi32((1 << B) - 1))
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn chunk512<const B: usize>(row: *const u8, pad: usize, t: usize) -> __m512 {
    // SAFETY: forwarded caller guarantee (chunk `t` inside the row's planes).
    let v = unsafe {
        match B {
            3 => {
                let lo = plane512::<2>(row, t);
                let hi = plane512::<1>(row.add(pad / 4), t);
                _mm512_or_si512(lo, _mm512_slli_epi32::<2>(hi))
            }
            1 => plane512::<1>(row, t),
            2 => plane512::<2>(row, t),
            4 => plane512::<4>(row, t),
            _ => plane512::<8>(row, t),
        }
    };
    _mm512_cvtepi32_ps(v)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn row_dot_512<const B: usize>(
    row: *const u8,
    pad: usize,
    xs: *const f32,
    scales: *const f32,
    nchunks: usize,
    cpg: usize,
) -> f32 {
    let mut yv = _mm512_setzero_ps();
    let mut t = 0;
    let mut g = 0;
    // SAFETY (whole body): see `row_dot_avx512`.
    unsafe {
        while t < nchunks {
            let end = (t + cpg).min(nchunks);
            let mut a0 = _mm512_setzero_ps();
            let mut a1 = _mm512_setzero_ps();
            while t + 2 <= end {
                a0 = _mm512_fmadd_ps(chunk512::<B>(row, pad, t), _mm512_loadu_ps(xs.add(t * 16)), a0);
                a1 = _mm512_fmadd_ps(chunk512::<B>(row, pad, t + 1), _mm512_loadu_ps(xs.add(t * 16 + 16)), a1);
                t += 2;
            }
            if t < end {
                a0 = _mm512_fmadd_ps(chunk512::<B>(row, pad, t), _mm512_loadu_ps(xs.add(t * 16)), a0);
                t += 1;
            }
            yv = _mm512_fmadd_ps(_mm512_set1_ps(*scales.add(g)), _mm512_add_ps(a0, a1), yv);
            g += 1;
        }
    }
    _mm512_reduce_add_ps(yv)
}

/// `Σ_g scales[g] · Σ_{t in group g} codes(t) · xs(t)` over chunks `0..nchunks`, groups of `cpg` chunks.
///
/// # Safety
/// AVX-512F/BW/VL, AVX2 and FMA available; `row` points at a packed row of `pad·bits/8` bytes
/// (`pad` a multiple of 128, `nchunks ≤ pad/16`); `xs` has `16·nchunks` readable floats;
/// `scales` has `ceil(nchunks / cpg)` readable floats; `cpg ≥ 1`; `bits ∈ {1,2,3,4,8}`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn row_dot_avx512(
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
            1 => row_dot_512::<1>(row, pad, xs, scales, nchunks, cpg),
            2 => row_dot_512::<2>(row, pad, xs, scales, nchunks, cpg),
            3 => row_dot_512::<3>(row, pad, xs, scales, nchunks, cpg),
            4 => row_dot_512::<4>(row, pad, xs, scales, nchunks, cpg),
            _ => row_dot_512::<8>(row, pad, xs, scales, nchunks, cpg),
        }
    }
}

/// `Σ x[k]·w[k]` over `len` bytes with `x` unsigned (`vpdpbusd`).
///
/// # Safety
/// AVX-512F/BW and AVX-512-VNNI available; `len` a multiple of 64 and both pointers readable for `len` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn dot_u8i8_vnni(x: *const u8, w: *const i8, len: usize) -> i32 {
    let mut a0 = _mm512_setzero_si512();
    let mut a1 = _mm512_setzero_si512();
    let mut k = 0;
    // SAFETY: every load is at offset k < len with k + 64 <= len.
    unsafe {
        while k + 128 <= len {
            a0 = _mm512_dpbusd_epi32(
                a0,
                _mm512_loadu_si512(x.add(k) as *const _),
                _mm512_loadu_si512(w.add(k) as *const _),
            );
            a1 = _mm512_dpbusd_epi32(
                a1,
                _mm512_loadu_si512(x.add(k + 64) as *const _),
                _mm512_loadu_si512(w.add(k + 64) as *const _),
            );
            k += 128;
        }
        if k < len {
            a0 = _mm512_dpbusd_epi32(
                a0,
                _mm512_loadu_si512(x.add(k) as *const _),
                _mm512_loadu_si512(w.add(k) as *const _),
            );
        }
    }
    _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1))
}

// ---------------------------------------------------------------------------------------------
// AVX-512-BF16 GEMV for codes of at most 4 bits.
//
// A code `c < 128` OR'ed into 0x4300 is the bf16 number `128 + c`, exactly, so one shift and one
// and/or turn 16 packed codes into 16 bf16 lanes with no conversion instruction. Activations are
// split into `x ≈ hi + lo` (two bf16, relative error ≤ 2^-17) and `vdpbf16ps` accumulates
// `(128 + c)·hi + (128 + c)·lo` in f32. Each segment (at most 8 chunks of one group) subtracts its
// precomputed `128·Σ(hi + lo)` per lane before scaling, which keeps the cancellation local.
// ---------------------------------------------------------------------------------------------

/// Codes of chunk `t` of a `B`-bit plane as 16 × u16 (no bias).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
unsafe fn plane16<const B: usize>(plane: *const u8, t: usize) -> __m256i {
    let k = 8 / B;
    let sb = t >> 3;
    let ch = t & 7;
    // SAFETY: the caller guarantees 16 readable bytes at this offset.
    let v = unsafe {
        let p = plane.add(sb * 16 * B + (ch / k) * 16);
        _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i))
    };
    let sh = _mm_cvtsi32_si128(((ch % k) * B) as i32);
    _mm256_and_si256(_mm256_srl_epi16(v, sh), _mm256_set1_epi16((1 << B) - 1))
}

/// Chunk `t` as 16 bf16 lanes `128 + code` (`B ≤ 4`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
unsafe fn chunk_bf16<const B: usize>(row: *const u8, pad: usize, t: usize) -> __m256i {
    // SAFETY: forwarded caller guarantee (chunk `t` inside the row's planes).
    let c = unsafe {
        match B {
            3 => _mm256_or_si256(
                plane16::<2>(row, t),
                _mm256_slli_epi16::<2>(plane16::<1>(row.add(pad / 4), t)),
            ),
            1 => plane16::<1>(row, t),
            2 => plane16::<2>(row, t),
            _ => plane16::<4>(row, t),
        }
    };
    _mm256_or_si256(c, _mm256_set1_epi16(0x4300))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
unsafe fn dp(acc: __m256, c: __m256i, x: *const u16) -> __m256 {
    // SAFETY: the caller guarantees 16 readable u16 at `x`.
    unsafe { _mm256_dpbf16_ps(acc, c.cast(), _mm256_loadu_si256(x as *const __m256i).cast()) }
}

trait CastBh {
    fn cast(self) -> __m256bh;
}
impl CastBh for __m256i {
    #[inline(always)]
    fn cast(self) -> __m256bh {
        // SAFETY: both are plain 256-bit vectors of the same size; bf16 lanes are reinterpreted bits.
        unsafe { std::mem::transmute::<__m256i, __m256bh>(self) }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_dot_bf16_impl<const B: usize>(
    row: *const u8,
    pad: usize,
    xh: *const u16,
    xl: *const u16,
    scales: *const f32,
    segs: &[Seg],
    bias: *const f32,
) -> f32 {
    let mut tot = _mm256_setzero_ps();
    // SAFETY (whole body): see `row_dot_bf16`.
    unsafe {
        for (si, s) in segs.iter().enumerate() {
            let (start, end) = (s.start as usize, s.end as usize);
            let mut a0 = _mm256_setzero_ps();
            let mut a1 = _mm256_setzero_ps();
            let mut a2 = _mm256_setzero_ps();
            let mut a3 = _mm256_setzero_ps();
            if end - start == 8 && start % 8 == 0 {
                // A whole superblock: fully unrolled, constant offsets and shifts.
                for j in 0..4 {
                    let t0 = start + 2 * j;
                    let c0 = chunk_bf16::<B>(row, pad, t0);
                    let c1 = chunk_bf16::<B>(row, pad, t0 + 1);
                    a0 = dp(a0, c0, xh.add(t0 * 16));
                    a1 = dp(a1, c0, xl.add(t0 * 16));
                    a2 = dp(a2, c1, xh.add(t0 * 16 + 16));
                    a3 = dp(a3, c1, xl.add(t0 * 16 + 16));
                }
            } else {
                for t in start..end {
                    let c = chunk_bf16::<B>(row, pad, t);
                    a0 = dp(a0, c, xh.add(t * 16));
                    a1 = dp(a1, c, xl.add(t * 16));
                }
            }
            let acc = _mm256_sub_ps(
                _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                _mm256_loadu_ps(bias.add(si * 8)),
            );
            tot = _mm256_fmadd_ps(_mm256_set1_ps(*scales.add(s.group as usize)), acc, tot);
        }
        hsum256(tot)
    }
}

/// `Σ_g scale_g · Σ code·(hi + lo)` for one row of `bits ≤ 4` codes.
///
/// # Safety
/// AVX-512F/BW/VL and AVX-512-BF16 available; `row` a packed row of `pad·bits/8` bytes; `xh`/`xl`
/// `pad` readable u16 each; every segment's chunks `< pad/16`; `scales` readable at every
/// segment's group; `bias` has `8·segs.len()` readable floats; `bits ∈ {1,2,3,4}`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn row_dot_bf16(
    bits: u8,
    row: *const u8,
    pad: usize,
    xh: *const u16,
    xl: *const u16,
    scales: *const f32,
    segs: &[Seg],
    bias: *const f32,
) -> f32 {
    // SAFETY: forwarded caller contract.
    unsafe {
        match bits {
            1 => row_dot_bf16_impl::<1>(row, pad, xh, xl, scales, segs, bias),
            2 => row_dot_bf16_impl::<2>(row, pad, xh, xl, scales, segs, bias),
            3 => row_dot_bf16_impl::<3>(row, pad, xh, xl, scales, segs, bias),
            _ => row_dot_bf16_impl::<4>(row, pad, xh, xl, scales, segs, bias),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn row2_dot_bf16_impl<const B: usize>(
    row0: *const u8,
    row1: *const u8,
    pad: usize,
    xh: *const u16,
    xl: *const u16,
    scales0: *const f32,
    scales1: *const f32,
    segs: &[Seg],
    bias: *const f32,
) -> (f32, f32) {
    let mut tot0 = _mm256_setzero_ps();
    let mut tot1 = _mm256_setzero_ps();
    // SAFETY (whole body): see `row2_dot_bf16`.
    unsafe {
        for (si, s) in segs.iter().enumerate() {
            let (start, end) = (s.start as usize, s.end as usize);
            let z = _mm256_setzero_ps();
            let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
            let (mut b0, mut b1, mut b2, mut b3) = (z, z, z, z);
            if end - start == 8 && start % 8 == 0 {
                for j in 0..4 {
                    let t0 = start + 2 * j;
                    let h0 = _mm256_loadu_si256(xh.add(t0 * 16) as *const __m256i).cast();
                    let l0 = _mm256_loadu_si256(xl.add(t0 * 16) as *const __m256i).cast();
                    let h1 = _mm256_loadu_si256(xh.add(t0 * 16 + 16) as *const __m256i).cast();
                    let l1 = _mm256_loadu_si256(xl.add(t0 * 16 + 16) as *const __m256i).cast();
                    let c0 = chunk_bf16::<B>(row0, pad, t0).cast();
                    let c1 = chunk_bf16::<B>(row0, pad, t0 + 1).cast();
                    let d0 = chunk_bf16::<B>(row1, pad, t0).cast();
                    let d1 = chunk_bf16::<B>(row1, pad, t0 + 1).cast();
                    a0 = _mm256_dpbf16_ps(a0, c0, h0);
                    a1 = _mm256_dpbf16_ps(a1, c0, l0);
                    a2 = _mm256_dpbf16_ps(a2, c1, h1);
                    a3 = _mm256_dpbf16_ps(a3, c1, l1);
                    b0 = _mm256_dpbf16_ps(b0, d0, h0);
                    b1 = _mm256_dpbf16_ps(b1, d0, l0);
                    b2 = _mm256_dpbf16_ps(b2, d1, h1);
                    b3 = _mm256_dpbf16_ps(b3, d1, l1);
                }
            } else {
                for t in start..end {
                    let h = _mm256_loadu_si256(xh.add(t * 16) as *const __m256i).cast();
                    let l = _mm256_loadu_si256(xl.add(t * 16) as *const __m256i).cast();
                    let c = chunk_bf16::<B>(row0, pad, t).cast();
                    let d = chunk_bf16::<B>(row1, pad, t).cast();
                    a0 = _mm256_dpbf16_ps(a0, c, h);
                    a1 = _mm256_dpbf16_ps(a1, c, l);
                    b0 = _mm256_dpbf16_ps(b0, d, h);
                    b1 = _mm256_dpbf16_ps(b1, d, l);
                }
            }
            let bv = _mm256_loadu_ps(bias.add(si * 8));
            let acc0 = _mm256_sub_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)), bv);
            let acc1 = _mm256_sub_ps(_mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3)), bv);
            tot0 = _mm256_fmadd_ps(_mm256_set1_ps(*scales0.add(s.group as usize)), acc0, tot0);
            tot1 = _mm256_fmadd_ps(_mm256_set1_ps(*scales1.add(s.group as usize)), acc1, tot1);
        }
        (hsum256(tot0), hsum256(tot1))
    }
}

/// [`row_dot_bf16`] for two rows at once (sharing the activation loads).
///
/// # Safety
/// The contract of [`row_dot_bf16`] for both `(row0, scales0)` and `(row1, scales1)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn row2_dot_bf16(
    bits: u8,
    row0: *const u8,
    row1: *const u8,
    pad: usize,
    xh: *const u16,
    xl: *const u16,
    scales0: *const f32,
    scales1: *const f32,
    segs: &[Seg],
    bias: *const f32,
) -> (f32, f32) {
    // SAFETY: forwarded caller contract.
    unsafe {
        match bits {
            1 => row2_dot_bf16_impl::<1>(row0, row1, pad, xh, xl, scales0, scales1, segs, bias),
            2 => row2_dot_bf16_impl::<2>(row0, row1, pad, xh, xl, scales0, scales1, segs, bias),
            3 => row2_dot_bf16_impl::<3>(row0, row1, pad, xh, xl, scales0, scales1, segs, bias),
            _ => row2_dot_bf16_impl::<4>(row0, row1, pad, xh, xl, scales0, scales1, segs, bias),
        }
    }
}
