//! What the architecture offers layer-level equivalent transforms (AWQ, SmoothQuant): which
//! producer/consumer pairs exist, how to fold a per-channel scale into them exactly, and how to
//! run a scored sub-block on calibration inputs with candidate weights.

use std::collections::HashMap;

use qwen3_quant_core::{LinearId, LinearKind, ScalePair, ScaleProducer, ScoredBlock};

use crate::error::{ModelError, Result};
use crate::layer::{add_in_place, DecoderLayer, FeedForward};
use crate::linear::LinearWeight;
use crate::mlp::gather_rows;
use crate::observer::NoObserver;
use crate::rope::Rope;

/// Replacement weights keyed by linear (candidates of a transform search).
pub type LinearOverrides = HashMap<LinearId, LinearWeight>;

/// The input of a scored block for one chunk of calibration sequences.
#[derive(Clone, Debug)]
pub struct BlockInput {
    /// `[rows, width]` row-major.
    pub x: Vec<f32>,
    /// Rows (tokens; for an expert's linear, the tokens routed to it).
    pub rows: usize,
}

fn bad(reason: impl Into<String>) -> ModelError {
    ModelError::BadReplacement {
        id: "scale fold".into(),
        reason: reason.into(),
    }
}

fn dense_mut<'a>(w: &'a mut LinearWeight, what: &str) -> Result<&'a mut Vec<f32>> {
    match w {
        LinearWeight::Dense { weight, .. } => Ok(weight),
        _ => Err(bad(format!(
            "{what} is not held in full precision; fold scales before quantizing"
        ))),
    }
}

/// Per-channel factors must be positive and finite: a fold or a rescale by anything else would
/// not be an equivalence.
fn check_factors(s: &[f32]) -> Result<()> {
    match s.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
        Some(i) => Err(bad(format!(
            "factor {i} is {} (must be positive and finite)",
            s[i]
        ))),
        None => Ok(()),
    }
}

/// `W[:, c] *= f[c]` for a dense `[out, in]` weight.
fn scale_columns(w: &mut LinearWeight, f: &[f32], what: &str) -> Result<()> {
    let cols = w.in_features();
    if f.len() != cols {
        return Err(ModelError::Shape {
            what: "scale (consumer columns)",
            expected: cols,
            got: f.len(),
        });
    }
    let data = dense_mut(w, what)?;
    for row in data.chunks_exact_mut(cols.max(1)) {
        row.iter_mut().zip(f).for_each(|(v, s)| *v *= s);
    }
    Ok(())
}

/// `W[r, :] /= s[r]` for the last `s.len()` rows of a dense weight.
fn divide_rows(w: &mut LinearWeight, s: &[f32], what: &str) -> Result<()> {
    let (rows, cols) = (w.out_features(), w.in_features());
    if s.len() != rows {
        return Err(ModelError::Shape {
            what: "scale (producer rows)",
            expected: rows,
            got: s.len(),
        });
    }
    let data = dense_mut(w, what)?;
    for (row, f) in data.chunks_exact_mut(cols.max(1)).zip(s) {
        row.iter_mut().for_each(|v| *v /= f);
    }
    Ok(())
}

/// Every scored block's input and full-precision output for one chunk of layer inputs, from a
/// single forward of the layer (what a search over several pairs shares).
#[derive(Clone, Debug)]
pub struct LayerTrace {
    batch: usize,
    seq: usize,
    attn_in: Vec<f32>,
    /// The attention core (o_proj's input); `None` in a trace rebuilt from block outputs.
    core: Option<Vec<f32>>,
    attn_out: Vec<f32>,
    mlp_in: Vec<f32>,
    ffn_out: Vec<f32>,
    /// Dense layers: `silu(gate)·up` (`None` in a trace rebuilt from block outputs).
    down_in: Option<Vec<f32>>,
    /// MoE layers: which rows each expert serves.
    routing: Option<crate::mlp::Routing>,
}

impl LayerTrace {
    /// Tokens in the chunk.
    pub fn rows(&self) -> usize {
        self.batch * self.seq
    }
}

impl DecoderLayer {
    /// Runs the layer once on `h` (`batch` sequences of `seq` tokens), keeping what
    /// [`DecoderLayer::trace_input`] and [`DecoderLayer::trace_output`] hand out.
    ///
    /// # Errors
    /// Shape errors of the forward.
    pub fn trace(&self, h: &[f32], batch: usize, seq: usize, rope: &Rope) -> Result<LayerTrace> {
        let n = batch * seq;
        let attn_in = self.attn_input(h);
        let core = self.attn.core(&attn_in, batch, seq, rope)?;
        let attn_out = self.attn.output(&core, n)?;
        let mut r = h.to_vec();
        add_in_place(&mut r, &attn_out);
        let mlp_in = self.mlp_input(&r);
        drop(r);
        let (ffn_out, down_in, routing) = match &self.ffn {
            FeedForward::Dense(m) => {
                let a = m.activation(&mlp_in, n)?;
                (m.down.apply(&a, n)?, Some(a), None)
            }
            FeedForward::Moe(m) => (
                m.forward(&mlp_in, n, self.index, &mut NoObserver)?,
                None,
                Some(m.route(&mlp_in, n)?),
            ),
        };
        Ok(LayerTrace {
            batch,
            seq,
            attn_in,
            core: Some(core),
            attn_out,
            mlp_in,
            ffn_out,
            down_in,
            routing,
        })
    }

    /// A trace of `h` rebuilt from the blocks' outputs kept by an earlier forward (see
    /// [`crate::Observer::observe_block_output`]), with no product of the attention block or
    /// the MLP: the blocks' inputs are the norms of `h` and `h + attn_out`. It lacks
    /// `o_proj`'s and a dense `down_proj`'s inputs ([`DecoderLayer::trace_input`] of those is an
    /// error); an MoE layer's routing is recomputed.
    ///
    /// # Errors
    /// [`ModelError::Shape`] when the outputs are not `[batch·seq, hidden]`, or an error of the
    /// router.
    pub fn trace_from_block_outputs(
        &self,
        h: &[f32],
        batch: usize,
        seq: usize,
        attn_out: Vec<f32>,
        ffn_out: Vec<f32>,
    ) -> Result<LayerTrace> {
        let n = batch * seq;
        let expected = n * self.input_layernorm.len();
        for (what, got) in [
            ("hidden states", h.len()),
            ("attention block output", attn_out.len()),
            ("feed-forward block output", ffn_out.len()),
        ] {
            if got != expected {
                return Err(ModelError::Shape {
                    what,
                    expected,
                    got,
                });
            }
        }
        let attn_in = self.attn_input(h);
        let mut r = h.to_vec();
        add_in_place(&mut r, &attn_out);
        let mlp_in = self.mlp_input(&r);
        drop(r);
        let routing = match &self.ffn {
            FeedForward::Dense(_) => None,
            FeedForward::Moe(m) => Some(m.route(&mlp_in, n)?),
        };
        Ok(LayerTrace {
            batch,
            seq,
            attn_in,
            core: None,
            attn_out,
            mlp_in,
            ffn_out,
            down_in: None,
            routing,
        })
    }

    /// The input of `block` from a trace of this layer (the same values as
    /// [`DecoderLayer::block_input`] on the traced chunk).
    ///
    /// # Errors
    /// A block naming a linear this layer does not have, or a trace of another kind of layer.
    pub fn trace_input(&self, t: &LayerTrace, block: ScoredBlock) -> Result<BlockInput> {
        use LinearKind::*;
        let n = t.rows();
        let full = |x: &Vec<f32>| BlockInput {
            x: x.clone(),
            rows: n,
        };
        Ok(match block {
            ScoredBlock::Attention => full(&t.attn_in),
            ScoredBlock::FeedForward => full(&t.mlp_in),
            ScoredBlock::Linear(id) => {
                match (id.kind, id.expert, &self.ffn, &t.down_in, &t.routing) {
                    (Q | K | V, None, ..) => full(&t.attn_in),
                    (O, None, ..) => match &t.core {
                        Some(core) => full(core),
                        None => return Err(bad("o_proj's input is not in this trace")),
                    },
                    (Gate | Up, None, FeedForward::Dense(_), ..) => full(&t.mlp_in),
                    (Down, None, FeedForward::Dense(_), Some(a), _) => full(a),
                    (Down, None, FeedForward::Dense(_), None, _) => {
                        return Err(bad("down_proj's input is not in this trace"))
                    }
                    (Gate | Up | Down, Some(e), FeedForward::Moe(moe), _, Some(routing))
                        if e < moe.experts.len() =>
                    {
                        let rows = &routing.rows[e];
                        let xe = gather_rows(&t.mlp_in, moe.router.in_features(), rows);
                        let xe = if id.kind == Down && !rows.is_empty() {
                            moe.experts[e].activation(&xe, rows.len())?
                        } else {
                            xe
                        };
                        BlockInput {
                            x: xe,
                            rows: rows.len(),
                        }
                    }
                    _ => return Err(bad(format!("{id} is not a linear of layer {}", self.index))),
                }
            }
            other => return Err(bad(format!("unsupported block {other:?}"))),
        })
    }

    /// The full-precision output of `block` in a trace (for a single linear: its output on its
    /// input), what candidates are compared with.
    ///
    /// # Errors
    /// As [`DecoderLayer::trace_input`].
    pub fn trace_output(&self, t: &LayerTrace, block: ScoredBlock) -> Result<Vec<f32>> {
        match block {
            ScoredBlock::Attention => Ok(t.attn_out.clone()),
            ScoredBlock::FeedForward => Ok(t.ffn_out.clone()),
            ScoredBlock::Linear(id) if id.kind == LinearKind::O && id.expert.is_none() => {
                Ok(t.attn_out.clone())
            }
            ScoredBlock::Linear(id)
                if id.kind == LinearKind::Down
                    && id.expert.is_none()
                    && matches!(self.ffn, FeedForward::Dense(_)) =>
            {
                Ok(t.ffn_out.clone())
            }
            other => {
                let input = self.trace_input(t, other)?;
                self.block_output(
                    other,
                    &input,
                    t.batch,
                    t.seq,
                    &Rope::new(2, 1.0, 0),
                    &LinearOverrides::new(),
                )
            }
        }
    }

    fn id(&self, kind: LinearKind, expert: Option<usize>) -> LinearId {
        LinearId {
            layer: self.index,
            kind,
            expert,
        }
    }

    /// For each `o_proj` input column, the value channel it reads (`None` without GQA).
    fn o_column_map(&self) -> Option<Vec<u32>> {
        let a = &self.attn;
        if a.heads == a.kv_heads {
            return None;
        }
        let group = a.heads / a.kv_heads;
        Some(
            (0..a.heads * a.head_dim)
                .map(|c| ((c / a.head_dim / group) * a.head_dim + c % a.head_dim) as u32)
                .collect(),
        )
    }

    /// The producer/consumer pairs of this layer, in the reference search order:
    /// `input_layernorm → q,k,v` (attention), `v → o` (`o_proj`), `post_attention_layernorm →
    /// gate,up` (the MLP, or the MoE block with every expert's gate/up), `up → down` (per expert).
    pub fn scale_pairs(&self) -> Vec<ScalePair> {
        use LinearKind::*;
        let hidden = self.input_layernorm.len();
        let kv_dim = self.attn.v_proj.out_features();
        let mut pairs = vec![
            ScalePair {
                producer: ScaleProducer::InputNorm,
                consumers: vec![self.id(Q, None), self.id(K, None), self.id(V, None)],
                block: ScoredBlock::Attention,
                channels: hidden,
                column_map: None,
            },
            ScalePair {
                producer: ScaleProducer::Rows(self.id(V, None)),
                consumers: vec![self.id(O, None)],
                block: ScoredBlock::Linear(self.id(O, None)),
                channels: kv_dim,
                column_map: self.o_column_map(),
            },
        ];
        let experts: Vec<Option<usize>> = match &self.ffn {
            FeedForward::Dense(_) => vec![None],
            FeedForward::Moe(m) => (0..m.experts.len()).map(Some).collect(),
        };
        pairs.push(ScalePair {
            producer: ScaleProducer::PostAttentionNorm,
            consumers: experts
                .iter()
                .flat_map(|&e| [self.id(Gate, e), self.id(Up, e)])
                .collect(),
            block: ScoredBlock::FeedForward,
            channels: hidden,
            column_map: None,
        });
        for &e in &experts {
            let inter = self.linear(Up, e).map_or(0, LinearWeight::out_features);
            pairs.push(ScalePair {
                producer: ScaleProducer::Rows(self.id(Up, e)),
                consumers: vec![self.id(Down, e)],
                block: ScoredBlock::Linear(self.id(Down, e)),
                channels: inter,
                column_map: None,
            });
        }
        pairs
    }

    fn linear_mut_checked(&mut self, id: LinearId) -> Result<&mut LinearWeight> {
        let name = id.to_string();
        self.linear_mut(id.kind, id.expert)
            .ok_or_else(|| bad(format!("{name} does not exist")))
    }

    /// Multiplies the weight of a norm (`InputNorm` or `PostAttentionNorm`) by `s` and leaves
    /// the linears that read it as they are, so that they now compute `W·diag(s)·x`: the
    /// post-quantization refit of the norm (`qwen3_quant_core::norm_refit`). The MoE router
    /// stays in full precision and keeps its logits: its input columns are divided by `s`.
    ///
    /// # Errors
    /// [`ModelError::Shape`] for a wrong length, [`ModelError::BadReplacement`] for a
    /// non-positive or non-finite factor, a producer that is not a norm, or a router that is not
    /// dense.
    pub fn rescale_norm(&mut self, producer: ScaleProducer, s: &[f32]) -> Result<()> {
        check_factors(s)?;
        let norm = match producer {
            ScaleProducer::InputNorm => &mut self.input_layernorm,
            ScaleProducer::PostAttentionNorm => &mut self.post_attention_layernorm,
            other => return Err(bad(format!("{other:?} is not a norm"))),
        };
        if s.len() != norm.len() {
            return Err(ModelError::Shape {
                what: "scale (norm)",
                expected: norm.len(),
                got: s.len(),
            });
        }
        norm.iter_mut().zip(s).for_each(|(w, f)| *w *= f);
        if let (ScaleProducer::PostAttentionNorm, FeedForward::Moe(m)) = (producer, &mut self.ffn) {
            let inv: Vec<f32> = s.iter().map(|f| 1.0 / f).collect();
            scale_columns(&mut m.router, &inv, "router")?;
        }
        Ok(())
    }

    /// Folds `s` into `producer` exactly: the producer is divided by `s` (a producer linear's
    /// bias rows too, e.g. `v_proj.bias`) and every consumer of its output (including the MoE
    /// router, which stays in full precision) has its input columns multiplied by `s`, so the
    /// layer computes the same function up to rounding.
    ///
    /// # Errors
    /// [`ModelError::Shape`] for a wrong length, [`ModelError::BadReplacement`] for a
    /// non-positive or non-finite factor, an unknown producer, or a weight that is not dense.
    pub fn fold_scale(&mut self, producer: ScaleProducer, s: &[f32]) -> Result<()> {
        check_factors(s)?;
        use LinearKind::*;
        match producer {
            ScaleProducer::InputNorm => {
                if s.len() != self.input_layernorm.len() {
                    return Err(ModelError::Shape {
                        what: "scale (input_layernorm)",
                        expected: self.input_layernorm.len(),
                        got: s.len(),
                    });
                }
                for w in [
                    &mut self.attn.q_proj,
                    &mut self.attn.k_proj,
                    &mut self.attn.v_proj,
                ] {
                    scale_columns(w, s, "q/k/v")?;
                }
                self.input_layernorm
                    .iter_mut()
                    .zip(s)
                    .for_each(|(w, f)| *w /= f);
            }
            ScaleProducer::PostAttentionNorm => {
                if s.len() != self.post_attention_layernorm.len() {
                    return Err(ModelError::Shape {
                        what: "scale (post_attention_layernorm)",
                        expected: self.post_attention_layernorm.len(),
                        got: s.len(),
                    });
                }
                match &mut self.ffn {
                    FeedForward::Dense(m) => {
                        scale_columns(&mut m.gate, s, "gate_proj")?;
                        scale_columns(&mut m.up, s, "up_proj")?;
                    }
                    FeedForward::Moe(m) => {
                        scale_columns(&mut m.router, s, "router")?;
                        for e in &mut m.experts {
                            scale_columns(&mut e.gate, s, "expert gate_proj")?;
                            scale_columns(&mut e.up, s, "expert up_proj")?;
                        }
                    }
                }
                self.post_attention_layernorm
                    .iter_mut()
                    .zip(s)
                    .for_each(|(w, f)| *w /= f);
            }
            ScaleProducer::Rows(id) if id.kind == V && id.expert.is_none() => {
                let map = self.o_column_map();
                let f: Vec<f32> = match &map {
                    None => s.to_vec(),
                    Some(m) => m
                        .iter()
                        .map(|&i| s.get(i as usize).copied().unwrap_or(1.0))
                        .collect(),
                };
                divide_rows(&mut self.attn.v_proj, s, "v_proj")?;
                scale_columns(&mut self.attn.o_proj, &f, "o_proj")?;
                // v's output rows are divided by s, bias included; o's bias reads o's output.
                if let Some(b) = &mut self.attn.bias.v {
                    b.iter_mut().zip(s).for_each(|(b, f)| *b /= f);
                }
            }
            ScaleProducer::Rows(id) if id.kind == Up => {
                let up = self.linear_mut_checked(self.id(Up, id.expert))?;
                divide_rows(up, s, "up_proj")?;
                let down = self.linear_mut_checked(self.id(Down, id.expert))?;
                scale_columns(down, s, "down_proj")?;
            }
            ScaleProducer::Rows(id) => {
                return Err(bad(format!(
                    "{id} has no consumer a scale can be folded into (only v_proj and up_proj rows)"
                )))
            }
            other => return Err(bad(format!("unsupported producer {other:?}"))),
        }
        Ok(())
    }

    /// The input of `block` for a chunk `h` of layer inputs (`batch` sequences of `seq` tokens),
    /// computed through the current weights.
    ///
    /// # Errors
    /// Shape errors of the forward, or a block naming a linear this layer does not have.
    pub fn block_input(
        &self,
        block: ScoredBlock,
        h: &[f32],
        batch: usize,
        seq: usize,
        rope: &Rope,
    ) -> Result<BlockInput> {
        use LinearKind::*;
        let n = batch * seq;
        let attn_in = || self.attn_input(h);
        let mlp_in = || -> Result<Vec<f32>> {
            let core = self.attn.core(&self.attn_input(h), batch, seq, rope)?;
            let o = self.attn.output(&core, n)?;
            let mut r = h.to_vec();
            add_in_place(&mut r, &o);
            Ok(self.mlp_input(&r))
        };
        let full = |x: Vec<f32>| BlockInput { x, rows: n };
        Ok(match block {
            ScoredBlock::Attention => full(attn_in()),
            ScoredBlock::FeedForward => full(mlp_in()?),
            ScoredBlock::Linear(id) => match (id.kind, id.expert, &self.ffn) {
                (Q | K | V, None, _) => full(attn_in()),
                (O, None, _) => full(self.attn.core(&attn_in(), batch, seq, rope)?),
                (Gate | Up, None, FeedForward::Dense(_)) => full(mlp_in()?),
                (Down, None, FeedForward::Dense(m)) => full(m.activation(&mlp_in()?, n)?),
                (Gate | Up | Down, Some(e), FeedForward::Moe(moe)) if e < moe.experts.len() => {
                    let x = mlp_in()?;
                    let routing = moe.route(&x, n)?;
                    let rows = &routing.rows[e];
                    let xe = gather_rows(&x, moe.router.in_features(), rows);
                    let xe = if id.kind == Down && !rows.is_empty() {
                        moe.experts[e].activation(&xe, rows.len())?
                    } else {
                        xe
                    };
                    BlockInput {
                        x: xe,
                        rows: rows.len(),
                    }
                }
                _ => return Err(bad(format!("{id} is not a linear of layer {}", self.index))),
            },
            other => return Err(bad(format!("unsupported block {other:?}"))),
        })
    }

    /// The output of `block` on `input` (from [`DecoderLayer::block_input`]) with the linears in
    /// `overrides` replaced; an override of a linear outside the block is an error.
    ///
    /// # Errors
    /// As [`DecoderLayer::block_input`], plus [`ModelError::BadReplacement`] for a misplaced or
    /// misshapen override.
    pub fn block_output(
        &self,
        block: ScoredBlock,
        input: &BlockInput,
        batch: usize,
        seq: usize,
        rope: &Rope,
        overrides: &LinearOverrides,
    ) -> Result<Vec<f32>> {
        use LinearKind::*;
        let allowed = |id: &LinearId| match block {
            ScoredBlock::Attention => matches!(id.kind, Q | K | V) && id.expert.is_none(),
            ScoredBlock::FeedForward => matches!(id.kind, Gate | Up | Down),
            ScoredBlock::Linear(b) => *id == b,
            _ => false,
        };
        for (id, w) in overrides {
            if id.layer != self.index || !allowed(id) {
                return Err(bad(format!(
                    "{id} is not part of the scored block {block:?}"
                )));
            }
            let cur = self
                .linear(id.kind, id.expert)
                .ok_or_else(|| bad(format!("{id} does not exist")))?;
            if (cur.out_features(), cur.in_features()) != (w.out_features(), w.in_features()) {
                return Err(bad(format!(
                    "{id}: candidate shape differs from the weight"
                )));
            }
        }
        let get = |kind, expert| overrides.get(&self.id(kind, expert));
        match block {
            ScoredBlock::Attention => {
                let a = &self.attn;
                let proj = [
                    get(Q, None).unwrap_or(&a.q_proj),
                    get(K, None).unwrap_or(&a.k_proj),
                    get(V, None).unwrap_or(&a.v_proj),
                ];
                let core = a.core_with(proj, &input.x, batch, seq, rope)?;
                a.output(&core, input.rows)
            }
            ScoredBlock::FeedForward => match &self.ffn {
                FeedForward::Dense(m) => m.forward_with(
                    [get(Gate, None), get(Up, None), get(Down, None)],
                    &input.x,
                    input.rows,
                ),
                FeedForward::Moe(m) => m.forward_with(
                    &|e| [get(Gate, Some(e)), get(Up, Some(e)), get(Down, Some(e))],
                    &input.x,
                    input.rows,
                    self.index,
                    &mut NoObserver,
                ),
            },
            ScoredBlock::Linear(id) => {
                let w = match get(id.kind, id.expert) {
                    Some(w) => w,
                    None => self
                        .linear(id.kind, id.expert)
                        .ok_or_else(|| bad(format!("{id} does not exist")))?,
                };
                let mut y = w.apply(&input.x, input.rows)?;
                crate::attention::add_bias(&mut y, self.linear_bias(id.kind, id.expert));
                Ok(y)
            }
            other => Err(bad(format!("unsupported block {other:?}"))),
        }
    }
}
