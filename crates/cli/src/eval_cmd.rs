//! `qwen3-quant eval`: perplexity, zero-shot tasks and MMLU, with the JSON of the CLI contract.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use qwen3_quant_eval::{
    evaluate_ppl, load_dataset, run_mmlu, run_task, Dataset, EvalReport, LanguageModel,
    MmluOptions, PplOptions, PplResult, Progress, Task, TaskOptions,
};
use qwen3_quant_formats::{load_model, GptqZeros, LoadOptions};
use qwen3_quant_model::{Qwen3Model, Tokenizer};

use crate::args::{ComputeArg, EvalArgs};
use crate::output::print_json;

/// The data folder: `--data-dir`/`QWEN3_QUANT_DATA`, the source tree's or an installed
/// `assets/data`, else the sets embedded in the binary (see `data_dir.rs`).
pub fn data_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    crate::data_dir::data_dir(explicit)
}

/// Progress bars unless the output must stay machine-readable and quiet.
pub fn progress() -> Progress {
    if std::env::var_os("QWEN3_QUANT_QUIET").is_some() {
        Progress::Hidden
    } else {
        Progress::Bar
    }
}

/// Perplexity of one dataset with the GPTQ protocol.
pub fn ppl_of(
    model: &dyn LanguageModel,
    tok: &Tokenizer,
    name: &str,
    data: &Path,
    seq_len: usize,
    windows: Option<usize>,
    batch: usize,
) -> anyhow::Result<PplResult> {
    let dataset = Dataset::parse(name);
    if let Dataset::TextFile(p) = &dataset {
        if !p.is_file() {
            bail!("unknown dataset {name:?}: expected docs, wikitext2, wikitext2-raw, c4 or a text file");
        }
    }
    let loaded = load_dataset(&dataset, data, Some(tok))
        .with_context(|| format!("loading dataset {name}"))?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let opts = PplOptions::default()
        .with_seq_len(seq_len)
        .with_max_windows(windows.or(dataset.default_max_windows()))
        .with_batch_size(batch)
        .with_stride(None);
    Ok(evaluate_ppl(model, &loaded.ids, &opts, progress())?)
}

/// Loads any checkpoint this project reads (full precision, GPTQ v1/v2, AWQ, compressed-tensors,
/// native) with the quantized linears packed; notes go to stderr. `QWEN3_QUANT_GPTQ_ZEROS=v1|v2`
/// forces the GPTQ zero convention of a mislabeled file.
pub fn load_any(dir: &Path) -> anyhow::Result<Qwen3Model> {
    let gptq_zeros = match std::env::var("QWEN3_QUANT_GPTQ_ZEROS").ok().as_deref() {
        None | Some("") => None,
        Some("v1") => Some(GptqZeros::V1),
        Some("v2") => Some(GptqZeros::V2),
        Some(other) => bail!("QWEN3_QUANT_GPTQ_ZEROS={other:?}: expected v1 or v2"),
    };
    let loaded = load_model(dir, &LoadOptions::default().with_gptq_zeros(gptq_zeros))
        .with_context(|| format!("loading {}", dir.display()))?;
    if let Some(q) = &loaded.quant {
        eprintln!(
            "{}: {} checkpoint, {} linears packed",
            dir.display(),
            q.format_name(),
            loaded.packed_linears
        );
    }
    for n in &loaded.notes {
        eprintln!("note: {n}");
    }
    Ok(loaded.model)
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    qwen3_quant_kernels::dense::set_compute(match a.compute {
        ComputeArg::F32 => qwen3_quant_kernels::dense::Compute::F32,
        ComputeArg::Bf16 => qwen3_quant_kernels::dense::Compute::Bf16,
    });
    if a.int8_activations {
        qwen3_quant_kernels::set_prefill_int8(Some(true));
    }
    let model = load_any(&a.model)?;
    let tok = Tokenizer::from_dir(&a.model)
        .with_context(|| format!("loading the tokenizer of {}", a.model.display()))?;
    let data = data_dir(a.data_dir.as_deref())?;
    if !a.tasks.is_empty() && crate::data_dir::is_embedded(&data) {
        bail!(
            "the zero-shot tasks and MMLU are not embedded in the binary: pass --data-dir DIR (or set QWEN3_QUANT_DATA) to a copy of the repository's assets/data"
        );
    }
    let mut datasets = a.dataset.clone();
    if datasets.is_empty() && a.tasks.is_empty() {
        datasets.push("wikitext2".into());
    }
    let mut report = EvalReport::new(a.model.display().to_string());
    for name in &datasets {
        let r = ppl_of(&model, &tok, name, &data, a.seq_len, a.windows, a.batch)?;
        if !a.json {
            println!(
                "{name}: ppl {:.4} ({} windows x {}, {:.1} tokens/s)",
                r.ppl, r.windows, r.seq_len, r.tokens_per_s
            );
        }
        report.add_ppl(name.clone(), r);
    }
    for name in &a.tasks {
        if name == "mmlu" {
            let opts = MmluOptions::default()
                .with_limit_per_subject(a.limit)
                .with_batch_size(a.batch);
            let r = run_mmlu(&model, &tok, &data.join("tasks/mmlu"), &opts, progress())?;
            if !a.json {
                println!("mmlu: acc {:.4} ({} questions)", r.acc, r.n);
            }
            report.add_mmlu(&r);
            continue;
        }
        let task = Task::parse(name).with_context(|| {
            format!("unknown task {name:?}: expected piqa, arc_easy, arc_challenge, hellaswag, winogrande, boolq, openbookqa or mmlu")
        })?;
        let opts = TaskOptions::default()
            .with_limit(a.limit)
            .with_batch_size(a.batch.max(1))
            .with_max_length(a.seq_len)
            .with_eot_token_id(model.config.eos_token_ids.first().copied());
        let r = run_task(&model, &tok, task, &data, &opts, progress())?;
        if !a.json {
            match r.acc_norm {
                Some(n) => println!(
                    "{name}: acc {:.4}  acc_norm {:.4}  (n = {}, {:.1} s)",
                    r.acc, n, r.n, r.seconds
                ),
                None => println!(
                    "{name}: acc {:.4}  (n = {}, {:.1} s)",
                    r.acc, r.n, r.seconds
                ),
            }
        }
        report.add_task(&r);
    }
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        // What was asked for: a CPU without an int8 GEMM for the codes keeps f32 activations.
        v["int8_activations"] = qwen3_quant_kernels::prefill_int8().into();
        print_json(&v);
    }
    Ok(())
}
