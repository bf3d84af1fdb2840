//! Helpers of the formats tests: the bundled models and data, and an **independent unpacker**
//! of every format, written from the layout descriptions (`docs/formats.md` §2.1–2.3 and the
//! native schema in `docs/checkpoints.md`), not from the writer's code. It reads the raw
//! little-endian bytes of the tensors and decodes them bit by bit.

#![allow(dead_code)]

use std::path::Path;

use qwen3_quant_eval::{data::read_token_tensor, evaluate_ppl, PplOptions, Progress};
use qwen3_quant_io::Checkpoint;
use qwen3_quant_model::Qwen3Model;

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
pub const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

pub fn model_dir(name: &str) -> std::path::PathBuf {
    Path::new(&ASSETS.to_string()).join("models").join(name)
}

pub fn docs(split: &str) -> Vec<u32> {
    read_token_tensor(
        format!("{ASSETS}/data/docs/docs.tokens.safetensors").as_ref(),
        split,
    )
    .unwrap()
}

/// Perplexity over the first `windows` windows of `seq` tokens.
pub fn ppl(model: &Qwen3Model, ids: &[u32], windows: usize, seq: usize) -> f64 {
    let opts = PplOptions::default()
        .with_seq_len(seq)
        .with_max_windows(Some(windows))
        .with_batch_size(4)
        .with_stride(None);
    evaluate_ppl(model, ids, &opts, Progress::Hidden)
        .unwrap()
        .ppl
}

/// Raw bytes and shape of a tensor.
pub fn raw(ckpt: &Checkpoint, name: &str) -> (Vec<u8>, Vec<usize>) {
    let t = ckpt.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    (t.data.to_vec(), t.shape.to_vec())
}

/// Little-endian u32 words of an I32 tensor.
pub fn words(ckpt: &Checkpoint, name: &str) -> (Vec<u32>, Vec<usize>) {
    let (b, s) = raw(ckpt, name);
    (
        b.chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        s,
    )
}

/// Bit `i` of a little-endian bit string made of 32-bit words.
fn bit(words: &[u32], i: usize) -> u32 {
    (words[i / 32] >> (i % 32)) & 1
}

/// GPTQ §2.1: codes `[n, k]` from `qweight` `[k·b/32, n]`. Column `c`'s words, top to bottom,
/// form one bit string in which value `j` occupies bits `b·j .. b·j+b` (LSB first); for 3 bits
/// this is exactly the straddling layout of the table (v10 and v21 cross word boundaries).
pub fn gptq_codes(ckpt: &Checkpoint, prefix: &str, bits: usize) -> (Vec<u8>, usize, usize) {
    let (w, s) = words(ckpt, &format!("{prefix}.qweight"));
    let (rows, n) = (s[0], s[1]);
    let k = rows * 32 / bits;
    let mut codes = vec![0u8; n * k];
    for c in 0..n {
        let col: Vec<u32> = (0..rows).map(|r| w[r * n + c]).collect();
        for j in 0..k {
            let mut v = 0u32;
            for t in 0..bits {
                v |= bit(&col, bits * j + t) << t;
            }
            codes[c * k + j] = v as u8;
        }
    }
    (codes, n, k)
}

/// GPTQ §2.1: stored zero points `[groups, n]` from `qzeros` `[groups, n·b/32]` (raw stored
/// values: v1 readers add 1).
pub fn gptq_stored_zeros(ckpt: &Checkpoint, prefix: &str, bits: usize) -> Vec<u8> {
    let (w, s) = words(ckpt, &format!("{prefix}.qzeros"));
    let (g, nw) = (s[0], s[1]);
    let n = nw * 32 / bits;
    let mut z = vec![0u8; g * n];
    for gi in 0..g {
        let row = &w[gi * nw..(gi + 1) * nw];
        for c in 0..n {
            let mut v = 0u32;
            for t in 0..bits {
                v |= bit(row, bits * c + t) << t;
            }
            z[gi * n + c] = v as u8;
        }
    }
    z
}

/// AWQ §2.2: codes `[n, k]` from `qweight` `[k, n/8]`; nibble slot `i` of word `(kk, blk)` holds
/// output column `8·blk + [0, 2, 4, 6, 1, 3, 5, 7][i]`.
pub fn awq_unpack(ckpt: &Checkpoint, name: &str, n: usize) -> Vec<u8> {
    const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
    let (w, s) = words(ckpt, name);
    let rows = s[0];
    let mut out = vec![0u8; rows * n]; // [rows, n]
    for r in 0..rows {
        for blk in 0..n / 8 {
            let word = w[r * (n / 8) + blk];
            for (i, &col) in ORDER.iter().enumerate() {
                out[r * n + 8 * blk + col] = ((word >> (4 * i)) & 0xF) as u8;
            }
        }
    }
    out
}

/// compressed-tensors §2.3: `weight_packed` `[n, ceil(k/p)]`, `p = 32 / b` values per word,
/// value `j` of a word at bit `b·j`; returns the stored (offset) unsigned values `[n, k]`.
pub fn ct_codes(ckpt: &Checkpoint, prefix: &str, bits: usize, k: usize) -> Vec<u8> {
    let (w, s) = words(ckpt, &format!("{prefix}.weight_packed"));
    let (n, wpr) = (s[0], s[1]);
    let p = 32 / bits;
    let mut out = vec![0u8; n * k];
    for r in 0..n {
        for c in 0..k {
            let word = w[r * wpr + c / p];
            out[r * k + c] = ((word >> (bits * (c % p))) & ((1 << bits) - 1)) as u8;
        }
    }
    out
}

/// Native v1: `qweight` u8 `[out, ceil(in·b/8)]`, each row one LSB-first bit stream.
pub fn native_codes(ckpt: &Checkpoint, prefix: &str, bits: usize, k: usize) -> Vec<u8> {
    let (b, s) = raw(ckpt, &format!("{prefix}.qweight"));
    let (n, stride) = (s[0], s[1]);
    let mut out = vec![0u8; n * k];
    for r in 0..n {
        for c in 0..k {
            let mut v = 0u8;
            for t in 0..bits {
                let i = c * bits + t;
                v |= ((b[r * stride + i / 8] >> (i % 8)) & 1) << t;
            }
            out[r * k + c] = v;
        }
    }
    out
}
