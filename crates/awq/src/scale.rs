//! The scale search of one producer/consumer pair (llm-awq's `auto_scale` / `_search_module_scale`).

use qwen3_quant_core::{
    CandidateWeights, LayerContext, LinearId, LossRequest, MethodError, ScalePair, TransformRecord,
};
use qwen3_quant_rtn::{quantize_weight, RtnConfig};

use crate::AwqConfig;

/// AWQ's candidate scale for ratio `r`: `s_j = max(x_mean_j^r, min_scale)`, normalised by
/// `sqrt(max(s)·min(s))`.
///
/// Guard (not in the reference): channels whose mean `|x|` is zero or not finite (dead inputs)
/// get `s = 1` and are left out of the normalisation, so a dead channel can neither blow up its
/// weight column nor skew every other channel's scale. When every channel is dead, `s = 1`.
///
/// ```
/// let s = qwen3_quant_awq::candidate_scales(&[1.0, 4.0, 0.0], 0.5, 1e-4);
/// // live channels: 1 and 2, normalised by sqrt(2 · 1); the dead one stays at 1
/// assert!((s[0] - 1.0 / 2f32.sqrt()).abs() < 1e-6 && (s[1] - 2f32.sqrt()).abs() < 1e-6);
/// assert_eq!(s[2], 1.0);
/// ```
pub fn candidate_scales(x_mean: &[f32], r: f32, min_scale: f32) -> Vec<f32> {
    let live = |m: f32| m.is_finite() && m > 0.0;
    let mut s: Vec<f32> = x_mean
        .iter()
        .map(|&m| {
            if live(m) {
                m.powf(r).max(min_scale)
            } else {
                1.0
            }
        })
        .collect();
    let (lo, hi) = x_mean
        .iter()
        .zip(&s)
        .filter(|(m, _)| live(**m))
        .fold((f32::INFINITY, 0.0f32), |(lo, hi), (_, &v)| {
            (lo.min(v), hi.max(v))
        });
    let norm = (hi * lo).sqrt();
    if norm.is_finite() && norm > 0.0 {
        for (v, &m) in s.iter_mut().zip(x_mean) {
            if live(m) {
                *v /= norm;
            }
        }
    }
    s
}

/// Mean `|x|` per entry of `s`: the pair's input statistic, averaged over the consumer columns
/// that share one factor when a `column_map` applies (GQA `v → o`).
fn pair_mean(pair: &ScalePair, abs_mean: &[f32]) -> Vec<f32> {
    match &pair.column_map {
        None => abs_mean.to_vec(),
        Some(map) => {
            let mut sum = vec![0.0f64; pair.channels];
            let mut n = vec![0usize; pair.channels];
            for (c, &i) in map.iter().enumerate() {
                if let Some(v) = abs_mean.get(c) {
                    sum[i as usize] += *v as f64;
                    n[i as usize] += 1;
                }
            }
            sum.iter()
                .zip(&n)
                .map(|(s, &k)| (s / k.max(1) as f64) as f32)
                .collect()
        }
    }
}

/// `Q(W·diag(s))/s` for one consumer; NaN weights if the scaled weight is not finite (such a
/// candidate then scores a NaN loss and is never chosen).
fn scaled_fake_quant(
    w: &[f32],
    out: usize,
    inp: usize,
    s_cols: &[f32],
    cfg: &AwqConfig,
) -> Result<Vec<f32>, MethodError> {
    let mut scaled = w.to_vec();
    for row in scaled.chunks_exact_mut(inp.max(1)) {
        row.iter_mut().zip(s_cols).for_each(|(v, s)| *v *= s);
    }
    if scaled.iter().any(|v| !v.is_finite()) {
        return Ok(vec![f32::NAN; w.len()]);
    }
    let mut q = quantize_weight(&scaled, out, inp, &RtnConfig::new(cfg.scheme))?.dequantize();
    for row in q.chunks_exact_mut(inp.max(1)) {
        row.iter_mut().zip(s_cols).for_each(|(v, s)| *v /= s);
    }
    Ok(q)
}

/// A weight `[out, in]` with its shape.
type Weight = (Vec<f32>, usize, usize);

/// The candidates of one pair: its consumers' current weights and the grid's scales.
pub(crate) struct PairSearch {
    pair: ScalePair,
    /// Each consumer's `(weight, out, in)`.
    weights: Vec<(LinearId, Weight)>,
    ratios: Vec<f32>,
    scales: Vec<Vec<f32>>,
    record: TransformRecord,
}

impl PairSearch {
    /// Candidate `k`: `Q(W·diag(s_k))/s_k` for every consumer.
    fn candidate(&self, k: usize, cfg: &AwqConfig) -> Result<CandidateWeights, MethodError> {
        let s_cols = self.pair.expand(&self.scales[k]);
        self.weights
            .iter()
            .map(|(id, (w, out, inp))| {
                scaled_fake_quant(w, *out, *inp, &s_cols, cfg)
                    .map(|q| (*id, q))
                    .map_err(|e| e.with_id(*id))
            })
            .collect()
    }
}

/// Prepares the search of one pair, or returns its record right away when a guard applies
/// (no calibration tokens reached it).
pub(crate) fn prepare_pair(
    ctx: &dyn LayerContext,
    pair: &ScalePair,
    cfg: &AwqConfig,
) -> Result<Result<PairSearch, TransformRecord>, MethodError> {
    let mut rec = TransformRecord {
        layer: ctx.layer(),
        kind: "scale",
        target: pair.label(),
        linears: pair.consumers.clone(),
        ..TransformRecord::default()
    };
    let tokens: usize = pair
        .consumers
        .iter()
        .map(|&id| ctx.tokens(id))
        .max()
        .unwrap_or(0);
    let Some(stats) = ctx.pair_stats(pair).filter(|s| s.count > 0 && tokens > 0) else {
        rec.ratio = Some(0.0);
        rec.fallback = Some("no calibration statistics (no tokens, or an expert below the policy's threshold): scale 1".into());
        return Ok(Err(rec));
    };
    let x_mean = pair_mean(pair, &stats.abs_mean());
    let weights = pair
        .consumers
        .iter()
        .map(|&id| ctx.weight(id).map(|w| (id, w)))
        .collect::<Result<Vec<_>, _>>()?;
    let ratios: Vec<f32> = (0..cfg.grid).map(|i| i as f32 / cfg.grid as f32).collect();
    let scales = ratios
        .iter()
        .map(|&r| candidate_scales(&x_mean, r, cfg.min_scale))
        .collect();
    Ok(Ok(PairSearch {
        pair: pair.clone(),
        weights,
        ratios,
        scales,
        record: rec,
    }))
}

/// Searches every pair against the current (unscaled) layer in one pass over the calibration
/// data, as llm-awq's `auto_scale_block` does (each search sees the original layer and its
/// full-precision inputs), then folds the chosen scales.
pub(crate) fn search_pairs(
    ctx: &mut dyn LayerContext,
    pairs: &[ScalePair],
    cfg: &AwqConfig,
) -> Result<Vec<TransformRecord>, MethodError> {
    let t0 = std::time::Instant::now();
    let mut done = Vec::new();
    let mut searches = Vec::new();
    for pair in pairs {
        match prepare_pair(ctx, pair, cfg)? {
            Ok(s) => searches.push(s),
            Err(rec) => done.push(rec),
        }
    }
    let fns: Vec<Box<qwen3_quant_core::CandidateFn<'_>>> = searches
        .iter()
        .map(|s| {
            Box::new(move |k: usize| s.candidate(k, cfg)) as Box<qwen3_quant_core::CandidateFn<'_>>
        })
        .collect();
    let requests: Vec<LossRequest<'_>> = searches
        .iter()
        .zip(&fns)
        .map(|(s, f)| LossRequest {
            block: s.pair.block,
            n: s.ratios.len(),
            candidate: f.as_ref(),
        })
        .collect();
    let all = ctx.block_losses_many(&requests)?;
    drop(requests);
    drop(fns);
    let secs = t0.elapsed().as_secs_f64() / searches.len().max(1) as f64;
    for (s, losses) in searches.into_iter().zip(all) {
        let mut rec = s.record;
        rec.baseline_loss = losses.first().copied().unwrap_or(f64::NAN);
        rec.seconds = secs;
        // First strict minimum among finite losses (the reference's `loss < best_error`).
        let best = losses
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .fold(None::<(usize, f64)>, |b, (i, &l)| match b {
                Some((_, bl)) if l >= bl => b,
                _ => Some((i, l)),
            });
        match best {
            None => {
                rec.ratio = Some(0.0);
                rec.loss = f64::NAN;
                rec.fallback = Some("no candidate had a finite loss: scale 1".into());
            }
            Some((k, loss)) => {
                rec.ratio = Some(s.ratios[k] as f64);
                rec.loss = loss;
                if s.scales[k].iter().any(|&v| v != 1.0) {
                    ctx.fold_scale(&s.pair, &s.scales[k])?;
                }
            }
        }
        done.push(rec);
    }
    Ok(done)
}
