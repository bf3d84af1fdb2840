//! Evaluate a model directory on perplexity datasets and zero-shot / MMLU tasks, and write the
//! report as JSON, Markdown and CSV.
//!
//! ```text
//! cargo run --release --example evaluate -- [MODEL_DIR] [ITEM...] [--limit N] [--out DIR]
//! cargo run --release --example evaluate -- assets/models/qwen3-micro docs piqa mmlu --limit 20
//! ```
//!
//! `MODEL_DIR` defaults to the bundled qwen3-micro; an `ITEM` is a task (`piqa`, `arc_easy`,
//! `arc_challenge`, `hellaswag`, `winogrande`, `boolq`, `openbookqa`, `mmlu`) or a perplexity dataset
//! (`docs`, `wikitext2`, `wikitext2-raw`, `c4`, a text file); default `docs piqa`. `--limit` caps
//! the documents per task (questions per subject for MMLU). `--out` defaults to a temporary folder.

use std::path::PathBuf;

use qwen3_quant::{eval, model};

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut positional, mut limit, mut out) = (Vec::new(), None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--limit" => {
                limit = Some(
                    args.next()
                        .ok_or("--limit needs a value")?
                        .parse::<usize>()?,
                )
            }
            "--out" => out = Some(PathBuf::from(args.next().ok_or("--out needs a value")?)),
            _ => positional.push(a),
        }
    }
    let dir = match positional.first() {
        Some(d) if std::path::Path::new(d).join("config.json").is_file() => {
            PathBuf::from(positional.remove(0))
        }
        _ => PathBuf::from(format!("{ASSETS}/models/qwen3-micro")),
    };
    if positional.is_empty() {
        positional = vec!["docs".into(), "piqa".into()];
    }
    let out = out.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("qwen3-quant-evaluate-{}", std::process::id()))
    });
    std::fs::create_dir_all(&out)?;

    let m = model::Qwen3Model::load(&dir)?;
    let tok = model::Tokenizer::from_dir(&dir)?;
    let data = eval::default_data_dir();
    let mut report = eval::EvalReport::new(dir.display().to_string());
    for item in &positional {
        if item == "mmlu" {
            let opts = eval::MmluOptions::default().with_limit_per_subject(limit);
            let r = eval::run_mmlu(
                &m,
                &tok,
                &data.join("tasks/mmlu"),
                &opts,
                eval::Progress::Bar,
            )?;
            println!("mmlu: acc {:.4} (n = {})", r.acc, r.n);
            report.add_mmlu(&r);
        } else if let Some(task) = eval::Task::parse(item) {
            let opts = eval::TaskOptions::default()
                .with_limit(limit)
                .with_eot_token_id(m.config.eos_token_ids.first().copied());
            let r = eval::run_task(&m, &tok, task, &data, &opts, eval::Progress::Bar)?;
            println!(
                "{item}: acc {:.4} acc_norm {:?} (n = {}, {:.1} s)",
                r.acc, r.acc_norm, r.n, r.seconds
            );
            report.add_task(&r);
        } else {
            let dataset = eval::Dataset::parse(item);
            let ids = eval::load_dataset(&dataset, &data, Some(&tok))?.ids;
            let opts = eval::PplOptions::default().with_max_windows(dataset.default_max_windows());
            let r = eval::evaluate_ppl(&m, &ids, &opts, eval::Progress::Bar)?;
            println!(
                "{item}: ppl {:.4} ({} windows x {}, {:.0} tokens/s)",
                r.ppl, r.windows, r.seq_len, r.tokens_per_s
            );
            report.add_ppl(item.clone(), r);
        }
    }

    let (json, md, csv) = (
        out.join("report.json"),
        out.join("report.md"),
        out.join("report.csv"),
    );
    report.write_json(&json)?;
    report.write_markdown(&md)?;
    let label = dir
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    // The CSV is a one-row sweep table; its `bits` column says 16 (a bf16 checkpoint such as qwen3-micro).
    let entry = eval::SweepEntry {
        method: "model".into(),
        bits: 16.0,
        label,
        report,
    };
    eval::report::write_sweep_csv(&[entry], &csv)?;
    for p in [json, md, csv] {
        println!("wrote {}", p.display());
    }
    Ok(())
}
