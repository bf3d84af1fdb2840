//! Reports: the CLI's `eval` JSON ([`EvalReport`]), Markdown and CSV tables, metric-vs-bits plots.
//!
//! The JSON shape is the `qwen3-quant eval` contract:
//! `{"model": DIR, "ppl": {"<dataset>": {"ppl","windows","seq_len","tokens","seconds","tokens_per_s"}},
//!   "tasks": {"<task>": {"acc","acc_stderr","acc_norm"|null,"n", …extras}}}`. Map keys keep insertion
//! order. Extras: `acc_norm_stderr` (tasks with `acc_norm`), and for `mmlu` the per-category and
//! per-subject accuracies. A NaN standard error (fewer than 2 examples) is written as `null`.
//!
//! Plots are drawn without any text (no font is needed on the machine): one coloured line with
//! point markers per method, x = bits, y = the metric; [`plot_metric_vs_bits`] returns the
//! legend (method → colour) so the caller can print it next to the picture.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::mmlu::MmluResult;
use crate::tasks::TaskResult;
use crate::{EvalError, PplResult};

/// A string-keyed map that keeps insertion order and serialises as a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<V> OrderedMap<V> {
    /// Inserts or replaces `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: V) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V: Serialize> Serialize for OrderedMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_none()
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// Metrics of one task in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    /// Accuracy.
    pub acc: f64,
    /// Standard error of `acc` (`null` when undefined).
    #[serde(with = "nan_as_null")]
    pub acc_stderr: f64,
    /// Length-normalised accuracy, `null` where lm-eval does not report it.
    pub acc_norm: Option<f64>,
    /// Examples scored.
    pub n: usize,
    /// Standard error of `acc_norm` (extra).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<f64>,
    /// MMLU: accuracy per category (extra).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<BTreeMap<String, f64>>,
    /// MMLU: accuracy per subject (extra).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<BTreeMap<String, f64>>,
}

impl From<&TaskResult> for TaskMetrics {
    fn from(r: &TaskResult) -> Self {
        TaskMetrics {
            acc: r.acc,
            acc_stderr: r.acc_stderr,
            acc_norm: r.acc_norm,
            n: r.n,
            acc_norm_stderr: r.acc_norm_stderr.filter(|x| x.is_finite()),
            categories: None,
            subjects: None,
        }
    }
}

impl From<&MmluResult> for TaskMetrics {
    fn from(r: &MmluResult) -> Self {
        TaskMetrics {
            acc: r.acc,
            acc_stderr: r.acc_stderr,
            acc_norm: None,
            n: r.n,
            acc_norm_stderr: None,
            categories: Some(
                r.categories
                    .iter()
                    .map(|(k, g)| (k.clone(), g.acc))
                    .collect(),
            ),
            subjects: Some(
                r.subjects
                    .iter()
                    .filter(|(_, g)| g.n > 0)
                    .map(|(k, g)| (k.clone(), g.acc))
                    .collect(),
            ),
        }
    }
}

/// The result of `qwen3-quant eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct EvalReport {
    /// The evaluated model directory.
    pub model: String,
    /// Perplexity per dataset name.
    pub ppl: OrderedMap<PplResult>,
    /// Task metrics per task name (`mmlu` included).
    pub tasks: OrderedMap<TaskMetrics>,
}

/// A metric of a report, for tables and plots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricKey {
    /// Perplexity of a dataset.
    Ppl(String),
    /// `acc` of a task.
    Acc(String),
    /// `acc_norm` of a task.
    AccNorm(String),
}

impl MetricKey {
    /// Column name: `ppl:<dataset>`, `<task>:acc`, `<task>:acc_norm`.
    pub fn label(&self) -> String {
        match self {
            MetricKey::Ppl(d) => format!("ppl:{d}"),
            MetricKey::Acc(t) => format!("{t}:acc"),
            MetricKey::AccNorm(t) => format!("{t}:acc_norm"),
        }
    }
}

impl EvalReport {
    /// A report for `model` with no results yet.
    pub fn new(model: impl Into<String>) -> Self {
        EvalReport {
            model: model.into(),
            ..Default::default()
        }
    }
    /// Adds a perplexity result.
    pub fn add_ppl(&mut self, dataset: impl Into<String>, r: PplResult) {
        self.ppl.insert(dataset, r);
    }
    /// Adds a zero-shot task result.
    pub fn add_task(&mut self, r: &TaskResult) {
        self.tasks.insert(r.task.clone(), TaskMetrics::from(r));
    }
    /// Adds the MMLU result (task `mmlu`).
    pub fn add_mmlu(&mut self, r: &MmluResult) {
        self.tasks.insert("mmlu", TaskMetrics::from(r));
    }
    /// Value of a metric.
    pub fn metric(&self, key: &MetricKey) -> Option<f64> {
        match key {
            MetricKey::Ppl(d) => self.ppl.get(d).map(|r| r.ppl),
            MetricKey::Acc(t) => self.tasks.get(t).map(|r| r.acc),
            MetricKey::AccNorm(t) => self.tasks.get(t).and_then(|r| r.acc_norm),
        }
    }
    /// Every metric present, in report order (ppl first, then acc/acc_norm per task).
    pub fn metric_keys(&self) -> Vec<MetricKey> {
        let mut v: Vec<MetricKey> = self
            .ppl
            .keys()
            .map(|k| MetricKey::Ppl(k.to_string()))
            .collect();
        for (k, t) in &self.tasks.0 {
            v.push(MetricKey::Acc(k.clone()));
            if t.acc_norm.is_some() {
                v.push(MetricKey::AccNorm(k.clone()));
            }
        }
        v
    }
    /// The JSON of the CLI contract.
    pub fn to_json(&self) -> Result<String, EvalError> {
        serde_json::to_string_pretty(self).map_err(|e| EvalError::Report(e.to_string()))
    }
    /// Writes [`EvalReport::to_json`] to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), EvalError> {
        std::fs::write(path, self.to_json()? + "\n").map_err(|e| EvalError::io(path, e))
    }
    /// Writes [`EvalReport::to_markdown`] to `path`.
    pub fn write_markdown(&self, path: &Path) -> Result<(), EvalError> {
        std::fs::write(path, self.to_markdown()).map_err(|e| EvalError::io(path, e))
    }
    /// Two Markdown tables (perplexity, tasks).
    pub fn to_markdown(&self) -> String {
        let mut s = format!("## {}\n\n", self.model);
        if !self.ppl.is_empty() {
            s.push_str("| dataset | ppl | windows | seq_len | tokens | seconds | tokens/s |\n|---|---:|---:|---:|---:|---:|---:|\n");
            for (k, r) in &self.ppl.0 {
                let _ = writeln!(
                    s,
                    "| {k} | {:.4} | {} | {} | {} | {:.1} | {:.1} |",
                    r.ppl, r.windows, r.seq_len, r.tokens, r.seconds, r.tokens_per_s
                );
            }
            s.push('\n');
        }
        if !self.tasks.is_empty() {
            s.push_str("| task | acc | ± | acc_norm | n |\n|---|---:|---:|---:|---:|\n");
            for (k, t) in &self.tasks.0 {
                let norm = t.acc_norm.map_or("–".to_string(), |x| format!("{:.4}", x));
                let _ = writeln!(
                    s,
                    "| {k} | {:.4} | {} | {norm} | {} |",
                    t.acc,
                    fmt_opt(t.acc_stderr),
                    t.n
                );
            }
        }
        s
    }
}

fn fmt_opt(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "–".into()
    }
}

/// One row of a sweep: a method at a bit width and its report.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepEntry {
    /// Method (`fp`, `rtn`, `gptq`, …): one plot line per method.
    pub method: String,
    /// Bits per weight (x axis).
    pub bits: f64,
    /// Free-form row label (e.g. `gptq_w4_g128`).
    pub label: String,
    /// The evaluation.
    pub report: EvalReport,
}

/// Union of the metric columns of all entries, in first-seen order.
pub fn sweep_columns(entries: &[SweepEntry]) -> Vec<MetricKey> {
    let mut cols: Vec<MetricKey> = Vec::new();
    for e in entries {
        for k in e.report.metric_keys() {
            if !cols.contains(&k) {
                cols.push(k);
            }
        }
    }
    cols
}

/// A Markdown table: one row per entry, columns label, method, bits and every metric.
pub fn sweep_markdown(entries: &[SweepEntry]) -> String {
    let cols = sweep_columns(entries);
    let mut s = String::from("| label | method | bits |");
    for c in &cols {
        let _ = write!(s, " {} |", c.label());
    }
    s.push_str("\n|---|---|---:|");
    s.push_str(&"---:|".repeat(cols.len()));
    s.push('\n');
    for e in entries {
        let _ = write!(s, "| {} | {} | {} |", e.label, e.method, e.bits);
        for c in &cols {
            match e.report.metric(c) {
                Some(v) if matches!(c, MetricKey::Ppl(_)) => {
                    let _ = write!(s, " {v:.3} |");
                }
                Some(v) => {
                    let _ = write!(s, " {:.2} |", 100.0 * v);
                }
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

/// Writes the sweep as CSV (same columns as [`sweep_markdown`], raw values, empty when missing).
pub fn write_sweep_csv(entries: &[SweepEntry], path: &Path) -> Result<(), EvalError> {
    let cols = sweep_columns(entries);
    let mut w = csv::Writer::from_path(path)
        .map_err(|e| EvalError::Report(format!("{}: {e}", path.display())))?;
    let err = |e: csv::Error| EvalError::Report(format!("{}: {e}", path.display()));
    let mut header = vec!["label".to_string(), "method".into(), "bits".into()];
    header.extend(cols.iter().map(MetricKey::label));
    w.write_record(&header).map_err(err)?;
    for e in entries {
        let mut row = vec![e.label.clone(), e.method.clone(), e.bits.to_string()];
        row.extend(cols.iter().map(|c| {
            e.report
                .metric(c)
                .map(|v| v.to_string())
                .unwrap_or_default()
        }));
        w.write_record(&row).map_err(err)?;
    }
    w.flush().map_err(|e| EvalError::io(path, e))
}

/// Options of [`plot_metric_vs_bits`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct PlotOptions {
    /// Image width, pixels.
    pub width: u32,
    /// Image height, pixels.
    pub height: u32,
    /// Logarithmic y axis (useful for perplexity).
    pub log_y: bool,
}

qwen3_quant_core::setters!(PlotOptions {
    width: u32 => with_width,
    height: u32 => with_height,
    log_y: bool => with_log_y,
});

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            width: 800,
            height: 600,
            log_y: false,
        }
    }
}

/// A plot legend: `(method, (r, g, b))` per line, in drawing order.
pub type Legend = Vec<(String, (u8, u8, u8))>;

/// Line colours, by method order of first appearance.
pub const PALETTE: [(u8, u8, u8); 8] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
];

/// Draws `metric` against bits, one line per method, as a PNG (no text, see the module docs).
/// Returns the legend: `(method, rgb)` in drawing order.
pub fn plot_metric_vs_bits(
    entries: &[SweepEntry],
    metric: &MetricKey,
    path: &Path,
    opts: &PlotOptions,
) -> Result<Legend, EvalError> {
    use plotters::prelude::*;
    let tr = |y: f64| {
        if opts.log_y {
            y.max(f64::MIN_POSITIVE).log10()
        } else {
            y
        }
    };
    let mut methods: Vec<String> = Vec::new();
    for e in entries {
        if !methods.contains(&e.method) {
            methods.push(e.method.clone());
        }
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = methods
        .iter()
        .map(|m| {
            let mut pts: Vec<(f64, f64)> = entries
                .iter()
                .filter(|e| &e.method == m)
                .filter_map(|e| {
                    e.report
                        .metric(metric)
                        .filter(|v| v.is_finite())
                        .map(|v| (e.bits, tr(v)))
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (m.clone(), pts)
        })
        .collect();
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if all.is_empty() {
        return Err(EvalError::Report(format!(
            "no finite values of {} to plot",
            metric.label()
        )));
    }
    let pad = |lo: f64, hi: f64| {
        let d = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
        (lo - d)..(hi + d)
    };
    let xr = pad(
        all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min),
        all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max),
    );
    let yr = pad(
        all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
        all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
    );
    let perr = |e: &dyn std::fmt::Display| EvalError::Report(format!("{}: {e}", path.display()));
    let root = BitMapBackend::new(path, (opts.width, opts.height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .build_cartesian_2d(xr.clone(), yr.clone())
        .map_err(|e| perr(&e))?;
    // Frame and a light grid at integer bit widths, drawn as plain lines (no labels, no fonts).
    let grey = RGBColor(200, 200, 200);
    let mut b = xr.start.ceil() as i64;
    while (b as f64) <= xr.end {
        chart
            .draw_series(LineSeries::new(
                [(b as f64, yr.start), (b as f64, yr.end)],
                grey,
            ))
            .map_err(|e| perr(&e))?;
        b += 1;
    }
    let frame = [
        (xr.start, yr.start),
        (xr.end, yr.start),
        (xr.end, yr.end),
        (xr.start, yr.end),
        (xr.start, yr.start),
    ];
    chart
        .draw_series(LineSeries::new(frame, BLACK))
        .map_err(|e| perr(&e))?;
    let mut legend = Vec::new();
    for (i, (m, pts)) in series.iter().enumerate() {
        let (r, g, bl) = PALETTE[i % PALETTE.len()];
        let c = RGBColor(r, g, bl);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(|e| perr(&e))?;
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|e| perr(&e))?;
        legend.push((m.clone(), (r, g, bl)));
    }
    root.present().map_err(|e| perr(&e))?;
    Ok(legend)
}
