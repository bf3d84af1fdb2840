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
use qwen3_quant_core::{
    Hessian, LinearId, LinearInput, LinearKind, LinearStats, PackedWeight, Propagation,
    QuantizedWeight, Quantizer,
};
use qwen3_quant_io::Checkpoint;
use qwen3_quant_model::layer::add_in_place;
use qwen3_quant_model::{
    DecoderLayer, FeedForward, LinearWeight, NoObserver, Qwen3Model, Rope, Site,
};
use serde::Serialize;

use crate::activations::{ActivationDtype, ActivationStore};
use crate::data::CalibrationSet;
use crate::error::{CalibError, Result};
use crate::stats::StatsCollector;

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
pub struct DriverOptions {
    /// Calibration windows pushed through a layer at once (bounds temporary memory).
    pub chunk_sequences: usize,
    /// Show a progress bar and per-linear log lines on stderr.
    pub progress: bool,
    /// How quantized weights replace the originals.
    pub weight_mode: WeightMode,
    /// Element type of the calibration activation buffer.
    pub activations: ActivationDtype,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            chunk_sequences: 8,
            progress: false,
            weight_mode: WeightMode::FakeQuant,
            activations: ActivationDtype::F32,
        }
    }
}

/// One line of the per-linear log (like GPTQModel's table).
#[derive(Clone, Debug, Serialize)]
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
    /// Set when the linear was handled by a fallback (e.g. an expert with no calibration tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
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
}

impl QuantizationRun {
    /// Average storage bits per quantized weight.
    pub fn bits_per_weight(&self) -> f64 {
        let (mut bits, mut n) = (0.0f64, 0usize);
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

/// Peak resident set of this process in MB (`VmHWM`), where the OS reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The input site of a linear.
fn site_of(id: &LinearId) -> Site {
    match (id.kind, id.expert) {
        (LinearKind::Q | LinearKind::K | LinearKind::V, _) => Site::AttnInput,
        (LinearKind::O, _) => Site::OInput,
        (LinearKind::Gate | LinearKind::Up, None) => Site::MlpInput,
        (LinearKind::Down, None) => Site::DownInput,
        (LinearKind::Gate | LinearKind::Up, Some(e)) => Site::ExpertInput(e),
        (LinearKind::Down, Some(e)) => Site::ExpertDownInput(e),
    }
}

fn module_name(id: &LinearId) -> String {
    let s = id.to_string();
    // `layers.{i}.` prefix removed: the layer has its own column.
    s.split_once('.')
        .and_then(|(_, rest)| rest.split_once('.'))
        .map(|(_, m)| m.to_string())
        .unwrap_or(s)
}

struct Driver<'a> {
    method: &'a dyn Quantizer,
    opts: &'a DriverOptions,
    n_seq: usize,
    seq: usize,
    rope: Rope,
    run: QuantizationRun,
    pb: ProgressBar,
}

impl Driver<'_> {
    /// Quantizes `ids` of `layer` with `stats` and swaps the results into the layer.
    fn quantize_group(
        &mut self,
        layer: &mut DecoderLayer,
        ids: &[LinearId],
        stats: &HashMap<Site, LinearStats>,
    ) -> Result<()> {
        for id in ids {
            let weight = layer
                .linear(id.kind, id.expert)
                .ok_or_else(|| CalibError::InvalidOptions(format!("{id} missing")))?;
            let (out_f, in_f) = (weight.out_features(), weight.in_features());
            let w = weight.to_dense();
            let site = site_of(id);
            let empty = LinearStats::default();
            let mut st = stats.get(&site).unwrap_or(&empty);
            let mut fallback = None;
            let substitute;
            let needs_stats =
                self.method.stats_required().hessian || self.method.stats_required().channel_stats;
            if needs_stats && st.tokens == 0 {
                // An expert no calibration token reached: an identity Hessian makes Hessian-based
                // methods reduce to plain rounding with the same grid (GPTQModel's RTN fail-safe).
                let mut h = Hessian::new(in_f);
                (0..in_f).for_each(|i| h.data[i * in_f + i] = 1.0);
                h.n_sequences = 2;
                substitute = LinearStats {
                    hessian: Some(h),
                    channels: None,
                    tokens: 0,
                };
                st = &substitute;
                fallback =
                    Some("no calibration tokens: identity statistics (RTN-equivalent)".to_string());
            }
            let t0 = Instant::now();
            let outcome = self
                .method
                .quantize_linear(
                    LinearInput {
                        id: *id,
                        weight: &w,
                        out_features: out_f,
                        in_features: in_f,
                    },
                    st,
                )
                .map_err(|e| e.with_id(*id))?;
            let seconds = t0.elapsed().as_secs_f64();
            let new_weight = match self.opts.weight_mode {
                WeightMode::FakeQuant => {
                    LinearWeight::dense(out_f, in_f, outcome.linear.dequantize())?
                }
                WeightMode::Packed => {
                    match outcome.linear.to_packed().map_err(|e| CalibError::Pack {
                        id: id.to_string(),
                        reason: e.to_string(),
                    })? {
                        PackedWeight::Affine(p) => LinearWeight::Packed(p),
                        PackedWeight::Binary(b) => LinearWeight::Binary(b),
                    }
                }
            };
            layer.replace_linear(id, new_weight)?;
            let rec = LinearRecord {
                layer: id.layer,
                module: module_name(id),
                loss: outcome.loss,
                damp: outcome.damp,
                seconds,
                tokens: st.tokens,
                bits_per_weight: outcome.linear.bits_per_weight(),
                fallback,
            };
            if self.opts.progress {
                self.pb.println(format!(
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
        Ok(())
    }

    /// Rows of one chunk of whole sequences.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> {
        let (n, cs) = (self.n_seq, self.opts.chunk_sequences.max(1));
        (0..n.div_ceil(cs)).map(move |c| (c * cs, ((c + 1) * cs).min(n)))
    }

    /// Stats of one site over all chunks, computing each chunk's input with `input`.
    fn collect(
        &self,
        layer: usize,
        site: Site,
        mut input: impl FnMut(usize, usize) -> Result<(Vec<f32>, usize)>,
    ) -> Result<HashMap<Site, LinearStats>> {
        let mut c = StatsCollector::new(layer, self.method.stats_required());
        for (s0, s1) in self.chunks() {
            let (x, cols) = input(s0, s1)?;
            c.add(site, &x, (s1 - s0) * self.seq, cols)?;
        }
        c.finish(self.n_seq)
    }

    /// True-sequential processing of a dense layer; `h` becomes the quantized layer's output.
    fn true_sequential_dense(
        &mut self,
        layer: &mut DecoderLayer,
        h: &mut ActivationStore,
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
        let stats = self.collect(li, Site::AttnInput, |s0, s1| {
            let (r0, r1) = rows(s0, s1);
            Ok((layer.attn_input(&h.rows(r0, r1)), hid))
        })?;
        self.quantize_group(
            layer,
            &[id(LinearKind::K), id(LinearKind::V), id(LinearKind::Q)],
            &stats,
        )?;

        // [o] on the attention output of the quantized q/k/v; keep it for the residual update.
        let qd = layer.attn.q_proj.out_features();
        let mut core = vec![0.0f32; self.n_seq * seq * qd];
        {
            let mut coll = StatsCollector::new(li, self.method.stats_required());
            for (s0, s1) in self.chunks() {
                let (r0, r1) = rows(s0, s1);
                let x = layer.attn_input(&h.rows(r0, r1));
                let c = layer.attn.core(&x, s1 - s0, seq, &self.rope)?;
                coll.add(Site::OInput, &c, r1 - r0, qd)?;
                core[r0 * qd..r1 * qd].copy_from_slice(&c);
            }
            let stats = coll.finish(self.n_seq)?;
            self.quantize_group(layer, &[id(LinearKind::O)], &stats)?;
        }

        // Residual update with the quantized o, then [up, gate] on post_attention_layernorm.
        for (s0, s1) in self.chunks() {
            let (r0, r1) = rows(s0, s1);
            let o = layer.attn.o_proj.apply(&core[r0 * qd..r1 * qd], r1 - r0)?;
            let mut x = h.rows(r0, r1);
            add_in_place(&mut x, &o);
            h.set_rows(r0, &x);
        }
        drop(core);
        let stats = self.collect(li, Site::MlpInput, |s0, s1| {
            let (r0, r1) = rows(s0, s1);
            Ok((layer.mlp_input(&h.rows(r0, r1)), hid))
        })?;
        self.quantize_group(layer, &[id(LinearKind::Up), id(LinearKind::Gate)], &stats)?;

        // [down] on the activation of the quantized gate/up, kept for the output.
        let FeedForward::Dense(mlp) = &layer.ffn else {
            unreachable!("dense layer")
        };
        let inter = mlp.gate.out_features();
        let mut act = vec![0.0f32; self.n_seq * seq * inter];
        {
            let mut coll = StatsCollector::new(li, self.method.stats_required());
            for (s0, s1) in self.chunks() {
                let (r0, r1) = rows(s0, s1);
                let x = layer.mlp_input(&h.rows(r0, r1));
                let a = mlp.activation(&x, r1 - r0)?;
                coll.add(Site::DownInput, &a, r1 - r0, inter)?;
                act[r0 * inter..r1 * inter].copy_from_slice(&a);
            }
            let stats = coll.finish(self.n_seq)?;
            self.quantize_group(layer, &[id(LinearKind::Down)], &stats)?;
        }
        let FeedForward::Dense(mlp) = &layer.ffn else {
            unreachable!("dense layer")
        };
        for (s0, s1) in self.chunks() {
            let (r0, r1) = rows(s0, s1);
            let y = mlp.down.apply(&act[r0 * inter..r1 * inter], r1 - r0)?;
            let mut x = h.rows(r0, r1);
            add_in_place(&mut x, &y);
            h.set_rows(r0, &x);
        }
        Ok(())
    }

    /// One full-precision pass collecting every site's statistics, quantize all linears, then
    /// propagate the quantized or the full-precision output.
    fn one_pass(&mut self, layer: &mut DecoderLayer, h: &mut ActivationStore) -> Result<()> {
        let seq = self.seq;
        let li = layer.index;
        let keep_input = self.method.propagation() == Propagation::Quantized;
        let input = if keep_input { Some(h.clone()) } else { None };
        let mut coll = StatsCollector::new(li, self.method.stats_required());
        let chunks: Vec<(usize, usize)> = self.chunks().collect();
        for &(s0, s1) in &chunks {
            let mut x = h.rows(s0 * seq, s1 * seq);
            layer.forward(&mut x, s1 - s0, seq, &self.rope, &mut coll)?;
            h.set_rows(s0 * seq, &x);
        }
        let stats = coll.finish(self.n_seq)?;
        if let FeedForward::Moe(m) = &layer.ffn {
            let counts = (0..m.experts.len())
                .map(|e| stats.get(&Site::ExpertInput(e)).map_or(0, |s| s.tokens))
                .collect();
            self.run.expert_tokens.push((li, counts));
        }
        let ids = layer.linear_ids();
        self.quantize_group(layer, &ids, &stats)?;
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
    run_layers(model, calib, method, opts, &mut |_, i| {
        Err(CalibError::InvalidOptions(format!(
            "layer {i} is not loaded"
        )))
    })
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
    let config = ckpt.config().map_err(qwen3_quant_model::ModelError::from)?;
    let mut model = Qwen3Model::skeleton(ckpt, config)?;
    let run = run_layers(&mut model, calib, method, opts, &mut |m, i| {
        let layer = Qwen3Model::load_layer(ckpt, &m.config, i)?;
        m.layers.push(layer);
        Ok(())
    })?;
    Ok((model, run))
}

/// Fetches decoder layer `i` into `model.layers` when it is not there yet.
type LayerFetch<'a> = dyn FnMut(&mut Qwen3Model, usize) -> Result<()> + 'a;

fn run_layers(
    model: &mut Qwen3Model,
    calib: Option<&CalibrationSet>,
    method: &dyn Quantizer,
    opts: &DriverOptions,
    fetch: &mut LayerFetch<'_>,
) -> Result<QuantizationRun> {
    let start = Instant::now();
    let req = method.stats_required();
    let needs_data = req.hessian || req.channel_stats;
    let n_layers = model.config.num_hidden_layers;
    let pb = if opts.progress {
        let pb = ProgressBar::new(n_layers as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} layers (ETA {eta})",
        ) {
            pb.set_style(style);
        }
        pb.set_message(method.name().to_string());
        pb
    } else {
        ProgressBar::hidden()
    };
    let run = QuantizationRun {
        quantized: Vec::new(),
        records: Vec::new(),
        seconds: 0.0,
        calib_tokens: 0,
        expert_tokens: Vec::new(),
    };

    if !needs_data {
        let mut d = Driver {
            method,
            opts,
            n_seq: 0,
            seq: 0,
            rope: Rope::new(2, 1.0, 0),
            run,
            pb,
        };
        for li in 0..n_layers {
            if li >= model.layers.len() {
                fetch(model, li)?;
            }
            let layer = &mut model.layers[li];
            let ids = layer.linear_ids();
            d.quantize_group(layer, &ids, &HashMap::new())?;
            d.pb.inc(1);
        }
        d.pb.finish_and_clear();
        d.run.seconds = start.elapsed().as_secs_f64();
        return Ok(d.run);
    }

    let calib = calib.filter(|c| !c.is_empty()).ok_or_else(|| {
        CalibError::InvalidOptions(format!("{} needs calibration data", method.name()))
    })?;
    let (n_seq, seq) = (calib.len(), calib.seq_len);
    let mut d = Driver {
        method,
        opts,
        n_seq,
        seq,
        rope: model.rope(seq),
        run,
        pb,
    };
    d.run.calib_tokens = calib.tokens();
    // Layer-0 inputs of every window, captured once.
    let mut h = ActivationStore::new(
        model.embed(&calib.flat(0, n_seq))?,
        model.config.hidden_size,
        opts.activations,
    );
    let true_seq = method.true_sequential() && method.propagation() == Propagation::Quantized;
    for li in 0..n_layers {
        if li >= model.layers.len() {
            fetch(model, li)?;
        }
        let layer = &mut model.layers[li];
        if true_seq && matches!(layer.ffn, FeedForward::Dense(_)) {
            d.true_sequential_dense(layer, &mut h)?;
        } else {
            d.one_pass(layer, &mut h)?;
        }
        d.pb.inc(1);
    }
    d.pb.finish_and_clear();
    d.run.seconds = start.elapsed().as_secs_f64();
    Ok(d.run)
}
