#!/usr/bin/env bash
# The 3-bit ablation of docs/beyond-the-study.md: each candidate option (and combinations) of the
# driver on the bundled qwen3-micro, with the reference protocol (128 x 1024 docs calibration
# windows; docs_32 and wiki2_32 perplexity). Resumable: a finished run's JSON is kept.
#
#   scripts/beyond-the-study.sh [OUT_DIR]     # default: beyond-w3/
#
# Prints one line per run: name, pipeline, docs_32, wiki2_32, bits per weight, seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-beyond-w3}
mkdir -p "$out"
cargo build --release -p qwen3-quant-cli >&2
bin=${CARGO_TARGET_DIR:-target}/release/qwen3-quant
common=(--model assets/models/qwen3-micro --bits 3 --group-size 128 --calib docs --samples 128
        --seq-len 1024 --eval docs:32,wikitext2:32 --json)
runs=(
  "gptq|--method gptq"
  "gptq_mse|--method gptq --mse"
  "gptq_mseh|--method gptq --mse-hessian"
  "gptq_mse_damp05|--method gptq --mse --damp 0.05"
  "gptq_mse_static|--method gptq --mse --static-groups"
  "gptq_mseh_static|--method gptq --mse-hessian --static-groups"
  "gptq_mse_static_damp05|--method gptq --mse --static-groups --damp 0.05"
  "gptq_mseh_static_damp05|--method gptq --mse-hessian --static-groups --damp 0.05"
  "gptq_mse_static_damp10|--method gptq --mse --static-groups --damp 0.1"
  "gptq_mse_static_damp05_refine|--method gptq --mse --static-groups --damp 0.05 --refine 5"
  "gptq_mse_static_damp05_gptaq1|--method gptq --mse --static-groups --damp 0.05 --gptaq 1"
  "gptq_mse_static_damp05_refit|--method gptq --mse --static-groups --damp 0.05 --refine 5 --refit-scales 2"
  "best|--recipe best"
  "hadamard_gptq|--method gptq --rotate"
  "hadamard_gptq_mse|--method gptq --rotate --mse"
  "hadamard1_gptq_mse|--method gptq --rotate --rotate-seed 1 --mse"
  "hadamard_gptq_mseh|--method gptq --rotate --mse-hessian"
  "hadamard_gptq_mse_static|--method gptq --rotate --mse --static-groups"
  "awq_gptq_mse|--method awq --awq-then gptq --mse --compute bf16"
)
for r in "${runs[@]}"; do
  name=${r%%|*}; opts=${r#*|}
  if [ ! -s "$out/$name.json" ]; then
    # shellcheck disable=SC2086
    "$bin" quantize "${common[@]}" $opts > "$out/$name.json.tmp" 2> "$out/$name.err"
    mv "$out/$name.json.tmp" "$out/$name.json"
  fi
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); e=d['eval']; print(f\"{sys.argv[2]:<26} {d['pipeline']:<14} {e['docs']['ppl']:.4f} {e['wikitext2']['ppl']:.4f} {d['bits_per_weight']:.3f} {d['seconds']:.0f}\")" "$out/$name.json" "$name"
done
