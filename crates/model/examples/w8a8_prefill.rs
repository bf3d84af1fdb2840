//! Weight-activation quantization on the docs_32 workload (32 windows × 1024 tokens of the
//! bundled validation text, batch 4): perplexity of the integer path against fake quantization
//! and weight-only, and prefill speed of the integer path against the f32 forward.
//!
//! ```text
//! cargo run --release -p qwen3-quant-model --example w8a8_prefill -- \
//!     [--model DIR] [--windows 32] [--batch 4] [--pairs 3] [--weight-bits 8] [--act-bits 8] [--decode]
//! ```
//! Weights are quantized with SmoothQuant's weight rule (per output row, symmetric absmax,
//! round half to even) without smoothing; the activations per token at `--act-bits`. Each of
//! the `--pairs` pairs is one full pass of both the f32 and the integer model, interleaved batch
//! by batch (alternating which goes first), and the reported speed-up is the median of the
//! per-pair ratios of forward seconds (the log-softmax of the perplexity is outside the timed
//! region). `--decode` adds decode tokens/s with the key/value cache (16-token prompt, 128
//! one-token steps), also as alternating pairs. `--perturb` adds the perplexity of the integer
//! model with every linear's input divided by `1 + 2^-23` (one ulp): the noise floor that
//! activation rounding puts on any comparison of two executions.

use std::time::Instant;

use qwen3_quant_io::SafetensorsFile;
use qwen3_quant_model::{ActExecution, ActQuantizer, LinearWeight, Qwen3Model};

struct Args {
    model: String,
    windows: usize,
    batch: usize,
    pairs: usize,
    weight_bits: u8,
    act_bits: u8,
    decode: bool,
    perturb: bool,
    /// `int` or `f32`: only time that model (for profiling).
    only: Option<String>,
}

fn parse() -> Result<Args, Box<dyn std::error::Error>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets");
    let mut a = Args {
        model: format!("{root}/models/qwen3-micro"),
        windows: 32,
        batch: 4,
        pairs: 3,
        weight_bits: 8,
        act_bits: 8,
        decode: false,
        perturb: false,
        only: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = || argv.get(i + 1).ok_or(format!("{} needs a value", argv[i]));
        match argv[i].as_str() {
            "--model" => a.model = val()?.clone(),
            "--windows" => a.windows = val()?.parse()?,
            "--batch" => a.batch = val()?.parse()?,
            "--pairs" => a.pairs = val()?.parse()?,
            "--weight-bits" => a.weight_bits = val()?.parse()?,
            "--act-bits" => a.act_bits = val()?.parse()?,
            "--only" => a.only = Some(val()?.clone()),
            "--decode" => {
                a.decode = true;
                i += 1;
                continue;
            }
            "--perturb" => {
                a.perturb = true;
                i += 1;
                continue;
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
        i += 2;
    }
    Ok(a)
}

/// SmoothQuant's weight rule: per row `s = max(max|w|, 1e-5) / (2^(b-1) - 1)`, `w = round(w/s)·s`.
fn absmax_per_row(w: &[f32], cols: usize, bits: u8) -> Vec<f32> {
    let qmax = ((1i32 << (bits - 1)) - 1) as f32;
    let mut out = w.to_vec();
    for row in out.chunks_exact_mut(cols) {
        let s = row.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-5) / qmax;
        row.iter_mut()
            .for_each(|v| *v = (*v / s).round_ties_even() * s);
    }
    out
}

fn quantize_weights(model: &mut Qwen3Model, bits: u8) -> Result<(), Box<dyn std::error::Error>> {
    for li in 0..model.layers.len() {
        for id in model.layers[li].linear_ids() {
            let w = model.layers[li].linear(id.kind, id.expert).unwrap();
            let (o, i) = (w.out_features(), w.in_features());
            let q = LinearWeight::dense(o, i, absmax_per_row(&w.to_dense(), i, bits))?;
            model.layers[li].replace_linear(&id, q)?;
        }
    }
    Ok(())
}

/// Mean NLL of each window of a batch of logits.
fn window_nlls(logits: &[f32], chunk: &[u32], b: usize, v: usize) -> f64 {
    let seq = chunk.len() / b;
    let mut sum = 0.0f64;
    for s in 0..b {
        let mut nll = 0.0f64;
        for t in 0..seq - 1 {
            let row = &logits[(s * seq + t) * v..(s * seq + t + 1) * v];
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let lse = row
                .iter()
                .map(|x| ((x - max) as f64).exp())
                .sum::<f64>()
                .ln()
                + max as f64;
            nll += lse - row[chunk[s * seq + t + 1] as usize] as f64;
        }
        sum += nll / (seq - 1) as f64;
    }
    sum
}

/// One full pass over the windows with every model, interleaved batch by batch (the order
/// rotating per batch) so that load changes on a shared machine hit all models alike.
/// Returns per model (forward seconds, perplexity).
fn pass(models: &[&Qwen3Model], ids: &[u32], windows: usize, batch: usize) -> Vec<(f64, f64)> {
    let (seq, v) = (1024, models[0].config.vocab_size);
    let mut out = vec![(0.0f64, 0.0f64); models.len()];
    let (mut w, mut k) = (0, 0);
    while w < windows {
        let b = batch.min(windows - w);
        let chunk = &ids[w * seq..(w + b) * seq];
        for j in 0..models.len() {
            let i = (j + k) % models.len();
            let t0 = Instant::now();
            let logits = models[i].forward(chunk, b, seq).expect("forward");
            out[i].0 += t0.elapsed().as_secs_f64();
            out[i].1 += window_nlls(&logits, chunk, b, v);
        }
        w += b;
        k += 1;
    }
    out.iter()
        .map(|&(secs, nll)| (secs, (nll / windows as f64).exp()))
        .collect()
}

/// Decode tokens/s: a 16-token prompt, then 128 one-token steps with the cache.
fn decode(model: &Qwen3Model, ids: &[u32]) -> f64 {
    let mut cache = model.new_cache();
    model.forward_step(&ids[..16], &mut cache).expect("prompt");
    let t0 = Instant::now();
    for &t in &ids[16..144] {
        std::hint::black_box(model.forward_step(&[t], &mut cache).expect("step"));
    }
    128.0 / t0.elapsed().as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        0.5 * (s[s.len() / 2 - 1] + s[s.len() / 2])
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse()?;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets");
    let docs = SafetensorsFile::open(format!("{root}/data/docs/docs.tokens.safetensors"))?;
    let ids: Vec<u32> = docs
        .tensor("valid")?
        .to_i64()?
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let f32_model = Qwen3Model::load(&a.model)?;
    let mut weight_only = f32_model.clone();
    quantize_weights(&mut weight_only, a.weight_bits)?;
    let mut fake = weight_only.clone();
    fake.quantize_activations(a.act_bits, ActExecution::Fake)?;
    let mut int = weight_only.clone();
    let summary = int.quantize_activations(a.act_bits, ActExecution::Integer)?;
    eprintln!("integer model: {summary}");
    if let Some(which) = &a.only {
        let m = if which == "int" { &int } else { &f32_model };
        for _ in 0..a.pairs {
            let (secs, ppl) = pass(&[m], &ids, a.windows, a.batch)[0];
            eprintln!(
                "{which}: {:.1} tok/s, ppl {ppl:.4}",
                (a.windows * 1024) as f64 / secs
            );
        }
        return Ok(());
    }

    let r = pass(&[&weight_only, &fake], &ids, a.windows, a.batch);
    let (ppl_w, (fake_secs, ppl_fake)) = (r[0].1, r[1]);
    drop((weight_only, fake));
    let tokens = (a.windows * 1024) as f64;
    let (mut tf, mut ti, mut ratio) = (vec![], vec![], vec![]);
    let (mut ppl_f32, mut ppl_int) = (0.0, 0.0);
    for p in 0..a.pairs {
        let r = pass(&[&f32_model, &int], &ids, a.windows, a.batch);
        let ((sf, pf), (si, pi)) = (r[0], r[1]);
        (ppl_f32, ppl_int) = (pf, pi);
        eprintln!(
            "pair {p}: f32 {:.1} tok/s, W{}A{} integer {:.1} tok/s, ratio {:.3}",
            tokens / sf,
            a.weight_bits,
            a.act_bits,
            tokens / si,
            sf / si
        );
        tf.push(tokens / sf);
        ti.push(tokens / si);
        ratio.push(sf / si);
    }
    let mut perturb_json = String::new();
    if a.perturb {
        let mut p = int.clone();
        for li in 0..p.layers.len() {
            for id in p.layers[li].linear_ids() {
                let w = p.layers[li].linear(id.kind, id.expert).unwrap();
                let LinearWeight::Int8 { matrix, act } = w else {
                    continue;
                };
                let one_ulp = vec![1.0 + f32::EPSILON; matrix.cols()];
                let act = ActQuantizer::new(act.bits())?.with_smoothing(one_ulp)?;
                let w = LinearWeight::Int8 {
                    matrix: matrix.clone(),
                    act,
                };
                p.layers[li].replace_linear(&id, w)?;
            }
        }
        let ppl = pass(&[&p], &ids, a.windows, a.batch)[0].1;
        perturb_json = format!(
            ", \"ppl_int_perturbed\": {ppl:.4}, \"perturbed_vs_int_rel\": {:.3e}",
            ppl / ppl_int - 1.0
        );
    }
    let mut decode_json = String::new();
    if a.decode {
        let (mut df, mut di, mut dr) = (vec![], vec![], vec![]);
        for _ in 0..a.pairs.max(3) {
            let f = decode(&f32_model, &ids);
            let i = decode(&int, &ids);
            df.push(f);
            di.push(i);
            dr.push(i / f);
        }
        decode_json = format!(
            ", \"decode_f32_tokens_per_s\": {:.1}, \"decode_int_tokens_per_s\": {:.1}, \"decode_speedup_median\": {:.3}",
            median(&df),
            median(&di),
            median(&dr)
        );
    }
    println!(
        "{{\"model\": \"{}\", \"windows\": {}, \"batch\": {}, \"threads\": {}, \"kernel\": \"{}\", \"weight_bits\": {}, \"act_bits\": {}, \"ppl_f32\": {:.4}, \"ppl_weight_only\": {:.4}, \"ppl_fake\": {:.4}, \"ppl_int\": {:.4}, \"int_vs_fake_rel\": {:.3e}, \"fake_tokens_per_s\": {:.1}, \"pairs\": {}, \"f32_tokens_per_s\": {:.1}, \"int_tokens_per_s\": {:.1}, \"speedup_median\": {:.3}, \"speedups\": {:?}{}{}}}",
        a.model.rsplit('/').next().unwrap_or(&a.model),
        a.windows,
        a.batch,
        rayon::current_num_threads(),
        qwen3_quant_kernels::active_kernel().name(),
        a.weight_bits,
        a.act_bits,
        ppl_f32,
        ppl_w,
        ppl_fake,
        ppl_int,
        ppl_int / ppl_fake - 1.0,
        tokens / fake_secs,
        a.pairs,
        median(&tf),
        median(&ti),
        median(&ratio),
        ratio.iter().map(|r| (r * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        perturb_json,
        decode_json
    );
    Ok(())
}
