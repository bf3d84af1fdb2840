//! The clip search of one linear (llm-awq's `auto_clip_layer`).

use qwen3_quant_core::{GroupSize, LayerContext, LinearId, MethodError, TransformRecord};
use qwen3_quant_kernels::dense;
use qwen3_quant_rtn::{quantize_weight, RtnConfig};
use rayon::prelude::*;

use crate::AwqConfig;

/// Result of [`clip_search`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClipResult {
    /// `[out, n_groups]` chosen clipping bound per output channel and group.
    pub max_val: Vec<f32>,
    /// `[out, n_groups]` `max|w|` per output channel and group (the unclipped bound).
    pub org_max: Vec<f32>,
    /// `[out, n_groups]` error of the chosen bound.
    pub error: Vec<f64>,
    /// `[out, n_groups]` error without clipping (shrink step 0).
    pub baseline: Vec<f64>,
    /// The clipped weight `clamp(W, −max_val, max_val)`, `[out, in]`.
    pub clipped: Vec<f32>,
}

/// Searches per output channel and group the bound `m = max|w|·(1 − i/clip_grid)`,
/// `i < max_shrink·clip_grid`, that minimises the mean over the sampled tokens of the squared
/// error of the group's partial dot product `x_g·(Q(clamp(w_g, −m, m)) − w_g)`, where `Q` is
/// the scheme's fake quantization. `x` is `[rows, in]`. Strictly smaller errors win (the first
/// step, no clipping, is kept on ties).
///
/// ```
/// use qwen3_quant_awq::{clip_search, AwqConfig};
/// let (out, inp, rows) = (2, 256, 8);
/// let w: Vec<f32> = (0..out * inp).map(|i| ((i * 7919 % 211) as f32 - 105.0) / 100.0).collect();
/// let x: Vec<f32> = (0..rows * inp).map(|i| ((i * 104729 % 97) as f32 - 48.0) / 50.0).collect();
/// let r = clip_search(&w, out, inp, &x, rows, &AwqConfig::default())?;
/// assert_eq!(r.max_val.len(), out * 2);
/// assert!(r.error.iter().zip(&r.baseline).all(|(e, b)| e <= b));
/// # Ok::<(), qwen3_quant_core::MethodError>(())
/// ```
///
/// # Errors
/// Shape errors and the quantizer's errors.
pub fn clip_search(
    w: &[f32],
    out: usize,
    inp: usize,
    x: &[f32],
    rows: usize,
    cfg: &AwqConfig,
) -> Result<ClipResult, MethodError> {
    qwen3_quant_core::method::check_weight(w, out, inp)?;
    if x.len() != rows * inp {
        return Err(MethodError::InvalidShape {
            id: None,
            what: "clip sample",
            expected: rows * inp,
            actual: x.len(),
        });
    }
    let gs = match cfg.scheme.group() {
        GroupSize::Group(g) => g.get().min(inp),
        _ => inp,
    };
    let ng = inp.div_ceil(gs);
    let org_max: Vec<f32> = (0..out * ng)
        .map(|rg| {
            let (r, g) = (rg / ng, rg % ng);
            let c1 = ((g + 1) * gs).min(inp);
            w[r * inp + g * gs..r * inp + c1]
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()))
        })
        .collect();
    // Each group's sampled inputs, contiguous.
    let xg: Vec<Vec<f32>> = (0..ng)
        .map(|g| {
            let (c0, c1) = (g * gs, ((g + 1) * gs).min(inp));
            (0..rows)
                .flat_map(|t| x[t * inp + c0..t * inp + c1].iter().copied())
                .collect()
        })
        .collect();
    let steps = ((cfg.max_shrink as f64) * cfg.clip_grid as f64) as usize;
    let steps = steps.max(1);
    let mut best_err = vec![f64::INFINITY; out * ng];
    let mut best_max = org_max.clone();
    let mut baseline = vec![0.0f64; out * ng];
    let rtn = RtnConfig::new(cfg.scheme);
    for i in 0..steps {
        let shrink = 1.0 - i as f32 / cfg.clip_grid as f32;
        let clipped = clamp_groups(w, inp, gs, |rg| org_max[rg] * shrink);
        let q = quantize_weight(&clipped, out, inp, &rtn)?.dequantize();
        let errs = group_errors(w, &q, out, inp, gs, &xg, rows);
        for (k, &e) in errs.iter().enumerate() {
            if i == 0 {
                baseline[k] = e;
            }
            if e < best_err[k] {
                best_err[k] = e;
                best_max[k] = org_max[k] * shrink;
            }
        }
    }
    let clipped = clamp_groups(w, inp, gs, |rg| best_max[rg]);
    Ok(ClipResult {
        max_val: best_max,
        org_max,
        error: best_err,
        baseline,
        clipped,
    })
}

/// `w` (`[out, inp]`) with every (row, group of `gs` columns) clamped to `±limit(row · ng + group)`.
fn clamp_groups(w: &[f32], inp: usize, gs: usize, limit: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    let ng = inp.div_ceil(gs.max(1));
    let mut clipped = w.to_vec();
    clipped
        .par_chunks_mut(inp.max(1))
        .enumerate()
        .for_each(|(r, row)| {
            for (c, v) in row.iter_mut().enumerate() {
                let m = limit(r * ng + c / gs);
                *v = v.clamp(-m, m);
            }
        });
    clipped
}

/// `[out, ng]`: mean over tokens of `(x_g · (q_g − w_g))²` per output channel and group.
fn group_errors(
    w: &[f32],
    q: &[f32],
    out: usize,
    inp: usize,
    gs: usize,
    xg: &[Vec<f32>],
    rows: usize,
) -> Vec<f64> {
    let ng = xg.len();
    // Groups are independent: one task each. Within a group the squares are accumulated token
    // by token into one f64 per channel, a contiguous pass over `p` (the per-channel sums keep
    // the token order, so the values are those of a sum over each channel's column).
    let per_group: Vec<Vec<f64>> = xg
        .par_iter()
        .enumerate()
        .map(|(g, xs)| {
            let (c0, c1) = (g * gs, ((g + 1) * gs).min(inp));
            let k = c1 - c0;
            let mut d = Vec::with_capacity(out * k);
            for r in 0..out {
                let (qr, wr) = (
                    &q[r * inp + c0..r * inp + c1],
                    &w[r * inp + c0..r * inp + c1],
                );
                d.extend(qr.iter().zip(wr).map(|(a, b)| a - b));
            }
            let mut p = vec![0.0f32; rows * out];
            dense::matmul_wt(xs, rows, k, &d, out, &mut p);
            let mut acc = vec![0.0f64; out];
            for pt in p.chunks_exact(out.max(1)) {
                for (a, &v) in acc.iter_mut().zip(pt) {
                    *a += (v as f64) * (v as f64);
                }
            }
            acc
        })
        .collect();
    let mut errs = vec![0.0f64; out * ng];
    for (g, acc) in per_group.iter().enumerate() {
        for (r, s) in acc.iter().enumerate() {
            errs[r * ng + g] = s / rows.max(1) as f64;
        }
    }
    errs
}

/// Searches, applies and reports the clipping of one linear.
pub(crate) fn clip_linear(
    ctx: &mut dyn LayerContext,
    id: LinearId,
    cfg: &AwqConfig,
) -> Result<TransformRecord, MethodError> {
    let t0 = std::time::Instant::now();
    let mut rec = TransformRecord {
        layer: ctx.layer(),
        kind: "clip",
        target: qwen3_quant_core::transform::short_name(&id),
        linears: vec![id],
        ..TransformRecord::default()
    };
    let (w, out, inp) = ctx.weight(id)?;
    let sample = ctx
        .input_sample(id)
        .filter(|(_, rows)| *rows > 0)
        .map(|(x, rows)| (x.to_vec(), rows));
    let Some((x, rows)) = sample else {
        rec.clip = Some(1.0);
        rec.fallback = Some("no calibration statistics (no tokens, or an expert below the policy's threshold): not clipped".into());
        return Ok(rec);
    };
    let r = clip_search(&w, out, inp, &x, rows, cfg).map_err(|e| e.with_id(id))?;
    let n = r.max_val.len().max(1) as f64;
    let (mut ratio, mut k) = (0.0f64, 0usize);
    for (m, o) in r.max_val.iter().zip(&r.org_max) {
        if *o > 0.0 {
            ratio += (*m / *o) as f64;
            k += 1;
        }
    }
    rec.clip = Some(if k == 0 { 1.0 } else { ratio / k as f64 });
    rec.loss = r.error.iter().sum::<f64>() / n;
    rec.baseline_loss = r.baseline.iter().sum::<f64>() / n;
    ctx.set_weight(id, r.clipped)?;
    rec.seconds = t0.elapsed().as_secs_f64();
    Ok(rec)
}
