#!/usr/bin/env bash
# AWQ w4 g128 on the bundled qwen3-micro: the end-to-end quantization benchmark of docs/awq.md.
#
#   scripts/bench-awq.sh                      # the full protocol: 128 x 1024 docs windows, bf16 search
#   scripts/bench-awq.sh --samples 16 --baseline /path/to/old/qwen3-quant --pairs 3
#                                             # interleaved A/B against another build, median ratio
#
# Prints each run's quantization seconds and peak RSS (from the tool's JSON); with --baseline,
# each pair's ratio (this build / baseline) and their median. Figures are only comparable within
# one invocation: the 2-core machines this project runs on differ by 2-3x and are noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
samples=128 compute=bf16 baseline="" pairs=3 eval=""
while [ $# -gt 0 ]; do
  case "$1" in
    --samples) samples=$2; shift 2 ;;
    --compute) compute=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --eval) eval="--eval docs:32,wikitext2:32"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
cargo build --release -p qwen3-quant-cli >&2
bin=${CARGO_TARGET_DIR:-target}/release/qwen3-quant
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() { # binary tag -> seconds
  "$1" quantize --model assets/models/qwen3-micro --method awq --bits 4 --group-size 128 \
    --compute "$compute" --calib docs --samples "$samples" --seq-len 1024 $eval --json \
    > "$tmp/$2.json" 2> "$tmp/$2.err"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(f\"{d['seconds']:.1f} {d['peak_rss_mb']:.0f} {json.dumps({k: round(v['ppl'], 4) for k, v in (d.get('eval') or {}).items()})}\")" "$tmp/$2.json"
}
if [ -z "$baseline" ]; then
  read -r s rss ppl < <(run "$bin" this)
  echo "AWQ w4 g128, $samples x 1024, --compute $compute: ${s} s, peak RSS ${rss} MB, ppl $ppl"
  exit 0
fi
ratios=()
for i in $(seq "$pairs"); do
  read -r b _ _ < <(run "$baseline" "base$i")
  read -r t _ _ < <(run "$bin" "this$i")
  r=$(python3 -c "print(f'{$t / $b:.3f}')")
  ratios+=("$r")
  echo "pair $i: baseline ${b} s, this build ${t} s, ratio $r"
done
python3 -c "import statistics,sys; print('median ratio (this / baseline):', statistics.median(map(float, sys.argv[1:])))" "${ratios[@]}"
