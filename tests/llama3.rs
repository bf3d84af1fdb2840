//! Every method end to end on the LLaMA-3-shaped checkpoints (`assets/models/llama3-micro`, and
//! `llama3-bias-micro` with attention biases), through the same driver and formats as Qwen3,
//! with a few calibration windows so the whole file takes seconds. The models are random
//! initialisations: their perplexity is near the vocabulary size and means nothing, so the
//! checks are on the pipeline (every linear quantized, the model changed but stays close to
//! full precision, the written checkpoint reproduces the in-memory model).

mod common;
use common::*;

use qwen3_quant::billm::BillmConfig;
use qwen3_quant::formats::Format;
use qwen3_quant::{
    AwqConfig, Calibration, GptqConfig, Model, Quantize, QuantizedModel, RtnConfig,
    SmoothQuantConfig,
};

const LLAMA: &str = "models/llama3-micro";
const BIAS: &str = "models/llama3-bias-micro";

fn open(dir: &str) -> Model {
    Model::open(format!("{ASSETS}/{dir}")).unwrap()
}

fn calib() -> Calibration {
    Calibration::docs().windows(4, 256)
}

/// Validation tokens: the docs valid split (the micro tokenizer both LLaMA models carry).
fn probe() -> Vec<u32> {
    docs("valid")[..2 * 128].to_vec()
}

fn logits(m: &Model) -> Vec<f32> {
    m.qwen3().forward(&probe(), 2, 128).unwrap()
}

/// `max |a − b| / max |a|`.
fn rel_change(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Checks one quantized model against full precision: every decoder linear quantized, logits
/// finite, changed, and within `max_change` (relative) of full precision.
fn check(name: &str, fp: &Model, q: &QuantizedModel, max_change: f32) -> f32 {
    let layers = fp.config().num_hidden_layers;
    assert_eq!(q.linears(), layers * 7, "{name}");
    let (a, b) = (logits(fp), logits(q.model()));
    assert!(b.iter().all(|v| v.is_finite()), "{name}");
    let r = rel_change(&a, &b);
    let ppl = q.model().perplexity("docs", 256, Some(2)).unwrap().ppl;
    eprintln!(
        "{name}: {} bits/weight, relative logit change {r:.3e}, docs ppl (2 x 256) {ppl:.1}",
        q.bits_per_weight()
    );
    assert!(r > 0.0 && r < max_change, "{name}: {r}");
    assert!(ppl.is_finite());
    r
}

#[test]
fn every_method_runs_on_llama3() {
    let Some(_) = qwen3_quant::io::assets::require(LLAMA) else {
        return;
    };
    let fp = open(LLAMA);
    assert_eq!(
        fp.config().architecture,
        qwen3_quant::io::Architecture::Llama
    );
    let fp_ppl = fp.perplexity("docs", 256, Some(2)).unwrap().ppl;
    eprintln!("fp: docs ppl (2 x 256) {fp_ppl:.1}");

    let rtn4 = Quantize::rtn(RtnConfig::default().with_bits(4).with_group_size(Some(128)))
        .run(&fp)
        .unwrap();
    let r_rtn4 = check("rtn w4 g128", &fp, &rtn4, 0.5);
    let rtn8 = Quantize::rtn(RtnConfig::default().with_bits(8).with_group_size(Some(128)))
        .run(&fp)
        .unwrap();
    let r_rtn8 = check("rtn w8 g128", &fp, &rtn8, 0.05);
    // More bits, less change: the quantization really runs on the LLaMA weights.
    assert!(r_rtn8 * 4.0 < r_rtn4, "w8 {r_rtn8} vs w4 {r_rtn4}");

    let gptq = Quantize::gptq(
        GptqConfig::default()
            .with_bits(4)
            .with_group_size(Some(128))
            .with_act_order(true),
    )
    .calibration(calib())
    .run(&fp)
    .unwrap();
    check("gptq w4 g128", &fp, &gptq, 0.5);
    assert!(gptq.run().records.iter().all(|r| r.loss.is_finite()));

    let awq = Quantize::awq(
        AwqConfig::default()
            .with_bits(4)
            .with_group_size(Some(128))
            .with_grid(5),
    )
    .calibration(calib())
    .run(&fp)
    .unwrap();
    check("awq w4 g128", &fp, &awq, 0.5);
    // The architecture supplies AWQ's pairs: norm → q,k,v (no q/k norm in between), norm →
    // gate,up, up → down, and v → o where the scale maps onto GQA value channels.
    let targets: Vec<&str> = awq
        .run()
        .transforms
        .iter()
        .filter(|t| t.layer == 0 && t.target.contains(" -> "))
        .map(|t| t.target.as_str())
        .collect();
    eprintln!("awq layer 0 scale pairs: {targets:?}");
    assert_eq!(
        targets,
        [
            "input_layernorm -> self_attn.q_proj,self_attn.k_proj,self_attn.v_proj",
            "post_attention_layernorm -> mlp.gate_proj,mlp.up_proj",
            "mlp.up_proj -> mlp.down_proj"
        ]
    );

    let sq = Quantize::smoothquant(SmoothQuantConfig::default())
        .calibration(calib())
        .run(&fp)
        .unwrap();
    check("smoothquant w8a8", &fp, &sq, 0.1);
    assert_eq!(sq.act_bits(), Some(8));
    assert!(!sq.run().transforms.is_empty());

    let billm = Quantize::billm(BillmConfig::default())
        .calibration(calib())
        .run(&fp)
        .unwrap();
    check("billm", &fp, &billm, 2.0);
}

#[test]
fn methods_with_scale_folds_run_on_llama3_with_attention_biases() {
    let Some(_) = qwen3_quant::io::assets::require(BIAS) else {
        return;
    };
    let fp = open(BIAS);
    assert!(fp.config().attention_bias);
    // Smoothing alone, every pair including v → o (whose fold must carry v_proj.bias), through
    // the driver: an exact equivalence.
    let smooth_only = Quantize::smoothquant(
        SmoothQuantConfig::default()
            .with_weight_bits(8)
            .with_act_bits(None)
            .with_smooth_o(true)
            .with_smooth_down(true),
    )
    .calibration(calib())
    .run(&fp)
    .unwrap();
    let transforms = &smooth_only.run().transforms;
    assert_eq!(transforms.len(), 2 * 4, "{transforms:?}");
    let original_bias = fp.qwen3().layers[0].attn.bias.v.as_ref().unwrap();
    let folded_bias = smooth_only.model().qwen3().layers[0]
        .attn
        .bias
        .v
        .as_ref()
        .unwrap();
    assert_ne!(original_bias, folded_bias, "v_proj.bias was not rescaled");
    // With the bias left unscaled the smoothed model would drift far more than w8 weights do.
    check("smoothquant w8 (smoothed o, down)", &fp, &smooth_only, 0.01);

    let awq = Quantize::awq(
        AwqConfig::default()
            .with_bits(4)
            .with_group_size(Some(128))
            .with_grid(5)
            .with_scale_v_o_gqa(true),
    )
    .calibration(calib())
    .run(&fp)
    .unwrap();
    check("awq w4 g128 (v -> o)", &fp, &awq, 0.5);
    let gptq = Quantize::gptq(GptqConfig::default().with_bits(4))
        .calibration(calib())
        .run(&fp)
        .unwrap();
    check("gptq w4 g128", &fp, &gptq, 0.5);
}

#[test]
fn quantized_llama3_written_as_gptq_loads_back_with_the_same_logits() {
    for dir in [LLAMA, BIAS] {
        let Some(_) = qwen3_quant::io::assets::require(dir) else {
            return;
        };
        let fp = open(dir);
        let q = Quantize::gptq(
            GptqConfig::default()
                .with_bits(4)
                .with_group_size(Some(128))
                .with_act_order(true),
        )
        .calibration(calib())
        .run(&fp)
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("gptq");
        q.save(&out, Format::Gptq).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["model_type"], "llama", "{dir}");
        assert_eq!(cfg["architectures"][0], "LlamaForCausalLM", "{dir}");
        assert_eq!(cfg["quantization_config"]["quant_method"], "gptq");
        let loaded = Model::open(&out).unwrap();
        assert!(loaded.is_quantized());
        let layer = &loaded.qwen3().layers[0];
        assert!(layer.attn.q_norm.is_none());
        assert_eq!(
            layer.attn.bias.any(),
            fp.config().attention_bias,
            "{dir}: biases"
        );
        let (a, b) = (logits(q.model()), logits(&loaded));
        let r = rel_change(&a, &b);
        eprintln!("{dir}: GPTQ checkpoint vs in-memory model, relative logit difference {r:.3e}");
        // Only the f16 scales (and f16 norms, biases) of the checkpoint differ.
        assert!(r < 2e-3, "{dir}: {r}");
        // And the quantized model did move away from full precision by more than that.
        assert!(rel_change(&logits(&fp), &a) > 5.0 * r, "{dir}");
    }
}
