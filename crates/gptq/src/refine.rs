//! Coordinate-descent refinement of GPTQ's codes, in the style of QuantEase (arXiv 2309.01885).
//!
//! GPTQ decides each column once, knowing only the columns before it. With the grid (scales and
//! zeros) fixed, a refinement pass revisits every code and moves it to the grid point that
//! minimises the layer's loss `(q − w)ᵀ H (q − w)` of its row with every other code held. As a
//! function of one entry the loss is a parabola, so that point is the grid point nearest the
//! parabola's minimum `w_j − c / H_jj`, where `c = [H (q − w)]_j − H_jj (q_j − w_j)` is the pull
//! of the other columns. No step increases the loss; a pass costs `O(n)` per row plus `O(n)` per
//! code that moves, after one `E·H` product to start.
//!
//! With scale refitting on, rounds alternate: the codes, then every row's scales (a small least
//! squares: with codes and zeros fixed the loss is quadratic in the row's scales), then the
//! codes on the new grid again. Each step minimises the same loss over its own variables.

use faer::linalg::solvers::Solve;
use faer::{Mat, Side};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use qwen3_quant_core::{dequantize_code, quantize_code, QuantParams};

/// The grid of a quantized weight: `params[r · n_groups + g_idx[j]]` is entry `(r, j)`'s.
pub(crate) struct Grid<'a> {
    pub params: &'a mut [QuantParams],
    pub n_groups: usize,
    pub g_idx: &'a [u32],
    pub maxq: u8,
}

/// What to refine.
#[derive(Clone, Copy)]
pub(crate) struct Refinement {
    /// Coordinate-descent passes over the codes per round.
    pub passes: usize,
    /// Rounds of scale refitting, each followed by code passes (0 = codes only).
    pub scale_rounds: usize,
}

/// The damped Hessian `scale · H + damp · I` of the loss, read from the unscaled `hessian`.
pub(crate) struct DampedHessian<'a> {
    pub hessian: &'a [f32],
    pub scale: f32,
    pub damp: f32,
}

/// Refines GPTQ's result in place: `codes` (`[out, n]`, original column order) and the grid's
/// scales towards `w`, whose `dead` columns (no input energy) GPTQ quantized as zeros; then
/// `fake_quant` is recomputed from them.
pub(crate) fn refine_quantized(
    w: &[f32],
    dead: &[bool],
    h: &DampedHessian<'_>,
    mut grid: Grid<'_>,
    how: Refinement,
    codes: &mut [u8],
    fake_quant: &mut [f32],
) {
    let n = dead.len();
    let zeroed: Vec<f32>;
    let target = if dead.iter().any(|&d| d) {
        zeroed = w
            .chunks(n)
            .flat_map(|row| row.iter().zip(dead).map(|(&x, &d)| if d { 0.0 } else { x }))
            .collect();
        &zeroed[..]
    } else {
        w
    };
    let moved = refine_codes(target, n, h, &mut grid, codes, how);
    if moved == 0 && how.scale_rounds == 0 {
        return;
    }
    let (params, g, g_idx) = (&*grid.params, grid.n_groups, grid.g_idx);
    fake_quant
        .par_chunks_mut(n)
        .zip(codes.par_chunks(n))
        .enumerate()
        .for_each(|(r, (fr, cr))| {
            for (j, (f, &c)) in fr.iter_mut().zip(cr).enumerate() {
                *f = dequantize_code(c, params[r * g + g_idx[j] as usize]);
            }
        });
}

/// Refines `codes` (`[out, n]`, original column order) towards the target `w` (dead columns
/// already zeroed): up to `passes` coordinate-descent passes (stopping once a pass moves
/// nothing), then for each scale round a refit of the scales and the passes again. Returns the
/// number of codes moved.
fn refine_codes(
    w: &[f32],
    n: usize,
    h: &DampedHessian<'_>,
    grid: &mut Grid<'_>,
    codes: &mut [u8],
    how: Refinement,
) -> usize {
    if how.passes == 0 || n == 0 {
        return 0;
    }
    const CHUNK: usize = 32;
    let (g, g_idx, maxq) = (grid.n_groups, grid.g_idx, grid.maxq);
    codes
        .par_chunks_mut(CHUNK * n)
        .zip(w.par_chunks(CHUNK * n))
        .zip(grid.params.par_chunks_mut(CHUNK * g))
        .map(|((codes, w), params)| {
            let mut grid = Grid {
                params,
                n_groups: g,
                g_idx,
                maxq,
            };
            let mut moved = refine_rows(w, n, h, &grid, codes, how.passes);
            for _ in 0..how.scale_rounds {
                refit_scales(w, n, h, &mut grid, codes);
                moved += refine_rows(w, n, h, &grid, codes, how.passes);
            }
            moved
        })
        .sum()
}

/// [`refine_codes`] on the rows `row0..` of one chunk.
fn refine_rows(
    w: &[f32],
    n: usize,
    h: &DampedHessian<'_>,
    grid: &Grid<'_>,
    codes: &mut [u8],
    passes: usize,
) -> usize {
    let rows = codes.len() / n;
    let param = |r: usize, j: usize| grid.params[r * grid.n_groups + grid.g_idx[j] as usize];
    // E = Q − W, then P = E·(scale·H) + damp·E: each row's gradient (halved) of the loss.
    let mut e: Vec<f32> = (0..rows * n)
        .map(|k| dequantize_code(codes[k], param(k / n, k % n)) - w[k])
        .collect();
    let mut p = vec![0f32; rows * n];
    // SAFETY: `e` is `[rows, n]`, `h.hessian` `[n, n]` and `p` `[rows, n]`, all row-major with
    // the strides given; the three buffers do not overlap.
    unsafe {
        gemm(
            rows,
            n,
            n,
            p.as_mut_ptr(),
            1,
            n as isize,
            false,
            e.as_ptr(),
            1,
            n as isize,
            h.hessian.as_ptr(),
            1,
            n as isize,
            0.0,
            h.scale,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
    p.iter_mut().zip(&e).for_each(|(p, e)| *p += h.damp * e);
    let diag: Vec<f32> = (0..n)
        .map(|j| h.scale * h.hessian[j * n + j] + h.damp)
        .collect();
    let mut moved = 0;
    for r in 0..rows {
        let (er, pr) = (&mut e[r * n..(r + 1) * n], &mut p[r * n..(r + 1) * n]);
        let (cr, wr) = (&mut codes[r * n..(r + 1) * n], &w[r * n..(r + 1) * n]);
        for _ in 0..passes {
            let mut moved_now = 0;
            for j in 0..n {
                let hjj = diag[j];
                // A dead column without damping has no curvature: leave its code.
                if hjj.is_nan() || hjj <= 0.0 {
                    continue;
                }
                let pp = param(r, j);
                let pull = pr[j] - hjj * er[j];
                let q = quantize_code(wr[j] - pull / hjj, pp, grid.maxq);
                if q == cr[j] {
                    continue;
                }
                let new_e = dequantize_code(q, pp) - wr[j];
                let delta = new_e - er[j];
                // Held codes only move when the loss strictly drops (rounding can tie).
                let change = delta * (2.0 * pull + hjj * (new_e + er[j]));
                if change.is_nan() || change >= 0.0 {
                    continue;
                }
                cr[j] = q;
                er[j] = new_e;
                let hrow = &h.hessian[j * n..(j + 1) * n];
                let s = delta * h.scale;
                pr.iter_mut().zip(hrow).for_each(|(p, &hk)| *p += s * hk);
                pr[j] += delta * h.damp;
                moved_now += 1;
            }
            moved += moved_now;
            if moved_now == 0 {
                break;
            }
        }
    }
    moved
}

/// Refits each row's scales to its codes: with codes and zeros fixed, the row's loss is a
/// quadratic in its `G` scales, `sᵀ M s − 2 sᵀ b` with `M_gk = Σ_{i∈g, j∈k} q̃_i H_ij q̃_j` and
/// `b_g = Σ_{i∈g} q̃_i (H w)_i` (`q̃ = code − zero`, `H` damped), minimised by `M s = b`. A row
/// whose system is singular, or whose solution is not positive, keeps its scales.
fn refit_scales(w: &[f32], n: usize, h: &DampedHessian<'_>, grid: &mut Grid<'_>, codes: &[u8]) {
    let g = grid.n_groups;
    let (scale, damp) = (h.scale as f64, h.damp as f64);
    let mut t = vec![0f32; g];
    // Column ranges of the groups when each group is one contiguous run (static groups or no
    // act-order): the inner products then vectorise.
    let ranges = contiguous_groups(grid.g_idx, g);
    for ((cr, wr), pr) in codes
        .chunks(n)
        .zip(w.chunks(n))
        .zip(grid.params.chunks_mut(g))
    {
        let qt: Vec<f32> = (0..n)
            .map(|j| cr[j] as f32 - pr[grid.g_idx[j] as usize].zero)
            .collect();
        let mut m = vec![0f64; g * g];
        let mut b = vec![0f64; g];
        for i in 0..n {
            let hi = &h.hessian[i * n..(i + 1) * n];
            let hw = match &ranges {
                Some(ranges) => {
                    for (tk, &(a, b)) in t.iter_mut().zip(ranges) {
                        *tk = dot(&hi[a..b], &qt[a..b]);
                    }
                    dot(hi, wr)
                }
                None => {
                    t.iter_mut().for_each(|v| *v = 0.0);
                    let mut hw = 0f32;
                    for ((&hij, &q), (&gj, &wj)) in
                        hi.iter().zip(&qt).zip(grid.g_idx.iter().zip(wr))
                    {
                        t[gj as usize] += hij * q;
                        hw += hij * wj;
                    }
                    hw
                }
            };
            let gi = grid.g_idx[i] as usize;
            let qi = qt[i] as f64;
            for (mk, &tk) in m[gi * g..(gi + 1) * g].iter_mut().zip(&t) {
                *mk += qi * scale * tk as f64;
            }
            m[gi * g + gi] += damp * qi * qi;
            b[gi] += qi * (scale * hw as f64 + damp * wr[i] as f64);
        }
        let mm = Mat::<f64>::from_fn(g, g, |a, c| m[a * g + c]);
        let Ok(llt) = mm.llt(Side::Lower) else {
            continue;
        };
        let s = llt.solve(Mat::<f64>::from_fn(g, 1, |a, _| b[a]));
        if (0..g).all(|a| s[(a, 0)].is_finite() && s[(a, 0)] > 0.0) {
            for (a, p) in pr.iter_mut().enumerate() {
                p.scale = s[(a, 0)] as f32;
            }
        }
    }
}

/// `[start, end)` of each group's columns when every group is one contiguous run in order.
fn contiguous_groups(g_idx: &[u32], n_groups: usize) -> Option<Vec<(usize, usize)>> {
    let mut ranges = vec![(0, 0); n_groups];
    let mut start = 0;
    for (j, pair) in g_idx.windows(2).enumerate() {
        if pair[1] != pair[0] {
            if pair[1] != pair[0] + 1 {
                return None;
            }
            ranges[pair[0] as usize] = (start, j + 1);
            start = j + 1;
        }
    }
    let last = *g_idx.last()? as usize;
    if g_idx.first() != Some(&0) || last + 1 != n_groups {
        return None;
    }
    ranges[last] = (start, g_idx.len());
    Some(ranges)
}

/// `Σ a_i b_i` with 16 independent partial sums (vectorised by the compiler).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for k in 0..16 {
            acc[k] += xa[k] * xb[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}
