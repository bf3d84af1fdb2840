//! The structural search of one block (reference methods §5.3, `utils/structure.py`,
//! `utils/autosearch.py`, `utils/mask.py`): how many top-ranked columns are salient, and the
//! magnitude that splits the other weights into the sparse and the concentrated group.
//!
//! Rows are independent given the candidates, so each row's errors are computed in parallel
//! into a `[rows, candidates]` buffer and summed in row order (deterministic, whatever the thread
//! count).

use rayon::prelude::*;

use crate::config::{BillmConfig, SalientMetric};
use crate::quantile::quantile_linear;
use crate::residual::residual_error;

/// One block of the weight as the search sees it.
pub(crate) struct BlockView<'a> {
    /// The whole weight, row-major with stride `n`.
    pub w: &'a [f32],
    /// Row stride (`in_features`).
    pub n: usize,
    /// First column of the block.
    pub start: usize,
    /// Columns in the block.
    pub width: usize,
    /// Diagonal of `U` over the block's columns.
    pub d: &'a [f32],
}

impl BlockView<'_> {
    fn rows(&self) -> usize {
        self.w.len() / self.n
    }
    fn row(&self, r: usize) -> &[f32] {
        &self.w[r * self.n + self.start..r * self.n + self.start + self.width]
    }
}

/// What the search chose for a block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BlockMasks {
    /// `[width]`: the salient columns.
    pub salient: Vec<bool>,
    /// A non-salient weight whose [`split_magnitude`] is at least this is *concentrated*
    /// (mask 2), otherwise *sparse* (mask 1).
    pub split: f64,
}

/// The saliency of a weight: `w² / d²` (Hessian metric) or `w` (magnitude metric).
#[inline]
pub(crate) fn saliency(w: f32, d: f32, metric: SalientMetric) -> f32 {
    match metric {
        SalientMetric::Hessian => w * w / (d * d),
        SalientMetric::Magnitude => w,
    }
}

/// The value the searches binarize: the saliency (reference) or the weight (`search_on_weights`).
#[inline]
pub(crate) fn search_value(w: f32, d: f32, cfg: &BillmConfig) -> f32 {
    if cfg.search_on_weights {
        w
    } else {
        saliency(w, d, cfg.salient_metric)
    }
}

/// The magnitude that splits non-salient weights: `|search_value|`.
#[inline]
pub(crate) fn split_magnitude(w: f32, d: f32, cfg: &BillmConfig) -> f32 {
    search_value(w, d, cfg).abs()
}

/// Columns of the block by descending `Σ_rows |saliency|` (ties: lower column first).
pub(crate) fn column_ranking(b: &BlockView<'_>, metric: SalientMetric) -> Vec<usize> {
    let mut score = vec![0f64; b.width];
    for r in 0..b.rows() {
        for ((s, &w), &d) in score.iter_mut().zip(b.row(r)).zip(b.d) {
            *s += f64::from(saliency(w, d, metric).abs());
        }
    }
    let mut order: Vec<usize> = (0..b.width).collect();
    order.sort_by(|&i, &j| score[j].total_cmp(&score[i]));
    order
}

/// First index of the smallest value (strict `<`, as the reference's running minimum).
fn argmin(v: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &e) in v.iter().enumerate() {
        if best.is_none_or(|(_, b)| e < b) {
            best = Some((i, e));
        }
    }
    best.map(|(i, _)| i)
}

/// Per-row errors `[rows, k]` filled in parallel, summed in row order.
fn summed_errors(rows: usize, k: usize, per_row: impl Fn(usize, &mut [f64]) + Sync) -> Vec<f64> {
    let mut buf = vec![0f64; rows * k];
    buf.par_chunks_mut(k.max(1))
        .enumerate()
        .for_each(|(r, e)| per_row(r, e));
    let mut total = vec![0f64; k];
    for e in buf.chunks_exact(k.max(1)) {
        for (t, v) in total.iter_mut().zip(e) {
            *t += v;
        }
    }
    total
}

/// The salient column count: for `k = 1 .. min(limit, width) − 1`, the top-`k` columns are
/// binarized with order 2 and the rest of the row also with order 2; the `k` with the smallest
/// total error wins (0 for a block too narrow to search).
pub(crate) fn salient_count(b: &BlockView<'_>, ranking: &[usize], cfg: &BillmConfig) -> usize {
    let kmax = cfg.salient_column_limit.min(b.width);
    if kmax <= 1 {
        return 0;
    }
    let totals = summed_errors(b.rows(), kmax - 1, |r, e| {
        let row = b.row(r);
        let ordered: Vec<f32> = ranking
            .iter()
            .map(|&c| search_value(row[c], b.d[c], cfg))
            .collect();
        let mut scratch = Vec::with_capacity(b.width);
        for (i, ek) in e.iter_mut().enumerate() {
            let k = i + 1;
            *ek = residual_error(&ordered[..k], 2, &mut scratch)
                + residual_error(&ordered[k..], 2, &mut scratch);
        }
    });
    argmin(&totals).map_or(0, |i| i + 1)
}

/// The split candidates: quantiles of the split magnitudes of the block, with the salient
/// entries counted as zeros (reference) or left out (`quantiles_over_non_salient`).
pub(crate) fn split_candidates(b: &BlockView<'_>, salient: &[bool], cfg: &BillmConfig) -> Vec<f64> {
    let mut mags: Vec<f32> = Vec::with_capacity(b.rows() * b.width);
    for r in 0..b.rows() {
        for ((&w, &d), &s) in b.row(r).iter().zip(b.d).zip(salient) {
            if !s {
                mags.push(split_magnitude(w, d, cfg));
            } else if !cfg.quantiles_over_non_salient {
                mags.push(0.0);
            }
        }
    }
    mags.par_sort_unstable_by(f32::total_cmp);
    cfg.split_quantiles()
        .into_iter()
        .filter_map(|q| quantile_linear(&mags, q))
        .collect()
}

/// The split among `candidates` with the smallest order-1 error of the two non-salient groups
/// (the salient error is the same for every candidate and is left out).
pub(crate) fn best_split(
    b: &BlockView<'_>,
    salient: &[bool],
    candidates: &[f64],
    cfg: &BillmConfig,
) -> f64 {
    if candidates.is_empty() {
        return f64::INFINITY;
    }
    let totals = summed_errors(b.rows(), candidates.len(), |r, e| {
        let row = b.row(r);
        // Non-salient (magnitude, value) pairs by ascending magnitude: each candidate splits
        // them into a prefix (sparse) and a suffix (concentrated).
        let mut pairs: Vec<(f32, f32)> = row
            .iter()
            .zip(b.d)
            .zip(salient)
            .filter(|(_, &s)| !s)
            .map(|((&w, &d), _)| (split_magnitude(w, d, cfg), search_value(w, d, cfg)))
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mags: Vec<f32> = pairs.iter().map(|p| p.0).collect();
        let vals: Vec<f32> = pairs.iter().map(|p| p.1).collect();
        let mut scratch = Vec::with_capacity(vals.len());
        let mut last: Option<(usize, f64)> = None;
        for (ek, &p) in e.iter_mut().zip(candidates) {
            let i = mags.partition_point(|&m| f64::from(m) < p);
            *ek = match last {
                Some((li, le)) if li == i => le,
                _ => {
                    residual_error(&vals[..i], 1, &mut scratch)
                        + residual_error(&vals[i..], 1, &mut scratch)
                }
            };
            last = Some((i, *ek));
        }
    });
    argmin(&totals).map_or(f64::INFINITY, |i| candidates[i])
}

/// The full search of one block.
pub(crate) fn search_block(b: &BlockView<'_>, cfg: &BillmConfig) -> BlockMasks {
    let ranking = column_ranking(b, cfg.salient_metric);
    let k = salient_count(b, &ranking, cfg);
    let mut salient = vec![false; b.width];
    ranking[..k].iter().for_each(|&c| salient[c] = true);
    let candidates = split_candidates(b, &salient, cfg);
    let split = best_split(b, &salient, &candidates, cfg);
    BlockMasks { salient, split }
}
