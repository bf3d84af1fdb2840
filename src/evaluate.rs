//! [`Evaluation`]: perplexity, zero-shot tasks and MMLU of a [`Model`], as one report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use qwen3_quant_eval::tasks::load_task;
use qwen3_quant_eval::{
    evaluate_ppl, load_dataset, ppl::plan_windows, run_mmlu, score_docs, Dataset, EvalError,
    EvalReport, LanguageModel, MmluOptions, PplOptions, PplResult, Progress, Task, TaskOptions,
};

use crate::data::find_data_dir;
use crate::error::{Error, Result};
use crate::model_handle::Model;
use crate::progress::{NoProgress, ProgressEvent, ProgressSink, Stage};

/// The zero-shot tasks (lm-evaluation-harness definitions) and `mmlu` (5-shot).
pub const TASKS: [&str; 8] = [
    "piqa",
    "arc_easy",
    "arc_challenge",
    "hellaswag",
    "winogrande",
    "boolq",
    "openbookqa",
    "mmlu",
];

/// What to evaluate and how. `Default`: nothing yet, windows of 2048 tokens (the study's), every
/// window, 4 windows per forward batch.
///
/// Datasets: `docs` (bundled micro-model text), `wikitext2` (test split joined by blank lines, the
/// GPTQ form), `wikitext2-raw`, `c4` (bundled sample, first 256 windows), `c4-paper:PATH` (the
/// study's 256 fixed windows of the C4 validation shard at `PATH`), or a path to a text file.
/// Tasks: [`TASKS`].
///
/// ```
/// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
/// use qwen3_quant::{Evaluation, Model};
/// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
/// let report = model.evaluate(
///     &Evaluation::perplexity(["docs"]).seq_len(256).windows(2).tasks(["piqa"]).limit(4),
/// )?;
/// let ppl = report.ppl.get("docs").unwrap();
/// assert_eq!((ppl.windows, ppl.seq_len), (2, 256));
/// assert!(ppl.ppl > 1.0 && ppl.ppl < 8192.0);
/// assert_eq!(report.tasks.get("piqa").unwrap().n, 4);
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    datasets: Vec<String>,
    tasks: Vec<String>,
    seq_len: usize,
    windows: Option<usize>,
    batch: usize,
    limit: Option<usize>,
    data_dir: Option<PathBuf>,
}

impl Default for Evaluation {
    fn default() -> Self {
        Evaluation {
            datasets: Vec::new(),
            tasks: Vec::new(),
            seq_len: 2048,
            windows: None,
            batch: 4,
            limit: None,
            data_dir: None,
        }
    }
}

impl Evaluation {
    /// Perplexity of these datasets.
    pub fn perplexity<S: Into<String>>(datasets: impl IntoIterator<Item = S>) -> Self {
        Evaluation {
            datasets: datasets.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Adds zero-shot tasks and/or `mmlu`.
    pub fn tasks<S: Into<String>>(mut self, tasks: impl IntoIterator<Item = S>) -> Self {
        self.tasks.extend(tasks.into_iter().map(Into::into));
        self
    }

    /// Tokens per perplexity window (and the context length of the tasks).
    pub fn seq_len(mut self, seq_len: usize) -> Self {
        self.seq_len = seq_len;
        self
    }

    /// Only the first `n` windows of each dataset.
    pub fn windows(mut self, n: usize) -> Self {
        self.windows = Some(n);
        self
    }

    /// Windows (or requests) per forward batch.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Only the first `k` examples of each task (questions per subject for MMLU).
    pub fn limit(mut self, k: usize) -> Self {
        self.limit = Some(k);
        self
    }

    /// The data folder (default: [`find_data_dir`]).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The perplexity datasets asked for.
    pub fn dataset_names(&self) -> &[String] {
        &self.datasets
    }

    /// The tasks asked for.
    pub fn task_names(&self) -> &[String] {
        &self.tasks
    }

    /// A short description of the protocol (for result files that must match across runs).
    ///
    /// ```
    /// let e = qwen3_quant::Evaluation::perplexity(["wikitext2"]).seq_len(1024).windows(32);
    /// assert_eq!(e.describe(), "ppl wikitext2; seq_len 1024; windows 32");
    /// ```
    pub fn describe(&self) -> String {
        let mut s = format!("ppl {}; seq_len {}", self.datasets.join(","), self.seq_len);
        if let Some(w) = self.windows {
            s += &format!("; windows {w}");
        }
        if !self.tasks.is_empty() {
            s += &format!("; tasks {}", self.tasks.join(","));
            if let Some(l) = self.limit {
                s += &format!("; limit {l}");
            }
        }
        s
    }

    /// Runs the evaluation, reporting progress to `progress`.
    ///
    /// # Errors
    /// Unknown datasets or tasks, missing data files, model errors.
    pub fn run(&self, model: &Model, progress: &dyn ProgressSink) -> Result<EvalReport> {
        let data = find_data_dir(self.data_dir.as_deref())?;
        let tok = model.tokenizer();
        let mut report = EvalReport::new(model.dir().display().to_string());
        for name in &self.datasets {
            let dataset = parse_dataset(name)?;
            let loaded = load_dataset(&dataset, &data, Some(tok))?;
            let r = self.ppl_of(model, name, &loaded.ids, &dataset, progress)?;
            report.add_ppl(name.clone(), r);
        }
        for name in &self.tasks {
            if name == "mmlu" {
                let opts = MmluOptions::default()
                    .with_limit_per_subject(self.limit)
                    .with_batch_size(self.batch);
                let counted = Counted::new(model, progress, "mmlu", None);
                let r = run_mmlu(
                    &counted,
                    tok,
                    &data.join("tasks/mmlu"),
                    &opts,
                    Progress::Hidden,
                )?;
                counted.finish();
                report.add_mmlu(&r);
                continue;
            }
            let task = Task::parse(name).ok_or_else(|| {
                Error::invalid(format!(
                    "unknown task {name:?}: expected one of {}",
                    TASKS.join(", ")
                ))
            })?;
            let docs = load_task(task, &data, self.limit)?;
            let requests: usize = docs.iter().map(|d| d.requests.len()).sum();
            let opts = TaskOptions::default()
                .with_limit(self.limit)
                .with_batch_size(self.batch)
                .with_max_length(self.seq_len)
                .with_eot_token_id(model.config().eos_token_ids.first().copied());
            let counted = Counted::new(model, progress, name, Some(requests as u64));
            let r = score_docs(&counted, tok, task, &docs, &opts, Progress::Hidden)?;
            counted.finish();
            report.add_task(&r);
        }
        Ok(report)
    }

    fn ppl_of(
        &self,
        model: &Model,
        name: &str,
        ids: &[u32],
        dataset: &Dataset,
        progress: &dyn ProgressSink,
    ) -> Result<PplResult> {
        let opts = PplOptions::default()
            .with_seq_len(self.seq_len)
            .with_max_windows(self.windows.or(dataset.default_max_windows()))
            .with_batch_size(self.batch)
            .with_stride(None);
        let total = plan_windows(ids.len(), &opts)?.len() as u64;
        let counted = Counted::new(model, progress, name, Some(total));
        let r = evaluate_ppl(&counted, ids, &opts, Progress::Hidden)?;
        counted.finish();
        Ok(r)
    }
}

fn parse_dataset(name: &str) -> Result<Dataset> {
    if let Some(path) = name.strip_prefix("c4-paper:") {
        return Ok(Dataset::C4Paper { path: path.into() });
    }
    let d = Dataset::parse(name);
    if let Dataset::TextFile(p) = &d {
        if !p.is_file() {
            return Err(Error::invalid(format!(
                "unknown dataset {name:?}: expected docs, wikitext2, wikitext2-raw, c4, c4-paper:PATH or a text file"
            )));
        }
    }
    Ok(d)
}

/// The model, counting the sequences it scores for the progress sink.
struct Counted<'a> {
    model: &'a Model,
    sink: &'a dyn ProgressSink,
    label: &'a str,
    done: AtomicU64,
    total: Option<u64>,
}

impl<'a> Counted<'a> {
    fn new(
        model: &'a Model,
        sink: &'a dyn ProgressSink,
        label: &'a str,
        total: Option<u64>,
    ) -> Self {
        sink.on_event(&ProgressEvent {
            stage: Stage::Evaluate,
            label,
            done: 0,
            total,
        });
        Counted {
            model,
            sink,
            label,
            done: AtomicU64::new(0),
            total,
        }
    }

    fn step(&self, n: usize) {
        let done = self.done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        // The last step is reported by `finish`, so that a stage finishes exactly once.
        let done = self.total.map_or(done, |t| done.min(t.saturating_sub(1)));
        self.sink.on_event(&ProgressEvent {
            stage: Stage::Evaluate,
            label: self.label,
            done,
            total: self.total,
        });
    }

    fn finish(&self) {
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.unwrap_or(done);
        self.sink.on_event(&ProgressEvent {
            stage: Stage::Evaluate,
            label: self.label,
            done: total,
            total: Some(total),
        });
    }
}

impl LanguageModel for Counted<'_> {
    fn vocab_size(&self) -> usize {
        LanguageModel::vocab_size(self.model.qwen3())
    }
    fn logits(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
        let r = LanguageModel::logits(self.model.qwen3(), seqs);
        self.step(seqs.len());
        r
    }
    fn target_logprobs(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
        let r = LanguageModel::target_logprobs(self.model.qwen3(), seqs);
        self.step(seqs.len());
        r
    }
    fn last_logits(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
        let r = LanguageModel::last_logits(self.model.qwen3(), seqs);
        self.step(seqs.len());
        r
    }
}

impl Model {
    /// Runs `evaluation` without progress reports ([`Evaluation::run`] takes a sink).
    ///
    /// # Errors
    /// See [`Evaluation::run`].
    pub fn evaluate(&self, evaluation: &Evaluation) -> Result<EvalReport> {
        evaluation.run(self, &NoProgress)
    }

    /// Perplexity of one dataset over the first `windows` windows of `seq_len` tokens (all
    /// windows with `None`), the GPTQ protocol.
    ///
    /// ```
    /// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
    /// let model = qwen3_quant::Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
    /// let r = model.perplexity("docs", 256, Some(2))?;
    /// assert_eq!(r.tokens, 512);
    /// # Ok::<(), qwen3_quant::Error>(())
    /// ```
    ///
    /// # Errors
    /// See [`Evaluation::run`].
    pub fn perplexity(
        &self,
        dataset: &str,
        seq_len: usize,
        windows: Option<usize>,
    ) -> Result<PplResult> {
        let mut e = Evaluation::perplexity([dataset]).seq_len(seq_len);
        e.windows = windows;
        let report = e.run(self, &NoProgress)?;
        report
            .ppl
            .get(dataset)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("no result for {dataset}")))
    }
}
