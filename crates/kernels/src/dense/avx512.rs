//! AVX-512 f32 micro-kernel of [`crate::dense`]: a `MR × 32` tile of `C = A·B` kept in 28
//! registers over the whole `k` loop, with the epilogues the model fuses (overwrite, add to the
//! residual, `silu(gate)·up`), and a vectorised `exp`.
//!
//! Everything here is `unsafe`: callers (the safe front ends in `dense.rs`) check the CPU
//! features and that every pointer covers the extents documented on each function.

#![allow(clippy::incompatible_msrv)] // gated on the compiler version by build.rs

use std::arch::x86_64::*;

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
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_199_9e-3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_452e-3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666_666_5e-1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
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

/// `src` as bf16 pairs, `dst[u] = bf16(src[2u]) | bf16(src[2u + 1]) << 16` (an odd tail is
/// paired with 0), rounded to nearest even by `vcvtneps2bf16`: the same bits as `half`'s
/// conversion except that subnormal inputs become zero. One instruction per 16 values, where
/// the scalar conversion costs a branchy dozen per value.
///
/// # Safety
/// AVX-512F, AVX-512VL and AVX-512-BF16; `dst` holds at least `src.len().div_ceil(2)` lanes.
#[target_feature(enable = "avx512f,avx512vl,avx512bf16")]
pub(crate) unsafe fn to_bf16_units(src: &[f32], dst: &mut [u32]) {
    let n = src.len();
    assert!(dst.len() >= n.div_ceil(2));
    let mut j = 0;
    while j < n {
        let left = n - j;
        // SAFETY: the load is masked to `src`, the store to the `⌈left/2⌉` units `dst` has.
        unsafe {
            let x = _mm512_maskz_loadu_ps(lanes(left), src.as_ptr().add(j));
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(x));
            let units = left.min(16).div_ceil(2);
            let m = ((1u32 << units) - 1) as __mmask8;
            _mm256_mask_storeu_epi32(dst.as_mut_ptr().add(j / 2) as *mut i32, m, h);
        }
        j += 16;
    }
}

/// Two rows as bf16 pairs lane by lane: `dst[d] = bf16(lo[d]) | bf16(hi[d]) << 16` (`hi`
/// absent: 0), rounded as [`to_bf16_units`]. Packs `P · V`'s values, paired along the keys.
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
