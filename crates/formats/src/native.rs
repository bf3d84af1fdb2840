//! The native format, version 1 (`docs/checkpoints.md`): safetensors holding what the ecosystem
//! formats cannot (BiLLM binary weights, any width 1–8 with any grouping, per-channel, act-order,
//! SmoothQuant factors, activation bits), described by `quantization_config` with
//! `"quant_method": "qwen3-quant"` and `"format_version": 1`.
//!
//! Affine linear `P` (`[out, in]`, `b` bits, `G` groups):
//! - `P.qweight` u8 `[out, ceil(in·b/8)]`: each row one little-endian bit stream of the codes in
//!   original column order, code `j` at bit `b·j`, LSB first;
//! - `P.scales` f16 (f32 when a value does not fit f16) `[G, out]`;
//! - `P.qzeros` u8 `[G, out]`, asymmetric only (symmetric zero points are `2^(b−1)`);
//! - `P.perm` i32 `[in]`, act-order only (column `perm[j]` was quantized `j`-th; the group of
//!   column `perm[j]` is `j / group_size`);
//! - `P.smoothing` f32 `[in]`, SmoothQuant only (codes hold `W·diag(s)`, inputs are divided by `s`).
//!
//! `W[r, c] = scales[g, r]·(code[r, c] − zero[g, r]) / s[c]`.
//!
//! Binary linear (BiLLM, blocks of `B` columns, `block_size` in its scheme): `P.signs`, `P.bit1`
//! u8 `[out, ceil(in/8)]` (bit `c % 8` of byte `c / 8`), `P.salient` u8 `[ceil(in/8)]`, and the
//! stored value table of each (row, block): `P.binary_codes` i8 `[out, ceil(in/B), 8]` and
//! `P.binary_scales` bf16 `[out, ceil(in/B)]` (value `i` = `code_i · scale`, indexed by
//! `salient << 2 | bit1 << 1 | sign`).

use qwen3_quant_core::{canonical_g_idx, BinaryLinear, Bits, QuantizedLinear, QuantizedWeight};
use qwen3_quant_io::write::TensorData;
use qwen3_quant_io::{Checkpoint, Dtype};
use qwen3_quant_kernels::BinaryTable;
use serde_json::{json, Value};

use crate::error::{inconsistent, FormatError, Result};
use crate::tensors::{f32_tensor, fits_f16, g_idx_from, i32_tensor, i8_tensor, u8_tensor};

/// The version this build writes and the newest it reads.
pub const NATIVE_FORMAT_VERSION: u64 = 1;

/// Packs `[rows, cols]` codes as one LSB-first bit stream per row, `ceil(cols·bits/8)` bytes each.
pub(crate) fn pack_bits(v: &[u8], rows: usize, cols: usize, bits: u8) -> Vec<u8> {
    let b = bits as usize;
    let stride = (cols * b).div_ceil(8);
    let mut out = vec![0u8; rows * stride];
    for r in 0..rows {
        let dst = &mut out[r * stride..(r + 1) * stride];
        for c in 0..cols {
            let val = u32::from(v[r * cols + c]);
            let bit = c * b;
            let (byte, shift) = (bit / 8, bit % 8);
            let wide = val << shift;
            dst[byte] |= wide as u8;
            if shift + b > 8 {
                dst[byte + 1] |= (wide >> 8) as u8;
            }
        }
    }
    out
}

pub(crate) fn unpack_bits(bytes: &[u8], rows: usize, cols: usize, bits: u8) -> Vec<u8> {
    let b = bits as usize;
    let stride = (cols * b).div_ceil(8);
    let mask = (1u32 << b) - 1;
    let mut out = vec![0u8; rows * cols];
    for r in 0..rows {
        let src = &bytes[r * stride..(r + 1) * stride];
        for c in 0..cols {
            let bit = c * b;
            let (byte, shift) = (bit / 8, bit % 8);
            let mut w = u32::from(src[byte]);
            if shift + b > 8 {
                w |= u32::from(src[byte + 1]) << 8;
            }
            out[r * cols + c] = ((w >> shift) & mask) as u8;
        }
    }
    out
}

fn floats(name: String, shape: Vec<usize>, v: &[f32]) -> TensorData {
    if fits_f16(v) {
        TensorData::f16(name, shape, v)
    } else {
        TensorData::f32(name, shape, v)
    }
}

/// The module entry of `quantization_config.modules` for a quantized weight.
pub(crate) fn scheme_of(q: &QuantizedWeight, act_bits: Option<u8>) -> Value {
    match q {
        QuantizedWeight::Affine(a) => json!({
            "type": "affine", "bits": a.bits().get(), "group_size": a.group_size(),
            "sym": a.sym(), "act_order": a.perm().is_some(), "smoothing": a.smoothing().is_some(),
            "act_bits": act_bits,
        }),
        QuantizedWeight::Binary(b) => {
            json!({"type": "binary", "block_size": b.block_size(), "act_bits": act_bits})
        }
    }
}

/// The native tensors of one quantized linear; `exact` keeps f32 scales even where f16 would
/// hold their range (for state that must come back bit for bit).
pub(crate) fn encode(prefix: &str, q: &QuantizedWeight, exact: bool) -> Vec<TensorData> {
    let floats = |name: String, shape: Vec<usize>, v: &[f32]| {
        if exact {
            TensorData::f32(name, shape, v)
        } else {
            floats(name, shape, v)
        }
    };
    match q {
        QuantizedWeight::Affine(a) => {
            let (o, n, g) = (a.out_features(), a.in_features(), a.n_groups());
            let bits = a.bits().get();
            let mut t = vec![
                u8_tensor(
                    format!("{prefix}.qweight"),
                    vec![o, (n * bits as usize).div_ceil(8)],
                    pack_bits(a.codes(), o, n, bits),
                ),
                floats(format!("{prefix}.scales"), vec![g, o], a.scales()),
            ];
            if !a.sym() {
                t.push(u8_tensor(
                    format!("{prefix}.qzeros"),
                    vec![g, o],
                    a.zeros().to_vec(),
                ));
            }
            if let Some(p) = a.perm() {
                let p: Vec<i32> = p.iter().map(|&v| v as i32).collect();
                t.push(TensorData::i32(format!("{prefix}.perm"), vec![n], &p));
            }
            if let Some(s) = a.smoothing() {
                t.push(TensorData::f32(format!("{prefix}.smoothing"), vec![n], s));
            }
            t
        }
        QuantizedWeight::Binary(b) => {
            let (o, n) = (b.out_features(), b.in_features());
            let nb = n.div_ceil(b.block_size());
            let salient: Vec<u8> = b.salient().iter().map(|&s| u8::from(s)).collect();
            let codes: Vec<i8> = b.tables().iter().flat_map(|t| t.codes()).collect();
            let scales: Vec<u8> = b
                .tables()
                .iter()
                .flat_map(|t| t.scale_bits().to_le_bytes())
                .collect();
            vec![
                u8_tensor(
                    format!("{prefix}.signs"),
                    vec![o, n.div_ceil(8)],
                    pack_bits(b.signs(), o, n, 1),
                ),
                u8_tensor(
                    format!("{prefix}.bit1"),
                    vec![o, n.div_ceil(8)],
                    pack_bits(b.bit1(), o, n, 1),
                ),
                u8_tensor(
                    format!("{prefix}.salient"),
                    vec![n.div_ceil(8)],
                    pack_bits(&salient, 1, n, 1),
                ),
                i8_tensor(format!("{prefix}.binary_codes"), vec![o, nb, 8], &codes),
                TensorData {
                    name: format!("{prefix}.binary_scales"),
                    dtype: Dtype::BF16,
                    shape: vec![o, nb],
                    bytes: scales,
                },
            ]
        }
    }
}

fn u8_exact(ckpt: &Checkpoint, module: &str, name: &str, shape: &[usize]) -> Result<Vec<u8>> {
    let t = ckpt.tensor(name)?;
    if t.shape != shape || t.dtype != Dtype::U8 {
        return Err(inconsistent(
            module,
            format!("{name} is {} {:?}, expected U8 {shape:?}", t.dtype, t.shape),
        ));
    }
    Ok(t.data.to_vec())
}

fn field<'a>(s: &'a Value, module: &str, key: &str) -> Result<&'a Value> {
    s.get(key)
        .ok_or_else(|| FormatError::Config(format!("{module}: native scheme has no {key}")))
}

/// Decodes one native linear of shape `[out, inp]` described by `scheme` (a module entry).
pub(crate) fn decode(
    ckpt: &Checkpoint,
    prefix: &str,
    out: usize,
    inp: usize,
    scheme: &Value,
) -> Result<QuantizedWeight> {
    let kind = field(scheme, prefix, "type")?.as_str().unwrap_or("");
    match kind {
        "affine" => {
            let raw_bits = field(scheme, prefix, "bits")?.as_u64().unwrap_or(0);
            let bits = u8::try_from(raw_bits)
                .ok()
                .and_then(|b| Bits::new(b).ok())
                .ok_or(FormatError::UnsupportedBits {
                    module: prefix.into(),
                    bits: raw_bits.min(u32::MAX as u64) as u32,
                    format: "the native format (1 to 8 bits)",
                })?;
            let group_size =
                match scheme.get("group_size") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(v.as_u64().filter(|&g| g > 0).ok_or_else(|| {
                        FormatError::Config(format!("{prefix}: bad group_size {v}"))
                    })? as usize),
                };
            let sym = field(scheme, prefix, "sym")?.as_bool().unwrap_or(false);
            let b = bits.get();
            let g = group_size.map_or(1, |gs| inp.div_ceil(gs));
            let codes = unpack_bits(
                &u8_exact(
                    ckpt,
                    prefix,
                    &format!("{prefix}.qweight"),
                    &[out, (inp * b as usize).div_ceil(8)],
                )?,
                out,
                inp,
                b,
            );
            let scales = f32_tensor(ckpt, prefix, &format!("{prefix}.scales"), &[g, out])?;
            let zeros = if sym {
                vec![1u8 << (b - 1); g * out]
            } else {
                u8_exact(ckpt, prefix, &format!("{prefix}.qzeros"), &[g, out])?
            };
            let perm = if ckpt.contains(&format!("{prefix}.perm")) {
                let raw = i32_tensor(ckpt, prefix, &format!("{prefix}.perm"), &[inp])?;
                Some(g_idx_from(prefix, &raw, inp)?)
            } else {
                None
            };
            let g_idx = canonical_g_idx(inp, group_size, perm.as_deref());
            let mut q = QuantizedLinear::new(
                out, inp, bits, group_size, sym, codes, scales, zeros, g_idx, perm,
            )?;
            if ckpt.contains(&format!("{prefix}.smoothing")) {
                q = q.with_smoothing(f32_tensor(
                    ckpt,
                    prefix,
                    &format!("{prefix}.smoothing"),
                    &[inp],
                )?)?;
            }
            Ok(QuantizedWeight::Affine(q))
        }
        "binary" => {
            let block = field(scheme, prefix, "block_size")?
                .as_u64()
                .filter(|&b| b > 0)
                .ok_or_else(|| FormatError::Config(format!("{prefix}: bad binary block_size")))?
                as usize;
            let nb = inp.div_ceil(block);
            let row = inp.div_ceil(8);
            let signs = unpack_bits(
                &u8_exact(ckpt, prefix, &format!("{prefix}.signs"), &[out, row])?,
                out,
                inp,
                1,
            );
            let bit1 = unpack_bits(
                &u8_exact(ckpt, prefix, &format!("{prefix}.bit1"), &[out, row])?,
                out,
                inp,
                1,
            );
            let salient: Vec<bool> = unpack_bits(
                &u8_exact(ckpt, prefix, &format!("{prefix}.salient"), &[row])?,
                1,
                inp,
                1,
            )
            .into_iter()
            .map(|v| v == 1)
            .collect();
            let codes = ckpt.tensor(&format!("{prefix}.binary_codes"))?;
            let scales = ckpt.tensor(&format!("{prefix}.binary_scales"))?;
            if codes.shape != [out, nb, 8]
                || codes.dtype != Dtype::I8
                || scales.shape != [out, nb]
                || scales.dtype != Dtype::BF16
            {
                return Err(inconsistent(prefix, format!(
                    "binary tables are {} {:?} and {} {:?}, expected I8 [{out}, {nb}, 8] and BF16 [{out}, {nb}]",
                    codes.dtype, codes.shape, scales.dtype, scales.shape
                )));
            }
            let tables = codes
                .data
                .chunks_exact(8)
                .zip(scales.data.chunks_exact(2))
                .map(|(c, s)| {
                    let c: [i8; 8] = std::array::from_fn(|i| c[i] as i8);
                    BinaryTable::from_parts(c, u16::from_le_bytes([s[0], s[1]]))
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(QuantizedWeight::Binary(BinaryLinear::new(
                out, inp, block, signs, bit1, salient, tables,
            )?))
        }
        other => Err(FormatError::Config(format!(
            "{prefix}: unknown native module type {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_streams_round_trip() {
        for bits in 1u8..=8 {
            let (r, c) = (3usize, 29usize);
            let v: Vec<u8> = (0..r * c)
                .map(|i| ((i * 13 + 5) % (1 << bits)) as u8)
                .collect();
            let p = pack_bits(&v, r, c, bits);
            assert_eq!(p.len(), r * (c * bits as usize).div_ceil(8));
            assert_eq!(unpack_bits(&p, r, c, bits), v);
        }
        // 3-bit codes 1..=8 (mod 8) in a 24-bit stream: 0b000_111_110_101_100_011_010_001.
        let p = pack_bits(&[1, 2, 3, 4, 5, 6, 7, 0], 1, 8, 3);
        assert_eq!(p, vec![0xd1, 0x58, 0x1f]);
    }
}
