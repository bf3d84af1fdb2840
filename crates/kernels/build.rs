//! Enables the AVX-512 kernels (`cfg(qwen3_avx512)`) when the compiler has the AVX-512
//! intrinsics stable (Rust ≥ 1.89); older compilers would build the scalar and AVX2 paths only.
//! The workspace's MSRV is 1.89 anyway (`gemm`'s `x86-v4` feature needs the same intrinsics, see
//! docs/publishing.md), so with a supported compiler the AVX-512 kernels are always built.

use std::process::Command;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(qwen3_avx512)");
    println!("cargo:rerun-if-changed=build.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let minor = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .and_then(|v| v.split('.').nth(1).and_then(|m| m.parse::<u32>().ok()));
    if minor.is_some_and(|m| m >= 89) {
        println!("cargo:rustc-cfg=qwen3_avx512");
    }
}
