//! Sampled generation: temperature, top-k and top-p with a seeded generator, stopping on EOS,
//! and incremental detokenization for streaming output.

use crate::error::{ModelError, Result};
use crate::model::Qwen3Model;
use crate::tokenizer::Tokenizer;

/// Sampling settings. `temperature <= 0` is greedy (ties to the lowest id).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
    /// Seed of the generator: the same seed gives the same sample.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

/// Picks tokens from logits under [`SamplingParams`] (SplitMix64 generator, so a seed
/// reproduces a sample on every platform).
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    state: u64,
}

impl Sampler {
    /// A sampler; rejects NaN/negative temperatures, `top_k = 0` and `top_p` outside `(0, 1]`.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] with a message naming the invalid setting.
    pub fn new(params: SamplingParams) -> Result<Self> {
        let bad = |m: &str| Err(ModelError::Tokenizer(format!("sampling: {m}")));
        if params.temperature.is_nan() || params.temperature < 0.0 {
            return bad("temperature must be >= 0");
        }
        if params.top_k == Some(0) {
            return bad("top-k must be at least 1");
        }
        if let Some(p) = params.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("top-p must be in (0, 1]");
            }
        }
        Ok(Sampler {
            params,
            state: params.seed,
        })
    }

    fn next_f64(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next token from `logits` (one row, `vocab` values).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let greedy = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
                    if v > b.1 {
                        (i, v)
                    } else {
                        b
                    }
                })
                .0 as u32
        };
        let p = self.params;
        if p.temperature <= 0.0 || logits.is_empty() {
            return greedy();
        }
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        // Most likely first; equal logits by id, so the order never depends on the sort.
        idx.sort_unstable_by(|&x, &y| logits[y].total_cmp(&logits[x]).then(x.cmp(&y)));
        if let Some(k) = p.top_k {
            idx.truncate(k);
        }
        let max = logits[idx[0]];
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| (f64::from(logits[i] - max) / f64::from(p.temperature)).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        if let Some(top_p) = p.top_p {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|&q| {
                    acc += q / total;
                    acc >= f64::from(top_p)
                })
                .map_or(probs.len(), |k| k + 1);
            probs.truncate(keep);
            idx.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.next_f64() * total;
        for (i, q) in idx.iter().zip(&probs) {
            r -= q;
            if r <= 0.0 {
                return *i as u32;
            }
        }
        idx[idx.len() - 1] as u32
    }
}

/// Generates up to `max_new` tokens after `prompt` with the key/value cache, calling
/// `on_token` after each one (return `false` to stop early); stops after a token in `stop`
/// (which is included in the output).
///
/// ```no_run
/// use qwen3_quant_model::generation::{generate, Sampler, SamplingParams};
/// let model = qwen3_quant_model::Qwen3Model::load("assets/models/qwen3-micro")?;
/// let mut s = Sampler::new(SamplingParams { temperature: 0.8, top_p: Some(0.95), seed: 7, ..Default::default() })?;
/// let out = generate(&model, &[1, 2, 3], 16, &model.config.eos_token_ids, &mut s, |_| true)?;
/// assert!(out.len() <= 16);
/// # Ok::<(), qwen3_quant_model::ModelError>(())
/// ```
///
/// # Errors
/// An empty prompt, or errors of the forward pass.
pub fn generate(
    model: &Qwen3Model,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(max_new);
    if max_new == 0 {
        return Ok(out);
    }
    let mut cache = model.new_cache();
    let v = model.config.vocab_size;
    let mut logits = model.forward_step(prompt, &mut cache)?;
    loop {
        let next = sampler.sample(&logits[..v]);
        out.push(next);
        if !on_token(next) || out.len() == max_new || stop.contains(&next) {
            return Ok(out);
        }
        logits = model.forward_step(&[next], &mut cache)?;
    }
}

/// Incremental detokenization: feed ids, get the text that became final. Byte-level BPE tokens
/// can end inside a UTF-8 character; such text is held back until it completes.
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    ids: Vec<u32>,
    printed: usize,
}

impl TextStream {
    /// Adds a token and returns the new complete text, if any.
    ///
    /// # Errors
    /// Decoding errors of the tokenizer.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}')
            || text.len() <= self.printed
            || !text.is_char_boundary(self.printed)
        {
            return Ok(None);
        }
        let new = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(Some(new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_seeded_and_respects_top_k_and_top_p() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let best = Sampler::new(SamplingParams::default())
            .unwrap()
            .sample(&logits);
        let order = {
            let mut o: Vec<usize> = (0..50).collect();
            o.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            o
        };
        assert_eq!(best as usize, order[0]);
        let draw = |p: SamplingParams| {
            let mut s = Sampler::new(p).unwrap();
            (0..400).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let p = SamplingParams {
            temperature: 1.0,
            top_k: Some(3),
            seed: 42,
            ..Default::default()
        };
        let a = draw(p);
        assert_eq!(a, draw(p), "same seed, same sample");
        assert_ne!(a, draw(SamplingParams { seed: 43, ..p }));
        assert!(a.iter().all(|&t| order[..3].contains(&(t as usize))));
        assert!(
            order[..3].iter().all(|&t| a.contains(&(t as u32))),
            "all of the top 3 drawn"
        );
        // top-p: the kept set is the smallest prefix reaching p.
        let probs: Vec<f64> = {
            let e: Vec<f64> = order
                .iter()
                .map(|&i| f64::from(logits[i] - logits[order[0]]).exp())
                .collect();
            let t: f64 = e.iter().sum();
            e.iter().map(|v| v / t).collect()
        };
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|q| {
                acc += q;
                acc >= 0.5
            })
            .unwrap()
            + 1;
        let b = draw(SamplingParams {
            temperature: 1.0,
            top_p: Some(0.5),
            seed: 1,
            ..Default::default()
        });
        assert!(b.iter().all(|&t| order[..keep].contains(&(t as usize))));
        assert!(keep < 50 && b.iter().any(|&t| t as usize != order[0]));
        assert!(Sampler::new(SamplingParams {
            top_p: Some(0.0),
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            top_k: Some(0),
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            temperature: f32::NAN,
            ..Default::default()
        })
        .is_err());
    }
}
