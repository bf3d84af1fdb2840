//! `qwen3-quant sweep`: the study's grid through `qwen3_quant::sweep`, and `sweep --merge`.

use std::path::Path;

use anyhow::{bail, Context};
use qwen3_quant::sweep::{self, Grid, Shard, SweepMethod, SweepOptions, SweepSummary};
use qwen3_quant::{Calibration, ConsoleProgress, Evaluation, NoProgress, ProgressSink};
use qwen3_quant_eval::data::{read_text, read_token_tensor};
use qwen3_quant_model::Tokenizer;
use serde_json::json;

use crate::args::SweepArgs;
use crate::eval_cmd::data_dir;
use crate::output::print_json;

fn grid_of(a: &SweepArgs) -> anyhow::Result<Grid> {
    let methods = a
        .methods
        .iter()
        .map(|m| {
            SweepMethod::parse(m).with_context(|| {
                format!(
                    "unknown method {m:?}: expected rtn, gptq, awq, awqgptq, smoothquant, billm, gptqmse, awqgptqmse, hadgptq, hadgptqmse, gptqfoem or best"
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let groups = a
        .groups
        .iter()
        .map(|g| match g.as_str() {
            "pc" | "per-channel" | "-1" => Ok(None),
            n => n
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .map(Some)
                .with_context(|| format!("bad group size {g:?}: a positive number or pc")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut grid = Grid::named(&a.grid)?.filter(&methods, &a.bits, &groups);
    if a.no_baseline {
        grid = grid.without_baseline();
    }
    if grid.cells().is_empty() {
        bail!("the grid is empty after --methods/--bits/--groups");
    }
    Ok(grid)
}

/// Whether the bundled `docs` token ids were made with this model's tokenizer (the micro models'):
/// the first 200 characters of the text must encode to the start of the shipped ids.
fn docs_match(model: &Path, data: &Path) -> bool {
    let check = || -> anyhow::Result<bool> {
        let tok = Tokenizer::from_dir(model)?;
        let text = read_text(&data.join("docs/valid.txt"))?;
        let cut = text.char_indices().nth(200).map_or(text.len(), |(i, _)| i);
        let ids = tok.encode(&text[..cut])?;
        let shipped = read_token_tensor(&data.join("docs/docs.tokens.safetensors"), "valid")?;
        // The last token of the cut may merge differently with what follows.
        let n = ids.len().saturating_sub(2);
        Ok(n > 10 && shipped.len() >= n && ids[..n] == shipped[..n])
    };
    check().unwrap_or(false)
}

fn calibration_of(a: &SweepArgs, data: &Path) -> Calibration {
    let c = match a.calib.as_str() {
        "c4" => Calibration::c4(),
        "docs" => Calibration::docs(),
        "wikitext2" => Calibration::wikitext2(),
        path => Calibration::text_file(path),
    }
    .windows(a.samples, a.calib_seq_len)
    .data_dir(data);
    match a.seed {
        Some(s) => c.seed(s),
        None => c,
    }
}

fn progress() -> Box<dyn ProgressSink> {
    if std::env::var_os("QWEN3_QUANT_QUIET").is_some() {
        Box::new(NoProgress)
    } else {
        Box::new(ConsoleProgress::new())
    }
}

fn report(a: &SweepArgs, s: &SweepSummary) -> anyhow::Result<()> {
    if a.json {
        print_json(&json!({
            "out": a.out, "ran": s.ran, "skipped": s.skipped,
            "failed": s.failed.iter().map(|(id, e)| json!({"cell": id, "error": e})).collect::<Vec<_>>(),
            "files": s.files, "cells": s.results,
        }));
    } else {
        println!("{}", sweep::markdown_table(&s.results));
        for f in &s.files {
            eprintln!("wrote {}", f.display());
        }
        if !s.ran.is_empty() || !s.skipped.is_empty() {
            eprintln!(
                "{} cells computed, {} already done",
                s.ran.len(),
                s.skipped.len()
            );
        }
    }
    if !s.failed.is_empty() {
        let list: Vec<String> = s
            .failed
            .iter()
            .map(|(id, e)| format!("{id}: {e}"))
            .collect();
        bail!(
            "{} cells failed (rerun to retry them): {}",
            s.failed.len(),
            list.join("; ")
        );
    }
    Ok(())
}

pub fn run(a: SweepArgs) -> anyhow::Result<()> {
    if !a.merge.is_empty() {
        let s = sweep::merge(&a.merge, &a.out)?;
        return report(&a, &s);
    }
    let Some(model) = a.model.clone() else {
        bail!("--model DIR is required (or --merge DIR...)");
    };
    let data = data_dir(a.data_dir.as_deref())?;
    let grid = grid_of(&a)?;
    let mut datasets = a.dataset.clone();
    if datasets.is_empty() {
        datasets = vec!["wikitext2".into(), "c4".into()];
        if docs_match(&model, &data) {
            datasets.push("docs".into());
        }
    }
    let mut evaluation = Evaluation::perplexity(datasets)
        .seq_len(a.seq_len)
        .batch(a.batch)
        .tasks(a.tasks.iter().cloned())
        .data_dir(&data);
    if let Some(w) = a.windows {
        evaluation = evaluation.windows(w);
    }
    if let Some(l) = a.limit {
        evaluation = evaluation.limit(l);
    }
    if !a.tasks.is_empty() && crate::data_dir::is_embedded(&data) {
        bail!("the zero-shot tasks and MMLU are not embedded in the binary: pass --data-dir DIR");
    }
    let shard = a.shard.as_deref().map(str::parse::<Shard>).transpose()?;
    let opts = SweepOptions {
        grid,
        evaluation,
        calibration: calibration_of(&a, &data),
        shard,
        packed: a.packed,
        search_compute: match a.compute {
            crate::args::ComputeArg::F32 => qwen3_quant::Compute::F32,
            crate::args::ComputeArg::Bf16 => qwen3_quant::Compute::Bf16,
        },
        ..SweepOptions::new(model, &a.out)
    };
    if !a.json {
        let n = match shard {
            Some(s) => opts.grid.shard(s).len(),
            None => opts.grid.cells().len(),
        };
        eprintln!(
            "sweep: {n} cells{}; {}; calibration {}",
            shard.map_or(String::new(), |s| format!(" (shard {s})")),
            opts.evaluation.describe(),
            opts.calibration.describe()
        );
    }
    let s = sweep::run(&opts, progress().as_ref())?;
    report(&a, &s)
}
