//! Attention of Qwen3 and LLaMA: q/k/v projections (plus their biases where the checkpoint has
//! them), the per-head RMSNorm of Qwen3 (`q_norm`, `k_norm`; LLaMA has none), RoPE, causal GQA
//! attention, o_proj (plus its bias). The core (everything before `o_proj`) is exposed separately
//! because the calibration driver observes `o_proj`'s input.
//!
//! Biases stay in full precision next to the swappable [`LinearWeight`]s, so a quantizer sees
//! the same weight matrices with or without them.

use qwen3_quant_kernels::attention::{self, CausalShape};
use qwen3_quant_kernels::dense::{self, Epilogue, Lhs};
use rayon::prelude::*;

use crate::error::Result;
use crate::linear::LinearWeight;
use crate::norm::rms_norm_in_place;
use crate::rope::Rope;
use crate::softmax::softmax_in_place;

/// Query rows processed together; keys beyond the block's last row are skipped (causality).
const QUERY_BLOCK: usize = 128;

/// One attention module.
#[derive(Clone, Debug)]
pub struct Attention {
    /// `q_proj` `[heads·head_dim, hidden]`.
    pub q_proj: LinearWeight,
    /// `k_proj` `[kv_heads·head_dim, hidden]`.
    pub k_proj: LinearWeight,
    /// `v_proj` `[kv_heads·head_dim, hidden]`.
    pub v_proj: LinearWeight,
    /// `o_proj` `[hidden, heads·head_dim]`.
    pub o_proj: LinearWeight,
    /// Per-head RMSNorm weight for queries `[head_dim]` (Qwen3; `None` for LLaMA).
    pub q_norm: Option<Vec<f32>>,
    /// Per-head RMSNorm weight for keys `[head_dim]` (Qwen3; `None` for LLaMA).
    pub k_norm: Option<Vec<f32>>,
    /// Biases of q/k/v/o (`attention_bias`), in full precision; `None` where absent.
    pub bias: AttentionBias,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
}

/// The bias vectors of an attention module (each `None` where the checkpoint has none).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttentionBias {
    /// `q_proj.bias` `[heads·head_dim]`.
    pub q: Option<Vec<f32>>,
    /// `k_proj.bias` `[kv_heads·head_dim]`.
    pub k: Option<Vec<f32>>,
    /// `v_proj.bias` `[kv_heads·head_dim]`.
    pub v: Option<Vec<f32>>,
    /// `o_proj.bias` `[hidden]`.
    pub o: Option<Vec<f32>>,
}

impl AttentionBias {
    /// Whether any bias is present.
    pub fn any(&self) -> bool {
        self.q.is_some() || self.k.is_some() || self.v.is_some() || self.o.is_some()
    }
}

/// `x[r, :] += b` for every row `r` of a row-major `[rows, b.len()]` slice (nothing for `None`).
pub(crate) fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    let Some(b) = bias else { return };
    if b.is_empty() {
        return;
    }
    x.par_chunks_mut(b.len()).for_each(|row| {
        row.iter_mut().zip(b).for_each(|(v, c)| *v += c);
    });
}

/// Multiply-adds of a cached attention step (queries × heads × positions × head_dim) from which
/// its heads run in parallel.
const CACHED_PARALLEL_MACS: usize = 1 << 18;

/// `a · b` in sixteen f32 lanes, so that the compiler vectorises it (a single running sum is one
/// dependent chain of adds).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Per-head RMSNorm (when `norm` is given) then RoPE at `pos`, on one row of heads.
#[inline]
fn norm_rope(r: &mut [f32], norm: Option<&[f32]>, eps: f32, hd: usize, rope: &Rope, pos: usize) {
    if let Some(w) = norm {
        rms_norm_in_place(r, w, eps);
    }
    r.chunks_mut(hd).for_each(|h| rope.apply(h, pos));
}

/// Keys and values of the positions one layer has already seen, row-major `[positions,
/// kv_heads·head_dim]` (after `k_norm` and RoPE), for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl LayerKv {
    /// Positions held, given the row width `kv_heads·head_dim`.
    fn positions(&self, kv_dim: usize) -> usize {
        self.k.len() / kv_dim.max(1)
    }
}

impl Attention {
    /// q, k, v of `n` rows after the per-head norms and RoPE; row `r` is at position
    /// `pos0 + r % seq` (rows are `seq`-token sequences, or one continuation when `seq = n`).
    fn qkv(
        &self,
        proj: [&LinearWeight; 3],
        x: &[f32],
        n: usize,
        seq: usize,
        pos0: usize,
        rope: &Rope,
    ) -> Result<[Vec<f32>; 3]> {
        let hd = self.head_dim;
        let [mut q, mut k, mut v] = if n == 1 {
            // A decode step: the three GEMVs as one parallel region where the weights are packed.
            let outs = crate::linear::apply_to_one_token(&proj, x)?;
            <[Vec<f32>; 3]>::try_from(outs).expect("one output per projection")
        } else {
            let [q_proj, k_proj, v_proj] = proj;
            [
                q_proj.apply(x, n)?,
                k_proj.apply(x, n)?,
                v_proj.apply(x, n)?,
            ]
        };
        add_bias(&mut q, self.bias.q.as_deref());
        add_bias(&mut k, self.bias.k.as_deref());
        add_bias(&mut v, self.bias.v.as_deref());
        let (qd, kd) = (self.heads * hd, self.kv_heads * hd);
        let (qn, kn) = (self.q_norm.as_deref(), self.k_norm.as_deref());
        q.par_chunks_mut(qd)
            .enumerate()
            .for_each(|(row, r)| norm_rope(r, qn, self.eps, hd, rope, pos0 + row % seq));
        k.par_chunks_mut(kd)
            .enumerate()
            .for_each(|(row, r)| norm_rope(r, kn, self.eps, hd, rope, pos0 + row % seq));
        Ok([q, k, v])
    }

    /// [`Attention::core`] for `m` new tokens of one sequence that continue the positions held
    /// in `cache` (empty for a prompt): their keys and values are appended to `cache`, and each
    /// new token attends to every cached position and to the new ones up to itself.
    pub fn core_cached(
        &self,
        x: &[f32],
        m: usize,
        cache: &mut LayerKv,
        rope: &Rope,
    ) -> Result<Vec<f32>> {
        let hd = self.head_dim;
        let (qd, kd) = (self.heads * hd, self.kv_heads * hd);
        let pos0 = cache.positions(kd);
        let [q, k, v] = self.qkv(self.projections(), x, m, m, pos0, rope)?;
        cache.k.extend_from_slice(&k);
        cache.v.extend_from_slice(&v);
        let group = self.heads / self.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let (keys, values) = (&cache.k, &cache.v);
        let mut out = vec![0.0f32; m * qd];
        let head = |(ih, o): (usize, &mut [f32])| {
            let (i, h) = (ih / self.heads, ih % self.heads);
            let kv = (h / group) * hd;
            let qi = &q[i * qd + h * hd..][..hd];
            let visible = pos0 + i + 1;
            let mut scores: Vec<f32> = (0..visible)
                .map(|j| dot(qi, &keys[j * kd + kv..][..hd]) * scale)
                .collect();
            softmax_in_place(&mut scores);
            for (j, &p) in scores.iter().enumerate() {
                o.iter_mut()
                    .zip(&values[j * kd + kv..][..hd])
                    .for_each(|(d, &vv)| *d += p * vv);
            }
        };
        // A decode step over a short cache is a few microseconds of work: less than waking the
        // other workers costs.
        let macs = m * self.heads * (pos0 + m) * hd;
        if macs >= CACHED_PARALLEL_MACS {
            out.par_chunks_mut(hd).enumerate().for_each(head);
        } else {
            out.chunks_mut(hd).enumerate().for_each(head);
        }
        Ok(out)
    }

    /// Attention output before `o_proj`, `[batch·seq, heads·head_dim]`, from the normed input
    /// `x` `[batch·seq, hidden]`.
    pub fn core(&self, x: &[f32], batch: usize, seq: usize, rope: &Rope) -> Result<Vec<f32>> {
        self.core_with(self.projections(), x, batch, seq, rope)
    }

    /// The current q/k/v projections.
    pub fn projections(&self) -> [&LinearWeight; 3] {
        [&self.q_proj, &self.k_proj, &self.v_proj]
    }

    /// [`Attention::core`] with other q/k/v projection weights (candidates of a layer-level
    /// transform search); the norms, RoPE and attention are this module's.
    pub fn core_with(
        &self,
        proj: [&LinearWeight; 3],
        x: &[f32],
        batch: usize,
        seq: usize,
        rope: &Rope,
    ) -> Result<Vec<f32>> {
        let n = batch * seq;
        let k = proj[0].in_features();
        if x.len() != n * k {
            return Err(crate::ModelError::Shape {
                what: "attention input",
                expected: n * k,
                got: x.len(),
            });
        }
        self.core_lhs(proj, Lhs::new(x, n, k), batch, seq, rope)
    }

    /// [`Attention::core_with`] on an input given as a product operand (possibly normalised on
    /// the fly by the fused kernels, see [`dense::RowNorm`]).
    pub(crate) fn core_lhs(
        &self,
        proj: [&LinearWeight; 3],
        x: Lhs<'_>,
        batch: usize,
        seq: usize,
        rope: &Rope,
    ) -> Result<Vec<f32>> {
        let n = batch * seq;
        let hd = self.head_dim;
        let (qd, kd) = (self.heads * hd, self.kv_heads * hd);
        let (qkv, w) = self.qkv_fused(proj, x, seq, rope)?;
        let scale = 1.0 / (hd as f32).sqrt();
        if attention::fused_available() {
            let mut out = vec![0.0f32; n * qd];
            let shape = CausalShape {
                batch,
                seq,
                heads: self.heads,
                kv_heads: self.kv_heads,
                head_dim: hd,
                scale,
            };
            attention::causal_attention(
                shape,
                &qkv,
                w,
                &qkv[qd..],
                &qkv[qd + kd..],
                w,
                &mut out,
                qd,
            );
            return Ok(out);
        }
        let split = |c0: usize, width: usize| -> Vec<f32> {
            qkv.chunks(w)
                .flat_map(|r| r[c0..c0 + width].iter().copied())
                .collect()
        };
        let (q, k, v) = (split(0, qd), split(qd, kd), split(qd + kd, kd));
        drop(qkv);
        Ok(self.attend_unfused(&q, &k, &v, batch, seq, scale))
    }

    /// q | k | v side by side, `[n, qd + 2·kd]` (and that row width), after the per-head norms
    /// and RoPE; one fused product when all three projections are dense.
    fn qkv_fused(
        &self,
        proj: [&LinearWeight; 3],
        x: Lhs<'_>,
        seq: usize,
        rope: &Rope,
    ) -> Result<(Vec<f32>, usize)> {
        let (n, hd) = (x.m, self.head_dim);
        let (qd, kd) = (self.heads * hd, self.kv_heads * hd);
        let w = qd + 2 * kd;
        for (p, out) in proj.iter().zip([qd, kd, kd]) {
            if p.out_features() != out {
                return Err(crate::ModelError::Shape {
                    what: "attention projection rows",
                    expected: out,
                    got: p.out_features(),
                });
            }
            if p.in_features() != x.k {
                return Err(crate::ModelError::Shape {
                    what: "attention projection columns",
                    expected: x.k,
                    got: p.in_features(),
                });
            }
        }
        let mut qkv = vec![0.0f32; n * w];
        let prefill = crate::linear::prefill_dense(&proj, n);
        match (proj, prefill) {
            (
                [LinearWeight::Dense { weight: wq, .. }, LinearWeight::Dense { weight: wk, .. }, LinearWeight::Dense { weight: wv, .. }],
                _,
            ) => dense::gemm_wt(x, &[wq, wk, wv], Epilogue::Store, &mut qkv, w),
            (_, Some(ws)) => {
                dense::gemm_wt(x, &[&ws[0], &ws[1], &ws[2]], Epilogue::Store, &mut qkv, w)
            }
            (_, None) => {
                let xm = x.materialise();
                if !crate::linear::int8_side_by_side(&proj, &xm, n, &mut qkv, w)? {
                    let mut c0 = 0;
                    for p in proj {
                        let y = p.apply(&xm, n)?;
                        let width = p.out_features();
                        qkv.par_chunks_mut(w)
                            .zip(y.par_chunks(width))
                            .for_each(|(d, s)| d[c0..c0 + width].copy_from_slice(s));
                        c0 += width;
                    }
                }
            }
        }
        let b = &self.bias;
        let (qn, kn) = (self.q_norm.as_deref(), self.k_norm.as_deref());
        qkv.par_chunks_mut(w).enumerate().for_each(|(row, r)| {
            let (q, rest) = r.split_at_mut(qd);
            let (k, v) = rest.split_at_mut(kd);
            for (x, bias) in [(&mut *q, &b.q), (&mut *k, &b.k), (&mut *v, &b.v)] {
                if let Some(bias) = bias {
                    x.iter_mut().zip(bias).for_each(|(x, c)| *x += c);
                }
            }
            let pos = row % seq;
            norm_rope(q, qn, self.eps, hd, rope, pos);
            norm_rope(k, kn, self.eps, hd, rope, pos);
        });
        Ok((qkv, w))
    }

    /// The straightforward attention (head-major copies, the `gemm` crate for `Q·Kᵀ` and `P·V`,
    /// a row softmax), used where the fused kernel does not run and as its reference in tests.
    pub(crate) fn attend_unfused(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        batch: usize,
        seq: usize,
        scale: f32,
    ) -> Vec<f32> {
        let n = batch * seq;
        let hd = self.head_dim;
        let qd = self.heads * hd;
        let qh = to_head_major(q, batch, seq, self.heads, hd);
        let kh = to_head_major(k, batch, seq, self.kv_heads, hd);
        let vh = to_head_major(v, batch, seq, self.kv_heads, hd);
        let group = self.heads / self.kv_heads;
        let mut out_h = vec![0.0f32; n * qd];
        out_h
            .par_chunks_mut(seq * hd)
            .enumerate()
            .for_each(|(bh, out)| {
                let (b, h) = (bh / self.heads, bh % self.heads);
                let kvh = h / group;
                let q = &qh[bh * seq * hd..(bh + 1) * seq * hd];
                let kv_off = (b * self.kv_heads + kvh) * seq * hd;
                let kk = &kh[kv_off..kv_off + seq * hd];
                let vv = &vh[kv_off..kv_off + seq * hd];
                causal_head(q, kk, vv, seq, hd, scale, out);
            });
        from_head_major(&out_h, batch, seq, self.heads, hd)
    }

    /// Full attention: core then `o_proj`, `[batch·seq, hidden]`.
    pub fn forward(&self, x: &[f32], batch: usize, seq: usize, rope: &Rope) -> Result<Vec<f32>> {
        let core = self.core(x, batch, seq, rope)?;
        self.output(&core, batch * seq)
    }

    /// `o_proj` (and its bias) on the core output of `n` rows: the attention output `[n, hidden]`.
    pub fn output(&self, core: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut y = self.o_proj.apply(core, n)?;
        add_bias(&mut y, self.bias.o.as_deref());
        Ok(y)
    }
}

/// Causal softmax attention of one head: `out = softmax(q·kᵀ·scale + mask) · v`, all `[seq, hd]`.
fn causal_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq: usize,
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    let mut scores = vec![0.0f32; QUERY_BLOCK * seq];
    let mut i0 = 0;
    while i0 < seq {
        let i1 = (i0 + QUERY_BLOCK).min(seq);
        let rows = i1 - i0;
        let keys = i1; // keys 0..i1 can be seen by some row of the block
        dense::matmul_wt_strided(&q[i0 * hd..], rows, hd, hd, k, keys, hd, &mut scores, keys);
        for r in 0..rows {
            let row = &mut scores[r * keys..(r + 1) * keys];
            let visible = i0 + r + 1;
            row[..visible].iter_mut().for_each(|s| *s *= scale);
            softmax_in_place(&mut row[..visible]);
            row[visible..].fill(0.0);
        }
        dense::matmul_strided(
            &scores,
            rows,
            keys,
            keys,
            v,
            hd,
            hd,
            &mut out[i0 * hd..],
            hd,
            false,
        );
        i0 = i1;
    }
}

/// `[b·s, heads·hd]` → `[b, heads, s, hd]`.
fn to_head_major(x: &[f32], _batch: usize, seq: usize, heads: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(seq * hd)
        .enumerate()
        .for_each(|(bh, dst)| {
            let (b, h) = (bh / heads, bh % heads);
            for s in 0..seq {
                let src = &x[((b * seq + s) * heads + h) * hd..][..hd];
                dst[s * hd..(s + 1) * hd].copy_from_slice(src);
            }
        });
    out
}

/// `[b, heads, s, hd]` → `[b·s, heads·hd]`.
fn from_head_major(x: &[f32], batch: usize, seq: usize, heads: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(heads * hd)
        .enumerate()
        .for_each(|(row, dst)| {
            let (b, s) = (row / seq, row % seq);
            for h in 0..heads {
                let src = &x[((b * heads + h) * seq + s) * hd..][..hd];
                dst[h * hd..(h + 1) * hd].copy_from_slice(src);
            }
        });
    let _ = batch;
    out
}
