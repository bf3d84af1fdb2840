//! Rotation of the residual stream (QuaRot / SpinQuant style) as an exact equivalent transform.
//!
//! Every RMSNorm weight is folded into the linears that read the norm's output, which leaves
//! unit-weight norms; a unit-weight RMSNorm commutes with any orthogonal `Q` (`‖x·Q‖ = ‖x‖`).
//! The residual stream is then carried in the rotated basis `x·Q`: the embeddings become `E·Q`,
//! every linear reading the stream `W·Q` (q/k/v, gate/up, the MoE router and experts, the head),
//! every linear writing it `Qᵀ·W` (o_proj, down_proj). The model computes the same function up to
//! rounding, with no run-time cost, and the weights' outliers are spread over all channels,
//! which is what a low-bit grid needs.

use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::layer::{DecoderLayer, FeedForward};
use crate::linear::LinearWeight;
use crate::model::Qwen3Model;

/// A `[d, d]` row-major orthogonal matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Rotation {
    dim: usize,
    q: Vec<f32>,
}

impl Rotation {
    /// Wraps `q` (`[dim, dim]` row-major); checks the shape, finiteness and `QᵀQ = I` to 1e-4
    /// (every column of a matrix up to 64 wide, 64 evenly spaced columns of a wider one).
    ///
    /// # Errors
    /// [`ModelError::Shape`] for a wrong length, [`ModelError::BadReplacement`] for a matrix
    /// that is not orthogonal or not finite.
    pub fn new(dim: usize, q: Vec<f32>) -> Result<Self> {
        if q.len() != dim * dim {
            return Err(ModelError::Shape {
                what: "rotation",
                expected: dim * dim,
                got: q.len(),
            });
        }
        if let Some(i) = q.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("entry {i} of the rotation is not finite")));
        }
        // Columns against every column; at most 64 of them for wide matrices (O(64·d²)).
        let step = (dim / 64).max(1);
        let worst = (0..dim)
            .into_par_iter()
            .filter(|i| i % step == 0)
            .map(|i| {
                (0..dim)
                    .map(|j| {
                        let dot: f64 = (0..dim)
                            .map(|k| q[k * dim + i] as f64 * q[k * dim + j] as f64)
                            .sum();
                        (dot - if i == j { 1.0 } else { 0.0 }).abs()
                    })
                    .fold(0.0f64, f64::max)
            })
            .reduce(|| 0.0, f64::max);
        if worst > 1e-4 {
            return Err(bad(format!(
                "the rotation is not orthogonal (|QᵀQ − I| up to {worst:e})"
            )));
        }
        Ok(Rotation { dim, q })
    }

    /// Side of the matrix.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The matrix, `[dim, dim]` row-major.
    pub fn matrix(&self) -> &[f32] {
        &self.q
    }
}

fn bad(reason: String) -> ModelError {
    ModelError::BadReplacement {
        id: "rotation".into(),
        reason,
    }
}

fn dense_mut<'a>(w: &'a mut LinearWeight, what: &str) -> Result<&'a mut Vec<f32>> {
    match w {
        LinearWeight::Dense { weight, .. } => Ok(weight),
        _ => Err(bad(format!(
            "{what} is not held in full precision; rotate before quantizing"
        ))),
    }
}

/// `W[:, j] *= g[j]` (a norm weight folded into a linear reading the norm).
fn fold_columns(w: &mut LinearWeight, g: &[f32], what: &str) -> Result<()> {
    let cols = w.in_features();
    if g.len() != cols {
        return Err(ModelError::Shape {
            what: "norm weight folded into a linear",
            expected: cols,
            got: g.len(),
        });
    }
    let data = dense_mut(w, what)?;
    data.par_chunks_mut(cols.max(1))
        .for_each(|row| row.iter_mut().zip(g).for_each(|(v, s)| *v *= s));
    Ok(())
}

/// `X ← X·Q` for `[rows, d]` row-major data, rows in parallel blocks (exact f32 products).
fn times_q(x: &mut [f32], q: &[f32], d: usize) {
    const ROWS: usize = 64;
    x.par_chunks_mut(ROWS * d).for_each(|blk| {
        let rows = blk.len() / d;
        let mut y = vec![0.0f32; rows * d];
        qwen3_quant_kernels::dense::matmul(blk, rows, d, q, d, &mut y);
        blk.copy_from_slice(&y);
    });
}

/// `W ← W·Q` for a linear reading the residual stream.
fn rotate_input(w: &mut LinearWeight, r: &Rotation, what: &str) -> Result<()> {
    if w.in_features() != r.dim {
        return Err(ModelError::Shape {
            what: "rotated linear input",
            expected: r.dim,
            got: w.in_features(),
        });
    }
    times_q(dense_mut(w, what)?, &r.q, r.dim);
    Ok(())
}

/// `W ← Qᵀ·W` for a linear writing the residual stream (`[d, in]`): `(Qᵀ·W)ᵀ = Wᵀ·Q`.
fn rotate_output(w: &mut LinearWeight, r: &Rotation, what: &str) -> Result<()> {
    let (out, inp) = (w.out_features(), w.in_features());
    if out != r.dim {
        return Err(ModelError::Shape {
            what: "rotated linear output",
            expected: r.dim,
            got: out,
        });
    }
    let data = dense_mut(w, what)?;
    let mut t = vec![0.0f32; inp * out];
    for (i, row) in data.chunks_exact(inp.max(1)).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j * out + i] = v;
        }
    }
    times_q(&mut t, &r.q, r.dim);
    for (i, row) in data.chunks_exact_mut(inp.max(1)).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = t[j * out + i];
        }
    }
    Ok(())
}

impl DecoderLayer {
    /// Folds both norm weights into the linears that read them and moves the layer to the
    /// rotated residual basis (see the [module](crate::rotation) documentation). Output biases
    /// of o_proj rotate with it.
    ///
    /// # Errors
    /// A rotation of another width, or a linear that is no longer dense.
    pub fn fold_norms_and_rotate(&mut self, r: &Rotation) -> Result<()> {
        let g_in = std::mem::replace(&mut self.input_layernorm, vec![1.0; r.dim]);
        let g_post = std::mem::replace(&mut self.post_attention_layernorm, vec![1.0; r.dim]);
        if g_in.len() != r.dim || g_post.len() != r.dim {
            return Err(ModelError::Shape {
                what: "rotation (hidden size)",
                expected: g_in.len(),
                got: r.dim,
            });
        }
        let a = &mut self.attn;
        for (w, what) in [
            (&mut a.q_proj, "q_proj"),
            (&mut a.k_proj, "k_proj"),
            (&mut a.v_proj, "v_proj"),
        ] {
            fold_columns(w, &g_in, what)?;
            rotate_input(w, r, what)?;
        }
        rotate_output(&mut a.o_proj, r, "o_proj")?;
        if let Some(b) = &mut a.bias.o {
            times_q(b, &r.q, r.dim);
        }
        let mlps: Vec<&mut crate::mlp::Mlp> = match &mut self.ffn {
            FeedForward::Dense(m) => vec![m],
            FeedForward::Moe(moe) => {
                fold_columns(&mut moe.router, &g_post, "router")?;
                rotate_input(&mut moe.router, r, "router")?;
                moe.experts.iter_mut().collect()
            }
        };
        for m in mlps {
            for (w, what) in [(&mut m.gate, "gate_proj"), (&mut m.up, "up_proj")] {
                fold_columns(w, &g_post, what)?;
                rotate_input(w, r, what)?;
            }
            rotate_output(&mut m.down, r, "down_proj")?;
        }
        Ok(())
    }
}

impl Qwen3Model {
    /// The model's ends in the rotated basis: embeddings `E·Q`; the final norm folded into the
    /// head, which becomes `W·Q` (a tied head is untied first: it no longer equals the
    /// embeddings). Together with [`DecoderLayer::fold_norms_and_rotate`] on every layer, the
    /// logits are unchanged up to rounding.
    ///
    /// # Errors
    /// A rotation of another width, or a head that is not dense.
    pub fn rotate_ends(&mut self, r: &Rotation) -> Result<()> {
        let hidden = self.config.hidden_size;
        if r.dim != hidden {
            return Err(ModelError::Shape {
                what: "rotation (hidden size)",
                expected: hidden,
                got: r.dim,
            });
        }
        let vocab = self.embed_tokens.len() / hidden.max(1);
        let mut head = match self.lm_head.take() {
            Some(h) => h,
            None => LinearWeight::dense(vocab, hidden, self.embed_tokens.clone())?,
        };
        let g = std::mem::replace(&mut self.norm, vec![1.0; hidden]);
        fold_columns(&mut head, &g, "lm_head")?;
        rotate_input(&mut head, r, "lm_head")?;
        self.lm_head = Some(head);
        self.config.tie_word_embeddings = false;
        times_q(&mut self.embed_tokens, &r.q, hidden);
        Ok(())
    }

    /// [`Qwen3Model::rotate_ends`] and [`DecoderLayer::fold_norms_and_rotate`] on every loaded
    /// layer.
    ///
    /// # Errors
    /// As those two.
    pub fn rotate_residual(&mut self, r: &Rotation) -> Result<()> {
        self.rotate_ends(r)?;
        for l in &mut self.layers {
            l.fold_norms_and_rotate(r)?;
        }
        Ok(())
    }
}
