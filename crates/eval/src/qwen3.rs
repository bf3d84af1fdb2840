//! [`LanguageModel`] and [`TextEncoder`] for the Qwen3 model and tokenizer of `qwen3-quant-model`.
//!
//! Sequences of equal length are batched into one forward pass. Log-probabilities are computed from
//! the final hidden states by [`Qwen3Model::target_logprobs`] (`lm_head` and the log-softmax fused
//! over cache-sized blocks of rows), so that a 150k vocabulary never needs a `[tokens, vocab]`
//! buffer for a whole batch.

use qwen3_quant_model::{Qwen3Model, Tokenizer};

use crate::model::{LanguageModel, TextEncoder};
use crate::EvalError;

fn model_err(e: qwen3_quant_model::ModelError) -> EvalError {
    EvalError::Model(e.to_string())
}

/// Groups sequence indices by length (keeping the first-seen order of lengths), so each group is
/// one batched forward.
fn by_length(seqs: &[&[u32]]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        match groups.iter_mut().find(|(l, _)| *l == s.len()) {
            Some((_, g)) => g.push(i),
            None => groups.push((s.len(), vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Final hidden states of a group of equal-length sequences, `[group·len, hidden]`.
fn hidden_of_group(
    model: &Qwen3Model,
    seqs: &[&[u32]],
    group: &[usize],
) -> Result<Vec<f32>, EvalError> {
    let len = seqs[group[0]].len();
    let mut ids = Vec::with_capacity(group.len() * len);
    for &i in group {
        ids.extend_from_slice(seqs[i]);
    }
    model
        .forward_hidden(&ids, group.len(), len)
        .map_err(model_err)
}

impl LanguageModel for Qwen3Model {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn logits(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); seqs.len()];
        let v = self.config.vocab_size;
        for group in by_length(seqs) {
            let len = seqs[group[0]].len();
            if len == 0 {
                continue;
            }
            let h = hidden_of_group(self, seqs, &group)?;
            let logits = self.lm_head(&h).map_err(model_err)?;
            for (j, &i) in group.iter().enumerate() {
                out[i] = logits[j * len * v..(j + 1) * len * v].to_vec();
            }
        }
        Ok(out)
    }

    fn target_logprobs(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
        let inputs: Vec<&[u32]> = seqs
            .iter()
            .map(|s| &s[..s.len().saturating_sub(1)])
            .collect();
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); seqs.len()];
        let v = self.config.vocab_size;
        for group in by_length(&inputs) {
            let len = inputs[group[0]].len();
            if len == 0 {
                continue;
            }
            let h = hidden_of_group(self, &inputs, &group)?;
            // Targets of every row of the group, in row order.
            let targets: Vec<u32> = group
                .iter()
                .flat_map(|&i| seqs[i][1..].iter().copied())
                .collect();
            if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
                return Err(EvalError::InvalidInput(format!(
                    "target token {bad} outside the vocabulary of {v}"
                )));
            }
            // lm_head and the log-softmax fused block by block (no [rows, vocab] logits).
            let lps = self.target_logprobs(&h, &targets).map_err(model_err)?;
            for (j, &i) in group.iter().enumerate() {
                out[i] = lps[j * len..(j + 1) * len].to_vec();
            }
        }
        Ok(out)
    }

    fn last_logits(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); seqs.len()];
        let hd = self.config.hidden_size;
        for group in by_length(seqs) {
            let len = seqs[group[0]].len();
            if len == 0 {
                return Err(EvalError::InvalidInput("empty sequence".into()));
            }
            let h = hidden_of_group(self, seqs, &group)?;
            let last: Vec<f32> = (0..group.len())
                .flat_map(|j| {
                    h[((j + 1) * len - 1) * hd..(j + 1) * len * hd]
                        .iter()
                        .copied()
                })
                .collect();
            let logits = self.lm_head(&last).map_err(model_err)?;
            let v = self.config.vocab_size;
            for (j, &i) in group.iter().enumerate() {
                out[i] = logits[j * v..(j + 1) * v].to_vec();
            }
        }
        Ok(out)
    }
}

impl TextEncoder for Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        Tokenizer::encode(self, text).map_err(|e| EvalError::Tokenizer(e.to_string()))
    }
}
