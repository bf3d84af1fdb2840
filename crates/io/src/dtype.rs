//! Element types of safetensors tensors and their conversion to f32.

use std::fmt;

/// The element types this crate reads (names as in the safetensors header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dtype {
    /// bfloat16.
    BF16,
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
    /// IEEE double.
    F64,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer (packed GPTQ/AWQ words, token ids).
    I32,
    /// 16-bit signed integer.
    I16,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
    /// Boolean (one byte).
    Bool,
}

impl Dtype {
    /// Parses a header dtype string.
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "BF16" => Dtype::BF16,
            "F16" => Dtype::F16,
            "F32" => Dtype::F32,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "I16" => Dtype::I16,
            "I8" => Dtype::I8,
            "U8" => Dtype::U8,
            "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }

    /// The matching `safetensors` crate dtype.
    pub fn to_safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            Dtype::BF16 => S::BF16,
            Dtype::F16 => S::F16,
            Dtype::F32 => S::F32,
            Dtype::F64 => S::F64,
            Dtype::I64 => S::I64,
            Dtype::I32 => S::I32,
            Dtype::I16 => S::I16,
            Dtype::I8 => S::I8,
            Dtype::U8 => S::U8,
            Dtype::Bool => S::BOOL,
        }
    }

    /// The dtype of a `safetensors` crate dtype, if this crate reads it.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<Dtype> {
        use safetensors::Dtype as S;
        Some(match d {
            S::BF16 => Dtype::BF16,
            S::F16 => Dtype::F16,
            S::F32 => Dtype::F32,
            S::F64 => Dtype::F64,
            S::I64 => Dtype::I64,
            S::I32 => Dtype::I32,
            S::I16 => Dtype::I16,
            S::I8 => Dtype::I8,
            S::U8 => Dtype::U8,
            S::BOOL => Dtype::Bool,
            _ => return None,
        })
    }

    /// The header spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::BF16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::BF16 | Dtype::F16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// Whether the type is a float type.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::BF16 | Dtype::F16 | Dtype::F32 | Dtype::F64)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Widens little-endian bytes of a float dtype to f32 (bf16 is exact: it is the top half of an f32).
pub(crate) fn floats_to_f32(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) -> bool {
    out.clear();
    match dtype {
        Dtype::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        Dtype::F64 => out.extend(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("chunks_exact(8)")) as f32),
        ),
        _ => return false,
    }
    true
}

/// Narrows f32 values to bf16 with round-to-nearest-even (what `tensor.to(torch.bfloat16)` does).
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_widening_is_exact() {
        let vals = [1.0f32, -2.5, 3.140625, 0.0, -0.0, 1e-3];
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| f32_to_bf16_bits(*v).to_le_bytes())
            .collect();
        let mut out = Vec::new();
        assert!(floats_to_f32(Dtype::BF16, &bytes, &mut out));
        for (a, b) in vals.iter().zip(&out) {
            assert_eq!(half::bf16::from_f32(*a).to_f32(), *b);
        }
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in [
            Dtype::BF16,
            Dtype::F16,
            Dtype::F32,
            Dtype::F64,
            Dtype::I64,
            Dtype::I32,
            Dtype::I16,
            Dtype::I8,
            Dtype::U8,
            Dtype::Bool,
        ] {
            assert_eq!(Dtype::parse(d.as_str()), Some(d));
        }
        assert_eq!(Dtype::parse("F8_E4M3"), None);
    }
}
