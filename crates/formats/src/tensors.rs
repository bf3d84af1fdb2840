//! Shape-checked tensor reads shared by the readers, and float encodings for the writers.

use qwen3_quant_io::write::TensorData;
use qwen3_quant_io::{Checkpoint, Dtype};

use crate::error::{inconsistent, FormatError, Result};

/// Reads `name` as i32 words and checks its shape (`module` names the linear in errors).
pub(crate) fn i32_tensor(
    ckpt: &Checkpoint,
    module: &str,
    name: &str,
    shape: &[usize],
) -> Result<Vec<i32>> {
    let t = ckpt.tensor(name)?;
    if t.shape != shape {
        return Err(inconsistent(
            module,
            format!(
                "{name} has shape {:?}, the scheme implies {shape:?}",
                t.shape
            ),
        ));
    }
    if t.dtype != Dtype::I32 {
        return Err(inconsistent(
            module,
            format!("{name} is {}, expected I32", t.dtype),
        ));
    }
    Ok(t.to_i32()?)
}

/// Reads a float tensor widened to f32, checking shape and finiteness.
pub(crate) fn f32_tensor(
    ckpt: &Checkpoint,
    module: &str,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    let t = ckpt.tensor(name)?;
    if t.shape != shape {
        return Err(inconsistent(
            module,
            format!(
                "{name} has shape {:?}, the scheme implies {shape:?}",
                t.shape
            ),
        ));
    }
    Ok(t.to_f32_finite()?)
}

/// The shape of `name`, or a missing-tensor error.
pub(crate) fn shape_of(ckpt: &Checkpoint, name: &str) -> Result<Vec<usize>> {
    Ok(ckpt.tensor(name)?.shape.to_vec())
}

/// Group indices from an i32 `g_idx` tensor (negative values are out of range).
pub(crate) fn g_idx_from(module: &str, raw: &[i32], groups: usize) -> Result<Vec<u32>> {
    raw.iter()
        .enumerate()
        .map(|(column, &g)| {
            if g < 0 || g as usize >= groups {
                Err(FormatError::GIdxOutOfRange {
                    module: module.into(),
                    column,
                    value: g.into(),
                    groups,
                })
            } else {
                Ok(g as u32)
            }
        })
        .collect()
}

/// The element type for full-precision tensors, from `config.json`'s `dtype`/`torch_dtype`.
pub(crate) fn float_dtype(name: Option<&str>) -> Dtype {
    match name {
        Some("float16") | Some("half") => Dtype::F16,
        Some("float32") | Some("float") => Dtype::F32,
        _ => Dtype::BF16,
    }
}

/// A float tensor in `dtype` (BF16, F16 or F32), rounding to nearest even.
pub(crate) fn float_tensor(name: String, dtype: Dtype, shape: Vec<usize>, v: &[f32]) -> TensorData {
    match dtype {
        Dtype::F16 => TensorData::f16(name, shape, v),
        Dtype::F32 => TensorData::f32(name, shape, v),
        _ => TensorData::bf16(name, shape, v),
    }
}

/// f16 scales, or an error when a value does not fit (f16 overflows above 65504).
pub(crate) fn f16_scales(
    module: &str,
    name: String,
    shape: Vec<usize>,
    v: &[f32],
) -> Result<TensorData> {
    if let Some(x) = v.iter().find(|x| !half::f16::from_f32(**x).is_finite()) {
        return Err(inconsistent(
            module,
            format!("scale {x} does not fit in f16"),
        ));
    }
    Ok(TensorData::f16(name, shape, v))
}

/// Whether every value survives a round trip through f16 within its relative precision
/// (finite, and not in the subnormal range where f16 loses bits).
pub(crate) fn fits_f16(v: &[f32]) -> bool {
    v.iter().all(|&x| {
        let h = half::f16::from_f32(x);
        h.is_finite() && (x == 0.0 || h.is_normal())
    })
}

/// A u8 tensor.
pub(crate) fn u8_tensor(name: String, shape: Vec<usize>, bytes: Vec<u8>) -> TensorData {
    TensorData {
        name,
        dtype: Dtype::U8,
        shape,
        bytes,
    }
}

/// An i8 tensor.
pub(crate) fn i8_tensor(name: String, shape: Vec<usize>, v: &[i8]) -> TensorData {
    TensorData {
        name,
        dtype: Dtype::I8,
        shape,
        bytes: v.iter().map(|&x| x as u8).collect(),
    }
}
