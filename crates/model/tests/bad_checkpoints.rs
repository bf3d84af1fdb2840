//! A tiny synthetic Qwen3 written to a temp dir: it loads and runs, and every corruption of it
//! (NaN weight, wrong shape, missing tensor, missing config field, untied model without lm_head)
//! is a typed error that leaves the files untouched.

use std::collections::BTreeMap;
use std::path::Path;

use qwen3_quant_io::write::{write_safetensors, TensorData};
use qwen3_quant_io::IoError;
use qwen3_quant_model::{ModelError, Qwen3Model};

const CONFIG: &str = r#"{"model_type":"qwen3","vocab_size":64,"hidden_size":32,"intermediate_size":48,
  "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,
  "rope_theta":10000,"rms_norm_eps":1e-6,"tie_word_embeddings":true}"#;

fn tensors() -> Vec<TensorData> {
    let mut seed = 1u64;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    };
    let mut t = vec![TensorData::bf16(
        "model.embed_tokens.weight",
        vec![64, 32],
        &rand(64 * 32),
    )];
    t.push(TensorData::bf16("model.norm.weight", vec![32], &[1.0; 32]));
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("self_attn.q_proj.weight", vec![32, 32]),
            ("self_attn.k_proj.weight", vec![16, 32]),
            ("self_attn.v_proj.weight", vec![16, 32]),
            ("self_attn.o_proj.weight", vec![32, 32]),
            ("mlp.gate_proj.weight", vec![48, 32]),
            ("mlp.up_proj.weight", vec![48, 32]),
            ("mlp.down_proj.weight", vec![32, 48]),
        ] {
            let n = shape.iter().product();
            t.push(TensorData::bf16(format!("{p}.{name}"), shape, &rand(n)));
        }
        for (name, n) in [
            ("self_attn.q_norm.weight", 8),
            ("self_attn.k_norm.weight", 8),
            ("input_layernorm.weight", 32),
            ("post_attention_layernorm.weight", 32),
        ] {
            t.push(TensorData::bf16(
                format!("{p}.{name}"),
                vec![n],
                &vec![1.0; n],
            ));
        }
    }
    t
}

fn write_model(dir: &Path, config: &str, t: &[TensorData]) {
    std::fs::write(dir.join("config.json"), config).unwrap();
    write_safetensors(dir.join("model.safetensors"), t, &BTreeMap::new()).unwrap();
}

fn load_err(config: &str, t: &[TensorData]) -> ModelError {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), config, t);
    let file = dir.path().join("model.safetensors");
    let before = std::fs::read(&file).unwrap();
    let err = Qwen3Model::load(dir.path()).unwrap_err();
    assert_eq!(std::fs::read(&file).unwrap(), before, "input modified");
    err
}

#[test]
fn synthetic_model_loads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), CONFIG, &tensors());
    let m = Qwen3Model::load(dir.path()).unwrap();
    let logits = m.forward(&[1, 2, 3, 4, 5, 6], 2, 3).unwrap();
    assert_eq!(logits.len(), 6 * 64);
    assert!(logits.iter().all(|v| v.is_finite()));
}

#[test]
fn nan_weight_is_a_typed_error() {
    let mut t = tensors();
    let i = t
        .iter()
        .position(|x| x.name == "model.layers.1.mlp.up_proj.weight")
        .unwrap();
    t[i] = TensorData::bf16(t[i].name.clone(), t[i].shape.clone(), &{
        let mut v = vec![0.01f32; 48 * 32];
        v[77] = f32::NAN;
        v
    });
    match load_err(CONFIG, &t) {
        ModelError::Io(IoError::NonFinite { tensor, index: 77 }) => {
            assert!(tensor.contains("up_proj"))
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn wrong_shape_missing_tensor_and_missing_fields() {
    let mut t = tensors();
    let i = t
        .iter()
        .position(|x| x.name == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    t[i] = TensorData::bf16(t[i].name.clone(), vec![32, 16], &vec![0.0; 512]);
    assert!(matches!(
        load_err(CONFIG, &t),
        ModelError::Io(IoError::WrongShape { .. })
    ));

    let mut t = tensors();
    t.retain(|x| x.name != "model.layers.1.self_attn.q_norm.weight");
    assert!(matches!(
        load_err(CONFIG, &t),
        ModelError::Io(IoError::MissingTensor(_))
    ));

    let untied = CONFIG.replace(
        "\"tie_word_embeddings\":true",
        "\"tie_word_embeddings\":false",
    );
    match load_err(&untied, &tensors()) {
        ModelError::Io(IoError::MissingTensor(name)) => assert_eq!(name, "lm_head.weight"),
        e => panic!("unexpected {e:?}"),
    }

    let no_layers = CONFIG.replace("\"num_hidden_layers\":2,", "");
    assert!(matches!(
        load_err(&no_layers, &tensors()),
        ModelError::Io(IoError::Config(_))
    ));

    let mut t = tensors();
    let i = t
        .iter()
        .position(|x| x.name == "model.norm.weight")
        .unwrap();
    t[i] = TensorData::i32("model.norm.weight", vec![32], &[1; 32]);
    assert!(matches!(
        load_err(CONFIG, &t),
        ModelError::Io(IoError::WrongDtype { .. })
    ));
}
