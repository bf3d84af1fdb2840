"""Formats scripts/bench-vs-gptqmodel.sh: one line per pair, then the medians.

    report.py pair N T0 T1 T2 GPTQMODEL_JSON_LINE OURS_JSON_FILE
    report.py summary LOG

T0..T2 are the script's clock before GPTQModel, between the two runs and after qwen3-quant, so
both wall times are measured the same way, around the whole process. Each side's own timing of
the quantization (GPTQModel's ``quantize`` call; qwen3-quant's ``seconds``, calibration through
writing) is kept next to it.
"""

import json
import statistics
import sys


def pair(n, t0, t1, t2, gq_line, ours_file):
    gq = json.loads(gq_line)
    with open(ours_file) as f:
        ours = json.load(f)
    row = {
        "pair": int(n),
        "gptqmodel_wall_s": float(t1) - float(t0),
        "gptqmodel_quantize_s": gq["quantize_seconds"],
        "qwen3_quant_wall_s": float(t2) - float(t1),
        "qwen3_quant_seconds": ours["seconds"],
    }
    row["ratio"] = row["gptqmodel_wall_s"] / row["qwen3_quant_wall_s"]
    print(json.dumps(row))


def summary(log):
    rows = [json.loads(line) for line in open(log) if line.startswith("{")]
    for r in rows:
        print(
            f"pair {r['pair']}  GPTQModel {r['gptqmodel_wall_s']:7.1f} s"
            f" (quantize call {r['gptqmodel_quantize_s']:7.1f} s)"
            f"  qwen3-quant {r['qwen3_quant_wall_s']:6.1f} s"
            f" (its own figure {r['qwen3_quant_seconds']:6.1f} s)"
            f"  ratio {r['ratio']:5.2f}"
        )
    med = statistics.median(r["ratio"] for r in rows)
    inner = statistics.median(
        r["gptqmodel_quantize_s"] / r["qwen3_quant_seconds"] for r in rows
    )
    print(
        f"median over {len(rows)} pairs: qwen3-quant is {med:.2f}x faster end to end"
        f" ({inner:.2f}x comparing GPTQModel's quantize call with qwen3-quant's own figure)"
    )


if __name__ == "__main__":
    if sys.argv[1] == "pair":
        pair(*sys.argv[2:8])
    else:
        summary(sys.argv[2])
