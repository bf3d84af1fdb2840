//! The whole causal LM (Qwen3, Qwen3-MoE, LLaMA): loading from a checkpoint and the forward pass.

use std::path::Path;

use qwen3_quant_io::{Checkpoint, ModelConfig};
use qwen3_quant_kernels::dense;
use rayon::prelude::*;

use crate::attention::{Attention, AttentionBias, LayerKv};
use crate::error::{ModelError, Result};
use crate::layer::{DecoderLayer, FeedForward};
use crate::linear::LinearWeight;
use crate::mlp::{Mlp, MoeBlock};
use crate::norm::rms_norm;
use crate::observer::{NoObserver, Observer};
use crate::rope::Rope;

/// A loaded model with f32 (or swapped-in quantized) weights.
#[derive(Clone, Debug)]
pub struct Qwen3Model {
    /// The validated configuration.
    pub config: ModelConfig,
    /// `embed_tokens` `[vocab, hidden]`.
    pub embed_tokens: Vec<f32>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final `norm.weight`.
    pub norm: Vec<f32>,
    /// `lm_head`, or `None` when tied to the embeddings.
    pub lm_head: Option<LinearWeight>,
}

fn dense(ckpt: &Checkpoint, name: &str, out: usize, inp: usize) -> Result<LinearWeight> {
    // Only the f32 copy is kept: the tensor's mapped file pages are released as they are
    // widened (they stay in the page cache), the pages at the chunks' edges at the end.
    let w = ckpt.load_f32_releasing(name, &[out, inp])?;
    ckpt.release_range(name, 0, usize::MAX);
    LinearWeight::dense(out, inp, w)
}

impl Qwen3Model {
    /// Loads a Hugging Face Qwen3 / Qwen3-MoE / LLaMA directory (weights widened to f32).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let ckpt = Checkpoint::open(dir)?;
        let config = ckpt.config()?;
        Self::from_checkpoint(&ckpt, config)
    }

    /// Builds the model from an open checkpoint and its configuration.
    pub fn from_checkpoint(ckpt: &Checkpoint, config: ModelConfig) -> Result<Self> {
        let mut model = Self::skeleton(ckpt, config)?;
        for i in 0..model.config.num_hidden_layers {
            let layer = Self::load_layer(ckpt, &model.config, i)?;
            model.layers.push(layer);
        }
        Ok(model)
    }

    /// The final norm only: neither the embedding table nor `lm_head` is widened to f32, and
    /// there is no decoder layer. The starting point of streamed quantization, which reads the
    /// calibration windows' embedding rows from the checkpoint and leaves both tables to be
    /// copied from the source when the result is written. [`Self::ends_loaded`] is false, and
    /// [`Self::embed`] refuses to run.
    ///
    /// # Errors
    /// A missing or malformed `model.norm.weight`.
    pub fn skeleton_without_ends(ckpt: &Checkpoint, config: ModelConfig) -> Result<Self> {
        let norm = ckpt.load_f32("model.norm.weight", &[config.hidden_size])?;
        Ok(Qwen3Model {
            config,
            embed_tokens: Vec::new(),
            layers: Vec::new(),
            norm,
            lm_head: None,
        })
    }

    /// Whether the embedding table (and `lm_head`, when untied) are in memory; false for
    /// [`Self::skeleton_without_ends`].
    pub fn ends_loaded(&self) -> bool {
        !self.embed_tokens.is_empty()
    }

    /// Everything but the decoder layers (embeddings, final norm, `lm_head`): the starting point
    /// of layer-streaming work such as calibration, which loads one layer at a time with
    /// [`Self::load_layer`] and pushes it onto `layers` when done.
    pub fn skeleton(ckpt: &Checkpoint, config: ModelConfig) -> Result<Self> {
        let (h, v) = (config.hidden_size, config.vocab_size);
        let embed_tokens = ckpt.load_f32("model.embed_tokens.weight", &[v, h])?;
        let norm = ckpt.load_f32("model.norm.weight", &[h])?;
        // A tied checkpoint may still carry lm_head.weight (some exporters write it); use it if present.
        let lm_head = if ckpt.contains("lm_head.weight") || !config.tie_word_embeddings {
            Some(dense(ckpt, "lm_head.weight", v, h)?)
        } else {
            None
        };
        Ok(Qwen3Model {
            config,
            embed_tokens,
            layers: Vec::new(),
            norm,
            lm_head,
        })
    }

    /// Loads decoder layer `i` (f32) from a checkpoint.
    pub fn load_layer(ckpt: &Checkpoint, c: &ModelConfig, i: usize) -> Result<DecoderLayer> {
        Self::assemble_layer(ckpt, c, i, &mut |prefix: &str, out, inp| {
            dense(ckpt, &format!("{prefix}.weight"), out, inp)
        })
    }

    /// Assembles decoder layer `i`: norms and the MoE router from `ckpt` (f32), and each of the
    /// seven linears (every expert's) from `linear(prefix, out, in)`, where `prefix` is the
    /// module's path without `.weight` (`model.layers.3.self_attn.q_proj`). A full-precision
    /// checkpoint reads `prefix.weight`; a quantized one its packed tensors.
    ///
    /// # Errors
    /// [`ModelError::NoSuchLayer`], the checkpoint's errors, and `linear`'s.
    pub fn assemble_layer<E>(
        ckpt: &Checkpoint,
        c: &ModelConfig,
        i: usize,
        linear: &mut dyn FnMut(&str, usize, usize) -> std::result::Result<LinearWeight, E>,
    ) -> std::result::Result<DecoderLayer, E>
    where
        E: From<ModelError> + From<qwen3_quant_io::IoError>,
    {
        if i >= c.num_hidden_layers {
            return Err(ModelError::NoSuchLayer {
                layer: i,
                layers: c.num_hidden_layers,
            }
            .into());
        }
        let h = c.hidden_size;
        let p = format!("model.layers.{i}");
        let qk_norm = |which: &str| -> std::result::Result<Option<Vec<f32>>, E> {
            if !c.architecture.has_qk_norm() {
                return Ok(None);
            }
            let name = format!("{p}.self_attn.{which}.weight");
            Ok(Some(ckpt.load_f32(&name, &[c.head_dim])?))
        };
        let bias = |which: &str, len: usize| -> std::result::Result<Option<Vec<f32>>, E> {
            if !c.attention_bias {
                return Ok(None);
            }
            let name = format!("{p}.self_attn.{which}.bias");
            Ok(Some(ckpt.load_f32(&name, &[len])?))
        };
        let attn = Attention {
            q_proj: linear(&format!("{p}.self_attn.q_proj"), c.q_dim(), h)?,
            k_proj: linear(&format!("{p}.self_attn.k_proj"), c.kv_dim(), h)?,
            v_proj: linear(&format!("{p}.self_attn.v_proj"), c.kv_dim(), h)?,
            o_proj: linear(&format!("{p}.self_attn.o_proj"), h, c.q_dim())?,
            q_norm: qk_norm("q_norm")?,
            k_norm: qk_norm("k_norm")?,
            bias: AttentionBias {
                q: bias("q_proj", c.q_dim())?,
                k: bias("k_proj", c.kv_dim())?,
                v: bias("v_proj", c.kv_dim())?,
                o: bias("o_proj", h)?,
            },
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            eps: c.rms_norm_eps as f32,
        };
        let ffn = if let (true, Some(m)) = (c.is_moe_layer(i), c.moe.as_ref()) {
            let mi = m.moe_intermediate_size;
            let mut experts = Vec::with_capacity(m.num_experts);
            for e in 0..m.num_experts {
                let q = format!("{p}.mlp.experts.{e}");
                experts.push(Mlp {
                    gate: linear(&format!("{q}.gate_proj"), mi, h)?,
                    up: linear(&format!("{q}.up_proj"), mi, h)?,
                    down: linear(&format!("{q}.down_proj"), h, mi)?,
                });
            }
            // The router always stays in full precision.
            FeedForward::Moe(MoeBlock {
                router: dense(ckpt, &format!("{p}.mlp.gate.weight"), m.num_experts, h)?,
                experts,
                top_k: m.num_experts_per_tok,
                norm_topk_prob: m.norm_topk_prob,
            })
        } else {
            let it = c.intermediate_size;
            FeedForward::Dense(Mlp {
                gate: linear(&format!("{p}.mlp.gate_proj"), it, h)?,
                up: linear(&format!("{p}.mlp.up_proj"), it, h)?,
                down: linear(&format!("{p}.mlp.down_proj"), h, it)?,
            })
        };
        Ok(DecoderLayer {
            index: i,
            input_layernorm: ckpt.load_f32(&format!("{p}.input_layernorm.weight"), &[h])?,
            post_attention_layernorm: ckpt
                .load_f32(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            attn,
            ffn,
            eps: c.rms_norm_eps as f32,
        })
    }

    /// RoPE tables for sequences of `seq` tokens.
    pub fn rope(&self, seq: usize) -> Rope {
        Rope::scaled(
            self.config.head_dim,
            self.config.rope_theta,
            self.config.rope_scaling.as_ref(),
            seq,
        )
    }

    /// Embeds token ids, `[ids.len(), hidden]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let h = self.config.hidden_size;
        let vocab = self.config.vocab_size;
        if self.embed_tokens.len() != vocab * h {
            return Err(ModelError::Shape {
                what: "embed_tokens (not loaded: a streamed model's ends stay in the checkpoint)",
                expected: vocab * h,
                got: self.embed_tokens.len(),
            });
        }
        let mut out = vec![0.0f32; ids.len() * h];
        for (row, &id) in out.chunks_mut(h).zip(ids) {
            if id as usize >= vocab {
                return Err(ModelError::TokenOutOfRange { id, vocab });
            }
            row.copy_from_slice(&self.embed_tokens[id as usize * h..(id as usize + 1) * h]);
        }
        Ok(out)
    }

    /// Runs decoder layer `i` in place on `h` `[batch·seq, hidden]`.
    pub fn forward_layer(
        &self,
        i: usize,
        h: &mut [f32],
        batch: usize,
        seq: usize,
        rope: &Rope,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let layer = self.layers.get(i).ok_or(ModelError::NoSuchLayer {
            layer: i,
            layers: self.layers.len(),
        })?;
        let expected = batch * seq * self.config.hidden_size;
        if h.len() != expected {
            return Err(ModelError::Shape {
                what: "hidden states",
                expected,
                got: h.len(),
            });
        }
        if rope.positions() < seq {
            return Err(ModelError::Shape {
                what: "rope positions",
                expected: seq,
                got: rope.positions(),
            });
        }
        layer.forward(h, batch, seq, rope, obs)
    }

    /// Final norm, `[rows, hidden]`.
    pub fn final_norm(&self, h: &[f32]) -> Vec<f32> {
        let mut x = vec![0.0f32; h.len()];
        rms_norm(h, &self.norm, self.config.rms_norm_eps as f32, &mut x);
        x
    }

    /// Logits of already-normed hidden states `[rows, hidden]` → `[rows, vocab]`.
    pub fn lm_head(&self, normed: &[f32]) -> Result<Vec<f32>> {
        let (h, v) = (self.config.hidden_size, self.config.vocab_size);
        let rows = normed.len() / h;
        match &self.lm_head {
            Some(w) => w.apply(normed, rows),
            None => {
                let mut y = vec![0.0f32; rows * v];
                dense::matmul_wt(normed, rows, h, &self.embed_tokens, v, &mut y);
                Ok(y)
            }
        }
    }

    /// `log p(targets[r] | …)` for each row `r` of already-normed hidden states `[rows,
    /// hidden]`: `lm_head` runs over blocks of rows whose logits stay in cache (about 4 MB),
    /// and each row's log-softmax at its target is taken right away
    /// ([`dense::log_sum_exp`]), so `[rows, vocab]` logits are never stored.
    ///
    /// # Errors
    /// [`ModelError::Shape`] if `normed` is not `targets.len()` rows;
    /// [`ModelError::TokenOutOfRange`] for a target outside the vocabulary.
    pub fn target_logprobs(&self, normed: &[f32], targets: &[u32]) -> Result<Vec<f32>> {
        let (h, v) = (self.config.hidden_size, self.config.vocab_size);
        if normed.len() != targets.len() * h {
            return Err(ModelError::Shape {
                what: "hidden states",
                expected: targets.len() * h,
                got: normed.len(),
            });
        }
        if let Some(&id) = targets.iter().find(|&&t| t as usize >= v) {
            return Err(ModelError::TokenOutOfRange { id, vocab: v });
        }
        let block = ((4 << 20) / (4 * v.max(1))).clamp(dense::MIN_BLOCKED_ROWS, 128);
        let mut out = vec![0.0f32; targets.len()];
        let mut logits = Vec::new();
        // A dense head is packed once for all the blocks, not once per block.
        let dense_head = match &self.lm_head {
            None => Some(&self.embed_tokens[..]),
            Some(LinearWeight::Dense { weight, .. }) => Some(&weight[..]),
            Some(_) => None,
        };
        let packed = dense_head
            .filter(|_| targets.len() > block)
            .map(|w| dense::PackedWeight::new(w, v, h));
        for ((hb, tb), ob) in normed
            .chunks(block * h)
            .zip(targets.chunks(block))
            .zip(out.chunks_mut(block))
        {
            let rows = tb.len();
            logits.resize(rows * v, 0.0);
            match (&packed, &self.lm_head) {
                (Some(p), _) => dense::matmul_wt_packed(hb, rows, p, &mut logits),
                (None, Some(w)) => w.forward(hb, rows, &mut logits[..rows * v])?,
                (None, None) => dense::matmul_wt(hb, rows, h, &self.embed_tokens, v, &mut logits),
            }
            ob.par_iter_mut().enumerate().for_each(|(r, lp)| {
                let row = &logits[r * v..(r + 1) * v];
                *lp = (row[tb[r] as usize] as f64 - dense::log_sum_exp(row)) as f32;
            });
        }
        Ok(out)
    }

    /// Final hidden states (after the final norm) of `batch` sequences of `seq` tokens each.
    pub fn forward_hidden(&self, ids: &[u32], batch: usize, seq: usize) -> Result<Vec<f32>> {
        if ids.len() != batch * seq {
            return Err(ModelError::Shape {
                what: "token ids",
                expected: batch * seq,
                got: ids.len(),
            });
        }
        let rope = self.rope(seq);
        let mut h = self.embed(ids)?;
        for i in 0..self.layers.len() {
            self.forward_layer(i, &mut h, batch, seq, &rope, &mut NoObserver)?;
        }
        Ok(self.final_norm(&h))
    }

    /// Logits `[batch·seq, vocab]` of `batch` sequences of `seq` tokens each (`ids` row-major).
    ///
    /// ```no_run
    /// let model = qwen3_quant_model::Qwen3Model::load("assets/models/qwen3-micro")?;
    /// let logits = model.forward(&[1, 2, 3, 4], 1, 4)?;
    /// assert_eq!(logits.len(), 4 * model.config.vocab_size);
    /// # Ok::<(), qwen3_quant_model::ModelError>(())
    /// ```
    pub fn forward(&self, ids: &[u32], batch: usize, seq: usize) -> Result<Vec<f32>> {
        let x = self.forward_hidden(ids, batch, seq)?;
        self.lm_head(&x)
    }

    /// All hidden states as transformers returns them with `output_hidden_states=True`:
    /// `[0]` embeddings, `[i]` after layer i−1 for 1 ≤ i < L, `[L]` the last layer after the final norm.
    pub fn hidden_states(&self, ids: &[u32], batch: usize, seq: usize) -> Result<Vec<Vec<f32>>> {
        if ids.len() != batch * seq {
            return Err(ModelError::Shape {
                what: "token ids",
                expected: batch * seq,
                got: ids.len(),
            });
        }
        let rope = self.rope(seq);
        let mut h = self.embed(ids)?;
        let mut states = vec![h.clone()];
        for i in 0..self.layers.len() {
            self.forward_layer(i, &mut h, batch, seq, &rope, &mut NoObserver)?;
            if i + 1 < self.layers.len() {
                states.push(h.clone());
            }
        }
        states.push(self.final_norm(&h));
        Ok(states)
    }

    /// An empty key/value cache for [`Qwen3Model::forward_step`].
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: vec![LayerKv::default(); self.layers.len()],
            positions: 0,
            rope: self.rope(0),
            kv_dim: self.config.num_key_value_heads * self.config.head_dim,
        }
    }

    /// Incremental decoding: runs `ids` (the prompt, or the next token) after the positions
    /// already in `cache`, extends the cache, and returns the logits of the last of `ids`.
    /// One-token steps run every linear as a matrix-vector product, which is what the packed
    /// GEMV kernels are for.
    ///
    /// ```no_run
    /// let model = qwen3_quant_model::Qwen3Model::load("assets/models/qwen3-micro")?;
    /// let mut cache = model.new_cache();
    /// let logits = model.forward_step(&[1, 2, 3], &mut cache)?; // prompt
    /// let next = model.forward_step(&[4], &mut cache)?; // one more token
    /// assert_eq!((logits.len(), cache.len()), (model.config.vocab_size, 4));
    /// # Ok::<(), qwen3_quant_model::ModelError>(())
    /// ```
    ///
    /// # Errors
    /// [`ModelError::Shape`] for no ids or a cache of another model; errors of the layers.
    pub fn forward_step(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let m = ids.len();
        if m == 0 {
            return Err(ModelError::Shape {
                what: "token ids",
                expected: 1,
                got: 0,
            });
        }
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::Shape {
                what: "cache layers",
                expected: self.layers.len(),
                got: cache.layers.len(),
            });
        }
        let kv_dim = self.config.num_key_value_heads * self.config.head_dim;
        if cache.kv_dim != kv_dim {
            return Err(ModelError::Shape {
                what: "cache key/value width",
                expected: kv_dim,
                got: cache.kv_dim,
            });
        }
        let end = cache.positions + m;
        if cache.rope.positions() < end {
            // Grow the RoPE tables geometrically so a long generation rebuilds them O(log n) times.
            cache.rope = self.rope(end.next_power_of_two().max(64));
        }
        let mut h = self.embed(ids)?;
        let hs = self.config.hidden_size;
        let rope = &cache.rope;
        let layers = &mut cache.layers;
        let logits = on_pool(|| {
            for (layer, kv) in self.layers.iter().zip(layers.iter_mut()) {
                layer.forward_cached(&mut h, m, kv, rope)?;
            }
            self.lm_head(&self.final_norm(&h[(m - 1) * hs..]))
        })?;
        cache.positions = end;
        Ok(logits)
    }

    /// Greedy decoding of up to `max_new` tokens after `prompt` (stops after a token in `stop`),
    /// with a key/value cache ([`Qwen3Model::forward_step`]). Ties go to the lowest token id.
    pub fn generate_greedy(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(max_new);
        if max_new == 0 {
            return Ok(out);
        }
        let mut cache = self.new_cache();
        let mut logits = self.forward_step(prompt, &mut cache)?;
        let v = self.config.vocab_size;
        loop {
            let next = logits[..v]
                .par_iter()
                .enumerate()
                .reduce(
                    || (0, &f32::NEG_INFINITY),
                    |a, b| {
                        if b.1 > a.1 || (b.1 == a.1 && b.0 < a.0) {
                            b
                        } else {
                            a
                        }
                    },
                )
                .0 as u32;
            out.push(next);
            if out.len() == max_new || stop.contains(&next) {
                return Ok(out);
            }
            logits = self.forward_step(&[next], &mut cache)?;
        }
    }

    /// Total bytes of the quantizable linears as currently stored.
    pub fn linear_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| {
                l.linear_ids()
                    .into_iter()
                    .filter_map(move |id| l.linear(id.kind, id.expert))
            })
            .map(LinearWeight::storage_bytes)
            .sum()
    }
}

/// Keys and values of every layer for the positions decoded so far (see
/// [`Qwen3Model::forward_step`]).
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    positions: usize,
    rope: Rope,
    /// `kv_heads·head_dim` of the model that made it (a cache of another model is rejected).
    kv_dim: usize,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.positions
    }
    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.positions == 0
    }
}

/// Runs `f` on a worker of rayon's pool (at once if this thread is one). A decode step is a
/// chain of small parallel regions between short serial parts; called from outside the pool,
/// each region is handed over to the workers and the caller sleeps until it is done, while
/// between regions the workers spin beside the caller's serial work: one thread more than cores.
/// Inside the pool the serial parts run on a worker and each region starts where it is.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}
