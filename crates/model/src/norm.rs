//! RMSNorm as Qwen3 computes it: `w · x / sqrt(mean(x²) + eps)`, in f32.

use rayon::prelude::*;

/// Normalises each row of `x` (`[rows, dim]`) into `out`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    debug_assert_eq!(x.len(), out.len());
    let work = |(xr, or): (&[f32], &mut [f32])| rms_norm_row(xr, weight, eps, or);
    if x.len() >= 64 * 1024 {
        x.par_chunks(dim)
            .zip(out.par_chunks_mut(dim))
            .for_each(work);
    } else {
        x.chunks(dim).zip(out.chunks_mut(dim)).for_each(work);
    }
}

/// Normalises each row in place.
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    let work = |row: &mut [f32]| {
        let inv = inv_rms(row, eps);
        for (v, w) in row.iter_mut().zip(weight) {
            *v = w * (*v * inv);
        }
    };
    if x.len() >= 64 * 1024 {
        x.par_chunks_mut(dim).for_each(work);
    } else {
        x.chunks_mut(dim).for_each(work);
    }
}

/// `1 / sqrt(mean(x²) + eps)` of each row of `x` (`[rows, dim]`): what a fused product
/// ([`qwen3_quant_kernels::dense::RowNorm`]) needs to normalise its input while packing it.
pub fn inv_rms_rows(x: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    if x.len() >= 64 * 1024 {
        x.par_chunks(dim).map(|r| inv_rms(r, eps)).collect()
    } else {
        x.chunks(dim).map(|r| inv_rms(r, eps)).collect()
    }
}

#[inline]
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    // Sum in f32 lanes like torch's vectorised mean; eight partial sums keep it fast and accurate.
    let mut acc = [0.0f32; 8];
    let chunks = row.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i] * c[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for v in rem {
        s += v * v;
    }
    1.0 / (s / row.len() as f32 + eps).sqrt()
}

#[inline]
fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let inv = inv_rms(x, eps);
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv);
    }
}
