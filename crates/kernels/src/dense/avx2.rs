//! AVX2 + FMA f32 micro-kernel of [`crate::dense`], for x86-64 CPUs without AVX-512 (Zen 2 and
//! 3, Haswell to Alder Lake). Weights are packed in 16-column panels (`NR`), activations in
//! 12-row panels (`MR`), and a tile is two 6 × 16 register blocks (12 accumulators, two weight
//! registers and one broadcast: 15 of the 16 `ymm` registers), the classic shape for two FMA
//! units of 4–5 cycles' latency. A 16-column panel row is one cache line, so each block streams
//! its weights contiguously.
//!
//! Each output is one FMA chain over `k` in the same order as the AVX-512 kernel's, so the two
//! give the same bits.
//!
//! Everything here is `unsafe`: callers (the safe front ends in `dense.rs`) check the CPU
//! features and that every pointer covers the extents documented on each function.

use std::arch::x86_64::*;

use super::exp_poly::{LN2_HI, LN2_LO, P};

use super::avx512::TileStore;

/// Rows of an activation panel: two 6-row register blocks.
pub(crate) const MR: usize = 12;
/// Columns of a weight panel: two 8-lane registers.
pub(crate) const NR: usize = 16;
/// Rows of one register block.
const RB: usize = 6;

/// `exp(x)` of 8 lanes: the polynomial and range reduction of the AVX-512 `exp16` (and of the
/// model's scalar softmax), with `2ⁿ` built in the exponent bits; inputs are clamped to
/// [-87, 88], where the result is a normal float.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(P[0]);
    for &c in &P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
}

/// `silu(g) = g / (1 + exp(-g))` of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn silu8(g: __m256) -> __m256 {
    let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e))
}

/// `g[i] = silu(g[i]) · u[i]` (see [`crate::dense::silu_mul_in_place`]).
///
/// # Safety
/// AVX2 and FMA; `u.len() ≥ g.len()`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn silu_mul_in_place(g: &mut [f32], u: &[f32]) {
    let n8 = g.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 ≤ n8 ≤ g.len() ≤ u.len().
        unsafe {
            let gp = g.as_mut_ptr().add(i);
            let y = _mm256_mul_ps(
                silu8(_mm256_loadu_ps(gp)),
                _mm256_loadu_ps(u.as_ptr().add(i)),
            );
            _mm256_storeu_ps(gp, y);
        }
    }
    let mut tail = [0f32; 8];
    let mut tail_u = [0f32; 8];
    let r = g.len() - n8;
    tail[..r].copy_from_slice(&g[n8..]);
    tail_u[..r].copy_from_slice(&u[n8..g.len()]);
    // SAFETY: 8 floats of `tail` and of `tail_u`.
    unsafe {
        let y = _mm256_mul_ps(
            silu8(_mm256_loadu_ps(tail.as_ptr())),
            _mm256_loadu_ps(tail_u.as_ptr()),
        );
        _mm256_storeu_ps(tail.as_mut_ptr(), y);
    }
    g[n8..].copy_from_slice(&tail[..r]);
}

/// The `k` loop of one 6 × 16 block: rows `a[p·AP + i·AI]` (i < 6) against the 8 weight lanes
/// at `b[p·ldb + off0..]` and the 8 at `b[p·ldb + off1..]`. Named locals, as in the AVX-512
/// kernel, keep the accumulators in registers.
///
/// # Safety
/// AVX2 and FMA; `a` holds the addressed floats from the block's first row, `b` `k` rows of
/// `ldb` with `off0 + 8, off1 + 8` lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn block<const AP: usize, const AI: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    off0: usize,
    off1: usize,
) -> [[__m256; 2]; RB] {
    macro_rules! rows {
        ($( $r:ident $i:literal ),*) => {{
            $( let mut $r = [_mm256_setzero_ps(); 2]; )*
            for p in 0..k {
                // SAFETY: p < k, offsets as documented.
                let (b0, b1, ap) = unsafe {
                    let bp = b.add(p * ldb);
                    (_mm256_loadu_ps(bp.add(off0)), _mm256_loadu_ps(bp.add(off1)), a.add(p * AP))
                };
                $(
                    // SAFETY: i < RB rows of the block.
                    let av = _mm256_set1_ps(unsafe { *ap.add($i * AI) });
                    $r[0] = _mm256_fmadd_ps(av, b0, $r[0]);
                    $r[1] = _mm256_fmadd_ps(av, b1, $r[1]);
                )*
            }
            [$($r),*]
        }};
    }
    rows!(r0 0, r1 1, r2 2, r3 3, r4 4, r5 5)
}

/// One `MR × NR` tile over `A` packed as `[k][MR]` and `B` as `[k][NR]`: the outputs
/// `Σ_p a[p·MR + i] · b[p·NR + j]` written to `c[i·ldc + j]` for `i < rows`, `j < cols` as
/// `store` says (for `SiluMul`, lanes 0..8 of `B` are the gate and 8..16 the up weights of
/// `cols ≤ 8` output columns).
///
/// # Safety
/// AVX2 and FMA; `a` holds `k·MR` floats, `b` `k·NR`; `c` holds `rows ≤ MR` rows of stride
/// `ldc` with the written columns.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile(
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    store: TileStore,
) {
    // SAFETY: the packed layouts are the strides below; extents as documented.
    unsafe { tile_with::<MR, 1>(k, a, b, NR, c, ldc, rows, cols, store) }
}

/// [`tile`] over any operand layout: `A[i][p] = a[p·AP + i·AI]` (`AP = MR, AI = 1` is a
/// packed panel, `AP = 1, AI = lda` a row-major matrix) and `B[p][j] = b[p·ldb + j]`, 16 lanes
/// read per row whatever `cols` is.
///
/// # Safety
/// AVX2 and FMA; `a` holds the addressed floats of `rows.div_ceil(6)·6` rows, `b` `k` rows of
/// `ldb` with 16 readable lanes each; `c` as for [`tile`].
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn tile_with<const AP: usize, const AI: usize>(
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
    for g in 0..rows.div_ceil(RB) {
        let live = RB.min(rows - g * RB);
        // SAFETY: the block's rows start inside the operand; extents as documented.
        let (ag, cg) = unsafe { (a.add(g * RB * AI), c.add(g * RB * ldc)) };
        // SAFETY: offsets 0 and 8 with 16 readable lanes per row of `b`.
        let acc = unsafe { block::<AP, AI>(k, ag, b, ldb, 0, 8) };
        if store == TileStore::SiluMul {
            let out = acc.map(|r| _mm256_mul_ps(silu8(r[0]), r[1]));
            // SAFETY: rows < live, columns < cols ≤ 8.
            unsafe { write(&out, cg, ldc, live, cols.min(8), false) };
            continue;
        }
        let add = store == TileStore::Add;
        for (half, lanes) in [(0, cols.min(8)), (1, cols.saturating_sub(8))] {
            if lanes == 0 {
                continue;
            }
            let regs = acc.map(|r| r[half]);
            // SAFETY: rows < live, columns half·8 + j < cols.
            unsafe { write(&regs, cg.add(half * 8), ldc, live, lanes, add) };
        }
    }
}

/// Stores (or adds) the first `lanes` lanes of the first `rows` registers to rows of `c`.
///
/// # Safety
/// AVX2; `c` holds `rows` rows of stride `ldc` with `lanes` writable floats each.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn write(
    regs: &[__m256; RB],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    lanes: usize,
    add: bool,
) {
    for (i, &v) in regs.iter().enumerate().take(rows) {
        // SAFETY: row i < rows, as documented.
        let cp = unsafe { c.add(i * ldc) };
        if lanes == 8 {
            // SAFETY: eight floats of row i.
            unsafe {
                let v = if add {
                    _mm256_add_ps(_mm256_loadu_ps(cp), v)
                } else {
                    v
                };
                _mm256_storeu_ps(cp, v);
            }
        } else {
            let mut tmp = [0f32; 8];
            // SAFETY: `tmp` holds eight floats.
            unsafe { _mm256_storeu_ps(tmp.as_mut_ptr(), v) };
            for (j, &t) in tmp.iter().enumerate().take(lanes) {
                // SAFETY: j < lanes.
                unsafe { *cp.add(j) = if add { *cp.add(j) + t } else { t } };
            }
        }
    }
}

/// `dst[u·ld + r] = x_r[u]` for `r < 4`, `u < len`: four rows transposed into columns, 4 × 4
/// blocks at a time (the operand packing of this kernel). A null row reads as zeros. With
/// `norm = Some((weight, inv))`, `x_r[u] = weight[u] · (src_r[u] · inv[r])`, the two products
/// in the order of the scalar RMSNorm; with `round`, each value is then rounded to bf16
/// ([`super::round_bf16`], bit for bit).
///
/// # Safety
/// AVX2; each non-null `src[r]` (and `weight`) holds `len` floats; `dst` holds the written
/// lanes.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn transpose4(
    src: [*const f32; 4],
    len: usize,
    norm: Option<(*const f32, [f32; 4])>,
    round: bool,
    dst: *mut f32,
    ld: usize,
) {
    // A null row reads the same four zeros at every column (step 0): no per-load branch.
    let zeros = [0f32; 4];
    let rows: [(*const f32, usize); 4] = std::array::from_fn(|r| {
        if src[r].is_null() {
            (zeros.as_ptr(), 0)
        } else {
            (src[r], 1)
        }
    });
    // SAFETY: forwarded contract; the null rows read `zeros` only.
    unsafe {
        let (w, inv) = norm.unwrap_or((std::ptr::null(), [1.0; 4]));
        match (norm.is_some(), round) {
            (false, false) => transpose4_rows::<false, false>(rows, len, w, inv, dst, ld),
            (true, false) => transpose4_rows::<true, false>(rows, len, w, inv, dst, ld),
            (false, true) => transpose4_rows::<false, true>(rows, len, w, inv, dst, ld),
            (true, true) => transpose4_rows::<true, true>(rows, len, w, inv, dst, ld),
        }
    }
}

/// [`transpose4`] over `(start, step)` rows (`step` 1, or 0 for a row of zeros), normalised
/// when `NORM`, rounded to bf16 when `ROUND`.
///
/// # Safety
/// As [`transpose4`]; a row of step 0 holds 4 floats.
#[inline(always)]
unsafe fn transpose4_rows<const NORM: bool, const ROUND: bool>(
    rows: [(*const f32, usize); 4],
    len: usize,
    weight: *const f32,
    inv: [f32; 4],
    dst: *mut f32,
    ld: usize,
) {
    // SAFETY (whole body): columns u < len of each row and of `weight` (step-0 rows: their 4
    // floats), and the documented extent of `dst`. Called from `transpose4`, which enables AVX2.
    unsafe {
        let vinv = inv.map(|v| _mm_set1_ps(v));
        let load = |r: usize, u: usize| -> __m128 {
            let (p, step) = rows[r];
            let x = _mm_loadu_ps(p.add(u * step));
            let x = if NORM {
                _mm_mul_ps(_mm_loadu_ps(weight.add(u)), _mm_mul_ps(x, vinv[r]))
            } else {
                x
            };
            if ROUND {
                round_bf16_4(x)
            } else {
                x
            }
        };
        let full = len / 4 * 4;
        for u in (0..full).step_by(4) {
            let (v0, v1, v2, v3) = (load(0, u), load(1, u), load(2, u), load(3, u));
            let (t0, t1) = (_mm_unpacklo_ps(v0, v1), _mm_unpacklo_ps(v2, v3));
            let (t2, t3) = (_mm_unpackhi_ps(v0, v1), _mm_unpackhi_ps(v2, v3));
            _mm_storeu_ps(dst.add(u * ld), _mm_movelh_ps(t0, t1));
            _mm_storeu_ps(dst.add((u + 1) * ld), _mm_movehl_ps(t1, t0));
            _mm_storeu_ps(dst.add((u + 2) * ld), _mm_movelh_ps(t2, t3));
            _mm_storeu_ps(dst.add((u + 3) * ld), _mm_movehl_ps(t3, t2));
        }
        for u in full..len {
            for (r, &(p, step)) in rows.iter().enumerate() {
                let x = *p.add(u * step);
                let x = if NORM {
                    *weight.add(u) * (x * inv[r])
                } else {
                    x
                };
                *dst.add(u * ld + r) = if ROUND { super::round_bf16(x) } else { x };
            }
        }
    }
}

/// [`super::round_bf16`] of 4 lanes, bit for bit (`half`'s rule): round to nearest even at bit
/// 16, and a NaN keeps its top half with the quiet bit set.
#[inline(always)]
fn round_bf16_4(x: __m128) -> __m128 {
    // SAFETY: SSE2 and SSE4.1 (blendv) only, enabled with AVX2 by every caller.
    unsafe {
        let b = _mm_castps_si128(x);
        let hi = _mm_set1_epi32(0xffff_0000u32 as i32);
        let lsb = _mm_and_si128(_mm_srli_epi32::<16>(b), _mm_set1_epi32(1));
        let rounded = _mm_and_si128(
            _mm_add_epi32(_mm_add_epi32(b, _mm_set1_epi32(0x7fff)), lsb),
            hi,
        );
        let quiet = _mm_or_si128(_mm_and_si128(b, hi), _mm_set1_epi32(0x0040_0000));
        _mm_blendv_ps(
            _mm_castsi128_ps(rounded),
            _mm_castsi128_ps(quiet),
            _mm_cmpunord_ps(x, x),
        )
    }
}

/// `Σ exp(x − max)` over `row`: exponentials in f32 lanes (0 below −87, where `exp8` clamps),
/// sums in f64 lanes.
///
/// # Safety
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sum_exp_minus(row: &[f32], max: f32) -> f64 {
    let (vm, floor) = (_mm256_set1_ps(max), _mm256_set1_ps(-87.0));
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let mut add = |x: __m256| {
        let x = _mm256_sub_ps(x, vm);
        let e = _mm256_and_ps(exp8(x), _mm256_cmp_ps::<_CMP_GE_OQ>(x, floor));
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
    };
    let chunks = row.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        // SAFETY: eight floats.
        add(unsafe { _mm256_loadu_ps(c.as_ptr()) });
    }
    if !rem.is_empty() {
        let mut tail = [f32::NEG_INFINITY; 8];
        tail[..rem.len()].copy_from_slice(rem);
        // SAFETY: eight floats.
        add(unsafe { _mm256_loadu_ps(tail.as_ptr()) });
    }
    let mut s = [0f64; 4];
    // SAFETY: four doubles.
    unsafe { _mm256_storeu_pd(s.as_mut_ptr(), _mm256_add_pd(lo, hi)) };
    (s[0] + s[1]) + (s[2] + s[3])
}

#[cfg(test)]
mod tests {
    use std::arch::x86_64::*;

    #[test]
    fn vector_bf16_rounding_is_the_scalar_one() {
        if !crate::KernelChoice::Avx2.is_supported() {
            return;
        }
        let mut xs = vec![
            0.0f32,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f80_0001), // a signalling NaN with low payload only
            f32::from_bits(0xffc0_1234),
            f32::from_bits(0x3f80_8000), // a tie, even below: stays
            f32::from_bits(0x3f81_8000), // a tie, odd below: rounds up
            f32::from_bits(0x3f80_8001),
            f32::from_bits(0x0000_8000), // subnormal tie
            f32::MIN_POSITIVE,
        ];
        xs.extend((0..4096u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))));
        xs.resize(xs.len().next_multiple_of(4), 0.0);
        for c in xs.chunks_exact(4) {
            let mut got = [0f32; 4];
            // SAFETY: AVX2 checked above; four floats each way.
            unsafe {
                _mm_storeu_ps(
                    got.as_mut_ptr(),
                    super::round_bf16_4(_mm_loadu_ps(c.as_ptr())),
                )
            };
            for (x, g) in c.iter().zip(got) {
                assert_eq!(
                    g.to_bits(),
                    super::super::round_bf16(*x).to_bits(),
                    "{:#010x}",
                    x.to_bits()
                );
            }
        }
    }
}
