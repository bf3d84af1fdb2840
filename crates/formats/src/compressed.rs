//! compressed-tensors tensors of one linear (formats.md §2.3).
//!
//! `pack-quantized` (weight-only): `weight_packed` i32 `[N, ceil(K/p)]` with `p = 32 / b` values
//! per word along the input dimension, value `j` at bit `b·j`; the signed codes are stored offset
//! by `2^(b−1)`, which makes them this project's unsigned codes. `weight_scale` `[N, G]`,
//! `weight_zero_point` i32 `[ceil(N/p), G]` packed along dim 0 (asymmetric only), `weight_g_idx`
//! `[K]` (act-order only), `weight_shape` `[2]`.
//!
//! `int-quantized` (W8A8, SmoothQuant): `weight` i8 `[N, K]` (signed codes), `weight_scale`
//! `[N, 1]`; symmetric, per channel.

use qwen3_quant_core::QuantizedLinear;
use qwen3_quant_io::write::TensorData;
use qwen3_quant_io::{Checkpoint, Dtype};

use crate::config::CompressedScheme;
use crate::decoded::DecodedLinear;
use crate::error::{inconsistent, FormatError, Result};
use crate::tensors::{f32_tensor, float_tensor, g_idx_from, i32_tensor, i8_tensor};

const FORMAT: &str = "compressed-tensors";

/// Values per 32-bit word at `bits` (3-bit leaves 2 bits of each word unused).
fn per_word(bits: u8) -> usize {
    32 / bits as usize
}

/// Packs `[rows, cols]` values along the columns: `[rows, ceil(cols/p)]` words.
fn pack_rows(v: &[u8], rows: usize, cols: usize, bits: u8) -> Vec<i32> {
    let p = per_word(bits);
    let w = cols.div_ceil(p);
    let mut out = vec![0i32; rows * w];
    for r in 0..rows {
        for c in 0..cols {
            out[r * w + c / p] |= (i32::from(v[r * cols + c])) << (bits as usize * (c % p));
        }
    }
    out
}

fn unpack_rows(words: &[i32], rows: usize, cols: usize, bits: u8) -> Vec<u8> {
    let p = per_word(bits);
    let w = cols.div_ceil(p);
    let mask = (1u32 << bits) - 1;
    let mut out = vec![0u8; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[r * cols + c] =
                ((words[r * w + c / p] as u32 >> (bits as usize * (c % p))) & mask) as u8;
        }
    }
    out
}

/// Packs `[rows, cols]` values along the rows: `[ceil(rows/p), cols]` words.
fn pack_cols(v: &[u8], rows: usize, cols: usize, bits: u8) -> Vec<i32> {
    let p = per_word(bits);
    let mut out = vec![0i32; rows.div_ceil(p) * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[(r / p) * cols + c] |= i32::from(v[r * cols + c]) << (bits as usize * (r % p));
        }
    }
    out
}

fn unpack_cols(words: &[i32], rows: usize, cols: usize, bits: u8) -> Vec<u8> {
    let p = per_word(bits);
    let mask = (1u32 << bits) - 1;
    let mut out = vec![0u8; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[r * cols + c] =
                ((words[(r / p) * cols + c] as u32 >> (bits as usize * (r % p))) & mask) as u8;
        }
    }
    out
}

/// `[G, N]` → `[N, G]`.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

/// The `pack-quantized` tensors of one linear; scales in `scale_dtype`.
pub(crate) fn encode_packed(
    prefix: &str,
    q: &QuantizedLinear,
    scale_dtype: Dtype,
) -> Result<Vec<TensorData>> {
    let bits = q.bits().get();
    let (n, k, g) = (q.out_features(), q.in_features(), q.n_groups());
    let p = per_word(bits);
    let mut t = vec![
        TensorData::i32(
            format!("{prefix}.weight_packed"),
            vec![n, k.div_ceil(p)],
            &pack_rows(q.codes(), n, k, bits),
        ),
        float_tensor(
            format!("{prefix}.weight_scale"),
            scale_dtype,
            vec![n, g],
            &transpose(q.scales(), g, n),
        ),
        TensorData::i32(
            format!("{prefix}.weight_shape"),
            vec![2],
            &[n as i32, k as i32],
        ),
    ];
    if !q.sym() {
        // zeros [G, N] → [N, G], packed along N.
        let mut zt = vec![0u8; g * n];
        for gi in 0..g {
            for r in 0..n {
                zt[r * g + gi] = q.zeros()[gi * n + r];
            }
        }
        t.push(TensorData::i32(
            format!("{prefix}.weight_zero_point"),
            vec![n.div_ceil(p), g],
            &pack_cols(&zt, n, g, bits),
        ));
    }
    if q.perm().is_some() {
        let gi: Vec<i32> = q.g_idx().iter().map(|&v| v as i32).collect();
        t.push(TensorData::i32(
            format!("{prefix}.weight_g_idx"),
            vec![k],
            &gi,
        ));
    }
    Ok(t)
}

/// Why the int8 W8A8 scheme cannot hold `q`, if it cannot.
pub(crate) fn int8_unsupported(q: &QuantizedLinear) -> Option<String> {
    if q.bits().get() != 8 || !q.sym() || q.group_size().is_some() || q.perm().is_some() {
        return Some(
            "W8A8 int8 needs 8-bit symmetric per-channel weights without act-order".into(),
        );
    }
    if q.zeros().iter().any(|&z| z != 128) {
        return Some("symmetric 8-bit zero points must be 128".into());
    }
    None
}

/// The `int-quantized` (W8A8) tensors of one linear.
pub(crate) fn encode_int8(
    prefix: &str,
    q: &QuantizedLinear,
    scale_dtype: Dtype,
) -> Result<Vec<TensorData>> {
    if let Some(reason) = int8_unsupported(q) {
        return Err(FormatError::UnsupportedByFormat {
            format: FORMAT,
            module: prefix.into(),
            reason,
        });
    }
    let signed: Vec<i8> = q
        .codes()
        .iter()
        .map(|&c| (i16::from(c) - 128) as i8)
        .collect();
    Ok(vec![
        i8_tensor(
            format!("{prefix}.weight"),
            vec![q.out_features(), q.in_features()],
            &signed,
        ),
        float_tensor(
            format!("{prefix}.weight_scale"),
            scale_dtype,
            vec![q.out_features(), 1],
            q.scales(),
        ),
    ])
}

/// Decodes the compressed-tensors tensors of linear `prefix` of shape `[out, inp]`.
pub(crate) fn decode(
    ckpt: &Checkpoint,
    prefix: &str,
    out: usize,
    inp: usize,
    s: &CompressedScheme,
) -> Result<DecodedLinear> {
    let bits = s.bits;
    if !matches!(bits, 1 | 2 | 3 | 4 | 8) {
        return Err(FormatError::UnsupportedBits {
            module: prefix.into(),
            bits: bits.into(),
            format: "compressed-tensors in this loader (1, 2, 3, 4 or 8 bits)",
        });
    }
    let groups = s.group_size.map_or(1, |g| inp.div_ceil(g));
    if s.format == "int-quantized" {
        if bits != 8 || !s.symmetric {
            return Err(inconsistent(
                prefix,
                "int-quantized weights must be 8-bit symmetric",
            ));
        }
        let t = ckpt.tensor(&format!("{prefix}.weight"))?;
        if t.shape != [out, inp] || t.dtype != Dtype::I8 {
            return Err(inconsistent(
                prefix,
                format!(
                    "weight is {} {:?}, expected I8 [{out}, {inp}]",
                    t.dtype, t.shape
                ),
            ));
        }
        let codes: Vec<u8> = t
            .data
            .iter()
            .map(|&b| (i16::from(b as i8) + 128) as u8)
            .collect();
        let scales = f32_tensor(
            ckpt,
            prefix,
            &format!("{prefix}.weight_scale"),
            &[out, groups],
        )?;
        return Ok(DecodedLinear {
            out_features: out,
            in_features: inp,
            bits: 8,
            codes,
            scales: transpose(&scales, out, groups),
            zeros: vec![128.0; groups * out],
            g_idx: s
                .group_size
                .map_or(vec![0; inp], |g| (0..inp).map(|c| (c / g) as u32).collect()),
            input_scale: None,
        });
    }
    let p = per_word(bits);
    if ckpt.contains(&format!("{prefix}.weight_shape")) {
        let shape = i32_tensor(ckpt, prefix, &format!("{prefix}.weight_shape"), &[2])?;
        if shape != [out as i32, inp as i32] {
            return Err(inconsistent(
                prefix,
                format!("weight_shape {shape:?} is not [{out}, {inp}]"),
            ));
        }
    }
    let words = i32_tensor(
        ckpt,
        prefix,
        &format!("{prefix}.weight_packed"),
        &[out, inp.div_ceil(p)],
    )?;
    let scales = f32_tensor(
        ckpt,
        prefix,
        &format!("{prefix}.weight_scale"),
        &[out, groups],
    )?;
    let zeros: Vec<f32> = if s.symmetric {
        vec![f32::from(1u8 << (bits - 1)); groups * out]
    } else {
        let zw = i32_tensor(
            ckpt,
            prefix,
            &format!("{prefix}.weight_zero_point"),
            &[out.div_ceil(p), groups],
        )?;
        let z = unpack_cols(&zw, out, groups, bits); // [N, G]
        let mut zg = vec![0f32; groups * out];
        for r in 0..out {
            for gi in 0..groups {
                zg[gi * out + r] = f32::from(z[r * groups + gi]);
            }
        }
        zg
    };
    let g_idx = if ckpt.contains(&format!("{prefix}.weight_g_idx")) {
        let raw = i32_tensor(ckpt, prefix, &format!("{prefix}.weight_g_idx"), &[inp])?;
        g_idx_from(prefix, &raw, groups)?
    } else {
        match s.group_size {
            Some(g) => (0..inp).map(|c| (c / g) as u32).collect(),
            None => vec![0; inp],
        }
    };
    Ok(DecodedLinear {
        out_features: out,
        in_features: inp,
        bits,
        codes: unpack_rows(&words, out, inp, bits),
        scales: transpose(&scales, out, groups),
        zeros,
        g_idx,
        input_scale: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_and_column_packing_round_trip() {
        for bits in [1u8, 2, 3, 4, 8] {
            let (r, c) = (5usize, 37usize);
            let v: Vec<u8> = (0..r * c)
                .map(|i| ((i * 11 + 3) % (1 << bits)) as u8)
                .collect();
            assert_eq!(unpack_rows(&pack_rows(&v, r, c, bits), r, c, bits), v);
            assert_eq!(unpack_cols(&pack_cols(&v, r, c, bits), r, c, bits), v);
        }
        // 3-bit: ten values per word, bits 30-31 unused.
        let w = pack_rows(&[7; 10], 1, 10, 3);
        assert_eq!(w, vec![0x3fff_ffff]);
    }
}
