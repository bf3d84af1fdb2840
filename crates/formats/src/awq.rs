//! AutoAWQ GEMM tensors of one linear (formats.md §2.2): 4-bit `qweight` `[K, N/8]` and
//! `qzeros` `[G, N/8]` packed along the output dimension in the interleaved nibble order,
//! zeros stored as they are, f16 `scales` `[G, N]`, no `g_idx`.

use qwen3_quant_core::QuantizedLinear;
use qwen3_quant_io::write::TensorData;
use qwen3_quant_io::Checkpoint;
use qwen3_quant_kernels::awq_format;

use crate::config::AwqScheme;
use crate::decoded::DecodedLinear;
use crate::error::{inconsistent, FormatError, Result};
use crate::tensors::{f16_scales, f32_tensor, i32_tensor};

const FORMAT: &str = "awq";

/// Why AWQ GEMM cannot hold `q`, if it cannot.
pub(crate) fn unsupported(q: &QuantizedLinear) -> Option<String> {
    if q.bits().get() != 4 {
        return Some(format!("{}-bit codes (AWQ GEMM is 4-bit only)", q.bits()));
    }
    if q.perm().is_some() {
        return Some("an act-order permutation (AWQ has no g_idx)".into());
    }
    if q.group_size().is_none() {
        return Some("per-channel scales (AWQ needs one group size for every linear)".into());
    }
    if q.out_features() % 8 != 0 {
        return Some("output features not a multiple of 8".into());
    }
    None
}

/// The AWQ tensors of one quantized linear.
pub(crate) fn encode(prefix: &str, q: &QuantizedLinear) -> Result<Vec<TensorData>> {
    if let Some(reason) = unsupported(q) {
        return Err(FormatError::UnsupportedByFormat {
            format: FORMAT,
            module: prefix.into(),
            reason,
        });
    }
    let (n, k, g) = (q.out_features(), q.in_features(), q.n_groups());
    let qweight = awq_format::pack_qweight(q.codes(), n, k)?;
    let qzeros = awq_format::pack_qzeros(q.zeros(), g, n)?;
    Ok(vec![
        TensorData::i32(format!("{prefix}.qweight"), vec![k, n / 8], &qweight),
        TensorData::i32(format!("{prefix}.qzeros"), vec![g, n / 8], &qzeros),
        f16_scales(prefix, format!("{prefix}.scales"), vec![g, n], q.scales())?,
    ])
}

/// Decodes the AWQ tensors of linear `prefix` of shape `[out, inp]`.
pub(crate) fn decode(
    ckpt: &Checkpoint,
    prefix: &str,
    out: usize,
    inp: usize,
    s: &AwqScheme,
) -> Result<DecodedLinear> {
    if s.bits != 4 {
        return Err(FormatError::UnsupportedBits {
            module: prefix.into(),
            bits: s.bits.into(),
            format: "AWQ GEMM (4 bits)",
        });
    }
    if out % 8 != 0 {
        return Err(inconsistent(
            prefix,
            format!("{out} output features are not a multiple of 8"),
        ));
    }
    let groups = inp.div_ceil(s.group_size);
    let qweight = i32_tensor(ckpt, prefix, &format!("{prefix}.qweight"), &[inp, out / 8])?;
    let scales = f32_tensor(ckpt, prefix, &format!("{prefix}.scales"), &[groups, out])?;
    let zeros = if s.zero_point {
        let qz = i32_tensor(
            ckpt,
            prefix,
            &format!("{prefix}.qzeros"),
            &[groups, out / 8],
        )?;
        awq_format::unpack_qzeros(&qz, groups, out)?
            .into_iter()
            .map(f32::from)
            .collect()
    } else {
        vec![8.0; groups * out]
    };
    Ok(DecodedLinear {
        out_features: out,
        in_features: inp,
        bits: 4,
        codes: awq_format::unpack_qweight(&qweight, out, inp)?,
        scales,
        zeros,
        g_idx: (0..inp).map(|c| (c / s.group_size) as u32).collect(),
        input_scale: None,
    })
}
