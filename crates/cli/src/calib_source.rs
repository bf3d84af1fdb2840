//! Calibration token sources for `quantize --calib`.

use std::path::Path;

use anyhow::{bail, Context};
use qwen3_quant_calib::{first_windows, gptq_windows, random_windows, CalibrationSet};
use qwen3_quant_eval::data::{read_jsonl, read_text, read_token_tensor};
use qwen3_quant_model::Tokenizer;

/// Builds the calibration set: the first `samples` windows of the source, or random windows
/// (GPTQ's document sampler for C4) when `seed` is given.
pub fn calibration_set(
    name: &str,
    data: &Path,
    tok: &Tokenizer,
    samples: usize,
    seq_len: usize,
    seed: Option<u64>,
) -> anyhow::Result<CalibrationSet> {
    let from_stream = |ids: Vec<u32>, what: &str| -> anyhow::Result<CalibrationSet> {
        let mut set = match seed {
            None => first_windows(&ids, samples, seq_len)?,
            Some(s) => random_windows(&ids, samples, seq_len, s)?,
        };
        set.description = format!("{what}: {}", set.description);
        Ok(set)
    };
    match name {
        "docs" => {
            let ids = read_token_tensor(&data.join("docs/docs.tokens.safetensors"), "calib")?;
            from_stream(ids, "docs calib split")
        }
        "wikitext2" => {
            // The train split is not bundled; calibrate on validation (never on the test split we score).
            let rows = read_jsonl(&data.join("wikitext2/wikitext-2-raw-v1.validation.jsonl"))?;
            let text: Vec<&str> = rows.iter().filter_map(|r| r["text"].as_str()).collect();
            from_stream(tok.encode(&text.join("\n\n"))?, "wikitext2 validation")
        }
        "c4" => {
            let dir = data.join("c4");
            let file = std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.to_string_lossy().contains(".jsonl"))
                .with_context(|| format!("no C4 jsonl sample in {}", dir.display()))?;
            let rows = read_jsonl(&file)?;
            let docs: Vec<&str> = rows.iter().filter_map(|r| r["text"].as_str()).collect();
            match seed {
                Some(s) => {
                    let ids = docs
                        .iter()
                        .map(|d| tok.encode(d))
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut set = gptq_windows(&ids, samples, seq_len, s)?;
                    set.description = format!("c4 sample: {}", set.description);
                    Ok(set)
                }
                None => from_stream(
                    tok.encode(&docs.join("\n\n"))?,
                    "c4 sample documents joined by blank lines",
                ),
            }
        }
        path => {
            let p = Path::new(path);
            if !p.is_file() {
                bail!("unknown calibration source {path:?}: expected docs, c4, wikitext2 or a text file");
            }
            from_stream(tok.encode(&read_text(p)?)?, path)
        }
    }
}
