//! The int8-activation binary GEMV of `arch::x86_avx512_binary` for CPUs with AVX2 but no
//! AVX-512-VNNI (Zen 2 and 3, Haswell to Alder Lake): the same activation arrangement
//! ([`BinaryQ8View`]), each 64-column chunk taken as two 32-column halves.
//!
//! `vpdpbusd` multiplies unsigned bytes, which is why the VNNI kernel looks up biased codes
//! (`code + 128`) and subtracts a correction. Its AVX2 stand-in, `vpmaddubsw`, would saturate
//! on biased codes (2 · 255 · 127 > 2¹⁵), so this kernel looks up the signed codes and moves
//! their signs onto the activations (`vpsignb`): `|code| ≤ 128`, `|q| ≤ 127`, a pair sums to at
//! most 32512, no saturation, and no correction term. The i32 sum of each block is the same
//! exact integer as the VNNI kernel's minus its bias; each block gets one FMA with
//! `scale · dx`.
//!
//! Everything here is `unsafe`: callers guarantee AVX2 + FMA and the extents documented on
//! [`gemv_q8_rows`].

use std::arch::x86_64::*;

use super::x86_avx512_binary::{BinaryQ8View, Q8_ROWS};

/// How far ahead of the current chunk group the code stream is prefetched.
const PREFETCH_BYTES: usize = 1024;

/// `y[i] = Σ_b scale·dx_b · Σ_j code_j·q_j` for rows `r0 + i` (signed codes, see the module
/// docs).
///
/// # Safety
/// AVX2 and FMA available; `v` was built for its matrix as described on [`BinaryQ8View`]; `r0`
/// is a multiple of [`Q8_ROWS`] and rows `r0 .. r0 + y.len()` exist.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemv_q8_rows(v: &BinaryQ8View<'_>, r0: usize, y: &mut [f32]) {
    let n = y.len();
    let mut i = 0;
    // SAFETY: forwarded caller contract; each call covers one row group (Q8_ROWS rows, or the
    // matrix's last, partial group), whose rows all exist.
    unsafe {
        while i < n {
            let t = (v.rows - (r0 + i)).min(Q8_ROWS).min(n - i);
            let y_i = y.as_mut_ptr().add(i);
            match t {
                4 => group::<4>(v, r0 + i, y_i),
                3 => group::<3>(v, r0 + i, y_i),
                2 => group::<2>(v, r0 + i, y_i),
                _ => group::<1>(v, r0 + i, y_i),
            }
            i += t;
        }
    }
}

/// One group of `R` rows starting at `r0` (a group start): the rows' codes are interleaved
/// chunk by chunk, so the loop reads one sequential stream.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn group<const R: usize>(v: &BinaryQ8View<'_>, r0: usize, y: *mut f32) {
    const { assert!(R <= 4) };
    let row_bytes = 16 * v.n_chunks;
    // Per-64-bit-lane right shifts putting column 16f + j's two bits (bits 2f, 2f + 1 of code
    // byte j) at the bottom of byte j: f = 0, 1 in the halves' 128-bit lanes of half 0, f = 2, 3
    // in half 1. Bits shifted in from the next byte are masked off.
    let cnt = [_mm256_set_epi64x(2, 2, 0, 0), _mm256_set_epi64x(6, 6, 4, 4)];
    let three = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    // Biased codes (code + 128) to signed codes: flip each byte's top bit.
    let unbias = 0x8080_8080_8080_8080u64;
    // SAFETY (whole body): see `gemv_q8_rows`; the group's codes are `R · row_bytes` bytes from
    // `r0 · row_bytes`, its tables `R · n_blocks` from `r0 · n_blocks`; `xq` and `salient` hold
    // 64 bytes per chunk; `scales` `scale_stride ≥ n_blocks` per row, `dx` as many.
    unsafe {
        let codes = v.codes.as_ptr().add(r0 * row_bytes);
        let tables = v.tables.as_ptr().add(r0 * v.n_blocks);
        let mut acc = [_mm256_setzero_ps(); R];
        let m = v.chunks_per_block;
        for b in 0..v.n_blocks {
            let c0 = b * m;
            if c0 >= v.n_chunks {
                break;
            }
            let c1 = (c0 + m).min(v.n_chunks);
            let tbl: [__m256i; R] = std::array::from_fn(|i| {
                _mm256_set1_epi64x((*tables.add(b * R + i) ^ unbias) as i64)
            });
            let mut isum = [_mm256_setzero_si256(); R];
            for c in c0..c1 {
                let xp = v.xq.as_ptr().add(64 * c) as *const __m256i;
                let sp = v.salient.as_ptr().add(64 * c) as *const __m256i;
                let xv = [_mm256_loadu_si256(xp), _mm256_loadu_si256(xp.add(1))];
                let sv = [_mm256_loadu_si256(sp), _mm256_loadu_si256(sp.add(1))];
                let chunk = codes.add(c * 16 * R);
                _mm_prefetch::<_MM_HINT_T0>(chunk.add(PREFETCH_BYTES) as *const i8);
                for i in 0..R {
                    let raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                        chunk.add(16 * i) as *const __m128i
                    ));
                    for h in 0..2 {
                        // idx = salient | ((raw >> shift) & 3); w = the signed table value.
                        let code = _mm256_and_si256(_mm256_srlv_epi64(raw, cnt[h]), three);
                        let w = _mm256_shuffle_epi8(tbl[i], _mm256_or_si256(sv[h], code));
                        let p = _mm256_maddubs_epi16(
                            _mm256_sign_epi8(w, w),
                            _mm256_sign_epi8(xv[h], w),
                        );
                        isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(p, ones));
                    }
                }
            }
            for i in 0..R {
                let s = f32::from_bits(
                    u32::from(*v.scales.as_ptr().add((r0 + i) * v.scale_stride + b)) << 16,
                );
                let cf = _mm256_set1_ps(s * *v.dx.as_ptr().add(b));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), cf, acc[i]);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            *y.add(i) = super::x86::hsum256(*a);
        }
    }
}
