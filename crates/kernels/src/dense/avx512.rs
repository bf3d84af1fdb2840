//! AVX-512 f32 micro-kernel of [`crate::dense`]: a `MR × 32` tile of `C = A·B` kept in 28
//! registers over the whole `k` loop, with the epilogues the model fuses (overwrite, add to the
//! residual, `silu(gate)·up`), and a vectorised `exp`.
//!
//! Everything here is `unsafe`: callers (the safe front ends in `dense.rs`) check the CPU
//! features and that every pointer covers the extents documented on each function.

#![allow(clippy::incompatible_msrv)] // gated on the compiler version by build.rs

use std::arch::x86_64::*;

use super::exp_poly::{LN2_HI, LN2_LO, P};

/// Rows of a micro-tile (tokens).
pub(crate) const MR: usize = 14;
/// Columns of a micro-tile (output features): two 16-lane registers.
pub(crate) const NR: usize = 32;

/// How a finished tile is written to `C`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TileStore {
    /// `C = tile`.
    Overwrite,
    /// `C += tile`.
    Add,
    /// Lanes 0..16 are `gate`, 16..32 are `up` of the same 16 output columns:
    /// `C[.., 0..16] = silu(gate) · up`.
    SiluMul,
}

/// `exp(x)` of 16 lanes: Cody–Waite range reduction, the Cephes `expf` polynomial (the same as
/// the scalar `exp_nonpositive` of the model's softmax) and `vscalefps` for `2ⁿ`, so it
/// saturates to 0 / +inf without integer tricks. Relative error about 2 ulp.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn exp16(x: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-104.0)),
        _mm512_set1_ps(89.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(P[0]);
    for &c in &P[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    _mm512_scalef_ps(y, n)
}

/// `silu(g) = g / (1 + exp(-g))` of 16 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn silu16(g: __m512) -> __m512 {
    let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0), e))
}

/// Lane mask of the first `n` (≤ 16) lanes.
#[inline(always)]
pub(crate) fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// The `k` loop of one tile with its 14 × 2 accumulators as named locals (an array of them
/// made LLVM zero a stack copy on every call). Row `i` of `A` at step `p` is
/// `a[i·ARS + p·ACS]`.
macro_rules! accumulate {
    ($k:expr, $a:expr, $ars:expr, $acs:expr, $b:expr, $ldb:expr, $m0:expr, $m1:expr;
     $( $r:ident $i:literal ),*) => {{
        $( let mut $r = [_mm512_setzero_ps(); 2]; )*
        for p in 0..$k {
            let bp = $b.add(p * $ldb);
            let b0 = _mm512_maskz_loadu_ps($m0, bp);
            let b1 = _mm512_maskz_loadu_ps($m1, bp.add(16));
            let ap = $a.add(p * $acs);
            $(
                let av = _mm512_set1_ps(*ap.add($i * $ars));
                $r[0] = _mm512_fmadd_ps(av, b0, $r[0]);
                $r[1] = _mm512_fmadd_ps(av, b1, $r[1]);
            )*
        }
        [$($r),*]
    }};
}

/// One `MR × NR` tile over `A` packed as `[k][MR]` panels: see [`tile_with`].
///
/// # Safety
/// As [`tile_with`] with `ARS = 1`, `ACS = MR`.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    store: TileStore,
) {
    // SAFETY: forwarded.
    unsafe { tile_with::<1, MR>(k, a, b, ldb, c, ldc, rows, cols, store) }
}

/// One `MR × NR` tile: `acc[i][j] = Σ_p a[i·ARS + p·ACS] · b[p·ldb + j]`, written to
/// `c[i·ldc + j]` for `i < rows`, `j < cols` as `store` says.
///
/// # Safety
/// AVX-512F; `a` covers `a[i·ARS + p·ACS]` for `i < MR`, `p < k`; `b` holds rows `p < k` of
/// `ldb` floats each, of which the first `min(cols, NR)` are read (for `SiluMul` all `NR`, and
/// `cols ≤ 16` counts output columns); `c` holds `rows` rows of stride `ldc` with the written
/// columns.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile_with<const ARS: usize, const ACS: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    store: TileStore,
) {
    let (m0, m1) = if store == TileStore::SiluMul {
        (0xffff, 0xffff)
    } else {
        (lanes(cols), lanes(cols.saturating_sub(16)))
    };
    // SAFETY (whole function): extents as documented above.
    unsafe {
        let acc: [[__m512; 2]; MR] = accumulate!(k, a, ARS, ACS, b, ldb, m0, m1;
            r0 0, r1 1, r2 2, r3 3, r4 4, r5 5, r6 6, r7 7, r8 8, r9 9, r10 10, r11 11, r12 12, r13 13);
        for (i, row) in acc.iter().enumerate().take(rows) {
            let cp = c.add(i * ldc);
            match store {
                TileStore::Overwrite => {
                    _mm512_mask_storeu_ps(cp, m0, row[0]);
                    _mm512_mask_storeu_ps(cp.add(16), m1, row[1]);
                }
                TileStore::Add => {
                    let c0 = _mm512_maskz_loadu_ps(m0, cp);
                    let c1 = _mm512_maskz_loadu_ps(m1, cp.add(16));
                    _mm512_mask_storeu_ps(cp, m0, _mm512_add_ps(c0, row[0]));
                    _mm512_mask_storeu_ps(cp.add(16), m1, _mm512_add_ps(c1, row[1]));
                }
                TileStore::SiluMul => {
                    let out = _mm512_mul_ps(silu16(row[0]), row[1]);
                    _mm512_mask_storeu_ps(cp, lanes(cols), out);
                }
            }
        }
    }
}

/// The bf16 tile: `A` packed as `[kp][MR]` and `B` as `[kp][NR]` 32-bit lanes, each holding the
/// bf16 values of columns `2p` (low half) and `2p + 1` (high half) of `k`; `vdpbf16ps` adds both
/// products of a pair into the f32 accumulators (the products are exact in f32).
///
/// # Safety
/// AVX-512F and AVX-512-BF16; `a` holds `kp·MR` lanes, `b` `kp·NR` lanes; `c` as [`tile_with`].
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile_bf16(
    kp: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    store: TileStore,
) {
    macro_rules! dp {
        ($( $r:ident $i:literal ),*) => {{
            $( let mut $r = [_mm512_setzero_ps(); 2]; )*
            for p in 0..kp {
                let bp = b.add(p * NR);
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp as *const _));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16) as *const _));
                let ap = a.add(p * MR);
                $(
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add($i) as i32));
                    $r[0] = _mm512_dpbf16_ps($r[0], av, b0);
                    $r[1] = _mm512_dpbf16_ps($r[1], av, b1);
                )*
            }
            [$($r),*]
        }};
    }
    let (m0, m1) = if store == TileStore::SiluMul {
        (0xffff, 0xffff)
    } else {
        (lanes(cols), lanes(cols.saturating_sub(16)))
    };
    // SAFETY (whole function): extents as documented above.
    unsafe {
        let acc: [[__m512; 2]; MR] = dp!(r0 0, r1 1, r2 2, r3 3, r4 4, r5 5, r6 6, r7 7, r8 8, r9 9, r10 10, r11 11, r12 12, r13 13);
        for (i, row) in acc.iter().enumerate().take(rows) {
            let cp = c.add(i * ldc);
            match store {
                TileStore::Overwrite => {
                    _mm512_mask_storeu_ps(cp, m0, row[0]);
                    _mm512_mask_storeu_ps(cp.add(16), m1, row[1]);
                }
                TileStore::Add => {
                    let c0 = _mm512_maskz_loadu_ps(m0, cp);
                    let c1 = _mm512_maskz_loadu_ps(m1, cp.add(16));
                    _mm512_mask_storeu_ps(cp, m0, _mm512_add_ps(c0, row[0]));
                    _mm512_mask_storeu_ps(cp.add(16), m1, _mm512_add_ps(c1, row[1]));
                }
                TileStore::SiluMul => {
                    let out = _mm512_mul_ps(silu16(row[0]), row[1]);
                    _mm512_mask_storeu_ps(cp, lanes(cols), out);
                }
            }
        }
    }
}

/// Per-row scaling applied while [`transpose_rows`] loads: `value · inv[r]`, then `· weight[c]`
/// (the RMSNorm of a GEMM's left operand, in the order of the scalar packing).
#[derive(Clone, Copy)]
pub(crate) struct LoadNorm<'a> {
    pub inv: &'a [f32; 16],
    pub weight: *const f32,
}

/// Transposes up to 16 rows of `len` 32-bit lanes into lane-major order,
/// `dst[c·ld + r] = src[r][c]` for `r < 16`, `c < len`, through 16 × 16 register blocks. A null
/// `src[r]` reads as zeros; each output row stores only the lanes of `store`. Moves bits only
/// (with `norm`, the same two products per value as the scalar packing), so the packed panels
/// are bit-identical to those of the scalar loops, without their strided single-value stores.
///
/// # Safety
/// AVX-512F; every non-null `src[r]` holds `len` readable lanes (and `norm.weight` `len`
/// floats); `dst` holds the lanes `c·ld + r` for `c < len` and each lane `r` of `store`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose_rows(
    src: &[*const f32; 16],
    len: usize,
    norm: Option<LoadNorm<'_>>,
    dst: *mut f32,
    ld: usize,
    store: __mmask16,
) {
    let mut c0 = 0;
    // SAFETY (whole loop): loads are masked to the `len` lanes of each row, stores to the
    // lanes the caller guarantees.
    unsafe {
        while c0 < len {
            let n = (len - c0).min(16);
            let m = lanes(n);
            let r: [__m512; 16] = std::array::from_fn(|i| load_row(src, i, c0, m, norm));
            store_transposed(r, n, dst.add(c0 * ld), ld, store);
            c0 += 16;
        }
    }
}

/// [`transpose_rows`] of bf16 pairs: row `r` holds `floats` f32 values, and lane `c` of the
/// output is its unit `c`, `bf16(src[r][2c]) | bf16(src[r][2c + 1]) << 16` (an odd tail paired
/// with 0), converted by `vcvtne2ps2bf16` after the optional `norm` (the same rounding and the
/// same bits as `half`'s conversion of the normalised values except that subnormal inputs become
/// zero), for `c < ⌈floats/2⌉`. One instruction converts 32 values, where the scalar conversion
/// costs a branchy dozen per value.
///
/// # Safety
/// AVX-512F and AVX-512-BF16; every non-null `src[r]` (and `norm.weight`) holds `floats`
/// readable floats; `dst` holds the lanes `c·ld + r` for `c < ⌈floats/2⌉` and each lane `r` of
/// `store`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn transpose_rows_bf16(
    src: &[*const f32; 16],
    floats: usize,
    norm: Option<LoadNorm<'_>>,
    dst: *mut f32,
    ld: usize,
    store: __mmask16,
) {
    let units = floats.div_ceil(2);
    let mut c0 = 0;
    // SAFETY (whole loop): loads are masked to the `floats` values of each row, stores to the
    // lanes the caller guarantees.
    unsafe {
        while c0 < units {
            let f0 = 2 * c0;
            let (m_lo, m_hi) = (lanes(floats - f0), lanes(floats.saturating_sub(f0 + 16)));
            let r: [__m512; 16] = std::array::from_fn(|i| {
                let (hi, lo) = (
                    load_row(src, i, f0 + 16, m_hi, norm),
                    load_row(src, i, f0, m_lo, norm),
                );
                std::mem::transmute::<__m512bh, __m512>(_mm512_cvtne2ps_pbh(hi, lo))
            });
            store_transposed(r, (units - c0).min(16), dst.add(c0 * ld), ld, store);
            c0 += 16;
        }
    }
}

/// Row `i` of `src` at `at`, the lanes of `m` (zeros for a null row), with `norm` applied.
///
/// # Safety
/// AVX-512F; a non-null `src[i]` (and `norm.weight`) readable at the lanes of `m` from `at`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_row(
    src: &[*const f32; 16],
    i: usize,
    at: usize,
    m: __mmask16,
    norm: Option<LoadNorm<'_>>,
) -> __m512 {
    if src[i].is_null() {
        return _mm512_setzero_ps();
    }
    // SAFETY: the caller's contract.
    unsafe {
        let v = _mm512_maskz_loadu_ps(m, src[i].add(at));
        match norm {
            Some(nm) => _mm512_mul_ps(
                _mm512_mul_ps(v, _mm512_set1_ps(nm.inv[i])),
                _mm512_maskz_loadu_ps(m, nm.weight.add(at)),
            ),
            None => v,
        }
    }
}

/// Transposes 16 loaded rows and stores output rows `c < n` at `dst + c·ld` (lanes of `store`).
///
/// # Safety
/// AVX-512F; `dst` writable at those lanes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_transposed(r: [__m512; 16], n: usize, dst: *mut f32, ld: usize, store: __mmask16) {
    let out = transpose16(r);
    for (c, v) in out.iter().enumerate().take(n) {
        // SAFETY: the caller's contract.
        unsafe { _mm512_mask_storeu_ps(dst.add(c * ld), store, *v) };
    }
}

/// The 16 × 16 transpose: `out[c]` lane `r` = `r[r]` lane `c`. Pairs interleave within 128-bit
/// lanes, quads gather one column's four rows per 128-bit lane, and `vshuff32x4` assembles the
/// four quads of each column.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // t[2a] lane L = (r2a[4L], r2a+1[4L], r2a[4L+1], r2a+1[4L+1]); t[2a+1] the same for 4L+2, 4L+3.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // s[4b + j] lane L = column 4L + j of rows 4b..4b+4.
    let s: [__m512; 16] = std::array::from_fn(|i| {
        let (b, j) = (i / 4, i % 4);
        let (x, y) = (t[4 * b + j / 2], t[4 * b + 2 + j / 2]);
        if j % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(x, y)
        } else {
            _mm512_shuffle_ps::<0xEE>(x, y)
        }
    });
    // Column 4L + j = (s[j] lane L, s[4 + j] lane L, s[8 + j] lane L, s[12 + j] lane L).
    let mut out = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        let p0 = _mm512_shuffle_f32x4::<0x44>(s[j], s[4 + j]);
        let p1 = _mm512_shuffle_f32x4::<0xEE>(s[j], s[4 + j]);
        let q0 = _mm512_shuffle_f32x4::<0x44>(s[8 + j], s[12 + j]);
        let q1 = _mm512_shuffle_f32x4::<0xEE>(s[8 + j], s[12 + j]);
        out[j] = _mm512_shuffle_f32x4::<0x88>(p0, q0);
        out[4 + j] = _mm512_shuffle_f32x4::<0xDD>(p0, q0);
        out[8 + j] = _mm512_shuffle_f32x4::<0x88>(p1, q1);
        out[12 + j] = _mm512_shuffle_f32x4::<0xDD>(p1, q1);
    }
    out
}

/// Two rows as bf16 pairs lane by lane: `dst[d] = bf16(lo[d]) | bf16(hi[d]) << 16` (`hi`
/// absent: 0), rounded as [`transpose_rows_bf16`]. Packs `P · V`'s values, paired along the keys.
///
/// # Safety
/// AVX-512F, AVX-512VL and AVX-512-BF16.
#[target_feature(enable = "avx512f,avx512vl,avx512bf16")]
pub(crate) unsafe fn interleave_bf16(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32]) {
    let n = lo.len();
    assert!(dst.len() >= n && hi.is_none_or(|h| h.len() >= n));
    let half = |x: __m512| -> __m512i {
        // SAFETY: AVX-512-BF16 is enabled for this function.
        _mm512_cvtepu16_epi32(unsafe {
            std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x))
        })
    };
    let mut j = 0;
    while j < n {
        let m = lanes(n - j);
        // SAFETY: loads and the store are masked to the `n` lanes the slices hold.
        unsafe {
            let a = half(_mm512_maskz_loadu_ps(m, lo.as_ptr().add(j)));
            let b = match hi {
                Some(h) => {
                    _mm512_slli_epi32::<16>(half(_mm512_maskz_loadu_ps(m, h.as_ptr().add(j))))
                }
                None => _mm512_setzero_si512(),
            };
            _mm512_mask_storeu_epi32(
                dst.as_mut_ptr().add(j) as *mut i32,
                m,
                _mm512_or_si512(a, b),
            );
        }
        j += 16;
    }
}

/// `Σ exp(x - max)` over `row`, exponentials in f32 lanes, sums in f64 lanes.
///
/// # Safety
/// AVX-512F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn sum_exp_minus(row: &[f32], max: f32) -> f64 {
    let vm = _mm512_set1_ps(max);
    let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    let mut j = 0;
    while j < row.len() {
        let mask = lanes(row.len() - j);
        // SAFETY: the load is masked to the row.
        let x = unsafe { _mm512_maskz_loadu_ps(mask, row[j..].as_ptr()) };
        let e = _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(x, vm)));
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        hi = _mm512_add_pd(
            hi,
            _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(e),
            ))),
        );
        j += 16;
    }
    _mm512_reduce_add_pd(_mm512_add_pd(lo, hi))
}
