#!/usr/bin/env bash
# Peak memory and time of quantizing a checkpoint larger than 8 GB, streamed one layer at a
# time, and the projected hours for Qwen3-8B, 32B and 30B-A3B on this machine.
#
#   scripts/bench-streaming.sh [--shape qwen3-8b] [--layers 16] [--dir DIR] [--samples 16]
#                              [--seq-len 512] [--methods rtn,gptq] [--keep]
#                              [--args "MORE QUANTIZE OPTIONS"]
#
# Generates (once) a synthetic checkpoint of random bf16 weights with the shape's dimensions and
# `--layers` decoder layers (qwen3-8b × 16 = 8.66 GB), then runs `qwen3-quant quantize` on it for
# each method at w4 g128 with `--out` (which streams: one f32 layer resident, finished layers
# written to the resume state, the output assembled from it), reading the peak RSS the process
# reports (VmHWM) and /usr/bin/time's, and prints a Markdown table with the projections
# (examples/synthetic_checkpoint.rs `project`). Needs about 2× the checkpoint's size of free disk.
set -euo pipefail
cd "$(dirname "$0")/.."

shape=qwen3-8b layers=16 dir="" samples=16 seq_len=512 methods=rtn,gptq keep=0 more=""
while [ $# -gt 0 ]; do
  case "$1" in
    --shape) shape=$2; shift 2 ;;
    --layers) layers=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --samples) samples=$2; shift 2 ;;
    --seq-len) seq_len=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --args) more=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
dir=${dir:-${XDG_CACHE_HOME:-$HOME/.cache}/qwen3-quant/synthetic-$shape-${layers}l}
work=$(mktemp -d "${TMPDIR:-/tmp}/qq-stream-XXXXXX")
trap 'rm -rf "$work"' EXIT

cargo build --release -q -p qwen3-quant-cli
cargo build --release -q -p qwen3-quant --example synthetic_checkpoint
bin=target/release/qwen3-quant
ex=target/release/examples/synthetic_checkpoint
if [ -n "${CARGO_TARGET_DIR:-}" ]; then bin=$CARGO_TARGET_DIR/release/qwen3-quant ex=$CARGO_TARGET_DIR/release/examples/synthetic_checkpoint; fi

if [ ! -f "$dir/config.json" ]; then
  "$ex" write --shape "$shape" --layers "$layers" --out "$dir"
fi
echo "model: $dir ($(du -sh "$dir" | cut -f1))"

args=()
IFS=, read -ra ms <<< "$methods"
for m in "${ms[@]}"; do
  out="$work/out-$m"
  echo "== $m w4 g128 (calibration $samples x $seq_len)"
  /usr/bin/time -v "$bin" quantize --model "$dir" --method "$m" --bits 4 --group-size 128 \
      --calib docs --samples "$samples" --seq-len "$seq_len" --out "$out" --format gptq --json $more \
      > "$work/$m.json" 2> "$work/$m.time"
  grep -E "Maximum resident|Elapsed" "$work/$m.time" | sed 's/^\s*/  /'
  python3 - "$work/$m.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  quantize {r['seconds']:.1f} s, VmHWM {r['peak_rss_mb']:.0f} MB, streamed {r['streamed']}, "
      f"state {r['resume_state']['bytes_saved']/1e9:.2f} GB in {r['resume_state']['save_seconds']:.1f} s, "
      f"output {r['checkpoint']['tensor_file_bytes']/1e9:.2f} GB")
EOF
  [ "$keep" = 1 ] && cp "$work/$m.json" "./bench-streaming-$m.json"
  rm -rf "$out"
  args+=("--$m" "$work/$m.json")
done
"$ex" project --model "$dir" "${args[@]}"
