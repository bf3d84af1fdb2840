//! Measurement helpers behind `qwen3-quant bench gemv|gemm` (cli-contract.md).
//!
//! [`run`] builds `layers` distinct random weight matrices (so that a large `layers` measures
//! memory rather than cache), times the packed kernel cycling over them, then times the f32
//! kernel the model uses ([`crate::dense::matmul_wt`]) on the same shapes, back to back.

use std::hint::black_box;
use std::time::Instant;

use rayon::prelude::*;

use crate::{BinaryMatrix, BinaryParams, KernelError, PackedMatrix, Result, BINARY_BLOCK};

/// Which product to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchKernel {
    /// One token: `y = W · x`.
    Gemv,
    /// `tokens` tokens: `Y = X · Wᵀ`.
    Gemm,
}

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchSpec {
    /// GEMV or GEMM.
    pub kernel: BenchKernel,
    /// Code width (1, 2, 3, 4, 8), or 32 for the dense f32 weight only.
    pub bits: u8,
    /// Group size (`0` or `≥ cols` means per-channel).
    pub group_size: usize,
    /// Output features `N`.
    pub rows: usize,
    /// Input features `K`.
    pub cols: usize,
    /// Tokens `T` (forced to 1 for GEMV).
    pub tokens: usize,
    /// Distinct weight matrices cycled through (≥ 1).
    pub layers: usize,
    /// Time budget per kernel (packed and f32 each), in seconds.
    pub seconds: f64,
    /// GEMV only: time the exact f32-activation kernel ([`PackedMatrix::gemv_exact`]) instead of
    /// the default decode path ([`PackedMatrix::gemv`], int8 activations where that applies).
    pub exact: bool,
    /// BiLLM binary weights ([`BinaryMatrix`], [`random_binary`]) instead of packed codes;
    /// `bits` and `group_size` are then ignored.
    pub binary: bool,
}

/// Measured figures (per call = one product with one weight matrix).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Packed kernel, microseconds per call (equal to `f32_us_per_call` for `bits = 32`).
    pub us_per_call: f64,
    /// Dense f32 kernel on the same shape, microseconds per call.
    pub f32_us_per_call: f64,
    /// Weight bytes one call reads ([`PackedMatrix::storage_bytes`], or `4·N·K` for f32).
    pub weight_bytes_per_call: usize,
    /// `weight_bytes_per_call / us_per_call`, in GB/s (10⁹ bytes).
    pub gb_per_s: f64,
    /// `2·T·N·K / us_per_call`, in GFLOP/s.
    pub gflops: f64,
}

/// SplitMix64: deterministic pseudo-random data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// A random packed matrix (codes uniform, scales ~ 0.01, offsets = −scale·mid).
pub fn random_packed(
    bits: u8,
    rows: usize,
    cols: usize,
    group_size: usize,
    seed: u64,
) -> Result<PackedMatrix> {
    let gs = if group_size == 0 || group_size > cols {
        cols.max(1)
    } else {
        group_size
    };
    let ng = cols.div_ceil(gs);
    let mut rng = Rng(seed);
    let mask = if bits >= 8 { 0xFF } else { (1u64 << bits) - 1 };
    let codes: Vec<u8> = (0..rows * cols)
        .map(|_| (rng.next() & mask) as u8)
        .collect();
    let scales: Vec<f32> = (0..rows * ng).map(|_| 0.01 + 0.005 * rng.f32()).collect();
    let mid = (mask as f32) / 2.0;
    let offsets: Vec<f32> = scales.iter().map(|s| -s * mid).collect();
    PackedMatrix::new(bits, rows, cols, gs, &codes, &scales, &offsets, None)
}

/// A random BiLLM-style binary matrix (random signs and groups, 1 in 16 columns salient).
pub fn random_binary(rows: usize, cols: usize, seed: u64) -> Result<BinaryMatrix> {
    let mut rng = Rng(seed);
    let signs: Vec<u8> = (0..rows * cols).map(|_| (rng.next() & 1) as u8).collect();
    let bit1: Vec<u8> = (0..rows * cols).map(|_| (rng.next() & 1) as u8).collect();
    let salient: Vec<bool> = (0..cols).map(|_| rng.next() % 16 == 0).collect();
    let params: Vec<BinaryParams> = (0..rows * cols.div_ceil(BINARY_BLOCK))
        .map(|_| BinaryParams {
            sparse: [0.01 * rng.f32(), 0.02],
            concentrated: [0.01 * rng.f32(), 0.005],
            salient_first: [0.05 * rng.f32(), 0.1],
            salient_second: [0.01 * rng.f32(), 0.03],
        })
        .collect();
    BinaryMatrix::new(rows, cols, &signs, &bit1, &salient, &params)
}

fn time_loop(seconds: f64, mut f: impl FnMut(usize)) -> f64 {
    // Warm-up call, then as many calls as fit in the budget (at least 3).
    f(0);
    let start = Instant::now();
    let mut calls = 0usize;
    loop {
        f(calls + 1);
        calls += 1;
        let el = start.elapsed().as_secs_f64();
        if (el >= seconds && calls >= 3) || calls >= 1_000_000 {
            return el * 1e6 / calls as f64;
        }
    }
}

/// Runs one benchmark (see the module docs).
///
/// # Errors
/// [`KernelError::UnsupportedBits`] for a width other than 1, 2, 3, 4, 8, 32;
/// [`KernelError::ShapeMismatch`] for zero dimensions.
pub fn run(spec: &BenchSpec) -> Result<BenchReport> {
    if !spec.binary && !matches!(spec.bits, 1 | 2 | 3 | 4 | 8 | 32) {
        return Err(KernelError::UnsupportedBits { bits: spec.bits });
    }
    if spec.rows == 0 || spec.cols == 0 {
        return Err(KernelError::ShapeMismatch {
            what: "bench rows/cols",
            expected: 1,
            got: 0,
        });
    }
    let (n, k) = (spec.rows, spec.cols);
    let t = match spec.kernel {
        BenchKernel::Gemv => 1,
        BenchKernel::Gemm => spec.tokens.max(1),
    };
    let layers = spec.layers.max(1);
    let seconds = if spec.seconds > 0.0 {
        spec.seconds
    } else {
        1.0
    };
    let mut rng = Rng(0x5EED);
    let x: Vec<f32> = (0..t * k).map(|_| rng.f32()).collect();
    let mut y = vec![0f32; t * n];
    let flops = 2.0 * (t * n * k) as f64;

    // f32 baseline first: build, time, free (keeps peak memory to one set of matrices).
    let f32_us = {
        let ws: Vec<Vec<f32>> = (0..layers)
            .map(|l| {
                let mut r = Rng(1000 + l as u64);
                (0..n * k).map(|_| 0.02 * r.f32()).collect()
            })
            .collect();
        time_loop(seconds, |c| {
            crate::dense::matmul_wt(black_box(&x), t, k, &ws[c % layers], n, &mut y);
            black_box(&y);
        })
    };
    let (us, bytes) = if spec.binary {
        let mats: Vec<BinaryMatrix> = (0..layers)
            .into_par_iter()
            .map(|l| random_binary(n, k, 77 + l as u64))
            .collect::<Result<_>>()?;
        time_weights(&mats, spec, seconds, &x, t, &mut y)
    } else if spec.bits == 32 {
        (f32_us, 4 * n * k)
    } else {
        let mats: Vec<PackedMatrix> = (0..layers)
            .into_par_iter()
            .map(|l| random_packed(spec.bits, n, k, spec.group_size, 77 + l as u64))
            .collect::<Result<_>>()?;
        time_weights(&mats, spec, seconds, &x, t, &mut y)
    };
    Ok(BenchReport {
        us_per_call: us,
        f32_us_per_call: f32_us,
        weight_bytes_per_call: bytes,
        gb_per_s: bytes as f64 / us / 1e3,
        gflops: flops / us / 1e3,
    })
}

/// The products [`run`] times, for packed and binary weights alike.
trait BenchWeight: Sync {
    fn gemv(&self, x: &[f32], y: &mut [f32]) -> Result<()>;
    fn gemv_exact(&self, x: &[f32], y: &mut [f32]) -> Result<()>;
    fn gemm(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()>;
    fn storage_bytes(&self) -> usize;
}

macro_rules! bench_weight {
    ($t:ty) => {
        impl BenchWeight for $t {
            fn gemv(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
                <$t>::gemv(self, x, y)
            }
            fn gemv_exact(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
                <$t>::gemv_exact(self, x, y)
            }
            fn gemm(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
                <$t>::gemm(self, x, m, y)
            }
            fn storage_bytes(&self) -> usize {
                <$t>::storage_bytes(self)
            }
        }
    };
}
bench_weight!(PackedMatrix);
bench_weight!(BinaryMatrix);

/// Microseconds per call of `spec.kernel` cycling over `mats`, and the bytes of one matrix.
fn time_weights<M: BenchWeight>(
    mats: &[M],
    spec: &BenchSpec,
    seconds: f64,
    x: &[f32],
    t: usize,
    y: &mut [f32],
) -> (f64, usize) {
    let us = time_loop(seconds, |c| {
        let w = &mats[c % mats.len()];
        let r = match spec.kernel {
            BenchKernel::Gemv if spec.exact => w.gemv_exact(black_box(x), y),
            BenchKernel::Gemv => w.gemv(black_box(x), y),
            BenchKernel::Gemm => w.gemm(black_box(x), t, y),
        };
        debug_assert!(r.is_ok());
        black_box(&y);
    });
    (us, mats[0].storage_bytes())
}

/// A buffer for the read-bandwidth probe: `bytes` rounded to whole 64-bit words.
pub fn probe_buffer(bytes: usize) -> Vec<u64> {
    let words = (bytes / 8).max(1024);
    (0..words as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect()
}

/// One read pass over `buf`, split into one contiguous part per rayon thread (as a GEMV splits
/// its rows), returning a checksum so the reads cannot be optimised away.
pub fn read_pass(buf: &[u64]) -> u64 {
    let threads = rayon::current_num_threads().max(1);
    let chunk = buf.len().div_ceil(threads).div_ceil(8) * 8;
    buf.par_chunks(chunk.max(8))
        .map(|c| {
            // 8 independent lanes so the compiler vectorises and the adds do not serialise.
            let mut acc = [0u64; 8];
            for b in c.chunks_exact(8) {
                for l in 0..8 {
                    acc[l] = acc[l].wrapping_add(b[l]);
                }
            }
            acc.iter().fold(0u64, |a, &v| a.wrapping_add(v))
        })
        .reduce(|| 0, u64::wrapping_add)
}

/// STREAM-like read probe: sums a `bytes`-sized buffer (split across the rayon threads) repeatedly
/// for about `seconds` and returns the read bandwidth in GB/s (10⁹ bytes per second).
pub fn memory_read_bandwidth(bytes: usize, seconds: f64) -> f64 {
    let buf = probe_buffer(bytes);
    black_box(read_pass(&buf));
    let start = Instant::now();
    let mut passes = 0usize;
    while passes < 2 || start.elapsed().as_secs_f64() < seconds {
        black_box(read_pass(&buf));
        passes += 1;
    }
    (buf.len() * 8 * passes) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// The machine's f32 multiply-add ceiling in GFLOP/s (10⁹ FLOP/s, an FMA lane counting 2): every
/// rayon thread runs independent FMA chains (AVX-512, else AVX2/FMA, else plain multiply-adds)
/// for about `seconds`, and the threads' rates are summed. What a dense f32 kernel's GFLOP/s is
/// measured against: `scripts/bench-vs-pytorch.sh` prints each side's share of it.
pub fn fma_peak_gflops(seconds: f64) -> f64 {
    let rates = rayon::broadcast(|_| {
        black_box(fma_burst(1 << 12));
        let start = Instant::now();
        let mut flops = 0.0;
        while flops == 0.0 || start.elapsed().as_secs_f64() < seconds {
            flops += fma_burst(1 << 16);
        }
        flops / start.elapsed().as_secs_f64()
    });
    rates.iter().sum::<f64>() / 1e9
}

/// `iters` rounds of independent multiply-adds on the widest units this CPU has; returns the
/// FLOPs done.
fn fma_burst(iters: usize) -> f64 {
    #[cfg(all(target_arch = "x86_64", qwen3_avx512))]
    if crate::dispatch::cpu().avx512 {
        // SAFETY: AVX-512F checked.
        return unsafe { fma_burst_avx512(iters) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::dispatch::cpu().avx2 {
        // SAFETY: AVX2 and FMA checked (`avx2` implies both, see `dispatch::cpu`).
        return unsafe { fma_burst_avx2(iters) };
    }
    // Portable: 8 independent lanes of 8, which the compiler vectorises for the baseline ISA.
    let (b, c) = (black_box(0.999_999f32), black_box(1e-7f32));
    let mut a = [[1.0f32; 8]; 8];
    for _ in 0..iters {
        for v in a.iter_mut().flatten() {
            *v = *v * b + c;
        }
    }
    black_box(a);
    (iters * 64 * 2) as f64
}

/// 16 independent chains of 16-lane FMAs (enough to cover the FMA latency on two units).
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
#[target_feature(enable = "avx512f")]
#[allow(clippy::incompatible_msrv)] // gated on the compiler version by build.rs
unsafe fn fma_burst_avx512(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let (b, c) = (
        _mm512_set1_ps(black_box(0.999_999)),
        _mm512_set1_ps(black_box(1e-7)),
    );
    let mut a = [_mm512_set1_ps(1.0); 16];
    for _ in 0..iters {
        for v in a.iter_mut() {
            *v = _mm512_fmadd_ps(*v, b, c);
        }
    }
    black_box(a);
    (iters * 16 * 16 * 2) as f64
}

/// 12 independent chains of 8-lane FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_burst_avx2(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let (b, c) = (
        _mm256_set1_ps(black_box(0.999_999)),
        _mm256_set1_ps(black_box(1e-7)),
    );
    let mut a = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in a.iter_mut() {
            *v = _mm256_fmadd_ps(*v, b, c);
        }
    }
    black_box(a);
    (iters * 12 * 8 * 2) as f64
}
