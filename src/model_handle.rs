//! [`Model`]: a loaded Qwen3 / Qwen3-MoE model with its tokenizer, any checkpoint format.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, ArrayView2};
use qwen3_quant_core::LinearId;
use qwen3_quant_formats::{load_model, LoadOptions};
use qwen3_quant_model::generation::{generate, Sampler, SamplingParams};
use qwen3_quant_model::{LinearWeight, ModelConfig, Qwen3Model, Tokenizer};

use crate::error::{Error, Result};

/// A model and its tokenizer, loaded from a Hugging Face Qwen3 / Qwen3-MoE directory or from any
/// quantized checkpoint this project writes or reads (GPTQ, AWQ, compressed-tensors, native).
/// Quantized linears of a checkpoint stay packed and run on the low-bit kernels.
///
/// Tensors cross this API as `ndarray` arrays: logits out, weights in and out.
///
/// ```
/// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
/// use qwen3_quant::{LinearId, LinearKind, Model};
/// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
/// assert_eq!(model.config().num_hidden_layers, 8);
/// assert!(!model.is_quantized());
///
/// let ids = model.encode("The kernel scheduler")?;
/// let logits = model.logits(&ids)?; // [tokens, vocab]
/// assert_eq!(logits.dim(), (ids.len(), model.config().vocab_size));
///
/// let q = model.weight(LinearId::new(0, LinearKind::Q))?; // [out, in]
/// assert_eq!(q.ncols(), model.config().hidden_size);
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Model {
    qwen3: Qwen3Model,
    tokenizer: Tokenizer,
    dir: PathBuf,
    format: Option<String>,
    notes: Vec<String>,
}

impl Model {
    /// Opens a model directory: full precision (weights widened to f32) or a quantized
    /// checkpoint (linears packed).
    ///
    /// # Errors
    /// Missing or malformed files (typed, naming the file), an unsupported quantization config.
    pub fn open(dir: impl AsRef<Path>) -> Result<Model> {
        let dir = dir.as_ref();
        let loaded = load_model(dir, &LoadOptions::default())?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        Ok(Model {
            qwen3: loaded.model,
            tokenizer,
            dir: dir.to_path_buf(),
            format: loaded.quant.as_ref().map(|q| q.format_name().to_string()),
            notes: loaded.notes,
        })
    }

    /// Wraps a model built by hand (e.g. with the focused crates). `dir` is the directory its
    /// configuration and tokenizer files come from (what [`crate::QuantizedModel::save`] copies).
    ///
    /// ```
    /// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
    /// use qwen3_quant::{model::Qwen3Model, model::Tokenizer, Model};
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro");
    /// let m = Model::from_parts(Qwen3Model::load(dir)?, Tokenizer::from_dir(dir)?, dir);
    /// assert_eq!(m.dir(), std::path::Path::new(dir));
    /// # Ok::<(), qwen3_quant::Error>(())
    /// ```
    pub fn from_parts(qwen3: Qwen3Model, tokenizer: Tokenizer, dir: impl Into<PathBuf>) -> Model {
        Model {
            qwen3,
            tokenizer,
            dir: dir.into(),
            format: None,
            notes: Vec::new(),
        }
    }

    /// The directory the model was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The validated `config.json`.
    pub fn config(&self) -> &ModelConfig {
        &self.qwen3.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Whether the checkpoint held quantized linears (its format name is [`Model::format`]).
    pub fn is_quantized(&self) -> bool {
        self.format.is_some()
    }

    /// The quantized checkpoint's format (`gptq`, `awq`, `compressed-tensors`, `native`).
    pub fn format(&self) -> Option<&str> {
        self.format.as_deref()
    }

    /// What the loader wants the user to know (e.g. activation bits recorded but not simulated).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The model of the focused crates (for the evaluator, the driver, …).
    pub fn qwen3(&self) -> &Qwen3Model {
        &self.qwen3
    }

    /// Mutable access to the model of the focused crates.
    pub fn qwen3_mut(&mut self) -> &mut Qwen3Model {
        &mut self.qwen3
    }

    /// The model of the focused crates, by value.
    pub fn into_qwen3(self) -> Qwen3Model {
        self.qwen3
    }

    pub(crate) fn set_format(&mut self, format: Option<String>) {
        self.format = format;
    }

    /// Token ids of `text` (no special tokens added).
    ///
    /// # Errors
    /// Tokenizer errors.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text)?)
    }

    /// Text of token ids.
    ///
    /// # Errors
    /// Tokenizer errors.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(self.tokenizer.decode(ids)?)
    }

    /// Logits `[tokens, vocab]` of one sequence.
    ///
    /// # Errors
    /// Token ids outside the vocabulary, an empty sequence.
    pub fn logits(&self, ids: &[u32]) -> Result<Array2<f32>> {
        if ids.is_empty() {
            return Err(Error::invalid("logits of an empty sequence"));
        }
        let v = self.qwen3.forward(ids, 1, ids.len())?;
        Ok(
            Array2::from_shape_vec((ids.len(), self.config().vocab_size), v)
                .expect("forward returns tokens x vocab values"),
        )
    }

    /// Logits `[batch, seq, vocab]` of a batch of equally long sequences `[batch, seq]`.
    ///
    /// ```
    /// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
    /// use qwen3_quant::{ndarray::Array2, Model};
    /// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
    /// let ids = Array2::from_shape_fn((2, 5), |(b, t)| (1 + b * 5 + t) as u32);
    /// let logits = model.logits_batch(ids.view())?;
    /// assert_eq!(logits.dim(), (2, 5, model.config().vocab_size));
    /// // The same as one sequence at a time.
    /// let one = model.logits(&[6, 7, 8, 9, 10])?;
    /// let diff = (&logits.index_axis(qwen3_quant::ndarray::Axis(0), 1) - &one)
    ///     .iter().fold(0f32, |m, d| m.max(d.abs()));
    /// assert!(diff < 1e-4);
    /// # Ok::<(), qwen3_quant::Error>(())
    /// ```
    ///
    /// # Errors
    /// Token ids outside the vocabulary, an empty batch.
    pub fn logits_batch(&self, ids: ArrayView2<'_, u32>) -> Result<Array3<f32>> {
        let (b, s) = ids.dim();
        if b == 0 || s == 0 {
            return Err(Error::invalid("logits of an empty batch"));
        }
        let flat: Vec<u32> = ids.iter().copied().collect();
        let v = self.qwen3.forward(&flat, b, s)?;
        Ok(Array3::from_shape_vec((b, s, self.config().vocab_size), v)
            .expect("forward returns batch x seq x vocab values"))
    }

    fn linear(&self, id: LinearId) -> Result<&LinearWeight> {
        self.qwen3
            .layers
            .get(id.layer)
            .and_then(|l| l.linear(id.kind, id.expert))
            .ok_or_else(|| Error::invalid(format!("the model has no linear {id}")))
    }

    /// The weight `[out, in]` of one decoder linear as f32 (dequantized if quantized).
    ///
    /// # Errors
    /// No such linear.
    pub fn weight(&self, id: LinearId) -> Result<Array2<f32>> {
        let w = self.linear(id)?;
        Ok(
            Array2::from_shape_vec((w.out_features(), w.in_features()), w.to_dense())
                .expect("to_dense returns out x in values"),
        )
    }

    /// Replaces one decoder linear by a dense f32 weight `[out, in]` (e.g. one you quantized
    /// with [`crate::quantize_weight`]).
    ///
    /// ```
    /// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
    /// use qwen3_quant::{quantize_weight, LinearId, LinearKind, Model, RtnConfig};
    /// let mut model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
    /// let id = LinearId::new(3, LinearKind::Down);
    /// let w = model.weight(id)?;
    /// let q = quantize_weight(w.view(), &RtnConfig::default().with_bits(2))?;
    /// model.set_weight(id, q.dequantize().view())?;
    /// assert_eq!(model.weight(id)?, q.dequantize());
    /// assert!(model.set_weight(id, w.t()).is_err()); // wrong shape
    /// # Ok::<(), qwen3_quant::Error>(())
    /// ```
    ///
    /// # Errors
    /// No such linear, a shape that differs from the current weight, non-finite values.
    pub fn set_weight(&mut self, id: LinearId, weight: ArrayView2<'_, f32>) -> Result<()> {
        let (out, inp) = weight.dim();
        if let Some(i) = weight.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "non-finite weight for {id} at flat index {i}"
            )));
        }
        self.linear(id)?;
        let dense = LinearWeight::dense(out, inp, weight.iter().copied().collect())?;
        self.qwen3.layers[id.layer].replace_linear(&id, dense)?;
        Ok(())
    }

    /// Continues `prompt`: greedy or sampled ([`Generation`]), with the key/value cache, stopping
    /// at an end-of-sequence token. Returns the new text only.
    ///
    /// ```
    /// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
    /// use qwen3_quant::{Generation, Model};
    /// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
    /// let greedy = model.generate("The kernel scheduler", &Generation::greedy(8))?;
    /// assert_eq!(greedy, model.generate("The kernel scheduler", &Generation::greedy(8))?);
    /// let sampled = Generation { temperature: 0.8, top_p: Some(0.95), seed: 1, ..Generation::greedy(8) };
    /// let _ = model.generate("The kernel scheduler", &sampled)?;
    /// # Ok::<(), qwen3_quant::Error>(())
    /// ```
    ///
    /// # Errors
    /// A prompt that encodes to no tokens, invalid sampling settings.
    pub fn generate(&self, prompt: &str, settings: &Generation) -> Result<String> {
        let ids = self.encode(prompt)?;
        let new = self.generate_ids(&ids, settings)?;
        let eos = &self.config().eos_token_ids;
        let shown: Vec<u32> = new.into_iter().filter(|t| !eos.contains(t)).collect();
        self.decode(&shown)
    }

    /// [`Model::generate`] on token ids; returns the new ids (the stop token included).
    ///
    /// # Errors
    /// An empty prompt, invalid sampling settings.
    pub fn generate_ids(&self, prompt: &[u32], settings: &Generation) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::invalid("the prompt encodes to no tokens"));
        }
        let mut sampler = Sampler::new(SamplingParams {
            temperature: settings.temperature,
            top_k: settings.top_k,
            top_p: settings.top_p,
            seed: settings.seed,
        })?;
        Ok(generate(
            &self.qwen3,
            prompt,
            settings.max_new_tokens,
            &self.qwen3.config.eos_token_ids,
            &mut sampler,
            |_| true,
        )?)
    }
}

/// Generation settings. `Default`: greedy, 32 new tokens.
///
/// ```
/// let g = qwen3_quant::Generation::greedy(16);
/// assert_eq!((g.max_new_tokens, g.temperature), (16, 0.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Generation {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy (ties to the lowest id).
    pub temperature: f32,
    /// Sample among the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Nucleus sampling mass in `(0, 1]`.
    pub top_p: Option<f32>,
    /// Seed of the sampler (same seed, same text).
    pub seed: u64,
}

impl Default for Generation {
    fn default() -> Self {
        Generation::greedy(32)
    }
}

impl Generation {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Generation {
            max_new_tokens,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}
