#!/usr/bin/env bash
# GPTQ calibration time of qwen3-quant and GPTQModel on the same machine, interleaved.
#
#   scripts/bench-vs-gptqmodel.sh [PAIRS]
#
# PAIRS (default 3) interleaved pairs. Each pair quantizes the bundled qwen3-micro with
# GPTQModel on the CPU, then with `qwen3-quant quantize`, both with the same settings: 4 bits,
# group 128, asymmetric, act-order, true-sequential, damp 0.01, the reference protocol's
# calibration set (the first 128 windows of 1024 tokens of assets/data/docs, tensor `calib`),
# writing a GPTQ checkpoint. These are the settings of GPTQModel's own checkpoint of this model in
# ../shared (its quantize_config.json). The time of each side is the wall time of its whole
# process (start-up, load, calibration, quantization, writing), measured here; each side's own
# figure for the quantization alone is printed next to it. The ratio of a pair is GPTQModel's
# time over qwen3-quant's. After the pairs, `qwen3-quant eval` reads both checkpoints of the last
# pair and prints their docs_32 perplexity, so the speed is compared at equal quality.
#
# GPTQModel, PyTorch and transformers go into a throwaway virtual environment (for this benchmark
# only, never a project dependency): $QWEN3_QUANT_BENCH_VENV, default
# ~/.cache/qwen3-quant/bench-venv (shared with scripts/bench-vs-pytorch.sh). GPTQModel 7.7.0 is
# the version that wrote the checkpoint in ../shared; GPTQMODEL_VERSION overrides it.
#
# The machines this runs on are small and shared: the load average is printed before and after,
# and only the ratios within one run mean anything.
set -euo pipefail

PAIRS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${QWEN3_QUANT_BENCH_VENV:-$HOME/.cache/qwen3-quant/bench-venv}
GPTQMODEL_VERSION=${GPTQMODEL_VERSION:-7.7.0}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
MODEL=$ROOT/assets/models/qwen3-micro
TOKENS=$ROOT/assets/data/docs/docs.tokens.safetensors
HERE=$ROOT/scripts/bench_vs_gptqmodel
export QWEN3_QUANT_QUIET=1
# GPTQModel sizes its CPU worker pool at half the cores, and refuses to start with fewer than
# the two its model loader asks for; give it every core, as PyTorch gets.
export GPTQMODEL_CPU_WORKERS=${GPTQMODEL_CPU_WORKERS:-$(nproc)}

if ! "$VENV/bin/python" -c "import gptqmodel, torch, transformers, safetensors" >/dev/null 2>&1; then
    echo "installing GPTQModel $GPTQMODEL_VERSION + PyTorch into $VENV (benchmark only)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch transformers safetensors numpy >&2
    "$VENV/bin/pip" install --quiet "gptqmodel==$GPTQMODEL_VERSION" >&2
fi
PY=$VENV/bin/python

(cd "$ROOT" && cargo build --release --quiet -p qwen3-quant-cli)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# A copy, so a rebuild during the run does not change what is measured.
BIN=$WORK/qwen3-quant
cp "$TARGET/release/qwen3-quant" "$BIN"
LOG=$WORK/runs.jsonl

now() { date +%s.%N; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "gptqmodel: $("$PY" -c 'import gptqmodel, torch; print(gptqmodel.__version__, "torch", torch.__version__)' 2>/dev/null | tail -1)"
echo "settings: w4 g128 asymmetric, act-order, true-sequential, damp 0.01, 128 x 1024 docs calibration tokens"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

for pair in $(seq 1 "$PAIRS"); do
    rm -rf "$WORK/gptqmodel" "$WORK/ours"
    t0=$(now)
    # From the scratch folder: GPTQModel writes a logs/ folder into its working directory.
    (cd "$WORK" && "$PY" "$HERE/gptqmodel_quantize.py" --model "$MODEL" --tokens "$TOKENS" \
        --out "$WORK/gptqmodel" >"$WORK/gptqmodel.out" 2>"$WORK/gptqmodel.err") || {
        tail -20 "$WORK/gptqmodel.err" >&2
        exit 1
    }
    t1=$(now)
    "$BIN" quantize --model "$MODEL" --method gptq --bits 4 --group-size 128 --act-order \
        --true-sequential --damp 0.01 --calib docs --samples 128 --seq-len 1024 \
        --out "$WORK/ours" --format gptq --json >"$WORK/ours.json"
    t2=$(now)
    "$PY" "$HERE/report.py" pair "$pair" "$t0" "$t1" "$t2" "$(tail -1 "$WORK/gptqmodel.out")" \
        "$WORK/ours.json" | tee -a "$LOG"
done
"$PY" "$HERE/report.py" summary "$LOG"

echo "quality of the last pair's checkpoints, both read by qwen3-quant eval (docs_32):"
for side in gptqmodel ours; do
    ppl=$("$BIN" eval --model "$WORK/$side" --dataset docs --windows 32 --seq-len 1024 --json |
        "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(round(d["ppl"]["docs"]["ppl"], 4))')
    echo "  $side: $ppl"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
