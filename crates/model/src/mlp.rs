//! Feed-forward blocks: the dense SwiGLU MLP and the Qwen3-MoE sparse block.

use qwen3_quant_kernels::dense::{self, Lhs};
use rayon::prelude::*;

use crate::error::Result;
use crate::linear::LinearWeight;
use crate::observer::{Observer, Site};

/// `down(silu(gate(x)) · up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// `gate_proj` `[inter, hidden]`.
    pub gate: LinearWeight,
    /// `up_proj` `[inter, hidden]`.
    pub up: LinearWeight,
    /// `down_proj` `[hidden, inter]`.
    pub down: LinearWeight,
}

impl Mlp {
    /// The input of `down_proj`: `silu(gate(x)) · up(x)`, `[m, inter]`.
    pub fn activation(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        swiglu(&self.gate, &self.up, x, m)
    }

    /// The whole MLP, `[m, hidden]`.
    pub fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let a = self.activation(x, m)?;
        self.down.apply(&a, m)
    }

    /// The MLP with `gate`/`up` (and possibly `down`) replaced where `overrides` says so.
    pub fn forward_with(
        &self,
        overrides: [Option<&LinearWeight>; 3],
        x: &[f32],
        m: usize,
    ) -> Result<Vec<f32>> {
        let [g, u, d] = overrides;
        let a = swiglu(g.unwrap_or(&self.gate), u.unwrap_or(&self.up), x, m)?;
        d.unwrap_or(&self.down).apply(&a, m)
    }
}

/// `silu(gate(x)) · up(x)`, `[m, inter]`.
fn swiglu(gate: &LinearWeight, up: &LinearWeight, x: &[f32], m: usize) -> Result<Vec<f32>> {
    let k = gate.in_features();
    if x.len() != m * k {
        return Err(crate::ModelError::Shape {
            what: "linear input",
            expected: m * k,
            got: x.len(),
        });
    }
    swiglu_lhs(gate, up, Lhs::new(x, m, k))
}

/// [`swiglu`] of a product operand (possibly normalised on the fly): one fused product with
/// the `silu(g)·u` epilogue when both weights are dense.
pub(crate) fn swiglu_lhs(gate: &LinearWeight, up: &LinearWeight, x: Lhs<'_>) -> Result<Vec<f32>> {
    let m = x.m;
    if let (
        LinearWeight::Dense {
            weight: g,
            out_features: n,
            in_features: k,
        },
        LinearWeight::Dense {
            weight: u,
            out_features: nu,
            in_features: ku,
        },
    ) = (gate, up)
    {
        if (n, k) == (nu, ku) && *k == x.k {
            let mut y = vec![0.0f32; m * n];
            dense::gemm_swiglu(x, g, u, &mut y, *n);
            return Ok(y);
        }
    }
    if let Some(ws) = crate::linear::prefill_dense(&[gate, up], m) {
        if ws[0].len() == ws[1].len() && gate.in_features() == x.k {
            let mut y = vec![0.0f32; m * gate.out_features()];
            dense::gemm_swiglu(x, &ws[0], &ws[1], &mut y, gate.out_features());
            return Ok(y);
        }
    }
    let x = x.materialise();
    if m == 1 {
        // A decode step: gate and up as one parallel region where the weights are packed.
        let [mut g, u] =
            <[Vec<f32>; 2]>::try_from(crate::linear::apply_to_one_token(&[gate, up], &x)?)
                .expect("one output per projection");
        dense::silu_mul_in_place(&mut g, &u);
        return Ok(g);
    }
    let n = gate.out_features();
    let both_packed = matches!(
        (gate, up),
        (LinearWeight::Packed(_), LinearWeight::Packed(_))
    );
    if both_packed && n > 0 && up.out_features() == n && qwen3_quant_kernels::prefill_int8() {
        // Packed gate and up on int8 activations quantized once, side by side.
        let mut gu = vec![0.0f32; m * 2 * n];
        if crate::linear::int8_side_by_side(&[gate, up], &x, m, &mut gu, 2 * n)? {
            let mut y = vec![0.0f32; m * n];
            y.par_chunks_mut(n)
                .zip(gu.par_chunks(2 * n))
                .for_each(|(y, gu)| {
                    y.copy_from_slice(&gu[..n]);
                    dense::silu_mul_in_place(y, &gu[n..]);
                });
            return Ok(y);
        }
    }
    let mut g = gate.apply(&x, m)?;
    let u = up.apply(&x, m)?;
    g.par_chunks_mut(4096)
        .zip(u.par_chunks(4096))
        .for_each(|(g, u)| {
            dense::silu_mul_in_place(g, u);
        });
    Ok(g)
}

/// The sparse MoE block: softmax router over all experts, top-k, optional renormalisation,
/// weighted sum of the chosen experts' SwiGLU outputs.
#[derive(Clone, Debug)]
pub struct MoeBlock {
    /// `mlp.gate` (the router) `[experts, hidden]`, kept in full precision by every method.
    pub router: LinearWeight,
    /// The experts.
    pub experts: Vec<Mlp>,
    /// Experts per token.
    pub top_k: usize,
    /// Renormalise the top-k probabilities.
    pub norm_topk_prob: bool,
}

/// Which tokens went to which expert, with their routing weights.
#[derive(Clone, Debug, Default)]
pub struct Routing {
    /// For each expert, the token rows it serves.
    pub rows: Vec<Vec<usize>>,
    /// For each expert, the routing weight of each served row.
    pub weights: Vec<Vec<f32>>,
    /// `[tokens, experts]`: every expert's weight for every token as if the router had chosen
    /// it (its probability, divided by the chosen experts' sum where the block renormalises);
    /// the chosen experts' entries equal [`Routing::weights`]. Soft statistics use it.
    pub all_weights: Vec<f32>,
}

impl Routing {
    /// Tokens routed to each expert.
    pub fn counts(&self) -> Vec<usize> {
        self.rows.iter().map(Vec::len).collect()
    }
}

impl MoeBlock {
    /// Router decisions for `x` `[m, hidden]`.
    pub fn route(&self, x: &[f32], m: usize) -> Result<Routing> {
        let e = self.experts.len();
        let logits = self.router.apply(x, m)?;
        let mut routing = Routing {
            rows: vec![Vec::new(); e],
            weights: vec![Vec::new(); e],
            all_weights: Vec::with_capacity(m * e),
        };
        let mut probs = vec![0.0f32; e];
        let mut order: Vec<usize> = (0..e).collect();
        for t in 0..m {
            let l = &logits[t * e..(t + 1) * e];
            let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for (p, &v) in probs.iter_mut().zip(l) {
                *p = (v - max).exp();
                sum += *p;
            }
            probs.iter_mut().for_each(|p| *p /= sum);
            rank_experts(&probs, &mut order);
            let chosen = &order[..self.top_k];
            let norm = if self.norm_topk_prob {
                chosen.iter().map(|&i| probs[i]).sum::<f32>()
            } else {
                1.0
            };
            for &i in chosen {
                routing.rows[i].push(t);
                routing.weights[i].push(probs[i] / norm);
            }
            routing.all_weights.extend(probs.iter().map(|p| p / norm));
        }
        Ok(routing)
    }

    /// Reports what [`MoeBlock::forward`] reports up to the experts' gate/up inputs (the routing,
    /// then each expert's [`Site::ExpertInputAll`] and [`Site::ExpertInput`]) without running
    /// any expert: a calibration pass that only needs the gate/up statistics.
    pub fn observe_inputs(
        &self,
        x: &[f32],
        m: usize,
        layer: usize,
        obs: &mut dyn Observer,
    ) -> Result<Routing> {
        let hidden = self.router.in_features();
        let routing = self.route(x, m)?;
        obs.observe_routing(layer, &routing);
        for (ei, rows) in routing.rows.iter().enumerate() {
            if obs.wants(layer, Site::ExpertInputAll(ei)) {
                obs.observe(layer, Site::ExpertInputAll(ei), x, m, hidden);
            }
            if obs.wants(layer, Site::ExpertInput(ei)) {
                let xe = gather_rows(x, hidden, rows);
                obs.observe(layer, Site::ExpertInput(ei), &xe, rows.len(), hidden);
            }
        }
        Ok(routing)
    }

    /// The whole block, `[m, hidden]`; expert inputs are reported to `obs`.
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        layer: usize,
        obs: &mut dyn Observer,
    ) -> Result<Vec<f32>> {
        self.forward_with(&|_| [None, None, None], x, m, layer, obs)
    }

    /// [`MoeBlock::forward`] with expert weights replaced where `overrides(expert)` says so
    /// (`[gate, up, down]`); the router and the routing are this block's.
    pub fn forward_with<'w>(
        &'w self,
        overrides: &dyn Fn(usize) -> [Option<&'w LinearWeight>; 3],
        x: &[f32],
        m: usize,
        layer: usize,
        obs: &mut dyn Observer,
    ) -> Result<Vec<f32>> {
        let hidden = self.router.in_features();
        let routing = self.route(x, m)?;
        obs.observe_routing(layer, &routing);
        let mut out = vec![0.0f32; m * hidden];
        for (ei, expert) in self.experts.iter().enumerate() {
            let [g, u, d] = overrides(ei);
            // Calibration of every expert on every token (statistics only).
            if obs.wants(layer, Site::ExpertInputAll(ei)) {
                obs.observe(layer, Site::ExpertInputAll(ei), x, m, hidden);
            }
            if m > 0 && obs.wants(layer, Site::ExpertDownInputAll(ei)) {
                let act = swiglu(g.unwrap_or(&expert.gate), u.unwrap_or(&expert.up), x, m)?;
                obs.observe(layer, Site::ExpertDownInputAll(ei), &act, m, act.len() / m);
            }
            let rows = &routing.rows[ei];
            let xe = gather_rows(x, hidden, rows);
            if obs.wants(layer, Site::ExpertInput(ei)) {
                obs.observe(layer, Site::ExpertInput(ei), &xe, rows.len(), hidden);
            }
            if rows.is_empty() {
                continue;
            }
            let act = swiglu(
                g.unwrap_or(&expert.gate),
                u.unwrap_or(&expert.up),
                &xe,
                rows.len(),
            )?;
            if obs.wants(layer, Site::ExpertDownInput(ei)) {
                obs.observe(
                    layer,
                    Site::ExpertDownInput(ei),
                    &act,
                    rows.len(),
                    act.len() / rows.len(),
                );
            }
            let y = d.unwrap_or(&expert.down).apply(&act, rows.len())?;
            for (j, (&r, &w)) in rows.iter().zip(&routing.weights[ei]).enumerate() {
                let dst = &mut out[r * hidden..(r + 1) * hidden];
                for (d, s) in dst.iter_mut().zip(&y[j * hidden..(j + 1) * hidden]) {
                    *d += w * s;
                }
            }
        }
        Ok(out)
    }
}

/// Sorts the expert indices `order` by decreasing `scores` (a token's router logits or
/// probabilities), as `torch.topk` ranks them: largest first, ties to the lower index. The
/// router's choice is `order[..top_k]`.
///
/// ```
/// use qwen3_quant_model::mlp::rank_experts;
/// let mut order = [0, 1, 2, 3];
/// rank_experts(&[0.1, 0.7, 0.1, 0.4], &mut order);
/// assert_eq!(order, [1, 3, 0, 2]);
/// ```
pub fn rank_experts(scores: &[f32], order: &mut [usize]) {
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
}

/// Copies the listed rows of `x` (`[*, cols]`) into a new contiguous buffer.
pub fn gather_rows(x: &[f32], cols: usize, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * cols);
    for &r in rows {
        out.extend_from_slice(&x[r * cols..(r + 1) * cols]);
    }
    out
}
