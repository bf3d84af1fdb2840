//! The README's ten-line example, verbatim (`tests/downstream.rs` checks that the lines between
//! the README's `readme-example` markers are the body of [`run`]). Run from a folder that holds
//! `assets/models/qwen3-micro` (the repository root).

/// The README's example; it writes `micro-gptq-<pid>` in the temporary folder (`save` refuses
/// an existing non-empty folder).
pub fn run() -> qwen3_quant::Result<()> {
    use qwen3_quant::{Calibration, Evaluation, Format, Generation, GptqConfig, Model, Quantize};

    let model = Model::open("assets/models/qwen3-micro")?;
    let gptq = GptqConfig::default().with_bits(4).with_group_size(Some(128)).with_act_order(true);
    let quantized = Quantize::gptq(gptq).calibration(Calibration::docs().windows(8, 256)).run(&model)?;
    let report = quantized.evaluate(&Evaluation::perplexity(["docs"]).seq_len(256).windows(4))?;
    println!("docs ppl {:.3}", report.ppl.get("docs").unwrap().ppl);
    let out = std::env::temp_dir().join(format!("micro-gptq-{}", std::process::id())); // new dir
    quantized.save(&out, Format::Gptq)?; // loads in vLLM, transformers, GPTQModel
    println!("{}", Model::open(&out)?.generate("The kernel scheduler", &Generation::greedy(16))?);
    Ok(())
}
