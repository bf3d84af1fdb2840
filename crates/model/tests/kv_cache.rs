//! Incremental decoding with the key/value cache equals recomputing the whole prefix: logits at
//! every position (prompt in one step, then one token per step) and greedy continuations, for
//! the dense and the MoE model.

use qwen3_quant_model::Qwen3Model;

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

/// Greedy decoding by recomputing the prefix each step (the reference for the cached path).
fn greedy_uncached(model: &Qwen3Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let (mut ids, v) = (prompt.to_vec(), model.config.vocab_size);
    for _ in 0..n {
        let logits = model.forward(&ids, 1, ids.len()).unwrap();
        let last = &logits[(ids.len() - 1) * v..];
        let next = last
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            )
            .0;
        ids.push(next as u32);
    }
    ids[prompt.len()..].to_vec()
}

fn check(dir: &str) {
    let model = Qwen3Model::load(format!("{ASSETS}/models/{dir}")).unwrap();
    let v = model.config.vocab_size;
    let ids: Vec<u32> = (0..24u32).map(|i| (i * 7919 + 13) % v as u32).collect();
    let full = model.forward(&ids, 1, ids.len()).unwrap();
    let mut cache = model.new_cache();
    assert!(cache.is_empty());
    let mut worst = 0f32;
    let prompt = 9;
    let first = model.forward_step(&ids[..prompt], &mut cache).unwrap();
    let mut steps = vec![(prompt - 1, first)];
    for (p, &t) in ids.iter().enumerate().skip(prompt) {
        steps.push((p, model.forward_step(&[t], &mut cache).unwrap()));
    }
    assert_eq!(cache.len(), ids.len());
    for (p, logits) in steps {
        let want = &full[p * v..(p + 1) * v];
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = logits
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(d / scale);
    }
    eprintln!("{dir}: cached vs full logits, max |Δ| / max |logit| = {worst:.2e}");
    assert!(worst < 1e-4, "{dir}: {worst}");
    let cached = model.generate_greedy(&ids[..6], 16, &[]).unwrap();
    assert_eq!(
        cached,
        greedy_uncached(&model, &ids[..6], 16),
        "{dir}: greedy continuations differ"
    );
    assert!(model.forward_step(&[], &mut cache).is_err());
    let mut other = Qwen3Model::load(format!("{ASSETS}/models/{dir}")).unwrap();
    other.layers.pop();
    assert!(other.forward_step(&[1], &mut model.new_cache()).is_err());
    // A cache of a model with other attention widths is an error, not an out-of-bounds read.
    let mut narrow = Qwen3Model::load(format!("{ASSETS}/models/{dir}")).unwrap();
    narrow.config.num_key_value_heads /= 2;
    assert!(model.forward_step(&[1], &mut narrow.new_cache()).is_err());
}

#[test]
fn cached_decoding_matches_full_recompute_dense() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    check("qwen3-micro");
}

#[test]
fn cached_decoding_matches_full_recompute_moe() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    check("qwen3-moe-micro");
}
