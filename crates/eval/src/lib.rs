//! Evaluation: perplexity, lm-eval-harness compatible zero-shot tasks, 5-shot MMLU, reports and plots.
//!
//! The evaluator scores any [`LanguageModel`] (logits for token sequences) and tokenizes text
//! with any [`TextEncoder`]; the model crate implements both for Qwen3.
//!
//! * [`ppl`]: perplexity, GPTQ protocol (non-overlapping windows, tail dropped), and the datasets
//!   (`docs`, `wikitext2`, `wikitext2-raw`, `c4`, the paper's 256 C4 windows, text files).
//! * [`tasks`]: PIQA, ARC-Easy/Challenge, HellaSwag, WinoGrande, BoolQ, OpenBookQA exactly as
//!   lm-evaluation-harness 0.4.x builds and scores them (`acc`, `acc_norm`, stderr).
//! * [`mmlu`]: the paper's 5-shot MMLU (Hendrycks prompt, shot reduction, A/B/C/D argmax).
//! * [`report`]: the CLI's `eval` JSON, Markdown and CSV tables, metric-vs-bits PNG plots.
//!
//! Entry points: [`load_dataset`] + [`evaluate_ppl`], [`run_task`] (or [`tasks::load_task`] +
//! [`score_docs`]), [`run_mmlu`], and [`EvalReport`] with [`report::sweep_markdown`],
//! [`report::write_sweep_csv`] and [`report::plot_metric_vs_bits`]. Long loops show an indicatif
//! bar unless given [`Progress::Hidden`].
//!
//! **Validation** (the `micro` tests, which run the real f32 `assets/models/qwen3-micro` through
//! [`qwen3`]'s glue): the zero-shot log-likelihoods of the first 10 docs of every task agree with
//! those lm-evaluation-harness 0.4.13 reported for that model to < 1e-4 relative with identical
//! `argmax` decisions, and the `--limit 50` `acc`/`acc_norm` of the seven tasks are reproduced. The
//! reference perplexities (`docs_32` = 18.5676, `wiki2_32` = 148.5464) are checked by the root
//! package's `tests/perplexity.rs`.
//!
//! ```
//! use qwen3_quant_eval::{evaluate_ppl, EvalError, LanguageModel, PplOptions, Progress};
//!
//! /// A model that predicts the uniform distribution over 4 tokens.
//! struct Uniform;
//! impl LanguageModel for Uniform {
//!     fn vocab_size(&self) -> usize { 4 }
//!     fn logits(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
//!         Ok(seqs.iter().map(|s| vec![0.0; s.len() * 4]).collect())
//!     }
//! }
//!
//! let ids: Vec<u32> = (0..100).map(|i| i % 4).collect();
//! let opts = PplOptions::default().with_seq_len(16);
//! let r = evaluate_ppl(&Uniform, &ids, &opts, Progress::Hidden)?;
//! assert_eq!(r.windows, 6); // 100 / 16, tail dropped
//! assert!((r.ppl - 4.0).abs() < 1e-5);
//! # Ok::<(), EvalError>(())
//! ```

mod c4_windows;
pub mod data;
mod error;
pub mod mmlu;
pub mod model;
pub mod ppl;
mod progress;
pub mod qwen3;
pub mod report;
pub mod tasks;

pub use c4_windows::C4_PAPER_WINDOWS;
pub use data::default_data_dir;
pub use error::EvalError;
pub use mmlu::{run_mmlu, MmluOptions, MmluResult};
pub use model::{LanguageModel, TextEncoder};
pub use ppl::{evaluate_ppl, load_dataset, Dataset, LoadedDataset, PplOptions, PplResult};
pub use progress::Progress;
pub use report::{EvalReport, MetricKey, SweepEntry, TaskMetrics};
pub use tasks::{run_task, score_docs, McDoc, Request, Task, TaskOptions, TaskResult};
