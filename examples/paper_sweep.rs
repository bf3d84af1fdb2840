//! The study's sweep on a model directory through the facade: methods × bit widths × group sizes,
//! each cell quantized and evaluated, resumable (finished cells are skipped), written as
//! `results.{md,csv,json}` and `plots/*.png` under the output folder.
//!
//! ```text
//! cargo run --release --example paper_sweep -- [MODEL_DIR] [OUT_DIR] [--quick]
//! ```
//!
//! Defaults: the bundled qwen3-micro into `sweep-qwen3-micro`, with the protocol of its reference
//! figures (docs calibration, 128 × 1024; docs and wikitext2, first 32 windows of 1024 tokens).
//! `--quick` runs RTN and GPTQ at w4/w3 g128 on 16 calibration windows and 4 evaluation windows
//! (a few minutes). For a real Qwen3 checkpoint pass its directory: the paper's protocol (C4
//! calibration, 128 × 2048; wikitext2 and c4 perplexity) is `SweepOptions::new`'s default. The
//! command line has the same with sharding: `qwen3-quant sweep --shard I/N`, then `--merge`.

use qwen3_quant::sweep::{self, Grid, SweepMethod, SweepOptions};
use qwen3_quant::{Calibration, ConsoleProgress, Evaluation};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut pos = args.iter().filter(|a| !a.starts_with("--"));
    let bundled = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro");
    let model = pos.next().map_or(bundled.to_string(), Clone::clone);
    let out = pos
        .next()
        .map_or("sweep-qwen3-micro".to_string(), Clone::clone);

    let mut opts = SweepOptions::new(&model, &out);
    if model == bundled {
        let (calib, eval_windows) = if quick { (16, 4) } else { (128, 32) };
        opts.calibration = Calibration::docs().windows(calib, 1024);
        opts.evaluation = Evaluation::perplexity(["docs", "wikitext2"])
            .seq_len(1024)
            .windows(eval_windows);
    }
    if quick {
        opts.grid = Grid::paper().filter(
            &[SweepMethod::Rtn, SweepMethod::Gptq],
            &[4, 3],
            &[Some(128)],
        );
    }
    let summary = sweep::run(&opts, &ConsoleProgress::new())?;
    println!(
        "{} cells run, {} in the table: {}",
        summary.ran.len(),
        summary.results.len(),
        std::path::Path::new(&out).join("results.md").display()
    );
    Ok(())
}
