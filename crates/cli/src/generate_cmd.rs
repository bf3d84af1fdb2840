//! `qwen3-quant generate`: continue a prompt (greedy, or sampled with temperature/top-k/top-p).

use anyhow::Context;
use qwen3_quant_model::{Qwen3Model, Tokenizer};
use serde_json::json;

use crate::args::GenerateArgs;
use crate::output::print_json;

/// A small deterministic generator (SplitMix64) so `--seed` reproduces a sample exactly.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the next token from `logits` under the sampling settings.
fn sample(logits: &[f32], a: &GenerateArgs, rng: &mut SplitMix) -> u32 {
    if a.temperature <= 0.0 {
        return logits
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            )
            .0 as u32;
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]));
    if let Some(k) = a.top_k {
        idx.truncate(k.max(1));
    }
    let max = logits[idx[0]];
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i] - max) / a.temperature) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = a.top_p {
        let mut acc = 0.0;
        let keep = probs.iter().position(|&q| {
            acc += q;
            acc >= p as f64
        });
        if let Some(k) = keep {
            probs.truncate(k + 1);
            idx.truncate(k + 1);
        }
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.next_f64() * total;
    for (i, p) in idx.iter().zip(&probs) {
        r -= p;
        if r <= 0.0 {
            return *i as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let model =
        Qwen3Model::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let tok = Tokenizer::from_dir(&a.model)?;
    let prompt = tok.encode(&a.prompt)?;
    anyhow::ensure!(!prompt.is_empty(), "the prompt encodes to no tokens");
    let mut rng = SplitMix(a.seed);
    let mut ids = prompt.clone();
    let start = std::time::Instant::now();
    // Prompt in one step, then one token per step through the key/value cache.
    let mut cache = model.new_cache();
    let mut step: &[u32] = &prompt;
    let mut next_id;
    for _ in 0..a.max_new_tokens {
        let logits = model.forward_step(step, &mut cache)?;
        next_id = [sample(&logits, &a, &mut rng)];
        ids.push(next_id[0]);
        if model.config.eos_token_ids.contains(&next_id[0]) {
            break;
        }
        step = &next_id;
    }
    let secs = start.elapsed().as_secs_f64();
    let new = &ids[prompt.len()..];
    let text = tok.decode(new)?;
    if a.json {
        print_json(
            &json!({"model": a.model, "prompt": a.prompt, "completion": text, "tokens": new.len(), "seconds": secs}),
        );
    } else {
        println!("{}{}", a.prompt, text);
        eprintln!("[{} tokens in {:.2} s]", new.len(), secs);
    }
    Ok(())
}
