//! A downstream program that uses only the `qwen3-quant` facade: run the README's ten-line
//! example ([`readme::run`], from the current folder), then quantize the bundled qwen3-micro with
//! GPTQ, compare perplexities, save a GPTQ checkpoint, load it back, read
//! logits and weights as `ndarray` arrays, generate. Prints `ok` and the figures; exits non-zero
//! on any failed check.
//!
//! Usage: `qwen3-quant-downstream [MODEL_DIR [OUT_DIR]]` (default: the repository's qwen3-micro,
//! a temporary folder).

use qwen3_quant::{
    Calibration, Evaluation, Format, Generation, GptqConfig, LinearId, LinearKind, Model,
    ProgressEvent, Quantize,
};

mod readme;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    readme::run()?;
    let mut args = std::env::args().skip(1);
    let model_dir = args.next().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/models/qwen3-micro").to_string()
    });
    let out = args.next().map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::env::temp_dir().join(format!("qwen3-quant-downstream-{}", std::process::id()))
    });

    let model = Model::open(&model_dir)?;
    let eval = Evaluation::perplexity(["docs"]).seq_len(256).windows(4);
    let before = model.evaluate(&eval)?.ppl.get("docs").ok_or("no docs ppl")?.ppl;

    let steps = std::sync::atomic::AtomicU64::new(0);
    let sink = |e: &ProgressEvent<'_>| steps.store(e.done, std::sync::atomic::Ordering::Relaxed);
    let quantized = Quantize::gptq(GptqConfig::default().with_bits(4).with_group_size(Some(128)))
        .calibration(Calibration::docs().windows(8, 256))
        .progress(&sink)
        .run(&model)?;
    let after = quantized.evaluate(&eval)?.ppl.get("docs").ok_or("no docs ppl")?.ppl;

    let _ = std::fs::remove_dir_all(&out);
    quantized.save(&out, Format::Gptq)?;
    let reloaded = Model::open(&out)?;
    let back = reloaded.evaluate(&eval)?.ppl.get("docs").ok_or("no docs ppl")?.ppl;

    let ids = reloaded.encode("The kernel scheduler")?;
    let logits = reloaded.logits(&ids)?;
    let w = reloaded.weight(LinearId::new(0, LinearKind::Q))?;
    let text = reloaded.generate("The kernel scheduler", &Generation::greedy(12))?;
    std::fs::remove_dir_all(&out)?;

    let linears = steps.load(std::sync::atomic::Ordering::Relaxed);
    let checks = [
        ("4-bit costs perplexity", after > before),
        ("but not much", after < before * 1.10),
        ("the checkpoint reloads", (back / after - 1.0).abs() < 1e-3),
        ("logits [tokens, vocab]", logits.dim() == (ids.len(), reloaded.config().vocab_size)),
        ("weights [out, in]", w.ncols() == reloaded.config().hidden_size),
        ("progress per linear", linears == quantized.linears() as u64),
        ("a continuation", !text.is_empty()),
    ];
    for (what, ok) in checks {
        if !ok {
            return Err(format!("check failed: {what}").into());
        }
    }
    println!(
        "ok ppl_before={before:.4} ppl_after={after:.4} ppl_reloaded={back:.4} bits_per_weight={:.3} linears={linears}",
        quantized.bits_per_weight()
    );
    println!("continuation: {text:?}");
    Ok(())
}
