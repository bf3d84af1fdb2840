//! The driver's side of layer-level transforms: one full-precision pass over a layer collects
//! per-channel statistics and input subsamples at every linear input, then
//! [`TransformContext`] answers a [`LayerTransform`]'s questions (weights, statistics, block
//! losses of candidate weights) and applies its decisions (scale folds, replaced weights).

use std::collections::HashMap;

use qwen3_quant_core::{
    CandidateWeights, ChannelStats, Hessian, LayerContext, LinearId, LinearKind, LossRequest,
    MethodError, ScalePair, ScaleProducer, ScoredBlock, TransformNeeds,
};
use qwen3_quant_model::{DecoderLayer, LinearOverrides, LinearWeight, Observer, Rope, Site};
use rayon::prelude::*;

use crate::activations::{ActivationDtype, ActivationStore};
use crate::driver::ExpertPolicy;
use crate::error::{CalibError, Result};

/// Bytes of candidate weights generated at once by [`TransformContext::block_losses`]; more
/// candidates than fit are evaluated in several sweeps over the calibration set.
const CANDIDATE_BUDGET_BYTES: usize = 1 << 30;

/// Bytes of the widest per-chunk buffer of a candidate forward. Under glibc's largest mmap
/// threshold (32 MiB), so the many same-sized buffers a sweep allocates and frees come back
/// from the heap instead of fresh, page-faulted and zeroed mappings (5% of a sweep at 8192
/// rows of qwen3-micro).
const SCORING_BUFFER_BYTES: usize = 12 << 20;

/// Sequences per chunk of a scoring sweep: at most `requested`, and few enough that the
/// widest activation (q|k|v or the MLP's intermediate) stays within [`SCORING_BUFFER_BYTES`].
fn scoring_chunk_sequences(layer: &DecoderLayer, seq: usize, requested: usize) -> usize {
    use qwen3_quant_core::LinearKind::*;
    let width = |k| layer.linear(k, None).map_or(0, |w| w.out_features());
    let widest = (width(Q) + width(K) + width(V)).max(width(Gate)).max(1);
    let rows = SCORING_BUFFER_BYTES / (4 * widest);
    (rows / seq.max(1)).clamp(1, requested.max(1))
}

/// The input site of a linear.
pub(crate) fn site_of(id: &LinearId) -> Site {
    match (id.kind, id.expert) {
        (LinearKind::Q | LinearKind::K | LinearKind::V, _) => Site::AttnInput,
        (LinearKind::O, _) => Site::OInput,
        (LinearKind::Gate | LinearKind::Up, None) => Site::MlpInput,
        (LinearKind::Down, None) => Site::DownInput,
        (LinearKind::Gate | LinearKind::Up, Some(e)) => Site::ExpertInput(e),
        (LinearKind::Down, Some(e)) => Site::ExpertDownInput(e),
    }
}

/// The site holding a producer's output.
fn producer_site(p: ScaleProducer) -> Option<Site> {
    match p {
        ScaleProducer::InputNorm => Some(Site::AttnInput),
        ScaleProducer::PostAttentionNorm => Some(Site::MlpInput),
        ScaleProducer::Rows(id) if id.kind == LinearKind::V => Some(Site::OInput),
        ScaleProducer::Rows(id) if id.kind == LinearKind::Up => Some(match id.expert {
            None => Site::DownInput,
            Some(e) => Site::ExpertDownInput(e),
        }),
        _ => None,
    }
}

/// Every `stride`-th row of a site's inputs. Sites whose row count is known up front (dense
/// sites: all calibration tokens) use AWQ's stride `max(1, T / max_rows)`; expert sites, whose
/// token count is only known after routing, start at stride 1 and double the stride (dropping
/// every other kept row) whenever more than `2 · max_rows` rows are kept.
#[derive(Debug, Clone)]
struct Sampler {
    stride: usize,
    adaptive: bool,
    max_rows: usize,
    seen: usize,
    cols: usize,
    rows: Vec<f32>,
}

impl Sampler {
    fn new(total: Option<usize>, max_rows: usize) -> Self {
        Sampler {
            stride: total.map_or(1, |t| (t / max_rows.max(1)).max(1)),
            adaptive: total.is_none(),
            max_rows: max_rows.max(1),
            seen: 0,
            cols: 0,
            rows: Vec::new(),
        }
    }

    fn add(&mut self, x: &[f32], rows: usize, cols: usize) {
        self.cols = cols;
        for r in 0..rows {
            if self.seen % self.stride == 0 {
                self.rows.extend_from_slice(&x[r * cols..(r + 1) * cols]);
                if self.adaptive && self.rows.len() / cols.max(1) > 2 * self.max_rows {
                    let kept: Vec<f32> = self
                        .rows
                        .chunks_exact(cols.max(1))
                        .step_by(2)
                        .flatten()
                        .copied()
                        .collect();
                    self.rows = kept;
                    self.stride *= 2;
                }
            }
            self.seen += 1;
        }
    }

    fn n_rows(&self) -> usize {
        self.rows.len() / self.cols.max(1)
    }
}

/// Collects what a transform needs during the layer's full-precision pass.
struct Capture {
    layer: usize,
    needs: TransformNeeds,
    all_experts: bool,
    dense_rows: usize,
    stats: HashMap<Site, ChannelStats>,
    samples: HashMap<Site, Sampler>,
    tokens: HashMap<Site, usize>,
    /// First row of the chunk being run (where block outputs go in `kept`).
    row0: usize,
    kept: Option<KeptOutputs>,
    error: Option<CalibError>,
}

/// What the capture pass keeps so that scoring needs no second forward of the layer: the
/// attention and feed-forward blocks' full-precision outputs for every calibration token, and
/// the Gram matrices of the down_proj inputs (dense and per expert), with their row counts.
struct KeptOutputs {
    attn_out: ActivationStore,
    ffn_out: ActivationStore,
    grams: HashMap<Site, (Hessian, usize)>,
}

impl KeptOutputs {
    /// Whether a sweep over `block` can run on traces rebuilt from the kept outputs: whole
    /// blocks always; a single linear when its input's Gram matrix was kept or its input is a
    /// norm of the layer input (q/k/v, gate/up) or an expert's (recomputed from the routing).
    fn serves(&self, block: ScoredBlock) -> bool {
        match block {
            ScoredBlock::Attention | ScoredBlock::FeedForward => true,
            ScoredBlock::Linear(id) => {
                self.grams.contains_key(&site_of(&id))
                    || id.expert.is_some()
                    || !matches!(id.kind, LinearKind::O | LinearKind::Down)
            }
            _ => false,
        }
    }
}

impl Observer for Capture {
    fn wants(&self, layer: usize, site: Site) -> bool {
        layer == self.layer && self.error.is_none() && (self.all_experts || !site.is_all_experts())
    }

    fn wants_block_outputs(&self, layer: usize) -> bool {
        layer == self.layer && self.error.is_none() && self.kept.is_some()
    }

    fn observe_block_output(
        &mut self,
        _layer: usize,
        block: ScoredBlock,
        y: &[f32],
        _rows: usize,
        _cols: usize,
    ) {
        if let Some(k) = self.kept.as_mut() {
            match block {
                ScoredBlock::Attention => k.attn_out.set_rows(self.row0, y),
                ScoredBlock::FeedForward => k.ffn_out.set_rows(self.row0, y),
                _ => {}
            }
        }
    }

    fn observe(&mut self, _layer: usize, site: Site, x: &[f32], rows: usize, cols: usize) {
        *self.tokens.entry(site).or_default() += rows;
        if let Some(k) = self.kept.as_mut() {
            if matches!(site, Site::DownInput | Site::ExpertDownInput(_)) && rows > 0 {
                let (g, n) = k
                    .grams
                    .entry(site)
                    .or_insert_with(|| (Hessian::new(cols), 0));
                *n += rows;
                if let Err(source) = g.accumulate(x, rows) {
                    self.error = Some(CalibError::Stats {
                        site: format!("layer {} {site:?}", self.layer),
                        source,
                    });
                }
            }
        }
        if self.needs.channel_stats {
            let st = self
                .stats
                .entry(site)
                .or_insert_with(|| ChannelStats::new(cols));
            if let Err(source) = st.accumulate(x, rows) {
                self.error = Some(CalibError::Stats {
                    site: format!("layer {} {site:?}", self.layer),
                    source,
                });
            }
        }
        if let Some(max_rows) = self.needs.input_samples {
            let total = match site {
                Site::ExpertInput(_) | Site::ExpertDownInput(_) => None,
                // Every token, like the dense sites.
                _ => Some(self.dense_rows),
            };
            self.samples
                .entry(site)
                .or_insert_with(|| Sampler::new(total, max_rows))
                .add(x, rows, cols);
        }
    }
}

/// The [`LayerContext`] the driver hands to transforms for one decoder layer.
pub(crate) struct TransformContext<'a> {
    layer: &'a mut DecoderLayer,
    input: &'a ActivationStore,
    rope: &'a Rope,
    n_seq: usize,
    seq: usize,
    chunk_sequences: usize,
    expert_policy: ExpertPolicy,
    stats: HashMap<Site, ChannelStats>,
    samples: HashMap<Site, Sampler>,
    tokens: HashMap<Site, usize>,
    /// Outputs kept from the capture, valid until a scale is folded or a weight replaced.
    kept: Option<KeptOutputs>,
}

fn ctx_err(e: impl std::fmt::Display) -> MethodError {
    MethodError::Context(e.to_string())
}

impl<'a> TransformContext<'a> {
    /// Runs `layer` in full precision over all of `input` (`n_seq` sequences of `seq` tokens),
    /// collecting what `needs` asks for. Returns the context and, if `keep_output`, the layer's
    /// full-precision outputs (the next layer's inputs under full-precision propagation).
    /// With `keep_blocks` (the caller checked that two more `[tokens, hidden]` f32 buffers fit
    /// in memory) the blocks' outputs are kept for the scoring sweeps.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn capture(
        layer: &'a mut DecoderLayer,
        input: &'a ActivationStore,
        rope: &'a Rope,
        n_seq: usize,
        seq: usize,
        chunk_sequences: usize,
        needs: TransformNeeds,
        expert_policy: ExpertPolicy,
        keep_output: bool,
        keep_blocks: bool,
    ) -> Result<(Self, Option<ActivationStore>)> {
        let rows = n_seq * seq;
        let hidden = input.cols();
        let store = || ActivationStore::new(vec![0.0; rows * hidden], hidden, ActivationDtype::F32);
        let kept = (keep_blocks && needs.block_losses).then(|| KeptOutputs {
            attn_out: store(),
            ffn_out: store(),
            grams: HashMap::new(),
        });
        let mut cap = Capture {
            layer: layer.index,
            needs,
            all_experts: expert_policy.needs_all_tokens(),
            dense_rows: n_seq * seq,
            stats: HashMap::new(),
            samples: HashMap::new(),
            tokens: HashMap::new(),
            row0: 0,
            kept,
            error: None,
        };
        let mut out = keep_output.then(|| input.clone());
        let cs = chunk_sequences.max(1);
        for s0 in (0..n_seq).step_by(cs) {
            let s1 = (s0 + cs).min(n_seq);
            let mut x = input.rows(s0 * seq, s1 * seq);
            cap.row0 = s0 * seq;
            layer.forward(&mut x, s1 - s0, seq, rope, &mut cap)?;
            if let Some(e) = cap.error.take() {
                return Err(e);
            }
            if let Some(o) = out.as_mut() {
                o.set_rows(s0 * seq, &x);
            }
        }
        Ok((
            TransformContext {
                chunk_sequences: scoring_chunk_sequences(layer, seq, cs),
                expert_policy,
                layer,
                input,
                rope,
                n_seq,
                seq,
                stats: cap.stats,
                samples: cap.samples,
                tokens: cap.tokens,
                kept: cap.kept,
            },
            out,
        ))
    }

    /// Calibration tokens routed to each expert (empty for a dense layer).
    pub(crate) fn expert_tokens(&self, n_experts: usize) -> Vec<usize> {
        (0..n_experts)
            .map(|e| self.tokens.get(&Site::ExpertInput(e)).copied().unwrap_or(0))
            .collect()
    }

    /// Divides the statistics and samples of `site` by `f` per column.
    fn divide_site(&mut self, site: Site, f: &[f32]) {
        if let Some(st) = self.stats.get_mut(&site) {
            if st.abs_max.len() == f.len() {
                st.abs_max.iter_mut().zip(f).for_each(|(m, s)| *m /= s);
                st.abs_sum
                    .iter_mut()
                    .zip(f)
                    .for_each(|(m, s)| *m /= *s as f64);
            }
        }
        if let Some(sm) = self.samples.get_mut(&site) {
            if sm.cols == f.len() && sm.cols > 0 {
                sm.rows.par_chunks_mut(sm.cols).for_each(|row| {
                    row.iter_mut().zip(f).for_each(|(v, s)| *v /= s);
                });
            }
        }
    }

    /// Candidates `c0..c1` of a request as weight overrides (`first` is candidate 0, already
    /// generated); generated in parallel.
    fn candidates(
        &self,
        r: &LossRequest<'_>,
        c0: usize,
        c1: usize,
        first: Option<CandidateWeights>,
    ) -> std::result::Result<Vec<LinearOverrides>, MethodError> {
        let layer = &*self.layer;
        let to_overrides =
            |c: CandidateWeights| -> std::result::Result<LinearOverrides, MethodError> {
                c.into_iter()
                    .map(|(id, w)| {
                        let cur = layer
                            .linear(id.kind, id.expert)
                            .ok_or_else(|| ctx_err(format!("{id} does not exist")))?;
                        let lw = LinearWeight::dense(cur.out_features(), cur.in_features(), w)
                            .map_err(ctx_err)?;
                        Ok((id, lw))
                    })
                    .collect()
            };
        let generated: Vec<Option<CandidateWeights>> = (c0..c1)
            .into_par_iter()
            .map(|i| {
                if i == 0 && first.is_some() {
                    Ok(None)
                } else {
                    (r.candidate)(i).map(Some)
                }
            })
            .collect::<std::result::Result<_, MethodError>>()?;
        let mut first = first;
        generated
            .into_iter()
            .map(|c| match c {
                Some(c) => to_overrides(c),
                None => to_overrides(first.take().unwrap_or_default()),
            })
            .collect()
    }

    /// One pass over the calibration chunks: per chunk, one traced forward of the layer gives
    /// every request's block input and reference output; each candidate's squared error is
    /// accumulated. Returns mean squared errors per request and candidate.
    fn sweep(
        &self,
        requests: &[LossRequest<'_>],
        cands: &[Vec<LinearOverrides>],
    ) -> std::result::Result<Vec<Vec<f64>>, MethodError> {
        let layer = &*self.layer;
        let mut losses: Vec<Vec<f64>> = cands.iter().map(|c| vec![0.0; c.len()]).collect();
        let mut counts = vec![0usize; requests.len()];
        // A block that is one linear is scored through its input's Gram matrix (see
        // `gram_losses`): no candidate product over the calibration tokens at all.
        // Traces rebuilt from the capture's block outputs when they serve every request (no
        // forward of the layer); a Gram matrix kept by the capture is used as it is.
        let kept = self
            .kept
            .as_ref()
            .filter(|k| requests.iter().all(|r| k.serves(r.block)));
        let kept_gram = |block: ScoredBlock| match (kept, block) {
            (Some(k), ScoredBlock::Linear(id)) => k.grams.get(&site_of(&id)),
            _ => None,
        };
        let mut grams: Vec<Option<(Hessian, usize)>> = requests
            .iter()
            .map(|r| match r.block {
                ScoredBlock::Linear(id) if kept_gram(r.block).is_none() => layer
                    .linear(id.kind, id.expert)
                    .map(|w| (Hessian::new(w.in_features()), w.out_features())),
                _ => None,
            })
            .collect();
        for (s0, s1) in self.chunks() {
            let b = s1 - s0;
            let (r0, r1) = (s0 * self.seq, s1 * self.seq);
            let h = self.input.rows(r0, r1);
            let trace = match kept {
                Some(k) => layer.trace_from_block_outputs(
                    &h,
                    b,
                    self.seq,
                    k.attn_out.rows(r0, r1),
                    k.ffn_out.rows(r0, r1),
                ),
                None => layer.trace(&h, b, self.seq, self.rope),
            }
            .map_err(ctx_err)?;
            drop(h);
            for (k, r) in requests.iter().enumerate() {
                if cands[k].is_empty() || kept_gram(r.block).is_some() {
                    continue;
                }
                let bi = layer.trace_input(&trace, r.block).map_err(ctx_err)?;
                if let Some((g, out)) = grams[k].as_mut() {
                    if bi.rows > 0 {
                        g.accumulate(&bi.x, bi.rows).map_err(ctx_err)?;
                    }
                    counts[k] += bi.rows * *out;
                    continue;
                }
                let org = layer.trace_output(&trace, r.block).map_err(ctx_err)?;
                counts[k] += org.len();
                for (c, ov) in cands[k].iter().enumerate() {
                    let out = layer
                        .block_output(r.block, &bi, b, self.seq, self.rope, ov)
                        .map_err(ctx_err)?;
                    losses[k][c] += squared_distance(&org, &out);
                }
            }
        }
        for (k, g) in grams.iter().enumerate() {
            let ScoredBlock::Linear(id) = requests[k].block else {
                continue;
            };
            if let Some((g, _)) = g {
                losses[k] = self.gram_losses(id, g, &cands[k])?;
            } else if let Some((g, rows)) = kept_gram(requests[k].block) {
                let out = layer
                    .linear(id.kind, id.expert)
                    .map_or(0, |w| w.out_features());
                counts[k] = rows * out;
                losses[k] = self.gram_losses(id, g, &cands[k])?;
            }
        }
        Ok(losses
            .into_iter()
            .zip(counts)
            .map(|(l, n)| l.into_iter().map(|v| v / n.max(1) as f64).collect())
            .collect())
    }

    /// Summed squared output errors of candidate weights `W'` of one linear, from the Gram matrix
    /// `G = Σ_t x_tᵀ x_t` of its calibration inputs: `Σ_t ‖x_t (W' − W)ᵀ‖² = Σ_r Δ_r G Δ_rᵀ`
    /// with `Δ = W' − W`. The same quantity the per-token outputs give, for one `[out, in] ×
    /// [in, in]` product per candidate instead of one `[tokens, in] × [in, out]` product (for
    /// down_proj on 128 × 1024 tokens, about 85× fewer FLOPs).
    fn gram_losses(
        &self,
        id: LinearId,
        g: &Hessian,
        cands: &[LinearOverrides],
    ) -> std::result::Result<Vec<f64>, MethodError> {
        let cur = self
            .layer
            .linear(id.kind, id.expert)
            .ok_or_else(|| ctx_err(format!("{id} does not exist")))?;
        let (out, inp) = (cur.out_features(), cur.in_features());
        let w = cur.to_dense();
        let losses = cands
            .iter()
            .map(|ov| {
                let Some(c) = ov.get(&id) else {
                    return 0.0;
                };
                let delta: Vec<f32> = c.to_dense().iter().zip(&w).map(|(a, b)| a - b).collect();
                let mut dg = vec![0.0f32; out * inp];
                qwen3_quant_kernels::dense::matmul(&delta, out, inp, &g.data, inp, &mut dg);
                dg.par_chunks(16384)
                    .zip(delta.par_chunks(16384))
                    .map(|(a, b)| {
                        a.iter()
                            .zip(b)
                            .map(|(x, y)| *x as f64 * *y as f64)
                            .sum::<f64>()
                    })
                    .sum::<f64>()
            })
            .collect();
        Ok(losses)
    }

    /// Where the statistics of `site` come from under the expert policy: the site itself for
    /// dense sites and well-routed experts, the all-token site, or `None` (an expert below the
    /// threshold: no scale search and no clipping, plain rounding).
    fn stats_site(&self, site: Site) -> Option<Site> {
        let routed = self.tokens.get(&site).copied().unwrap_or(0);
        self.expert_policy.choose(site, routed).0
    }

    fn chunks(&self) -> Vec<(usize, usize)> {
        let cs = self.chunk_sequences;
        (0..self.n_seq)
            .step_by(cs)
            .map(|s0| (s0, (s0 + cs).min(self.n_seq)))
            .collect()
    }
}

impl LayerContext for TransformContext<'_> {
    fn layer(&self) -> usize {
        self.layer.index
    }

    fn scale_pairs(&self) -> Vec<ScalePair> {
        self.layer.scale_pairs()
    }

    fn linear_ids(&self) -> Vec<LinearId> {
        self.layer.linear_ids()
    }

    fn weight(&self, id: LinearId) -> std::result::Result<(Vec<f32>, usize, usize), MethodError> {
        match self.layer.linear(id.kind, id.expert) {
            Some(w @ LinearWeight::Dense { .. }) => {
                Ok((w.to_dense(), w.out_features(), w.in_features()))
            }
            Some(_) => Err(ctx_err(format!("{id} is already quantized"))),
            None => Err(ctx_err(format!("{id} does not exist"))),
        }
    }

    fn pair_stats(&self, pair: &ScalePair) -> Option<&ChannelStats> {
        producer_site(pair.producer)
            .and_then(|s| self.stats_site(s))
            .and_then(|s| self.stats.get(&s))
    }

    fn input_stats(&self, id: LinearId) -> Option<&ChannelStats> {
        self.stats_site(site_of(&id))
            .and_then(|s| self.stats.get(&s))
    }

    fn input_sample(&self, id: LinearId) -> Option<(&[f32], usize)> {
        self.stats_site(site_of(&id))
            .and_then(|s| self.samples.get(&s))
            .map(|s| (s.rows.as_slice(), s.n_rows()))
    }

    fn tokens(&self, id: LinearId) -> usize {
        self.stats_site(site_of(&id))
            .and_then(|s| self.tokens.get(&s))
            .copied()
            .unwrap_or(0)
    }

    fn block_losses_many(
        &mut self,
        requests: &[LossRequest<'_>],
    ) -> std::result::Result<Vec<Vec<f64>>, MethodError> {
        // Size one candidate of each request to decide how many sweeps the budget allows.
        let mut firsts = Vec::with_capacity(requests.len());
        let mut total = 0usize;
        for r in requests {
            if r.n == 0 {
                firsts.push(None);
                continue;
            }
            let c = (r.candidate)(0)?;
            total += r.n * c.iter().map(|(_, w)| w.len() * 4).sum::<usize>();
            firsts.push(Some(c));
        }
        if total <= CANDIDATE_BUDGET_BYTES {
            // Everything at once: one pass over the data, one traced forward per chunk.
            let all: Vec<Vec<LinearOverrides>> = requests
                .iter()
                .zip(firsts)
                .map(|(r, first)| self.candidates(r, 0, r.n, first))
                .collect::<std::result::Result<_, _>>()?;
            return self.sweep(requests, &all);
        }
        // Over budget: each request on its own, in sweeps of as many candidates as fit.
        let mut out = Vec::with_capacity(requests.len());
        for (r, first) in requests.iter().zip(firsts) {
            let Some(first) = first else {
                out.push(Vec::new());
                continue;
            };
            let bytes = first.iter().map(|(_, w)| w.len() * 4).sum::<usize>().max(1);
            let per_sweep = (CANDIDATE_BUDGET_BYTES / bytes).clamp(1, r.n);
            let mut first = Some(first);
            let mut losses = Vec::with_capacity(r.n);
            for c0 in (0..r.n).step_by(per_sweep) {
                let c1 = (c0 + per_sweep).min(r.n);
                let cands = self.candidates(r, c0, c1, first.take())?;
                let one = LossRequest {
                    block: r.block,
                    n: c1 - c0,
                    candidate: r.candidate,
                };
                losses.extend(self.sweep(&[one], &[cands])?.remove(0));
            }
            out.push(losses);
        }
        Ok(out)
    }

    fn fold_scale(&mut self, pair: &ScalePair, s: &[f32]) -> std::result::Result<(), MethodError> {
        if s.len() != pair.channels {
            return Err(MethodError::InvalidShape {
                id: None,
                what: "scale",
                expected: pair.channels,
                actual: s.len(),
            });
        }
        if let Some(index) = s.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(MethodError::NonFinite {
                id: None,
                what: "scale (must be positive and finite)",
                index,
            });
        }
        self.layer.fold_scale(pair.producer, s).map_err(ctx_err)?;
        // Exact up to rounding for the block outputs, but the Gram matrices change: rescore
        // from fresh traces.
        self.kept = None;
        let expanded = pair.expand(s);
        match pair.producer {
            ScaleProducer::PostAttentionNorm => {
                let sites: Vec<Site> = self
                    .stats
                    .keys()
                    .chain(self.samples.keys())
                    .copied()
                    .filter(|s| matches!(s, Site::MlpInput | Site::ExpertInput(_)))
                    .collect();
                let mut sites = sites;
                sites.sort_by_key(|s| format!("{s:?}"));
                sites.dedup();
                for site in sites {
                    self.divide_site(site, &expanded);
                }
            }
            p => {
                if let Some(site) = producer_site(p) {
                    self.divide_site(site, &expanded);
                }
            }
        }
        Ok(())
    }

    fn set_weight(
        &mut self,
        id: LinearId,
        weight: Vec<f32>,
    ) -> std::result::Result<(), MethodError> {
        let (out, inp) = match self.layer.linear(id.kind, id.expert) {
            Some(w) => (w.out_features(), w.in_features()),
            None => return Err(ctx_err(format!("{id} does not exist"))),
        };
        qwen3_quant_core::method::check_weight(&weight, out, inp).map_err(|e| e.with_id(id))?;
        let w = LinearWeight::dense(out, inp, weight).map_err(ctx_err)?;
        self.layer.replace_linear(&id, w).map_err(ctx_err)?;
        self.kept = None;
        Ok(())
    }
}

/// `Σ (a − b)²` in f64 (NaN if either side is not finite).
fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.par_chunks(16384)
        .zip(b.par_chunks(16384))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| {
                    let d = (*x - *y) as f64;
                    d * d
                })
                .sum::<f64>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_strides() {
        let x: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let mut s = Sampler::new(Some(20), 5);
        s.add(&x[..8], 8, 1);
        s.add(&x[8..], 12, 1);
        assert_eq!(s.rows, vec![0.0, 4.0, 8.0, 12.0, 16.0]);
        let mut a = Sampler::new(None, 2);
        a.add(&x, 20, 1);
        assert!(a.n_rows() <= 4 && a.n_rows() >= 2, "{:?}", a.rows);
        assert!(a.rows.windows(2).all(|w| w[1] - w[0] == a.stride as f32));
    }

    /// The Gram-matrix scoring of a one-linear block equals the per-token squared errors of
    /// the candidates' outputs (down_proj of the bundled model's layer 2, dense and MoE).
    #[test]
    fn gram_scoring_equals_per_token_scoring() {
        let cases = [("qwen3-micro", None)]
            .into_iter()
            .chain((0..8).map(|e| ("qwen3-moe-micro", Some(e))));
        let mut checked = 0;
        for (dir, expert) in cases {
            let Some(path) = qwen3_quant_io::assets::require(&format!("models/{dir}")) else {
                return;
            };
            let model = qwen3_quant_model::Qwen3Model::load(path).unwrap();
            let (n_seq, seq) = (3, 64);
            let ids: Vec<u32> = (0..n_seq * seq)
                .map(|i| ((i * 7919 + 5) % 8000) as u32)
                .collect();
            let h = model.embed(&ids).unwrap();
            let rope = model.rope(seq);
            let mut layer = model.layers[2].clone();
            let hidden = model.config.hidden_size;
            let input = ActivationStore::new(h, hidden, crate::ActivationDtype::F32);
            let id = LinearId {
                layer: 2,
                kind: LinearKind::Down,
                expert,
            };
            let (ctx, _) = TransformContext::capture(
                &mut layer,
                &input,
                &rope,
                n_seq,
                seq,
                2,
                TransformNeeds::default(),
                ExpertPolicy::default(),
                false,
                false,
            )
            .unwrap();
            let cur = ctx.layer.linear(id.kind, id.expert).unwrap();
            let (out, inp) = (cur.out_features(), cur.in_features());
            let w = cur.to_dense();
            let cand = |k: usize| -> std::result::Result<CandidateWeights, MethodError> {
                let f = 0.01 * k as f32;
                let v = w
                    .iter()
                    .enumerate()
                    .map(|(i, x)| x + f * ((i % 13) as f32 - 6.0) * 1e-2);
                Ok(vec![(id, v.collect())])
            };
            let req = LossRequest {
                block: ScoredBlock::Linear(id),
                n: 3,
                candidate: &cand,
            };
            let cands = ctx.candidates(&req, 0, 3, None).unwrap();
            let gram = ctx
                .sweep(std::slice::from_ref(&req), std::slice::from_ref(&cands))
                .unwrap()
                .remove(0);
            // Direct: every candidate's outputs against the current weight's, token by token.
            let mut direct = [0.0f64; 3];
            let mut n = 0usize;
            for (s0, s1) in ctx.chunks() {
                let x = ctx.input.rows(s0 * seq, s1 * seq);
                let trace = ctx.layer.trace(&x, s1 - s0, seq, &rope).unwrap();
                let bi = ctx.layer.trace_input(&trace, req.block).unwrap();
                let org = ctx.layer.trace_output(&trace, req.block).unwrap();
                n += org.len();
                for (c, ov) in cands.iter().enumerate() {
                    let o = ctx
                        .layer
                        .block_output(req.block, &bi, s1 - s0, seq, &rope, ov)
                        .unwrap();
                    direct[c] += squared_distance(&org, &o);
                }
            }
            if n == 0 {
                continue; // an expert these tokens never reach
            }
            assert!(n % out == 0 && inp > 0);
            assert_eq!(gram[0], 0.0, "{dir}: the unchanged weight has no error");
            for c in 1..3 {
                let d = direct[c] / n as f64;
                let rel = (gram[c] - d).abs() / d;
                assert!(
                    d > 0.0 && rel < 1e-4,
                    "{dir} candidate {c}: gram {} direct {d}",
                    gram[c]
                );
            }
            checked += 1;
        }
        assert!(checked >= 3, "the dense model and at least two experts");
    }

    /// Scoring on traces rebuilt from the capture's block outputs (and its Gram matrices) gives
    /// the losses a fresh forward of the layer gives, for whole blocks and single linears, on
    /// the dense and the MoE model; a folded scale drops what was kept.
    #[test]
    fn kept_block_outputs_score_like_fresh_traces() {
        for dir in ["qwen3-micro", "qwen3-moe-micro"] {
            let Some(path) = qwen3_quant_io::assets::require(&format!("models/{dir}")) else {
                return;
            };
            let model = qwen3_quant_model::Qwen3Model::load(path).unwrap();
            let (n_seq, seq) = (3, 48);
            let ids: Vec<u32> = (0..n_seq * seq)
                .map(|i| ((i * 7919 + 11) % 8000) as u32)
                .collect();
            let rope = model.rope(seq);
            let hidden = model.config.hidden_size;
            let input = ActivationStore::new(
                model.embed(&ids).unwrap(),
                hidden,
                crate::ActivationDtype::F32,
            );
            let needs = TransformNeeds {
                block_losses: true,
                ..TransformNeeds::default()
            };
            let scored = |keep: bool| {
                let mut layer = model.layers[1].clone();
                let (ctx, out) = TransformContext::capture(
                    &mut layer,
                    &input,
                    &rope,
                    n_seq,
                    seq,
                    2,
                    needs,
                    ExpertPolicy::default(),
                    true,
                    keep,
                )
                .unwrap();
                assert_eq!(ctx.kept.is_some(), keep);
                // v -> o is scored on o_proj's input, which is not kept (GQA: AWQ skips it).
                let pairs: Vec<ScalePair> = ctx
                    .layer
                    .scale_pairs()
                    .into_iter()
                    .filter(
                        |p| !matches!(p.block, ScoredBlock::Linear(id) if id.kind == LinearKind::O),
                    )
                    .collect();
                // Every pair's consumers nudged by a candidate-dependent amount.
                let fns: Vec<Box<qwen3_quant_core::CandidateFn<'_>>> = pairs
                    .iter()
                    .map(|p| {
                        let ws: Vec<(LinearId, Vec<f32>)> = p
                            .consumers
                            .iter()
                            .map(|&id| {
                                (id, ctx.layer.linear(id.kind, id.expert).unwrap().to_dense())
                            })
                            .collect();
                        Box::new(move |k: usize| {
                            Ok(ws
                                .iter()
                                .map(|(id, w)| {
                                    let v = w.iter().enumerate().map(|(i, x)| {
                                        x * (1.0 + 0.02 * k as f32 * ((i % 7) as f32 - 3.0))
                                    });
                                    (*id, v.collect())
                                })
                                .collect())
                        }) as Box<qwen3_quant_core::CandidateFn<'_>>
                    })
                    .collect();
                let requests: Vec<LossRequest<'_>> = pairs
                    .iter()
                    .zip(&fns)
                    .map(|(p, f)| LossRequest {
                        block: p.block,
                        n: 3,
                        candidate: f.as_ref(),
                    })
                    .collect();
                if let Some(k) = &ctx.kept {
                    assert!(requests.iter().all(|r| k.serves(r.block)));
                    assert!(!k.serves(ScoredBlock::Linear(LinearId {
                        layer: 1,
                        kind: LinearKind::O,
                        expert: None
                    })));
                }
                let cands: Vec<_> = requests
                    .iter()
                    .map(|r| ctx.candidates(r, 0, r.n, None).unwrap())
                    .collect();
                let losses = ctx.sweep(&requests, &cands).unwrap();
                (losses, out.unwrap().rows(0, n_seq * seq))
            };
            let (fresh, out_fresh) = scored(false);
            let (kept, out_kept) = scored(true);
            assert_eq!(fresh.len(), kept.len());
            let mut compared = 0;
            for (f, k) in fresh.iter().zip(&kept) {
                for (a, b) in f.iter().zip(k) {
                    assert!(
                        (a - b).abs() <= 1e-4 * a.abs().max(1e-12),
                        "{dir}: fresh {f:?} kept {k:?}"
                    );
                    compared += usize::from(*a > 0.0);
                }
            }
            assert!(
                compared >= 2 * fresh.len(),
                "{dir}: candidates with an error"
            );
            // The layer outputs handed to the next layer are those of the fused forward.
            let worst = out_fresh
                .iter()
                .zip(&out_kept)
                .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{dir}: outputs differ by {worst}");
        }
    }
}
