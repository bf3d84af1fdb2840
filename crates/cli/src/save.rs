//! `quantize --out DIR --format native|gptq|awq|compressed-tensors`: writes the quantized model
//! with `qwen3-quant-formats` and tells which serving stacks accept the result.

use anyhow::Context;
use qwen3_quant_calib::QuantizationRun;
use qwen3_quant_formats::{
    write_checkpoint, write_checkpoint_streamed, Format, LayerSource, MethodMeta, ResumeDir,
    WriteOptions, WriteReport,
};
use qwen3_quant_model::Qwen3Model;
use serde_json::{json, Value};

use crate::args::{FormatArg, MethodArg, QuantizeArgs};

fn format_of(f: FormatArg) -> Format {
    match f {
        FormatArg::Native => Format::Native,
        FormatArg::Gptq => Format::Gptq,
        FormatArg::Awq => Format::Awq,
        FormatArg::CompressedTensors => Format::CompressedTensors,
    }
}

/// Refuses, before any work, a `--format` that cannot hold what the options ask for.
pub fn check_args(a: &QuantizeArgs) -> anyhow::Result<()> {
    if a.out.is_none() {
        return Ok(());
    }
    let act_order = a.method() == MethodArg::Gptq && !a.no_act_order;
    match a.format {
        FormatArg::Awq => {
            anyhow::ensure!(
                a.bits == 4,
                "--format awq holds 4-bit weights only (use gptq, compressed-tensors or native)"
            );
            anyhow::ensure!(
                !a.per_channel,
                "--format awq needs --group-size (no per-channel scales)"
            );
            anyhow::ensure!(
                !act_order,
                "--format awq has no act-order: add --no-act-order, or use --format gptq"
            );
            anyhow::ensure!(
                a.method() != MethodArg::Billm,
                "--format awq cannot hold BiLLM binary weights (use native)"
            );
        }
        FormatArg::Gptq | FormatArg::CompressedTensors => {
            anyhow::ensure!(
                a.method() != MethodArg::Billm,
                "--format {:?} cannot hold BiLLM binary weights (use native)",
                a.format
            );
            anyhow::ensure!(
                matches!(a.bits, 2 | 3 | 4 | 8) || a.format == FormatArg::CompressedTensors,
                "--format gptq holds 2, 3, 4 or 8 bits"
            );
        }
        FormatArg::Native => {}
    }
    Ok(())
}

/// Writes `--out` (when given) in `--format`; prints the files, the serving stacks that load
/// them and any warning on stderr. Returns the JSON summary (`null` without `--out`).
pub fn write_output(
    a: &QuantizeArgs,
    model: &Qwen3Model,
    run: &QuantizationRun,
) -> anyhow::Result<Value> {
    let Some(out) = &a.out else {
        return Ok(Value::Null);
    };
    let opts = write_options(a, run);
    let report = write_checkpoint(out, &a.model, model, &run.quantized, &opts)
        .with_context(|| format!("writing {} as {}", out.display(), opts.format.as_str()))?;
    Ok(summarize(report))
}

/// [`write_output`] for a streamed run: the layers come from the run's saved state, one at a
/// time, and the embeddings and `lm_head` from the source checkpoint.
pub fn write_streamed(
    a: &QuantizeArgs,
    ends: &Qwen3Model,
    state: &ResumeDir,
    run: &QuantizationRun,
) -> anyhow::Result<Value> {
    let Some(out) = &a.out else {
        return Ok(Value::Null);
    };
    let opts = write_options(a, run);
    let mut layers = state.saved_layers(&ends.config);
    let report = write_checkpoint_streamed(out, &a.model, ends, &mut layers, &opts)
        .with_context(|| format!("writing {} as {}", out.display(), opts.format.as_str()))?;
    Ok(summarize(report))
}

/// BiLLM's reference bits of a streamed run, read back from its saved layers.
pub fn reference_bits_streamed(
    state: &ResumeDir,
    config: &qwen3_quant_model::ModelConfig,
) -> anyhow::Result<Option<f64>> {
    let mut parts: Vec<(f64, f64)> = Vec::new();
    let mut layers = state.saved_layers(config);
    for i in 0..config.num_hidden_layers {
        layers.with_layer(i, &mut |_, qs| {
            for (_, q) in qs {
                if let Some(b) = q.reference_bits() {
                    parts.push((b, (q.out_features() * q.in_features()) as f64));
                }
            }
            Ok(())
        })?;
    }
    let n: f64 = parts.iter().map(|p| p.1).sum();
    Ok((n > 0.0).then(|| parts.iter().map(|(b, w)| b * w).sum::<f64>() / n))
}

fn write_options(a: &QuantizeArgs, run: &QuantizationRun) -> WriteOptions {
    let mut opts = WriteOptions::new(format_of(a.format));
    opts.meta = MethodMeta {
        method: format!("{:?}", a.method()).to_lowercase(),
        act_bits: a.act_bits,
        true_sequential: Some(!a.no_true_sequential),
        damp_percent: Some(f64::from(a.damp)),
        static_groups: Some(a.static_groups),
        expert_tokens: run.expert_tokens.clone(),
        expert_policy: Some(format!("{:?}", a.expert_policy)),
    };
    opts
}

/// Prints what was written and returns it as JSON.
fn summarize(report: WriteReport) -> Value {
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "wrote {} ({} format, {} files, {:.2} MB of tensors)",
        report.dir.display(),
        report.format.as_str(),
        report.files.len(),
        report.tensor_file_bytes as f64 / 1e6
    );
    for s in &report.serving {
        eprintln!("  serving: {s}");
    }
    json!({
        "dir": report.dir, "format": report.format.as_str(), "files": report.files,
        "tensor_file_bytes": report.tensor_file_bytes, "serving": report.serving, "warnings": report.warnings,
    })
}
