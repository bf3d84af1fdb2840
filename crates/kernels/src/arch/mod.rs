//! ISA-specific kernels. Everything here is `unsafe` and reached only through the dispatch in
//! the safe front ends, which check the CPU features and the buffer bounds first.

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
pub(crate) mod x86_avx2_binary;

#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
pub(crate) mod x86_avx2_q8;

#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
pub(crate) mod x86_avx512;

#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
pub(crate) mod x86_avx512_binary;

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
