//! One decoder layer, with its forward pass split into the stages the calibration driver needs.

use qwen3_quant_core::{LinearId, LinearKind, ScoredBlock};
use rayon::prelude::*;

use crate::attention::{add_bias, Attention, LayerKv};
use crate::error::{ModelError, Result};
use crate::linear::LinearWeight;
use crate::mlp::swiglu_lhs;
use crate::mlp::{Mlp, MoeBlock};
use crate::norm::{inv_rms_rows, rms_norm};
use crate::observer::{Observer, Site};
use crate::rope::Rope;
use qwen3_quant_kernels::dense::{self, Epilogue, Lhs, RowNorm};

/// The feed-forward half of a layer.
///
/// A model holds one per layer, so the size difference between the variants costs nothing worth
/// a box (which would change every `match` of the public API).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum FeedForward {
    /// Dense SwiGLU.
    Dense(Mlp),
    /// Sparse mixture of experts.
    Moe(MoeBlock),
}

/// A decoder layer (Qwen3, Qwen3-MoE or LLaMA).
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

/// `h += x · Wᵀ`: the product's epilogue adds it to the residual when `w` is dense.
fn add_product(w: &LinearWeight, x: &[f32], m: usize, h: &mut [f32]) -> Result<()> {
    let (n, k) = (w.out_features(), w.in_features());
    match w {
        LinearWeight::Dense { weight, .. } if x.len() == m * k && h.len() == m * n => {
            dense::gemm_wt(Lhs::new(x, m, k), &[weight], Epilogue::Add, h, n);
        }
        _ => {
            let shapes_fit = x.len() == m * k && h.len() == m * n;
            if let Some(ws) = shapes_fit
                .then(|| crate::linear::prefill_dense(&[w], m))
                .flatten()
            {
                dense::gemm_wt(Lhs::new(x, m, k), &[&ws[0]], Epilogue::Add, h, n);
                return Ok(());
            }
            let y = w.apply(x, m)?;
            if y.len() != h.len() {
                return Err(ModelError::Shape {
                    what: "residual",
                    expected: h.len(),
                    got: y.len(),
                });
            }
            add_in_place(h, &y);
        }
    }
    Ok(())
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
    ///
    /// The norms run inside the products that consume them and the residual adds inside the
    /// products that produce them (see [`qwen3_quant_kernels::dense`]); an input an observer
    /// wants is materialised first.
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
        let hidden = self.input_layernorm.len();
        if h.len() != n * hidden {
            return Err(ModelError::Shape {
                what: "hidden states",
                expected: n * hidden,
                got: h.len(),
            });
        }
        let core = if obs.wants(li, Site::AttnInput) {
            let x = self.attn_input(h);
            obs.observe(li, Site::AttnInput, &x, n, hidden);
            self.attn.core(&x, batch, seq, rope)?
        } else {
            let inv = inv_rms_rows(h, hidden, self.eps);
            let norm = RowNorm {
                inv_rms: &inv,
                weight: &self.input_layernorm,
            };
            let x = Lhs::new(h, n, hidden).normed(norm);
            self.attn
                .core_lhs(self.attn.projections(), x, batch, seq, rope)?
        };
        self.finish(h, core, n, obs)
    }

    /// [`DecoderLayer::forward`] for `m` new tokens of one sequence continuing the positions in
    /// `cache` (see [`crate::attention::Attention::core_cached`]), which it extends.
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
        let hidden = self.post_attention_layernorm.len();
        if obs.wants(li, Site::OInput) {
            obs.observe(li, Site::OInput, &core, n, core.len() / n.max(1));
        }
        let keep_outputs = obs.wants_block_outputs(li);
        if keep_outputs {
            let y = self.attn.output(&core, n)?;
            obs.observe_block_output(li, ScoredBlock::Attention, &y, n, hidden);
            add_in_place(h, &y);
        } else {
            add_product(&self.attn.o_proj, &core, n, h)?;
            add_bias(h, self.attn.bias.o.as_deref());
        }
        drop(core);
        let FeedForward::Dense(mlp) = &self.ffn else {
            let FeedForward::Moe(moe) = &self.ffn else {
                unreachable!("two kinds of feed-forward")
            };
            let x = self.mlp_input(h);
            if obs.wants(li, Site::MlpInput) {
                obs.observe(li, Site::MlpInput, &x, n, hidden);
            }
            let y = moe.forward(&x, n, li, obs)?;
            if keep_outputs {
                obs.observe_block_output(li, ScoredBlock::FeedForward, &y, n, hidden);
            }
            add_in_place(h, &y);
            return Ok(());
        };
        let act = if obs.wants(li, Site::MlpInput) {
            let x = self.mlp_input(h);
            obs.observe(li, Site::MlpInput, &x, n, hidden);
            mlp.activation(&x, n)?
        } else {
            let inv = inv_rms_rows(h, hidden, self.eps);
            let norm = RowNorm {
                inv_rms: &inv,
                weight: &self.post_attention_layernorm,
            };
            swiglu_lhs(&mlp.gate, &mlp.up, Lhs::new(h, n, hidden).normed(norm))?
        };
        if obs.wants(li, Site::DownInput) {
            obs.observe(li, Site::DownInput, &act, n, act.len() / n.max(1));
        }
        if keep_outputs {
            let y = mlp.down.apply(&act, n)?;
            obs.observe_block_output(li, ScoredBlock::FeedForward, &y, n, hidden);
            add_in_place(h, &y);
            return Ok(());
        }
        add_product(&mlp.down, &act, n, h)
    }

    /// The full-precision bias added to the output of the linear `kind` (attention biases;
    /// `None` where the checkpoint has none, and always for the MLP).
    pub fn linear_bias(&self, kind: LinearKind, expert: Option<usize>) -> Option<&[f32]> {
        let b = &self.attn.bias;
        match (kind, expert) {
            (LinearKind::Q, None) => b.q.as_deref(),
            (LinearKind::K, None) => b.k.as_deref(),
            (LinearKind::V, None) => b.v.as_deref(),
            (LinearKind::O, None) => b.o.as_deref(),
            _ => None,
        }
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

    /// The dense f32 values of a linear, to overwrite in place (e.g. with its fake-quantized
    /// values); `None` when there is no such linear or it is not stored dense.
    pub fn dense_weight_mut(
        &mut self,
        kind: LinearKind,
        expert: Option<usize>,
    ) -> Option<&mut [f32]> {
        self.linear_mut(kind, expert)
            .and_then(LinearWeight::dense_mut)
    }

    pub(crate) fn linear_mut(
        &mut self,
        kind: LinearKind,
        expert: Option<usize>,
    ) -> Option<&mut LinearWeight> {
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

    /// Frees one linear's weight and returns it, leaving an empty 0 × 0 slot: for a driver that
    /// streams a model and keeps a finished linear only as its quantized codes. The layer cannot
    /// run that linear afterwards (a forward through it returns a shape error).
    pub fn release_linear(&mut self, id: &LinearId) -> Result<LinearWeight> {
        let slot = self.linear_slot(id)?;
        Ok(std::mem::replace(
            slot,
            LinearWeight::Dense {
                out_features: 0,
                in_features: 0,
                weight: Vec::new(),
            },
        ))
    }

    /// Replaces one linear's weight (dense, fake-quantized or packed) in place; shapes must agree.
    pub fn replace_linear(&mut self, id: &LinearId, weight: LinearWeight) -> Result<LinearWeight> {
        let slot = self.linear_slot(id)?;
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

    /// The weight slot of linear `id`, or an error naming it.
    fn linear_slot(&mut self, id: &LinearId) -> Result<&mut LinearWeight> {
        self.linear_mut(id.kind, id.expert)
            .ok_or_else(|| ModelError::BadReplacement {
                id: id.to_string(),
                reason: "no such linear in this layer".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    //! The fused layer (norms inside the products, residual adds and `silu·up` in their
    //! epilogues, flash-style attention) against the straightforward composition of the same
    //! steps, on the bundled model's first layer.
    use super::*;
    use crate::observer::NoObserver;
    use crate::Qwen3Model;

    /// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`).
    const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

    fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// One layer step by step, every intermediate materialised (what the layer did before the
    /// fused kernels).
    fn layer_unfused(
        l: &DecoderLayer,
        h: &[f32],
        batch: usize,
        seq: usize,
        rope: &Rope,
    ) -> Vec<f32> {
        let n = batch * seq;
        let a = &l.attn;
        let x = l.attn_input(h);
        let (q, k, v) = (
            a.q_proj.apply(&x, n).unwrap(),
            a.k_proj.apply(&x, n).unwrap(),
            a.v_proj.apply(&x, n).unwrap(),
        );
        let hd = a.head_dim;
        let normed = |mut t: Vec<f32>, w: &[f32]| {
            let width = t.len() / n;
            for (row, r) in t.chunks_mut(width).enumerate() {
                crate::norm::rms_norm_in_place(r, w, a.eps);
                r.chunks_mut(hd).for_each(|hh| rope.apply(hh, row % seq));
            }
            t
        };
        let (q, k) = (
            normed(q, a.q_norm.as_ref().unwrap()),
            normed(k, a.k_norm.as_ref().unwrap()),
        );
        let core = a.attend_unfused(&q, &k, &v, batch, seq, 1.0 / (hd as f32).sqrt());
        let mut h = h.to_vec();
        add_in_place(&mut h, &a.o_proj.apply(&core, n).unwrap());
        let x = l.mlp_input(&h);
        let FeedForward::Dense(mlp) = &l.ffn else {
            unreachable!()
        };
        let g = mlp.gate.apply(&x, n).unwrap();
        let u = mlp.up.apply(&x, n).unwrap();
        let act: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        add_in_place(&mut h, &mlp.down.apply(&act, n).unwrap());
        h
    }

    #[test]
    fn fused_layer_matches_the_step_by_step_one() {
        let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
            return;
        };
        let model = Qwen3Model::load(format!("{ASSETS}/models/qwen3-micro")).unwrap();
        let l = &model.layers[0];
        // Two sequences; 300 tokens cross the 14-row panels, 32-key tiles and 256-key chunks.
        let (batch, seq) = (2, 300);
        let rope = model.rope(seq);
        let ids: Vec<u32> = (0..batch * seq)
            .map(|i| ((i * 7919 + 3) % 8192) as u32)
            .collect();
        let h0 = model.embed(&ids).unwrap();
        let want = layer_unfused(l, &h0, batch, seq, &rope);
        let mut got = h0.clone();
        l.forward(&mut got, batch, seq, &rope, &mut NoObserver)
            .unwrap();
        let d = rel_diff(&got, &want);
        assert!(d < 2e-6, "fused layer differs by {d} (relative to max |h|)");
    }

    /// A released linear gives its weights back and leaves an empty slot: running the layer
    /// through it is a typed error, not a panic; a shape-checked replacement is refused.
    #[test]
    fn released_linear_is_an_error_to_run() {
        let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
            return;
        };
        let model = Qwen3Model::load(format!("{ASSETS}/models/qwen3-micro")).unwrap();
        let mut l = model.layers[0].clone();
        let id = LinearId {
            layer: 0,
            kind: LinearKind::Up,
            expert: None,
        };
        let before = l.linear(id.kind, None).unwrap().to_dense();
        let taken = l.release_linear(&id).unwrap();
        assert_eq!(taken.to_dense(), before);
        let slot = l.linear(id.kind, None).unwrap();
        assert_eq!((slot.out_features(), slot.in_features()), (0, 0));
        let rope = model.rope(4);
        let mut h = model.embed(&[1, 2, 3, 4]).unwrap();
        assert!(l.forward(&mut h, 1, 4, &rope, &mut NoObserver).is_err());
        assert!(l.replace_linear(&id, taken).is_err());
        let missing = LinearId {
            expert: Some(3),
            ..id
        };
        assert!(l.release_linear(&missing).is_err());
    }
}
