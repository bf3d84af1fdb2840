//! [`Quantize`]: one builder per method, run through the one sequential driver; and the
//! [`QuantizedModel`] it returns.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use qwen3_quant_calib::{
    quantize_checkpoint_with, quantize_model_with, DriverOptions, ExpertPolicy, Pipeline,
    QuantizationRun, WeightMode,
};
use qwen3_quant_core::{
    LayerTransform, LinearInput, LinearStats, MethodError, Propagation, QuantOutcome, Quantizer,
    StatsRequest,
};
use qwen3_quant_formats::{write_checkpoint, Format, MethodMeta, WriteOptions, WriteReport};
use qwen3_quant_io::{Checkpoint, ModelConfig};
use qwen3_quant_model::{ActQuantSummary, Tokenizer};

use crate::calibration::Calibration;
use crate::config::{AwqConfig, GptqConfig, RtnConfig, SmoothQuantConfig};
use crate::error::{Error, Result};
use crate::model_handle::Model;
use crate::progress::{NoProgress, ProgressEvent, ProgressSink, Stage};
use crate::Compute;

#[derive(Debug, Clone, PartialEq)]
enum Method {
    Rtn(RtnConfig),
    Gptq(GptqConfig),
    Awq(AwqConfig),
    AwqGptq(AwqConfig, GptqConfig),
    SmoothQuant(SmoothQuantConfig),
    Billm(qwen3_quant_billm::BillmConfig),
}

/// A quantization job: a method with its settings, the calibration data, how the result is
/// held, and where progress goes. Build it with the method's constructor, then [`Quantize::run`].
///
/// ```
/// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
/// use qwen3_quant::{Calibration, GptqConfig, Model, Quantize};
/// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
/// let q = Quantize::gptq(GptqConfig::default().with_bits(4).with_group_size(Some(128)).with_act_order(true))
///     .calibration(Calibration::docs().windows(4, 256))
///     .run(&model)?;
/// assert_eq!(q.linears(), 8 * 7);
/// assert!(q.bits_per_weight() > 4.0 && q.bits_per_weight() < 4.5);
/// assert_eq!(q.pipeline(), "gptq");
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
#[derive(Clone)]
pub struct Quantize<'p> {
    method: Method,
    calibration: Option<Calibration>,
    packed: bool,
    expert_policy: ExpertPolicy,
    compute: Compute,
    rotation: Option<u64>,
    progress: &'p dyn ProgressSink,
}

impl std::fmt::Debug for Quantize<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quantize")
            .field("method", &self.method)
            .field("calibration", &self.calibration)
            .field("packed", &self.packed)
            .field("compute", &self.compute)
            .finish()
    }
}

impl Quantize<'static> {
    fn new(method: Method) -> Self {
        Quantize {
            method,
            calibration: None,
            packed: false,
            expert_policy: ExpertPolicy::default(),
            compute: Compute::F32,
            rotation: None,
            progress: &NoProgress,
        }
    }

    /// Round-to-nearest (no calibration).
    ///
    /// ```
    /// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
    /// use qwen3_quant::{Model, Quantize, RtnConfig};
    /// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
    /// let q = Quantize::rtn(RtnConfig::default().with_bits(8)).run(&model)?;
    /// let (before, after) = (model.perplexity("docs", 256, Some(2))?, q.perplexity("docs", 256, Some(2))?);
    /// assert!((after.ppl / before.ppl - 1.0).abs() < 0.01);
    /// # Ok::<(), qwen3_quant::Error>(())
    /// ```
    pub fn rtn(config: RtnConfig) -> Self {
        Self::new(Method::Rtn(config))
    }

    /// GPTQ (needs calibration).
    pub fn gptq(config: GptqConfig) -> Self {
        Self::new(Method::Gptq(config))
    }

    /// AWQ: the scale and clip search, then RTN with the same scheme (needs calibration).
    ///
    /// ```
    /// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
    /// use qwen3_quant::{AwqConfig, Calibration, Model, Quantize};
    /// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
    /// let fast = AwqConfig::default().with_grid(4).with_clip(false); // a coarse search
    /// let q = Quantize::awq(fast).calibration(Calibration::docs().windows(2, 128)).run(&model)?;
    /// assert_eq!(q.pipeline(), "awq+rtn");
    /// assert!(!q.run().transforms.is_empty());
    /// # Ok::<(), qwen3_quant::Error>(())
    /// ```
    pub fn awq(config: AwqConfig) -> Self {
        Self::new(Method::Awq(config))
    }

    /// AWQ's scales and clipping, then GPTQ on the transformed weights, in one driver pass.
    ///
    /// ```
    /// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
    /// use qwen3_quant::{AwqConfig, Calibration, GptqConfig, Model, Quantize};
    /// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
    /// let awq = AwqConfig::default().with_grid(4).with_clip(false);
    /// let q = Quantize::awq_then_gptq(awq, GptqConfig::default())
    ///     .calibration(Calibration::docs().windows(2, 128))
    ///     .run(&model)?;
    /// assert_eq!(q.pipeline(), "awq+gptq");
    /// # Ok::<(), qwen3_quant::Error>(())
    /// ```
    pub fn awq_then_gptq(awq: AwqConfig, gptq: GptqConfig) -> Self {
        Self::new(Method::AwqGptq(awq, gptq))
    }

    /// SmoothQuant: migration (unless `smooth` is off), per-channel symmetric weights, then
    /// per-token activation quantization of every decoder linear (integer products where the
    /// weights allow it).
    ///
    /// ```
    /// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
    /// use qwen3_quant::{Calibration, Model, Quantize, SmoothQuantConfig};
    /// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
    /// let q = Quantize::smoothquant(SmoothQuantConfig::default()) // W8A8, alpha 0.5
    ///     .calibration(Calibration::docs().windows(2, 128))
    ///     .run(&model)?;
    /// assert_eq!(q.act_bits(), Some(8));
    /// assert!(q.activations().unwrap().to_string().contains("A8"));
    /// # Ok::<(), qwen3_quant::Error>(())
    /// ```
    pub fn smoothquant(config: SmoothQuantConfig) -> Self {
        Self::new(Method::SmoothQuant(config))
    }

    /// BiLLM binarization (needs calibration). `Default` of the config is the study's command.
    pub fn billm(config: qwen3_quant_billm::BillmConfig) -> Self {
        Self::new(Method::Billm(config))
    }
}

impl<'p> Quantize<'p> {
    /// The calibration data (default for methods that need it: [`Calibration::default`], the
    /// study's 128 × 2048 tokens of C4; RTN and unsmoothed SmoothQuant need none).
    pub fn calibration(mut self, calibration: Calibration) -> Self {
        self.calibration = Some(calibration);
        self
    }

    /// Keep the quantized linears as packed low-bit codes run by the CPU kernels (default:
    /// dequantized f32 weights, exactly what the reference code evaluates).
    pub fn packed(mut self, packed: bool) -> Self {
        self.packed = packed;
        self
    }

    /// How MoE experts that few calibration tokens reach get their statistics (default: routed
    /// statistics, plain rounding for an expert no token reaches). See [`ExpertPolicy`].
    ///
    /// ```
    /// use qwen3_quant::{ExpertPolicy, GptqConfig, Quantize};
    /// let q = Quantize::gptq(GptqConfig::default())
    ///     .expert_policy(ExpertPolicy::ThresholdThenAllTokens { min_tokens: 512 });
    /// # let _ = q;
    /// ```
    pub fn expert_policy(mut self, policy: ExpertPolicy) -> Self {
        self.expert_policy = policy;
        self
    }

    /// The arithmetic of the calibration forwards and AWQ's search (default [`Compute::F32`],
    /// exact). [`Compute::Bf16`] runs their products with bf16 operands and f32 accumulation
    /// (AVX-512-BF16 where the CPU has it): about 1.7× faster for AWQ on qwen3-micro, perplexities
    /// within 0.2%. The mode is process-wide while [`Quantize::run`] runs and is set back to f32
    /// after it, so evaluation stays exact.
    ///
    /// ```
    /// use qwen3_quant::{AwqConfig, Compute, Quantize};
    /// let q = Quantize::awq(AwqConfig::default()).compute(Compute::Bf16);
    /// # let _ = q;
    /// ```
    pub fn compute(mut self, compute: Compute) -> Self {
        self.compute = compute;
        self
    }

    /// Rotates the residual stream with a randomized Hadamard matrix (random signs from `seed`)
    /// before the method runs: the norms are folded into the linears, the embeddings and every
    /// linear move to the rotated basis, the head is untied (QuaRot / SpinQuant style; see
    /// [`crate::rotate`]). Exact in full precision, no run-time cost; it spreads outlier channels
    /// so that low-bit grids fit the weights better.
    ///
    /// ```
    /// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
    /// use qwen3_quant::{Model, Quantize, RtnConfig};
    /// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
    /// let q = Quantize::rtn(RtnConfig::default().with_bits(8)).rotate(0).run(&model)?;
    /// assert_eq!(q.pipeline(), "hadamard+rtn");
    /// let (before, after) = (model.perplexity("docs", 128, Some(1))?, q.perplexity("docs", 128, Some(1))?);
    /// assert!((after.ppl / before.ppl - 1.0).abs() < 0.01);
    /// # Ok::<(), qwen3_quant::Error>(())
    /// ```
    pub fn rotate(mut self, seed: u64) -> Self {
        self.rotation = Some(seed);
        self
    }

    /// Where progress goes: one [`Stage::Quantize`] step per linear.
    ///
    /// ```
    /// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use qwen3_quant::{Model, ProgressEvent, Quantize, RtnConfig};
    /// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
    /// let last = AtomicU64::new(0);
    /// let sink = |e: &ProgressEvent<'_>| last.store(e.done, Ordering::Relaxed);
    /// Quantize::rtn(RtnConfig::default()).progress(&sink).run(&model)?;
    /// assert_eq!(last.load(Ordering::Relaxed), 56);
    /// # Ok::<(), qwen3_quant::Error>(())
    /// ```
    pub fn progress<'q>(self, sink: &'q dyn ProgressSink) -> Quantize<'q> {
        Quantize {
            method: self.method,
            calibration: self.calibration,
            packed: self.packed,
            expert_policy: self.expert_policy,
            compute: self.compute,
            rotation: self.rotation,
            progress: sink,
        }
    }

    /// Weight bits of the method.
    pub fn bits(&self) -> u8 {
        match &self.method {
            Method::Rtn(c) => c.bits,
            Method::Gptq(c) | Method::AwqGptq(_, c) => c.bits,
            Method::Awq(c) => c.bits,
            Method::SmoothQuant(c) => c.weight_bits,
            Method::Billm(_) => 1,
        }
    }

    /// Activation bits (SmoothQuant's settings), `None` for weight-only methods.
    pub fn act_bits(&self) -> Option<u8> {
        match &self.method {
            Method::SmoothQuant(c) => c.act_bits,
            _ => None,
        }
    }

    /// Group size of the weights (`None`: per channel or not grouped).
    pub fn group_size(&self) -> Option<usize> {
        match &self.method {
            Method::Rtn(c) => c.group_size,
            Method::Gptq(c) | Method::AwqGptq(_, c) => c.group_size,
            Method::Awq(c) => c.group_size,
            Method::SmoothQuant(_) | Method::Billm(_) => None,
        }
    }

    /// The method's name as written in checkpoints (`rtn`, `gptq`, `awq`, `smoothquant`, `billm`).
    pub fn method_name(&self) -> &'static str {
        match &self.method {
            Method::Rtn(_) => "rtn",
            Method::Gptq(_) => "gptq",
            Method::Awq(_) | Method::AwqGptq(..) => "awq",
            Method::SmoothQuant(_) => "smoothquant",
            Method::Billm(_) => "billm",
        }
    }

    fn parts(&self) -> Result<Parts> {
        let mut parts = self.method_parts()?;
        parts.rotation = self.rotation.map(qwen3_quant_rotate::Hadamard::new);
        Ok(parts)
    }

    fn method_parts(&self) -> Result<Parts> {
        let none = Vec::new;
        Ok(match &self.method {
            Method::Rtn(c) => Parts::new(none(), Box::new(c.method()?)),
            Method::Gptq(c) => Parts::new(none(), Box::new(c.method()?)),
            Method::Awq(c) => {
                let awq = c.method()?;
                let rtn = awq.quantizer()?;
                Parts::new(vec![Box::new(awq)], Box::new(rtn))
            }
            Method::AwqGptq(a, g) => Parts::new(vec![Box::new(a.method()?)], Box::new(g.method()?)),
            Method::SmoothQuant(c) => {
                let t: Vec<Box<dyn LayerTransform>> = match c.transform()? {
                    Some(sq) => vec![Box::new(sq)],
                    None => none(),
                };
                Parts::new(t, Box::new(c.weight_quantizer()?))
            }
            Method::Billm(c) => Parts::new(none(), Box::new(qwen3_quant_billm::Billm::new(*c)?)),
        })
    }

    fn meta(&self) -> MethodMeta {
        let (ts, damp, sg) = match &self.method {
            Method::Gptq(c) | Method::AwqGptq(_, c) => (
                Some(c.true_sequential),
                Some(f64::from(c.damp)),
                Some(c.static_groups),
            ),
            Method::Billm(c) => (Some(false), Some(f64::from(c.percdamp)), None),
            _ => (None, None, None),
        };
        MethodMeta {
            method: self.method_name().to_string(),
            act_bits: self.act_bits(),
            true_sequential: ts,
            damp_percent: damp,
            static_groups: sg,
            expert_tokens: Vec::new(),
            expert_policy: Some(format!("{:?}", self.expert_policy)),
        }
    }

    /// Quantizes a copy of `model` (which must be full precision) in memory; `model` is unchanged.
    ///
    /// # Errors
    /// A quantized input model, invalid settings, calibration data that cannot be read or is too
    /// short, and the method's typed errors (naming the linear).
    pub fn run(&self, model: &Model) -> Result<QuantizedModel> {
        if model.is_quantized() {
            return Err(Error::invalid(format!(
                "{} is already quantized ({}); quantize the full-precision model",
                model.dir().display(),
                model.format().unwrap_or("?")
            )));
        }
        let parts = self.parts()?;
        let calib = self.calibration_set(&parts, model.tokenizer())?;
        let total = model
            .qwen3()
            .layers
            .iter()
            .map(|l| l.linear_ids().len())
            .sum::<usize>();
        let mut qwen3 = model.qwen3().clone();
        let _mode = ComputeMode::set(self.compute);
        let run = parts.with_pipeline(self.progress, total, |pipeline| {
            Ok(quantize_model_with(
                &mut qwen3,
                calib.as_ref(),
                pipeline,
                &self.driver_options(),
            )?)
        })?;
        let out = Model::from_parts(qwen3, model.tokenizer().clone(), model.dir());
        self.finish(out, run, &parts)
    }

    /// Quantizes the full-precision checkpoint in `dir`, streaming its decoder layers from the
    /// memory-mapped files: only the layer being quantized is ever held in f32 (with
    /// [`Quantize::packed`], the finished layers are packed too). For models too large to load.
    ///
    /// ```
    /// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
    /// use qwen3_quant::{Quantize, RtnConfig};
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro");
    /// let packed = Quantize::rtn(RtnConfig::default()).packed(true).run_dir(dir)?;
    /// let fake = Quantize::rtn(RtnConfig::default()).run_dir(dir)?; // dequantized f32 weights
    /// assert!(packed.qwen3().linear_bytes() * 6 < fake.qwen3().linear_bytes());
    /// let (a, b) = (packed.perplexity("docs", 128, Some(1))?, fake.perplexity("docs", 128, Some(1))?);
    /// assert!((a.ppl / b.ppl - 1.0).abs() < 1e-3);
    /// # Ok::<(), qwen3_quant::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Quantize::run`], and unreadable checkpoint files.
    pub fn run_dir(&self, dir: impl AsRef<Path>) -> Result<QuantizedModel> {
        let dir = dir.as_ref();
        if qwen3_quant_formats::read_quant_config(dir)?.is_some() {
            return Err(Error::invalid(format!(
                "{} is already quantized; quantize the full-precision model",
                dir.display()
            )));
        }
        let ckpt = Checkpoint::open(dir)?;
        let config = ckpt.config()?;
        let tok = Tokenizer::from_dir(dir)?;
        let parts = self.parts()?;
        let calib = self.calibration_set(&parts, &tok)?;
        let total = linear_count(&config);
        let mode = ComputeMode::set(self.compute);
        let (qwen3, run) = parts.with_pipeline(self.progress, total, |pipeline| {
            Ok(quantize_checkpoint_with(
                &ckpt,
                calib.as_ref(),
                pipeline,
                &self.driver_options(),
            )?)
        })?;
        drop(mode);
        self.finish(Model::from_parts(qwen3, tok, dir), run, &parts)
    }

    /// How the quantization computed (see [`Quantize::compute`]).
    pub fn compute_mode(&self) -> Compute {
        self.compute
    }

    fn driver_options(&self) -> DriverOptions {
        DriverOptions::default()
            .with_weight_mode(if self.packed {
                WeightMode::Packed
            } else {
                WeightMode::FakeQuant
            })
            .with_expert_policy(self.expert_policy)
    }

    fn calibration_set(
        &self,
        parts: &Parts,
        tok: &Tokenizer,
    ) -> Result<Option<qwen3_quant_calib::CalibrationSet>> {
        let req = parts.quantizer.stats_required();
        if !(req.hessian || req.channel_stats || !parts.transforms.is_empty()) {
            return Ok(None);
        }
        let c = self.calibration.clone().unwrap_or_default();
        Ok(Some(c.build(tok)?))
    }

    fn finish(
        &self,
        mut model: Model,
        run: QuantizationRun,
        parts: &Parts,
    ) -> Result<QuantizedModel> {
        let activations = match self.act_bits() {
            Some(bits) => Some(model.qwen3_mut().quantize_activations_best(bits)?),
            None => None,
        };
        model.set_format(None);
        let mut meta = self.meta();
        meta.expert_tokens = run.expert_tokens.clone();
        Ok(QuantizedModel {
            model,
            run,
            meta,
            pipeline: parts.name(),
            bits: self.bits(),
            group_size: self.group_size(),
            activations,
        })
    }
}

/// Decoder linears of a model: 7 per dense layer, 4 + 3 per expert in a MoE layer.
fn linear_count(c: &ModelConfig) -> usize {
    (0..c.num_hidden_layers)
        .map(|i| match &c.moe {
            Some(m)
                if !m.mlp_only_layers.contains(&i)
                    && m.decoder_sparse_step > 0
                    && (i + 1) % m.decoder_sparse_step == 0 =>
            {
                4 + 3 * m.num_experts
            }
            _ => 7,
        })
        .sum()
}

/// The owned transforms and quantizer of a job.
struct Parts {
    rotation: Option<qwen3_quant_rotate::Hadamard>,
    transforms: Vec<Box<dyn LayerTransform>>,
    quantizer: Box<dyn Quantizer>,
}

impl Parts {
    fn new(transforms: Vec<Box<dyn LayerTransform>>, quantizer: Box<dyn Quantizer>) -> Self {
        Parts {
            rotation: None,
            transforms,
            quantizer,
        }
    }

    fn name(&self) -> String {
        use qwen3_quant_core::ResidualRotation;
        let mut v: Vec<&str> = self.rotation.iter().map(|r| r.name()).collect();
        v.extend(self.transforms.iter().map(|t| t.name()));
        v.push(self.quantizer.name());
        v.join("+")
    }

    /// Runs `f` with the pipeline, the quantizer wrapped to report each linear to `sink`.
    fn with_pipeline<T>(
        &self,
        sink: &dyn ProgressSink,
        total: usize,
        f: impl FnOnce(&Pipeline<'_>) -> Result<T>,
    ) -> Result<T> {
        let name = self.name();
        let reporting = Reporting {
            inner: self.quantizer.as_ref(),
            sink,
            label: &name,
            done: AtomicU64::new(0),
            total: total as u64,
        };
        sink.on_event(&ProgressEvent {
            stage: Stage::Quantize,
            label: &name,
            done: 0,
            total: Some(total as u64),
        });
        let refs: Vec<&dyn LayerTransform> = self.transforms.iter().map(|t| t.as_ref()).collect();
        let mut pipeline = Pipeline::new(&reporting).with_transforms(&refs);
        if let Some(r) = &self.rotation {
            pipeline = pipeline.with_rotation(r);
        }
        let out = f(&pipeline)?;
        sink.on_event(&ProgressEvent {
            stage: Stage::Quantize,
            label: &name,
            done: total as u64,
            total: Some(total as u64),
        });
        Ok(out)
    }
}

/// A quantizer that tells a progress sink about every linear it finished.
struct Reporting<'a> {
    inner: &'a dyn Quantizer,
    sink: &'a dyn ProgressSink,
    label: &'a str,
    done: AtomicU64,
    total: u64,
}

impl Quantizer for Reporting<'_> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn stats_required(&self) -> StatsRequest {
        self.inner.stats_required()
    }
    fn propagation(&self) -> Propagation {
        self.inner.propagation()
    }
    fn true_sequential(&self) -> bool {
        self.inner.true_sequential()
    }
    fn full_precision_targets(&self) -> bool {
        self.inner.full_precision_targets()
    }
    fn quantize_linear(
        &self,
        input: LinearInput<'_>,
        stats: &LinearStats,
    ) -> std::result::Result<QuantOutcome, MethodError> {
        let out = self.inner.quantize_linear(input, stats)?;
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        // The final event (done == total) is sent once, after the driver returns.
        self.sink.on_event(&ProgressEvent {
            stage: Stage::Quantize,
            label: self.label,
            done: done.min(self.total.saturating_sub(1)),
            total: Some(self.total),
        });
        Ok(out)
    }
}

/// A quantized model: the [`Model`] (dereference it to evaluate, generate, read weights), the
/// driver's record of the run, and what [`QuantizedModel::save`] writes.
///
/// ```
/// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
/// use qwen3_quant::{Format, Model, Quantize, RtnConfig};
/// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
/// let q = Quantize::rtn(RtnConfig::default().with_bits(4).with_group_size(Some(128))).run(&model)?;
/// assert_eq!((q.bits(), q.group_size(), q.act_bits()), (4, Some(128), None));
/// assert!(q.seconds() > 0.0 && q.reference_bits().is_none());
///
/// let dir = std::env::temp_dir().join(format!("qwen3-quant-doc-save-{}", std::process::id()));
/// let written = q.save(&dir, Format::Gptq)?;
/// assert!(written.files.iter().any(|f| f == "config.json"));
/// let back = Model::open(&dir)?;
/// assert_eq!(back.format(), Some("gptq"));
/// let (a, b) = (q.perplexity("docs", 256, Some(1))?, back.perplexity("docs", 256, Some(1))?);
/// assert!((a.ppl / b.ppl - 1.0).abs() < 1e-3); // f16 scales are the only difference
/// std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
#[derive(Debug)]
pub struct QuantizedModel {
    model: Model,
    run: QuantizationRun,
    meta: MethodMeta,
    pipeline: String,
    bits: u8,
    group_size: Option<usize>,
    activations: Option<ActQuantSummary>,
}

impl std::ops::Deref for QuantizedModel {
    type Target = Model;
    fn deref(&self) -> &Model {
        &self.model
    }
}

impl QuantizedModel {
    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model, by value.
    pub fn into_model(self) -> Model {
        self.model
    }

    /// The driver's record: quantized linears, per-linear log, transform log, timing.
    pub fn run(&self) -> &QuantizationRun {
        &self.run
    }

    /// `transform+quantizer` name (`gptq`, `awq+rtn`, `smoothquant+rtn`, …).
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Weight bits asked for (1 for BiLLM).
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Group size asked for (`None`: per channel).
    pub fn group_size(&self) -> Option<usize> {
        self.group_size
    }

    /// Activation bits, for weight-activation settings.
    pub fn act_bits(&self) -> Option<u8> {
        self.meta.act_bits
    }

    /// How the activations are quantized and executed, for weight-activation settings.
    pub fn activations(&self) -> Option<&ActQuantSummary> {
        self.activations.as_ref()
    }

    /// Quantized linears.
    pub fn linears(&self) -> usize {
        self.run.quantized.len()
    }

    /// Honest storage bits per weight of the quantized linears (codes, scales, zeros, indices).
    pub fn bits_per_weight(&self) -> f64 {
        self.run.bits_per_weight()
    }

    /// The method's own bit figure where the study reports one (BiLLM: 1 + salient fraction).
    pub fn reference_bits(&self) -> Option<f64> {
        qwen3_quant_billm::reference_bits(self.run.quantized.iter().map(|(_, w)| w))
    }

    /// Seconds of calibration and quantization.
    pub fn seconds(&self) -> f64 {
        self.run.seconds
    }

    /// Writes a checkpoint directory in `format` (atomically; an existing non-empty `dir` is
    /// refused). The configuration and tokenizer files come from the source model's directory.
    ///
    /// # Errors
    /// A format that cannot hold the weights (e.g. AWQ with 3 bits or act-order, GPTQ with BiLLM
    /// weights), an existing output, I/O errors.
    pub fn save(&self, dir: impl AsRef<Path>, format: Format) -> Result<WriteReport> {
        let mut opts = WriteOptions::new(format);
        opts.meta = self.meta.clone();
        self.save_with(dir, &opts)
    }

    /// [`QuantizedModel::save`] with every writer option (shard size, GPTQ zero convention,
    /// overwrite, method metadata).
    ///
    /// # Errors
    /// See [`QuantizedModel::save`].
    pub fn save_with(&self, dir: impl AsRef<Path>, opts: &WriteOptions) -> Result<WriteReport> {
        Ok(write_checkpoint(
            dir.as_ref(),
            self.model.dir(),
            self.model.qwen3(),
            &self.run.quantized,
            opts,
        )?)
    }

    /// The method metadata written into checkpoints.
    pub fn meta(&self) -> &MethodMeta {
        &self.meta
    }

    /// The directory of the source model.
    pub fn source_dir(&self) -> PathBuf {
        self.model.dir().to_path_buf()
    }
}

/// Sets the kernels' compute mode for a scope and puts f32 back when dropped (errors included).
struct ComputeMode;

impl ComputeMode {
    fn set(c: Compute) -> Self {
        qwen3_quant_kernels::dense::set_compute(c);
        ComputeMode
    }
}

impl Drop for ComputeMode {
    fn drop(&mut self) {
        qwen3_quant_kernels::dense::set_compute(Compute::F32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    /// The progress wrapper is the quantizer the driver sees: it must answer every question the
    /// driver asks as the method does (a forgotten `full_precision_targets` once ran the `best`
    /// recipe's asymmetric calibration as plain GPTQ from the library and the sweep).
    #[test]
    fn the_progress_wrapper_answers_as_the_method() {
        let plain = crate::GptqConfig::default().method().unwrap();
        let best = crate::GptqConfig::best(3, Some(128)).method().unwrap();
        let rtn = crate::RtnConfig::default().method().unwrap();
        let methods: [&dyn Quantizer; 3] = [&plain, &best, &rtn];
        for inner in methods {
            let w = Reporting {
                inner,
                sink: &NoProgress,
                label: "test",
                done: AtomicU64::new(0),
                total: 1,
            };
            assert_eq!(w.name(), inner.name());
            assert_eq!(w.stats_required(), inner.stats_required());
            assert_eq!(w.propagation(), inner.propagation());
            assert_eq!(w.true_sequential(), inner.true_sequential());
            assert_eq!(w.full_precision_targets(), inner.full_precision_targets());
        }
        assert!(best.full_precision_targets() && !plain.full_precision_targets());
    }
}
