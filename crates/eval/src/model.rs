//! The model abstraction the evaluator scores with, and numerically stable log-softmax helpers.

use crate::EvalError;

/// A causal language model that maps token ids to next-token logits.
///
/// Only [`LanguageModel::vocab_size`] and [`LanguageModel::logits`] are required. The evaluator
/// itself calls [`LanguageModel::target_logprobs`] (perplexity, zero-shot tasks) and
/// [`LanguageModel::last_logits`] (MMLU); their default implementations go through `logits`, and
/// an implementation may override them to avoid materialising `len × vocab` logits per sequence
/// (for Qwen3's 151,936-token vocabulary that is 1.2 GB per 2,048-token sequence).
pub trait LanguageModel: Send + Sync {
    /// Size of the output vocabulary (length of one logits row).
    fn vocab_size(&self) -> usize;

    /// Logits for every position of each sequence (sequences may differ in length):
    /// `result[i]` has `seqs[i].len() * vocab_size()` f32 values, row-major `[pos, vocab]`.
    fn logits(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError>;

    /// For each sequence `s` of length `n ≥ 1`: the model is run on `s[..n-1]` and
    /// `result[i][t] = log p(s[t+1] | s[..=t])` for `t < n-1` (so `n-1` values; empty for `n = 1`).
    fn target_logprobs(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
        let inputs: Vec<&[u32]> = seqs
            .iter()
            .map(|s| &s[..s.len().saturating_sub(1)])
            .collect();
        let nonempty: Vec<&[u32]> = inputs.iter().copied().filter(|s| !s.is_empty()).collect();
        let mut all = if nonempty.is_empty() {
            Vec::new()
        } else {
            self.logits(&nonempty)?
        };
        let vocab = self.vocab_size();
        let mut out = Vec::with_capacity(seqs.len());
        let mut it = all.drain(..);
        for (seq, inp) in seqs.iter().zip(&inputs) {
            if inp.is_empty() {
                out.push(Vec::new());
                continue;
            }
            let logits = it
                .next()
                .ok_or_else(|| EvalError::Model("too few logits rows returned".into()))?;
            check_len(&logits, inp.len(), vocab)?;
            let lp = (0..inp.len())
                .map(|t| token_logprob(&logits[t * vocab..(t + 1) * vocab], seq[t + 1] as usize))
                .collect::<Result<Vec<f32>, _>>()?;
            out.push(lp);
        }
        Ok(out)
    }

    /// Logits of the last position of each (non-empty) sequence: `result[i].len() == vocab_size()`.
    fn last_logits(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
        let vocab = self.vocab_size();
        let all = self.logits(seqs)?;
        if all.len() != seqs.len() {
            return Err(EvalError::Model(format!(
                "{} logits rows for {} sequences",
                all.len(),
                seqs.len()
            )));
        }
        all.into_iter()
            .zip(seqs)
            .map(|(l, s)| {
                check_len(&l, s.len(), vocab)?;
                if s.is_empty() {
                    return Err(EvalError::InvalidInput("empty sequence".into()));
                }
                Ok(l[(s.len() - 1) * vocab..].to_vec())
            })
            .collect()
    }
}

/// Turns text into token ids, with no special tokens added (Qwen adds no BOS).
pub trait TextEncoder: Send + Sync {
    /// Token ids of `text`.
    fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError>;
}

fn check_len(logits: &[f32], len: usize, vocab: usize) -> Result<(), EvalError> {
    if logits.len() != len * vocab {
        return Err(EvalError::Model(format!(
            "logits have {} values, expected {len} positions x {vocab}",
            logits.len()
        )));
    }
    Ok(())
}

/// `log(Σ exp(row))`, stable: the max is subtracted and the sum of exponentials accumulated in f64.
/// Returns `+inf`/NaN only if the row itself holds `+inf`/NaN.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max as f64;
    }
    let m = max as f64;
    let s: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
    m + s.ln()
}

/// `log_softmax(row)[target]`, computed stably (see [`log_sum_exp`]).
pub fn token_logprob(row: &[f32], target: usize) -> Result<f32, EvalError> {
    let x = *row.get(target).ok_or_else(|| {
        EvalError::InvalidInput(format!(
            "token id {target} outside vocabulary of {}",
            row.len()
        ))
    })?;
    Ok((x as f64 - log_sum_exp(row)) as f32)
}
