//! AVX-512 kernels of [`crate::BinaryMatrix`] (see its module docs for the layout): the exact
//! f32-activation row dot and the int8-activation (VNNI) multi-row GEMV. Compiled only with
//! Rust ≥ 1.89 (`cfg(qwen3_avx512)`, set by build.rs), where these intrinsics are stable.
#![allow(clippy::incompatible_msrv)] // gated on the compiler version by build.rs

use std::arch::x86_64::*;

use crate::binary::BinaryRow;

/// Rows per pass of the int8 kernel (they share each activation and salient-byte load).
pub(crate) const Q8_ROWS: usize = crate::binary::ROW_GROUP;
const _: () = assert!(Q8_ROWS >= 1 && Q8_ROWS <= 8);

/// `Σ_c Σ_l table_b[idx]·x` for one row with f32 activations: per 16 columns the 2-bit codes
/// are zero-extended, shifted into place, OR'ed with 4 where the column is salient and looked up
/// with `vpermps` in the (row, block) table `code · scale`.
///
/// # Safety
/// AVX-512F/BW/VL available; `row` describes one row of a `BinaryMatrix` (its `n_chunks`
/// chunks of 16 code bytes, one table and scale per block `0 ..= (n_chunks − 1) / m`); `xs`
/// holds `64·n_chunks` floats and `salient` `n_chunks` words.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn row_dot_exact(row: &BinaryRow, xs: *const f32, salient: *const u64) -> f32 {
    let (n_chunks, m) = (row.n_chunks, row.chunks_per_block);
    let three = _mm512_set1_epi32(3);
    let bias = _mm256_set1_epi32(128);
    let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    // SAFETY: every read is inside the ranges the caller guarantees.
    unsafe {
        let mut c = 0;
        let mut b = 0;
        while c < n_chunks {
            // The block's 8 values: (biased code − 128) · scale.
            let t8 = _mm_cvtsi64_si128(*row.tables.add(b * row.table_stride) as i64);
            let t32 = _mm256_sub_epi32(_mm256_cvtepu8_epi32(t8), bias);
            let s = f32::from_bits(u32::from(*row.scales.add(b)) << 16);
            let table =
                _mm512_castps256_ps512(_mm256_mul_ps(_mm256_cvtepi32_ps(t32), _mm256_set1_ps(s)));
            let end = (c + m).min(n_chunks);
            while c < end {
                let p = row.codes.add(c * row.chunk_stride);
                let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i));
                let sal = *salient.add(c);
                let x = xs.add(64 * c);
                a0 = quarter(_mm512_and_si512(v, three), sal as __mmask16, table, x, a0);
                a1 = quarter(
                    _mm512_and_si512(_mm512_srli_epi32::<2>(v), three),
                    (sal >> 16) as __mmask16,
                    table,
                    x.add(16),
                    a1,
                );
                a0 = quarter(
                    _mm512_and_si512(_mm512_srli_epi32::<4>(v), three),
                    (sal >> 32) as __mmask16,
                    table,
                    x.add(32),
                    a0,
                );
                a1 = quarter(
                    _mm512_srli_epi32::<6>(v),
                    (sal >> 48) as __mmask16,
                    table,
                    x.add(48),
                    a1,
                );
                c += 1;
            }
            b += 1;
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
}

/// `acc + table[code | 4·salient] · x` for 16 columns.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn quarter(
    code: __m512i,
    sal: __mmask16,
    table: __m512,
    x: *const f32,
    acc: __m512,
) -> __m512 {
    let idx = _mm512_mask_or_epi32(code, sal, code, _mm512_set1_epi32(4));
    let w = _mm512_permutexvar_ps(idx, table);
    // SAFETY: the caller guarantees 16 readable floats at `x`.
    _mm512_fmadd_ps(w, unsafe { _mm512_loadu_ps(x) }, acc)
}

/// Activations and weights of one int8-activation binary GEMV (built by
/// `BinaryMatrix::gemv_q8_with`).
pub(crate) struct BinaryQ8View<'a> {
    /// Int8 activations, `64·n_chunks` or more.
    pub xq: &'a [i8],
    /// Activation scale per block, `scale_stride` values (zero padded).
    pub dx: &'a [f32],
    /// `128 · dx · Σq` per block, `scale_stride` values (zero padded).
    pub corr: &'a [f32],
    /// One byte per column, 4 where salient (`64·n_chunks`).
    pub salient: &'a [u8],
    /// All rows' codes, `16·n_chunks` bytes per row.
    pub codes: &'a [u8],
    /// Biased table codes per (row, block).
    pub tables: &'a [u64],
    /// bf16 scales, `scale_stride` per row.
    pub scales: &'a [u16],
    /// 64-column chunks per row.
    pub n_chunks: usize,
    /// Blocks per row.
    pub n_blocks: usize,
    /// Chunks per block.
    pub chunks_per_block: usize,
    /// Scales per row (`n_blocks` rounded up to 16).
    pub scale_stride: usize,
    /// Rows of the matrix (the last row group may be partial).
    pub rows: usize,
}

/// `y[i] = Σ_b scale·dx_b · Σ_j (code_j + 128)·q_j − Σ_b scale·corr_b` for rows `r0 + i`.
///
/// # Safety
/// AVX-512F/BW/VL and AVX-512-VNNI available; `v` was built for its matrix as described on
/// [`BinaryQ8View`]; `r0` is a multiple of [`Q8_ROWS`] and rows `r0 .. r0 + y.len()` exist;
/// `coef` holds `Q8_ROWS · scale_stride` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn gemv_q8_rows(
    v: &BinaryQ8View<'_>,
    r0: usize,
    y: &mut [f32],
    coef: &mut [f32],
) {
    let n = y.len();
    let mut i = 0;
    // SAFETY: forwarded caller contract; each call covers one row group (Q8_ROWS rows, or the
    // matrix's last, partial group), whose rows all exist.
    unsafe {
        while i < n {
            let t = (v.rows - (r0 + i)).min(Q8_ROWS).min(n - i);
            let (y_i, c) = (y.as_mut_ptr().add(i), coef.as_mut_ptr());
            match t {
                8 => q8_group::<8>(v, r0 + i, y_i, c),
                7 => q8_group::<7>(v, r0 + i, y_i, c),
                6 => q8_group::<6>(v, r0 + i, y_i, c),
                5 => q8_group::<5>(v, r0 + i, y_i, c),
                4 => q8_group::<4>(v, r0 + i, y_i, c),
                3 => q8_group::<3>(v, r0 + i, y_i, c),
                2 => q8_group::<2>(v, r0 + i, y_i, c),
                _ => q8_group::<1>(v, r0 + i, y_i, c),
            }
            i += t;
        }
    }
}

/// One group of `R` rows starting at `r0` (a group start) of [`gemv_q8_rows`]: the rows' codes
/// are interleaved chunk by chunk, so the loop reads one sequential stream.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn q8_group<const R: usize>(v: &BinaryQ8View<'_>, r0: usize, y: *mut f32, coef: *mut f32) {
    let stride = v.scale_stride;
    let row_bytes = 16 * v.n_chunks;
    // SAFETY (whole body): see `gemv_q8_rows`; `scale_stride` is a multiple of 16, so the
    // 16-wide scale, dx and corr loads stay inside each row's padded range; the group's codes
    // are `R · row_bytes` bytes from `r0 · row_bytes`, its tables `R · n_blocks` from
    // `r0 · n_blocks`.
    unsafe {
        // Per (row, block) coefficient `scale · dx` and the bias correction `Σ scale·corr`.
        let mut corr = [0f32; R];
        for (i, ci) in corr.iter_mut().enumerate() {
            let sc = v.scales.as_ptr().add((r0 + i) * stride);
            let mut acc = _mm512_setzero_ps();
            for b in (0..stride).step_by(16) {
                let s16 = _mm256_loadu_si256(sc.add(b) as *const __m256i);
                let s = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(s16)));
                let d = _mm512_loadu_ps(v.dx.as_ptr().add(b));
                _mm512_storeu_ps(coef.add(i * stride + b), _mm512_mul_ps(s, d));
                acc = _mm512_fmadd_ps(s, _mm512_loadu_ps(v.corr.as_ptr().add(b)), acc);
            }
            *ci = _mm512_reduce_add_ps(acc);
        }
        // Per-16-bit-word right shifts: 2f in 128-bit lane f (lane f holds columns 16f..16f+16).
        let cnt = _mm512_set_epi64(
            0x0006_0006_0006_0006,
            0x0006_0006_0006_0006,
            0x0004_0004_0004_0004,
            0x0004_0004_0004_0004,
            0x0002_0002_0002_0002,
            0x0002_0002_0002_0002,
            0,
            0,
        );
        let three = _mm512_set1_epi8(3);
        let codes = v.codes.as_ptr().add(r0 * row_bytes);
        let tables = v.tables.as_ptr().add(r0 * v.n_blocks);
        let mut acc = [_mm512_setzero_ps(); R];
        let m = v.chunks_per_block;
        for b in 0..v.n_blocks {
            let c0 = b * m;
            if c0 >= v.n_chunks {
                break;
            }
            let c1 = (c0 + m).min(v.n_chunks);
            let tbl: [__m512i; R] =
                std::array::from_fn(|i| _mm512_set1_epi64(*tables.add(b * R + i) as i64));
            let mut isum = [_mm512_setzero_si512(); R];
            for c in c0..c1 {
                let xv = _mm512_loadu_si512(v.xq.as_ptr().add(64 * c) as *const _);
                let sv = _mm512_loadu_si512(v.salient.as_ptr().add(64 * c) as *const _);
                let group = codes.add(c * 16 * R);
                _mm_prefetch::<_MM_HINT_T0>(group.add(PREFETCH_BYTES) as *const i8);
                for i in 0..R {
                    let raw = _mm512_broadcast_i32x4(_mm_loadu_si128(
                        group.add(16 * i) as *const __m128i
                    ));
                    // idx = salient | ((raw >> 2f) & 3)
                    let idx =
                        _mm512_ternarylogic_epi32::<0xF8>(sv, _mm512_srlv_epi16(raw, cnt), three);
                    let w = _mm512_shuffle_epi8(tbl[i], idx);
                    isum[i] = _mm512_dpbusd_epi32(isum[i], w, xv);
                }
            }
            for i in 0..R {
                let cf = _mm512_set1_ps(*coef.add(i * stride + b));
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), cf, acc[i]);
            }
        }
        for i in 0..R {
            *y.add(i) = _mm512_reduce_add_ps(acc[i]) - corr[i];
        }
    }
}

/// How far ahead of the current chunk group the code stream is prefetched.
const PREFETCH_BYTES: usize = 1024;
