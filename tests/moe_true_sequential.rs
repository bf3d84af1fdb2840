//! True-sequential calibration of Qwen3-MoE layers (the order GPTQModel quantizes them in):
//! q/k/v, then `o_proj` on the quantized q/k/v's attention, then every expert's gate/up on the
//! tokens the router sends it after the quantized attention, then every expert's `down_proj` on
//! the activations of its quantized gate/up; and the router refit that can run between the
//! attention and the experts.
//!
//! The first test replays the driver stage by stage with the model's layer API and compares the
//! Hessian every linear was handed; the one-pass alternative (every statistic from the
//! full-precision layer) is computed too, to show the comparison would catch it.

mod common;
use common::*;

use std::collections::HashMap;

use qwen3_quant::calib::{first_windows, quantize_model, DriverOptions, StatsCollector};
use qwen3_quant::core::{Bits, LinearId, LinearKind, LinearStats};
use qwen3_quant::gptq::{Gptq, GptqConfig};
use qwen3_quant::model::mlp::rank_experts;
use qwen3_quant::model::{
    DecoderLayer, FeedForward, LinearWeight, NoObserver, Qwen3Model, Rope, Site,
};

fn moe_micro() -> Qwen3Model {
    Qwen3Model::load(format!("{ASSETS}/models/qwen3-moe-micro")).unwrap()
}

fn site_of(id: &LinearId) -> Site {
    match (id.kind, id.expert) {
        (LinearKind::Q | LinearKind::K | LinearKind::V, _) => Site::AttnInput,
        (LinearKind::O, _) => Site::OInput,
        (LinearKind::Gate | LinearKind::Up, Some(e)) => Site::ExpertInput(e),
        (LinearKind::Down, Some(e)) => Site::ExpertDownInput(e),
        (LinearKind::Gate | LinearKind::Up, None) => Site::MlpInput,
        (LinearKind::Down, None) => Site::DownInput,
    }
}

/// Every site's statistics of one forward of `layer` over `h` (not modified).
fn stats_of(
    layer: &DecoderLayer,
    h: &[f32],
    n_seq: usize,
    seq: usize,
    rope: &Rope,
) -> HashMap<Site, LinearStats> {
    let mut coll = StatsCollector::new(layer.index, hessian_request());
    let mut x = h.to_vec();
    layer.forward(&mut x, n_seq, seq, rope, &mut coll).unwrap();
    coll.finish(n_seq).unwrap()
}

#[test]
fn moe_layers_are_calibrated_stage_by_stage_on_the_quantized_earlier_stages() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    let (n_seq, seq) = (3, 128);
    let calib = first_windows(&docs("calib"), n_seq, seq).unwrap();
    let probe = HessianProbe::new(true);
    let mut quantized = moe_micro();
    // Two chunks: the Hessians must add up over chunks.
    let opts = DriverOptions::default().with_chunk_sequences(2);
    let run = quantize_model(&mut quantized, Some(&calib), &probe, &opts).unwrap();
    let seen = probe.seen.into_inner().unwrap();
    let q_of: HashMap<LinearId, Vec<f32>> = run
        .quantized
        .iter()
        .map(|(id, q)| (*id, q.dequantize()))
        .collect();

    let mut replay = moe_micro();
    let rope = replay.rope(seq);
    let mut h = replay.embed(&calib.flat(0, n_seq)).unwrap();
    let stages: [&[LinearKind]; 4] = [
        &[LinearKind::Q, LinearKind::K, LinearKind::V],
        &[LinearKind::O],
        &[LinearKind::Gate, LinearKind::Up],
        &[LinearKind::Down],
    ];
    let (mut worst, mut one_pass_gap, mut compared) = (0f64, 0f64, 0usize);
    for li in 0..replay.config.num_hidden_layers {
        let layer = &mut replay.layers[li];
        assert!(matches!(layer.ffn, FeedForward::Moe(_)));
        let ids = layer.linear_ids();
        let full_precision = stats_of(layer, &h, n_seq, seq, &rope);
        for kinds in stages {
            let expected = stats_of(layer, &h, n_seq, seq, &rope);
            let stage: Vec<&LinearId> = ids.iter().filter(|i| kinds.contains(&i.kind)).collect();
            for id in &stage {
                // An expert no token reached has no statistics (RTN's fallback quantizes it).
                let Some(want) = expected.get(&site_of(id)).filter(|s| s.tokens > 0) else {
                    assert!(id.expert.is_some(), "{id}: no statistics");
                    continue;
                };
                let (tokens, got) = &seen[id];
                assert_eq!(*tokens, want.tokens, "{id}: routed tokens");
                let d = hessian_rel_diff(got, want.hessian.as_ref().unwrap());
                worst = worst.max(d);
                compared += 1;
                assert!(
                    d < 1e-5,
                    "{id}: recorded Hessian differs from the replay by {d:.2e}"
                );
                if id.expert.is_some() {
                    let fp = full_precision[&site_of(id)].hessian.as_ref().unwrap();
                    one_pass_gap =
                        one_pass_gap.max(hessian_rel_diff(fp, want.hessian.as_ref().unwrap()));
                }
            }
            // The stage is quantized before the next one's statistics.
            for id in stage {
                let old = layer.linear(id.kind, id.expert).unwrap();
                let (o, i) = (old.out_features(), old.in_features());
                layer
                    .replace_linear(id, LinearWeight::dense(o, i, q_of[id].clone()).unwrap())
                    .unwrap();
            }
        }
        layer
            .forward(&mut h, n_seq, seq, &rope, &mut NoObserver)
            .unwrap();
    }
    eprintln!(
        "{compared} Hessians match the staged replay (worst {worst:.2e}); one-pass expert \
         statistics would differ by up to {one_pass_gap:.2e}"
    );
    assert!(compared > 4 * 4 + 4 * 8 * 2, "{compared} linears compared");
    assert!(one_pass_gap > 1e-3, "{one_pass_gap}");
    // The propagated model is the replayed one: same logits on a probe window.
    let ids = &docs("valid")[..64];
    let (a, b) = (
        quantized.forward(ids, 1, 64).unwrap(),
        replay.forward(ids, 1, 64).unwrap(),
    );
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "{diff}");
}

/// `(Σ ‖logits − target‖², tokens whose top-k experts agree as sets)` over `[tokens, experts]`.
fn logit_gap(logits: &[f32], target: &[f32], experts: usize, k: usize) -> (f64, usize) {
    let err = logits
        .iter()
        .zip(target)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let top = |l: &[f32]| {
        let mut order: Vec<usize> = (0..experts).collect();
        rank_experts(l, &mut order);
        order.truncate(k);
        order.sort_unstable();
        order
    };
    let agree = logits
        .chunks(experts)
        .zip(target.chunks(experts))
        .filter(|(a, b)| top(a) == top(b))
        .count();
    (err, agree)
}

/// The MLP input after the layer's attention: `post_attention_layernorm(h + attn(h))`.
fn mlp_input_after_attention(
    layer: &DecoderLayer,
    h: &[f32],
    n_seq: usize,
    seq: usize,
    rope: &Rope,
) -> Vec<f32> {
    let rows = n_seq * seq;
    let core = layer
        .attn
        .core(&layer.attn_input(h), n_seq, seq, rope)
        .unwrap();
    let mut mid = h.to_vec();
    for (m, o) in mid.iter_mut().zip(layer.attn.output(&core, rows).unwrap()) {
        *m += o;
    }
    layer.mlp_input(&mid)
}

#[test]
fn the_router_refit_brings_the_quantized_logits_to_the_full_precision_ones() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    let (n_seq, seq) = (4, 256);
    let calib = first_windows(&docs("calib"), n_seq, seq).unwrap();
    let cfg = GptqConfig::default()
        .with_bits(Bits::new(3).unwrap())
        .with_group_size(Some(128))
        .with_asymmetric(Some(1.0))
        .with_asymmetric_min_tokens_per_input(0);
    let method = Gptq::new(cfg).unwrap();
    let mut quantized = moe_micro();
    let opts = DriverOptions::default().with_router_refit(Some(0.01));
    let run = quantize_model(&mut quantized, Some(&calib), &method, &opts).unwrap();
    let fits: Vec<_> = run
        .transforms
        .iter()
        .filter(|t| t.transform == "router-refit")
        .collect();
    assert_eq!(fits.len(), quantized.config.num_hidden_layers);
    for f in &fits {
        assert!(f.fallback.is_none() && f.loss < f.baseline_loss, "{f:?}");
    }

    // Layer 0, whose input is the embeddings in both models.
    let fp = moe_micro();
    let rope = fp.rope(seq);
    let h = fp.embed(&calib.flat(0, n_seq)).unwrap();
    let rows = n_seq * seq;
    let x_fp = mlp_input_after_attention(&fp.layers[0], &h, n_seq, seq, &rope);
    let x_q = mlp_input_after_attention(&quantized.layers[0], &h, n_seq, seq, &rope);
    let (FeedForward::Moe(m_fp), FeedForward::Moe(m_q)) =
        (&fp.layers[0].ffn, &quantized.layers[0].ffn)
    else {
        panic!("MoE layers")
    };
    // The original router and the refitted one on the quantized model's MLP inputs, against
    // the full-precision router on the full-precision model's.
    let target = m_fp.router.apply(&x_fp, rows).unwrap();
    let gap = |router: &LinearWeight| {
        let logits = router.apply(&x_q, rows).unwrap();
        logit_gap(&logits, &target, router.out_features(), m_fp.top_k)
    };
    let ((before, agree_before), (after, agree_after)) = (gap(&m_fp.router), gap(&m_q.router));
    let f0 = fits.iter().find(|f| f.layer == 0).unwrap();
    eprintln!(
        "layer 0 router: logit error {before:.4e} -> {after:.4e} (logged {:.4e} -> {:.4e}); \
         top-{} agreement {agree_before} -> {agree_after} of {rows}",
        f0.baseline_loss, f0.loss, m_q.top_k
    );
    assert!(after < 0.9 * before, "{before} -> {after}");
    assert!(
        agree_after > agree_before,
        "{agree_before} -> {agree_after}"
    );
    // The logged errors are the ones the model shows.
    assert!(
        (f0.baseline_loss / before - 1.0).abs() < 1e-3,
        "{} vs {before}",
        f0.baseline_loss
    );
    assert!(
        (f0.loss / after - 1.0).abs() < 1e-2,
        "{} vs {after}",
        f0.loss
    );
}
