//! The one sequential driver every method plugs into.
//!
//! Layer-0 inputs of all calibration windows are captured once into a single `[samples·seq, hidden]`
//! buffer that is reused layer after layer. For each decoder layer the driver collects the
//! statistics the method asked for, lets it quantize, swaps the quantized weights into the model,
//! and produces the next layer's inputs from the quantized layer (GPTQ, BiLLM) or from the
//! full-precision layer (AWQ), as the method declares ([`Propagation`]).
//!
//! True-sequential methods run the layer **once**, with quantization interleaved between its
//! stages — `[k, v, q]` on the attention input, `[o]` on the attention output computed with the
//! quantized q/k/v, `[up, gate]` on the MLP input after the quantized `o`, `[down]` on the
//! activation of the quantized gate/up — reusing each stage's activations instead of re-running
//! the whole layer per group as the reference code does.

use std::collections::HashMap;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use qwen3_quant_core::norm_refit::{fit_norm_scale, RefitTerm};
use qwen3_quant_core::transform::ScaleProducer;
use qwen3_quant_core::{
    Hessian, LayerTransform, LinearId, LinearInput, LinearKind, LinearStats, PackedWeight,
    Propagation, QuantizedWeight, Quantizer, ResidualRotation, TransformNeeds, TransformRecord,
};
use qwen3_quant_io::Checkpoint;
use qwen3_quant_model::layer::add_in_place;
use qwen3_quant_model::mlp::{rank_experts, MoeBlock};
use qwen3_quant_model::{
    DecoderLayer, FeedForward, LinearWeight, NoObserver, Observer, Qwen3Model, Rope, Rotation, Site,
};
use serde::{Deserialize, Serialize};

use crate::activations::{ActivationDtype, ActivationStore};
use crate::data::CalibrationSet;
use crate::error::{CalibError, Result};
use crate::paired::{OnlySites, PairedCollector, SiteRecorder};
use crate::resume::{FinishedLayer, LayerStore, Restore};
use crate::stats::StatsCollector;
use crate::transform_ctx::{site_of, TransformContext};

/// What one run applies to every decoder layer: layer-level equivalent transforms (AWQ's scale
/// and clip search, SmoothQuant's migration, …) in order, then a per-linear quantizer (RTN,
/// GPTQ, BiLLM) on the transformed weights.
///
/// ```
/// use qwen3_quant_calib::Pipeline;
/// use qwen3_quant_core::Propagation;
/// use qwen3_quant_rtn::Rtn;
/// let rtn = Rtn::default();
/// let p = Pipeline::new(&rtn);
/// assert_eq!(p.name(), "rtn");
/// assert_eq!(p.propagation(), Propagation::Quantized);
/// ```
#[derive(Clone, Copy)]
pub struct Pipeline<'a> {
    rotation: Option<&'a dyn ResidualRotation>,
    transforms: &'a [&'a dyn LayerTransform],
    quantizer: Option<&'a dyn Quantizer>,
    propagation: Option<Propagation>,
}

impl std::fmt::Debug for Pipeline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name())
            .field("propagation", &self.propagation())
            .finish()
    }
}

impl<'a> Pipeline<'a> {
    /// A per-linear quantizer alone.
    pub fn new(quantizer: &'a dyn Quantizer) -> Self {
        Pipeline {
            rotation: None,
            transforms: &[],
            quantizer: Some(quantizer),
            propagation: None,
        }
    }

    /// Transforms alone: the linears stay in full precision (a smoothed or scaled model, e.g.
    /// to check that a transform is an exact equivalence, or to export it).
    pub fn transforms_only(transforms: &'a [&'a dyn LayerTransform]) -> Self {
        Pipeline {
            rotation: None,
            transforms,
            quantizer: None,
            propagation: None,
        }
    }

    /// Transforms that run (in order) on each layer before the quantizer.
    pub fn with_transforms(mut self, transforms: &'a [&'a dyn LayerTransform]) -> Self {
        self.transforms = transforms;
        self
    }

    /// A rotation of the residual stream folded into the model before everything else (the
    /// transforms and the quantizer then see the rotated weights).
    pub fn with_rotation(mut self, rotation: &'a dyn ResidualRotation) -> Self {
        self.rotation = Some(rotation);
        self
    }

    /// The residual rotation, if any.
    pub fn rotation(&self) -> Option<&'a dyn ResidualRotation> {
        self.rotation
    }

    /// Overrides which outputs feed the next layer (see [`Pipeline::propagation`]).
    pub fn with_propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = Some(propagation);
        self
    }

    /// `awq+rtn`-style name of the composition.
    pub fn name(&self) -> String {
        let mut parts: Vec<&str> = self.rotation.iter().map(|r| r.name()).collect();
        parts.extend(self.transforms.iter().map(|t| t.name()));
        parts.extend(self.quantizer.map(|q| q.name()));
        parts.join("+")
    }

    /// The per-linear quantizer (`None`: transforms only).
    pub fn quantizer(&self) -> Option<&'a dyn Quantizer> {
        self.quantizer
    }

    /// The transforms.
    pub fn transforms(&self) -> &'a [&'a dyn LayerTransform] {
        self.transforms
    }

    /// Which outputs feed the next layer: the override if set; else the quantizer's choice when
    /// it needs calibration statistics (GPTQ, BiLLM: quantized outputs); else the first
    /// transform's (AWQ, SmoothQuant: full precision); else quantized.
    pub fn propagation(&self) -> Propagation {
        if let Some(p) = self.propagation {
            return p;
        }
        if let (true, Some(q)) = (self.quantizer_needs_stats(), self.quantizer) {
            q.propagation()
        } else if let Some(t) = self.transforms.first() {
            t.propagation()
        } else {
            Propagation::Quantized
        }
    }

    fn quantizer_needs_stats(&self) -> bool {
        self.quantizer.is_some_and(|q| {
            let req = q.stats_required();
            req.hessian || req.channel_stats
        })
    }

    fn transform_needs(&self) -> TransformNeeds {
        self.transforms
            .iter()
            .map(|t| t.needs())
            .fold(TransformNeeds::default(), |a, b| TransformNeeds {
                channel_stats: a.channel_stats || b.channel_stats,
                input_samples: match (a.input_samples, b.input_samples) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    (x, y) => x.or(y),
                },
                block_losses: a.block_losses || b.block_losses,
            })
    }
}

/// One line of a transform's log, as reported in JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransformLog {
    /// Decoder layer.
    pub layer: usize,
    /// Transform name (`awq`, `smoothquant`, `norm-refit`).
    pub transform: String,
    /// `scale`, `clip` or `smooth`.
    pub kind: String,
    /// The pair or linear it applies to.
    pub target: String,
    /// Chosen grid ratio (AWQ), migration strength (SmoothQuant) or mean `|s − 1|` of the
    /// norm's factors (`norm-refit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Mean clipping ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip: Option<f64>,
    /// Loss of the chosen candidate.
    pub loss: f64,
    /// Loss without the transform (ratio 0, no clipping).
    pub baseline_loss: f64,
    /// A guard that replaced the search result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Wall time of the search.
    pub seconds: f64,
}

/// How quantized weights are put back into the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightMode {
    /// Dequantized f32 values (fake quantization: exactly what the reference evaluates).
    #[default]
    FakeQuant,
    /// Packed codes run by the low-bit kernels.
    Packed,
}

/// Options of [`quantize_model`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DriverOptions {
    /// Calibration windows pushed through a layer at once (bounds temporary memory).
    pub chunk_sequences: usize,
    /// Show a progress bar and per-linear log lines on stderr.
    pub progress: bool,
    /// How quantized weights replace the originals.
    pub weight_mode: WeightMode,
    /// Element type of the calibration activation buffer.
    pub activations: ActivationDtype,
    /// Which statistics quantize MoE experts that few calibration tokens reach.
    pub expert_policy: ExpertPolicy,
    /// Weights each token of an MoE expert's statistics by its routing weight, so that the
    /// expert's layer loss is the one its error adds to the block's output (affinity-weighted
    /// statistics, as in MoEQuant's AGQ; [`StatsCollector::with_routing_weights`]). Dense
    /// layers are unchanged.
    pub routing_weighted: bool,
    /// Bytes the calibration activation buffers may take; `None`: what the system reports
    /// available (`MemAvailable`, and the cgroup limit when there is one), no check elsewhere.
    pub memory_budget: Option<u64>,
    /// `false` streams the model through memory ([`quantize_checkpoint_streamed`]): each
    /// finished layer is handed to the [`LayerStore`] and dropped with its quantized weights, so
    /// that one layer is resident at a time. The returned model then holds no decoder layers and
    /// the run's `quantized` list stays empty; the store has them.
    pub keep_finished_layers: bool,
    /// Whether true-sequential calibration keeps each layer's attention outputs and
    /// `down_proj` inputs for all windows or recomputes them chunk by chunk (same values).
    pub sub_block_inputs: SubBlockInputs,
    /// After the linears that read a norm are quantized, refit the norm's weight to them in
    /// closed form ([`qwen3_quant_core::norm_refit`]) with this ridge (`None`: off). Needs the
    /// inputs' Hessians, so it applies to Hessian methods (GPTQ, BiLLM) only.
    pub norm_refit: Option<f64>,
    /// MoE with asymmetric calibration: after each layer's attention is quantized, refit the
    /// full-precision router to the full-precision model's logits with this relative dampening
    /// (`None`: off); see `Driver::refit_router`. Needs true-sequential calibration and the
    /// full-precision stream ([`Quantizer::full_precision_targets`]); ignored otherwise.
    pub router_refit: Option<f64>,
}

/// What true-sequential calibration does with a sub-block's inputs (the attention output that
/// feeds `o_proj`, the activation that feeds `down_proj`) between collecting their statistics
/// and computing the layer's output. At the reference protocol's 128 × 2048 tokens, Qwen3-8B's
/// `down_proj` inputs are 12.9 GB in f32; recomputing them costs one more pass of the layer's
/// attention or gate/up products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubBlockInputs {
    /// Keep them when they fit in half of the memory budget or of the memory available. A
    /// streamed run ([`DriverOptions::keep_finished_layers`] off) recomputes a dense layer's
    /// `down_proj` inputs from gate/up's quantized codes instead, a block of weight rows at a
    /// time (the same bits), so that neither they nor gate/up's f32 weights are resident next
    /// to `down_proj`'s Hessian; without `norm_refit`, which refits the norm to the f32 weights.
    #[default]
    Auto,
    /// Always keep them.
    Keep,
    /// Always recompute them.
    Recompute,
}

qwen3_quant_core::setters!(DriverOptions {
    chunk_sequences: usize => with_chunk_sequences,
    progress: bool => with_progress,
    weight_mode: WeightMode => with_weight_mode,
    activations: ActivationDtype => with_activations,
    expert_policy: ExpertPolicy => with_expert_policy,
    routing_weighted: bool => with_routing_weighted,
    memory_budget: Option<u64> => with_memory_budget,
    keep_finished_layers: bool => with_keep_finished_layers,
    sub_block_inputs: SubBlockInputs => with_sub_block_inputs,
    norm_refit: Option<f64> => with_norm_refit,
    router_refit: Option<f64> => with_router_refit,
});

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            chunk_sequences: 8,
            progress: false,
            weight_mode: WeightMode::FakeQuant,
            activations: ActivationDtype::F32,
            expert_policy: ExpertPolicy::default(),
            routing_weighted: false,
            memory_budget: None,
            keep_finished_layers: true,
            sub_block_inputs: SubBlockInputs::Auto,
            norm_refit: None,
            router_refit: None,
        }
    }
}

/// How the experts of an MoE layer get their calibration statistics. Every expert's
/// gate/up/down is quantized with its own statistics; the router stays in full precision. The
/// policies differ for experts that the router sends few calibration tokens to (the run's
/// `expert_tokens` and each linear's `fallback` say which policy applied where).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpertPolicy {
    /// The tokens routed to the expert; an expert with fewer than `min_tokens` is quantized by
    /// plain rounding (RTN on the method's grid: an identity Hessian for GPTQ/BiLLM).
    Threshold {
        /// Routed tokens needed for statistics-based quantization.
        min_tokens: usize,
    },
    /// Every calibration token through every expert, for statistics only: the layer's outputs
    /// (and so the next layer's inputs) still follow the real routing. llm-compressor's
    /// `calibrate_all_experts`.
    AllTokens,
    /// The routed tokens where an expert has at least `min_tokens`, every token below that.
    ThresholdThenAllTokens {
        /// Routed tokens needed to use the routed statistics.
        min_tokens: usize,
    },
}

impl Default for ExpertPolicy {
    /// Routed statistics; RTN only for an expert no calibration token reaches.
    fn default() -> Self {
        ExpertPolicy::Threshold { min_tokens: 1 }
    }
}

impl ExpertPolicy {
    /// Whether calibration must push every token through every expert.
    pub fn needs_all_tokens(self) -> bool {
        !matches!(self, ExpertPolicy::Threshold { .. })
    }

    /// The statistics site and the fallback note for expert linear input `routed` (the routed
    /// site) with `tokens` routed calibration tokens; `None` as site means plain rounding.
    pub(crate) fn choose(self, routed: Site, tokens: usize) -> (Option<Site>, Option<String>) {
        let all = match routed {
            Site::ExpertInput(e) => Site::ExpertInputAll(e),
            Site::ExpertDownInput(e) => Site::ExpertDownInputAll(e),
            other => return (Some(other), None),
        };
        match self {
            ExpertPolicy::Threshold { min_tokens } if tokens < min_tokens.max(1) => (
                None,
                Some(format!(
                    "{tokens} routed calibration tokens < {}: RTN",
                    min_tokens.max(1)
                )),
            ),
            ExpertPolicy::Threshold { .. } => (Some(routed), None),
            ExpertPolicy::AllTokens => (
                Some(all),
                Some(format!("all-token statistics ({tokens} routed)")),
            ),
            ExpertPolicy::ThresholdThenAllTokens { min_tokens } if tokens < min_tokens => (
                Some(all),
                Some(format!(
                    "{tokens} routed calibration tokens < {min_tokens}: all-token statistics"
                )),
            ),
            ExpertPolicy::ThresholdThenAllTokens { .. } => (Some(routed), None),
        }
    }
}

/// One line of the per-linear log (like GPTQModel's table).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinearRecord {
    /// Decoder layer.
    pub layer: usize,
    /// Module path inside the layer, e.g. `self_attn.q_proj` or `mlp.experts.3.down_proj`.
    pub module: String,
    /// The method's loss (GPTQ: Σ (w−q)²/d²/2).
    pub loss: f64,
    /// Dampening actually used (0 when not applicable).
    pub damp: f64,
    /// Seconds spent quantizing this linear.
    pub seconds: f64,
    /// Calibration tokens that reached this linear.
    pub tokens: usize,
    /// Storage bits per weight including metadata.
    pub bits_per_weight: f64,
    /// Weights of the linear (`out × in`).
    #[serde(default)]
    pub weights: usize,
    /// Set when the linear was handled by a fallback (e.g. an expert with no calibration tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Scale ratio chosen for this linear's input by a transform (AWQ's grid ratio).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_ratio: Option<f64>,
    /// Loss of that scale search (MSE of the scored block's output).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_loss: Option<f64>,
    /// Mean clipping ratio chosen for this linear (AWQ).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip: Option<f64>,
}

/// Everything a run produced.
#[derive(Debug)]
pub struct QuantizationRun {
    /// The quantized linears, in processing order.
    pub quantized: Vec<(LinearId, QuantizedWeight)>,
    /// The per-linear log.
    pub records: Vec<LinearRecord>,
    /// Wall time of calibration and quantization.
    pub seconds: f64,
    /// Calibration tokens.
    pub calib_tokens: usize,
    /// Tokens routed to each expert of each MoE layer (empty for dense models).
    pub expert_tokens: Vec<(usize, Vec<usize>)>,
    /// What the transforms chose, pair by pair and linear by linear.
    pub transforms: Vec<TransformLog>,
}

impl QuantizationRun {
    /// Average storage bits per quantized weight.
    pub fn bits_per_weight(&self) -> f64 {
        let (mut bits, mut n) = (0.0f64, 0usize);
        if self.quantized.is_empty() {
            // A streamed run keeps only the log.
            for r in &self.records {
                bits += r.bits_per_weight * r.weights as f64;
                n += r.weights;
            }
        }
        for (_, q) in &self.quantized {
            let w = q.out_features() * q.in_features();
            bits += q.bits_per_weight() * w as f64;
            n += w;
        }
        if n == 0 {
            0.0
        } else {
            bits / n as f64
        }
    }
}

/// The statistics of a group of linears: shared with the caller, or handed over so that a
/// method can consume them ([`Quantizer::quantize_linear_owned`]).
enum GroupStats<'s> {
    Shared(&'s HashMap<Site, LinearStats>),
    Owned(HashMap<Site, LinearStats>),
}

impl GroupStats<'_> {
    fn get(&self, site: Site) -> Option<&LinearStats> {
        match self {
            GroupStats::Shared(m) => m.get(&site),
            GroupStats::Owned(m) => m.get(&site),
        }
    }

    /// `site`'s statistics by value when they are owned and none of `later` reads them.
    fn take_last(&mut self, site: Site, later: &[LinearId]) -> Option<LinearStats> {
        match self {
            GroupStats::Owned(m) if !later.iter().any(|l| site_of(l) == site) => m.remove(&site),
            _ => None,
        }
    }
}

/// Weight rows of gate and up dequantized at a time by [`Driver::activation_from_codes`].
const CODE_ROWS: usize = 512;

/// Peak resident set of this process in MB (`VmHWM`), where the OS reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn module_name(id: &LinearId) -> String {
    let s = id.to_string();
    // `layers.{i}.` prefix removed: the layer has its own column.
    s.split_once('.')
        .and_then(|(_, rest)| rest.split_once('.'))
        .map(|(_, m)| m.to_string())
        .unwrap_or(s)
}

/// What the transforms chose for one linear: (scale ratio, scale loss, clip).
type Annotation = (Option<f64>, Option<f64>, Option<f64>);

struct Driver<'a> {
    method: &'a dyn Quantizer,
    propagation: Propagation,
    /// Per linear: (scale ratio, scale loss, clip) chosen by the transforms of its layer.
    annotations: HashMap<LinearId, Annotation>,
    opts: &'a DriverOptions,
    n_seq: usize,
    seq: usize,
    /// Windows per chunk: the option, capped by [`chunk_sequences`].
    chunk_sequences: usize,
    rope: Rope,
    run: QuantizationRun,
    pb: ProgressBar,
}

/// Bytes the widest per-chunk activation of a calibration forward may take. At the reference
/// protocol's 8 windows per chunk this caps nothing up to 1024-token windows of a 12288-wide
/// MLP (Qwen3-8B); at 2048 tokens it halves the chunk, whose gate, up and product buffers
/// would otherwise take 2.4 GB.
const CHUNK_BUFFER_BYTES: usize = 512 << 20;

/// Windows per chunk: at most `requested`, and few enough that the widest per-token
/// activation (`widest` f32: the MLP's intermediate or q) stays within [`CHUNK_BUFFER_BYTES`].
fn chunk_sequences(requested: usize, seq: usize, widest: usize) -> usize {
    let per_window = (seq * widest * 4).max(1);
    (CHUNK_BUFFER_BYTES / per_window).clamp(1, requested.max(1))
}

impl Driver<'_> {
    /// A log line on stderr above the progress bar (also when stderr is not a terminal, where
    /// indicatif hides the bar and would drop `println`).
    fn log(&self, line: String) {
        if self.pb.is_hidden() {
            eprintln!("{line}");
        } else {
            self.pb.println(line);
        }
    }

    /// Quantizes `ids` of `layer` with `stats` and swaps the results into the layer.
    fn quantize_group(
        &mut self,
        layer: &mut DecoderLayer,
        ids: &[LinearId],
        stats: &HashMap<Site, LinearStats>,
    ) -> Result<()> {
        self.quantize_group_then(layer, ids, GroupStats::Shared(stats), false)
    }

    /// [`Self::quantize_group`] with the statistics handed over: each linear that is the last
    /// of the group to read its site's statistics gets them by value
    /// ([`Quantizer::quantize_linear_owned`]; GPTQ halves the Hessian before factoring it).
    fn quantize_group_owned(
        &mut self,
        layer: &mut DecoderLayer,
        ids: &[LinearId],
        stats: HashMap<Site, LinearStats>,
    ) -> Result<()> {
        self.quantize_group_then(layer, ids, GroupStats::Owned(stats), false)
    }

    /// [`Self::quantize_group`], then [`Self::release_finished`] when `release` is set: a
    /// streamed run then never writes the quantized values into a weight it frees right away.
    fn quantize_group_then(
        &mut self,
        layer: &mut DecoderLayer,
        ids: &[LinearId],
        mut stats: GroupStats<'_>,
        release: bool,
    ) -> Result<()> {
        let freed_at_once = release && self.streamed();
        for (i, id) in ids.iter().enumerate() {
            let weight = layer
                .linear(id.kind, id.expert)
                .ok_or_else(|| CalibError::InvalidOptions(format!("{id} missing")))?;
            let (out_f, in_f) = (weight.out_features(), weight.in_features());
            let w = weight.dense_view();
            let site = site_of(id);
            let empty = LinearStats::default();
            let routed_tokens = stats.get(site).map_or(0, |s| s.tokens);
            let needs_stats =
                self.method.stats_required().hessian || self.method.stats_required().channel_stats;
            let (chosen, mut fallback) = if needs_stats {
                self.opts.expert_policy.choose(site, routed_tokens)
            } else {
                (Some(site), None)
            };
            // The last reader of its own site's statistics may consume them.
            let owned = match chosen {
                Some(c) if c == site && routed_tokens > 0 => stats.take_last(c, &ids[i + 1..]),
                _ => None,
            };
            let mut st = owned
                .as_ref()
                .or_else(|| chosen.and_then(|c| stats.get(c)))
                .unwrap_or(&empty);
            let substitute;
            if needs_stats && st.tokens == 0 {
                // An expert no calibration token reached: an identity Hessian makes Hessian-based
                // methods reduce to plain rounding with the same grid (GPTQModel's RTN fail-safe).
                let mut h = Hessian::new(in_f);
                (0..in_f).for_each(|i| h.data[i * in_f + i] = 1.0);
                h.n_sequences = 2;
                substitute = LinearStats {
                    hessian: Some(h),
                    channels: None,
                    cross: None,
                    tokens: 0,
                };
                st = &substitute;
                fallback = fallback.or_else(|| {
                    Some("no calibration tokens: identity statistics (RTN-equivalent)".to_string())
                });
            }
            let t0 = Instant::now();
            let input = LinearInput {
                id: *id,
                weight: &w,
                out_features: out_f,
                in_features: in_f,
            };
            let outcome = match owned {
                Some(own) => self.method.quantize_linear_owned(input, own),
                None => self.method.quantize_linear(input, st),
            }
            .map_err(|e| e.with_id(*id))?;
            let seconds = t0.elapsed().as_secs_f64();
            drop(w);
            let new_weight = match self.opts.weight_mode {
                // Released below: the store keeps the codes, nothing reads these values.
                _ if freed_at_once => None,
                // Overwrite the full-precision values in place: never two f32 copies at once.
                WeightMode::FakeQuant => match layer.dense_weight_mut(id.kind, id.expert) {
                    Some(dense) => {
                        outcome
                            .linear
                            .dequantize_into(dense)
                            .map_err(qwen3_quant_core::MethodError::from)?;
                        None
                    }
                    None => Some(LinearWeight::dense(
                        out_f,
                        in_f,
                        outcome.linear.dequantize(),
                    )?),
                },
                WeightMode::Packed => Some(
                    match outcome.linear.to_packed().map_err(|e| CalibError::Pack {
                        id: id.to_string(),
                        reason: e.to_string(),
                    })? {
                        PackedWeight::Affine(p) => LinearWeight::Packed(p),
                        PackedWeight::Binary(b) => LinearWeight::Binary(b),
                    },
                ),
            };
            if let Some(new_weight) = new_weight {
                layer.replace_linear(id, new_weight)?;
            }
            let rec = LinearRecord {
                layer: id.layer,
                module: module_name(id),
                loss: outcome.loss,
                damp: outcome.damp,
                seconds,
                tokens: routed_tokens,
                bits_per_weight: outcome.linear.bits_per_weight(),
                weights: out_f * in_f,
                fallback,
                scale_ratio: self.annotations.get(id).and_then(|a| a.0),
                scale_loss: self.annotations.get(id).and_then(|a| a.1),
                clip: self.annotations.get(id).and_then(|a| a.2),
            };
            if self.opts.progress {
                self.log(format!(
                    "layer {:>3}  {:<28} loss {:>12.5}  damp {:.5}  {:>7.3} s{}",
                    rec.layer,
                    rec.module,
                    rec.loss,
                    rec.damp,
                    rec.seconds,
                    rec.fallback
                        .as_deref()
                        .map(|f| format!("  [{f}]"))
                        .unwrap_or_default()
                ));
            }
            self.run.records.push(rec);
            self.run.quantized.push((*id, outcome.linear));
        }
        if release {
            self.release_finished(layer, ids)?;
        }
        Ok(())
    }

    /// Rows of one chunk of whole sequences.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> {
        let (n, cs) = (self.n_seq, self.chunk_sequences);
        (0..n.div_ceil(cs)).map(move |c| (c * cs, ((c + 1) * cs).min(n)))
    }

    /// A statistics collector for `layer` with this run's request and expert options.
    fn collector(&self, layer: usize) -> StatsCollector {
        StatsCollector::new(layer, self.method.stats_required())
            .with_all_experts(self.opts.expert_policy.needs_all_tokens())
            .with_routing_weights(self.opts.routing_weighted)
    }

    /// Stats of one site over all chunks, computing each chunk's input with `input`.
    fn collect(
        &self,
        layer: usize,
        site: Site,
        fp: Option<FpStream<'_>>,
        mut input: impl FnMut(usize, usize) -> Result<(Vec<f32>, usize)>,
    ) -> Result<HashMap<Site, LinearStats>> {
        let mut c = self.collector(layer);
        for (s0, s1) in self.chunks() {
            let (x, cols) = input(s0, s1)?;
            self.add_site(&mut c, site, fp, &x, s0, s1, cols)?;
        }
        c.finish(self.n_seq)
    }

    /// Adds one chunk's inputs of `site`, with the full-precision model's inputs at the same
    /// site when `fp` is given (asymmetric calibration).
    #[allow(clippy::too_many_arguments)]
    fn add_site(
        &self,
        c: &mut StatsCollector,
        site: Site,
        fp: Option<FpStream<'_>>,
        x: &[f32],
        s0: usize,
        s1: usize,
        cols: usize,
    ) -> Result<()> {
        let rows = (s1 - s0) * self.seq;
        match fp {
            Some(fp) => c.add_pair(site, x, &self.fp_site_input(fp, site, s0, s1)?, rows, cols),
            None => c.add(site, x, rows, cols),
        }
    }

    /// The full-precision model's input to `site` for sequences `s0..s1`: the full-precision
    /// layer run on the full-precision stream up to that site.
    fn fp_site_input(
        &self,
        fp: FpStream<'_>,
        site: Site,
        s0: usize,
        s1: usize,
    ) -> Result<Vec<f32>> {
        let (seq, layer) = (self.seq, fp.layer);
        let rows = (s1 - s0) * seq;
        let x = fp.h.rows(s0 * seq, s1 * seq);
        let attn_in = layer.attn_input(&x);
        if site == Site::AttnInput {
            return Ok(attn_in);
        }
        let core = layer.attn.core(&attn_in, s1 - s0, seq, &self.rope)?;
        if site == Site::OInput {
            return Ok(core);
        }
        let mut mid = x;
        add_in_place(&mut mid, &layer.attn.output(&core, rows)?);
        let mlp_in = layer.mlp_input(&mid);
        match (site, &layer.ffn) {
            (Site::MlpInput, _) => Ok(mlp_in),
            (Site::DownInput, FeedForward::Dense(mlp)) => Ok(mlp.activation(&mlp_in, rows)?),
            _ => Err(CalibError::InvalidOptions(format!(
                "full-precision targets are not collected at {site:?}"
            ))),
        }
    }

    /// True-sequential processing of a layer's attention: q/k/v, then `o_proj` on the quantized
    /// q/k/v's output; `h` becomes the residual stream after the quantized attention.
    fn sequential_attention(
        &mut self,
        layer: &mut DecoderLayer,
        h: &mut ActivationStore,
        fp: Option<FpStream<'_>>,
    ) -> Result<()> {
        let seq = self.seq;
        let li = layer.index;
        let id = |kind| LinearId {
            layer: li,
            kind,
            expert: None,
        };
        let rows = |s0: usize, s1: usize| (s0 * seq, s1 * seq);

        // [k, v, q] on input_layernorm(h).
        let hid = h.cols();
        let stats = self.collect(li, Site::AttnInput, fp, |s0, s1| {
            let (r0, r1) = rows(s0, s1);
            Ok((layer.attn_input(&h.rows(r0, r1)), hid))
        })?;
        let qkv = [id(LinearKind::K), id(LinearKind::V), id(LinearKind::Q)];
        let snapshot = self.norm_refit_snapshot(layer, &qkv);
        self.quantize_group(layer, &qkv, &stats)?;
        self.refit_norm(layer, ScaleProducer::InputNorm, snapshot, &stats)?;
        // Each group's statistics (Hessians of n² f32) go as soon as it is quantized: shadowing
        // would keep them to the end of the layer.
        drop(stats);

        // [o] on the attention output of the quantized q/k/v, kept for the residual update when
        // it fits and recomputed from `h` (not yet updated) when it does not.
        let qd = layer.attn.q_proj.out_features();
        let keep_core = self.keep_sub_block_inputs(qd);
        let mut core = Vec::new();
        {
            let mut coll = self.collector(li);
            for (s0, s1) in self.chunks() {
                let (r0, r1) = rows(s0, s1);
                let x = layer.attn_input(&h.rows(r0, r1));
                let c = layer.attn.core(&x, s1 - s0, seq, &self.rope)?;
                self.add_site(&mut coll, Site::OInput, fp, &c, s0, s1, qd)?;
                if keep_core {
                    core.extend_from_slice(&c);
                }
            }
            let stats = coll.finish(self.n_seq)?;
            self.quantize_group_owned(layer, &[id(LinearKind::O)], stats)?;
        }

        // Residual update with the quantized o, then [up, gate] on post_attention_layernorm.
        for (s0, s1) in self.chunks() {
            let (r0, r1) = rows(s0, s1);
            let mut x = h.rows(r0, r1);
            let o = if keep_core {
                layer.attn.output(&core[r0 * qd..r1 * qd], r1 - r0)?
            } else {
                let c = layer
                    .attn
                    .core(&layer.attn_input(&x), s1 - s0, seq, &self.rope)?;
                layer.attn.output(&c, r1 - r0)?
            };
            add_in_place(&mut x, &o);
            h.set_rows(r0, &x);
        }
        drop(core);
        self.release_finished(
            layer,
            &[LinearKind::Q, LinearKind::K, LinearKind::V, LinearKind::O].map(id),
        )?;
        Ok(())
    }

    /// True-sequential processing of a dense layer; `h` becomes the quantized layer's output.
    fn true_sequential_dense(
        &mut self,
        layer: &mut DecoderLayer,
        h: &mut ActivationStore,
        fp: Option<FpStream<'_>>,
    ) -> Result<()> {
        self.sequential_attention(layer, h, fp)?;
        let seq = self.seq;
        let li = layer.index;
        let id = |kind| LinearId {
            layer: li,
            kind,
            expert: None,
        };
        let rows = |s0: usize, s1: usize| (s0 * seq, s1 * seq);
        let hid = h.cols();
        let stats = self.collect(li, Site::MlpInput, fp, |s0, s1| {
            let (r0, r1) = rows(s0, s1);
            Ok((layer.mlp_input(&h.rows(r0, r1)), hid))
        })?;
        let gate_up = [id(LinearKind::Up), id(LinearKind::Gate)];
        let FeedForward::Dense(mlp) = &layer.ffn else {
            unreachable!("dense layer")
        };
        let inter = mlp.gate.out_features();
        // A streamed run (bounded memory) recomputes `down_proj`'s inputs unless told to keep
        // them, from gate/up's codes a block of rows at a time, with the same bits: their f32
        // weights go at once, and neither the inputs (400 MB for Qwen3-8B with 16 × 512
        // calibration tokens) nor gate/up (400 MB) are resident next to `down_proj`'s Hessian.
        let codes_ok = self.streamed() && self.opts.norm_refit.is_none();
        let keep_act = match self.opts.sub_block_inputs {
            SubBlockInputs::Auto if codes_ok => false,
            _ => self.keep_sub_block_inputs(inter),
        };
        let from_codes = !keep_act && codes_ok;
        let snapshot = self.norm_refit_snapshot(layer, &gate_up);
        self.quantize_group_then(layer, &gate_up, GroupStats::Shared(&stats), from_codes)?;
        self.refit_norm(layer, ScaleProducer::PostAttentionNorm, snapshot, &stats)?;
        drop(stats);

        // [down] on the activation of the quantized gate/up, kept for the output when it fits
        // and recomputed when it does not.
        let mut act = Vec::new();
        {
            let mut coll = self.collector(li);
            for (s0, s1) in self.chunks() {
                let (r0, r1) = rows(s0, s1);
                let x = layer.mlp_input(&h.rows(r0, r1));
                let a = self.down_inputs(layer, &x, r1 - r0, from_codes)?;
                self.add_site(&mut coll, Site::DownInput, fp, &a, s0, s1, inter)?;
                if keep_act {
                    act.extend_from_slice(&a);
                }
            }
            let stats = coll.finish(self.n_seq)?;
            if keep_act {
                // `down_proj`'s inputs are kept: gate/up are not run again.
                self.release_finished(layer, &[id(LinearKind::Gate), id(LinearKind::Up)])?;
            }
            self.quantize_group_owned(layer, &[id(LinearKind::Down)], stats)?;
        }
        let FeedForward::Dense(mlp) = &layer.ffn else {
            unreachable!("dense layer")
        };
        for (s0, s1) in self.chunks() {
            let (r0, r1) = rows(s0, s1);
            let mut x = h.rows(r0, r1);
            let y = if keep_act {
                mlp.down.apply(&act[r0 * inter..r1 * inter], r1 - r0)?
            } else {
                let a = self.down_inputs(layer, &layer.mlp_input(&x), r1 - r0, from_codes)?;
                mlp.down.apply(&a, r1 - r0)?
            };
            add_in_place(&mut x, &y);
            h.set_rows(r0, &x);
        }
        Ok(())
    }

    /// True-sequential processing of an MoE layer, the dense reference's four groups with every
    /// expert in the last two: the attention as in a dense layer, then every expert's gate/up
    /// from the tokens the router sends it after the quantized attention, then every expert's
    /// `down_proj` on the activations of its quantized gate/up. `h` becomes the quantized
    /// layer's output.
    fn true_sequential_moe(
        &mut self,
        layer: &mut DecoderLayer,
        h: &mut ActivationStore,
        fp: Option<FpStream<'_>>,
    ) -> Result<()> {
        self.sequential_attention(layer, h, fp)?;
        if let (Some(damp), Some(fp)) = (self.opts.router_refit, fp) {
            self.refit_router(layer, h, fp, damp)?;
        }
        let (seq, li) = (self.seq, layer.index);
        let ids = layer.linear_ids();
        let experts_of = |kinds: &[LinearKind]| -> Vec<LinearId> {
            ids.iter()
                .filter(|i| i.expert.is_some() && kinds.contains(&i.kind))
                .copied()
                .collect()
        };

        // Gate/up of every expert on its routed rows of post_attention_layernorm(h).
        let stats = self.expert_stats(layer, h, fp, ExpertStage::GateUp)?;
        self.record_expert_tokens(layer, &stats);
        let gate_up = experts_of(&[LinearKind::Gate, LinearKind::Up]);
        let snapshot = self.norm_refit_snapshot(layer, &gate_up);
        self.quantize_group(layer, &gate_up, &stats)?;
        self.refit_norm(layer, ScaleProducer::PostAttentionNorm, snapshot, &stats)?;
        drop(stats);

        // Down of every expert on the activations of its quantized gate/up.
        let stats = self.expert_stats(layer, h, fp, ExpertStage::Down)?;
        self.quantize_group_owned(layer, &experts_of(&[LinearKind::Down]), stats)?;

        let FeedForward::Moe(moe) = &layer.ffn else {
            unreachable!("MoE layer")
        };
        for (s0, s1) in self.chunks() {
            let (r0, r1) = (s0 * seq, s1 * seq);
            let mut x = h.rows(r0, r1);
            let y = moe.forward(&layer.mlp_input(&x), r1 - r0, li, &mut NoObserver)?;
            add_in_place(&mut x, &y);
            h.set_rows(r0, &x);
        }
        Ok(())
    }

    /// Refits the (full-precision) MoE router of `layer` to the quantized stream: its logits on
    /// the quantized model's MLP inputs `X̃` (after the quantized attention) are fitted by least
    /// squares to the full-precision model's, `W·X`, so that the quantized model routes tokens
    /// as the full-precision one does. The solution is asymmetric calibration's target
    /// `W + W·D·H⁻¹` ([`qwen3_quant_core::asymmetric`]) with relative dampening `damp`, which
    /// also pulls it towards `W`. Logged as a `router-refit` transform with the logits' squared
    /// error before and after.
    fn refit_router(
        &mut self,
        layer: &mut DecoderLayer,
        h: &ActivationStore,
        fp: FpStream<'_>,
        damp: f64,
    ) -> Result<()> {
        let t0 = Instant::now();
        let (seq, li) = (self.seq, layer.index);
        let FeedForward::Moe(moe) = &layer.ffn else {
            return Ok(());
        };
        let (experts, n) = (moe.router.out_features(), moe.router.in_features());
        let w = moe.router.dense_view().into_owned();
        let request = qwen3_quant_core::StatsRequest {
            hessian: true,
            channel_stats: false,
        };
        let mut coll = StatsCollector::new(li, request);
        let mut baseline = 0.0f64;
        let mut agree = 0usize;
        let mut tokens = 0usize;
        for (s0, s1) in self.chunks() {
            let rows = (s1 - s0) * seq;
            let xq = layer.mlp_input(&h.rows(s0 * seq, s1 * seq));
            let xf = self.fp_site_input(fp, Site::MlpInput, s0, s1)?;
            let (lq, lf) = (moe.router.apply(&xq, rows)?, moe.router.apply(&xf, rows)?);
            baseline += lq
                .iter()
                .zip(&lf)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
            agree += same_top_k(&lq, &lf, experts, moe.top_k);
            tokens += rows;
            coll.add_pair(Site::MlpInput, &xq, &xf, rows, n)?;
        }
        let stats = coll.finish(self.n_seq)?;
        let st = stats.get(&Site::MlpInput);
        let (Some(hs), Some(d)) = (
            st.and_then(|s| s.hessian.as_ref()),
            st.and_then(|s| s.cross.as_ref()),
        ) else {
            return Ok(());
        };
        let agreement = agree as f64 / tokens.max(1) as f64;
        // A damped Gram matrix of real activations is positive definite; should it not be,
        // the router stays as it is.
        let refit = qwen3_quant_core::asymmetric::asymmetric_target(
            &w,
            experts,
            n,
            &hs.data,
            &d.data,
            1.0,
            damp as f32,
        );
        let (loss, fallback) = match refit {
            Ok(v) => {
                // The logits' squared error of V from the sums already collected:
                // ‖V·X̃ − W·X‖² = tr(V H Vᵀ) − 2 tr(V M Wᵀ) + const, M = Σ x̃ xᵀ = (H + D)ᵀ.
                let quad = |v: &[f32]| -> f64 {
                    let mut acc = 0.0f64;
                    for e in 0..experts {
                        let (ve, we) = (&v[e * n..(e + 1) * n], &w[e * n..(e + 1) * n]);
                        for i in 0..n {
                            let (mut hv, mut mw) = (0.0f64, 0.0f64);
                            for j in 0..n {
                                hv += hs.data[i * n + j] as f64 * ve[j] as f64;
                                mw +=
                                    (hs.data[j * n + i] + d.data[j * n + i]) as f64 * we[j] as f64;
                            }
                            acc += ve[i] as f64 * (hv - 2.0 * mw);
                        }
                    }
                    acc
                };
                let loss = baseline + quad(&v) - quad(&w);
                let FeedForward::Moe(moe) = &mut layer.ffn else {
                    unreachable!("MoE layer")
                };
                moe.router = LinearWeight::dense(experts, n, v)?;
                (loss, None)
            }
            Err(e) => (
                baseline,
                Some(format!("no fit ({e}): the router is unchanged")),
            ),
        };
        if self.opts.progress {
            self.log(format!(
                "layer {li:>3}  router refit  logit error {baseline:.5e} -> {loss:.5e}  \
                 top-k as full precision before {:.2}%",
                100.0 * agreement
            ));
        }
        self.run.transforms.push(TransformLog {
            layer: li,
            transform: "router-refit".into(),
            kind: "weight".into(),
            target: "mlp.gate".into(),
            ratio: Some(agreement),
            clip: None,
            loss,
            baseline_loss: baseline,
            fallback,
            seconds: t0.elapsed().as_secs_f64(),
        });
        Ok(())
    }

    /// Records each expert's routed calibration tokens of an MoE `layer` from its gate/up
    /// statistics, unless the layer's counts are already in (a transform stage counted them).
    fn record_expert_tokens(&mut self, layer: &DecoderLayer, stats: &HashMap<Site, LinearStats>) {
        let li = layer.index;
        let counted = self.run.expert_tokens.iter().any(|(l, _)| *l == li);
        if let (FeedForward::Moe(m), false) = (&layer.ffn, counted) {
            let counts = (0..m.experts.len())
                .map(|e| stats.get(&Site::ExpertInput(e)).map_or(0, |s| s.tokens))
                .collect();
            self.run.expert_tokens.push((li, counts));
        }
    }

    /// The statistics of one stage of an MoE layer's experts over every calibration window,
    /// with the layer as it is now (its router and the linears already quantized).
    fn expert_stats(
        &self,
        layer: &DecoderLayer,
        h: &ActivationStore,
        fp: Option<FpStream<'_>>,
        stage: ExpertStage,
    ) -> Result<HashMap<Site, LinearStats>> {
        let FeedForward::Moe(moe) = &layer.ffn else {
            return Err(CalibError::InvalidOptions(format!(
                "layer {} has no experts",
                layer.index
            )));
        };
        let mut coll = self.collector(layer.index);
        for (s0, s1) in self.chunks() {
            let x = layer.mlp_input(&h.rows(s0 * self.seq, s1 * self.seq));
            self.pass_experts(&mut coll, moe, fp, &x, s0, s1, stage)?;
        }
        coll.finish(self.n_seq)
    }

    /// One chunk of an MoE block's expert calibration: the routing of the quantized stream's
    /// MLP input `x`, and the expert sites of `stage`, paired with the full-precision stream's
    /// when there is one (an expert's pair taken at the tokens the quantized stream routes to
    /// it, through the full-precision expert's gate/up for `down_proj`).
    #[allow(clippy::too_many_arguments)]
    fn pass_experts(
        &self,
        coll: &mut StatsCollector,
        moe: &MoeBlock,
        fp: Option<FpStream<'_>>,
        x: &[f32],
        s0: usize,
        s1: usize,
        stage: ExpertStage,
    ) -> Result<()> {
        let (rows, li) = ((s1 - s0) * self.seq, coll.layer());
        let keep: fn(Site) -> bool = match stage {
            ExpertStage::GateUp => |s| matches!(s, Site::ExpertInput(_) | Site::ExpertInputAll(_)),
            ExpertStage::Down => {
                |s| matches!(s, Site::ExpertDownInput(_) | Site::ExpertDownInputAll(_))
            }
        };
        let run = |obs: &mut dyn Observer| -> Result<()> {
            let mut only = OnlySites { inner: obs, keep };
            match stage {
                ExpertStage::GateUp => moe.observe_inputs(x, rows, li, &mut only).map(drop),
                ExpertStage::Down => moe.forward(x, rows, li, &mut only).map(drop),
            }
            .map_err(CalibError::from)
        };
        match fp {
            None => run(coll),
            Some(fp) => {
                let full = SiteRecorder::holding(
                    Site::MlpInput,
                    self.fp_site_input(fp, Site::MlpInput, s0, s1)?,
                );
                let mut paired = PairedCollector::new(coll, &full, fp.layer);
                paired.set_routing(moe.route(x, rows)?);
                run(&mut paired)?;
                paired.finish()
            }
        }
    }

    /// The full-precision weights of `ids`, kept for [`Self::refit_norm`] when the run refits
    /// norms and the method collects Hessians; empty otherwise.
    fn norm_refit_snapshot(
        &self,
        layer: &DecoderLayer,
        ids: &[LinearId],
    ) -> Vec<(LinearId, Vec<f32>)> {
        if self.opts.norm_refit.is_none() || !self.method.stats_required().hessian {
            return Vec::new();
        }
        ids.iter()
            .filter_map(|id| {
                let w = layer.linear(id.kind, id.expert)?;
                Some((*id, w.dense_view().into_owned()))
            })
            .collect()
    }

    /// Refits `producer`'s weight to the quantized linears in `snapshot` (their full-precision
    /// weights), each weighed by the Hessian of its own inputs (an MoE expert's routed tokens);
    /// linears without statistics are left out. Logged as a `norm-refit` transform.
    fn refit_norm(
        &mut self,
        layer: &mut DecoderLayer,
        producer: ScaleProducer,
        snapshot: Vec<(LinearId, Vec<f32>)>,
        stats: &HashMap<Site, LinearStats>,
    ) -> Result<()> {
        let Some(ridge) = self.opts.norm_refit else {
            return Ok(());
        };
        if snapshot.is_empty() {
            return Ok(());
        }
        let t0 = Instant::now();
        let mut quantized = Vec::new();
        for (id, _) in &snapshot {
            let w = layer
                .linear(id.kind, id.expert)
                .ok_or_else(|| CalibError::InvalidOptions(format!("{id} missing")))?;
            quantized.push((w.out_features(), w.dense_view().into_owned()));
        }
        let n = layer.input_layernorm.len();
        let terms: Vec<RefitTerm<'_>> = snapshot
            .iter()
            .zip(&quantized)
            .filter_map(|((id, w), (out, q))| {
                let st = stats.get(&site_of(id)).filter(|s| s.tokens > 0)?;
                let h = st.hessian.as_ref().filter(|h| h.dim == n)?;
                Some(RefitTerm {
                    weight: w,
                    quantized: q,
                    out_features: *out,
                    gram: &h.data,
                    cross: st
                        .cross
                        .as_ref()
                        .filter(|c| c.dim == n)
                        .map(|c| &c.data[..]),
                })
            })
            .collect();
        let fit = fit_norm_scale(&terms, n, ridge);
        drop(terms);
        let target = match producer {
            ScaleProducer::InputNorm => "input_layernorm",
            _ => "post_attention_layernorm",
        };
        let (loss, baseline_loss, fallback) = match &fit {
            Some(f) => {
                layer.rescale_norm(producer, &f.scale)?;
                (f.error, f.baseline_error, None)
            }
            None => (0.0, 0.0, Some("no fit: the norm is unchanged".to_string())),
        };
        let mean_change = fit
            .as_ref()
            .map(|f| f.scale.iter().map(|v| (v - 1.0).abs() as f64).sum::<f64>() / n.max(1) as f64);
        if self.opts.progress {
            self.log(format!(
                "layer {:>3}  norm refit {:<20} output error {:.5} -> {:.5}  mean |s-1| {:.4}",
                layer.index,
                target,
                baseline_loss,
                loss,
                mean_change.unwrap_or(0.0)
            ));
        }
        self.run.transforms.push(TransformLog {
            layer: layer.index,
            transform: "norm-refit".into(),
            kind: "scale".into(),
            target: target.into(),
            ratio: mean_change,
            clip: None,
            loss,
            baseline_loss,
            fallback,
            seconds: t0.elapsed().as_secs_f64(),
        });
        Ok(())
    }

    /// In a streamed run, frees the f32 weights of finished linears that the rest of the layer
    /// does not run again: the store keeps them as codes, so they need not stay resident until
    /// the layer is saved (the peak is then one layer, not one layer and its codes).
    fn release_finished(&self, layer: &mut DecoderLayer, ids: &[LinearId]) -> Result<()> {
        if self.streamed() {
            for id in ids {
                layer.release_linear(id)?;
            }
        }
        Ok(())
    }

    /// Whether finished layers leave memory as they are saved (a streamed run).
    fn streamed(&self) -> bool {
        !self.opts.keep_finished_layers
    }

    /// `down_proj`'s inputs in a dense `layer` for the MLP input `x` (`m` rows): through its
    /// weights, or [`Self::activation_from_codes`].
    fn down_inputs(
        &self,
        layer: &DecoderLayer,
        x: &[f32],
        m: usize,
        from_codes: bool,
    ) -> Result<Vec<f32>> {
        match &layer.ffn {
            _ if from_codes => self.activation_from_codes(layer.index, x, m),
            FeedForward::Dense(mlp) => Ok(mlp.activation(x, m)?),
            FeedForward::Moe(_) => Err(CalibError::InvalidOptions(format!(
                "layer {}: not a dense MLP",
                layer.index
            ))),
        }
    }

    /// `silu(gate(x))·up(x)` of layer `li` from the codes of its quantized gate/up (whose f32
    /// weights a streamed run has released), dequantized [`CODE_ROWS`] rows at a time: the same
    /// bits as the fake-quantized layer's product
    /// ([`qwen3_quant_kernels::dense::gemm_swiglu_by_rows`]) with 2 · 512 rows of f32 weights
    /// resident instead of both whole weights (400 MB for Qwen3-8B).
    fn activation_from_codes(&self, li: usize, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let codes = |kind| {
            self.run
                .quantized
                .iter()
                .rev()
                .find(|(id, _)| id.layer == li && id.kind == kind && id.expert.is_none())
                .map(|(_, q)| q)
                .ok_or_else(|| {
                    CalibError::InvalidOptions(format!("layer {li}: {kind:?} has no codes yet"))
                })
        };
        let (gate, up) = (codes(LinearKind::Gate)?, codes(LinearKind::Up)?);
        let (n, k) = (gate.out_features(), gate.in_features());
        if up.out_features() != n || up.in_features() != k || x.len() != m * k {
            return Err(CalibError::InvalidOptions(format!(
                "layer {li}: gate/up codes do not match the MLP input"
            )));
        }
        let mut y = vec![0f32; m * n];
        qwen3_quant_kernels::dense::gemm_swiglu_by_rows(
            qwen3_quant_kernels::dense::Lhs::new(x, m, k),
            n,
            CODE_ROWS,
            |r0, g, u| {
                gate.dequantize_rows_into(r0, g)?;
                up.dequantize_rows_into(r0, u)
            },
            &mut y,
            n,
        )
        .map_err(qwen3_quant_core::MethodError::from)?;
        Ok(y)
    }

    /// Whether true-sequential calibration keeps a sub-block's inputs (the attention output or
    /// `down_proj`'s inputs, `width` f32 per token) between collecting their statistics and
    /// computing the layer's output. Kept when they fit in half of the memory budget or of the
    /// memory available now (saving one forward of that sub-block); otherwise each chunk's are
    /// recomputed from the same inputs by the same kernels, which gives the same values.
    fn keep_sub_block_inputs(&self, width: usize) -> bool {
        match self.opts.sub_block_inputs {
            SubBlockInputs::Keep => true,
            SubBlockInputs::Recompute => false,
            SubBlockInputs::Auto => {
                let bytes = (self.n_seq * self.seq * width * 4) as u64;
                self.opts
                    .memory_budget
                    .or_else(available_memory_bytes)
                    .is_none_or(|avail| bytes <= avail / 2)
            }
        }
    }

    /// Runs the pipeline's transforms on `layer` (whose inputs are `h`) and records what they
    /// chose; returns the layer's full-precision outputs when those feed the next layer.
    fn transform_stage(
        &mut self,
        pipeline: &Pipeline<'_>,
        layer: &mut DecoderLayer,
        h: &ActivationStore,
    ) -> Result<Option<ActivationStore>> {
        self.annotations.clear();
        if pipeline.transforms().is_empty() {
            return Ok(None);
        }
        let li = layer.index;
        let n_experts = match &layer.ffn {
            FeedForward::Moe(m) => Some(m.experts.len()),
            FeedForward::Dense(_) => None,
        };
        let keep = self.propagation == Propagation::FullPrecision;
        let keep_blocks = self.block_outputs_fit(h.cols());
        // The context borrows the tables while the driver keeps logging.
        let rope = self.rope.clone();
        let (mut ctx, out) = TransformContext::capture(
            layer,
            h,
            &rope,
            self.n_seq,
            self.seq,
            self.chunk_sequences,
            pipeline.transform_needs(),
            self.opts.expert_policy,
            keep,
            keep_blocks,
        )?;
        if let Some(e) = n_experts {
            self.run.expert_tokens.push((li, ctx.expert_tokens(e)));
        }
        for t in pipeline.transforms() {
            let t0 = Instant::now();
            let records: Vec<TransformRecord> = t.transform_layer(&mut ctx)?;
            let secs = t0.elapsed().as_secs_f64();
            for r in records {
                self.annotate(&r);
                if self.opts.progress {
                    self.log(format!(
                        "layer {:>3}  {:<6} {:<5} {:<44} {}{}loss {:.6e} (baseline {:.6e})  {:.1} s{}",
                        r.layer,
                        t.name(),
                        r.kind,
                        r.target,
                        r.ratio
                            .map(|v| format!("ratio {v:.2}  "))
                            .unwrap_or_default(),
                        r.clip.map(|v| format!("clip {v:.3}  ")).unwrap_or_default(),
                        r.loss,
                        r.baseline_loss,
                        r.seconds,
                        r.fallback
                            .as_deref()
                            .map(|f| format!("  [{f}]"))
                            .unwrap_or_default()
                    ));
                }
                self.run.transforms.push(TransformLog {
                    layer: r.layer,
                    transform: t.name().to_string(),
                    kind: r.kind.to_string(),
                    target: r.target,
                    ratio: r.ratio,
                    clip: r.clip,
                    loss: r.loss,
                    baseline_loss: r.baseline_loss,
                    fallback: r.fallback,
                    seconds: r.seconds,
                });
            }
            if self.opts.progress {
                self.log(format!("layer {li:>3}  {} search {secs:.1} s", t.name()));
            }
        }
        Ok(out)
    }

    /// Whether two more f32 `[tokens, hidden]` buffers (the blocks' outputs a transform's
    /// scoring reuses instead of running the layer again) fit in half of the memory budget or
    /// of the memory available now.
    fn block_outputs_fit(&self, hidden: usize) -> bool {
        let bytes = 2 * self.n_seq * self.seq * hidden * 4;
        self.opts
            .memory_budget
            .or_else(available_memory_bytes)
            .is_none_or(|avail| (bytes as u64) <= avail / 2)
    }

    fn annotate(&mut self, r: &TransformRecord) {
        for id in &r.linears {
            let a = self.annotations.entry(*id).or_default();
            match r.kind {
                "clip" => a.2 = r.clip,
                _ => {
                    a.0 = r.ratio;
                    a.1 = Some(r.loss);
                }
            }
        }
    }

    /// Runs the (quantized) layer over every calibration window, in place.
    fn forward_all(&self, layer: &DecoderLayer, h: &mut ActivationStore) -> Result<()> {
        let seq = self.seq;
        for (s0, s1) in self.chunks() {
            let mut x = h.rows(s0 * seq, s1 * seq);
            layer.forward(&mut x, s1 - s0, seq, &self.rope, &mut NoObserver)?;
            h.set_rows(s0 * seq, &x);
        }
        Ok(())
    }

    /// One full-precision pass collecting every site's statistics, quantize all linears, then
    /// propagate the quantized or the full-precision output.
    ///
    /// With `fp` (asymmetric calibration), every input is paired with the full-precision
    /// model's at the same tokens, and `fp`'s stream advances through the full-precision layer.
    fn one_pass(
        &mut self,
        layer: &mut DecoderLayer,
        h: &mut ActivationStore,
        mut fp: Option<(&DecoderLayer, &mut ActivationStore)>,
    ) -> Result<()> {
        let seq = self.seq;
        let li = layer.index;
        let keep_input = self.propagation == Propagation::Quantized;
        let input = if keep_input { Some(h.clone()) } else { None };
        let mut coll = self.collector(li);
        let chunks: Vec<(usize, usize)> = self.chunks().collect();
        for &(s0, s1) in &chunks {
            let (r0, r1) = (s0 * seq, s1 * seq);
            let mut x = h.rows(r0, r1);
            match fp.as_mut() {
                None => layer.forward(&mut x, s1 - s0, seq, &self.rope, &mut coll)?,
                Some((fp_layer, h_fp)) => {
                    let mut full = SiteRecorder::default();
                    let mut xf = h_fp.rows(r0, r1);
                    fp_layer.forward(&mut xf, s1 - s0, seq, &self.rope, &mut full)?;
                    h_fp.set_rows(r0, &xf);
                    let mut paired = PairedCollector::new(&mut coll, &full, fp_layer);
                    layer.forward(&mut x, s1 - s0, seq, &self.rope, &mut paired)?;
                    paired.finish()?;
                }
            }
            h.set_rows(r0, &x);
        }
        let stats = coll.finish(self.n_seq)?;
        self.record_expert_tokens(layer, &stats);
        let ids = layer.linear_ids();
        let reads = |k: LinearKind| ids.iter().filter(move |i| i.kind == k).copied();
        let attn: Vec<LinearId> = [LinearKind::Q, LinearKind::K, LinearKind::V]
            .into_iter()
            .flat_map(reads)
            .collect();
        let ffn: Vec<LinearId> = [LinearKind::Gate, LinearKind::Up]
            .into_iter()
            .flat_map(reads)
            .collect();
        let attn_snapshot = self.norm_refit_snapshot(layer, &attn);
        let ffn_snapshot = self.norm_refit_snapshot(layer, &ffn);
        self.quantize_group(layer, &ids, &stats)?;
        self.refit_norm(layer, ScaleProducer::InputNorm, attn_snapshot, &stats)?;
        self.refit_norm(
            layer,
            ScaleProducer::PostAttentionNorm,
            ffn_snapshot,
            &stats,
        )?;
        if let Some(input) = input {
            *h = input;
            for &(s0, s1) in &chunks {
                let mut x = h.rows(s0 * seq, s1 * seq);
                layer.forward(&mut x, s1 - s0, seq, &self.rope, &mut NoObserver)?;
                h.set_rows(s0 * seq, &x);
            }
        }
        Ok(())
    }
}

/// Quantizes every decoder linear of `model` in place with `method`, calibrating on `calib`
/// (which may be `None` for methods that need no statistics, such as RTN).
///
/// Embeddings, norms, the MoE router and `lm_head` stay in full precision.
pub fn quantize_model(
    model: &mut Qwen3Model,
    calib: Option<&CalibrationSet>,
    method: &dyn Quantizer,
    opts: &DriverOptions,
) -> Result<QuantizationRun> {
    quantize_model_with(model, calib, &Pipeline::new(method), opts)
}

/// [`quantize_model`] for a whole [`Pipeline`]: transforms, then the per-linear quantizer.
pub fn quantize_model_with(
    model: &mut Qwen3Model,
    calib: Option<&CalibrationSet>,
    pipeline: &Pipeline<'_>,
    opts: &DriverOptions,
) -> Result<QuantizationRun> {
    run_layers(
        model,
        calib,
        pipeline,
        opts,
        &mut |_, i| {
            Err(CalibError::InvalidOptions(format!(
                "layer {i} is not loaded"
            )))
        },
        None,
        None,
    )
}

/// Like [`quantize_model`], but streams the decoder layers from a memory-mapped checkpoint: only
/// the layer being quantized exists in f32. With [`WeightMode::Packed`] every finished layer is
/// kept as packed codes, so the peak is one f32 layer plus the packed model and the activations.
///
/// Returns the quantized model (embeddings, norms and `lm_head` in f32) and the run.
pub fn quantize_checkpoint(
    ckpt: &Checkpoint,
    calib: Option<&CalibrationSet>,
    method: &dyn Quantizer,
    opts: &DriverOptions,
) -> Result<(Qwen3Model, QuantizationRun)> {
    quantize_checkpoint_with(ckpt, calib, &Pipeline::new(method), opts)
}

/// [`quantize_checkpoint`] for a whole [`Pipeline`].
pub fn quantize_checkpoint_with(
    ckpt: &Checkpoint,
    calib: Option<&CalibrationSet>,
    pipeline: &Pipeline<'_>,
    opts: &DriverOptions,
) -> Result<(Qwen3Model, QuantizationRun)> {
    quantize_checkpoint_inner(ckpt, calib, pipeline, opts, None)
}

/// [`quantize_checkpoint_with`] that makes every finished layer durable through `store`, and
/// first continues from what `store` kept of an interrupted run of the same job: the finished
/// layers are taken as they were saved (not recomputed) and the run goes on from the next layer's
/// saved calibration inputs, so its results are bit-identical to an uninterrupted run's.
///
/// The caller is responsible for the store belonging to the same job (model, calibration set,
/// options and program version); the formats crate's `ResumeDir` checks a fingerprint of them.
///
/// # Errors
/// As [`quantize_checkpoint_with`], plus the store's.
pub fn quantize_checkpoint_resumable(
    ckpt: &Checkpoint,
    calib: Option<&CalibrationSet>,
    pipeline: &Pipeline<'_>,
    opts: &DriverOptions,
    store: &mut dyn LayerStore,
) -> Result<(Qwen3Model, QuantizationRun)> {
    quantize_checkpoint_inner(ckpt, calib, pipeline, opts, Some(store))
}

/// Quantizes a checkpoint of any size with one decoder layer resident at a time: layers are
/// widened to f32 from the memory map one by one (their mapped pages released afterwards),
/// handed to `store` when finished and dropped. The embedding table is never widened (the
/// calibration windows' rows are read from the map) and `lm_head` is not loaded, so the peak is
/// about one f32 layer, the calibration activations and the method's temporaries, whatever the
/// model's size. As with [`quantize_checkpoint_resumable`], what `store` holds of an interrupted
/// run of the same job is continued.
///
/// Returns the model's ends (final norm only: [`Qwen3Model::ends_loaded`] is false, and no
/// decoder layer) and the run, whose `quantized` list is empty: the output is written from the
/// store (the formats crate's `write_checkpoint_streamed`).
///
/// # Errors
/// As [`quantize_checkpoint_resumable`]; [`CalibError::InvalidOptions`] with a residual rotation,
/// which changes the embeddings and `lm_head` and so needs them in memory.
pub fn quantize_checkpoint_streamed(
    ckpt: &Checkpoint,
    calib: Option<&CalibrationSet>,
    pipeline: &Pipeline<'_>,
    opts: &DriverOptions,
    store: &mut dyn LayerStore,
) -> Result<(Qwen3Model, QuantizationRun)> {
    if pipeline.rotation().is_some() {
        return Err(CalibError::InvalidOptions(
            "a residual rotation rewrites the embeddings and lm_head, which a streamed run does \
             not hold: keep the layers in memory"
                .into(),
        ));
    }
    let opts = DriverOptions {
        keep_finished_layers: false,
        ..opts.clone()
    };
    let config = ckpt.config().map_err(qwen3_quant_model::ModelError::from)?;
    let mut model = Qwen3Model::skeleton_without_ends(ckpt, config)?;
    let embed = |ids: &[u32]| -> Result<Vec<f32>> {
        Ok(ckpt
            .tensor("model.embed_tokens.weight")
            .and_then(|t| t.rows_to_f32(ids))
            .map_err(qwen3_quant_model::ModelError::from)?)
    };
    let run = run_layers(
        &mut model,
        calib,
        pipeline,
        &opts,
        &mut |m, i| {
            let layer = Qwen3Model::load_layer(ckpt, &m.config, i)?;
            ckpt.release_prefix(&format!("model.layers.{i}."));
            m.layers.push(layer);
            Ok(())
        },
        Some(store),
        Some(&embed),
    )?;
    Ok((model, run))
}

fn quantize_checkpoint_inner(
    ckpt: &Checkpoint,
    calib: Option<&CalibrationSet>,
    pipeline: &Pipeline<'_>,
    opts: &DriverOptions,
    store: Option<&mut dyn LayerStore>,
) -> Result<(Qwen3Model, QuantizationRun)> {
    let config = ckpt.config().map_err(qwen3_quant_model::ModelError::from)?;
    let mut model = Qwen3Model::skeleton(ckpt, config)?;
    let run = run_layers(
        &mut model,
        calib,
        pipeline,
        opts,
        &mut |m, i| {
            let layer = Qwen3Model::load_layer(ckpt, &m.config, i)?;
            // The f32 copy is made: the layer's file pages need not stay resident.
            ckpt.release_prefix(&format!("model.layers.{i}."));
            m.layers.push(layer);
            Ok(())
        },
        store,
        None,
    )?;
    Ok((model, run))
}

/// Stands in for the quantizer of a transforms-only pipeline; never asked to quantize.
struct NoQuantizer;

impl Quantizer for NoQuantizer {
    fn name(&self) -> &'static str {
        "none"
    }
    fn stats_required(&self) -> qwen3_quant_core::StatsRequest {
        qwen3_quant_core::StatsRequest::default()
    }
    fn propagation(&self) -> Propagation {
        Propagation::FullPrecision
    }
    fn true_sequential(&self) -> bool {
        false
    }
    fn quantize_linear(
        &self,
        input: LinearInput<'_>,
        _: &LinearStats,
    ) -> std::result::Result<qwen3_quant_core::QuantOutcome, qwen3_quant_core::MethodError> {
        Err(qwen3_quant_core::MethodError::Context(format!(
            "{} reached the quantizer of a transforms-only pipeline",
            input.id
        )))
    }
}

/// Where a layer's entries start in the run's logs.
struct LogMarks {
    quantized: usize,
    records: usize,
    transforms: usize,
}

impl LogMarks {
    fn of(run: &QuantizationRun) -> Self {
        LogMarks {
            quantized: run.quantized.len(),
            records: run.records.len(),
            transforms: run.transforms.len(),
        }
    }

    /// What the store keeps of `layer`: the log entries added since these marks.
    fn finished<'a>(
        &self,
        run: &'a QuantizationRun,
        layer: &'a DecoderLayer,
        activations: Option<&'a ActivationStore>,
        fp_activations: Option<&'a ActivationStore>,
    ) -> FinishedLayer<'a> {
        FinishedLayer {
            layer,
            quantized: &run.quantized[self.quantized..],
            records: &run.records[self.records..],
            transforms: &run.transforms[self.transforms..],
            expert_tokens: run
                .expert_tokens
                .iter()
                .find(|(l, _)| *l == layer.index)
                .map(|(_, c)| c.as_slice()),
            activations,
            fp_activations,
        }
    }
}

/// Puts the restored layers `0..k` into `model` and their log entries into `run`.
fn install_restored(
    model: &mut Qwen3Model,
    run: &mut QuantizationRun,
    layers: Vec<crate::resume::RestoredLayer>,
    stream: bool,
) -> Result<()> {
    let n_layers = model.config.num_hidden_layers;
    if layers.len() > n_layers {
        return Err(CalibError::Resume(format!(
            "{} saved layers for a model of {n_layers}",
            layers.len()
        )));
    }
    for (i, r) in layers.into_iter().enumerate() {
        let index = r.layer.as_ref().map_or(r.index, |l| l.index);
        if index != i || r.index != i {
            return Err(CalibError::Resume(format!(
                "saved layer {index} found where layer {i} was expected"
            )));
        }
        if let Some(counts) = r.expert_tokens {
            run.expert_tokens.push((i, counts));
        }
        run.records.extend(r.records);
        run.transforms.extend(r.transforms);
        if stream {
            continue;
        }
        run.quantized.extend(r.quantized);
        let Some(layer) = r.layer else {
            return Err(CalibError::Resume(format!(
                "layer {i} came back without its weights"
            )));
        };
        match i.cmp(&model.layers.len()) {
            std::cmp::Ordering::Less => model.layers[i] = layer,
            std::cmp::Ordering::Equal => model.layers.push(layer),
            std::cmp::Ordering::Greater => {
                return Err(CalibError::Resume(format!(
                    "layer {i} restored before layer {}",
                    model.layers.len()
                )))
            }
        }
    }
    Ok(())
}

/// The saved inputs must be those this run would hold: same shape and element type.
fn check_restored_activations(
    h: &ActivationStore,
    rows: usize,
    hidden: usize,
    opts: &DriverOptions,
) -> Result<()> {
    let dtype = match h {
        ActivationStore::F32 { .. } => ActivationDtype::F32,
        ActivationStore::Bf16 { .. } => ActivationDtype::Bf16,
    };
    let elem = if dtype == ActivationDtype::F32 { 4 } else { 2 };
    if h.cols() != hidden || h.bytes() != rows * hidden * elem || dtype != opts.activations {
        return Err(CalibError::Resume(format!(
            "saved calibration inputs are {:?} of {} bytes × {} columns; this run needs {:?} \
             {rows} × {hidden}",
            dtype,
            h.bytes(),
            h.cols(),
            opts.activations
        )));
    }
    Ok(())
}

/// Embeds token ids without the model's embedding table (read from the checkpoint instead).
type EmbedRows<'a> = dyn Fn(&[u32]) -> Result<Vec<f32>> + 'a;

/// Fetches decoder layer `i` into `model.layers` when it is not there yet.
type LayerFetch<'a> = dyn FnMut(&mut Qwen3Model, usize) -> Result<()> + 'a;

fn run_layers(
    model: &mut Qwen3Model,
    calib: Option<&CalibrationSet>,
    pipeline: &Pipeline<'_>,
    opts: &DriverOptions,
    fetch: &mut LayerFetch<'_>,
    mut store: Option<&mut dyn LayerStore>,
    embed_rows: Option<&EmbedRows<'_>>,
) -> Result<QuantizationRun> {
    let start = Instant::now();
    // Streaming: the current layer is the only one in `model.layers`.
    let stream = !opts.keep_finished_layers;
    if stream && (store.is_none() || !model.layers.is_empty()) {
        return Err(CalibError::InvalidOptions(
            "dropping finished layers needs a layer store and a model streamed from a checkpoint"
                .into(),
        ));
    }
    let slot = |li: usize| if stream { 0 } else { li };
    let method = pipeline.quantizer().unwrap_or(&NoQuantizer);
    let quantize = pipeline.quantizer().is_some();
    let needs_data = pipeline.quantizer_needs_stats() || !pipeline.transforms().is_empty();
    let n_layers = model.config.num_hidden_layers;
    let pb = if opts.progress {
        let pb = ProgressBar::new(n_layers as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} layers (ETA {eta})",
        ) {
            pb.set_style(style);
        }
        pb.set_message(pipeline.name());
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut run = QuantizationRun {
        quantized: Vec::new(),
        records: Vec::new(),
        seconds: 0.0,
        calib_tokens: 0,
        expert_tokens: Vec::new(),
        transforms: Vec::new(),
    };
    let restore = match opts.weight_mode {
        _ if stream => Restore::LogOnly,
        WeightMode::Packed => Restore::Packed,
        WeightMode::FakeQuant => Restore::Dense,
    };
    let restored = match store.as_deref_mut() {
        Some(s) => s.load(&model.config, restore)?,
        None => None,
    };
    let (first, restored_h, restored_fp) = match restored {
        Some(r) => {
            let first = r.layers.len();
            install_restored(model, &mut run, r.layers, stream)?;
            (first, r.activations, r.fp_activations)
        }
        None => (0, None, None),
    };
    if first > 0 && opts.progress {
        eprintln!("resuming after layer {} of {n_layers}", first - 1);
    }
    pb.inc(first as u64);
    let propagation = pipeline.propagation();
    let rotation = match pipeline.rotation() {
        Some(rot) => {
            let d = model.config.hidden_size;
            let r = Rotation::new(d, rot.matrix(d)?)?;
            model.rotate_ends(&r)?;
            Some(r)
        }
        None => None,
    };
    // Fetches layer `li` if needed and moves it to the rotated basis.
    let mut prepare = |model: &mut Qwen3Model, li: usize| -> Result<()> {
        if slot(li) >= model.layers.len() {
            fetch(model, li)?;
        }
        if let Some(r) = &rotation {
            model.layers[slot(li)].fold_norms_and_rotate(r)?;
        }
        Ok(())
    };
    // After a layer is safe in the store: in streaming mode, drop it and its quantized weights.
    let release = |model: &mut Qwen3Model, run: &mut QuantizationRun, marks: &LogMarks| {
        if stream {
            model.layers.clear();
            run.quantized.truncate(marks.quantized);
        }
    };

    if !needs_data {
        let mut d = Driver {
            method,
            propagation,
            annotations: HashMap::new(),
            opts,
            n_seq: 0,
            seq: 0,
            chunk_sequences: 1,
            rope: Rope::new(2, 1.0, 0),
            run,
            pb,
        };
        for li in first..n_layers {
            prepare(model, li)?;
            let marks = LogMarks::of(&d.run);
            let layer = &mut model.layers[slot(li)];
            if quantize {
                // One linear at a time, each freed once quantized: nothing runs it again.
                for id in layer.linear_ids() {
                    d.quantize_group_then(layer, &[id], GroupStats::Shared(&HashMap::new()), true)?;
                }
            }
            if let Some(s) = store.as_deref_mut() {
                s.save(marks.finished(&d.run, &model.layers[slot(li)], None, None))?;
            }
            release(model, &mut d.run, &marks);
            d.pb.inc(1);
        }
        d.pb.finish_and_clear();
        d.run.seconds = start.elapsed().as_secs_f64();
        return Ok(d.run);
    }

    let calib = calib.filter(|c| !c.is_empty()).ok_or_else(|| {
        CalibError::InvalidOptions(format!("{} needs calibration data", pipeline.name()))
    })?;
    let (n_seq, seq) = (calib.len(), calib.seq_len);
    let mut d = Driver {
        method,
        propagation,
        annotations: HashMap::new(),
        opts,
        n_seq,
        seq,
        chunk_sequences: chunk_sequences(
            opts.chunk_sequences,
            seq,
            model.config.intermediate_size.max(model.config.q_dim()),
        ),
        rope: model.rope(seq),
        run,
        pb,
    };
    d.run.calib_tokens = calib.tokens();
    let true_seq = method.true_sequential() && propagation == Propagation::Quantized;
    check_activation_memory(
        n_seq,
        seq,
        model.config.hidden_size,
        opts.activations,
        LayerWorkingSet::of(
            &model.config,
            method.stats_required(),
            true_seq,
            method.full_precision_targets(),
            opts.sub_block_inputs == SubBlockInputs::Keep,
        ),
        opts.memory_budget.or_else(available_memory_bytes),
    )?;
    // Layer-0 inputs of every window, captured once (or the saved inputs of the first layer
    // left to do).
    let mut h = match restored_h {
        Some(h) if first > 0 => {
            check_restored_activations(&h, n_seq * seq, model.config.hidden_size, opts)?;
            h
        }
        None if first > 0 => {
            return Err(CalibError::Resume(format!(
                "{first} finished layers but no saved calibration inputs for layer {first}"
            )))
        }
        _ => {
            let ids = calib.flat(0, n_seq);
            let x = match embed_rows {
                Some(rows) => rows(&ids)?,
                None => model.embed(&ids)?,
            };
            ActivationStore::new(x, model.config.hidden_size, opts.activations)
        }
    };
    // Asymmetric calibration: the full-precision model's own activations, run alongside (or
    // those saved with the last finished layer).
    let mut h_fp = match (
        quantize && true_seq && method.full_precision_targets(),
        first,
    ) {
        (false, _) => None,
        (true, 0) => Some(h.clone()),
        (true, _) => {
            let fp = restored_fp.ok_or_else(|| {
                CalibError::Resume(format!(
                    "{first} finished layers but no saved full-precision inputs for layer \
                     {first} (asymmetric calibration)"
                ))
            })?;
            check_restored_activations(&fp, n_seq * seq, model.config.hidden_size, opts)?;
            Some(fp)
        }
    };
    for li in first..n_layers {
        prepare(model, li)?;
        let marks = LogMarks::of(&d.run);
        let layer = &mut model.layers[slot(li)];
        let fp_out = d.transform_stage(pipeline, layer, &h)?;
        let fp_layer = h_fp.as_ref().map(|_| layer.clone());
        // Whether the full-precision stream already went through this layer (one-pass layers).
        let mut fp_advanced = false;
        if !quantize {
            // Transforms only: the layer keeps full-precision weights.
        } else if pipeline.quantizer_needs_stats() {
            if true_seq {
                let fp = fp_layer
                    .as_ref()
                    .zip(h_fp.as_ref())
                    .map(|(layer, h)| FpStream { layer, h });
                match layer.ffn {
                    FeedForward::Dense(_) => d.true_sequential_dense(layer, &mut h, fp)?,
                    FeedForward::Moe(_) => d.true_sequential_moe(layer, &mut h, fp)?,
                }
            } else {
                fp_advanced = true;
                d.one_pass(layer, &mut h, fp_layer.as_ref().zip(h_fp.as_mut()))?;
            }
        } else {
            let ids = layer.linear_ids();
            d.quantize_group(layer, &ids, &HashMap::new())?;
            if propagation == Propagation::Quantized {
                d.forward_all(layer, &mut h)?;
            }
        }
        if let Some(out) = fp_out {
            h = out;
        }
        if let (Some(fp_layer), Some(h_fp), false) = (&fp_layer, h_fp.as_mut(), fp_advanced) {
            d.forward_all(fp_layer, h_fp)?;
        }
        if let Some(s) = store.as_deref_mut() {
            s.save(marks.finished(&d.run, &model.layers[slot(li)], Some(&h), h_fp.as_ref()))?;
        }
        release(model, &mut d.run, &marks);
        d.pb.inc(1);
    }
    d.pb.finish_and_clear();
    d.run.seconds = start.elapsed().as_secs_f64();
    Ok(d.run)
}

/// Bytes of memory available to this process: `MemAvailable` from `/proc/meminfo`, capped by a
/// cgroup v2 limit (`memory.max − memory.current`) when one is set; `None` where neither exists.
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let cgroup = match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        _ => None,
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Tokens whose top-`k` experts (as a set) are the same under the logits `a` and `b`
/// (`[tokens, experts]`).
fn same_top_k(a: &[f32], b: &[f32], experts: usize, k: usize) -> usize {
    let top = |l: &[f32]| {
        let mut order: Vec<usize> = (0..experts).collect();
        rank_experts(l, &mut order);
        order.truncate(k);
        order.sort_unstable();
        order
    };
    a.chunks_exact(experts.max(1))
        .zip(b.chunks_exact(experts.max(1)))
        .filter(|(x, y)| top(x) == top(y))
        .count()
}

/// Which expert linears a calibration pass of an MoE block collects statistics for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExpertStage {
    /// Every expert's gate/up (their routed inputs).
    GateUp,
    /// Every expert's `down_proj` (the activations of its gate/up).
    Down,
}

/// The full-precision model next to the quantized one: the layer before quantization and its
/// inputs (asymmetric calibration, [`qwen3_quant_core::Quantizer::full_precision_targets`]).
#[derive(Clone, Copy)]
struct FpStream<'a> {
    layer: &'a DecoderLayer,
    h: &'a ActivationStore,
}

/// Memory one layer needs besides the calibration activations, estimated from the shapes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct LayerWorkingSet {
    /// Bytes independent of the number of samples: the widest layer in f32 and, for Hessian
    /// methods, the Hessian, f64 Cholesky factor and f32 inverse factor of the widest linear
    /// (`10·n²`: `4·n²` of f32 Hessian, and at most `4·n²` of the factors' triangles, since
    /// the f64 factor's finished columns are released as the f32 one fills; rounded up for the
    /// pages the triangles share) with two f32 copies of that linear (GPTQ's working copy, and
    /// its permuted copy while act-order makes it).
    fixed: f64,
    /// Bytes per calibration token: the MLP activations true-sequential methods keep for
    /// `down_proj` (`4·intermediate`).
    per_token: f64,
    /// Activation buffers beyond the inputs and outputs, in the activations' dtype: the
    /// full-precision stream of asymmetric calibration (1), else 0.
    extra_streams: f64,
}

impl LayerWorkingSet {
    fn of(
        config: &qwen3_quant_io::ModelConfig,
        stats: qwen3_quant_core::StatsRequest,
        true_seq: bool,
        full_precision_targets: bool,
        keeps_sub_block_inputs: bool,
    ) -> Self {
        let (h, qd, kvd) = (
            config.hidden_size as f64,
            config.q_dim() as f64,
            config.kv_dim() as f64,
        );
        let attn = h * qd + 2.0 * h * kvd + qd * h;
        let (mut layer, mut widest, mut inter) = (0.0f64, h.max(qd), 0.0f64);
        for li in 0..config.num_hidden_layers {
            let (mlp, i) = match (&config.moe, config.is_moe_layer(li)) {
                (Some(m), true) => {
                    let (mi, e) = (m.moe_intermediate_size as f64, m.num_experts as f64);
                    (e * 3.0 * h * mi + h * e, mi)
                }
                _ => {
                    let i = config.intermediate_size as f64;
                    (3.0 * h * i, i)
                }
            };
            layer = layer.max(attn + mlp);
            widest = widest.max(i);
            inter = inter.max(i);
        }
        let mut ws = LayerWorkingSet {
            fixed: 4.0 * layer,
            ..Default::default()
        };
        if stats.hessian {
            ws.fixed += 10.0 * widest * widest + 2.0 * 4.0 * h * widest;
            // `down_proj`'s inputs, unless the driver may recompute them when they do not fit.
            if true_seq && keeps_sub_block_inputs {
                ws.per_token = 4.0 * inter;
            }
        }
        if full_precision_targets && true_seq {
            // The full-precision copy of the layer and its own activation stream.
            ws.fixed += 4.0 * layer;
            ws.extra_streams = 1.0;
        }
        ws
    }
}

/// Fails before anything is allocated when the calibration activations (the layer inputs, a
/// second buffer for the outputs, and the f32 embedding they start from) plus one layer's
/// working set ([`LayerWorkingSet`]) exceed `available`, proposing the number of samples that
/// would fit and bf16 activations.
fn check_activation_memory(
    n_seq: usize,
    seq: usize,
    hidden: usize,
    dtype: ActivationDtype,
    layer: LayerWorkingSet,
    available: Option<u64>,
) -> Result<()> {
    let Some(available) = available else {
        return Ok(());
    };
    let elem = match dtype {
        ActivationDtype::F32 => 4.0,
        ActivationDtype::Bf16 => 2.0,
    };
    let per_sample = |elem: f64| {
        seq as f64 * (hidden as f64 * ((2.0 + layer.extra_streams) * elem + 4.0) + layer.per_token)
    };
    let needed = layer.fixed + n_seq as f64 * per_sample(elem);
    // Leave a tenth for everything else.
    let usable = available as f64 * 0.9;
    if needed <= usable {
        return Ok(());
    }
    let room = (usable - layer.fixed).max(0.0);
    let fits = (room / per_sample(elem)).floor() as usize;
    let mut advice = if fits == 0 {
        format!(
            "one layer alone needs about {:.0} MB; use a machine with more memory",
            layer.fixed / 1e6
        )
    } else {
        format!("use at most {fits} calibration samples of {seq} tokens")
    };
    if dtype == ActivationDtype::F32 {
        let fits_bf16 = (room / per_sample(2.0)).floor() as usize;
        if fits_bf16 > 0 {
            advice += &format!(
                ", or bf16 activations (--bf16-activations), with which {} samples fit",
                fits_bf16.min(n_seq)
            );
        }
    }
    Err(CalibError::OutOfMemory {
        needed_mb: needed / 1e6,
        available_mb: available as f64 / 1e6,
        advice,
    })
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    #[test]
    fn activation_memory_is_checked_before_allocating() {
        // 128 × 2048 tokens of a 4096-wide model: 12 GB in f32, 8 GB in bf16.
        let (n, seq, hidden) = (128, 2048, 4096);
        let none = LayerWorkingSet::default();
        let check =
            |dtype, available| check_activation_memory(n, seq, hidden, dtype, none, available);
        assert!(check(ActivationDtype::F32, Some(16 << 30)).is_ok());
        let e = check(ActivationDtype::F32, Some(8 << 30)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CalibError::OutOfMemory { .. }), "{e:?}");
        // 0.9 × 8 GiB / (2048 · 4096 · 12 B) = 76.8 samples; bf16 (8 B per value): 115.2.
        assert!(msg.contains("at most 76 calibration samples"), "{msg}");
        assert!(
            msg.contains("--bf16-activations") && msg.contains("115 samples fit"),
            "{msg}"
        );
        let e = check(ActivationDtype::Bf16, Some(4 << 30)).unwrap_err();
        assert!(!e.to_string().contains("--bf16-activations"), "{e}");
        // Unknown memory: no check.
        assert!(check(ActivationDtype::F32, None).is_ok());
    }

    /// Qwen3-8B's shapes: GPTQ's working set of one layer (the f32 layer, `down_proj`'s
    /// 12288² Hessian with its factors) is counted, RTN-free statistics are not.
    #[test]
    fn one_layers_working_set_is_counted() {
        let mut c = qwen3_quant_io::ModelConfig::from_json(
            r#"{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096,
                "intermediate_size": 12288, "num_attention_heads": 32,
                "num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 36,
                "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
                "max_position_embeddings": 40960, "tie_word_embeddings": false}"#,
        )
        .unwrap();
        c.num_hidden_layers = 2;
        let hess = qwen3_quant_core::StatsRequest {
            hessian: true,
            channel_stats: false,
        };
        let gptq = LayerWorkingSet::of(&c, hess, true, false, true);
        // Layer: 4096·(4096 + 2·1024 + 4096) + 3·4096·12288 weights = 0.77 GB in f32;
        // 10·12288² = 1.51 GB of Hessian and factors; 2 × 201 MB copies of down_proj.
        assert!(
            (gptq.fixed / 1e9 - (0.7718 + 1.5099 + 0.4027)).abs() < 0.001,
            "{gptq:?}"
        );
        assert_eq!(gptq.per_token, 4.0 * 12288.0);
        // A driver that may recompute `down_proj`'s inputs does not reserve them.
        let recomputing = LayerWorkingSet::of(&c, hess, true, false, false);
        assert_eq!(
            (recomputing.fixed, recomputing.per_token),
            (gptq.fixed, 0.0)
        );
        let awq = LayerWorkingSet::of(
            &c,
            qwen3_quant_core::StatsRequest::default(),
            false,
            false,
            true,
        );
        assert!((awq.fixed / 1e9 - 0.7734).abs() < 0.01 && awq.per_token == 0.0);
        // GPTAQ: a second f32 layer and a second activation stream.
        let gptaq = LayerWorkingSet::of(&c, hess, true, true, true);
        assert!((gptaq.fixed - gptq.fixed - 4.0 * 192_937_984.0).abs() < 1.0);
        assert_eq!(gptaq.extra_streams, 1.0);
        // Per 512-token sample: 512·(4096·12 + 4·12288) B = 50.3 MB in f32 (41.9 MB with bf16
        // activations); fixed 2684.35 MB. Room for 3.5 f32 samples after the 10% margin:
        let check = |bytes: u64| {
            check_activation_memory(16, 512, 4096, ActivationDtype::F32, gptq, Some(bytes))
        };
        assert!(check(6 << 30).is_ok());
        let e = check(3_178_350_000).unwrap_err().to_string();
        assert!(e.contains("at most 3 calibration samples"), "{e}");
        assert!(e.contains("with which 4 samples fit"), "{e}");
        let e = check(2 << 30).unwrap_err().to_string();
        assert!(e.contains("one layer alone needs about 2684 MB"), "{e}");
        assert!(!e.contains("bf16"), "{e}");
    }

    #[test]
    fn chunks_are_capped_by_their_widest_buffer() {
        // qwen3-micro (intermediate 1536) and Qwen3-8B (12288) at 1024 tokens: as requested.
        assert_eq!(chunk_sequences(8, 1024, 1536), 8);
        assert_eq!(chunk_sequences(8, 1024, 12288), 8);
        // Qwen3-8B at 2048 tokens: 100 MB per window and buffer, 5 windows in 512 MiB.
        assert_eq!(chunk_sequences(8, 2048, 12288), 5);
        // Never fewer than one window, never more than requested.
        assert_eq!(chunk_sequences(8, 1 << 20, 1 << 16), 1);
        assert_eq!(chunk_sequences(0, 16, 16), 1);
    }

    #[test]
    fn this_machine_reports_its_memory() {
        if cfg!(target_os = "linux") {
            let m = available_memory_bytes().expect("Linux has /proc/meminfo");
            assert!(m > 1 << 20, "{m}");
        }
    }
}
