//! The sequential driver's one-pass path on the dense model (the path BiLLM takes: all seven
//! Hessians of a layer from one full-precision pass, then the *quantized* layer produces the next
//! layer's inputs), checked against an independent replay with the model's layer API.
//!
//! A probe method records the Hessian it is handed for every linear and quantizes with RTN
//! 3-bit (so quantized and full-precision activations differ clearly). The replay recomputes,
//! layer by layer: the expected Hessians from the full-precision layer on the inputs produced by
//! the already-quantized layers, then the next inputs from the quantized layer. The test fails
//! if the driver collected a Hessian from the wrong activations (e.g. o_proj's from an attention
//! that already uses the quantized q/k/v, as true-sequential does) or propagated full-precision
//! outputs; both alternatives are computed too, to show they would be caught.

mod common;
use common::*;

use std::collections::HashMap;

use qwen3_quant::calib::{first_windows, quantize_model, DriverOptions, StatsCollector};
use qwen3_quant::core::{LinearId, LinearKind};
use qwen3_quant::model::{LinearWeight, NoObserver, Site};

fn site_of(kind: LinearKind) -> Site {
    match kind {
        LinearKind::Q | LinearKind::K | LinearKind::V => Site::AttnInput,
        LinearKind::O => Site::OInput,
        LinearKind::Gate | LinearKind::Up => Site::MlpInput,
        LinearKind::Down => Site::DownInput,
    }
}

#[test]
fn one_pass_collects_fp_hessians_and_propagates_quantized_outputs() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let (n_seq, seq) = (3, 128);
    let calib = first_windows(&docs("calib"), n_seq, seq).unwrap();
    let probe = HessianProbe::new(false);
    let mut quantized = micro();
    // Two chunks: the Hessians must add up over chunks.
    let opts = DriverOptions::default().with_chunk_sequences(2);
    let run = quantize_model(&mut quantized, Some(&calib), &probe, &opts).unwrap();
    assert_eq!(run.quantized.len(), 56);
    let seen = probe.seen.into_inner().unwrap();
    let q_of: HashMap<LinearId, Vec<f32>> = run
        .quantized
        .iter()
        .map(|(id, q)| (*id, q.dequantize()))
        .collect();

    // Replay.
    let mut replay = micro();
    let fp = micro();
    let rope = replay.rope(seq);
    let req = hessian_request();
    let mut h = replay.embed(&calib.flat(0, n_seq)).unwrap();
    let mut h_fp = h.clone(); // full-precision propagation, to show it would be caught
    let (mut worst, mut fp_gap, mut ts_gap) = (0f64, 0f64, 0f64);
    for li in 0..replay.config.num_hidden_layers {
        let layer = &mut replay.layers[li];
        let mut coll = StatsCollector::new(li, req);
        let mut x = h.clone();
        layer.forward(&mut x, n_seq, seq, &rope, &mut coll).unwrap();
        let expected = coll.finish(n_seq).unwrap();
        let mut coll_fp = StatsCollector::new(li, req);
        let mut xf = h_fp.clone();
        fp.layers[li]
            .forward(&mut xf, n_seq, seq, &rope, &mut coll_fp)
            .unwrap();
        let fp_stats = coll_fp.finish(n_seq).unwrap();
        for id in layer.linear_ids() {
            let want = expected[&site_of(id.kind)].hessian.as_ref().unwrap();
            let (_, got) = &seen[&id];
            assert_eq!(got.n_sequences, n_seq, "{id}");
            let d = hessian_rel_diff(got, want);
            worst = worst.max(d);
            assert!(
                d < 1e-5,
                "{id}: recorded Hessian differs from the replay by {d:.2e}"
            );
            if li > 0 {
                let f = fp_stats[&site_of(id.kind)].hessian.as_ref().unwrap();
                fp_gap = fp_gap.max(hessian_rel_diff(f, want));
            }
        }
        // Swap in the quantized weights, then the quantized layer makes the next inputs.
        for id in layer.linear_ids() {
            let w = &q_of[&id];
            let old = layer.linear(id.kind, id.expert).unwrap();
            let (o, i) = (old.out_features(), old.in_features());
            layer
                .replace_linear(&id, LinearWeight::dense(o, i, w.clone()).unwrap())
                .unwrap();
        }
        if li == 0 {
            // What true-sequential would see for o_proj: the attention of the quantized q/k/v.
            let mut coll = StatsCollector::new(li, req);
            let mut x = h.clone();
            layer.forward(&mut x, n_seq, seq, &rope, &mut coll).unwrap();
            let o_ts = coll.finish(n_seq).unwrap();
            let want = expected[&Site::OInput].hessian.as_ref().unwrap();
            ts_gap = hessian_rel_diff(o_ts[&Site::OInput].hessian.as_ref().unwrap(), want);
        }
        layer
            .forward(&mut h, n_seq, seq, &rope, &mut NoObserver)
            .unwrap();
        fp.layers[li]
            .forward(&mut h_fp, n_seq, seq, &rope, &mut NoObserver)
            .unwrap();
    }
    eprintln!(
        "recorded vs replayed Hessians: worst {worst:.2e}; FP propagation would differ by up to \
         {fp_gap:.2e}, a true-sequential o_proj Hessian by {ts_gap:.2e}"
    );
    // The alternatives are far outside the tolerance, so the checks above can tell them apart.
    assert!(fp_gap > 1e-3 && ts_gap > 1e-3, "{fp_gap} {ts_gap}");
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
