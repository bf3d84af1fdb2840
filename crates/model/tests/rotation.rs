//! Rotating the residual stream (norms folded into the linears, embeddings and every linear in
//! the rotated basis, the head untied) is an exact equivalence: the logits of the bundled Qwen3,
//! Qwen3-MoE and LLaMA-3 models stay within 1e-5 relative (max |Δ| / max |logit|) of the
//! original ones, while every weight the rotation touches has really changed.

mod common;
use common::rel_max_diff;
use qwen3_quant_core::ResidualRotation;
use qwen3_quant_model::{Qwen3Model, Rotation};
use qwen3_quant_rotate::Hadamard;

const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

fn check(dir: &str) {
    let Some(_) = qwen3_quant_io::assets::require(&format!("models/{dir}")) else {
        return;
    };
    let mut model = Qwen3Model::load(format!("{ASSETS}/models/{dir}")).unwrap();
    let (batch, seq) = (2, 40);
    let tokens: Vec<u32> = (0..batch * seq)
        .map(|i| ((i * 7919 + 13) % model.config.vocab_size) as u32)
        .collect();
    let before = model.forward(&tokens, batch, seq).unwrap();
    let d = model.config.hidden_size;
    let r = Rotation::new(d, Hadamard::new(11).matrix(d).unwrap()).unwrap();
    let embed0 = model.embed_tokens[..d].to_vec();
    let q0 = model.layers[1].attn.q_proj.to_dense();
    model.rotate_residual(&r).unwrap();
    let after = model.forward(&tokens, batch, seq).unwrap();
    let err = rel_max_diff(&before, &after);
    eprintln!("{dir}: max |Δlogit| / max |logit| = {err:.3e}");
    assert!(err <= 1e-5, "{dir}: relative logit error {err}");
    // Not a no-op: the embeddings and weights moved, the norms are folded, the head is untied.
    assert!(rel_max_diff(&embed0, &model.embed_tokens[..d]) > 0.1);
    assert!(rel_max_diff(&q0, &model.layers[1].attn.q_proj.to_dense()) > 0.1);
    assert!(model
        .layers
        .iter()
        .all(|l| l.input_layernorm.iter().all(|&g| g == 1.0)));
    assert!(model.norm.iter().all(|&g| g == 1.0));
    assert!(model.lm_head.is_some() && !model.config.tie_word_embeddings);
}

#[test]
fn rotating_qwen3_micro_leaves_the_logits_unchanged() {
    check("qwen3-micro");
}

#[test]
fn rotating_qwen3_moe_micro_leaves_the_logits_unchanged() {
    check("qwen3-moe-micro");
}

#[test]
fn rotating_llama3_micro_leaves_the_logits_unchanged() {
    check("llama3-micro");
    check("llama3-bias-micro");
}

#[test]
fn a_matrix_that_is_not_orthogonal_is_rejected() {
    let mut m = Hadamard::new(0).matrix(8).unwrap();
    m[3] *= 1.5;
    assert!(Rotation::new(8, m).is_err());
    assert!(Rotation::new(8, vec![0.0; 63]).is_err());
    assert!(Rotation::new(2, vec![1.0, 0.0, 0.0, f32::NAN]).is_err());
}
