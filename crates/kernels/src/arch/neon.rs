//! NEON (AArch64 Advanced SIMD) kernels for the packed layout, the binary layout and int8 dots.
//! NEON is part of the AArch64 baseline, so no runtime detection is needed.
//!
//! Every function here is `unsafe`: callers guarantee the pointer ranges stated in its doc
//! comment. One 16-byte load per chunk feeds 16 columns: shift and mask give the codes, two
//! widenings give four `u32x4`, converted to `f32x4` for the FMAs.

use std::arch::aarch64::*;

/// Codes of chunk `t` of a `B`-bit plane (`B ∈ {1,2,4,8}`) as 16 bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn plane_u8<const B: usize>(plane: *const u8, t: usize) -> uint8x16_t {
    let k = 8 / B;
    let (sb, ch) = (t >> 3, t & 7);
    // SAFETY: the caller guarantees 16 readable bytes at this offset.
    let v = unsafe { vld1q_u8(plane.add(sb * 16 * B + (ch / k) * 16)) };
    if B == 8 {
        v
    } else {
        let sh = vdupq_n_s8(-(((ch % k) * B) as i8));
        vandq_u8(vshlq_u8(v, sh), vdupq_n_u8(((1u16 << B) - 1) as u8))
    }
}

/// Codes of chunk `t` of a packed row (`B ∈ {1,2,3,4,8}`) as 16 bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn chunk_u8<const B: usize>(row: *const u8, pad: usize, t: usize) -> uint8x16_t {
    // SAFETY: forwarded caller guarantee (chunk `t` inside the row's planes).
    unsafe {
        match B {
            3 => vorrq_u8(
                plane_u8::<2>(row, t),
                vshlq_n_u8::<2>(plane_u8::<1>(row.add(pad / 4), t)),
            ),
            1 => plane_u8::<1>(row, t),
            2 => plane_u8::<2>(row, t),
            4 => plane_u8::<4>(row, t),
            _ => plane_u8::<8>(row, t),
        }
    }
}

/// 16 codes as four `f32x4`.
#[inline]
#[target_feature(enable = "neon")]
fn widen(c: uint8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_u8(vget_low_u8(c));
    let hi = vmovl_high_u8(c);
    [
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))),
        vcvtq_f32_u32(vmovl_high_u16(lo)),
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))),
        vcvtq_f32_u32(vmovl_high_u16(hi)),
    ]
}

#[target_feature(enable = "neon")]
unsafe fn row_dot_impl<const B: usize>(
    row: *const u8,
    pad: usize,
    xs: *const f32,
    scales: *const f32,
    nchunks: usize,
    cpg: usize,
) -> f32 {
    let mut y = vdupq_n_f32(0.0);
    let (mut t, mut g) = (0, 0);
    // SAFETY (whole body): see `row_dot_neon`.
    unsafe {
        while t < nchunks {
            let end = (t + cpg).min(nchunks);
            let mut a = [vdupq_n_f32(0.0); 4];
            while t < end {
                let w = widen(chunk_u8::<B>(row, pad, t));
                let x = xs.add(16 * t);
                for (i, ai) in a.iter_mut().enumerate() {
                    *ai = vfmaq_f32(*ai, w[i], vld1q_f32(x.add(4 * i)));
                }
                t += 1;
            }
            let s = vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]));
            y = vfmaq_n_f32(y, s, *scales.add(g));
            g += 1;
        }
        vaddvq_f32(y)
    }
}

/// `Σ_g scales[g] · Σ_{t in group g} codes(t) · xs(t)` over chunks `0..nchunks`, groups of `cpg` chunks.
///
/// # Safety
/// `row` points at a packed row of `pad·bits/8` bytes (`pad` a multiple of 128,
/// `nchunks ≤ pad/16`); `xs` has `16·nchunks` readable floats; `scales` has
/// `ceil(nchunks / cpg)` readable floats; `cpg ≥ 1`; `bits ∈ {1,2,3,4,8}`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn row_dot_neon(
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
            1 => row_dot_impl::<1>(row, pad, xs, scales, nchunks, cpg),
            2 => row_dot_impl::<2>(row, pad, xs, scales, nchunks, cpg),
            3 => row_dot_impl::<3>(row, pad, xs, scales, nchunks, cpg),
            4 => row_dot_impl::<4>(row, pad, xs, scales, nchunks, cpg),
            _ => row_dot_impl::<8>(row, pad, xs, scales, nchunks, cpg),
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
unsafe fn dequant_impl<const B: usize>(
    row: *const u8,
    pad: usize,
    sc: *const f32,
    of: *const f32,
    cpg: usize,
    t0: usize,
    dst: &mut [f32],
) {
    let kw = dst.len();
    for ci in 0..kw.div_ceil(16) {
        let t = t0 + ci;
        let g = t / cpg;
        // SAFETY: see `dequant_row_neon`; full chunks store inside `dst[..kw]`, the tail goes
        // through a local buffer and a bounded copy.
        unsafe {
            let (s, o) = (vdupq_n_f32(*sc.add(g)), vdupq_n_f32(*of.add(g)));
            let w = widen(chunk_u8::<B>(row, pad, t));
            let mut tmp = [0f32; 16];
            for (i, wi) in w.iter().enumerate() {
                vst1q_f32(tmp.as_mut_ptr().add(4 * i), vfmaq_f32(o, *wi, s));
            }
            let n = (kw - ci * 16).min(16);
            dst[ci * 16..ci * 16 + n].copy_from_slice(&tmp[..n]);
        }
    }
}

/// Dequantizes chunks `t0 .. t0 + ceil(dst.len()/16)` of a packed row into `dst`
/// (`dst[i] = sc[g]·code + of[g]`, `g = chunk / cpg`).
///
/// # Safety
/// `row` is a packed row of `pad·bits/8` bytes and all those chunks are `< pad/16`; `sc`/`of`
/// readable at every `chunk / cpg`; `bits ∈ {1,2,3,4,8}`; `cpg ≥ 1`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dequant_row_neon(
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
            1 => dequant_impl::<1>(row, pad, sc, of, cpg, t0, dst),
            2 => dequant_impl::<2>(row, pad, sc, of, cpg, t0, dst),
            3 => dequant_impl::<3>(row, pad, sc, of, cpg, t0, dst),
            4 => dequant_impl::<4>(row, pad, sc, of, cpg, t0, dst),
            _ => dequant_impl::<8>(row, pad, sc, of, cpg, t0, dst),
        }
    }
}

/// `Σ_t Σ_l table_b[code | salient << 2] · x` for one binary row (see `BinaryMatrix`), one
/// 8-entry table per 8 chunks, looked up with `tbl` on the table's bytes.
///
/// # Safety
/// `row` holds `nchunks` (a multiple of 8) chunks of 2-bit codes (`4·nchunks` bytes), `xs`
/// `16·nchunks` floats, `tables` `nchunks` floats, `salient` `nchunks` masks.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn row_dot_table_neon(
    row: *const u8,
    xs: *const f32,
    tables: *const f32,
    salient: *const u16,
    nchunks: usize,
) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    // Lane l of the salient mask: bit l of the chunk's u16.
    const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    // SAFETY: every read is inside the ranges the caller guarantees.
    unsafe {
        let bit = vld1q_u8(BIT.as_ptr());
        for t in 0..nchunks {
            let tb = tables.add((t / 8) * 8) as *const u8;
            let table = uint8x16x2_t(vld1q_u8(tb), vld1q_u8(tb.add(16)));
            let s = *salient.add(t);
            let sm = vcombine_u8(vdup_n_u8(s as u8), vdup_n_u8((s >> 8) as u8));
            let sal = vandq_u8(vtstq_u8(sm, bit), vdupq_n_u8(4));
            let idx = vorrq_u8(plane_u8::<2>(row, t), sal);
            // Byte offsets of each lane's f32 entry: 4·idx + 0..4, gathered with two-register `tbl`.
            let x = xs.add(16 * t);
            for q in 0..4 {
                let i4 = match q {
                    0 => vget_low_u8(idx),
                    1 => vget_low_u8(vextq_u8::<4>(idx, idx)),
                    2 => vget_high_u8(idx),
                    _ => vget_low_u8(vextq_u8::<12>(idx, idx)),
                };
                // Spread the 4 indices to 4 bytes each: [i0 i0 i0 i0 i1 ...]·4 + [0 1 2 3 ...].
                let rep = vqtbl1q_u8(
                    vcombine_u8(i4, i4),
                    vld1q_u8([0u8, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3].as_ptr()),
                );
                let off = vaddq_u8(
                    vshlq_n_u8::<2>(rep),
                    vld1q_u8([0u8, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3].as_ptr()),
                );
                let w = vreinterpretq_f32_u8(vqtbl2q_u8(table, off));
                acc[q] = vfmaq_f32(acc[q], w, vld1q_f32(x.add(4 * q)));
            }
        }
        vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ))
    }
}

/// `Σ x[k]·w[k]` over `len` signed bytes (`smull` + `sadalp` into i32).
///
/// # Safety
/// `len` a multiple of 16 and both pointers readable for `len` bytes.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_i8i8_neon(x: *const i8, w: *const i8, len: usize) -> i32 {
    let mut acc = vdupq_n_s32(0);
    // SAFETY: 16-byte loads at k with k + 16 <= len.
    unsafe {
        let mut k = 0;
        while k < len {
            let (a, b) = (vld1q_s8(x.add(k)), vld1q_s8(w.add(k)));
            acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
            acc = vpadalq_s16(acc, vmull_high_s8(a, b));
            k += 16;
        }
    }
    vaddvq_s32(acc)
}
