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
                a0 = _mm512_fmadd_ps(
                    chunk512::<B>(row, pad, t),
                    _mm512_loadu_ps(xs.add(t * 16)),
                    a0,
                );
                a1 = _mm512_fmadd_ps(
                    chunk512::<B>(row, pad, t + 1),
                    _mm512_loadu_ps(xs.add(t * 16 + 16)),
                    a1,
                );
                t += 2;
            }
            if t < end {
                a0 = _mm512_fmadd_ps(
                    chunk512::<B>(row, pad, t),
                    _mm512_loadu_ps(xs.add(t * 16)),
                    a0,
                );
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

/// One W8A8 tile: `MR` tokens times `NP` 16-row panels of an [`crate::int8::Int8Matrix`], the
/// whole reduction in registers (`MR·NP` zmm accumulators), then the shared epilogue
/// `y = (acc − 128·Σx) as f32 · (x_scale · w_scale)`.
///
/// Per 4-column step, each panel contributes one 64-byte load (16 rows × 4 codes, stored as
/// `code + 128` so they are the unsigned operand of `vpdpbusd`) and each token one 4-byte
/// broadcast of its signed codes (folded into `vpdpbusd`'s `{1to16}` memory operand).
///
/// # Safety
/// AVX-512F/BW and AVX-512-VNNI available; `t` describes `MR` readable token rows of
/// `4·t.kq` bytes, `NP` readable panels of `64·t.kq` bytes with 16 readable scales each,
/// `MR` scales and sums, and an output of `MR` rows with room for `16·(NP−1) + t.last_rows`
/// floats each; `1 ≤ t.last_rows ≤ 16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn int8_tile_vnni<const MR: usize, const NP: usize>(t: &crate::int8::Tile) {
    let mut acc = [[_mm512_setzero_si512(); NP]; MR];
    // SAFETY (whole body): every pointer stays inside the ranges the caller guarantees.
    unsafe {
        let mut wp = t.w;
        let mut xp = t.x;
        for _ in 0..t.kq {
            let mut wv = [_mm512_setzero_si512(); NP];
            for (p, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(wp.add(p * t.panel_stride) as *const _);
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_epi32((xp.add(i * t.x_stride) as *const i32).read_unaligned());
                for (a, &w) in row.iter_mut().zip(&wv) {
                    *a = _mm512_dpbusd_epi32(*a, w, xb);
                }
            }
            wp = wp.add(64);
            xp = xp.add(4);
        }
        let last_mask: u16 = if t.last_rows >= 16 {
            0xffff
        } else {
            (1u16 << t.last_rows) - 1
        };
        for (i, row) in acc.iter().enumerate() {
            let bias = _mm512_set1_epi32(*t.x_sums128.add(i));
            let xs = _mm512_set1_ps(*t.x_scales.add(i));
            let y = t.y.add(i * t.y_stride);
            for (p, &a) in row.iter().enumerate() {
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, bias));
                let s = _mm512_mul_ps(xs, _mm512_loadu_ps(t.w_scales.add(16 * p)));
                let mask = if p + 1 == NP { last_mask } else { 0xffff };
                _mm512_mask_storeu_ps(y.add(16 * p), mask, _mm512_mul_ps(v, s));
            }
        }
    }
}

/// Per-token symmetric quantization of one row of `cols` floats at `±qmax`, bit-identical to
/// the scalar rule of [`crate::int8`] (same f32 scale, true division, round half to even, clamp).
/// Writes `cols` codes to `q` and returns `(scale, Σ codes)`; a row with a NaN or infinite value
/// gets scale NaN and zero codes.
///
/// # Safety
/// AVX-512F/BW/VL available; `x` has `cols` readable floats and `q` `cols` writable bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn quantize_row_avx512(
    x: *const f32,
    cols: usize,
    q: *mut i8,
    qmax: f32,
) -> (f32, i32) {
    let full = cols / 16;
    let tail = cols % 16;
    let tail_mask: u16 = ((1u32 << tail) - 1) as u16;
    let inf = _mm512_set1_ps(f32::INFINITY);
    // SAFETY (whole body): loads and stores cover `cols` elements, the tail masked.
    unsafe {
        let mut m = _mm512_setzero_ps();
        let mut bad: u16 = 0;
        for c in 0..full {
            let a = _mm512_abs_ps(_mm512_loadu_ps(x.add(16 * c)));
            bad |= _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(a, inf);
            m = _mm512_max_ps(m, a);
        }
        if tail > 0 {
            let a = _mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask, x.add(16 * full)));
            bad |= _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(a, inf);
            m = _mm512_max_ps(m, a);
        }
        if bad != 0 {
            std::ptr::write_bytes(q, 0, cols);
            return (f32::NAN, 0);
        }
        let scale = _mm512_reduce_max_ps(m).max(crate::int8::ABSMAX_CLAMP) / qmax;
        let sv = _mm512_set1_ps(scale);
        let (lo, hi) = (_mm512_set1_ps(-qmax), _mm512_set1_ps(qmax));
        let mut sum = _mm512_setzero_si512();
        let code = |v: __m512| {
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_div_ps(v, sv),
            );
            _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi))
        };
        for c in 0..full {
            let r = code(_mm512_loadu_ps(x.add(16 * c)));
            sum = _mm512_add_epi32(sum, r);
            _mm_storeu_si128(q.add(16 * c) as *mut __m128i, _mm512_cvtepi32_epi8(r));
        }
        if tail > 0 {
            let r = code(_mm512_maskz_loadu_ps(tail_mask, x.add(16 * full)));
            sum = _mm512_add_epi32(sum, r);
            _mm512_mask_cvtepi32_storeu_epi8(q.add(16 * full) as *mut _, tail_mask, r);
        }
        (scale, _mm512_reduce_add_epi32(sum))
    }
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
    unsafe {
        _mm256_dpbf16_ps(
            acc,
            c.cast(),
            _mm256_loadu_si256(x as *const __m256i).cast(),
        )
    }
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
            let acc0 = _mm256_sub_ps(
                _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                bv,
            );
            let acc1 = _mm256_sub_ps(
                _mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3)),
                bv,
            );
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

// ---------------------------------------------------------------------------------------------
// Int8-activation (Q8) GEMV with AVX-512-VNNI, codes of 1, 2, 3 or 4 bits.
//
// Activations are quantized once per call to int8 per block of columns (`x ≈ dx_b · q`).
// A 64-byte load of a `P`-bit plane (P ∈ {1, 2, 4}) covers `4/P` superblocks; after one 16-bit
// shift by `f·P` and a byte mask, its bytes are `P`-bit codes (unsigned, so `vpdpbusd` takes them
// as the u8 operand directly) whose columns match a pre-arranged 64-byte slice of `q` (see
// `PackedMatrix::q8_prep`). Each 128-bit lane of the i32 result belongs to one superblock (one
// weight group) and each i32 lane to one activation block (32, 64 or 128 columns), so one
// conversion and one FMA with `scale_g · dx_b` per lane finish the block in f32. 3-bit codes are
// rebuilt as `lo2 | hi1 << 2` in registers (see `q8_plane3`) and use the 2-bit arrangement.
// ---------------------------------------------------------------------------------------------

/// Software prefetch of the *next* group of rows while the current one is computed. The `R` rows
/// of a group are contiguous in memory, so the next group is one contiguous span: prefetching
/// `step` bytes of it per block turns `R` short row streams (which the hardware prefetcher ramps
/// up on one by one) into a single sequential stream running one group ahead.
#[derive(Clone, Copy)]
pub(crate) struct Prefetch {
    /// The first byte of the next group of rows.
    pub(crate) next: *const u8,
    /// Bytes of it to prefetch per block of the current group.
    pub(crate) step: usize,
}

impl Prefetch {
    #[inline(always)]
    pub(crate) fn issue(self, blk: usize) {
        let mut off = blk * self.step;
        let end = off + self.step;
        while off < end {
            // SAFETY: prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.next.wrapping_add(off) as *const i8) };
            off += 64;
        }
    }
}

/// Per-lane `scale` vector for the `NSB` superblocks starting at `sb0` (lane `i` belongs to
/// superblock `sb0 + i / (16 / NSB)`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn q8_scale_vec<const NSB: usize>(sc: *const f32, gidx: *const u32, sb0: usize) -> __m512 {
    // SAFETY: the caller guarantees gidx readable at sb0..sb0+NSB and sc at those groups.
    unsafe {
        let s = |i: usize| *sc.add(*gidx.add(sb0 + i) as usize);
        match NSB {
            1 => _mm512_set1_ps(s(0)),
            2 => _mm512_insertf32x8::<1>(_mm512_set1_ps(s(0)), _mm256_set1_ps(s(1))),
            _ => _mm512_permutexvar_ps(
                _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
                _mm512_castps128_ps512(_mm_set_ps(s(3), s(2), s(1), s(0))),
            ),
        }
    }
}

/// The GF(2) affine matrix (for `vgf2p8affineqb`) that moves bits `from .. from + n` of every
/// byte to bits `to .. to + n` and clears the others: output bit `i` reads matrix byte `7 - i`.
const fn extract_bits_matrix(from: usize, n: usize, to: usize) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < n {
        m |= (1u64 << (from + i)) << (8 * (7 - (to + i)));
        i += 1;
    }
    m
}

/// `vgf2p8affineqb` (no constant term), as inline assembly so that it inlines into the AVX-512
/// kernels without compiling them for GFNI (which LLVM could then use elsewhere, breaking CPUs
/// with VNNI but no GFNI). Only kernels instantiated with `G = true` reach it, and those run only
/// where GFNI was detected.
#[inline]
#[target_feature(enable = "avx512f")]
fn gf2p8affine(x: __m512i, a: __m512i) -> __m512i {
    let out: __m512i;
    // SAFETY: a pure register-to-register instruction; callers run only on CPUs with GFNI.
    unsafe {
        std::arch::asm!(
            "vgf2p8affineqb {o}, {x}, {a}, 0",
            o = lateout(zmm_reg) out,
            x = in(zmm_reg) x,
            a = in(zmm_reg) a,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// Accumulates one `P`-bit plane of `R` rows into `acc` (16 f32 lanes per row).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn q8_plane<const P: usize, const NSB: usize, const R: usize, const G: bool>(
    planes: [*const u8; R],
    plane_bytes: usize,
    xq: *const i8,
    dxv: *const f32,
    sc: [*const f32; R],
    gidx: *const u32,
    acc: &mut [__m512; R],
    pf: Prefetch,
) {
    let k = 8 / P;
    let nfull = plane_bytes / 64;
    let nblk = plane_bytes.div_ceil(64);
    let mask = _mm512_set1_epi8(((1u16 << P) - 1) as i8);
    // SAFETY (whole body): see `gemv_q8_rows`.
    unsafe {
        for blk in 0..nblk {
            let xb = xq.add(blk * 64 * k);
            let d = _mm512_loadu_ps(dxv.add(blk * 16));
            pf.issue(blk);
            let mut v = [_mm512_setzero_si512(); R];
            for r in 0..R {
                v[r] = if blk < nfull {
                    _mm512_loadu_si512(planes[r].add(blk * 64) as *const _)
                } else {
                    let mut tmp = [0u8; 64];
                    let rem = plane_bytes - blk * 64;
                    std::ptr::copy_nonoverlapping(planes[r].add(blk * 64), tmp.as_mut_ptr(), rem);
                    _mm512_loadu_si512(tmp.as_ptr() as *const _)
                };
            }
            let mut isum = [_mm512_setzero_si512(); R];
            for f in 0..k {
                let xv = _mm512_loadu_si512(xb.add(f * 64) as *const _);
                let sh = _mm_cvtsi32_si128((f * P) as i32);
                let a = _mm512_set1_epi64(extract_bits_matrix(f * P, P, 0) as i64);
                for r in 0..R {
                    let c = if P == 8 {
                        v[r]
                    } else if G {
                        gf2p8affine(v[r], a)
                    } else {
                        _mm512_and_si512(_mm512_srl_epi16(v[r], sh), mask)
                    };
                    isum[r] = _mm512_dpbusd_epi32(isum[r], c, xv);
                }
            }
            for r in 0..R {
                let s = q8_scale_vec::<NSB>(sc[r], gidx, blk * NSB);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_mul_ps(s, d), acc[r]);
            }
        }
    }
}

/// 3-bit codes in one pass: the 2-bit plane in 64-byte blocks of 2 superblocks (as
/// `q8_plane::<2, 2, R>`), with each superblock's 16-byte 1-bit plane broadcast to its two
/// 128-bit lanes, pre-shifted by 4 in the odd lanes (which hold chunks 4..8), then per shift `f`
/// bit `f` of each byte moved to bit 2 and OR'ed into the low codes: `code = lo | hi << 2`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn q8_plane3<const R: usize, const G: bool>(
    rows: [*const u8; R],
    pad: usize,
    xq: *const i8,
    dxv: *const f32,
    sc: [*const f32; R],
    gidx: *const u32,
    acc: &mut [__m512; R],
    pf: Prefetch,
) {
    let lo_bytes = pad / 4;
    let n_sb = pad / 128;
    let nblk = n_sb.div_ceil(2);
    let m3 = _mm512_set1_epi8(3);
    let m4 = _mm512_set1_epi8(4);
    // Per 16-bit word: 0 in 128-bit lanes 0 and 2, 4 in lanes 1 and 3.
    let cnt = _mm512_set_epi64(
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0,
        0,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0,
        0,
    );
    // SAFETY (whole body): see `gemv_q8_rows`; the lo plane is `pad/4` bytes, the hi plane `pad/8`
    // bytes right after it, 16 per superblock; the tail block reads only its existing superblock.
    unsafe {
        for blk in 0..nblk {
            let xb = xq.add(blk * 256);
            let d = _mm512_loadu_ps(dxv.add(blk * 16));
            let two = 2 * blk + 1 < n_sb;
            let mut v = [_mm512_setzero_si512(); R];
            let mut h = [_mm512_setzero_si512(); R];
            pf.issue(blk);
            for r in 0..R {
                let hi = rows[r].add(lo_bytes + blk * 32);
                let h0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(hi as *const __m128i));
                if two {
                    v[r] = _mm512_loadu_si512(rows[r].add(blk * 64) as *const _);
                    let h1 =
                        _mm256_broadcastsi128_si256(_mm_loadu_si128(hi.add(16) as *const __m128i));
                    h[r] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h0), h1);
                } else {
                    v[r] = _mm512_castsi256_si512(_mm256_loadu_si256(
                        rows[r].add(blk * 64) as *const __m256i
                    ));
                    v[r] = _mm512_inserti64x4::<1>(v[r], _mm256_setzero_si256());
                    h[r] =
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h0), _mm256_setzero_si256());
                }
                if !G {
                    h[r] = _mm512_slli_epi16::<2>(_mm512_srlv_epi16(h[r], cnt));
                }
            }
            let mut isum = [_mm512_setzero_si512(); R];
            for f in 0..4 {
                let xv = _mm512_loadu_si512(xb.add(f * 64) as *const _);
                let sl = _mm_cvtsi32_si128((2 * f) as i32);
                let sh = _mm_cvtsi32_si128(f as i32);
                // GFNI: one affine op per plane moves the wanted bits into place and clears the
                // rest; the odd 128-bit lanes of the high plane take bit f + 4 (chunks 4..8).
                let a_lo = _mm512_set1_epi64(extract_bits_matrix(2 * f, 2, 0) as i64);
                let (he, ho) = (
                    extract_bits_matrix(f, 1, 2) as i64,
                    extract_bits_matrix(f + 4, 1, 2) as i64,
                );
                let a_hi = _mm512_set_epi64(ho, ho, he, he, ho, ho, he, he);
                for r in 0..R {
                    let c = if G {
                        _mm512_or_si512(gf2p8affine(v[r], a_lo), gf2p8affine(h[r], a_hi))
                    } else {
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srl_epi16(v[r], sl), m3),
                            _mm512_and_si512(_mm512_srl_epi16(h[r], sh), m4),
                        )
                    };
                    isum[r] = _mm512_dpbusd_epi32(isum[r], c, xv);
                }
            }
            for r in 0..R {
                let s = q8_scale_vec::<2>(sc[r], gidx, blk * 2);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_mul_ps(s, d), acc[r]);
            }
        }
    }
}

/// `Σ a[i]·b[i]` over `n` floats.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn dot_f32_512(a: *const f32, b: *const f32, n: usize) -> __m512 {
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    // SAFETY: unmasked loads stay below n; the masked tail reads only lanes < n - i.
    unsafe {
        while i + 16 <= n {
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), acc);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            acc = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, a.add(i)),
                _mm512_maskz_loadu_ps(m, b.add(i)),
                acc,
            );
        }
    }
    acc
}

/// Activations prepared for [`gemv_q8_rows`] (built by `PackedMatrix::q8_prep`).
pub(crate) struct Q8View<'a> {
    /// Bits per code (1, 2, 3, 4).
    pub bits: u8,
    /// Padded columns (multiple of 128).
    pub pad: usize,
    /// Bytes per packed row.
    pub row_bytes: usize,
    /// Arranged int8 activations for the main plane (`P = bits`, or 2 for 3-bit).
    pub xq_a: &'a [i8],
    /// Per-lane `dx` for the main plane, 16 per 64-byte block.
    pub dx_a: &'a [f32],
    /// Group of each superblock, padded to a multiple of 4 superblocks.
    pub gidx: &'a [u32],
    /// Per-group sums of the (exact, f32) activations.
    pub xsum: &'a [f32],
    /// Groups per row.
    pub n_groups: usize,
    /// Whether to extract codes with GFNI affine ops (the CPU has GFNI).
    pub gfni: bool,
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn q8_rows_impl<const R: usize, const G: bool>(
    v: &Q8View<'_>,
    data: *const u8,
    scales: *const f32,
    offsets: *const f32,
    r0: usize,
    y: *mut f32,
) {
    let ng = v.n_groups;
    // SAFETY (whole body): see `gemv_q8_rows`.
    unsafe {
        let rows: [*const u8; R] = std::array::from_fn(|i| data.add((r0 + i) * v.row_bytes));
        let sc: [*const f32; R] = std::array::from_fn(|i| scales.add((r0 + i) * ng));
        let mut acc = [_mm512_setzero_ps(); R];
        let gidx = v.gidx.as_ptr();
        // Blocks per row: 64-byte blocks of the main plane (pairs of superblocks for 3-bit).
        let nblk = match v.bits {
            3 => (v.pad / 128).div_ceil(2),
            b => (v.pad * b as usize / 8).div_ceil(64),
        };
        let pf = Prefetch {
            next: data.wrapping_add((r0 + R) * v.row_bytes),
            step: (R * v.row_bytes).div_ceil(nblk.max(1)).next_multiple_of(64),
        };
        match v.bits {
            4 => q8_plane::<4, 1, R, G>(
                rows,
                v.pad / 2,
                v.xq_a.as_ptr(),
                v.dx_a.as_ptr(),
                sc,
                gidx,
                &mut acc,
                pf,
            ),
            2 => q8_plane::<2, 2, R, G>(
                rows,
                v.pad / 4,
                v.xq_a.as_ptr(),
                v.dx_a.as_ptr(),
                sc,
                gidx,
                &mut acc,
                pf,
            ),
            1 => q8_plane::<1, 4, R, G>(
                rows,
                v.pad / 8,
                v.xq_a.as_ptr(),
                v.dx_a.as_ptr(),
                sc,
                gidx,
                &mut acc,
                pf,
            ),
            _ => q8_plane3::<R, G>(
                rows,
                v.pad,
                v.xq_a.as_ptr(),
                v.dx_a.as_ptr(),
                sc,
                gidx,
                &mut acc,
                pf,
            ),
        }
        for (i, a) in acc.iter().enumerate() {
            let o = dot_f32_512(offsets.add((r0 + i) * ng), v.xsum.as_ptr(), ng);
            *y.add(i) = _mm512_reduce_add_ps(_mm512_add_ps(*a, o));
        }
    }
}

/// `y[i] = Σ_sb scale·dx·Σ code·q + Σ_g offset_g·xsum_g` for rows `r0 .. r0 + y.len()`.
///
/// # Safety
/// AVX-512F/BW/VL and AVX-512-VNNI available; `data` holds every row `< r0 + y.len()` of
/// `row_bytes = pad·bits/8` bytes each; `scales`/`offsets` hold `n_groups` floats per such row;
/// the view was built by `PackedMatrix::q8_prep` for this matrix (arranged activations and `dx`
/// cover every 64-byte plane block, `gidx` every superblock rounded up to 4, entries `< n_groups`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn gemv_q8_rows(
    v: &Q8View<'_>,
    data: *const u8,
    scales: *const f32,
    offsets: *const f32,
    r0: usize,
    y: &mut [f32],
) {
    // SAFETY: forwarded caller contract.
    unsafe {
        match v.bits {
            // 4-bit is memory-bound: one row at a time keeps the weight reads a single sequential
            // stream (rows are contiguous), which measured ~90% of the read probe against ~75%
            // for 4 interleaved row streams. Narrower codes are compute-bound: 8 rows share each
            // activation load and shift.
            4 if v.gfni => q8_rows_by::<1, true>(v, data, scales, offsets, r0, y),
            4 => q8_rows_by::<1, false>(v, data, scales, offsets, r0, y),
            _ if v.gfni => q8_rows_by::<8, true>(v, data, scales, offsets, r0, y),
            _ => q8_rows_by::<8, false>(v, data, scales, offsets, r0, y),
        }
    }
}

/// [`gemv_q8_rows`] in passes of `R` rows, the tail one row at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn q8_rows_by<const R: usize, const G: bool>(
    v: &Q8View<'_>,
    data: *const u8,
    scales: *const f32,
    offsets: *const f32,
    r0: usize,
    y: &mut [f32],
) {
    let n = y.len();
    let mut i = 0;
    // SAFETY: forwarded caller contract, rows r0 + i .. r0 + i + R all < r0 + n.
    unsafe {
        while i + R <= n {
            q8_rows_impl::<R, G>(v, data, scales, offsets, r0 + i, y.as_mut_ptr().add(i));
            i += R;
        }
        while i < n {
            q8_rows_impl::<1, G>(v, data, scales, offsets, r0 + i, y.as_mut_ptr().add(i));
            i += 1;
        }
    }
}

/// [`crate::packed::quantize_x_q8`] for one block of `16·vecs` columns: `q = round_half_even(x / d)`
/// clamped to ±127 with `d = max|x| / 127`, bit-identical to the scalar version for finite
/// inputs (same f32 `d` and `1 / d`, round-to-nearest-even conversion). Returns `d`.
///
/// # Safety
/// AVX-512F/BW/VL available; `x` has `16·vecs` readable floats and `q` as many writable bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn quantize_block_q8(x: *const f32, q: *mut i8, vecs: usize) -> f32 {
    // SAFETY: the caller guarantees the `16·vecs`-element ranges.
    unsafe {
        let mut m = _mm512_setzero_ps();
        for i in 0..vecs {
            m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x.add(16 * i))));
        }
        let amax = _mm512_reduce_max_ps(m);
        let d = amax / 127.0;
        if !(d > 0.0 && d.is_finite()) {
            std::ptr::write_bytes(q, 0, 16 * vecs);
            return d;
        }
        let inv = _mm512_set1_ps(1.0 / d);
        let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
        for i in 0..vecs {
            let v = _mm512_mul_ps(_mm512_loadu_ps(x.add(16 * i)), inv);
            let r =
                _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
            _mm_storeu_si128(q.add(16 * i) as *mut __m128i, _mm512_cvtepi32_epi8(r));
        }
        d
    }
}
