//! Generate text from any checkpoint (full precision or quantized: GPTQ, AWQ,
//! compressed-tensors, native; quantized linears run packed), streamed to the terminal, with
//! temperature / top-k / top-p sampling and a seed, stopping on EOS.
//!
//! ```text
//! cargo run --release --example generate -- [MODEL_DIR] [PROMPT]
//! cargo run --release --example generate -- assets/models/qwen3-micro-gptq-w4g128-actorder "The kernel scheduler"
//! ```
//! With a model whose `tokenizer_config.json` has a chat template, set `CHAT=1` to wrap the
//! prompt as one user turn.

use std::io::Write;

use qwen3_quant::formats::{load_model, LoadOptions};
use qwen3_quant::model::chat::{ChatTemplate, Message};
use qwen3_quant::model::generation::{generate, Sampler, SamplingParams, TextStream};
use qwen3_quant::model::Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/models/qwen3-micro-gptq-w4g128-actorder"
        )
        .into()
    });
    let prompt = args.next().unwrap_or_else(|| "The kernel scheduler".into());
    let loaded = load_model(dir.as_ref(), &LoadOptions::default())?;
    let model = loaded.model;
    let tok = Tokenizer::from_dir(&dir)?;
    let mut stop = model.config.eos_token_ids.clone();
    let text = if std::env::var_os("CHAT").is_some() {
        let t = ChatTemplate::from_dir(&dir)?;
        stop.extend(t.eos_token().and_then(|e| tok.token_to_id(e)));
        t.render(&[Message::new("user", &prompt)], true, None)?
    } else {
        print!("{prompt}");
        prompt.clone()
    };
    let ids = tok.encode(&text)?;
    let mut sampler = Sampler::new(SamplingParams {
        temperature: 0.7,
        top_k: Some(40),
        top_p: Some(0.95),
        seed: 1,
    })?;
    let mut stream = TextStream::default();
    let mut stdout = std::io::stdout().lock();
    let start = std::time::Instant::now();
    let out = generate(&model, &ids, 64, &stop, &mut sampler, |id| {
        if let Ok(Some(piece)) = stream.push(&tok, id) {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
        true
    })?;
    writeln!(stdout)?;
    eprintln!(
        "[{} tokens in {:.2} s, {} linears packed]",
        out.len(),
        start.elapsed().as_secs_f64(),
        loaded.packed_linears
    );
    Ok(())
}
