"""Formats the JSON lines of scripts/bench-vs-pytorch.sh: one line per pair, then medians.

    report.py pair WORKLOAD PAIR TORCH_JSON RUST_JSON
    report.py summary LOG

With PEAK_GFLOPS set (the machine's f32 FMA ceiling, `bench_workload --peak`), each side's
achieved GFLOP/s is also given as a share of it: both sides do the same FLOPs per token (the
qwen3-quant line's `gflop_per_token`).
"""

import json
import os
import statistics
import sys
from collections import defaultdict


def share(tps: float, gflop_per_token: float) -> float:
    return 100.0 * tps * gflop_per_token / float(os.environ["PEAK_GFLOPS"])


def pair(workload: str, n: str, torch_line: str, rust_line: str) -> None:
    t, r = json.loads(torch_line), json.loads(rust_line)
    ratio = r["tokens_per_s"] / t["tokens_per_s"]
    ppl = ""
    if "ppl" in t and "ppl" in r:
        ppl = f"  ppl pytorch {t['ppl']:.4f} qwen3-quant {r['ppl']:.4f}"
    peak = ""
    if os.environ.get("PEAK_GFLOPS") and "gflop_per_token" in r:
        g = r["gflop_per_token"]
        peak = (
            f"  of f32 peak: pytorch {share(t['tokens_per_s'], g):4.1f}%"
            f" qwen3-quant {share(r['tokens_per_s'], g):4.1f}%"
        )
    print(
        f"{workload:8s} pair {n}  pytorch f32 {t['tokens_per_s']:8.1f} tok/s"
        f"  qwen3-quant {r['compute']:8s} {r['tokens_per_s']:8.1f} tok/s"
        f"  ratio {ratio:5.2f}{ppl}{peak}",
        flush=True,
    )


def summary(log: str) -> None:
    # The log alternates: one PyTorch line, then one line per qwen3-quant mode.
    ratios = defaultdict(list)
    torch_tps = defaultdict(list)
    rust_tps = defaultdict(list)
    last_torch = None
    gflop = {}
    with open(log) as f:
        for line in f:
            d = json.loads(line)
            if d["impl"] == "peak":
                continue
            if d["impl"] == "pytorch":
                last_torch = d
                torch_tps[d["workload"]].append(d["tokens_per_s"])
                continue
            key = (d["workload"], d["compute"])
            gflop[d["workload"]] = d.get("gflop_per_token")
            rust_tps[key].append(d["tokens_per_s"])
            ratios[key].append(d["tokens_per_s"] / last_torch["tokens_per_s"])
    print("median over pairs:")
    for (wl, mode), rs in ratios.items():
        rust, torch = statistics.median(rust_tps[(wl, mode)]), statistics.median(torch_tps[wl])
        peak = ""
        if os.environ.get("PEAK_GFLOPS") and gflop.get(wl):
            peak = (
                f"; of f32 peak: qwen3-quant {share(rust, gflop[wl]):.1f}%,"
                f" pytorch {share(torch, gflop[wl]):.1f}%"
            )
        print(
            f"  {wl:8s} {mode:8s} ratio {statistics.median(rs):5.2f}"
            f"  (qwen3-quant {rust:.1f} tok/s, pytorch f32 {torch:.1f} tok/s,"
            f" {len(rs)} pairs{peak})"
        )


if __name__ == "__main__":
    if sys.argv[1] == "pair":
        pair(*sys.argv[2:6])
    else:
        summary(sys.argv[2])
