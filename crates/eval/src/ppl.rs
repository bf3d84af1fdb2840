//! Perplexity, GPTQ protocol, and the perplexity datasets.
//!
//! **Protocol** (`eval_my/evaluate_.py`, GPTQ `*_eval`): the token ids of the whole text are cut
//! into `n = ⌊tokens / seq_len⌋` non-overlapping windows (the tail is dropped, no BOS is added);
//! window `i` scores its `seq_len − 1` next-token targets; `ppl = exp(mean_i mean_t NLL_{i,t})`.
//! Log-softmax is taken in f32 logits with the max subtracted and the sum of exponentials
//! accumulated in f64; window losses are accumulated in f64.
//!
//! **Sliding window** (extra, [`PplOptions::stride`] = `Some(s)`, `1 ≤ s ≤ seq_len`): windows of
//! `seq_len` tokens start at `0, s, 2s, …`; the last one is cut at the end of the text (so the tail
//! is *not* dropped) and evaluation stops with the first window that reaches the end. The first
//! window scores all its targets; every later window scores only the targets past the previous
//! window's end (its last `s` positions, fewer for the final one) that have context inside the
//! window. For `s < seq_len` every token after the first is scored exactly once, with at least
//! `seq_len − s` tokens of left context; for `s = seq_len` the first token of each window is not
//! scored, as in the GPTQ protocol. `ppl = exp(Σ NLL / #targets)` (token-weighted, as in the
//! Hugging Face perplexity guide), so `stride = seq_len` differs from the GPTQ protocol only by
//! including the tail window and by token weighting.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::c4_windows::C4_PAPER_WINDOWS;
use crate::data::{read_jsonl, read_text, read_token_tensor, str_field};
use crate::{EvalError, LanguageModel, Progress, TextEncoder};

/// Options of [`evaluate_ppl`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PplOptions {
    /// Tokens per window (the paper: 2048; the micro-model reference: 1024).
    pub seq_len: usize,
    /// Evaluate only the first `n` windows (`None`: all).
    pub max_windows: Option<usize>,
    /// Windows per model call.
    pub batch_size: usize,
    /// `None`: GPTQ non-overlapping protocol. `Some(s)`: sliding-window evaluation (module docs).
    pub stride: Option<usize>,
}

qwen3_quant_core::setters!(PplOptions {
    seq_len: usize => with_seq_len,
    max_windows: Option<usize> => with_max_windows,
    batch_size: usize => with_batch_size,
    stride: Option<usize> => with_stride,
});

impl Default for PplOptions {
    fn default() -> Self {
        PplOptions {
            seq_len: 2048,
            max_windows: None,
            batch_size: 1,
            stride: None,
        }
    }
}

/// One perplexity measurement; serialises to exactly the `eval` JSON of the CLI contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PplResult {
    /// Perplexity.
    pub ppl: f64,
    /// Windows evaluated.
    pub windows: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Tokens fed to the model (Σ window lengths; `windows × seq_len` for the GPTQ protocol).
    pub tokens: usize,
    /// Wall time of the evaluation (model calls and log-softmax), seconds.
    pub seconds: f64,
    /// `tokens / seconds`.
    pub tokens_per_s: f64,
}

/// `(start, end, first_scored_target)` of each window: the window is `ids[start..end]` and the
/// targets `ids[t]` for `t ∈ [first_scored_target, end)` are scored.
pub fn plan_windows(
    n_tokens: usize,
    opts: &PplOptions,
) -> Result<Vec<(usize, usize, usize)>, EvalError> {
    let l = opts.seq_len;
    if l < 2 {
        return Err(EvalError::InvalidInput(format!(
            "seq_len must be at least 2, got {l}"
        )));
    }
    let mut out = Vec::new();
    match opts.stride {
        None => {
            let n = n_tokens / l;
            for i in 0..n {
                out.push((i * l, (i + 1) * l, i * l + 1));
            }
        }
        Some(s) => {
            if s == 0 || s > l {
                return Err(EvalError::InvalidInput(format!(
                    "stride must be in 1..={l}, got {s}"
                )));
            }
            let mut prev_end = 0usize;
            let mut begin = 0usize;
            while begin + 1 < n_tokens {
                let end = (begin + l).min(n_tokens);
                let first = prev_end.max(begin + 1);
                if first < end {
                    out.push((begin, end, first));
                }
                prev_end = end;
                if end == n_tokens {
                    break;
                }
                begin += s;
            }
        }
    }
    if let Some(m) = opts.max_windows {
        out.truncate(m);
    }
    if out.is_empty() {
        return Err(EvalError::InvalidInput(format!(
            "{n_tokens} tokens are not enough for one window of {l}"
        )));
    }
    Ok(out)
}

/// Perplexity of `ids` under `model` (see the module docs for the protocol).
pub fn evaluate_ppl(
    model: &dyn LanguageModel,
    ids: &[u32],
    opts: &PplOptions,
    progress: Progress,
) -> Result<PplResult, EvalError> {
    let plan = plan_windows(ids.len(), opts)?;
    let batch = opts.batch_size.max(1);
    let start = Instant::now();
    let pb = progress.bar(plan.len() as u64, "ppl");
    // Per window: (sum of NLL over scored targets, number of scored targets).
    let mut per_window: Vec<(f64, usize)> = Vec::with_capacity(plan.len());
    let mut tokens = 0usize;
    for chunk in plan.chunks(batch) {
        let seqs: Vec<&[u32]> = chunk.iter().map(|&(b, e, _)| &ids[b..e]).collect();
        let lps = model.target_logprobs(&seqs)?;
        if lps.len() != seqs.len() {
            return Err(EvalError::Model(format!(
                "{} results for {} windows",
                lps.len(),
                seqs.len()
            )));
        }
        let sums: Vec<(f64, usize)> = chunk
            .par_iter()
            .zip(lps.par_iter())
            .map(|(&(b, e, first), lp)| {
                if lp.len() != e - b - 1 {
                    return Err(EvalError::Model(format!(
                        "{} log-probs for a window of {}",
                        lp.len(),
                        e - b
                    )));
                }
                // lp[t - b - 1] = log p(ids[t] | ids[b..t]).
                let s: f64 = lp[first - b - 1..].iter().map(|&x| -(x as f64)).sum();
                Ok((s, e - first))
            })
            .collect::<Result<_, EvalError>>()?;
        tokens += seqs.iter().map(|s| s.len()).sum::<usize>();
        per_window.extend(sums);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let mean_nll = match opts.stride {
        None => {
            per_window.iter().map(|&(s, n)| s / n as f64).sum::<f64>() / per_window.len() as f64
        }
        Some(_) => {
            let (s, n) = per_window
                .iter()
                .fold((0.0, 0usize), |(a, b), &(s, n)| (a + s, b + n));
            s / n as f64
        }
    };
    Ok(PplResult {
        ppl: mean_nll.exp(),
        windows: plan.len(),
        seq_len: opts.seq_len,
        tokens,
        seconds,
        tokens_per_s: if seconds > 0.0 {
            tokens as f64 / seconds
        } else {
            0.0
        },
    })
}

/// A perplexity corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dataset {
    /// Tensor `valid` of `docs/docs.tokens.safetensors` (micro-model documentation text), ids as shipped.
    Docs,
    /// WikiText-2 raw test split in the GPTQ form: `"\n\n".join(rows)` of the Hugging Face rows
    /// (`wikitext2/wikitext-2-raw-v1.test.jsonl`, field `text`).
    WikiText2,
    /// The original `wikitext2/wiki.test.raw` file as is.
    WikiText2Raw,
    /// The bundled C4 validation sample (`c4/*.jsonl.gz`, 2,000 documents) in the classic GPTQ C4 form:
    /// the first 1,100 documents joined with `" "` and tokenized as one text. GPTQ then keeps the first
    /// `256 × seq_len` tokens: evaluate with `max_windows = Some(256)` ([`Dataset::default_max_windows`]).
    /// Not the paper's C4 set (that is [`Dataset::C4Paper`]); comparable only between runs of this tool.
    C4Sample,
    /// The paper's C4 set: the 256 fixed `(doc, offset)` windows of [`C4_PAPER_WINDOWS`] into the
    /// given validation shard (`en/c4-validation.00000-of-00008.json[.gz]`, JSON lines with `text`).
    /// Each window is `encode(doc)[offset..offset + 2048]`; windows shorter than 2048 tokens under this
    /// tokenizer are skipped and listed in [`LoadedDataset::warnings`]. Evaluate with `seq_len = 2048`.
    C4Paper {
        /// The validation shard.
        path: PathBuf,
    },
    /// A UTF-8 text file, tokenized as one text.
    TextFile(PathBuf),
    /// A JSON-lines file (optionally gzipped): `"\n\n".join` of the string field `field` of every row.
    JsonlField {
        /// The file.
        path: PathBuf,
        /// The field holding the text.
        field: String,
    },
}

/// Token ids of a dataset, ready for [`evaluate_ppl`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedDataset {
    /// The dataset's name ([`Dataset::name`]).
    pub name: String,
    /// Token ids.
    pub ids: Vec<u32>,
    /// Anything the caller should tell the user (e.g. skipped short C4 windows).
    pub warnings: Vec<String>,
}

impl Dataset {
    /// Parses a CLI name: `docs`, `wikitext2`, `wikitext2-raw`, `c4`; anything else is a text file path.
    pub fn parse(name: &str) -> Dataset {
        match name {
            "docs" => Dataset::Docs,
            "wikitext2" | "wiki2" => Dataset::WikiText2,
            "wikitext2-raw" => Dataset::WikiText2Raw,
            "c4" => Dataset::C4Sample,
            p => Dataset::TextFile(PathBuf::from(p)),
        }
    }

    /// The key used in reports (`docs`, `wikitext2`, `wikitext2-raw`, `c4`, `c4-paper`, or the path).
    pub fn name(&self) -> String {
        match self {
            Dataset::Docs => "docs".into(),
            Dataset::WikiText2 => "wikitext2".into(),
            Dataset::WikiText2Raw => "wikitext2-raw".into(),
            Dataset::C4Sample => "c4".into(),
            Dataset::C4Paper { .. } => "c4-paper".into(),
            Dataset::TextFile(p) => p.display().to_string(),
            Dataset::JsonlField { path, field } => format!("{}:{field}", path.display()),
        }
    }

    /// Window cap implied by the dataset's protocol (256 for the C4 sets), `None` otherwise.
    pub fn default_max_windows(&self) -> Option<usize> {
        match self {
            Dataset::C4Sample | Dataset::C4Paper { .. } => Some(256),
            _ => None,
        }
    }

    /// Whether loading needs a [`TextEncoder`] (everything but [`Dataset::Docs`]).
    pub fn needs_encoder(&self) -> bool {
        !matches!(self, Dataset::Docs)
    }
}

/// Number of C4 validation documents the classic GPTQ C4 evaluation joins.
pub const GPTQ_C4_DOCS: usize = 1100;
/// Window length of the paper's C4 windows.
pub const C4_PAPER_SEQ_LEN: usize = 2048;

/// The text a dataset tokenizes to (`None` for [`Dataset::Docs`] and [`Dataset::C4Paper`], which are not one text).
pub fn dataset_text(dataset: &Dataset, data_dir: &Path) -> Result<Option<String>, EvalError> {
    Ok(match dataset {
        Dataset::Docs | Dataset::C4Paper { .. } => None,
        Dataset::WikiText2 => Some(join_field(
            &data_dir.join("wikitext2/wikitext-2-raw-v1.test.jsonl"),
            "text",
            "\n\n",
            None,
        )?),
        Dataset::WikiText2Raw => Some(read_text(&data_dir.join("wikitext2/wiki.test.raw"))?),
        Dataset::C4Sample => Some(join_field(
            &c4_sample_path(data_dir)?,
            "text",
            " ",
            Some(GPTQ_C4_DOCS),
        )?),
        Dataset::TextFile(p) => Some(read_text(p)?),
        Dataset::JsonlField { path, field } => Some(join_field(path, field, "\n\n", None)?),
    })
}

fn c4_sample_path(data_dir: &Path) -> Result<PathBuf, EvalError> {
    let dir = data_dir.join("c4");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| EvalError::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.to_string_lossy().ends_with(".jsonl.gz") || p.to_string_lossy().ends_with(".jsonl")
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .ok_or_else(|| EvalError::parse(&dir, "no C4 *.jsonl[.gz] sample"))
}

fn join_field(
    path: &Path,
    field: &str,
    sep: &str,
    max_rows: Option<usize>,
) -> Result<String, EvalError> {
    let rows = read_jsonl(path)?;
    let n = max_rows.unwrap_or(rows.len()).min(rows.len());
    let parts = rows[..n]
        .iter()
        .map(|r| str_field(r, field, path))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(parts.join(sep))
}

/// Loads a dataset's token ids. `data_dir` is the bundled data folder (`<repo>/assets/data`, see
/// [`crate::default_data_dir`]); `encoder` is required for everything but [`Dataset::Docs`].
pub fn load_dataset(
    dataset: &Dataset,
    data_dir: &Path,
    encoder: Option<&dyn TextEncoder>,
) -> Result<LoadedDataset, EvalError> {
    let name = dataset.name();
    let need = || {
        encoder.ok_or_else(|| EvalError::InvalidInput(format!("dataset {name} needs a tokenizer")))
    };
    let mut warnings = Vec::new();
    let ids = match dataset {
        Dataset::Docs => {
            read_token_tensor(&data_dir.join("docs/docs.tokens.safetensors"), "valid")?
        }
        Dataset::C4Paper { path } => {
            let enc = need()?;
            let rows = read_jsonl(path)?;
            let (ids, w) = c4_paper_windows(&rows, path, enc)?;
            warnings = w;
            ids
        }
        _ => {
            let enc = need()?;
            let text = dataset_text(dataset, data_dir)?.unwrap_or_default();
            enc.encode(&text)?
        }
    };
    Ok(LoadedDataset {
        name,
        ids,
        warnings,
    })
}

/// Builds the paper's C4 windows from the shard's rows: the concatenation of the full-length
/// windows, plus a warning per skipped (short or missing) window.
pub fn c4_paper_windows(
    rows: &[serde_json::Value],
    path: &Path,
    encoder: &dyn TextEncoder,
) -> Result<(Vec<u32>, Vec<String>), EvalError> {
    let mut cache: std::collections::HashMap<usize, Vec<u32>> = std::collections::HashMap::new();
    let mut ids = Vec::with_capacity(C4_PAPER_WINDOWS.len() * C4_PAPER_SEQ_LEN);
    let mut warnings = Vec::new();
    for (i, &(doc, off)) in C4_PAPER_WINDOWS.iter().enumerate() {
        let Some(row) = rows.get(doc) else {
            warnings.push(format!(
                "c4 window {i}: document {doc} not in shard of {} docs; skipped",
                rows.len()
            ));
            continue;
        };
        let toks = match cache.entry(doc) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(encoder.encode(str_field(row, "text", path)?)?)
            }
        };
        if off + C4_PAPER_SEQ_LEN > toks.len() {
            warnings.push(format!(
                "c4 window {i}: document {doc} has {} tokens, window [{off}, {}) is short; skipped",
                toks.len(),
                off + C4_PAPER_SEQ_LEN
            ));
            continue;
        }
        ids.extend_from_slice(&toks[off..off + C4_PAPER_SEQ_LEN]);
    }
    Ok((ids, warnings))
}
