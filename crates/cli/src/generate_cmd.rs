//! `qwen3-quant generate`: continue a prompt (greedy, or sampled with temperature/top-k/top-p
//! and a seed), streamed to the terminal, optionally through the model's chat template.

use std::io::Write;

use anyhow::Context;
use qwen3_quant_model::chat::{ChatTemplate, Message};
use qwen3_quant_model::generation::{generate, Sampler, SamplingParams, TextStream};
use qwen3_quant_model::Tokenizer;
use serde_json::json;

use crate::args::GenerateArgs;
use crate::eval_cmd::load_any;
use crate::output::print_json;

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let model = load_any(&a.model)?;
    let tok = Tokenizer::from_dir(&a.model)?;
    let mut stop = model.config.eos_token_ids.clone();
    let text = if a.chat {
        let t = ChatTemplate::from_dir(&a.model)?;
        if let Some(id) = t.eos_token().and_then(|e| tok.token_to_id(e)) {
            stop.push(id);
        }
        t.render(&[Message::new("user", &a.prompt)], true, None)?
    } else {
        a.prompt.clone()
    };
    let prompt = tok.encode(&text)?;
    anyhow::ensure!(!prompt.is_empty(), "the prompt encodes to no tokens");
    let mut sampler = Sampler::new(SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    })?;
    let start = std::time::Instant::now();
    let stream = !a.json;
    if stream && !a.chat {
        print!("{}", a.prompt);
    }
    let mut out = std::io::stdout().lock();
    let mut text_stream = TextStream::default();
    let mut failed: Option<anyhow::Error> = None;
    let new = generate(
        &model,
        &prompt,
        a.max_new_tokens,
        &stop,
        &mut sampler,
        |id| {
            if !stream || stop.contains(&id) {
                return true;
            }
            match text_stream.push(&tok, id) {
                Ok(Some(piece)) => {
                    // A closed stdout (e.g. piped into `head`) ends the generation quietly.
                    out.write_all(piece.as_bytes())
                        .and_then(|_| out.flush())
                        .is_ok()
                }
                Ok(None) => true,
                Err(e) => {
                    failed = Some(e.into());
                    false
                }
            }
        },
    )
    .context("generating")?;
    if let Some(e) = failed {
        return Err(e);
    }
    let secs = start.elapsed().as_secs_f64();
    let shown: Vec<u32> = new.iter().copied().filter(|t| !stop.contains(t)).collect();
    let completion = tok.decode(&shown)?;
    if a.json {
        print_json(
            &json!({"model": a.model, "prompt": a.prompt, "chat": a.chat, "completion": completion,
                           "tokens": new.len(), "stopped_on_eos": new.last().is_some_and(|t| stop.contains(t)),
                           "seconds": secs}),
        );
    } else {
        let _ = writeln!(out);
        eprintln!("[{} tokens in {:.2} s]", new.len(), secs);
    }
    Ok(())
}
