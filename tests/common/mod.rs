//! Shared helpers of the end-to-end tests: the bundled model and data, perplexity with the
//! protocol of `assets/golden/reference_ppl.json`.

#![allow(dead_code)]

use qwen3_quant::eval::{self, data::read_token_tensor, PplOptions, Progress};
use qwen3_quant::model::{Qwen3Model, Tokenizer};

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
pub const ASSETS: qwen3_quant::io::assets::Folder = qwen3_quant::io::assets::Folder;

pub fn micro() -> Qwen3Model {
    Qwen3Model::load(format!("{ASSETS}/models/qwen3-micro")).unwrap()
}

pub fn docs(split: &str) -> Vec<u32> {
    read_token_tensor(
        format!("{ASSETS}/data/docs/docs.tokens.safetensors").as_ref(),
        split,
    )
    .unwrap()
}

pub fn wiki2_ids() -> Vec<u32> {
    let tok = Tokenizer::from_dir(format!("{ASSETS}/models/qwen3-micro")).unwrap();
    let loaded = eval::load_dataset(
        &eval::Dataset::WikiText2,
        format!("{ASSETS}/data").as_ref(),
        Some(&tok),
    )
    .unwrap();
    loaded.ids
}

/// Perplexity over the first `windows` windows of 1024 tokens.
pub fn ppl(model: &Qwen3Model, ids: &[u32], windows: usize) -> f64 {
    let opts = PplOptions::default()
        .with_seq_len(1024)
        .with_max_windows(Some(windows))
        .with_batch_size(4)
        .with_stride(None);
    eval::evaluate_ppl(model, ids, &opts, Progress::Hidden)
        .unwrap()
        .ppl
}

pub fn reference(key: &str, metric: &str) -> f64 {
    let text = std::fs::read_to_string(format!("{ASSETS}/golden/reference_ppl.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["ppl"][key][metric].as_f64().unwrap()
}

/// Relative difference `a / b − 1`.
pub fn rel(a: f64, b: f64) -> f64 {
    a / b - 1.0
}

/// A method that records the Hessian (and token count) it is handed for every linear and
/// quantizes with RTN 3-bit g128 (so quantized and full-precision activations differ clearly):
/// lets a test replay the driver's calibration order with the layer API.
pub struct HessianProbe {
    rtn: qwen3_quant::rtn::Rtn,
    true_sequential: bool,
    /// What each linear was handed: routed tokens and Hessian.
    pub seen: std::sync::Mutex<
        std::collections::HashMap<qwen3_quant::core::LinearId, (usize, qwen3_quant::core::Hessian)>,
    >,
}

impl HessianProbe {
    pub fn new(true_sequential: bool) -> Self {
        use qwen3_quant::core::{Bits, GroupSize, QuantScheme, RangeConvention};
        let scheme = QuantScheme::new(
            Bits::new(3).unwrap(),
            GroupSize::group(128).unwrap(),
            false,
            RangeConvention::Gptq,
        )
        .unwrap();
        HessianProbe {
            rtn: qwen3_quant::rtn::Rtn::new(qwen3_quant::rtn::RtnConfig::new(scheme)).unwrap(),
            true_sequential,
            seen: Default::default(),
        }
    }
}

/// Hessians only.
pub fn hessian_request() -> qwen3_quant::core::StatsRequest {
    qwen3_quant::core::StatsRequest {
        hessian: true,
        channel_stats: false,
    }
}

impl qwen3_quant::core::Quantizer for HessianProbe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn stats_required(&self) -> qwen3_quant::core::StatsRequest {
        hessian_request()
    }
    fn propagation(&self) -> qwen3_quant::core::Propagation {
        qwen3_quant::core::Propagation::Quantized
    }
    fn true_sequential(&self) -> bool {
        self.true_sequential
    }
    fn quantize_linear(
        &self,
        input: qwen3_quant::core::LinearInput<'_>,
        stats: &qwen3_quant::core::LinearStats,
    ) -> Result<qwen3_quant::core::QuantOutcome, qwen3_quant::core::MethodError> {
        let h = stats.hessian.clone().expect("hessian requested");
        self.seen
            .lock()
            .unwrap()
            .insert(input.id, (stats.tokens, h));
        self.rtn.quantize_linear(input, stats)
    }
}

/// `‖a − b‖ / ‖b‖` of two Hessians (their scaled forms).
pub fn hessian_rel_diff(a: &qwen3_quant::core::Hessian, b: &qwen3_quant::core::Hessian) -> f64 {
    let (a, b) = (a.scaled(), b.scaled());
    let num: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}
