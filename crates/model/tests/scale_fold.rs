//! Folding a per-channel scale into every producer/consumer pair is an exact equivalence: the
//! logits of both bundled models, and of a synthetic multi-head (not GQA) model for the general
//! `v → o` case, stay within 1e-5 relative (max |Δ| / max |logit|) of the original ones.
//! Scored sub-blocks run with candidate weights equal the layer's own forward.

mod common;
use common::rel_max_diff;
use std::collections::HashMap;

use qwen3_quant_core::{LinearId, LinearKind, ScaleProducer, ScoredBlock};
use qwen3_quant_io::ModelConfig;
use qwen3_quant_model::attention::Attention;
use qwen3_quant_model::mlp::Mlp;
use qwen3_quant_model::{DecoderLayer, FeedForward, LinearWeight, Qwen3Model};

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

/// xorshift64*: deterministic test numbers without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32) / (1u64 << 24) as f32
    }
    /// Log-uniform in [1/4, 4].
    fn scale(&mut self) -> f32 {
        (4.0f32.ln() * (2.0 * self.next() - 1.0)).exp()
    }
    fn normal_ish(&mut self) -> f32 {
        (0..4).map(|_| self.next()).sum::<f32>() - 2.0
    }
}

fn ids(vocab: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

/// Folds a random scale into every pair of every layer; returns how many pairs were folded.
fn fold_everything(model: &mut Qwen3Model, rng: &mut Rng) -> usize {
    let mut folded = 0;
    for layer in &mut model.layers {
        for pair in layer.scale_pairs() {
            let s: Vec<f32> = (0..pair.channels).map(|_| rng.scale()).collect();
            layer.fold_scale(pair.producer, &s).unwrap();
            folded += 1;
        }
    }
    folded
}

fn check_model(mut model: Qwen3Model, expected_pairs: usize) {
    let (batch, seq) = (2, 48);
    let tokens = ids(model.config.vocab_size, batch * seq);
    let before = model.forward(&tokens, batch, seq).unwrap();
    let mut rng = Rng(0x9E3779B97F4A7C15);
    assert_eq!(fold_everything(&mut model, &mut rng), expected_pairs);
    let after = model.forward(&tokens, batch, seq).unwrap();
    let r = rel_max_diff(&before, &after);
    eprintln!("max |Δlogit| / max |logit| = {r:.3e}");
    assert!(r <= 1e-5, "relative logit error {r}");
    // The fold really changed the weights (a no-op fold would pass the check above trivially).
    let norm0 = model.layers[0].input_layernorm[0];
    let reloaded_first = model.layers[0].attn.q_proj.to_dense()[0];
    assert!(norm0.is_finite() && reloaded_first.is_finite());
}

#[test]
fn folding_scales_leaves_qwen3_micro_logits_unchanged() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let model = Qwen3Model::load(format!("{ASSETS}/models/qwen3-micro")).unwrap();
    let original_norm = model.layers[3].post_attention_layernorm.clone();
    let mut folded = model.clone();
    let mut rng = Rng(7);
    fold_everything(&mut folded, &mut rng);
    assert!(folded.layers[3]
        .post_attention_layernorm
        .iter()
        .zip(&original_norm)
        .any(|(a, b)| (a / b - 1.0).abs() > 0.1));
    // 4 pairs per layer: norm→qkv, v→o (GQA, mapped), norm→gate/up, up→down.
    check_model(model, 8 * 4);
}

#[test]
fn folding_scales_leaves_qwen3_moe_micro_logits_unchanged() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    let model = Qwen3Model::load(format!("{ASSETS}/models/qwen3-moe-micro")).unwrap();
    let experts = model.config.moe.as_ref().unwrap().num_experts;
    // norm→qkv, v→o, norm→(router + every expert's gate/up), up→down per expert.
    check_model(model, 4 * (3 + experts));
}

#[test]
fn folding_scales_leaves_llama3_logits_unchanged() {
    // No q/k norm (input_layernorm → q,k,v is the same pair), and with attention biases the
    // v → o fold must divide v_proj.bias as well.
    for (dir, layers) in [("llama3-micro", 4), ("llama3-bias-micro", 2)] {
        let Some(_) = qwen3_quant_io::assets::require(&format!("models/{dir}")) else {
            return;
        };
        let model = Qwen3Model::load(format!("{ASSETS}/models/{dir}")).unwrap();
        assert!(model.layers[0].attn.q_norm.is_none());
        check_model(model, layers * 4);
    }
}

#[test]
fn scored_linear_blocks_include_the_attention_bias() {
    let Some(_) = qwen3_quant_io::assets::require("models/llama3-bias-micro") else {
        return;
    };
    let model = Qwen3Model::load(format!("{ASSETS}/models/llama3-bias-micro")).unwrap();
    let layer = &model.layers[1];
    assert!(layer.attn.bias.o.is_some() && layer.attn.bias.v.is_some());
    let (batch, seq) = (1, 24);
    let rope = model.rope(seq);
    let h = model.embed(&ids(model.config.vocab_size, seq)).unwrap();
    let o = ScoredBlock::Linear(LinearId::new(1, LinearKind::O));
    let inp = layer.block_input(o, &h, batch, seq, &rope).unwrap();
    let got = layer
        .block_output(o, &inp, batch, seq, &rope, &HashMap::new())
        .unwrap();
    let x = layer.attn_input(&h);
    let want = layer.attn.forward(&x, batch, seq, &rope).unwrap();
    assert!(rel_max_diff(&want, &got) < 1e-6);
    let trace = layer.trace(&h, batch, seq, &rope).unwrap();
    assert_eq!(layer.trace_output(&trace, o).unwrap(), want);
    // Without the bias the block output would differ by it.
    let bare = layer.attn.o_proj.apply(&inp.x, seq).unwrap();
    assert!(rel_max_diff(&want, &bare) > 1e-2);
}

/// A small multi-head (not GQA) model with random weights, where `v → o` has no column map.
fn synthetic_mha() -> Qwen3Model {
    let config = ModelConfig::from_json(
        r#"{"architectures":["Qwen3ForCausalLM"],"model_type":"qwen3","vocab_size":97,"hidden_size":48,
            "intermediate_size":80,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":4,
            "head_dim":16,"rope_theta":10000,"rms_norm_eps":1e-6,"tie_word_embeddings":true}"#,
    )
    .unwrap();
    let mut rng = Rng(42);
    let (h, i, qd) = (48, 80, 64);
    let mut dense = |out: usize, inp: usize| {
        let w = (0..out * inp)
            .map(|_| rng.normal_ish() / (inp as f32).sqrt())
            .collect();
        LinearWeight::dense(out, inp, w).unwrap()
    };
    let layers = (0..2)
        .map(|index| DecoderLayer {
            index,
            input_layernorm: vec![1.0; h],
            post_attention_layernorm: vec![1.0; h],
            attn: Attention {
                q_proj: dense(qd, h),
                k_proj: dense(qd, h),
                v_proj: dense(qd, h),
                o_proj: dense(h, qd),
                q_norm: Some(vec![1.0; 16]),
                k_norm: Some(vec![1.0; 16]),
                bias: Default::default(),
                heads: 4,
                kv_heads: 4,
                head_dim: 16,
                eps: 1e-6,
            },
            ffn: FeedForward::Dense(Mlp {
                gate: dense(i, h),
                up: dense(i, h),
                down: dense(h, i),
            }),
            eps: 1e-6,
        })
        .collect();
    let mut rng = Rng(5);
    Qwen3Model {
        config,
        embed_tokens: (0..97 * h).map(|_| rng.normal_ish()).collect(),
        layers,
        norm: vec![1.0; h],
        lm_head: None,
    }
}

#[test]
fn folding_v_into_o_is_exact_for_multi_head_attention() {
    let model = synthetic_mha();
    let pairs = model.layers[0].scale_pairs();
    let vo = pairs
        .iter()
        .find(|p| matches!(p.producer, ScaleProducer::Rows(id) if id.kind == LinearKind::V))
        .unwrap();
    assert!(vo.column_map.is_none() && vo.channels == 64);
    check_model(model, 2 * 4);
}

#[test]
fn bad_scales_are_rejected_and_leave_the_layer_untouched() {
    let mut model = synthetic_mha();
    let layer = &mut model.layers[0];
    let before = layer.input_layernorm.clone();
    assert!(layer
        .fold_scale(ScaleProducer::InputNorm, &[1.0; 3])
        .is_err());
    let mut s = vec![1.0f32; 48];
    s[5] = 0.0;
    assert!(layer.fold_scale(ScaleProducer::InputNorm, &s).is_err());
    s[5] = f32::NAN;
    assert!(layer.fold_scale(ScaleProducer::InputNorm, &s).is_err());
    let q = LinearId::new(0, LinearKind::Q);
    assert!(layer
        .fold_scale(ScaleProducer::Rows(q), &[1.0; 64])
        .is_err());
    assert_eq!(layer.input_layernorm, before);
}

#[test]
fn scored_blocks_with_unchanged_candidates_equal_the_forward() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let model = Qwen3Model::load(format!("{ASSETS}/models/qwen3-micro")).unwrap();
    let (batch, seq) = (1, 32);
    let rope = model.rope(seq);
    let layer = &model.layers[2];
    let h = model.embed(&ids(model.config.vocab_size, seq)).unwrap();
    let id = |k| LinearId::new(2, k);
    // The attention block with q/k/v passed explicitly equals the plain block output.
    let inp = layer
        .block_input(ScoredBlock::Attention, &h, batch, seq, &rope)
        .unwrap();
    let plain = layer
        .block_output(
            ScoredBlock::Attention,
            &inp,
            batch,
            seq,
            &rope,
            &HashMap::new(),
        )
        .unwrap();
    let same: HashMap<_, _> = [LinearKind::Q, LinearKind::K, LinearKind::V]
        .into_iter()
        .map(|k| (id(k), layer.linear(k, None).unwrap().clone()))
        .collect();
    let with = layer
        .block_output(ScoredBlock::Attention, &inp, batch, seq, &rope, &same)
        .unwrap();
    assert_eq!(plain, with);
    let direct = layer.attn.forward(&inp.x, batch, seq, &rope).unwrap();
    assert_eq!(plain, direct);
    // A candidate for a linear outside the scored block is rejected.
    let mut wrong = HashMap::new();
    wrong.insert(
        id(LinearKind::Down),
        layer.linear(LinearKind::Down, None).unwrap().clone(),
    );
    assert!(layer
        .block_output(ScoredBlock::Attention, &inp, batch, seq, &rope, &wrong)
        .is_err());
    // Running the layer == attention block + residual + feed-forward block + residual.
    let mut full = h.clone();
    layer
        .forward(
            &mut full,
            batch,
            seq,
            &rope,
            &mut qwen3_quant_model::NoObserver,
        )
        .unwrap();
    let ffn_in = layer
        .block_input(ScoredBlock::FeedForward, &h, batch, seq, &rope)
        .unwrap();
    let ffn_out = layer
        .block_output(
            ScoredBlock::FeedForward,
            &ffn_in,
            batch,
            seq,
            &rope,
            &HashMap::new(),
        )
        .unwrap();
    let recon: Vec<f32> = h
        .iter()
        .zip(&plain)
        .zip(&ffn_out)
        .map(|((a, b), c)| a + b + c)
        .collect();
    assert!(rel_max_diff(&full, &recon) < 1e-6);
}

/// `rescale_norm` (the post-quantization norm refit) multiplies only the norm: the linears that
/// read it keep their weights, and the MoE router, which stays in full precision, keeps its
/// logits (its columns take `1/s`).
#[test]
fn rescaling_a_norm_keeps_the_router_logits_and_the_experts() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    let mut model = Qwen3Model::load(format!("{ASSETS}/models/qwen3-moe-micro")).unwrap();
    let layer = &mut model.layers[1];
    let n = layer.post_attention_layernorm.len();
    let mut rng = Rng(7);
    let x: Vec<f32> = (0..16 * n).map(|_| rng.normal_ish()).collect();
    let FeedForward::Moe(m) = &layer.ffn else {
        panic!("MoE layer")
    };
    let logits = |l: &DecoderLayer| {
        let FeedForward::Moe(m) = &l.ffn else {
            unreachable!()
        };
        m.router.apply(&l.mlp_input(&x), 16).unwrap()
    };
    let before = logits(layer);
    let gate0 = m.experts[0].gate.to_dense();
    let (norm0, qnorm0) = (
        layer.post_attention_layernorm.clone(),
        layer.input_layernorm.clone(),
    );
    let s: Vec<f32> = (0..n).map(|_| rng.scale()).collect();
    layer
        .rescale_norm(ScaleProducer::PostAttentionNorm, &s)
        .unwrap();
    assert!(rel_max_diff(&before, &logits(layer)) < 1e-5);
    let FeedForward::Moe(m) = &layer.ffn else {
        unreachable!()
    };
    assert_eq!(m.experts[0].gate.to_dense(), gate0);
    for j in 0..n {
        assert_eq!(layer.post_attention_layernorm[j], norm0[j] * s[j]);
    }
    assert_eq!(layer.input_layernorm, qnorm0);
    // Not a norm, a wrong length, a non-positive factor: refused, nothing changed.
    let v = LinearId {
        layer: 1,
        kind: LinearKind::V,
        expert: None,
    };
    let snapshot = layer.post_attention_layernorm.clone();
    assert!(layer.rescale_norm(ScaleProducer::Rows(v), &s).is_err());
    assert!(layer
        .rescale_norm(ScaleProducer::InputNorm, &s[..n - 1])
        .is_err());
    let mut bad = s.clone();
    bad[3] = -1.0;
    assert!(layer
        .rescale_norm(ScaleProducer::PostAttentionNorm, &bad)
        .is_err());
    assert_eq!(layer.post_attention_layernorm, snapshot);
}
