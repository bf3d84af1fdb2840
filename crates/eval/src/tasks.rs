//! Zero-shot multiple-choice tasks, compatible with lm-evaluation-harness 0.4.x.
//!
//! Every document becomes one log-likelihood request per choice, `(context, continuation)`,
//! built as lm-eval's task YAMLs do (`doc_to_text`, `doc_to_choice`, `target_delimiter = " "`):
//!
//! | task | context | continuations | gold |
//! |---|---|---|---|
//! | `piqa` | `"Question: {goal}\nAnswer:"` | `" " + sol1`, `" " + sol2` | `label` |
//! | `arc_easy`, `arc_challenge` | `"Question: {question}\nAnswer:"` | `" " + choices.text[i]` | index of `answerKey` in `choices.label` |
//! | `hellaswag` | `preprocess(activity_label + ": " + ctx_a + " " + capitalize(ctx_b))` | `" " + preprocess(ending)` | `int(label)` |
//! | `winogrande` | `sentence[..blank] + option_i` (one context per option) | `" " + strip(sentence[blank+1..])` | `answer − 1` |
//! | `boolq` | `"{passage}\nQuestion: {question}?\nAnswer:"` | `" no"`, `" yes"` | `answer` |
//! | `openbookqa` | `question_stem` | `" " + choices.text[i]` | index of `answerKey.lstrip()` |
//!
//! HellaSwag's `preprocess` strips, replaces `" [title]"` by `". "`, removes `\[.*?\]` (non-greedy,
//! not across newlines) and then replaces `"  "` by `" "` once (Python `str.replace`, non-overlapping);
//! `capitalize` is Python's (first character upper-cased, the rest lower-cased).
//!
//! **Scoring** (lm-eval `HFLM`): trailing whitespace of the context moves to the front of the
//! continuation; `whole = encode(context + continuation)`, `context_enc = encode(context)`,
//! `continuation_enc = whole[len(context_enc)..]`; an empty context is replaced by the
//! end-of-text token. The model input is `(context_enc + continuation_enc)[-(max_length+1)..]`
//! minus its last token, and the request's log-likelihood is the sum of the continuation tokens'
//! log-probabilities. `acc` = argmax of the sums equals gold (first maximum on ties, as
//! `np.argmax`); `acc_norm` divides each sum by the choice's length in characters (lm-eval's
//! `len(choice)`, the choice text without the delimiter; bytes for ASCII text). Stderr is
//! `sqrt(Σ(x−mean)²/(n−1)/n)` (lm-eval's `mean_stderr`).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{py_isspace, py_strip, read_jsonl, str_field};
use crate::{EvalError, LanguageModel, Progress, TextEncoder};

/// A zero-shot multiple-choice task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Task {
    /// PIQA, validation split.
    Piqa,
    /// ARC-Easy, test split.
    ArcEasy,
    /// ARC-Challenge, test split.
    ArcChallenge,
    /// HellaSwag, validation split.
    Hellaswag,
    /// WinoGrande (xl), validation split.
    Winogrande,
    /// BoolQ, validation split.
    Boolq,
    /// OpenBookQA (main), validation split (the bundled one; lm-eval scores test).
    Openbookqa,
}

impl Task {
    /// All tasks, in the paper's order (OpenBookQA last, an extra).
    pub const ALL: [Task; 7] = [
        Task::Piqa,
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::Hellaswag,
        Task::Winogrande,
        Task::Boolq,
        Task::Openbookqa,
    ];

    /// lm-eval's task name (`piqa`, `arc_easy`, …).
    pub fn name(self) -> &'static str {
        match self {
            Task::Piqa => "piqa",
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::Hellaswag => "hellaswag",
            Task::Winogrande => "winogrande",
            Task::Boolq => "boolq",
            Task::Openbookqa => "openbookqa",
        }
    }

    /// Parses an lm-eval task name.
    pub fn parse(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether lm-eval reports `acc_norm` for the task (not for WinoGrande and BoolQ).
    pub fn has_acc_norm(self) -> bool {
        !matches!(self, Task::Winogrande | Task::Boolq)
    }

    /// The bundled data file, relative to the data folder (`<repo>/assets/data`).
    pub fn data_file(self) -> &'static str {
        match self {
            Task::Piqa => "tasks/piqa/validation.jsonl",
            Task::ArcEasy => "tasks/arc_easy/test.from-oe-eval.jsonl",
            Task::ArcChallenge => "tasks/arc_challenge/test.from-oe-eval.jsonl",
            Task::Hellaswag => "tasks/hellaswag/validation.jsonl",
            Task::Winogrande => "tasks/winogrande/winogrande_xl.validation.jsonl",
            Task::Boolq => "tasks/boolq/validation.jsonl",
            Task::Openbookqa => "tasks/openbookqa/validation.jsonl",
        }
    }
}

/// One log-likelihood request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Conditioning text.
    pub context: String,
    /// Scored text (starts with the target delimiter `" "`).
    pub continuation: String,
}

/// One document: its requests (one per choice), gold index and choice lengths for `acc_norm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McDoc {
    /// One request per choice.
    pub requests: Vec<Request>,
    /// Index of the correct choice.
    pub gold: usize,
    /// `len(choice)` in characters for each choice (lm-eval's `acc_norm` denominator).
    pub choice_lens: Vec<usize>,
}

/// Python's `str.capitalize()`: the first character in title case, the rest lower-cased.
/// Title case is approximated as upper case, with the four Latin digraphs (`ǅ ǈ ǋ ǲ`) and
/// multi-character upper cases (`ß` → `Ss`, `ﬁ` → `Fi`) handled as Python does.
pub fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    let Some(c) = chars.next() else {
        return String::new();
    };
    let mut out = match c {
        'Ǆ' | 'ǅ' | 'ǆ' => "ǅ".to_string(),
        'Ǉ' | 'ǈ' | 'ǉ' => "ǈ".to_string(),
        'Ǌ' | 'ǋ' | 'ǌ' => "ǋ".to_string(),
        'Ǳ' | 'ǲ' | 'ǳ' => "ǲ".to_string(),
        _ => {
            let mut up = c.to_uppercase();
            let first = up.next().unwrap_or(c);
            std::iter::once(first)
                .chain(up.flat_map(char::to_lowercase))
                .collect()
        }
    };
    out.extend(chars.flat_map(char::to_lowercase));
    out
}

/// lm-eval's HellaSwag `preprocess`.
pub fn hellaswag_preprocess(text: &str) -> String {
    let text = py_strip(text).replace(" [title]", ". ");
    // re.sub(r"\[.*?\]", "", text): '.' does not match '\n'.
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let close = after.find(']');
        let newline = after.find('\n');
        match close {
            Some(j) if newline.is_none_or(|n| n > j) => rest = &after[j + 1..],
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

fn get<'a>(
    row: &'a serde_json::Value,
    field: &str,
    path: &Path,
) -> Result<&'a serde_json::Value, EvalError> {
    row.get(field)
        .ok_or_else(|| EvalError::parse(path, format!("missing field {field:?}")))
}

fn str_list(v: &serde_json::Value, what: &str, path: &Path) -> Result<Vec<String>, EvalError> {
    v.as_array()
        .and_then(|a| {
            a.iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| EvalError::parse(path, format!("{what} is not a list of strings")))
}

fn int_like(v: &serde_json::Value, what: &str, path: &Path) -> Result<usize, EvalError> {
    v.as_u64()
        .map(|x| x as usize)
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| EvalError::parse(path, format!("{what} is not an integer")))
}

fn choice_doc(context: String, choices: Vec<String>, gold: usize) -> McDoc {
    McDoc {
        requests: choices
            .iter()
            .map(|c| Request {
                context: context.clone(),
                continuation: format!(" {c}"),
            })
            .collect(),
        choice_lens: choices.iter().map(|c| c.chars().count()).collect(),
        gold,
    }
}

/// Builds the lm-eval document of one raw dataset row.
pub fn build_doc(task: Task, row: &serde_json::Value, path: &Path) -> Result<McDoc, EvalError> {
    let s = |f: &str| str_field(row, f, path);
    let doc = match task {
        Task::Piqa => choice_doc(
            format!("Question: {}\nAnswer:", s("goal")?),
            vec![s("sol1")?.to_string(), s("sol2")?.to_string()],
            int_like(get(row, "label", path)?, "label", path)?,
        ),
        Task::ArcEasy | Task::ArcChallenge => {
            let choices = get(row, "choices", path)?;
            let texts = str_list(get(choices, "text", path)?, "choices.text", path)?;
            let labels = str_list(get(choices, "label", path)?, "choices.label", path)?;
            let key = s("answerKey")?;
            let gold = labels.iter().position(|l| l == key).ok_or_else(|| {
                EvalError::parse(path, format!("answerKey {key:?} not in labels"))
            })?;
            choice_doc(
                format!("Question: {}\nAnswer:", s("question")?),
                texts,
                gold,
            )
        }
        Task::Openbookqa => {
            let choices = get(row, "choices", path)?;
            let texts = str_list(get(choices, "text", path)?, "choices.text", path)?;
            let labels = str_list(get(choices, "label", path)?, "choices.label", path)?;
            let key = s("answerKey")?.trim_start_matches(py_isspace);
            let gold = labels.iter().position(|l| l == key).ok_or_else(|| {
                EvalError::parse(path, format!("answerKey {key:?} not in labels"))
            })?;
            choice_doc(s("question_stem")?.to_string(), texts, gold)
        }
        Task::Hellaswag => {
            let ctx = format!("{} {}", s("ctx_a")?, py_capitalize(s("ctx_b")?));
            let query = hellaswag_preprocess(&format!("{}: {ctx}", s("activity_label")?));
            let endings = str_list(get(row, "endings", path)?, "endings", path)?;
            let choices = endings.iter().map(|e| hellaswag_preprocess(e)).collect();
            choice_doc(
                query,
                choices,
                int_like(get(row, "label", path)?, "label", path)?,
            )
        }
        Task::Boolq => {
            let gold = get(row, "answer", path)?
                .as_bool()
                .ok_or_else(|| EvalError::parse(path, "answer is not a boolean"))?
                as usize;
            choice_doc(
                format!("{}\nQuestion: {}?\nAnswer:", s("passage")?, s("question")?),
                vec!["no".into(), "yes".into()],
                gold,
            )
        }
        Task::Winogrande => {
            let sentence = s("sentence")?;
            let idx = sentence
                .find('_')
                .ok_or_else(|| EvalError::parse(path, "sentence has no blank '_'"))?;
            let target = format!(" {}", py_strip(&sentence[idx + 1..]));
            let options = [s("option1")?, s("option2")?];
            let gold = match s("answer")? {
                "1" => 0,
                "2" => 1,
                a => {
                    return Err(EvalError::parse(
                        path,
                        format!("answer {a:?} is not \"1\" or \"2\""),
                    ))
                }
            };
            McDoc {
                requests: options
                    .iter()
                    .map(|o| Request {
                        context: format!("{}{o}", &sentence[..idx]),
                        continuation: target.clone(),
                    })
                    .collect(),
                // lm-eval's choices are the contexts here; acc_norm is not reported for WinoGrande.
                choice_lens: options
                    .iter()
                    .map(|o| sentence[..idx].chars().count() + o.chars().count())
                    .collect(),
                gold,
            }
        }
    };
    if doc.gold >= doc.requests.len() {
        return Err(EvalError::parse(
            path,
            format!(
                "gold index {} out of {} choices",
                doc.gold,
                doc.requests.len()
            ),
        ));
    }
    Ok(doc)
}

/// Loads the first `limit` documents (all with `None`) of a task from a data file.
pub fn load_task_file(
    task: Task,
    path: &Path,
    limit: Option<usize>,
) -> Result<Vec<McDoc>, EvalError> {
    let rows = read_jsonl(path)?;
    let n = limit.unwrap_or(rows.len()).min(rows.len());
    rows[..n].iter().map(|r| build_doc(task, r, path)).collect()
}

/// Loads a task from the bundled data folder (see [`Task::data_file`]).
pub fn load_task(
    task: Task,
    data_dir: &Path,
    limit: Option<usize>,
) -> Result<Vec<McDoc>, EvalError> {
    let path: PathBuf = data_dir.join(task.data_file());
    load_task_file(task, &path, limit)
}

/// lm-eval `HFLM._encode_pair`: `(context_enc, continuation_enc)`.
pub fn encode_pair(
    encoder: &dyn TextEncoder,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>), EvalError> {
    let trimmed = context.trim_end_matches(py_isspace);
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed.to_string(),
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context.to_string(), continuation.to_string())
    };
    let whole = encoder.encode(&format!("{context}{continuation}"))?;
    let ctx = encoder.encode(&context)?;
    let cont = whole.get(ctx.len()..).unwrap_or(&[]).to_vec();
    Ok((ctx, cont))
}

/// Options of [`run_task`] / [`score_docs`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskOptions {
    /// Score the first `K` documents only (lm-eval `--limit K`).
    pub limit: Option<usize>,
    /// Requests per model call.
    pub batch_size: usize,
    /// Model context length: inputs are left-truncated to it (lm-eval `max_length`).
    pub max_length: usize,
    /// Token standing in for an empty context (lm-eval uses the tokenizer's EOT token).
    pub eot_token_id: Option<u32>,
}

qwen3_quant_core::setters!(TaskOptions {
    limit: Option<usize> => with_limit,
    batch_size: usize => with_batch_size,
    max_length: usize => with_max_length,
    eot_token_id: Option<u32> => with_eot_token_id,
});

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            limit: None,
            batch_size: 16,
            max_length: 2048,
            eot_token_id: None,
        }
    }
}

/// Per-document outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocScore {
    /// Log-likelihood of each choice's continuation.
    pub loglikelihoods: Vec<f64>,
    /// Gold index.
    pub gold: usize,
    /// `argmax(loglikelihoods)`.
    pub pred: usize,
    /// `argmax(loglikelihoods / choice_lens)`.
    pub pred_norm: usize,
}

/// Aggregated metrics of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Task name.
    pub task: String,
    /// Accuracy.
    pub acc: f64,
    /// Standard error of `acc`.
    pub acc_stderr: f64,
    /// Length-normalised accuracy (`None` where lm-eval does not report it).
    pub acc_norm: Option<f64>,
    /// Standard error of `acc_norm`.
    pub acc_norm_stderr: Option<f64>,
    /// Documents scored.
    pub n: usize,
    /// Per-document scores.
    pub docs: Vec<DocScore>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// First index of the maximum (NaN never wins), as `np.argmax` on finite values.
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || xs[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best
}

/// Mean and lm-eval's `mean_stderr` (`sample_stddev / sqrt(n)`; NaN for `n < 2`).
pub fn mean_and_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Scores a document from its choices' log-likelihoods.
pub fn score_doc(doc: &McDoc, loglikelihoods: Vec<f64>) -> DocScore {
    let norm: Vec<f64> = loglikelihoods
        .iter()
        .zip(&doc.choice_lens)
        .map(|(l, &n)| l / n as f64)
        .collect();
    DocScore {
        pred: argmax(&loglikelihoods),
        pred_norm: argmax(&norm),
        gold: doc.gold,
        loglikelihoods,
    }
}

/// Aggregates per-document scores into a [`TaskResult`].
pub fn aggregate(task: &str, with_norm: bool, docs: Vec<DocScore>, seconds: f64) -> TaskResult {
    let acc: Vec<f64> = docs
        .iter()
        .map(|d| (d.pred == d.gold) as u8 as f64)
        .collect();
    let accn: Vec<f64> = docs
        .iter()
        .map(|d| (d.pred_norm == d.gold) as u8 as f64)
        .collect();
    let (a, ase) = mean_and_stderr(&acc);
    let (an, anse) = mean_and_stderr(&accn);
    TaskResult {
        task: task.to_string(),
        acc: a,
        acc_stderr: ase,
        acc_norm: with_norm.then_some(an),
        acc_norm_stderr: with_norm.then_some(anse),
        n: docs.len(),
        docs,
        seconds,
    }
}

/// Log-likelihood of each request (sum of continuation token log-probs), batched.
pub fn loglikelihoods(
    model: &dyn LanguageModel,
    encoder: &dyn TextEncoder,
    requests: &[&Request],
    opts: &TaskOptions,
    progress: Progress,
) -> Result<Vec<f64>, EvalError> {
    // (sequence fed to target_logprobs, number of continuation tokens)
    let encoded: Vec<(Vec<u32>, usize)> = requests
        .par_iter()
        .map(|r| {
            let (mut ctx, cont) = encode_pair(encoder, &r.context, &r.continuation)?;
            if ctx.is_empty() {
                let eot = opts.eot_token_id.ok_or_else(|| {
                    EvalError::InvalidInput("empty context and no eot_token_id configured".into())
                })?;
                ctx = vec![eot];
            }
            let n_cont = cont.len();
            ctx.extend(cont);
            let keep = opts.max_length + 1;
            if ctx.len() > keep {
                ctx.drain(..ctx.len() - keep);
            }
            Ok((ctx, n_cont))
        })
        .collect::<Result<_, EvalError>>()?;
    // Longest first, as lm-eval orders its batches; results go back to request order.
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].0.len()));
    let mut out = vec![0.0f64; encoded.len()];
    let pb = progress.bar(encoded.len() as u64, "loglik");
    for chunk in order.chunks(opts.batch_size.max(1)) {
        let seqs: Vec<&[u32]> = chunk.iter().map(|&i| encoded[i].0.as_slice()).collect();
        let lps = model.target_logprobs(&seqs)?;
        if lps.len() != seqs.len() {
            return Err(EvalError::Model(format!(
                "{} results for {} sequences",
                lps.len(),
                seqs.len()
            )));
        }
        for (&i, lp) in chunk.iter().zip(&lps) {
            let n = encoded[i].1.min(lp.len());
            out[i] = lp[lp.len() - n..].iter().map(|&x| x as f64).sum();
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Scores already-built documents.
pub fn score_docs(
    model: &dyn LanguageModel,
    encoder: &dyn TextEncoder,
    task: Task,
    docs: &[McDoc],
    opts: &TaskOptions,
    progress: Progress,
) -> Result<TaskResult, EvalError> {
    let start = std::time::Instant::now();
    let docs = &docs[..opts.limit.unwrap_or(docs.len()).min(docs.len())];
    let reqs: Vec<&Request> = docs.iter().flat_map(|d| d.requests.iter()).collect();
    let lls = loglikelihoods(model, encoder, &reqs, opts, progress)?;
    let mut it = lls.into_iter();
    let scores = docs
        .iter()
        .map(|d| score_doc(d, it.by_ref().take(d.requests.len()).collect()))
        .collect();
    Ok(aggregate(
        task.name(),
        task.has_acc_norm(),
        scores,
        start.elapsed().as_secs_f64(),
    ))
}

/// Loads a bundled task (first `opts.limit` documents) and scores it.
pub fn run_task(
    model: &dyn LanguageModel,
    encoder: &dyn TextEncoder,
    task: Task,
    data_dir: &Path,
    opts: &TaskOptions,
    progress: Progress,
) -> Result<TaskResult, EvalError> {
    let docs = load_task(task, data_dir, opts.limit)?;
    score_docs(model, encoder, task, &docs, opts, progress)
}

/// Outcome of [`compare_with_lm_eval_samples`].
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenComparison {
    /// Requests compared.
    pub requests: usize,
    /// Requests whose `(context, continuation)` differ from lm-eval's (should be 0).
    pub request_mismatches: usize,
    /// Largest `|ours − lm-eval| / max(1, |lm-eval|)` over the log-likelihoods.
    pub max_rel_diff: f64,
    /// `(task, doc, choice, ours, lm-eval)` of that worst request.
    pub worst: Option<(String, usize, usize, f64, f64)>,
    /// Documents compared.
    pub docs: usize,
    /// `(task, doc)` of documents whose `argmax` (raw or length-normalised) differs from the one
    /// lm-eval's log-likelihoods give (should be empty).
    pub decision_mismatches: Vec<(String, usize)>,
}

/// Scores the first `docs_per_task` documents of every task present in an lm-eval samples file
/// (`assets/golden/lm_eval_micro_samples_limit10.json`: `{task: [{doc_id, target, requests:
/// [{context, continuation, loglikelihood}]}]}`) and compares requests, log-likelihoods and the
/// per-document `argmax` decisions with lm-eval's. Use it to check a [`LanguageModel`] + [`TextEncoder`] pair end to end on the model
/// the samples were made with (`qwen3-micro`, f32).
pub fn compare_with_lm_eval_samples(
    model: &dyn LanguageModel,
    encoder: &dyn TextEncoder,
    data_dir: &Path,
    samples: &Path,
    docs_per_task: usize,
    opts: &TaskOptions,
) -> Result<GoldenComparison, EvalError> {
    let text = std::fs::read_to_string(samples).map_err(|e| EvalError::io(samples, e))?;
    let golden: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EvalError::parse(samples, e.to_string()))?;
    let mut out = GoldenComparison {
        requests: 0,
        request_mismatches: 0,
        max_rel_diff: 0.0,
        worst: None,
        docs: 0,
        decision_mismatches: Vec::new(),
    };
    for task in Task::ALL {
        let Some(gdocs) = golden.get(task.name()).and_then(|v| v.as_array()) else {
            continue;
        };
        let n = docs_per_task.min(gdocs.len());
        let docs = load_task(task, data_dir, Some(n))?;
        let reqs: Vec<&Request> = docs.iter().flat_map(|d| d.requests.iter()).collect();
        let lls = loglikelihoods(model, encoder, &reqs, opts, Progress::Hidden)?;
        let mut k = 0;
        for (di, (d, gd)) in docs.iter().zip(gdocs).enumerate() {
            let greqs = gd
                .get("requests")
                .and_then(|v| v.as_array())
                .ok_or_else(|| EvalError::parse(samples, "no requests"))?;
            let mut want_lls = Vec::with_capacity(greqs.len());
            for (ci, (r, gr)) in d.requests.iter().zip(greqs).enumerate() {
                out.requests += 1;
                if gr.get("context").and_then(|v| v.as_str()) != Some(r.context.as_str())
                    || gr.get("continuation").and_then(|v| v.as_str())
                        != Some(r.continuation.as_str())
                {
                    out.request_mismatches += 1;
                }
                let want = gr
                    .get("loglikelihood")
                    .and_then(|v| v.as_f64())
                    .ok_or_else(|| EvalError::parse(samples, "no loglikelihood"))?;
                want_lls.push(want);
                let got = lls[k + ci];
                let rel = (got - want).abs() / want.abs().max(1.0);
                if rel > out.max_rel_diff || out.worst.is_none() {
                    out.max_rel_diff = rel.max(out.max_rel_diff);
                    out.worst = Some((task.name().to_string(), di, ci, got, want));
                }
            }
            out.docs += 1;
            let ours = score_doc(d, lls[k..k + d.requests.len()].to_vec());
            if want_lls.len() != d.requests.len() {
                out.request_mismatches += 1;
            }
            let theirs = score_doc(d, want_lls);
            if ours.pred != theirs.pred || ours.pred_norm != theirs.pred_norm {
                out.decision_mismatches.push((task.name().to_string(), di));
            }
            k += d.requests.len();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values are what Python 3 / lm-eval's `preprocess` produce for the same inputs.
    #[test]
    fn hellaswag_preprocess_matches_python() {
        let cases = [
            (
                "  [header] How to become a fashion consultant [title] Obtain your diploma. [step] This job  needs it. ",
                " How to become a fashion consultant. Obtain your diploma. This job needs it.",
            ),
            ("a [b\nc] d [e] f", "a [b\nc] d f"),
            ("x [unclosed", "x [unclosed"),
            ("a   b    c", "a  b  c"),
            ("[title] start", " start"),
            ("ends [substeps]", "ends "),
        ];
        for (input, want) in cases {
            assert_eq!(hellaswag_preprocess(input), want, "{input:?}");
        }
    }

    #[test]
    fn capitalize_matches_python() {
        for (input, want) in [
            ("he", "He"),
            ("the lady", "The lady"),
            ("JOHN said", "John said"),
            ("", ""),
            ("élan Vital", "Élan vital"),
            ("ǆemal", "ǅemal"),
            ("ßa", "Ssa"),
        ] {
            assert_eq!(py_capitalize(input), want);
        }
    }

    #[test]
    fn hellaswag_wikihow_doc_matches_python() {
        let docs = load_task(Task::Hellaswag, &crate::default_data_dir(), Some(3244)).unwrap();
        let d = &docs[3243];
        assert_eq!(
            d.requests[0].context,
            "Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma or ged. This job requires a high school diploma or equivalent, so make sure to apply yourself and finish school. If your high school offers these classes, take art, design, and sewing to familiarize yourself with foundational concepts in fashion."
        );
        assert_eq!(
            d.requests[3].continuation,
            "  Earn a bachelor's degree in a fashion-related field. Degrees for the fashion industry include art, fashion merchandising, and marketing."
        );
        assert_eq!(
            d.choice_lens[3],
            d.requests[3].continuation.chars().count() - 1
        );
    }

    #[test]
    fn argmax_and_stderr() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f64::NAN, -1.0]), 1);
        let (m, se) = mean_and_stderr(&[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(m, 0.75);
        assert!((se - 0.25).abs() < 1e-15);
        assert!(mean_and_stderr(&[1.0]).1.is_nan());
    }

    #[test]
    fn acc_norm_divides_by_characters() {
        let doc = McDoc {
            requests: vec![
                Request {
                    context: "c".into(),
                    continuation: " ab".into(),
                },
                Request {
                    context: "c".into(),
                    continuation: " abcdef".into(),
                },
            ],
            gold: 1,
            choice_lens: vec![2, 6],
        };
        // -2/2 = -1 < -3/6 = -0.5: acc picks 0, acc_norm picks 1.
        let s = score_doc(&doc, vec![-2.0, -3.0]);
        assert_eq!((s.pred, s.pred_norm), (0, 1));
    }
}
