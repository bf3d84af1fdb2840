//! From `quantize` arguments to what the driver runs: transforms, then a per-linear quantizer.

use anyhow::bail;
use qwen3_quant_awq::{Awq, AwqConfig};
use qwen3_quant_calib::{Pipeline, SearchCost};
use qwen3_quant_core::{Bits, GroupSize, LayerTransform, QuantScheme, Quantizer, RangeConvention};
use qwen3_quant_gptq::{Gptq, GptqConfig};
use qwen3_quant_rtn::{MseSearch, Rtn, RtnConfig};
use qwen3_quant_smoothquant::{weight_quantizer, SmoothQuant, SmoothQuantConfig};

use qwen3_quant_billm::{Billm, BillmConfig, SalientMetric};
use qwen3_quant_core::ResidualRotation;
use qwen3_quant_rotate::Hadamard;

use crate::args::{AwqThenArg, MethodArg, QuantizeArgs, SalientMetricArg};

/// The owned parts of a [`Pipeline`].
pub struct Plan {
    pub transforms: Vec<Box<dyn LayerTransform>>,
    pub quantizer: Box<dyn Quantizer>,
    /// The candidate search the transforms run (for the cost projection).
    pub search: Option<SearchCost>,
    /// A residual rotation folded in before everything (`--rotate`).
    pub rotation: Option<Hadamard>,
}

impl Plan {
    /// Borrowed transforms, in order (what [`Pipeline::with_transforms`] takes).
    pub fn transform_refs(&self) -> Vec<&dyn LayerTransform> {
        self.transforms.iter().map(|t| t.as_ref()).collect()
    }

    /// The pipeline over `refs` (from [`Plan::transform_refs`]).
    pub fn pipeline<'a>(&'a self, refs: &'a [&'a dyn LayerTransform]) -> Pipeline<'a> {
        let p = Pipeline::new(self.quantizer.as_ref()).with_transforms(refs);
        match &self.rotation {
            Some(r) => p.with_rotation(r),
            None => p,
        }
    }

    /// `awq+rtn`-style name.
    pub fn name(&self) -> String {
        let mut parts: Vec<&str> = self.rotation.iter().map(|r| r.name()).collect();
        parts.extend(self.transforms.iter().map(|t| t.name()));
        parts.push(self.quantizer.name());
        parts.join("+")
    }
}

fn group_of(a: &QuantizeArgs) -> anyhow::Result<GroupSize> {
    Ok(if a.per_channel {
        GroupSize::PerChannel
    } else {
        GroupSize::group(a.group_size)?
    })
}

fn gptq_config(a: &QuantizeArgs, bits: Bits) -> GptqConfig {
    GptqConfig::default()
        .with_bits(bits)
        .with_group_size((!a.per_channel).then_some(a.group_size))
        .with_sym(a.sym)
        .with_act_order(!a.no_act_order)
        .with_true_sequential(!a.no_true_sequential)
        .with_percdamp(a.damp)
        .with_static_groups(a.static_groups)
        .with_mse((a.mse || a.mse_hessian).then(MseSearch::default))
        .with_mse_hessian_weighted(a.mse_hessian)
        .with_asymmetric(a.gptaq)
        .with_refine_passes(a.refine)
        .with_refit_scales(a.refit_scales)
        .with_first_order(a.foem)
}

/// Builds the plan for `--method`, with `--rotate`'s rotation in front.
pub fn build_plan(a: &QuantizeArgs) -> anyhow::Result<Plan> {
    let mut plan = method_plan(a)?;
    if a.gptaq.is_some() && !plan.quantizer.full_precision_targets() {
        bail!("--gptaq applies to GPTQ: --method gptq, --recipe best or --awq-then gptq");
    }
    if a.foem.is_some() && plan.quantizer.name() != "gptq" {
        bail!("--foem applies to GPTQ: --method gptq, --recipe best or --awq-then gptq");
    }
    if a.refine > 0 && plan.quantizer.name() != "gptq" {
        bail!("--refine applies to GPTQ: --method gptq, --recipe best or --awq-then gptq");
    }
    if a.router_refit.is_some() && (a.gptaq.is_none() || a.no_true_sequential) {
        bail!(
            "--router-refit fits the router to the full-precision model's logits: it needs \
             --gptaq and true-sequential calibration"
        );
    }
    if a.norm_refit.is_some() && !plan.quantizer.stats_required().hessian {
        bail!("--norm-refit needs the inputs' Hessians: --method gptq, billm or --recipe best");
    }
    plan.rotation = a.rotate.then(|| Hadamard::new(a.rotate_seed));
    Ok(plan)
}

fn method_plan(a: &QuantizeArgs) -> anyhow::Result<Plan> {
    let bits = Bits::new(a.bits)?;
    let plain = |quantizer: Box<dyn Quantizer>| Plan {
        transforms: Vec::new(),
        quantizer,
        search: None,
        rotation: None,
    };
    match a.method() {
        MethodArg::Rtn => {
            // The reference protocol: per-group RTN uses the group's own min/max (llm-awq),
            // per-channel RTN the GPTQ quantizer (range widened to include 0). Symmetric only
            // exists for the latter.
            let convention = match a.convention.as_deref() {
                Some("gptq") => RangeConvention::Gptq,
                Some("awq") => RangeConvention::Awq,
                Some("absmax") => RangeConvention::AbsMax,
                Some(other) => bail!("unknown --convention {other:?} (gptq, awq or absmax)"),
                None if a.sym || a.per_channel => RangeConvention::Gptq,
                None => RangeConvention::Awq,
            };
            let scheme = QuantScheme::new(bits, group_of(a)?, a.sym, convention)?;
            let mut cfg = RtnConfig::new(scheme);
            if a.mse {
                cfg = cfg.with_mse(MseSearch::default());
            }
            Ok(plain(Box::new(Rtn::new(cfg)?)))
        }
        MethodArg::Gptq => Ok(plain(Box::new(Gptq::new(gptq_config(a, bits))?))),
        MethodArg::Awq => {
            // AWQ's min/max convention for asymmetric grids (the reference); symmetric grids
            // use the GPTQ quantizer's (the reference has no symmetric AWQ).
            let convention = if a.sym {
                RangeConvention::Gptq
            } else {
                RangeConvention::Awq
            };
            let scheme = QuantScheme::new(bits, group_of(a)?, a.sym, convention)?;
            let mut cfg = AwqConfig::with_scheme(scheme);
            cfg.grid = a.awq_grid;
            cfg.search_scales = !a.no_scale_search;
            cfg.clip = !a.no_clip;
            cfg.scale_v_o_gqa = a.awq_vo_gqa;
            let awq = Awq::new(cfg)?;
            let quantizer: Box<dyn Quantizer> = match a.awq_then {
                AwqThenArg::Rtn => Box::new(awq.quantizer()?),
                AwqThenArg::Gptq => Box::new(Gptq::new(gptq_config(a, bits))?),
            };
            let search = SearchCost {
                grid: if cfg.search_scales { cfg.grid } else { 0 },
                clip_steps: if cfg.clip {
                    ((cfg.max_shrink as f64) * cfg.clip_grid as f64) as usize
                } else {
                    0
                },
                clip_samples: cfg.clip_samples,
            };
            Ok(Plan {
                transforms: vec![Box::new(awq)],
                quantizer,
                search: Some(search),
                rotation: None,
            })
        }
        MethodArg::Smoothquant => {
            let quantizer = Box::new(weight_quantizer(bits)?);
            if a.no_smooth {
                // The study's code: per-channel weights and per-token activations, no smoothing.
                return Ok(plain(quantizer));
            }
            let mut cfg = SmoothQuantConfig::with_alpha(a.alpha);
            cfg.smooth_o = a.smooth_o;
            cfg.smooth_down = a.smooth_down;
            Ok(Plan {
                transforms: vec![Box::new(SmoothQuant::new(cfg)?)],
                quantizer,
                search: None,
                rotation: None,
            })
        }
        MethodArg::Billm => Ok(plain(Box::new(Billm::new(billm_config(a)?)?))),
    }
}

/// BiLLM's configuration: the reference command (`braq`, blocks of 128, Hessian saliency) plus
/// the fixes asked for with `--billm-fix`.
fn billm_config(a: &QuantizeArgs) -> anyhow::Result<BillmConfig> {
    let mut cfg = BillmConfig::default()
        .with_block_size(a.blocksize)
        .with_salient_metric(match a.salient_metric {
            SalientMetricArg::Hessian => SalientMetric::Hessian,
            SalientMetricArg::Magnitude => SalientMetric::Magnitude,
        })
        .with_percdamp(a.damp);
    for fix in &a.billm_fix {
        match fix.trim() {
            "weights" => cfg.search_on_weights = true,
            "quantiles" => cfg.quantiles_over_non_salient = true,
            "intra" => cfg.intra_block_feedback = true,
            "" => {}
            other => bail!("unknown --billm-fix {other:?} (weights, quantiles or intra)"),
        }
    }
    Ok(cfg)
}
