//! Runtime selection of the kernel implementation.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Which implementation of the packed kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KernelChoice {
    /// Portable Rust, always available.
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (plus VNNI for the int8 GEMM when present).
    Avx512,
    /// AArch64 NEON (Advanced SIMD, part of the AArch64 baseline).
    Neon,
}

impl KernelChoice {
    /// Parses `scalar`, `avx2`, `avx512` or `neon` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Self::Scalar),
            "avx2" => Some(Self::Avx2),
            "avx512" => Some(Self::Avx512),
            "neon" => Some(Self::Neon),
            _ => None,
        }
    }

    /// Lower-case name (`scalar`, `avx2`, `avx512`, `neon`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Neon => "neon",
        }
    }

    /// Whether this CPU can run the implementation.
    pub fn is_supported(self) -> bool {
        match self {
            Self::Scalar => true,
            Self::Avx2 => cpu().avx2,
            Self::Avx512 => cpu().avx512,
            Self::Neon => cfg!(target_arch = "aarch64"),
        }
    }

    /// The best supported choice that is not above `self` (`Avx512 → Avx2 → Scalar`).
    pub fn clamp_to_supported(self) -> Self {
        let mut c = self;
        loop {
            if c.is_supported() {
                return c;
            }
            c = match c {
                Self::Avx512 => Self::Avx2,
                _ => Self::Scalar,
            };
        }
    }
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct CpuFeatures {
    pub avx2: bool,
    pub avx512: bool,
    pub avx512vnni: bool,
    pub avx512bf16: bool,
    pub gfni: bool,
}

/// CPU features, detected once.
pub(crate) fn cpu() -> &'static CpuFeatures {
    static CPU: OnceLock<CpuFeatures> = OnceLock::new();
    CPU.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            // The AVX-512 kernels exist only when build.rs found a compiler with them (Rust ≥ 1.89).
            #[cfg(qwen3_avx512)]
            let (avx512, avx512vnni, avx512bf16) = {
                let avx512 = avx2
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl");
                let avx512vnni = avx512 && std::arch::is_x86_feature_detected!("avx512vnni");
                // QWEN3_QUANT_NO_BF16=1 disables the bf16 GEMV (for A/B measurements).
                let avx512bf16 = avx512
                    && std::arch::is_x86_feature_detected!("avx512bf16")
                    && std::env::var_os("QWEN3_QUANT_NO_BF16").is_none();
                (avx512, avx512vnni, avx512bf16)
            };
            #[cfg(not(qwen3_avx512))]
            let (avx512, avx512vnni, avx512bf16) = (false, false, false);
            // QWEN3_QUANT_NO_GFNI=1 takes the shift-and-mask code extraction instead (A/B runs).
            let gfni = std::arch::is_x86_feature_detected!("gfni")
                && std::env::var_os("QWEN3_QUANT_NO_GFNI").is_none();
            CpuFeatures {
                avx2,
                avx512,
                avx512vnni,
                avx512bf16,
                gfni,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuFeatures {
                avx2: false,
                avx512: false,
                avx512vnni: false,
                avx512bf16: false,
                gfni: false,
            }
        }
    })
}

/// The choice from detection and `QWEN3_QUANT_KERNEL`, computed once.
fn default_choice() -> KernelChoice {
    static DEFAULT: OnceLock<KernelChoice> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let best = if KernelChoice::Neon.is_supported() {
            KernelChoice::Neon
        } else if cpu().avx512 {
            KernelChoice::Avx512
        } else if cpu().avx2 {
            KernelChoice::Avx2
        } else {
            KernelChoice::Scalar
        };
        match std::env::var("QWEN3_QUANT_KERNEL")
            .ok()
            .as_deref()
            .and_then(KernelChoice::parse)
        {
            Some(c) => c.clamp_to_supported(),
            None => best,
        }
    })
}

/// 0 = no override, otherwise 1 + discriminant.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// Forces an implementation for the whole process (`None` restores the detected/env choice).
/// An unsupported request is clamped to the best supported lower one.
pub fn set_kernel_choice(choice: Option<KernelChoice>) {
    let v = match choice.map(KernelChoice::clamp_to_supported) {
        None => 0,
        Some(KernelChoice::Scalar) => 1,
        Some(KernelChoice::Avx2) => 2,
        Some(KernelChoice::Avx512) => 3,
        Some(KernelChoice::Neon) => 4,
    };
    OVERRIDE.store(v, Ordering::Relaxed);
}

/// The implementation the kernels use now: [`set_kernel_choice`] if set, else the
/// `QWEN3_QUANT_KERNEL` environment variable (read once), else the best the CPU supports.
pub fn active_kernel() -> KernelChoice {
    match OVERRIDE.load(Ordering::Relaxed) {
        1 => KernelChoice::Scalar,
        2 => KernelChoice::Avx2,
        3 => KernelChoice::Avx512,
        4 => KernelChoice::Neon,
        _ => default_choice(),
    }
}

/// Every implementation this CPU can run, scalar first.
pub fn available_kernels() -> Vec<KernelChoice> {
    [
        KernelChoice::Scalar,
        KernelChoice::Avx2,
        KernelChoice::Avx512,
        KernelChoice::Neon,
    ]
    .into_iter()
    .filter(|c| c.is_supported())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_and_clamp() {
        let _g = crate::test_support::hold_globals();
        set_kernel_choice(Some(KernelChoice::Scalar));
        assert_eq!(active_kernel(), KernelChoice::Scalar);
        set_kernel_choice(Some(KernelChoice::Avx512));
        assert_eq!(active_kernel(), KernelChoice::Avx512.clamp_to_supported());
        set_kernel_choice(None);
        assert_eq!(active_kernel(), default_choice());
        assert!(active_kernel().is_supported());
        assert_eq!(
            KernelChoice::parse(active_kernel().name()),
            Some(active_kernel())
        );
    }
}
