"""Formats the JSON lines of scripts/bench-vs-pytorch.sh: one line per pair, then medians.

    report.py pair WORKLOAD PAIR TORCH_JSON RUST_JSON
    report.py summary LOG
"""

import json
import statistics
import sys
from collections import defaultdict


def pair(workload: str, n: str, torch_line: str, rust_line: str) -> None:
    t, r = json.loads(torch_line), json.loads(rust_line)
    ratio = r["tokens_per_s"] / t["tokens_per_s"]
    ppl = ""
    if "ppl" in t and "ppl" in r:
        ppl = f"  ppl pytorch {t['ppl']:.4f} qwen3-quant {r['ppl']:.4f}"
    print(
        f"{workload:8s} pair {n}  pytorch f32 {t['tokens_per_s']:8.1f} tok/s"
        f"  qwen3-quant {r['compute']:8s} {r['tokens_per_s']:8.1f} tok/s"
        f"  ratio {ratio:5.2f}{ppl}",
        flush=True,
    )


def summary(log: str) -> None:
    # The log alternates: one PyTorch line, then one line per qwen3-quant mode.
    ratios = defaultdict(list)
    torch_tps = defaultdict(list)
    rust_tps = defaultdict(list)
    last_torch = None
    with open(log) as f:
        for line in f:
            d = json.loads(line)
            if d["impl"] == "pytorch":
                last_torch = d
                torch_tps[d["workload"]].append(d["tokens_per_s"])
                continue
            key = (d["workload"], d["compute"])
            rust_tps[key].append(d["tokens_per_s"])
            ratios[key].append(d["tokens_per_s"] / last_torch["tokens_per_s"])
    print("median over pairs:")
    for (wl, mode), rs in ratios.items():
        print(
            f"  {wl:8s} {mode:8s} ratio {statistics.median(rs):5.2f}"
            f"  (qwen3-quant {statistics.median(rust_tps[(wl, mode)]):.1f} tok/s,"
            f" pytorch f32 {statistics.median(torch_tps[wl]):.1f} tok/s, {len(rs)} pairs)"
        )


if __name__ == "__main__":
    if sys.argv[1] == "pair":
        pair(*sys.argv[2:6])
    else:
        summary(sys.argv[2])
