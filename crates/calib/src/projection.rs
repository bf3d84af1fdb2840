//! Up-front cost projection of a calibration run: FLOPs, memory and an ETA from the machine's
//! measured GEMM rate, so users know before a multi-hour job starts (what GPTQ tools don't say).
//!
//! The dominant terms: the forward passes over the calibration
//! tokens (`2 · active parameters` per token, plus causal attention), the Hessian products
//! `Xᵀ·X` of every distinct linear input (lower triangle only), and the per-linear solve
//! (factorisation `≈ d³` in f64 and the column updates `≈ rows · cols²`).

use std::time::Instant;

use qwen3_quant_core::StatsRequest;
use qwen3_quant_io::ModelConfig;
use serde::Serialize;

/// Projected cost of quantizing a model.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Projection {
    /// Calibration tokens.
    pub tokens: f64,
    /// FLOPs of the forward passes.
    pub forward_flops: f64,
    /// FLOPs of the statistics (Hessians).
    pub stats_flops: f64,
    /// FLOPs of the per-linear solves.
    pub solve_flops: f64,
    /// FLOPs of a transform's candidate search (AWQ: scored sub-block forwards and clipping).
    pub search_flops: f64,
    /// Total FLOPs.
    pub total_flops: f64,
    /// Activation buffers held by the driver (bytes, f32).
    pub activation_bytes: f64,
    /// Largest Hessian (bytes, f32).
    pub max_hessian_bytes: f64,
}

impl Projection {
    /// Seconds at a sustained `gflops` rate.
    pub fn eta_seconds(&self, gflops: f64) -> f64 {
        self.total_flops / (gflops.max(1e-3) * 1e9)
    }
}

/// Projects a run over `samples × seq_len` calibration tokens.
///
/// `true_sequential` runs each layer once (stages interleaved with quantization); otherwise the
/// layer runs twice (statistics on the full-precision layer, then the quantized layer's outputs).
pub fn project(
    config: &ModelConfig,
    samples: usize,
    seq_len: usize,
    stats: StatsRequest,
    true_sequential: bool,
) -> Projection {
    let n = (samples * seq_len) as f64;
    let (h, qd, kvd) = (
        config.hidden_size as f64,
        config.q_dim() as f64,
        config.kv_dim() as f64,
    );
    let attn_params = h * qd + 2.0 * h * kvd + qd * h;
    // Causal attention: QKᵀ and P·V over on average seq/2 keys, per head.
    let attn_core = 2.0
        * 2.0
        * (seq_len as f64 / 2.0)
        * config.head_dim as f64
        * config.num_attention_heads as f64;
    let (mut fwd, mut hess, mut solve, mut max_d, mut act) =
        (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for layer in 0..config.num_hidden_layers {
        // Active MLP parameters per token; the MLP's Hessian sites as (width, rows); its linears
        // as (out, in).
        type Dims = Vec<(f64, f64)>;
        let (mlp_active, sites, linears): (f64, Dims, Dims) =
            match (&config.moe, config.is_moe_layer(layer)) {
                (Some(m), true) => {
                    let (mi, k, e) = (
                        m.moe_intermediate_size as f64,
                        m.num_experts_per_tok as f64,
                        m.num_experts as f64,
                    );
                    let lin = (0..m.num_experts)
                        .flat_map(|_| [(mi, h), (mi, h), (h, mi)])
                        .collect();
                    (3.0 * h * mi * k + h * e, vec![(h, n * k), (mi, n * k)], lin)
                }
                _ => {
                    let i = config.intermediate_size as f64;
                    (
                        3.0 * h * i,
                        vec![(h, n), (i, n)],
                        vec![(i, h), (i, h), (h, i)],
                    )
                }
            };
        // lm_head is never run during calibration; each layer runs once (true-sequential) or twice.
        let passes = if true_sequential { 1.0 } else { 2.0 };
        fwd += passes * n * (2.0 * (attn_params + mlp_active) + attn_core);
        if stats.hessian {
            // Lower triangle of Xᵀ·X for: attention input, o input, MLP input(s), down input(s).
            for (d, rows) in [(h, n), (qd, n)].into_iter().chain(sites) {
                hess += rows * d * d;
                max_d = max_d.max(d);
            }
            for (rows, cols) in [(qd, h), (kvd, h), (kvd, h), (h, qd)]
                .into_iter()
                .chain(linears)
            {
                solve += cols * cols * cols + 2.0 * rows * cols * cols;
            }
        }
        act = act.max(
            n * 4.0
                * (2.0 * h
                    + qd
                    + config
                        .intermediate_size
                        .max(config.moe.as_ref().map_or(0, |m| m.moe_intermediate_size))
                        as f64),
        );
    }
    Projection {
        tokens: n,
        forward_flops: fwd,
        stats_flops: hess,
        solve_flops: solve,
        search_flops: 0.0,
        total_flops: fwd + hess + solve,
        activation_bytes: act,
        max_hessian_bytes: max_d * max_d * 4.0,
    }
}

/// The candidate search of AWQ-style transforms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchCost {
    /// Scale candidates per pair (AWQ: 20).
    pub grid: usize,
    /// Clip steps per linear (AWQ: 10).
    pub clip_steps: usize,
    /// Tokens subsampled for clipping (AWQ: 512).
    pub clip_samples: usize,
}

impl Projection {
    /// Adds the cost of a scale and clip search over `samples × seq_len` tokens: each scale
    /// candidate runs the attention block, the feed-forward block and `down_proj` once over all
    /// tokens; each scored block's input and reference output are computed once more per pair;
    /// each clip step is a partial-dot-product pass over the sampled tokens of v, o, gate, up
    /// and down.
    pub fn with_search(
        mut self,
        config: &ModelConfig,
        samples: usize,
        seq_len: usize,
        c: SearchCost,
    ) -> Self {
        let n = (samples * seq_len) as f64;
        let (h, qd, kvd) = (
            config.hidden_size as f64,
            config.q_dim() as f64,
            config.kv_dim() as f64,
        );
        let attn = 2.0 * (h * qd + 2.0 * h * kvd + qd * h)
            + 4.0
                * (seq_len as f64 / 2.0)
                * config.head_dim as f64
                * config.num_attention_heads as f64;
        let mut search = 0.0;
        for layer in 0..config.num_hidden_layers {
            // The up → down pair is scored through its input's Gram matrix: one `n · i²`
            // accumulation (per expert: its tokens), then `2 · h · i²` per candidate.
            let (ffn, gram, gram_per_candidate, clip_params) =
                match (&config.moe, config.is_moe_layer(layer)) {
                    (Some(m), true) => {
                        let (mi, k, e) = (
                            m.moe_intermediate_size as f64,
                            m.num_experts_per_tok as f64,
                            m.num_experts as f64,
                        );
                        (
                            2.0 * (3.0 * h * mi * k + h * e),
                            n * k * mi * mi,
                            2.0 * h * mi * mi * e,
                            3.0 * h * mi * e,
                        )
                    }
                    _ => {
                        let i = config.intermediate_size as f64;
                        (6.0 * h * i, n * i * i, 2.0 * h * i * i, 3.0 * h * i)
                    }
                };
            // Candidates, plus inputs and reference outputs (about three forwards per layer).
            search += n * (c.grid as f64 * (attn + ffn) + 3.0 * (attn + ffn));
            search += gram + c.grid as f64 * gram_per_candidate;
            search +=
                2.0 * (c.clip_steps * c.clip_samples) as f64 * (h * kvd + qd * h + clip_params);
        }
        self.search_flops = search;
        self.total_flops += search;
        self
    }
}

/// Sustained f32 GEMM rate of this machine in GFLOP/s (a short probe of the kernel the model uses).
pub fn measure_gemm_gflops() -> f64 {
    let (m, k, n) = (512usize, 1024usize, 1024usize);
    let x = vec![0.5f32; m * k];
    let w = vec![0.25f32; n * k];
    let mut y = vec![0.0f32; m * n];
    qwen3_quant_kernels::dense::matmul_wt(&x, m, k, &w, n, &mut y); // warm-up
    let start = Instant::now();
    let mut reps = 0usize;
    while start.elapsed().as_secs_f64() < 0.25 {
        qwen3_quant_kernels::dense::matmul_wt(&x, m, k, &w, n, &mut y);
        reps += 1;
    }
    2.0 * (m * k * n * reps) as f64 / start.elapsed().as_secs_f64() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_scales_with_tokens_and_counts_hessians() {
        let cfg = ModelConfig::from_json(
            r#"{"model_type":"qwen3","vocab_size":100,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
                "num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"rope_theta":10000}"#,
        )
        .unwrap();
        let req = StatsRequest {
            hessian: true,
            channel_stats: false,
        };
        let a = project(&cfg, 8, 64, req, true);
        let b = project(&cfg, 16, 64, req, true);
        assert!((b.forward_flops / a.forward_flops - 2.0).abs() < 1e-9);
        let n = 8.0 * 64.0;
        // Per layer: inputs of width 64 (attn), 64 (o), 64 (mlp) and 128 (down).
        assert_eq!(a.stats_flops, 2.0 * n * (3.0 * 64.0 * 64.0 + 128.0 * 128.0));
        assert!(project(&cfg, 8, 64, req, false).forward_flops > a.forward_flops);
        assert_eq!(
            project(&cfg, 8, 64, StatsRequest::default(), true).stats_flops,
            0.0
        );
        assert!(a.eta_seconds(100.0) > 0.0);
    }
}
