//! The tables (Markdown, CSV, JSON) and plots of a sweep's results.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use qwen3_quant_eval::MetricKey;

use super::grid::SweepMethod;
use super::plot::{plot_vs_bits, Series};
use super::CellResult;
use crate::error::{Error, Result};

/// Grid order: method, then group 128 before per channel, then bits and activation bits
/// from high to low.
pub(crate) fn sorted(mut results: Vec<CellResult>) -> Vec<CellResult> {
    let method_rank = |m: SweepMethod| SweepMethod::ALL.iter().position(|x| *x == m);
    results.sort_by_key(|r| {
        (
            method_rank(r.cell.method),
            r.cell.group_size.is_none(),
            r.cell.group_size,
            std::cmp::Reverse(r.cell.bits),
            std::cmp::Reverse(r.cell.act_bits),
        )
    });
    results
}

/// Every metric of the results, in first-seen order.
fn metric_keys(results: &[CellResult]) -> Vec<MetricKey> {
    let mut keys: Vec<MetricKey> = Vec::new();
    for r in results {
        for k in r.report.metric_keys() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    keys
}

fn fmt_metric(k: &MetricKey, v: Option<f64>) -> String {
    match (k, v) {
        (_, None) => "–".into(),
        (MetricKey::Ppl(_), Some(v)) => format!("{v:.3}"),
        (_, Some(v)) => format!("{:.2}", 100.0 * v),
    }
}

fn group_label(r: &CellResult) -> String {
    match (r.cell.method, r.cell.group_size) {
        (SweepMethod::Fp | SweepMethod::Smoothquant | SweepMethod::Billm, _) => "–".into(),
        (_, Some(g)) => g.to_string(),
        (_, None) => "per-channel".into(),
    }
}

/// The results as one Markdown table: method, bits (W/A), group, honest bits per weight, then
/// every perplexity (3 decimals) and accuracy (percent), and the seconds of quantization.
///
/// ```
/// let table = qwen3_quant::sweep::markdown_table(&[]);
/// assert!(table.starts_with("| method | W | A | group | bits/weight |"));
/// ```
pub fn markdown_table(results: &[CellResult]) -> String {
    let keys = metric_keys(results);
    let mut s = String::from("| method | W | A | group | bits/weight |");
    for k in &keys {
        let _ = write!(s, " {} |", k.label());
    }
    s.push_str(" quantize s |");
    s.push_str("\n|---|---:|---:|---|---:|");
    s.push_str(&"---:|".repeat(keys.len() + 1));
    s.push('\n');
    for r in results {
        let bits = if r.cell.method == SweepMethod::Fp {
            "16".to_string()
        } else {
            r.cell.bits.to_string()
        };
        let bpw = match (r.bits_per_weight, r.reference_bits) {
            (Some(b), Some(rb)) => format!("{b:.2} ({rb:.2})"),
            (Some(b), None) => format!("{b:.2}"),
            _ => "16".into(),
        };
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {bpw} |",
            r.cell.method.title(),
            bits,
            r.cell.act_bits.map_or("16".into(), |a| a.to_string()),
            group_label(r)
        );
        for k in &keys {
            let _ = write!(s, " {} |", fmt_metric(k, r.report.metric(k)));
        }
        let secs = r.quantize_seconds.map_or("–".into(), |t| format!("{t:.0}"));
        let _ = write!(s, " {secs} |");
        s.push('\n');
    }
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(results: &[CellResult]) -> String {
    let keys = metric_keys(results);
    let mut header = vec![
        "cell",
        "method",
        "series",
        "bits",
        "act_bits",
        "group_size",
        "x_bits",
        "bits_per_weight",
        "reference_bits",
        "quantize_seconds",
        "eval_seconds",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    header.extend(keys.iter().map(MetricKey::label));
    let mut s = header
        .iter()
        .map(|h| csv_field(h))
        .collect::<Vec<_>>()
        .join(",");
    s.push('\n');
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for r in results {
        let mut row = vec![
            r.id.clone(),
            r.cell.method.name().to_string(),
            r.series.clone(),
            r.cell.bits.to_string(),
            r.cell.act_bits.map(|a| a.to_string()).unwrap_or_default(),
            r.cell.group_size.map(|g| g.to_string()).unwrap_or_default(),
            r.x_bits.to_string(),
            opt(r.bits_per_weight),
            opt(r.reference_bits),
            opt(r.quantize_seconds),
            r.eval_seconds.to_string(),
        ];
        row.extend(keys.iter().map(|k| opt(r.report.metric(k))));
        s.push_str(
            &row.iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        s.push('\n');
    }
    s
}

fn plot_file(k: &MetricKey) -> String {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    match k {
        MetricKey::Ppl(d) => format!("ppl_{}.png", safe(d)),
        MetricKey::Acc(t) => format!("{}_acc.png", safe(t)),
        MetricKey::AccNorm(t) => format!("{}_acc_norm.png", safe(t)),
    }
}

/// Writes `results.md`, `results.csv`, `results.json` and `plots/*.png` into `out`, each
/// atomically; returns their paths. The baseline is drawn as a dashed horizontal line.
///
/// # Errors
/// Unwritable files.
pub fn write_outputs(results: &[CellResult], out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let keys = metric_keys(results);
    let plots_dir = out.join("plots");
    std::fs::create_dir_all(&plots_dir).map_err(|e| Error::file(&plots_dir, e))?;
    let mut plot_lines = String::new();
    for k in &keys {
        let series = series_of(results, k);
        if series.iter().all(|s| s.points.is_empty()) {
            continue;
        }
        let baseline = results
            .iter()
            .find(|r| r.cell.method == SweepMethod::Fp)
            .and_then(|r| r.report.metric(k));
        let file = plots_dir.join(plot_file(k));
        let (title, log_y) = match k {
            MetricKey::Ppl(d) => (format!("{d} perplexity"), true),
            MetricKey::Acc(t) => (format!("{t} accuracy"), false),
            MetricKey::AccNorm(t) => (format!("{t} acc_norm"), false),
        };
        plot_vs_bits(&series, baseline, &title, log_y, &file)?;
        let _ = writeln!(plot_lines, "- `plots/{}`: {title}", plot_file(k));
        files.push(file);
    }
    let protocol = results.first().map(|r| &r.protocol);
    let mut md = String::from("# Sweep results\n\n");
    if let Some(p) = protocol {
        let _ = writeln!(
            md,
            "- model: {}\n- evaluation: {}\n- calibration: {}\n",
            p.model, p.evaluation, p.calibration
        );
    }
    md.push_str(&markdown_table(results));
    md.push_str("\nPerplexity: lower is better (3 decimals); accuracy in percent. bits/weight is the honest storage cost of the quantized linears (scales, zeros and indices included), with the method's own figure in parentheses where the study reports one.\n");
    if !plot_lines.is_empty() {
        md.push_str("\nPlots (one line per method; the full-precision baseline dashed):\n\n");
        md.push_str(&plot_lines);
    }
    let write = |name: &str, bytes: &[u8], files: &mut Vec<PathBuf>| -> Result<()> {
        let p = out.join(name);
        qwen3_quant_io::write::write_atomic(&p, bytes)?;
        files.push(p);
        Ok(())
    };
    write("results.md", md.as_bytes(), &mut files)?;
    write("results.csv", csv(results).as_bytes(), &mut files)?;
    let json = serde_json::json!({ "protocol": protocol, "cells": results });
    let json = serde_json::to_string_pretty(&json).map_err(|e| Error::invalid(e.to_string()))?;
    write("results.json", json.as_bytes(), &mut files)?;
    Ok(files)
}

/// One line per series (method and grouping), points sorted by bits.
fn series_of(results: &[CellResult], k: &MetricKey) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for r in results.iter().filter(|r| r.cell.method != SweepMethod::Fp) {
        let Some(v) = r.report.metric(k).filter(|v| v.is_finite()) else {
            continue;
        };
        let y = match k {
            MetricKey::Ppl(_) => v,
            _ => 100.0 * v,
        };
        match out.iter_mut().find(|s| s.name == r.series) {
            Some(s) => s.points.push((r.x_bits, y)),
            None => out.push(Series {
                name: r.series.clone(),
                points: vec![(r.x_bits, y)],
            }),
        }
    }
    for s in &mut out {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}
