//! One decoder layer, with its forward pass split into the stages the calibration driver needs.

use qwen3_quant_core::{LinearId, LinearKind};
use rayon::prelude::*;

use crate::attention::{Attention, LayerKv};
use crate::error::{ModelError, Result};
use crate::linear::LinearWeight;
use crate::mlp::{Mlp, MoeBlock};
use crate::norm::rms_norm;
use crate::observer::{Observer, Site};
use crate::rope::Rope;

/// The feed-forward half of a layer.
#[derive(Clone, Debug)]
pub enum FeedForward {
    /// Dense SwiGLU.
    Dense(Mlp),
    /// Sparse mixture of experts.
    Moe(MoeBlock),
}

/// A Qwen3 decoder layer.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    /// Layer index.
    pub index: usize,
    /// `input_layernorm.weight`.
    pub input_layernorm: Vec<f32>,
    /// `post_attention_layernorm.weight`.
    pub post_attention_layernorm: Vec<f32>,
    /// Self-attention.
    pub attn: Attention,
    /// MLP or MoE.
    pub ffn: FeedForward,
    /// RMSNorm epsilon.
    pub eps: f32,
}

/// `a += b` elementwise.
pub fn add_in_place(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(8192)
        .zip(b.par_chunks(8192))
        .for_each(|(a, b)| {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        });
}

impl DecoderLayer {
    /// `input_layernorm(h)`: the input of q/k/v.
    pub fn attn_input(&self, h: &[f32]) -> Vec<f32> {
        let mut x = vec![0.0f32; h.len()];
        rms_norm(h, &self.input_layernorm, self.eps, &mut x);
        x
    }

    /// `post_attention_layernorm(h)`: the input of the MLP.
    pub fn mlp_input(&self, h: &[f32]) -> Vec<f32> {
        let mut x = vec![0.0f32; h.len()];
        rms_norm(h, &self.post_attention_layernorm, self.eps, &mut x);
        x
    }

    /// Runs the layer in place on `h` `[batch·seq, hidden]`, reporting linear inputs to `obs`.
    pub fn forward(
        &self,
        h: &mut [f32],
        batch: usize,
        seq: usize,
        rope: &Rope,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let n = batch * seq;
        let li = self.index;
        let x = self.attn_input(h);
        if obs.wants(li, Site::AttnInput) {
            obs.observe(li, Site::AttnInput, &x, n, x.len() / n.max(1));
        }
        let core = self.attn.core(&x, batch, seq, rope)?;
        drop(x);
        self.finish(h, core, n, obs)
    }

    /// [`DecoderLayer::forward`] for `m` new tokens of one sequence continuing the positions in
    /// `cache` (see [`crate::Attention::core_cached`]), which it extends.
    pub fn forward_cached(
        &self,
        h: &mut [f32],
        m: usize,
        cache: &mut LayerKv,
        rope: &Rope,
    ) -> Result<()> {
        let x = self.attn_input(h);
        let core = self.attn.core_cached(&x, m, cache, rope)?;
        drop(x);
        self.finish(h, core, m, &mut crate::observer::NoObserver)
    }

    /// Everything after attention: `o_proj`, the residual, the MLP (or MoE) and its residual.
    fn finish(
        &self,
        h: &mut [f32],
        core: Vec<f32>,
        n: usize,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let li = self.index;
        if obs.wants(li, Site::OInput) {
            obs.observe(li, Site::OInput, &core, n, core.len() / n.max(1));
        }
        let attn_out = self.attn.o_proj.apply(&core, n)?;
        drop(core);
        add_in_place(h, &attn_out);
        drop(attn_out);
        let x = self.mlp_input(h);
        if obs.wants(li, Site::MlpInput) {
            obs.observe(li, Site::MlpInput, &x, n, x.len() / n.max(1));
        }
        let y = match &self.ffn {
            FeedForward::Dense(mlp) => {
                let act = mlp.activation(&x, n)?;
                if obs.wants(li, Site::DownInput) {
                    obs.observe(li, Site::DownInput, &act, n, act.len() / n.max(1));
                }
                mlp.down.apply(&act, n)?
            }
            FeedForward::Moe(moe) => moe.forward(&x, n, li, obs)?,
        };
        add_in_place(h, &y);
        Ok(())
    }

    /// The linear identified by `kind` (and `expert` for MoE MLPs).
    pub fn linear(&self, kind: LinearKind, expert: Option<usize>) -> Option<&LinearWeight> {
        match (kind, expert, &self.ffn) {
            (LinearKind::Q, None, _) => Some(&self.attn.q_proj),
            (LinearKind::K, None, _) => Some(&self.attn.k_proj),
            (LinearKind::V, None, _) => Some(&self.attn.v_proj),
            (LinearKind::O, None, _) => Some(&self.attn.o_proj),
            (LinearKind::Gate, None, FeedForward::Dense(m)) => Some(&m.gate),
            (LinearKind::Up, None, FeedForward::Dense(m)) => Some(&m.up),
            (LinearKind::Down, None, FeedForward::Dense(m)) => Some(&m.down),
            (k, Some(e), FeedForward::Moe(moe)) => moe.experts.get(e).and_then(|m| match k {
                LinearKind::Gate => Some(&m.gate),
                LinearKind::Up => Some(&m.up),
                LinearKind::Down => Some(&m.down),
                _ => None,
            }),
            _ => None,
        }
    }

    fn linear_mut(&mut self, kind: LinearKind, expert: Option<usize>) -> Option<&mut LinearWeight> {
        match (kind, expert, &mut self.ffn) {
            (LinearKind::Q, None, _) => Some(&mut self.attn.q_proj),
            (LinearKind::K, None, _) => Some(&mut self.attn.k_proj),
            (LinearKind::V, None, _) => Some(&mut self.attn.v_proj),
            (LinearKind::O, None, _) => Some(&mut self.attn.o_proj),
            (LinearKind::Gate, None, FeedForward::Dense(m)) => Some(&mut m.gate),
            (LinearKind::Up, None, FeedForward::Dense(m)) => Some(&mut m.up),
            (LinearKind::Down, None, FeedForward::Dense(m)) => Some(&mut m.down),
            (k, Some(e), FeedForward::Moe(moe)) => moe.experts.get_mut(e).and_then(|m| match k {
                LinearKind::Gate => Some(&mut m.gate),
                LinearKind::Up => Some(&mut m.up),
                LinearKind::Down => Some(&mut m.down),
                _ => None,
            }),
            _ => None,
        }
    }

    /// Ids of every quantizable linear of this layer, in the reference's dict order
    /// (q, k, v, o, gate, up, down; experts in index order).
    pub fn linear_ids(&self) -> Vec<LinearId> {
        let l = self.index;
        let mut ids: Vec<LinearId> = [LinearKind::Q, LinearKind::K, LinearKind::V, LinearKind::O]
            .into_iter()
            .map(|kind| LinearId {
                layer: l,
                kind,
                expert: None,
            })
            .collect();
        match &self.ffn {
            FeedForward::Dense(_) => {
                for kind in [LinearKind::Gate, LinearKind::Up, LinearKind::Down] {
                    ids.push(LinearId {
                        layer: l,
                        kind,
                        expert: None,
                    });
                }
            }
            FeedForward::Moe(m) => {
                for e in 0..m.experts.len() {
                    for kind in [LinearKind::Gate, LinearKind::Up, LinearKind::Down] {
                        ids.push(LinearId {
                            layer: l,
                            kind,
                            expert: Some(e),
                        });
                    }
                }
            }
        }
        ids
    }

    /// Replaces one linear's weight (dense, fake-quantized or packed) in place; shapes must agree.
    pub fn replace_linear(&mut self, id: &LinearId, weight: LinearWeight) -> Result<LinearWeight> {
        let slot =
            self.linear_mut(id.kind, id.expert)
                .ok_or_else(|| ModelError::BadReplacement {
                    id: id.to_string(),
                    reason: "no such linear in this layer".into(),
                })?;
        if slot.out_features() != weight.out_features()
            || slot.in_features() != weight.in_features()
        {
            return Err(ModelError::BadReplacement {
                id: id.to_string(),
                reason: format!(
                    "shape [{}, {}] does not match [{}, {}]",
                    weight.out_features(),
                    weight.in_features(),
                    slot.out_features(),
                    slot.in_features()
                ),
            });
        }
        Ok(std::mem::replace(slot, weight))
    }
}
