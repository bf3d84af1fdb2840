//! The study in one command: a grid of methods × bit widths × group sizes, each cell quantized
//! and evaluated, resumable, split into shards for an external scheduler, and reported as a
//! Markdown table, CSV, JSON and perplexity/accuracy-vs-bits plots.
//!
//! Layout of an output folder:
//!
//! ```text
//! OUT/cells/<cell>.json    one file per finished cell, written atomically when it finishes
//! OUT/results.{md,csv,json} every finished cell found in OUT/cells, in grid order
//! OUT/plots/*.png          one plot per metric: the metric against bits, one line per method
//! ```
//!
//! A cell whose result file exists (with the same protocol) is skipped, so an interrupted sweep
//! continues where it stopped; a result file of another protocol (model, evaluation or
//! calibration) is an error rather than a silently mixed table. Cell `k` of the grid belongs to
//! shard `k mod N` ([`Shard`]); [`merge`] joins the folders of several shards.
//!
//! ```
//! # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
//! use qwen3_quant::sweep::{self, Grid, SweepMethod, SweepOptions};
//! use qwen3_quant::{Calibration, Evaluation, NoProgress};
//! let out = std::env::temp_dir().join(format!("qwen3-quant-doc-sweep-{}", std::process::id()));
//! let opts = SweepOptions {
//!     grid: Grid::paper().filter(&[SweepMethod::Rtn], &[8, 4], &[Some(128)]),
//!     evaluation: Evaluation::perplexity(["docs"]).seq_len(256).windows(2),
//!     calibration: Calibration::docs().windows(2, 256),
//!     ..SweepOptions::new(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"), &out)
//! };
//! let first = sweep::run(&opts, &NoProgress)?;
//! assert_eq!(first.ran, ["fp", "rtn_w8_g128", "rtn_w4_g128"]);
//! let again = sweep::run(&opts, &NoProgress)?; // resumed: nothing left to do
//! assert!(again.ran.is_empty() && again.results.len() == 3);
//! assert!(out.join("results.md").is_file() && out.join("plots/ppl_docs.png").is_file());
//! # std::fs::remove_dir_all(&out).ok();
//! # Ok::<(), qwen3_quant::Error>(())
//! ```

mod grid;
mod output;
mod plot;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::calibration::Calibration;
use crate::error::{Error, Result};
use crate::evaluate::Evaluation;
use crate::model_handle::Model;
use crate::progress::{ProgressEvent, ProgressSink, Stage};
use crate::EvalReport;

pub use grid::{Cell, Grid, Shard, SweepMethod, FOEM_BETA};
pub use output::{markdown_table, write_outputs};

/// What a sweep runs and where it writes.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepOptions {
    /// The full-precision model directory.
    pub model: PathBuf,
    /// The output folder.
    pub out: PathBuf,
    /// The cells.
    pub grid: Grid,
    /// The metrics of every cell.
    pub evaluation: Evaluation,
    /// The calibration data of every method that needs some.
    pub calibration: Calibration,
    /// Only this shard's cells.
    pub shard: Option<Shard>,
    /// Keep quantized weights packed (evaluated on the low-bit kernels).
    pub packed: bool,
    /// The arithmetic of the AWQ cells' search ([`crate::Quantize::compute`]); every other
    /// method, and every evaluation, runs in f32.
    pub search_compute: crate::Compute,
}

impl SweepOptions {
    /// The study's sweep of `model` into `out`: [`Grid::paper`]; perplexity on wikitext2 and c4
    /// with 2048-token windows; calibration on 128 × 2048 tokens of C4.
    pub fn new(model: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        SweepOptions {
            model: model.into(),
            out: out.into(),
            grid: Grid::paper(),
            evaluation: Evaluation::perplexity(["wikitext2", "c4"]),
            calibration: Calibration::c4(),
            shard: None,
            packed: false,
            search_compute: crate::Compute::F32,
        }
    }

    /// The protocol every cell file records: cells of different protocols never mix.
    ///
    /// # Errors
    /// An unreadable `config.json`.
    pub fn protocol(&self) -> Result<Protocol> {
        let cfg_path = self.model.join("config.json");
        let cfg = std::fs::read(&cfg_path).map_err(|e| Error::file(&cfg_path, e))?;
        let name = self
            .model
            .canonicalize()
            .unwrap_or_else(|_| self.model.clone())
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned());
        Ok(Protocol {
            model: format!("{name} (config.json fnv64 {:016x})", fnv64(&cfg)),
            evaluation: self.evaluation.describe(),
            calibration: self.calibration.describe(),
            packed: self.packed,
        })
    }
}

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What the results of a sweep were measured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    /// The model: its folder name and a hash of its `config.json`.
    pub model: String,
    /// [`Evaluation::describe`].
    pub evaluation: String,
    /// [`Calibration::describe`].
    pub calibration: String,
    /// Packed weights.
    pub packed: bool,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "model {}; {}; calibration {}{}",
            self.model,
            self.evaluation,
            self.calibration,
            if self.packed { "; packed" } else { "" }
        )
    }
}

/// The result of one cell, as stored in `cells/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// [`Cell::id`].
    pub id: String,
    /// The cell.
    pub cell: Cell,
    /// [`Cell::series`]: the plot line.
    pub series: String,
    /// The x of the plots: the weight bits, or the method's own figure (BiLLM's ~1.1).
    pub x_bits: f64,
    /// `transform+quantizer` that ran (`None` for the baseline).
    pub pipeline: Option<String>,
    /// Honest storage bits per weight of the quantized linears.
    pub bits_per_weight: Option<f64>,
    /// The method's own bit figure (BiLLM).
    pub reference_bits: Option<f64>,
    /// Seconds of calibration and quantization.
    pub quantize_seconds: Option<f64>,
    /// Seconds of evaluation.
    pub eval_seconds: f64,
    /// The arithmetic of the search when it was not f32 (`"bf16"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_compute: Option<String>,
    /// What it was measured with.
    pub protocol: Protocol,
    /// Perplexities and accuracies.
    pub report: EvalReport,
}

/// What [`run`] or [`merge`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepSummary {
    /// Cells computed now.
    pub ran: Vec<String>,
    /// Cells skipped because their result was already there.
    pub skipped: Vec<String>,
    /// Cells that failed (id, error); their result files are not written, so a rerun retries them.
    pub failed: Vec<(String, String)>,
    /// Every result in the output folder, in grid order.
    pub results: Vec<CellResult>,
    /// The tables and plots written.
    pub files: Vec<PathBuf>,
}

fn cell_path(out: &Path, id: &str) -> PathBuf {
    out.join("cells").join(format!("{id}.json"))
}

/// Reads every `cells/*.json` of a sweep folder.
///
/// # Errors
/// Unreadable or malformed files.
pub fn read_results(dir: &Path) -> Result<Vec<CellResult>> {
    let cells = dir.join("cells");
    if !cells.is_dir() {
        return Ok(Vec::new());
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&cells)
        .map_err(|e| Error::file(&cells, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths.iter().map(|p| read_result(p)).collect()
}

fn read_result(p: &Path) -> Result<CellResult> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::file(p, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::invalid(format!("{}: not a sweep cell result: {e}", p.display())))
}

/// Runs the (shard of the) grid: skips finished cells, writes each new result atomically as
/// soon as it is known, then the tables and plots of every result in the folder. A failing cell
/// does not stop the others; it is listed in [`SweepSummary::failed`].
///
/// # Errors
/// An unwritable output folder, a result file of another protocol, an unreadable model.
pub fn run(opts: &SweepOptions, progress: &dyn ProgressSink) -> Result<SweepSummary> {
    let protocol = opts.protocol()?;
    let cells_dir = opts.out.join("cells");
    std::fs::create_dir_all(&cells_dir).map_err(|e| Error::file(&cells_dir, e))?;
    let cells = match opts.shard {
        Some(s) => opts.grid.shard(s),
        None => opts.grid.cells().to_vec(),
    };
    let mut summary = SweepSummary::default();
    let total = cells.len() as u64;
    for (k, cell) in cells.iter().enumerate() {
        let id = cell.id();
        progress.on_event(&ProgressEvent {
            stage: Stage::Sweep,
            label: &id,
            done: k as u64,
            total: Some(total),
        });
        let path = cell_path(&opts.out, &id);
        if path.is_file() {
            let existing = read_result(&path)?;
            if existing.protocol != protocol {
                return Err(Error::invalid(format!(
                    "{} was measured with another protocol ({}; now {}): use another output folder",
                    path.display(),
                    existing.protocol,
                    protocol
                )));
            }
            summary.skipped.push(id);
            continue;
        }
        match run_cell(opts, cell, &protocol, progress) {
            Ok(result) => {
                let json = serde_json::to_string_pretty(&result)
                    .map_err(|e| Error::invalid(e.to_string()))?;
                qwen3_quant_io::write::write_atomic(&path, json.as_bytes())?;
                summary.ran.push(id);
            }
            Err(e) => summary.failed.push((id, e.to_string())),
        }
    }
    progress.on_event(&ProgressEvent {
        stage: Stage::Sweep,
        label: "done",
        done: total,
        total: Some(total),
    });
    summary.results = output::sorted(read_results(&opts.out)?);
    one_protocol(&summary.results, &opts.out)?;
    summary.files = write_outputs(&summary.results, &opts.out)?;
    Ok(summary)
}

/// Refuses to tabulate results of different protocols together.
fn one_protocol(results: &[CellResult], dir: &Path) -> Result<()> {
    if let Some(odd) = results.iter().find(|r| r.protocol != results[0].protocol) {
        return Err(Error::invalid(format!(
            "{}: cell {} was measured with {}, cell {} with {}; use separate folders",
            dir.display(),
            odd.id,
            odd.protocol,
            results[0].id,
            results[0].protocol
        )));
    }
    Ok(())
}

fn run_cell(
    opts: &SweepOptions,
    cell: &Cell,
    protocol: &Protocol,
    progress: &dyn ProgressSink,
) -> Result<CellResult> {
    let mut result = CellResult {
        id: cell.id(),
        cell: *cell,
        series: cell.series(),
        x_bits: f64::from(cell.bits),
        pipeline: None,
        bits_per_weight: None,
        reference_bits: None,
        quantize_seconds: None,
        eval_seconds: 0.0,
        search_compute: None,
        protocol: protocol.clone(),
        report: EvalReport::default(),
    };
    let evaluate = |m: &Model| -> Result<(EvalReport, f64)> {
        let t = Instant::now();
        let r = opts.evaluation.run(m, progress)?;
        Ok((r, t.elapsed().as_secs_f64()))
    };
    let (report, secs) = match cell.job(&opts.calibration) {
        None => evaluate(&Model::open(&opts.model)?)?,
        Some(job) => {
            let searches = matches!(
                cell.method,
                SweepMethod::Awq | SweepMethod::AwqGptq | SweepMethod::AwqGptqMse
            );
            let compute = if searches {
                opts.search_compute
            } else {
                crate::Compute::F32
            };
            if compute != crate::Compute::F32 {
                result.search_compute = Some(format!("{compute:?}").to_lowercase());
            }
            let q = job
                .packed(opts.packed)
                .compute(compute)
                .progress(progress)
                .run_dir(&opts.model)?;
            result.pipeline = Some(q.pipeline().to_string());
            result.bits_per_weight = Some(q.bits_per_weight());
            result.reference_bits = q.reference_bits();
            result.quantize_seconds = Some(q.seconds());
            if let Some(r) = result.reference_bits {
                result.x_bits = r;
            }
            evaluate(&q)?
        }
    };
    result.report = report;
    result.report.model = cell.id();
    result.eval_seconds = secs;
    Ok(result)
}

/// Joins the results of several sweep folders (one per shard) into `out`: tables and plots of
/// the union. The same cell in two folders must agree; all must share one protocol.
///
/// ```
/// let out = std::env::temp_dir().join(format!("qwen3-quant-doc-merge-{}", std::process::id()));
/// let s = qwen3_quant::sweep::merge(&[], &out)?;
/// assert!(s.results.is_empty());
/// # std::fs::remove_dir_all(&out).ok();
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
///
/// # Errors
/// Unreadable folders, differing protocols, contradicting duplicates.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<SweepSummary> {
    let mut all: Vec<CellResult> = Vec::new();
    for d in dirs {
        if !d.is_dir() {
            return Err(Error::invalid(format!("{} is not a folder", d.display())));
        }
        for r in read_results(d)? {
            if let Some(first) = all.first() {
                if first.protocol != r.protocol {
                    return Err(Error::invalid(format!(
                        "{}: cell {} was measured with {}, other cells with {}",
                        d.display(),
                        r.id,
                        r.protocol,
                        first.protocol
                    )));
                }
            }
            match all.iter().find(|x| x.id == r.id) {
                Some(x) if x.report.ppl != r.report.ppl || x.report.tasks != r.report.tasks => {
                    return Err(Error::invalid(format!(
                        "cell {} appears twice with different results ({})",
                        r.id,
                        d.display()
                    )));
                }
                Some(_) => {}
                None => all.push(r),
            }
        }
    }
    let cells = out.join("cells");
    std::fs::create_dir_all(&cells).map_err(|e| Error::file(&cells, e))?;
    for r in &all {
        let path = cell_path(out, &r.id);
        if !path.is_file() {
            let json =
                serde_json::to_string_pretty(r).map_err(|e| Error::invalid(e.to_string()))?;
            qwen3_quant_io::write::write_atomic(&path, json.as_bytes())?;
        }
    }
    let results = output::sorted(read_results(out)?);
    one_protocol(&results, out)?;
    let files = write_outputs(&results, out)?;
    Ok(SweepSummary {
        results,
        files,
        ..SweepSummary::default()
    })
}
