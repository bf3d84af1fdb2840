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

/// `Σ_c Σ_l table_b[code | salient << 2] · x` for one binary row (see `BinaryMatrix`): per
/// 16 columns the codes are shifted out of the chunk's 16 bytes, OR'ed with 4 where salient and
/// gathered from the block's f32 table (`code · scale`) with a two-register `tbl`.
///
/// # Safety
/// `row` describes one row of a `BinaryMatrix` (its `n_chunks` chunks of 16 code bytes, one
/// table and scale per block `0 ..= (n_chunks − 1) / m`); `xs` holds `64·n_chunks` floats and
/// `salient` `n_chunks` words.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn row_dot_binary_neon(
    row: &crate::binary::BinaryRow,
    xs: *const f32,
    salient: *const u64,
) -> f32 {
    let (n_chunks, m) = (row.n_chunks, row.chunks_per_block);
    let mut acc = [vdupq_n_f32(0.0); 4];
    // Lane l of a 16-column salient mask: bit l of its u16.
    const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    const REP: [u8; 16] = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3];
    const OFF: [u8; 16] = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3];
    // SAFETY: every read is inside the ranges the caller guarantees.
    unsafe {
        let (bit, rep, off) = (
            vld1q_u8(BIT.as_ptr()),
            vld1q_u8(REP.as_ptr()),
            vld1q_u8(OFF.as_ptr()),
        );
        let mut c = 0;
        let mut b = 0;
        while c < n_chunks {
            let s = f32::from_bits(u32::from(*row.scales.add(b)) << 16);
            let t = (*row.tables.add(b * row.table_stride)).to_le_bytes();
            let vals: [f32; 8] = std::array::from_fn(|i| f32::from((t[i] ^ 0x80) as i8) * s);
            let tb = vals.as_ptr() as *const u8;
            let table = uint8x16x2_t(vld1q_u8(tb), vld1q_u8(tb.add(16)));
            let end = (c + m).min(n_chunks);
            while c < end {
                let raw = vld1q_u8(row.codes.add(c * row.chunk_stride));
                let sal = *salient.add(c);
                for f in 0..4 {
                    let code = vandq_u8(vshlq_u8(raw, vdupq_n_s8(-2 * f as i8)), vdupq_n_u8(3));
                    let s16 = (sal >> (16 * f)) as u16;
                    let sm = vcombine_u8(vdup_n_u8(s16 as u8), vdup_n_u8((s16 >> 8) as u8));
                    let idx = vorrq_u8(code, vandq_u8(vtstq_u8(sm, bit), vdupq_n_u8(4)));
                    let x = xs.add(64 * c + 16 * f);
                    for q in 0..4 {
                        let i4 = match q {
                            0 => vget_low_u8(idx),
                            1 => vget_low_u8(vextq_u8::<4>(idx, idx)),
                            2 => vget_high_u8(idx),
                            _ => vget_low_u8(vextq_u8::<12>(idx, idx)),
                        };
                        // Byte offsets of each lane's f32 entry: 4·idx + 0..4.
                        let o =
                            vaddq_u8(vshlq_n_u8::<2>(vqtbl1q_u8(vcombine_u8(i4, i4), rep)), off);
                        let w = vreinterpretq_f32_u8(vqtbl2q_u8(table, o));
                        acc[q] = vfmaq_f32(acc[q], w, vld1q_f32(x.add(4 * q)));
                    }
                }
                c += 1;
            }
            b += 1;
        }
        vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ))
    }
}

/// One W8A8 tile: `MR` tokens times one 16-row panel of an [`crate::int8::Int8Matrix`], exact
/// i32 sums (`smull` + `sadalp`), then the shared epilogue `y = acc as f32 · (x_scale · w_scale)`.
///
/// Per 4-column step the panel's 64 bytes (16 rows × 4 codes, stored as `code ^ 0x80`) are four
/// vectors of 4 rows × 4 codes; each token's 4 codes are repeated across a vector, so one
/// widening multiply covers 2 rows and one pairwise add-accumulate folds it into 2 pair sums per row.
///
/// # Safety
/// `t` describes `MR` readable token rows of `4·t.kq` bytes, one readable panel of `64·t.kq`
/// bytes with 16 readable scales, `MR` scales, and an output of `MR` rows with room for
/// `t.last_rows` floats each; `1 ≤ t.last_rows ≤ 16`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn int8_tile_neon<const MR: usize>(t: &crate::int8::Tile) {
    let flip = vdupq_n_u8(0x80);
    let mut acc = [[vdupq_n_s32(0); 8]; MR];
    // SAFETY (whole body): every pointer stays inside the ranges the caller guarantees.
    unsafe {
        let mut wp = t.w;
        let mut xp = t.x;
        for _ in 0..t.kq {
            let mut w = [vdupq_n_s8(0); 4];
            for (j, v) in w.iter_mut().enumerate() {
                *v = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(wp.add(16 * j)), flip));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let x4 = (xp.add(i * t.x_stride) as *const u32).read_unaligned();
                let xb = vreinterpretq_s8_u32(vdupq_n_u32(x4));
                for (j, &wv) in w.iter().enumerate() {
                    row[2 * j] =
                        vpadalq_s16(row[2 * j], vmull_s8(vget_low_s8(wv), vget_low_s8(xb)));
                    row[2 * j + 1] = vpadalq_s16(row[2 * j + 1], vmull_high_s8(wv, xb));
                }
            }
            wp = wp.add(64);
            xp = xp.add(4);
        }
        for (i, row) in acc.iter().enumerate() {
            // Accumulator v holds [row 2v: pair 0, pair 1, row 2v+1: pair 0, pair 1].
            let mut lanes = [0i32; 32];
            for (v, &a) in row.iter().enumerate() {
                vst1q_s32(lanes.as_mut_ptr().add(4 * v), a);
            }
            let xs = *t.x_scales.add(i);
            let y = t.y.add(i * t.y_stride);
            for r in 0..t.last_rows {
                let d = lanes[2 * r].wrapping_add(lanes[2 * r + 1]);
                *y.add(r) = d as f32 * (xs * *t.w_scales.add(r));
            }
        }
    }
}
