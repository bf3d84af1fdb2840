#!/usr/bin/env bash
# Side-by-side speed of qwen3-quant and PyTorch f32 on the same machine, interleaved.
#
#   scripts/bench-vs-pytorch.sh [PAIRS] [MODES]
#
# PAIRS (default 3): interleaved pairs per workload. MODES (default "f32 bf16 w4"): the
# qwen3-quant configurations each pair runs after the PyTorch f32 run:
#   f32       the f32 forward (exact; docs_32 perplexity 18.5676)
#   bf16      --compute bf16: bf16 activations x bf16 weights, f32 accumulation
#   w4        RTN 4-bit g128 kept packed, prefill GEMM with int8 activations (VNNI)
#   w4-exact  the same weights with f32 activations
# Workloads (both on qwen3-micro, 32 windows x 1024 tokens of assets/data/docs valid, batch 4):
#   docs32    the perplexity evaluation (every position's logits, log-softmax, NLL)
#   prefill   the forward and the logits of each window's last position only
# Every run is a fresh process that loads the model, runs one untimed warm-up batch, then
# times the workload; the ratio of a pair is qwen3-quant tokens/s over PyTorch tokens/s.
#
# PyTorch and transformers go into a throwaway virtual environment (for this benchmark only,
# never a project dependency): $QWEN3_QUANT_BENCH_VENV, default ~/.cache/qwen3-quant/bench-venv.
#
# The machines this runs on are small and shared: the load average is printed before and after,
# and only the ratios within one run mean anything. The machine's f32 FMA ceiling is measured
# before the pairs (`bench_workload --peak`), and each side's GFLOP/s is printed as a share of it:
# where a ratio cannot go higher because one side already runs near the ceiling, this says so.
set -euo pipefail

PAIRS=${1:-3}
MODES=${2:-"f32 bf16 w4"}
WORKLOADS=${WORKLOADS:-"docs32 prefill"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${QWEN3_QUANT_BENCH_VENV:-$HOME/.cache/qwen3-quant/bench-venv}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
MODEL=$ROOT/assets/models/qwen3-micro
TOKENS=$ROOT/assets/data/docs/docs.tokens.safetensors
HERE=$ROOT/scripts/bench_vs_pytorch
export QWEN3_QUANT_QUIET=1

if ! "$VENV/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
    echo "installing PyTorch + transformers into $VENV (benchmark only)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch transformers safetensors numpy >&2
fi
PY=$VENV/bin/python

(cd "$ROOT" && cargo build --release --quiet --example bench_workload)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# A copy, so a rebuild during the run does not change what is measured.
RUST=$WORK/bench_workload
cp "$TARGET/release/examples/bench_workload" "$RUST"
LOG=$WORK/runs.jsonl

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "flags: $(grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|avx512_vnni|amx_tile|amx_bf16' /proc/cpuinfo | sort -u | xargs)"
echo "pytorch: $("$PY" -c 'import torch, transformers; print(torch.__version__, "threads", torch.get_num_threads(), "transformers", transformers.__version__)')"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
PEAK_LINE=$("$RUST" --peak | tail -1)
echo "$PEAK_LINE" >>"$LOG"
PEAK_GFLOPS=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["gflops"])' "$PEAK_LINE")
export PEAK_GFLOPS
echo "f32 FMA peak (all threads): $PEAK_GFLOPS GFLOP/s"

for wl in $WORKLOADS; do
    for pair in $(seq 1 "$PAIRS"); do
        t=$("$PY" "$HERE/torch_bench.py" --model "$MODEL" --tokens "$TOKENS" --workload "$wl" 2>/dev/null | tail -1)
        echo "$t" >>"$LOG"
        for mode in $MODES; do
            r=$("$RUST" --workload "$wl" --mode "$mode" | tail -1)
            echo "$r" >>"$LOG"
            "$PY" "$HERE/report.py" pair "$wl" "$pair" "$t" "$r"
        done
    done
done
"$PY" "$HERE/report.py" summary "$LOG"

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
