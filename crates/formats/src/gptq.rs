//! GPTQ v1/v2 tensors of one linear (formats.md §2.1): `qweight` `[K·b/32, N]` packed along the
//! input dimension, `qzeros` `[G, N·b/32]` packed along the output dimension (v1: `zero − 1`),
//! f16 `scales` `[G, N]`, `g_idx` `[K]`.

use qwen3_quant_core::QuantizedLinear;
use qwen3_quant_io::write::TensorData;
use qwen3_quant_io::Checkpoint;
use qwen3_quant_kernels::gptq_format;

use crate::config::{GptqScheme, GptqZeros};
use crate::decoded::DecodedLinear;
use crate::error::{inconsistent, FormatError, Result};
use crate::tensors::{f16_scales, f32_tensor, g_idx_from, i32_tensor, shape_of};

fn check_bits(module: &str, bits: u8) -> Result<()> {
    if matches!(bits, 2 | 3 | 4 | 8) {
        Ok(())
    } else {
        Err(FormatError::UnsupportedBits {
            module: module.into(),
            bits: bits.into(),
            format: "GPTQ (2, 3, 4 or 8 bits)",
        })
    }
}

/// Whether v1 can hold this linear: a zero point of 0 would be stored as `−1` and read back as
/// `2^bits` (the v1 underflow), so any such zero needs v2.
pub(crate) fn v1_can_hold(q: &QuantizedLinear) -> bool {
    !q.zeros().contains(&0)
}

/// The GPTQ tensors of one quantized linear. `prefix` ends without a dot.
pub(crate) fn encode(
    prefix: &str,
    q: &QuantizedLinear,
    zeros: GptqZeros,
) -> Result<Vec<TensorData>> {
    let bits = q.bits().get();
    check_bits(prefix, bits)?;
    let (n, k, g) = (q.out_features(), q.in_features(), q.n_groups());
    let qweight = gptq_format::pack_qweight(q.codes(), n, k, bits)?;
    let maxq = q.bits().maxq();
    let stored: Vec<u8> = match zeros {
        GptqZeros::V2 => q.zeros().to_vec(),
        GptqZeros::V1 => {
            if !v1_can_hold(q) {
                return Err(inconsistent(
                    prefix,
                    "a zero point of 0 cannot be stored as GPTQ v1 (zero − 1 underflows)",
                ));
            }
            q.zeros().iter().map(|&z| (z - 1) & maxq).collect()
        }
    };
    let qzeros = gptq_format::pack_qzeros(&stored, g, n, bits)?;
    let g_idx: Vec<i32> = q.g_idx().iter().map(|&v| v as i32).collect();
    Ok(vec![
        TensorData::i32(
            format!("{prefix}.qweight"),
            vec![k * bits as usize / 32, n],
            &qweight,
        ),
        TensorData::i32(
            format!("{prefix}.qzeros"),
            vec![g, n * bits as usize / 32],
            &qzeros,
        ),
        f16_scales(prefix, format!("{prefix}.scales"), vec![g, n], q.scales())?,
        TensorData::i32(format!("{prefix}.g_idx"), vec![k], &g_idx),
    ])
}

/// Decodes the GPTQ tensors of linear `prefix` of shape `[out, inp]` with the given zeros
/// convention. Shapes are checked against the scheme and against each other.
pub(crate) fn decode(
    ckpt: &Checkpoint,
    prefix: &str,
    out: usize,
    inp: usize,
    scheme: &GptqScheme,
    zeros: GptqZeros,
) -> Result<DecodedLinear> {
    let bits = scheme.bits;
    check_bits(prefix, bits)?;
    let b = bits as usize;
    if (inp * b) % 32 != 0 || (out * b) % 32 != 0 {
        return Err(inconsistent(
            prefix,
            format!("[{out}, {inp}] cannot be packed in 32-bit words at {bits} bits"),
        ));
    }
    let qw_shape = shape_of(ckpt, &format!("{prefix}.qweight"))?;
    if qw_shape != [inp * b / 32, out] {
        // Say which width the words would fit, when one does: a lying `bits` is the usual cause.
        let guess = (qw_shape.len() == 2 && qw_shape[1] == out && inp > 0)
            .then(|| qw_shape[0] * 32 / inp)
            .filter(|g| qw_shape[0] * 32 == g * inp);
        return Err(inconsistent(
            prefix,
            format!(
                "qweight has shape {qw_shape:?}, {bits}-bit codes of [{out}, {inp}] need [{}, {out}]{}",
                inp * b / 32,
                guess.map_or(String::new(), |g| format!(" (it would fit {g}-bit codes)"))
            ),
        ));
    }
    let groups = shape_of(ckpt, &format!("{prefix}.scales"))?
        .first()
        .copied()
        .unwrap_or(0);
    if let Some(gs) = scheme.group_size {
        if !scheme.desc_act && groups != inp.div_ceil(gs) {
            return Err(inconsistent(
                prefix,
                format!(
                    "scales has {groups} groups, group_size {gs} over {inp} columns needs {}",
                    inp.div_ceil(gs)
                ),
            ));
        }
    }
    if groups == 0 {
        return Err(inconsistent(prefix, "scales has no groups"));
    }
    let qweight = i32_tensor(
        ckpt,
        prefix,
        &format!("{prefix}.qweight"),
        &[inp * b / 32, out],
    )?;
    let qzeros = i32_tensor(
        ckpt,
        prefix,
        &format!("{prefix}.qzeros"),
        &[groups, out * b / 32],
    )?;
    let scales = f32_tensor(ckpt, prefix, &format!("{prefix}.scales"), &[groups, out])?;
    let g_idx = match ckpt.contains(&format!("{prefix}.g_idx")) {
        true => {
            let raw = i32_tensor(ckpt, prefix, &format!("{prefix}.g_idx"), &[inp])?;
            g_idx_from(prefix, &raw, groups)?
        }
        false => match scheme.group_size {
            Some(gs) => (0..inp).map(|c| (c / gs) as u32).collect(),
            None => vec![0; inp],
        },
    };
    let codes = gptq_format::unpack_qweight(&qweight, out, inp, bits)?;
    let raw = gptq_format::unpack_qzeros(&qzeros, groups, out, bits)?;
    let add = match zeros {
        GptqZeros::V1 => 1.0,
        GptqZeros::V2 => 0.0,
    };
    Ok(DecodedLinear {
        out_features: out,
        in_features: inp,
        bits,
        codes,
        scales,
        zeros: raw.iter().map(|&z| f32::from(z) + add).collect(),
        g_idx,
        input_scale: None,
    })
}

/// Running evidence for the zero convention: the mean of `code − raw_zero` over all weights.
/// Trained weights have a mean close to zero within each group, so with the right convention
/// the mean of `code − zero` is close to 0; v1 files give about +1 for `code − raw`, v2 about 0.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ZeroEvidence {
    sum: f64,
    count: u64,
}

impl ZeroEvidence {
    /// Adds a linear decoded with `zeros_added` added to the raw zeros.
    pub(crate) fn add(&mut self, d: &DecodedLinear, zeros_added: f32) {
        let (o, n) = (d.out_features, d.in_features);
        // Sum per (group, row) of codes, then subtract count × zero: one pass over the codes.
        let mut s = 0f64;
        for r in 0..o {
            let row = &d.codes[r * n..(r + 1) * n];
            for (c, &q) in row.iter().enumerate() {
                let z = d.zeros[d.g_idx[c] as usize * o + r] - zeros_added;
                s += f64::from(q) - f64::from(z);
            }
        }
        self.sum += s;
        self.count += (o * n) as u64;
    }

    /// Mean of `code − raw zero`.
    pub(crate) fn mean_raw(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }

    /// The convention the data fits, when the evidence is clear (mean of `code − raw` nearer
    /// to 1 than to 0 by a wide margin means v1, the reverse v2).
    pub(crate) fn verdict(&self) -> Option<GptqZeros> {
        let m = self.mean_raw();
        if self.count == 0 {
            None
        } else if (m - 1.0).abs() < 0.3 {
            Some(GptqZeros::V1)
        } else if m.abs() < 0.3 {
            Some(GptqZeros::V2)
        } else {
            None
        }
    }
}
