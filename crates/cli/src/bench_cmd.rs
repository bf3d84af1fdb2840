//! `qwen3-quant bench gemv|gemm`: packed kernels against the f32 kernel the model uses.

use qwen3_quant_kernels::bench::{run as run_bench, BenchKernel, BenchSpec};
use serde_json::json;

use crate::args::{BenchArgs, KernelArg};
use crate::output::print_json;

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let (kernel, tokens) = match a.kernel {
        KernelArg::Gemv => (BenchKernel::Gemv, 1),
        KernelArg::Gemm => (BenchKernel::Gemm, a.tokens),
    };
    let spec = BenchSpec {
        kernel,
        bits: a.bits,
        group_size: a.group_size,
        rows: a.rows,
        cols: a.cols,
        tokens,
        layers: a.layers.max(1),
        seconds: a.seconds,
        exact: a.exact,
        binary: a.binary,
    };
    let r = run_bench(&spec)?;
    // What the timed packed kernel multiplied with: int8 only where the q8 GEMV applies.
    let q8 = kernel == BenchKernel::Gemv
        && !a.exact
        && if a.binary {
            qwen3_quant_kernels::bench::random_binary(1, a.cols.max(1), 0)
                .is_ok_and(|m| m.q8_applies(qwen3_quant_kernels::active_kernel()))
        } else {
            a.bits != 32
                && qwen3_quant_kernels::bench::random_packed(a.bits, 1, a.cols, a.group_size, 0)
                    .is_ok_and(|m| m.q8_gemv_applies())
        };
    let activations = if q8 { "int8" } else { "f32" };
    let name = match a.kernel {
        KernelArg::Gemv => "gemv",
        KernelArg::Gemm => "gemm",
    };
    let weights = if a.binary {
        "binary (BiLLM)".to_string()
    } else if a.bits == 32 {
        "f32".to_string()
    } else {
        format!("{}-bit g{}", a.bits, a.group_size)
    };
    let v = json!({
        "kernel": name, "bits": a.bits, "binary": a.binary, "weights": weights, "rows": a.rows, "cols": a.cols, "tokens": tokens, "layers": spec.layers,
        "us_per_call": r.us_per_call, "f32_us_per_call": r.f32_us_per_call,
        "weight_bytes_per_call": r.weight_bytes_per_call, "gb_per_s": r.gb_per_s, "gflops": r.gflops,
        "kernel_impl": format!("{:?}", qwen3_quant_kernels::active_kernel()),
        "activations": activations,
    });
    if a.json {
        print_json(&v);
    } else {
        println!(
            "{name} {}x{} x {tokens} tokens, {weights}, {activations} activations: {:.1} us/call (f32 {:.1} us, {:.2}x), {:.1} GB/s, {:.1} GFLOP/s",
            a.rows,
            a.cols,
            r.us_per_call,
            r.f32_us_per_call,
            r.f32_us_per_call / r.us_per_call,
            r.gb_per_s,
            r.gflops
        );
    }
    Ok(())
}
