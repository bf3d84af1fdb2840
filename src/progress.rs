//! Progress reporting through a trait, so that a library user plugs in a bar, a log, or nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// Quantizing a model: one step per linear (the label is the pipeline, e.g. `awq+gptq`).
    Quantize,
    /// Scoring a dataset or task: one step per window or scored sequence (the label names it).
    Evaluate,
    /// A sweep: one step per grid cell (the label is the cell being worked on).
    Sweep,
}

impl Stage {
    /// Lower-case name (`quantize`, `evaluate`, `sweep`).
    ///
    /// ```
    /// assert_eq!(qwen3_quant::Stage::Quantize.name(), "quantize");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Stage::Quantize => "quantize",
            Stage::Evaluate => "evaluate",
            Stage::Sweep => "sweep",
        }
    }
}

/// One progress report: `done` of `total` steps of `stage` (`total` is `None` when it is not
/// known in advance). A stage starts with `done == 0` and ends with [`ProgressEvent::finished`].
///
/// ```
/// use qwen3_quant::{ProgressEvent, Stage};
/// let e = ProgressEvent { stage: Stage::Quantize, label: "gptq", done: 56, total: Some(56) };
/// assert!(e.finished());
/// assert_eq!(e.fraction(), Some(1.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressEvent<'a> {
    /// What runs.
    pub stage: Stage,
    /// Which one (pipeline name, dataset, task, sweep cell).
    pub label: &'a str,
    /// Steps finished.
    pub done: u64,
    /// Steps in all, when known.
    pub total: Option<u64>,
}

impl ProgressEvent<'_> {
    /// Whether this is the last event of its stage.
    pub fn finished(&self) -> bool {
        self.total.is_some_and(|t| self.done >= t)
    }

    /// `done / total` in `[0, 1]`, when the total is known and non-zero.
    pub fn fraction(&self) -> Option<f64> {
        self.total
            .filter(|&t| t > 0)
            .map(|t| (self.done as f64 / t as f64).min(1.0))
    }
}

/// Receives progress events. Calls may come from several threads.
///
/// Any `Fn(&ProgressEvent)` closure is a sink:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use qwen3_quant::{ProgressEvent, ProgressSink, Stage};
/// let steps = AtomicU64::new(0);
/// let sink = |e: &ProgressEvent<'_>| { steps.store(e.done, Ordering::Relaxed); };
/// sink.on_event(&ProgressEvent { stage: Stage::Evaluate, label: "docs", done: 3, total: Some(8) });
/// assert_eq!(steps.load(Ordering::Relaxed), 3);
/// ```
pub trait ProgressSink: Send + Sync {
    /// Called at the start of a stage, after each step, and when it finishes.
    fn on_event(&self, event: &ProgressEvent<'_>);
}

impl<F: Fn(&ProgressEvent<'_>) + Send + Sync> ProgressSink for F {
    fn on_event(&self, event: &ProgressEvent<'_>) {
        self(event)
    }
}

/// Reports nothing (the default of every builder).
///
/// ```
/// use qwen3_quant::{NoProgress, ProgressEvent, ProgressSink, Stage};
/// NoProgress.on_event(&ProgressEvent { stage: Stage::Sweep, label: "rtn_w4_g128", done: 0, total: None });
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn on_event(&self, _: &ProgressEvent<'_>) {}
}

/// Progress bars with elapsed time, rate and ETA on stderr (indicatif), one per stage and label;
/// hidden when stderr is not a terminal or `QWEN3_QUANT_QUIET` is set.
///
/// ```
/// use qwen3_quant::{ConsoleProgress, ProgressEvent, ProgressSink, Stage};
/// let bars = ConsoleProgress::new();
/// bars.on_event(&ProgressEvent { stage: Stage::Quantize, label: "gptq", done: 0, total: Some(2) });
/// bars.on_event(&ProgressEvent { stage: Stage::Quantize, label: "gptq", done: 2, total: Some(2) });
/// ```
#[derive(Debug, Default)]
pub struct ConsoleProgress {
    bars: Mutex<HashMap<(Stage, String), ProgressBar>>,
}

impl ConsoleProgress {
    /// No bars yet; they appear with the first event of each stage.
    pub fn new() -> Self {
        Self::default()
    }

    fn new_bar(e: &ProgressEvent<'_>) -> ProgressBar {
        let quiet = std::env::var_os("QWEN3_QUANT_QUIET").is_some();
        let pb = match e.total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        if quiet {
            pb.set_draw_target(ProgressDrawTarget::hidden());
        }
        let unit = match e.stage {
            Stage::Quantize => "linears",
            Stage::Evaluate => "steps",
            Stage::Sweep => "cells",
        };
        let template = if e.total.is_some() {
            format!(
                "{{prefix:>9}} {{msg:<18}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} (ETA {{eta}})"
            )
        } else {
            format!("{{prefix:>9}} {{msg:<18}} [{{elapsed_precise}}] {{spinner}} {{pos}} {unit}")
        };
        if let Ok(style) = ProgressStyle::with_template(&template) {
            pb.set_style(style);
        }
        pb.set_prefix(e.stage.name());
        pb
    }
}

impl ProgressSink for ConsoleProgress {
    fn on_event(&self, e: &ProgressEvent<'_>) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        // A sweep bar keeps one line and changes its message with each cell.
        let key = match e.stage {
            Stage::Sweep => (e.stage, String::new()),
            _ => (e.stage, e.label.to_string()),
        };
        let pb = bars.entry(key.clone()).or_insert_with(|| Self::new_bar(e));
        if let Some(t) = e.total {
            pb.set_length(t);
        }
        pb.set_message(e.label.to_string());
        pb.set_position(e.done);
        if e.finished() && e.stage != Stage::Sweep {
            pb.finish_and_clear();
            bars.remove(&key);
        } else if e.finished() {
            pb.finish();
            bars.remove(&key);
        }
    }
}
