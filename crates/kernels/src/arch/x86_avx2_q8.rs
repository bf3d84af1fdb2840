//! The int8-activation GEMV of `arch::x86_avx512` (`gemv_q8_rows`) for CPUs with AVX2 but no
//! AVX-512-VNNI (Zen 2 and 3, Haswell to Alder Lake): the same activation arrangement
//! ([`Q8View`], built by `PackedMatrix::q8_prep`), each 64-byte block of a code plane taken as two
//! 32-byte halves, and `vpdpbusd` replaced by `vpmaddubsw` (codes × int8 activations, pairs
//! summed into i16: at most 2 · 15 · 127, no saturation; those i16 pairs added over the shifts of a
//! byte, at most 7620) then `vpmaddwd` by ones (i32 sums of the same bytes a VNNI lane sums). Each i32 lane is therefore the same exact integer as on
//! AVX-512, and the per-lane `scale · dx` accumulation the same; only the final horizontal sum
//! runs in another order. 1-, 2- and 4-bit codes (3-bit codes keep the f32-activation kernel).
//!
//! Everything here is `unsafe`: callers guarantee AVX2 + FMA and the extents documented on
//! [`gemv_q8_rows`].

use std::arch::x86_64::*;

use super::x86_avx512::{Prefetch, Q8View};

/// Per-half `scale` vectors of the 64-byte block holding superblocks `sb0..sb0 + NSB` (lane `i`
/// of the 16 belongs to superblock `sb0 + i / (16 / NSB)`; half 0 holds lanes 0..8).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn scale_halves<const NSB: usize>(
    sc: *const f32,
    gidx: *const u32,
    sb0: usize,
) -> [__m256; 2] {
    // SAFETY: the caller guarantees gidx readable at sb0..sb0 + NSB and sc at those groups.
    let s = |i: usize| unsafe { *sc.add(*gidx.add(sb0 + i) as usize) };
    match NSB {
        1 => [_mm256_set1_ps(s(0)); 2],
        2 => [_mm256_set1_ps(s(0)), _mm256_set1_ps(s(1))],
        _ => [
            _mm256_set_m128(_mm_set1_ps(s(1)), _mm_set1_ps(s(0))),
            _mm256_set_m128(_mm_set1_ps(s(3)), _mm_set1_ps(s(2))),
        ],
    }
}

/// Accumulates the `P`-bit code plane of `R` rows (`plane_bytes` bytes each) into `acc` (8 f32
/// lanes per half, two halves per row).
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn plane<const P: usize, const NSB: usize, const R: usize>(
    planes: [*const u8; R],
    plane_bytes: usize,
    xq: *const i8,
    dxv: *const f32,
    sc: [*const f32; R],
    gidx: *const u32,
    acc: &mut [[__m256; 2]; R],
    pf: Prefetch,
) {
    let k = 8 / P;
    let nfull = plane_bytes / 64;
    let nblk = plane_bytes.div_ceil(64);
    let mask = _mm256_set1_epi8(((1u16 << P) - 1) as i8);
    let ones = _mm256_set1_epi16(1);
    // SAFETY (whole body): see `gemv_q8_rows`.
    unsafe {
        // The last, partial block of each row, copied out once (zero-padded).
        let mut tail = [[0u8; 64]; R];
        if nblk > nfull {
            for r in 0..R {
                let rem = plane_bytes - nfull * 64;
                std::ptr::copy_nonoverlapping(planes[r].add(nfull * 64), tail[r].as_mut_ptr(), rem);
            }
        }
        for blk in 0..nblk {
            let xb = xq.add(blk * 64 * k);
            let d = [
                _mm256_loadu_ps(dxv.add(blk * 16)),
                _mm256_loadu_ps(dxv.add(blk * 16 + 8)),
            ];
            pf.issue(blk);
            let mut v = [[_mm256_setzero_si256(); 2]; R];
            for r in 0..R {
                let src = if blk < nfull {
                    planes[r].add(blk * 64)
                } else {
                    tail[r].as_ptr()
                };
                v[r] = [
                    _mm256_loadu_si256(src as *const __m256i),
                    _mm256_loadu_si256(src.add(32) as *const __m256i),
                ];
            }
            // Code·activation pairs summed in i16 over the `k` shifts, then widened to i32 once:
            // the same integers as widening each shift, since |sum| ≤ k·2·(2ᴾ − 1)·127 ≤ 7620.
            let mut isum = [[_mm256_setzero_si256(); 2]; R];
            for f in 0..k {
                let sh = _mm_cvtsi32_si128((f * P) as i32);
                for h in 0..2 {
                    let xv = _mm256_loadu_si256(xb.add(f * 64 + h * 32) as *const __m256i);
                    for r in 0..R {
                        let c = if f == 0 {
                            _mm256_and_si256(v[r][h], mask)
                        } else {
                            _mm256_and_si256(_mm256_srl_epi16(v[r][h], sh), mask)
                        };
                        let pairs = _mm256_maddubs_epi16(c, xv);
                        isum[r][h] = _mm256_add_epi16(isum[r][h], pairs);
                    }
                }
            }
            for halves in isum.iter_mut() {
                for s16 in halves.iter_mut() {
                    *s16 = _mm256_madd_epi16(*s16, ones);
                }
            }
            for r in 0..R {
                let s = scale_halves::<NSB>(sc[r], gidx, blk * NSB);
                for h in 0..2 {
                    acc[r][h] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(isum[r][h]),
                        _mm256_mul_ps(s[h], d[h]),
                        acc[r][h],
                    );
                }
            }
        }
    }
}

/// 3-bit codes, as the AVX-512 `q8_plane3` without GFNI: each 32-byte half of a block is one
/// superblock's 2-bit plane, its 16-byte 1-bit plane broadcast to both 128-bit lanes and
/// pre-shifted by 4 in the upper one (which holds chunks 4..8); per shift `f`,
/// `code = (lo >> 2f) & 3 | (hi' >> f) & 4`.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn plane3<const R: usize>(
    rows: [*const u8; R],
    pad: usize,
    xq: *const i8,
    dxv: *const f32,
    sc: [*const f32; R],
    gidx: *const u32,
    acc: &mut [[__m256; 2]; R],
    pf: Prefetch,
) {
    let lo_bytes = pad / 4;
    let n_sb = pad / 128;
    let nblk = n_sb.div_ceil(2);
    let (m3, m4) = (_mm256_set1_epi8(3), _mm256_set1_epi8(4));
    let ones = _mm256_set1_epi16(1);
    let cnt = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    // SAFETY (whole body): see `gemv_q8_rows`; the lo plane is `pad/4` bytes, the hi plane
    // `pad/8` bytes right after it, 16 per superblock; a missing second superblock is skipped.
    unsafe {
        for blk in 0..nblk {
            let xb = xq.add(blk * 256);
            let halves = if 2 * blk + 1 < n_sb { 2 } else { 1 };
            pf.issue(blk);
            let s: [[__m256; 2]; R] =
                std::array::from_fn(|r| scale_halves::<2>(sc[r], gidx, blk * 2));
            for h in 0..halves {
                let d = _mm256_loadu_ps(dxv.add(blk * 16 + h * 8));
                let mut lo = [_mm256_setzero_si256(); R];
                let mut hi = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    lo[r] = _mm256_loadu_si256(rows[r].add(blk * 64 + h * 32) as *const __m256i);
                    let hp = rows[r].add(lo_bytes + blk * 32 + h * 16);
                    let b = _mm256_broadcastsi128_si256(_mm_loadu_si128(hp as *const __m128i));
                    hi[r] = _mm256_slli_epi32::<2>(_mm256_srlv_epi32(b, cnt));
                }
                // i16 sums over the 4 shifts: |sum| ≤ 4·2·7·127 = 7112, no overflow.
                let mut isum = [_mm256_setzero_si256(); R];
                for f in 0..4 {
                    let xv = _mm256_loadu_si256(xb.add(f * 64 + h * 32) as *const __m256i);
                    let (sl, sh) = (
                        _mm_cvtsi32_si128((2 * f) as i32),
                        _mm_cvtsi32_si128(f as i32),
                    );
                    for r in 0..R {
                        let c = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srl_epi16(lo[r], sl), m3),
                            _mm256_and_si256(_mm256_srl_epi16(hi[r], sh), m4),
                        );
                        isum[r] = _mm256_add_epi16(isum[r], _mm256_maddubs_epi16(c, xv));
                    }
                }
                for s16 in isum.iter_mut() {
                    *s16 = _mm256_madd_epi16(*s16, ones);
                }
                for r in 0..R {
                    acc[r][h] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(isum[r]),
                        _mm256_mul_ps(s[r][h], d),
                        acc[r][h],
                    );
                }
            }
        }
    }
}

/// How far past the next group of rows the software prefetch reads. One group ahead (1 KB for
/// a 4-bit row of 2048 columns) is about one core's bandwidth-delay product and left the
/// GEMV at 73% of the read probe on Zen 3; 4 KB further gave 78% (`gemv_bandwidth`, 2 threads).
const PREFETCH_AHEAD: usize = 4096;

/// `R` rows from `r0`: `y[i] = Σ lanes + Σ_g offset_g·xsum_g`.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_impl<const R: usize>(
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
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let bits = v.bits as usize;
        let nblk = match bits {
            3 => (v.pad / 128).div_ceil(2),
            b => (v.pad * b / 8).div_ceil(64),
        }
        .max(1);
        let pf = Prefetch {
            next: data.wrapping_add((r0 + R) * v.row_bytes + PREFETCH_AHEAD),
            step: (R * v.row_bytes).div_ceil(nblk).next_multiple_of(64),
        };
        let (xq, dx, gidx) = (v.xq_a.as_ptr(), v.dx_a.as_ptr(), v.gidx.as_ptr());
        match bits {
            4 => plane::<4, 1, R>(rows, v.pad / 2, xq, dx, sc, gidx, &mut acc, pf),
            2 => plane::<2, 2, R>(rows, v.pad / 4, xq, dx, sc, gidx, &mut acc, pf),
            1 => plane::<1, 4, R>(rows, v.pad / 8, xq, dx, sc, gidx, &mut acc, pf),
            _ => plane3::<R>(rows, v.pad, xq, dx, sc, gidx, &mut acc, pf),
        }
        for (i, a) in acc.iter().enumerate() {
            let of = std::slice::from_raw_parts(offsets.add((r0 + i) * ng), ng);
            let o: f32 = of.iter().zip(v.xsum).map(|(o, s)| o * s).sum();
            *y.add(i) = super::x86::hsum256(_mm256_add_ps(a[0], a[1])) + o;
        }
    }
}

/// `y[i] = Σ_sb scale·dx·Σ code·q + Σ_g offset_g·xsum_g` for rows `r0 .. r0 + y.len()`, as
/// `x86_avx512::gemv_q8_rows`.
///
/// # Safety
/// AVX2 and FMA available; codes of 1 to 4 bits; `data` holds every row `< r0 + y.len()` of
/// `row_bytes = pad·bits/8` bytes each; `scales`/`offsets` hold `n_groups` floats per such row;
/// the view was built by `PackedMatrix::q8_prep` for this matrix.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemv_q8_rows(
    v: &Q8View<'_>,
    data: *const u8,
    scales: *const f32,
    offsets: *const f32,
    r0: usize,
    y: &mut [f32],
) {
    // 4-bit: one row at a time, a single sequential weight stream (memory-bound); narrower
    // codes: 4 rows share each activation load (16 ymm: 8 accumulators, 8 code halves).
    let step = if v.bits == 4 { 1 } else { 4 };
    let n = y.len();
    let mut i = 0;
    // SAFETY: forwarded caller contract; rows r0 + i .. r0 + i + step all < r0 + n.
    unsafe {
        while i + step <= n {
            let yp = y.as_mut_ptr().add(i);
            if step == 1 {
                rows_impl::<1>(v, data, scales, offsets, r0 + i, yp);
            } else {
                rows_impl::<4>(v, data, scales, offsets, r0 + i, yp);
            }
            i += step;
        }
        while i < n {
            rows_impl::<1>(v, data, scales, offsets, r0 + i, y.as_mut_ptr().add(i));
            i += 1;
        }
    }
}

/// [`crate::packed::quantize_x_q8`] for one block of `8·vecs` columns, as the AVX-512
/// `quantize_block_q8`: `q = round_half_even(x / d)` clamped to ±127 with `d = max|x| / 127`,
/// bit-identical to the scalar version for finite inputs. Returns `d`.
///
/// # Safety
/// AVX2 available; `x` has `8·vecs` readable floats and `q` as many writable bytes.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_block_q8(x: *const f32, q: *mut i8, vecs: usize) -> f32 {
    // SAFETY: the caller guarantees the `8·vecs`-element ranges.
    unsafe {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let mut m = _mm256_setzero_ps();
        for i in 0..vecs {
            m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x.add(8 * i)), abs));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let amax = lanes.iter().fold(0f32, |a, &v| a.max(v));
        let d = amax / 127.0;
        if !(d > 0.0 && d.is_finite()) {
            std::ptr::write_bytes(q, 0, 8 * vecs);
            return d;
        }
        let inv = _mm256_set1_ps(1.0 / d);
        let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        for i in 0..vecs {
            // The default rounding mode (nearest, ties to even) converts.
            let r = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x.add(8 * i)), inv));
            let r = _mm256_min_epi32(_mm256_max_epi32(r, lo), hi);
            // i32 → i16 → i8 within each 128-bit lane: bytes 0..4 of each lane are its values.
            let b = _mm256_packs_epi16(_mm256_packs_epi32(r, r), _mm256_setzero_si256());
            let dst = q.add(8 * i) as *mut i32;
            dst.write_unaligned(_mm256_cvtsi256_si32(b));
            dst.add(1).write_unaligned(_mm256_extract_epi32::<4>(b));
        }
        d
    }
}
