//! The GPTQ ecosystem layout (AutoGPTQ / GPTQModel / vLLM `gptq`; formats.md §2.1).
//!
//! `qweight` is `[k·bits/32, n]` int32, packed along the input dimension: for each output column,
//! the `k` codes form one little-endian bit stream, value `i` at bit `bits·i`, LSB first, cut into
//! 32-bit words. For 2/4/8 bits that is `32/bits` whole values per word; for 3 bits, 32 values
//! fill 3 words and values 10 and 21 straddle word boundaries exactly as AutoGPTQ packs them.
//! `qzeros` is `[groups, n·bits/32]`, the same bit stream along the output dimension. Zeros are
//! packed raw: apply the v1 "zero − 1" convention before packing if wanted.
//!
//! Supported widths: 1, 2, 3, 4, 8.

use crate::{check_len, checked_mul, KernelError, Result};

fn check_bits(bits: u8) -> Result<()> {
    if matches!(bits, 1 | 2 | 3 | 4 | 8) {
        Ok(())
    } else {
        Err(KernelError::UnsupportedBits { bits })
    }
}

pub(crate) fn check_codes(codes: &[u8], bits: u8) -> Result<()> {
    let limit = 1u16 << bits;
    match codes
        .iter()
        .enumerate()
        .find(|(_, &c)| u16::from(c) >= limit)
    {
        Some((index, &code)) => Err(KernelError::CodeOutOfRange { index, code, bits }),
        None => Ok(()),
    }
}

fn words_for(what: &'static str, len: usize, bits: u8) -> Result<usize> {
    let total = checked_mul(what, len, bits as usize)?;
    if total % 32 != 0 {
        return Err(KernelError::NotMultiple {
            what,
            value: total,
            multiple: 32,
        });
    }
    Ok(total / 32)
}

/// Packs `vals` (`len` values, produced by `get`) as a bit stream into `out[w·stride]`.
fn pack_stream(len: usize, bits: u8, get: impl Fn(usize) -> u8, mut put: impl FnMut(usize, u32)) {
    let b = bits as usize;
    let mut acc: u64 = 0;
    let mut nbits = 0usize;
    let mut w = 0usize;
    for i in 0..len {
        acc |= u64::from(get(i)) << nbits;
        nbits += b;
        if nbits >= 32 {
            put(w, acc as u32);
            w += 1;
            acc >>= 32;
            nbits -= 32;
        }
    }
    debug_assert_eq!(nbits, 0);
}

fn unpack_stream(
    len: usize,
    bits: u8,
    word: impl Fn(usize) -> u32,
    mut put: impl FnMut(usize, u8),
) {
    let b = bits as usize;
    let mask = (1u64 << b) - 1;
    let mut acc: u64 = 0;
    let mut nbits = 0usize;
    let mut w = 0usize;
    for i in 0..len {
        if nbits < b {
            acc |= u64::from(word(w)) << nbits;
            w += 1;
            nbits += 32;
        }
        put(i, (acc & mask) as u8);
        acc >>= b;
        nbits -= b;
    }
}

/// Packs codes `[n, k]` (row-major, output-major) into GPTQ `qweight` `[k·bits/32, n]`.
///
/// # Errors
/// Unsupported bits, wrong `codes` length, `k·bits` not a multiple of 32, or a code `≥ 2^bits`.
pub fn pack_qweight(codes: &[u8], n: usize, k: usize, bits: u8) -> Result<Vec<i32>> {
    check_bits(bits)?;
    check_len("codes", checked_mul("codes", n, k)?, codes.len())?;
    let kw = words_for("k * bits", k, bits)?;
    check_codes(codes, bits)?;
    let mut out = vec![0i32; kw * n];
    for c in 0..n {
        let col = &codes[c * k..(c + 1) * k];
        pack_stream(k, bits, |i| col[i], |w, v| out[w * n + c] = v as i32);
    }
    Ok(out)
}

/// Unpacks GPTQ `qweight` `[k·bits/32, n]` into codes `[n, k]`.
///
/// # Errors
/// Unsupported bits, `k·bits` not a multiple of 32, or a wrong `qweight` length.
pub fn unpack_qweight(qweight: &[i32], n: usize, k: usize, bits: u8) -> Result<Vec<u8>> {
    check_bits(bits)?;
    let kw = words_for("k * bits", k, bits)?;
    check_len("qweight", checked_mul("qweight", kw, n)?, qweight.len())?;
    let mut out = vec![0u8; n * k];
    for c in 0..n {
        let col = &mut out[c * k..(c + 1) * k];
        unpack_stream(k, bits, |w| qweight[w * n + c] as u32, |i, v| col[i] = v);
    }
    Ok(out)
}

/// Packs zero points `[groups, n]` into GPTQ `qzeros` `[groups, n·bits/32]` (raw values).
///
/// # Errors
/// Unsupported bits, wrong `zeros` length, `n·bits` not a multiple of 32, or a zero `≥ 2^bits`.
pub fn pack_qzeros(zeros: &[u8], groups: usize, n: usize, bits: u8) -> Result<Vec<i32>> {
    check_bits(bits)?;
    check_len("zeros", checked_mul("zeros", groups, n)?, zeros.len())?;
    let nw = words_for("n * bits", n, bits)?;
    check_codes(zeros, bits)?;
    let mut out = vec![0i32; groups * nw];
    for g in 0..groups {
        let src = &zeros[g * n..(g + 1) * n];
        let dst = &mut out[g * nw..(g + 1) * nw];
        pack_stream(n, bits, |i| src[i], |w, v| dst[w] = v as i32);
    }
    Ok(out)
}

/// Unpacks GPTQ `qzeros` `[groups, n·bits/32]` into raw zero points `[groups, n]`.
///
/// # Errors
/// Unsupported bits, `n·bits` not a multiple of 32, or a wrong `qzeros` length.
pub fn unpack_qzeros(qzeros: &[i32], groups: usize, n: usize, bits: u8) -> Result<Vec<u8>> {
    check_bits(bits)?;
    let nw = words_for("n * bits", n, bits)?;
    check_len("qzeros", checked_mul("qzeros", groups, nw)?, qzeros.len())?;
    let mut out = vec![0u8; groups * n];
    for g in 0..groups {
        let src = &qzeros[g * nw..(g + 1) * nw];
        let dst = &mut out[g * n..(g + 1) * n];
        unpack_stream(n, bits, |w| src[w] as u32, |i, v| dst[i] = v);
    }
    Ok(out)
}
