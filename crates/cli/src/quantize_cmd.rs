//! `qwen3-quant quantize`.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use qwen3_quant_calib::{
    measure_gemm_gflops, peak_rss_mb, project, quantize_checkpoint, ActivationDtype, DriverOptions,
    QuantizationRun, WeightMode,
};
use qwen3_quant_core::{Bits, GroupSize, QuantScheme, Quantizer, RangeConvention};
use qwen3_quant_gptq::{Gptq, GptqConfig};
use qwen3_quant_io::Checkpoint;
use qwen3_quant_model::{Qwen3Model, Tokenizer};
use qwen3_quant_rtn::{MseSearch, Rtn, RtnConfig};
use serde_json::{json, Value};

use crate::args::{FormatArg, MethodArg, QuantizeArgs};
use crate::calib_source::calibration_set;
use crate::eval_cmd::{data_dir, ppl_of};
use crate::output::print_json;

/// Parses `NAME[:WINDOWS|:all]`.
fn parse_eval_spec(spec: &str) -> anyhow::Result<(String, Option<usize>)> {
    match spec.split_once(':') {
        None => Ok((spec.to_string(), None)),
        Some((n, "all")) => Ok((n.to_string(), None)),
        Some((n, w)) => Ok((
            n.to_string(),
            Some(
                w.parse()
                    .with_context(|| format!("bad window count in --eval {spec}"))?,
            ),
        )),
    }
}

fn build_method(a: &QuantizeArgs) -> anyhow::Result<Box<dyn Quantizer>> {
    let bits = Bits::new(a.bits)?;
    let group = if a.per_channel {
        None
    } else {
        Some(a.group_size)
    };
    match a.method {
        MethodArg::Rtn => {
            // The reference protocol: per-group RTN uses the group's own min/max (llm-awq), per-channel
            // RTN the GPTQ quantizer (range widened to include 0). Symmetric only exists for the latter.
            let convention = match a.convention.as_deref() {
                Some("gptq") => RangeConvention::Gptq,
                Some("awq") => RangeConvention::Awq,
                Some(other) => bail!("unknown --convention {other:?} (gptq or awq)"),
                None if a.sym || a.per_channel => RangeConvention::Gptq,
                None => RangeConvention::Awq,
            };
            let g = match group {
                None => GroupSize::PerChannel,
                Some(g) => GroupSize::group(g)?,
            };
            let scheme = QuantScheme::new(bits, g, a.sym, convention)?;
            let mut cfg = RtnConfig::new(scheme);
            if a.mse {
                cfg = cfg.with_mse(MseSearch::default());
            }
            Ok(Box::new(Rtn::new(cfg)?))
        }
        MethodArg::Gptq => {
            let cfg = GptqConfig {
                bits,
                group_size: group,
                sym: a.sym,
                act_order: !a.no_act_order,
                true_sequential: !a.no_true_sequential,
                percdamp: a.damp,
                static_groups: a.static_groups,
                ..GptqConfig::default()
            };
            Ok(Box::new(Gptq::new(cfg)?))
        }
        MethodArg::Awq | MethodArg::Smoothquant | MethodArg::Billm => {
            bail!(
                "--method {:?} is not available in this build yet (RTN and GPTQ are)",
                a.method
            )
        }
    }
}

pub fn run(a: QuantizeArgs) -> anyhow::Result<()> {
    if a.resume {
        bail!("--resume needs per-layer checkpoints, which this build does not write yet");
    }
    if a.format != FormatArg::Native || a.out.is_some() {
        bail!("writing quantized checkpoints (--out/--format) is not available in this build yet; use --eval to score in process");
    }
    let method = build_method(&a)?;
    let data = data_dir(a.data_dir.as_deref());
    // Layers are streamed from the memory-mapped checkpoint one at a time by the driver.
    let ckpt =
        Checkpoint::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let config = ckpt.config()?;
    let tok = Tokenizer::from_dir(&a.model)?;
    let evals = a
        .eval
        .iter()
        .map(|s| parse_eval_spec(s))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let req = method.stats_required();
    let calib = if req.hessian || req.channel_stats {
        let set = calibration_set(&a.calib, &data, &tok, a.samples, a.seq_len, a.seed)?;
        if !a.json {
            eprintln!("calibration: {} ({} tokens)", set.description, set.tokens());
        }
        Some(set)
    } else {
        None
    };
    // Cost up front: FLOPs, memory and an ETA at this machine's measured GEMM rate.
    let true_seq = a.method == MethodArg::Gptq && !a.no_true_sequential;
    let n_samples = calib.as_ref().map_or(0, |c| c.len());
    let projection = project(&config, n_samples, a.seq_len, req, true_seq);
    let gflops = measure_gemm_gflops();
    let eta = projection.eta_seconds(gflops);
    if !a.json && calib.is_some() {
        eprintln!(
            "projected: {:.2} TFLOP (forward {:.2}, Hessians {:.2}, solves {:.2}), activations {:.2} GB, ETA ~{:.0} s at {:.0} GFLOP/s",
            projection.total_flops / 1e12,
            projection.forward_flops / 1e12,
            projection.stats_flops / 1e12,
            projection.solve_flops / 1e12,
            projection.activation_bytes / 1e9,
            eta,
            gflops
        );
    }
    let opts = DriverOptions {
        progress: std::env::var_os("QWEN3_QUANT_QUIET").is_none(),
        weight_mode: if a.packed {
            WeightMode::Packed
        } else {
            WeightMode::FakeQuant
        },
        activations: if a.bf16_activations {
            ActivationDtype::Bf16
        } else {
            ActivationDtype::F32
        },
        ..DriverOptions::default()
    };
    let (model, run): (Qwen3Model, QuantizationRun) =
        quantize_checkpoint(&ckpt, calib.as_ref(), method.as_ref(), &opts)?;
    let rss = peak_rss_mb();

    let mut eval = serde_json::Map::new();
    for (name, windows) in &evals {
        let r = ppl_of(&model, &tok, name, &data, a.seq_len, *windows, 4)?;
        if !a.json {
            println!(
                "{name}: ppl {:.4} ({} windows x {})",
                r.ppl, r.windows, r.seq_len
            );
        }
        eval.insert(
            name.clone(),
            json!({"ppl": r.ppl, "windows": r.windows, "seq_len": r.seq_len, "seconds": r.seconds}),
        );
    }
    let group_size: Value = if a.per_channel {
        Value::Null
    } else {
        json!(a.group_size)
    };
    let mut expert_tokens = BTreeMap::new();
    for (layer, counts) in &run.expert_tokens {
        expert_tokens.insert(layer.to_string(), counts.clone());
    }
    let report = json!({
        "method": method.name(),
        "bits": a.bits,
        "act_bits": a.act_bits,
        "group_size": group_size,
        "seconds": run.seconds,
        "bits_per_weight": run.bits_per_weight(),
        "peak_rss_mb": rss,
        "out": a.out,
        "weights": if a.packed { "packed" } else { "fake-quant f32" },
        "linear_bytes": model.linear_bytes(),
        "eval": eval,
        "calibration": calib.as_ref().map(|c| json!({"description": c.description, "samples": c.len(), "seq_len": c.seq_len, "tokens": c.tokens()})),
        "expert_tokens": expert_tokens,
        "projection": {"total_flops": projection.total_flops, "forward_flops": projection.forward_flops,
                       "stats_flops": projection.stats_flops, "solve_flops": projection.solve_flops,
                       "activation_bytes": projection.activation_bytes, "gemm_gflops": gflops, "eta_seconds": eta},
        "linears": run.records,
    });
    if a.json {
        print_json(&report);
    } else {
        println!(
            "{}: {} linears in {:.1} s, {:.3} bits/weight, peak RSS {:.0} MB",
            method.name(),
            run.quantized.len(),
            run.seconds,
            run.bits_per_weight(),
            rss.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
