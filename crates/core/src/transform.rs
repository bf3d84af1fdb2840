//! Layer-level equivalent transforms: the second kind of method the driver runs.
//!
//! AWQ and SmoothQuant do not quantize one linear at a time. They choose a per-channel scale `s`
//! for a *producer* (an RMSNorm weight, or the output rows of a linear) and its *consumers* (the
//! linears reading that output), divide the producer by `s` and multiply the consumers' input
//! columns by `s`. In exact arithmetic the layer computes the same function; what changes is how
//! well the consumers quantize afterwards. AWQ scores each candidate `s` on the output of the
//! whole sub-block that consumes the producer (attention, MLP, MoE block, or one linear).
//!
//! The split of responsibilities:
//! - the architecture (the model crate, through the driver) says which [`ScalePair`]s exist and
//!   which [`ScoredBlock`] each is scored on, runs those blocks on the calibration inputs with
//!   candidate weights, and folds a scale exactly;
//! - a [`LayerTransform`] (a method crate) decides the scales, seeing only weights, statistics and
//!   block losses through [`LayerContext`], never how the model is stored;
//! - the per-linear [`crate::Quantizer`] (RTN, GPTQ, BiLLM) then quantizes the transformed
//!   weights, in the same run.

use crate::id::LinearId;
use crate::method::{MethodError, Propagation};
use crate::stats::ChannelStats;

/// Where a per-channel scale is divided out: the producer of the consumers' common input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ScaleProducer {
    /// `input_layernorm.weight` (input of q/k/v).
    InputNorm,
    /// `post_attention_layernorm.weight` (input of gate/up; of every expert's gate/up and of the
    /// router in a MoE layer — the router's columns take the scale too and stay in full precision).
    PostAttentionNorm,
    /// The output rows of a linear: `v_proj` (consumer `o_proj`) or `up_proj` (consumer
    /// `down_proj`, valid because `down`'s input `silu(gate)·up` is linear in `up`'s rows).
    Rows(LinearId),
}

/// The sub-block whose output scores a candidate scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ScoredBlock {
    /// Self-attention from the `input_layernorm` output to the `o_proj` output (q/k norms, RoPE,
    /// causal GQA attention, `o_proj`).
    Attention,
    /// The feed-forward block from the `post_attention_layernorm` output: the dense MLP, or the
    /// whole MoE block (router in full precision, real top-k routing).
    FeedForward,
    /// One linear on its own calibration inputs.
    Linear(LinearId),
}

/// A producer, its quantized consumers and the block that scores a scale for them.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePair {
    /// Where `1/s` goes.
    pub producer: ScaleProducer,
    /// The quantized linears whose input columns are multiplied by `s`.
    pub consumers: Vec<LinearId>,
    /// What a candidate is scored on.
    pub block: ScoredBlock,
    /// Length of `s` (the producer's output width).
    pub channels: usize,
    /// For each consumer input column, the index of its factor in `s`; `None` means the identity
    /// (`channels` equals the consumers' `in_features`). Used for `v → o` under GQA, where one
    /// value channel feeds the same column of every query head in its group.
    pub column_map: Option<Vec<u32>>,
}

impl ScalePair {
    /// A short label such as `input_layernorm -> q_proj,k_proj,v_proj`.
    pub fn label(&self) -> String {
        let producer = match self.producer {
            ScaleProducer::InputNorm => "input_layernorm".to_string(),
            ScaleProducer::PostAttentionNorm => "post_attention_layernorm".to_string(),
            ScaleProducer::Rows(id) => short_name(&id),
        };
        let mut names: Vec<String> = self.consumers.iter().map(short_name).collect();
        if names.len() > 6 {
            let n = names.len();
            names.truncate(3);
            names.push(format!("... ({n} linears)"));
        }
        format!("{producer} -> {}", names.join(","))
    }

    /// Width of a consumer's input (`channels`, or the length of `column_map`).
    pub fn consumer_columns(&self) -> usize {
        self.column_map.as_ref().map_or(self.channels, Vec::len)
    }

    /// `s` expanded to one factor per consumer input column.
    pub fn expand(&self, s: &[f32]) -> Vec<f32> {
        match &self.column_map {
            None => s.to_vec(),
            Some(map) => map.iter().map(|&i| s[i as usize]).collect(),
        }
    }
}

/// `layers.3.self_attn.q_proj` → `self_attn.q_proj` (the layer is implied by the context).
pub fn short_name(id: &LinearId) -> String {
    let s = id.to_string();
    s.split_once('.')
        .and_then(|(_, rest)| rest.split_once('.'))
        .map(|(_, m)| m.to_string())
        .unwrap_or(s)
}

/// Candidate weights for one evaluation: `(linear, [out, in] row-major f32)` pairs replacing the
/// current full-precision weights of those linears; everything else stays as it is.
pub type CandidateWeights = Vec<(LinearId, Vec<f32>)>;

/// Produces candidate `i` of a batch (called from several threads).
pub type CandidateFn<'a> = dyn Fn(usize) -> Result<CandidateWeights, MethodError> + Sync + 'a;

/// One block's candidates in [`LayerContext::block_losses_many`].
pub struct LossRequest<'a> {
    /// The block that scores them.
    pub block: ScoredBlock,
    /// How many candidates.
    pub n: usize,
    /// Candidate `i`'s weights.
    pub candidate: &'a CandidateFn<'a>,
}

/// What the driver offers a [`LayerTransform`] for one decoder layer.
///
/// All quantities are in the *current* space: after a scale is folded, statistics, samples and
/// weights reflect it (the consumers' inputs are divided by `s`, their columns multiplied).
pub trait LayerContext {
    /// Decoder layer index.
    fn layer(&self) -> usize;
    /// The architecture's scale pairs for this layer, in the order the reference searches them:
    /// `input_layernorm → q,k,v`; `v → o` (every multi-head or GQA layer; a method may skip it);
    /// `post_attention_layernorm → gate,up` (all experts for MoE); `up → down` (per expert).
    fn scale_pairs(&self) -> Vec<ScalePair>;
    /// Every quantizable linear of the layer.
    fn linear_ids(&self) -> Vec<LinearId>;
    /// Current full-precision weight `[out, in]` of a linear, with `(out, in)`.
    ///
    /// # Errors
    /// [`MethodError::Context`] when the linear does not exist or is not held in full precision.
    fn weight(&self, id: LinearId) -> Result<(Vec<f32>, usize, usize), MethodError>;
    /// Per-channel `|x|` statistics of a pair's common input (the producer's output) over the
    /// calibration set: `channels` wide, or the consumers' width when a `column_map` applies.
    fn pair_stats(&self, pair: &ScalePair) -> Option<&ChannelStats>;
    /// Per-channel `|x|` statistics of one linear's input (for experts: the tokens routed to it).
    fn input_stats(&self, id: LinearId) -> Option<&ChannelStats>;
    /// A subsample of one linear's calibration inputs, `([rows, in], rows)` (AWQ's clip search
    /// uses every `T/512`-th token), if the transform asked for samples.
    fn input_sample(&self, id: LinearId) -> Option<(&[f32], usize)>;
    /// Calibration tokens that reached a linear.
    fn tokens(&self, id: LinearId) -> usize;
    /// For each of `n` candidates, the mean squared difference between `block`'s output with the
    /// candidate's weights and its output with the current weights, over all calibration tokens.
    /// Non-finite outputs give a non-finite loss, never an error.
    ///
    /// # Errors
    /// [`MethodError::Context`] (a candidate for a linear outside the block, shape mismatch) or
    /// an error from `candidate`.
    fn block_losses(
        &mut self,
        block: ScoredBlock,
        n: usize,
        candidate: &CandidateFn<'_>,
    ) -> Result<Vec<f64>, MethodError> {
        let mut all = self.block_losses_many(&[LossRequest {
            block,
            n,
            candidate,
        }])?;
        Ok(all.pop().unwrap_or_default())
    }
    /// [`LayerContext::block_losses`] for several blocks at once, all scored against the
    /// current layer: one pass over the calibration data (one forward of the layer per chunk
    /// serves every block's input and reference output) when the candidates fit in memory.
    ///
    /// # Errors
    /// As [`LayerContext::block_losses`].
    fn block_losses_many(
        &mut self,
        requests: &[LossRequest<'_>],
    ) -> Result<Vec<Vec<f64>>, MethodError>;
    /// Folds `s` (`pair.channels` positive factors) into the layer: producer `÷ s`, every
    /// consumer of that producer `× s` on its input columns (including full-precision consumers
    /// such as the MoE router), and the statistics and samples of the affected inputs `÷ s`.
    ///
    /// # Errors
    /// [`MethodError::NonFinite`] / [`MethodError::InvalidShape`] for a bad `s`, or
    /// [`MethodError::Context`] when a weight involved is not in full precision.
    fn fold_scale(&mut self, pair: &ScalePair, s: &[f32]) -> Result<(), MethodError>;
    /// Replaces a linear's full-precision weight (e.g. AWQ's clipped weight) before the
    /// per-linear quantizer runs.
    ///
    /// # Errors
    /// [`MethodError::InvalidShape`] or [`MethodError::NonFinite`].
    fn set_weight(&mut self, id: LinearId, weight: Vec<f32>) -> Result<(), MethodError>;
}

/// What a transform needs the driver to collect in its full-precision pass over a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransformNeeds {
    /// Per-channel `|x|` max/mean at every linear input.
    pub channel_stats: bool,
    /// Keep a subsample of at most this many rows of every linear's inputs.
    pub input_samples: Option<usize>,
    /// The transform scores candidates with [`LayerContext::block_losses`]: the context may keep
    /// the blocks' full-precision outputs from its capture pass (memory permitting), so that a
    /// scoring sweep does not run the layer again.
    pub block_losses: bool,
}

/// One line of a transform's log: what it chose for a pair or a linear.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TransformRecord {
    /// Decoder layer.
    pub layer: usize,
    /// `"scale"`, `"clip"` or `"smooth"`.
    pub kind: &'static str,
    /// What it applies to, e.g. `input_layernorm -> q_proj,k_proj,v_proj` or `mlp.down_proj`.
    pub target: String,
    /// The linears affected.
    pub linears: Vec<LinearId>,
    /// AWQ's chosen grid ratio `r` (or SmoothQuant's α).
    pub ratio: Option<f64>,
    /// Mean clipping ratio `max_val / max|w|` over the linear's groups.
    pub clip: Option<f64>,
    /// Loss of the chosen candidate (block MSE for scales, mean per-group error for clipping).
    pub loss: f64,
    /// Loss of the untransformed weights (ratio 0 / no clipping), for comparison.
    pub baseline_loss: f64,
    /// Set when a guard replaced the search result (no finite candidate, no tokens, ...).
    pub fallback: Option<String>,
    /// Wall time of this search.
    pub seconds: f64,
}

/// An orthogonal rotation of the whole residual stream (QuaRot / SpinQuant style), folded into
/// the model by the driver before its layer loop: the norms' weights go into the linears that
/// read them, the embeddings and every reading linear are multiplied by `Q`, every writing
/// linear by `Qᵀ`. An exact equivalence in full precision; it spreads outlier channels over all
/// channels before quantization, with no run-time cost for weight-only models.
pub trait ResidualRotation: Send + Sync {
    /// Short name (`"hadamard"`).
    fn name(&self) -> &'static str;
    /// The `[d, d]` row-major orthogonal matrix for a residual stream of width `d`.
    ///
    /// # Errors
    /// A width the rotation cannot be built for.
    fn matrix(&self, d: usize) -> Result<Vec<f32>, MethodError>;
}

/// A layer-level equivalent transform (AWQ's scale + clip search, SmoothQuant's migration, …).
/// Object-safe: hold it as `Box<dyn LayerTransform>`.
pub trait LayerTransform: Send + Sync {
    /// Short name for logs and metadata (`"awq"`, `"smoothquant"`).
    fn name(&self) -> &'static str;
    /// What the driver's full-precision pass must collect.
    fn needs(&self) -> TransformNeeds;
    /// Which outputs should feed the next layer when no per-linear method needs statistics
    /// (AWQ and SmoothQuant: full precision, as the references do).
    fn propagation(&self) -> Propagation;
    /// Transforms one layer through `ctx`, returning its log lines.
    ///
    /// # Errors
    /// See [`MethodError`].
    fn transform_layer(
        &self,
        ctx: &mut dyn LayerContext,
    ) -> Result<Vec<TransformRecord>, MethodError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::LinearKind;

    #[test]
    fn expand_and_label() {
        let pair = ScalePair {
            producer: ScaleProducer::Rows(LinearId::new(0, LinearKind::V)),
            consumers: vec![LinearId::new(0, LinearKind::O)],
            block: ScoredBlock::Linear(LinearId::new(0, LinearKind::O)),
            channels: 2,
            column_map: Some(vec![0, 1, 0, 1]),
        };
        assert_eq!(pair.expand(&[2.0, 3.0]), vec![2.0, 3.0, 2.0, 3.0]);
        assert_eq!(pair.consumer_columns(), 4);
        assert_eq!(pair.label(), "self_attn.v_proj -> self_attn.o_proj");
        fn _obj(_: &dyn LayerTransform, _: &dyn LayerContext) {}
    }
}
