//! MoE expert policies on qwen3-moe-micro, whose router sends few calibration tokens to some
//! experts: the threshold policy quantizes under-routed experts by plain rounding, the all-token
//! policy gives every expert statistics from every calibration token (while the layer outputs
//! keep the real routing), and the combination uses routed statistics where there are enough.

mod common;
use common::*;
use qwen3_quant::calib::{
    first_windows, quantize_model, DriverOptions, ExpertPolicy, QuantizationRun,
};
use qwen3_quant::gptq::{Gptq, GptqConfig};
use qwen3_quant::model::Qwen3Model;

fn run(policy: ExpertPolicy) -> (Qwen3Model, QuantizationRun) {
    let dir = format!("{ASSETS}/models/qwen3-moe-micro");
    let mut m = Qwen3Model::load(&dir).unwrap();
    let calib = first_windows(&docs("calib"), 4, 256).unwrap();
    let opts = DriverOptions::default().with_expert_policy(policy);
    let gptq = Gptq::new(GptqConfig::default()).unwrap();
    let r = quantize_model(&mut m, Some(&calib), &gptq, &opts).unwrap();
    (m, r)
}

fn expert_records(r: &QuantizationRun) -> impl Iterator<Item = &qwen3_quant::calib::LinearRecord> {
    r.records.iter().filter(|x| x.module.contains("experts."))
}

#[test]
fn expert_policies_choose_the_statistics_they_document() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    const MIN: usize = 200;
    let (_, thr) = run(ExpertPolicy::Threshold { min_tokens: MIN });
    let (_, all) = run(ExpertPolicy::AllTokens);
    let (_, both) = run(ExpertPolicy::ThresholdThenAllTokens { min_tokens: MIN });
    // Routing counts are the real routing's under every policy: top-2 of 4 × 256 tokens.
    for r in [&thr, &all, &both] {
        for (_, counts) in &r.expert_tokens {
            assert_eq!(counts.iter().sum::<usize>(), 4 * 256 * 2);
        }
    }
    let below = expert_records(&thr).filter(|x| x.tokens < MIN).count();
    assert!(
        below > 0,
        "no expert below {MIN} routed tokens: the test proves nothing"
    );
    assert!(expert_records(&thr).any(|x| x.tokens >= MIN));
    for x in expert_records(&thr) {
        let rtn = x.fallback.as_deref().is_some_and(|f| f.ends_with("RTN"));
        assert_eq!(rtn, x.tokens < MIN, "{x:?}");
    }
    for x in expert_records(&all) {
        assert!(
            x.fallback
                .as_deref()
                .is_some_and(|f| f.starts_with("all-token")),
            "{x:?}"
        );
    }
    // The combination: routed statistics (the threshold run's result exactly) at or above MIN,
    // all-token statistics (the all-token run's result exactly) below. Layer 0 only: its inputs
    // are the same in the three runs (later layers see the quantized outputs of earlier ones).
    let weights = |r: &QuantizationRun| -> Vec<(String, Vec<f32>)> {
        r.quantized
            .iter()
            .map(|(id, q)| (id.to_string(), q.dequantize()))
            .collect()
    };
    let (wt, wa, wb) = (weights(&thr), weights(&all), weights(&both));
    let mut changed_by_all_tokens = 0;
    for (((rec, t), a), b) in thr.records.iter().zip(&wt).zip(&wa).zip(&wb) {
        assert_eq!(t.0, b.0);
        if rec.layer != 0 {
            continue;
        }
        if !rec.module.contains("experts.") || rec.tokens >= MIN {
            assert_eq!(t.1, b.1, "{} should use routed statistics", t.0);
        } else {
            assert_eq!(a.1, b.1, "{} should use all-token statistics", t.0);
            changed_by_all_tokens += usize::from(a.1 != t.1);
        }
    }
    assert!(
        changed_by_all_tokens > 0,
        "all-token statistics changed nothing"
    );
}

#[test]
fn routing_weighted_statistics_change_the_experts_only() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    let quantize = |weighted: bool| {
        let dir = format!("{ASSETS}/models/qwen3-moe-micro");
        let mut m = Qwen3Model::load(&dir).unwrap();
        let calib = first_windows(&docs("calib"), 4, 256).unwrap();
        let opts = DriverOptions::default().with_routing_weighted(weighted);
        let gptq = Gptq::new(GptqConfig::default()).unwrap();
        quantize_model(&mut m, Some(&calib), &gptq, &opts).unwrap()
    };
    let (plain, weighted) = (quantize(false), quantize(true));
    let mut changed = 0;
    for ((rec, (id, p)), (id_w, w)) in plain
        .records
        .iter()
        .zip(&plain.quantized)
        .zip(&weighted.quantized)
    {
        assert_eq!(id, id_w);
        // Layer 0's inputs are the same in both runs; its dense linears see no routing.
        if rec.layer != 0 {
            continue;
        }
        let (p, w) = (p.dequantize(), w.dequantize());
        if rec.module.contains("experts.") {
            changed += usize::from(p != w);
        } else {
            assert_eq!(p, w, "{id}: a dense linear changed");
        }
    }
    // Token counts are counts, not weights (layer 0: later layers route quantized inputs).
    assert_eq!(plain.expert_tokens[0], weighted.expert_tokens[0]);
    assert_eq!(plain.expert_tokens[0].0, 0);
    assert!(changed > 0, "routing weights changed no expert");
}
