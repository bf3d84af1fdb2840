//! The AutoAWQ GEMM layout (formats.md §2.2): 4-bit, packed along the **output** dimension.
//!
//! `qweight` is `[k, n/8]` int32: word `(kk, c)` holds, in nibble slot `i` (bits `4i..4i+4`), the
//! code of output column `8c + ORDER_MAP[i]` at input row `kk`. `qzeros` `[groups, n/8]` uses the
//! same packing and stores raw zero points (no "−1").

use crate::gptq_format::check_codes as check_codes_range;
use crate::{check_len, checked_mul, KernelError, Result};

/// Nibble slot `i` holds column `8c + ORDER_MAP[i]`.
pub const ORDER_MAP: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
/// Column `8c + j` lives in nibble slot `REVERSE_ORDER[j]`.
pub const REVERSE_ORDER: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

fn check_n(n: usize) -> Result<()> {
    if n % 8 == 0 {
        Ok(())
    } else {
        Err(KernelError::NotMultiple {
            what: "n",
            value: n,
            multiple: 8,
        })
    }
}

/// Packs codes `[n, k]` into AWQ `qweight` `[k, n/8]`.
///
/// # Errors
/// Wrong `codes` length, `n` not a multiple of 8, or a code `≥ 16`.
pub fn pack_qweight(codes: &[u8], n: usize, k: usize) -> Result<Vec<i32>> {
    check_n(n)?;
    check_len("codes", checked_mul("codes", n, k)?, codes.len())?;
    check_codes_range(codes, 4)?;
    let nw = n / 8;
    let mut out = vec![0i32; k * nw];
    for kk in 0..k {
        for c in 0..nw {
            let mut w = 0u32;
            for (i, &j) in ORDER_MAP.iter().enumerate() {
                w |= u32::from(codes[(8 * c + j) * k + kk]) << (4 * i);
            }
            out[kk * nw + c] = w as i32;
        }
    }
    Ok(out)
}

/// Unpacks AWQ `qweight` `[k, n/8]` into codes `[n, k]`.
///
/// # Errors
/// `n` not a multiple of 8 or a wrong `qweight` length.
pub fn unpack_qweight(qweight: &[i32], n: usize, k: usize) -> Result<Vec<u8>> {
    check_n(n)?;
    let nw = n / 8;
    check_len("qweight", checked_mul("qweight", k, nw)?, qweight.len())?;
    let mut out = vec![0u8; n * k];
    for kk in 0..k {
        for c in 0..nw {
            let w = qweight[kk * nw + c] as u32;
            for (i, &j) in ORDER_MAP.iter().enumerate() {
                out[(8 * c + j) * k + kk] = ((w >> (4 * i)) & 0xF) as u8;
            }
        }
    }
    Ok(out)
}

/// Packs zero points `[groups, n]` into AWQ `qzeros` `[groups, n/8]`.
///
/// # Errors
/// Wrong `zeros` length, `n` not a multiple of 8, or a zero `≥ 16`.
pub fn pack_qzeros(zeros: &[u8], groups: usize, n: usize) -> Result<Vec<i32>> {
    check_n(n)?;
    check_len("zeros", checked_mul("zeros", groups, n)?, zeros.len())?;
    check_codes_range(zeros, 4)?;
    let nw = n / 8;
    let mut out = vec![0i32; groups * nw];
    for g in 0..groups {
        for c in 0..nw {
            let mut w = 0u32;
            for (i, &j) in ORDER_MAP.iter().enumerate() {
                w |= u32::from(zeros[g * n + 8 * c + j]) << (4 * i);
            }
            out[g * nw + c] = w as i32;
        }
    }
    Ok(out)
}

/// Unpacks AWQ `qzeros` `[groups, n/8]` into zero points `[groups, n]`.
///
/// # Errors
/// `n` not a multiple of 8 or a wrong `qzeros` length.
pub fn unpack_qzeros(qzeros: &[i32], groups: usize, n: usize) -> Result<Vec<u8>> {
    check_n(n)?;
    let nw = n / 8;
    check_len("qzeros", checked_mul("qzeros", groups, nw)?, qzeros.len())?;
    let mut out = vec![0u8; groups * n];
    for g in 0..groups {
        for c in 0..nw {
            let w = qzeros[g * nw + c] as u32;
            for (i, &j) in ORDER_MAP.iter().enumerate() {
                out[g * n + 8 * c + j] = ((w >> (4 * i)) & 0xF) as u8;
            }
        }
    }
    Ok(out)
}
