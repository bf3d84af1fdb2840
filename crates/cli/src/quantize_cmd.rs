//! `qwen3-quant quantize`.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use qwen3_quant_calib::{
    measure_gemm_gflops, peak_rss_mb, project, quantize_checkpoint_resumable,
    quantize_checkpoint_streamed, quantize_checkpoint_with, ActivationDtype, CalibrationSet,
    DriverOptions, QuantizationRun, SubBlockInputs, WeightMode,
};
use qwen3_quant_formats::{Fingerprint, ResumeDir};
use qwen3_quant_io::Checkpoint;
use qwen3_quant_model::{ActExecution, Qwen3Model, Tokenizer};
use serde_json::{json, Value};

use crate::args::{ActExecArg, ComputeArg, FormatArg, MethodArg, QuantizeArgs, SubBlockInputsArg};
use crate::calib_source::calibration_set;
use crate::eval_cmd::{data_dir, ppl_of};
use crate::output::print_json;
use crate::plan::build_plan;

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

/// Fills in the options of `--recipe`: `best` is GPTQ with act-order, static groups, the range
/// search of the group parameters, dampening 0.05, asymmetric calibration (`--gptaq 1`) and the
/// refinement of the codes and scales (`GptqConfig::recipe_best`, the best 2- and 3-bit
/// combination measured in docs/beyond-the-study.md); the recipe's settings replace `--damp`,
/// `--static-groups`, `--mse`, `--gptaq`, `--refine` and `--refit-scales`.
fn apply_recipe(a: &mut QuantizeArgs) -> anyhow::Result<()> {
    let Some(name) = a.recipe.as_deref() else {
        return Ok(());
    };
    match name {
        "best" => {
            if a.method.is_some_and(|m| m != MethodArg::Gptq) {
                bail!("--recipe best is GPTQ-based: leave out --method or pass --method gptq");
            }
            let r = qwen3_quant_gptq::GptqConfig::recipe_best();
            a.method = Some(MethodArg::Gptq);
            a.no_act_order = !r.act_order;
            a.static_groups = r.static_groups;
            a.damp = r.percdamp;
            a.no_true_sequential = !r.true_sequential;
            a.mse = r.mse.is_some();
            a.mse_hessian = r.mse_hessian_weighted;
            a.refine = r.refine_passes;
            a.refit_scales = r.refit_scales;
            a.gptaq = r.asymmetric;
            Ok(())
        }
        other => bail!("unknown --recipe {other:?}: expected best"),
    }
}

/// What a saved state must match to be resumed: the model's files, the calibration windows,
/// every option that changes the quantized layers, and this program's version.
fn fingerprint(a: &QuantizeArgs, calib: Option<&CalibrationSet>) -> anyhow::Result<Fingerprint> {
    // Options that only change where the result goes or what is printed are left out, so that
    // a run may be resumed into another format, from a moved model or with another --eval.
    let mut m = a.clone();
    m.out = None;
    m.eval.clear();
    m.data_dir = None;
    m.model = Default::default();
    m.format = FormatArg::Native;
    m.resume = false;
    m.json = false;
    m.act_exec = ActExecArg::Auto;
    // Memory options choose between keeping and recomputing buffers, not the arithmetic.
    m.memory_budget_mb = None;
    m.sub_block_inputs = SubBlockInputsArg::Auto;
    let method = format!("{m:?}");
    Ok(Fingerprint::new()
        .with("model", Fingerprint::model_digest(&a.model)?)
        .with(
            "calibration",
            calib.map_or("none".to_string(), |c| {
                format!("{:016x} ({} x {})", c.fingerprint(), c.len(), c.seq_len)
            }),
        )
        .with(
            "method",
            qwen3_quant_formats::resume::digest(method.as_bytes()),
        )
        .with("version", env!("CARGO_PKG_VERSION")))
}

/// The per-layer state beside `out`: continued with --resume, else started afresh.
fn open_state(
    a: &QuantizeArgs,
    out: &std::path::Path,
    calib: Option<&CalibrationSet>,
) -> anyhow::Result<ResumeDir> {
    let fp = fingerprint(a, calib)?;
    let dir = ResumeDir::beside(out);
    let state = if a.resume {
        let s = ResumeDir::open(&dir, &fp)?;
        if s.layers_done() == 0 {
            eprintln!(
                "resume: no finished layer saved in {}; starting at layer 0",
                dir.display()
            );
        } else {
            eprintln!(
                "resume: {} finished layers in {}",
                s.layers_done(),
                dir.display()
            );
        }
        s
    } else {
        if dir.exists() {
            eprintln!(
                "note: discarding the saved state of an interrupted run in {} (pass --resume to continue it)",
                dir.display()
            );
        }
        ResumeDir::create(&dir, &fp)?
    };
    Ok(state)
}

pub fn run(mut a: QuantizeArgs) -> anyhow::Result<()> {
    apply_recipe(&mut a)?;
    if a.resume && a.out.is_none() {
        bail!("--resume continues a run that wrote to --out: pass the same --out DIR");
    }
    crate::save::check_args(&a)?;
    if let Some(out) = &a.out {
        // Before any work: never write into the input, never over an existing checkpoint.
        qwen3_quant_formats::check_output_dir(out, &a.model, false)?;
    }
    let plan = build_plan(&a)?;
    let method = plan.quantizer.as_ref();
    let data = data_dir(a.data_dir.as_deref())?;
    // Layers are streamed from the memory-mapped checkpoint one at a time by the driver.
    let ckpt =
        Checkpoint::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let config = ckpt.config()?;
    let evals = a
        .eval
        .iter()
        .map(|s| parse_eval_spec(s))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let req = method.stats_required();
    let needs_calib = req.hessian || req.channel_stats || !plan.transforms.is_empty();
    // Only calibration and evaluation tokenize: the tokenizer (about 90 MB for Qwen3's) is
    // loaded for them and not held through a run that no longer needs it.
    let tok = (needs_calib || !evals.is_empty())
        .then(|| Tokenizer::from_dir(&a.model))
        .transpose()?;
    let calib = if needs_calib {
        let tok = tok.as_ref().context("tokenizer not loaded")?;
        let set = calibration_set(&a.calib, &data, tok, a.samples, a.seq_len, a.seed)?;
        if !a.json {
            eprintln!("calibration: {} ({} tokens)", set.description, set.tokens());
        }
        Some(set)
    } else {
        None
    };
    let tok = if evals.is_empty() { None } else { tok };
    // Cost up front: FLOPs, memory and an ETA at this machine's measured GEMM rate.
    let true_seq = method.true_sequential();
    let n_samples = calib.as_ref().map_or(0, |c| c.len());
    let mut projection = project(&config, n_samples, a.seq_len, req, true_seq);
    if let Some(search) = plan.search {
        projection = projection.with_search(&config, n_samples, a.seq_len, search);
    }
    let gflops = measure_gemm_gflops();
    let eta = projection.eta_seconds(gflops);
    // On stderr also with --json (stdout carries only the JSON object), unless quiet.
    if calib.is_some() && std::env::var_os("QWEN3_QUANT_QUIET").is_none() {
        eprintln!(
            "projected: {:.2} TFLOP (forward {:.2}, Hessians {:.2}, solves {:.2}, search {:.2}), activations {:.2} GB, ETA ~{:.0} s at {:.0} GFLOP/s",
            projection.total_flops / 1e12,
            projection.forward_flops / 1e12,
            projection.stats_flops / 1e12,
            projection.solve_flops / 1e12,
            projection.search_flops / 1e12,
            projection.activation_bytes / 1e9,
            eta,
            gflops
        );
    }
    if let Some(r) = a.norm_refit {
        if !(r.is_finite() && r >= 0.0) {
            bail!("--norm-refit {r}: the ridge must be a finite number ≥ 0");
        }
    }
    if let Some(r) = a.router_refit {
        if !(r.is_finite() && r > 0.0) {
            bail!("--router-refit {r}: the dampening must be a finite number > 0");
        }
    }
    let opts = DriverOptions::default()
        .with_progress(std::env::var_os("QWEN3_QUANT_QUIET").is_none())
        .with_weight_mode(if a.packed {
            WeightMode::Packed
        } else {
            WeightMode::FakeQuant
        })
        .with_activations(if a.bf16_activations {
            ActivationDtype::Bf16
        } else {
            ActivationDtype::F32
        })
        .with_expert_policy(a.expert_policy)
        .with_routing_weighted(a.routing_weighted)
        .with_norm_refit(a.norm_refit)
        .with_router_refit(a.router_refit)
        .with_memory_budget(a.memory_budget_mb.map(|mb| mb * 1_000_000))
        .with_sub_block_inputs(match a.sub_block_inputs {
            SubBlockInputsArg::Auto => SubBlockInputs::Auto,
            SubBlockInputsArg::Keep => SubBlockInputs::Keep,
            SubBlockInputsArg::Recompute => SubBlockInputs::Recompute,
        });
    let refs = plan.transform_refs();
    let pipeline = plan.pipeline(&refs);
    qwen3_quant_kernels::dense::set_compute(match a.compute {
        ComputeArg::F32 => qwen3_quant_kernels::dense::Compute::F32,
        ComputeArg::Bf16 => qwen3_quant_kernels::dense::Compute::Bf16,
    });
    if let Some(out) = &a.out {
        // The checkpoint and the resume state beside it, before any work.
        let bpw = match a.method() {
            MethodArg::Billm => 3.0,
            _ if a.per_channel => f64::from(a.bits) + 0.1,
            _ => f64::from(a.bits) + 32.0 / a.group_size.max(1) as f64,
        };
        let act = if calib.is_some() {
            projection.activation_bytes as u64
        } else {
            0
        };
        qwen3_quant_formats::check_space_for_run(out, &a.model, bpw, act)?;
    }
    // With --out, every finished layer is saved beside it so that --resume can continue.
    let mut state = match &a.out {
        Some(out) => Some(open_state(&a, out, calib.as_ref())?),
        None => None,
    };
    let resumed_layers = state.as_ref().map_or(0, ResumeDir::layers_done);
    // Nothing needs the quantized model in this process (no --eval, no activation
    // quantization): stream it, one layer resident at a time, and write --out from the state.
    let streamed = state.is_some() && a.eval.is_empty() && a.act_bits.is_none() && !a.rotate;
    let quantized = match state.as_mut() {
        Some(s) if streamed => {
            quantize_checkpoint_streamed(&ckpt, calib.as_ref(), &pipeline, &opts, s)
        }
        Some(s) => quantize_checkpoint_resumable(&ckpt, calib.as_ref(), &pipeline, &opts, s),
        None => quantize_checkpoint_with(&ckpt, calib.as_ref(), &pipeline, &opts),
    };
    // The evaluation (and anything after) is exact f32 whatever the search used.
    qwen3_quant_kernels::dense::set_compute(qwen3_quant_kernels::dense::Compute::F32);
    let (model, run): (Qwen3Model, QuantizationRun) = quantized?;
    let saved = match (&state, streamed) {
        (Some(s), true) => crate::save::write_streamed(&a, &model, s, &run)?,
        _ => crate::save::write_output(&a, &model, &run)?,
    };
    // The peak includes writing the output.
    let rss = peak_rss_mb();
    let reference_bits = match (&state, streamed) {
        (Some(s), true) => crate::save::reference_bits_streamed(s, &model.config)?,
        _ => qwen3_quant_billm::reference_bits(run.quantized.iter().map(|(_, q)| q)),
    };
    let state_report = state.as_ref().map(|s| {
        json!({"dir": s.dir(), "resumed_layers": resumed_layers, "save_seconds": s.save_seconds(),
               "bytes_saved": s.bytes_saved()})
    });
    if let Some(s) = state {
        let dir = s.dir().to_path_buf();
        s.finish()
            .with_context(|| format!("removing the resume state {}", dir.display()))?;
    }
    // Weight-activation settings: per-token activation quantization of every decoder linear, as
    // int8 products where the weights allow it (W8A8, W4A8 per-channel symmetric), else fake.
    let mut model = model;
    let activations = match a.act_bits {
        None => None,
        Some(bits) => {
            let summary = match a.act_exec {
                ActExecArg::Auto => model.quantize_activations_best(bits)?,
                ActExecArg::Integer => model.quantize_activations(bits, ActExecution::Integer)?,
                ActExecArg::Fake => model.quantize_activations(bits, ActExecution::Fake)?,
            };
            if !a.json {
                eprintln!("activations: {summary}");
            }
            Some(summary)
        }
    };

    let mut eval = serde_json::Map::new();
    for (name, windows) in &evals {
        let tok = tok.as_ref().context("tokenizer not loaded")?;
        let r = ppl_of(&model, tok, name, &data, a.seq_len, *windows, 4)?;
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
        "method": format!("{:?}", a.method()).to_lowercase(),
        "pipeline": plan.name(),
        "recipe": a.recipe,
        "compute": format!("{:?}", a.compute).to_lowercase(),
        "bits": a.bits,
        "act_bits": a.act_bits,
        "activations": activations.as_ref().map(|s| json!({
            "summary": s.to_string(),
            "execution": match s.execution() {
                Some(ActExecution::Integer) => "integer",
                Some(ActExecution::Fake) => "fake",
                _ => "mixed",
            },
        })),
        "group_size": group_size,
        "seconds": run.seconds,
        "bits_per_weight": run.bits_per_weight(),
        "reference_bits": reference_bits,
        "peak_rss_mb": rss,
        "out": a.out,
        "resumed_layers": resumed_layers,
        "resume_state": state_report,
        "checkpoint": saved,
        "weights": if a.packed { "packed" } else { "fake-quant f32" },
        "linear_bytes": (!streamed).then(|| model.linear_bytes()),
        "streamed": streamed,
        "eval": eval,
        "calibration": calib.as_ref().map(|c| json!({"description": c.description, "samples": c.len(), "seq_len": c.seq_len, "tokens": c.tokens()})),
        "expert_tokens": expert_tokens,
        "expert_policy": format!("{:?}", a.expert_policy),
        "routing_weighted": a.routing_weighted,
        "norm_refit": a.norm_refit,
        "router_refit": a.router_refit,
        "projection": {"total_flops": projection.total_flops, "forward_flops": projection.forward_flops,
                       "stats_flops": projection.stats_flops, "solve_flops": projection.solve_flops, "search_flops": projection.search_flops,
                       "activation_bytes": projection.activation_bytes, "gemm_gflops": gflops, "eta_seconds": eta},
        "linears": run.records,
        "transforms": run.transforms,
    });
    if a.json {
        print_json(&report);
    } else {
        println!(
            "{}: {} linears in {:.1} s, {:.3} bits/weight, peak RSS {:.0} MB",
            plan.name(),
            run.quantized.len(),
            run.seconds,
            run.bits_per_weight(),
            rss.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
