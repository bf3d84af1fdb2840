//! Packed low-bit weight layouts and CPU matrix kernels for qwen3-quant.
//!
//! This crate is a leaf: it knows nothing about models or quantization methods. It provides
//!
//! * [`PackedMatrix`]: a `[rows, cols]` weight matrix stored as packed 1/2/3/4/8-bit codes with
//!   per-group affine parameters (`w = scale · code + offset`) and an optional act-order column
//!   permutation, with [`PackedMatrix::gemv`] (decode) and [`PackedMatrix::gemm`] (prefill) kernels
//!   that never materialise the whole f32 weight, and an optional per-input-column scale
//!   (SmoothQuant's `x / s`, [`PackedMatrix::with_input_scale`]);
//! * [`BinaryMatrix`]: BiLLM's binary residual weights (salient columns binarized twice, the rest
//!   in two binary groups, a mean and scale per binarization), 2 bits per weight plus an 8-entry
//!   int8 table per (row, block) (about 2.63 bits per weight), computed on by one table lookup
//!   per 64 columns with int8 activations (`vpshufb` + `vpdpbusd`);
//! * [`gptq_format`] and [`awq_format`]: bit-exact packers for the GPTQ and AutoAWQ checkpoint layouts;
//! * [`int8`]: W8A8 (SmoothQuant-style) per-token activation quantization and an int8 GEMM with
//!   exact i32 accumulation (AVX-512-VNNI when available);
//! * [`dense`]: the f32 baseline used by the model;
//! * [`bench`](mod@bench): the measurement helpers behind `qwen3-quant bench gemv|gemm`.
//!
//! # Dispatch
//! A portable scalar implementation is always compiled. On x86-64, AVX2+FMA and AVX-512
//! (F/BW/VL) implementations are selected at runtime, once (see [`active_kernel`]); on AArch64,
//! NEON (the AArch64 baseline) for the row kernels, tile dequantization, the binary table lookup
//! and the int8 dot (`scripts/test-aarch64.sh` runs these tests under qemu). The choice
//! can be forced with the environment variable `QWEN3_QUANT_KERNEL=scalar|avx2|avx512|neon` (read once)
//! or with [`set_kernel_choice`]; a request for an ISA the CPU lacks falls back to the best one
//! it has, so forcing never causes undefined behaviour.
//!
//! AVX-512 code needs Rust ≥ 1.89 (stable intrinsics); `build.rs` enables it with
//! `cfg(qwen3_avx512)` only on such compilers, so the crate still builds with the workspace MSRV
//! (scalar + AVX2 then). `QWEN3_QUANT_NO_BF16=1` (read once) disables the BF16 GEMV below, for A/B
//! measurements.
//!
//! # Kernels
//! * **GEMV** (`y = W·x`): codes are decoded 16 columns at a time in registers (one 16-byte load,
//!   zero-extend, shift, mask; see the layout in [`PackedMatrix`]), never materialising W. Per
//!   row, `y = Σ_g scale_g·Σ_{j∈g} code_j·x_j + Σ_g offset_g·Σ_{j∈g} x_j`; the second term uses
//!   per-group sums of `x` computed once per call. With AVX-512-BF16 and ≤ 4-bit codes, a code
//!   OR'ed into `0x4300` *is* the bf16 number `128 + code`, and `x` is split into two bf16
//!   halves `hi + lo` (relative error ≤ 2⁻¹⁷), so `vdpbf16ps` does the multiply-accumulate with no
//!   int→float conversion; the `128·Σ(hi+lo)` bias is removed per ≤128-column segment. Rows
//!   are processed in pairs there, so each activation load feeds two rows.
//!   Rows are split across rayon threads when the matrix is large enough to pay for it.
//! * **Int8-activation GEMV** ([`PackedMatrix::gemv_q8`], the default decode path of
//!   [`PackedMatrix::gemv`] unless `QWEN3_QUANT_GEMV=exact` is set, read once): like llama.cpp's Q8
//!   activation blocks, `x` is quantized once per call to int8 per block of 32 columns (4-bit codes; 64 for 2/3-bit)
//!   (`dx = max|x|/127`, round half to even), and AVX-512-VNNI `vpdpbusd` multiplies the unsigned
//!   1/2/3/4-bit codes (masked out of one 64-byte load, no conversion) with the pre-arranged int8
//!   activations; each block's exact i32 sum gets one f32 FMA with `scale·dx`, the offset term
//!   uses the exact f32 `Σx`. With GFNI one `vgf2p8affineqb` per plane replaces each shift-and-mask
//!   (3-bit: +9% compute). 4-bit is memory-bound and runs one row per pass, so its reads form a
//!   single sequential stream (rows are contiguous) that software prefetch keeps one row ahead:
//!   ~90% of the read probe against ~75% with four interleaved row streams. 1/2/3-bit are
//!   compute-bound and run eight rows per pass sharing each activation load. One rayon task per
//!   block of ≥ 64 rows. Error bound: [`tolerance::q8_gemv_bound`] (activation rounding), not the
//!   f32 tolerance; where it does not apply (no VNNI, 8-bit, groups not a multiple of 128) it is
//!   the exact kernel, [`PackedMatrix::gemv_exact`], which is the f32-activation reference.
//! * **GEMM** (`Y = X·Wᵀ`, prefill): for more than 4 tokens, each rayon task owns a block of
//!   256 output rows and walks K in 512-column panels: the panel is dequantized (SIMD) into a
//!   512 KB scratch tile and multiplied with the `gemm` crate's f32 micro-kernels, accumulating
//!   into the task's columns of `Y`. Up to 4 tokens run the GEMV kernel per token.
//! * **Act-order**: `x` is permuted into storage order once per call (`x_s[j] = x[perm[j]]`).
//!
//! # Numerics
//! Activations stay f32 (or an exact-to-2⁻¹⁷ bf16 pair) in the packed kernels; each group's dot
//! product `Σ code·x` is accumulated in f32 and then scaled. The summation order differs from a
//! dequantize-then-matmul reference, so results agree to a relative tolerance, documented per bit
//! width in [`tolerance`] (`|Δy| ≤ tol·‖x‖·‖w_row‖`), not bit for bit. The int8 GEMM is exact.
//! All rounding is half to even.
//!
//! # Example
//! ```
//! use qwen3_quant_kernels::PackedMatrix;
//! // 2 x 4 matrix, 4-bit codes, one group per row (per-channel).
//! let codes = [0u8, 1, 2, 3, 15, 14, 13, 12];
//! let scales = [0.5f32, 1.0];
//! let offsets = [-1.0f32, 0.0];
//! let w = PackedMatrix::new(4, 2, 4, 4, &codes, &scales, &offsets, None).unwrap();
//! let x = [1.0f32, 2.0, 3.0, 4.0];
//! let mut y = [0.0f32; 2];
//! w.gemv_exact(&x, &mut y).unwrap();
//! // row 0: weights [-1, -0.5, 0, 0.5] -> -1 - 1 + 0 + 2 = 0
//! // row 1: weights [15, 14, 13, 12]  -> 15 + 28 + 39 + 48 = 130
//! assert!((y[0] - 0.0).abs() < 1e-5 && (y[1] - 130.0).abs() < 1e-3);
//! // The decode path may round the activations to int8 (llama.cpp-style): close, not exact.
//! let mut yq = [0.0f32; 2];
//! w.gemv(&x, &mut yq).unwrap();
//! assert!((yq[1] - 130.0).abs() < 1.0);
//! ```
#![warn(missing_docs)]

pub mod attention;
pub mod awq_format;
pub mod bench;
mod binary;
pub mod dense;
mod dispatch;
pub mod gptq_format;
pub mod int8;
mod packed;
pub mod round;
pub mod tolerance;

mod arch;

pub use binary::{
    table_index, BinaryMatrix, BinaryParams, BinaryTable, BINARY_BLOCK, BINARY_CHUNK,
    BINARY_TABLE_BITS,
};
pub use dispatch::{active_kernel, available_kernels, set_kernel_choice, KernelChoice};
pub use packed::{prefill_int8, set_prefill_int8, PackedMatrix};

/// Errors reported by the kernels crate. Bad inputs always produce one of these, never a panic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The bit width is not supported by this operation.
    #[error("unsupported bit width {bits}")]
    UnsupportedBits {
        /// The rejected bit width.
        bits: u8,
    },
    /// A slice length does not match the shape it should have.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which argument.
        what: &'static str,
        /// The expected length.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A dimension must be a multiple of some number (e.g. `k·bits` of 32 for GPTQ packing).
    #[error("{what} = {value} must be a multiple of {multiple}")]
    NotMultiple {
        /// Which dimension.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The required divisor.
        multiple: usize,
    },
    /// The group size is zero.
    #[error("invalid group size {group_size} for {cols} columns")]
    InvalidGroupSize {
        /// The rejected group size.
        group_size: usize,
        /// The number of columns.
        cols: usize,
    },
    /// A code does not fit in the declared bit width.
    #[error("code {code} at index {index} does not fit in {bits} bits")]
    CodeOutOfRange {
        /// Flat index of the offending code.
        index: usize,
        /// The code.
        code: u8,
        /// The bit width.
        bits: u8,
    },
    /// The column permutation is not a permutation of `0..cols`.
    #[error("perm is not a permutation of 0..cols")]
    InvalidPermutation,
    /// A parameter that must be finite is NaN or infinite.
    #[error("non-finite value in {what}")]
    NonFinite {
        /// Which argument.
        what: &'static str,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, KernelError>;

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::ShapeMismatch {
            what,
            expected,
            got,
        })
    }
}

pub(crate) fn checked_mul(what: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or(KernelError::ShapeMismatch {
        what,
        expected: usize::MAX,
        got: 0,
    })
}

/// Test support shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::{Mutex, MutexGuard};

    static GLOBALS: Mutex<()> = Mutex::new(());

    /// Serialises the unit tests that change the process-wide kernel choice or arithmetic
    /// ([`crate::set_kernel_choice`], [`crate::dense::set_compute`]) with those whose results
    /// depend on them: tests run on parallel threads of one process.
    pub(crate) fn hold_globals() -> MutexGuard<'static, ()> {
        GLOBALS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A packed matrix of deterministic pseudo-random codes, scales and offsets (`seed` shifts
    /// them), in act-order (columns reversed) when `perm` is set.
    pub(crate) fn packed_matrix(
        bits: u8,
        rows: usize,
        cols: usize,
        gs: usize,
        seed: usize,
        perm: bool,
    ) -> crate::PackedMatrix {
        let codes: Vec<u8> = (0..rows * cols)
            .map(|i| ((((i + seed) * 2654435761usize) >> 7) % (1 << bits)) as u8)
            .collect();
        let ng = cols.div_ceil(gs);
        let scales: Vec<f32> = (0..rows * ng)
            .map(|i| 0.01 + ((i + seed) % 7) as f32 * 0.003)
            .collect();
        let offsets: Vec<f32> = (0..rows * ng)
            .map(|i| -0.05 + ((i + seed) % 5) as f32 * 0.01)
            .collect();
        let perm = perm.then(|| (0..cols as u32).rev().collect());
        crate::PackedMatrix::new(bits, rows, cols, gs, &codes, &scales, &offsets, perm).unwrap()
    }
}
