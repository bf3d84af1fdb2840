//! Quick figures from `bench::run`: `cargo run --release -p qwen3-quant-kernels --example quick_bench -- gemv 4 128 4096 14336 1 4 1.0`
//! (kernel bits group rows cols tokens layers seconds).

use qwen3_quant_kernels::bench::{self, BenchKernel, BenchSpec};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let get = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let kernel = if get(0, "gemv") == "gemm" {
        BenchKernel::Gemm
    } else {
        BenchKernel::Gemv
    };
    let spec = BenchSpec {
        kernel,
        bits: get(1, "4").parse().unwrap(),
        group_size: get(2, "128").parse().unwrap(),
        rows: get(3, "4096").parse().unwrap(),
        cols: get(4, "4096").parse().unwrap(),
        tokens: get(5, "1").parse().unwrap(),
        layers: get(6, "1").parse().unwrap(),
        seconds: get(7, "1.0").parse().unwrap(),
        exact: std::env::args().any(|a| a == "--exact"),
        binary: std::env::args().any(|a| a == "--binary"),
    };
    let r = bench::run(&spec).unwrap();
    println!(
        "{:?} bits {} g{} {}x{} T{} L{} kernel {}: {:.1} us/call (f32 {:.1} us, x{:.2}), {:.2} GB/s, {:.1} GFLOP/s",
        spec.kernel,
        spec.bits,
        spec.group_size,
        spec.rows,
        spec.cols,
        spec.tokens,
        spec.layers,
        qwen3_quant_kernels::active_kernel().name(),
        r.us_per_call,
        r.f32_us_per_call,
        r.f32_us_per_call / r.us_per_call,
        r.gb_per_s,
        r.gflops
    );
    if a.get(8).is_some() {
        println!(
            "read bandwidth: {:.1} GB/s",
            bench::memory_read_bandwidth(1 << 30, 1.0)
        );
    }
}
