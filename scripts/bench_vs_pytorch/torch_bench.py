"""PyTorch f32 side of scripts/bench-vs-pytorch.sh (benchmark only; never a project dependency).

Runs one workload on the bundled Qwen3 checkpoint with transformers in f32 and prints one JSON
line with the same fields as the Rust side (`examples/bench_workload.rs`):

* ``docs32``: the perplexity protocol of the evaluator: the first WINDOWS windows of 1024 tokens
  of ``assets/data/docs`` (tensor ``valid``), BATCH windows per forward; every position's logits,
  log-softmax, NLL of the next token; ppl = exp(mean of the per-window mean NLL).
* ``prefill``: the same windows through the layers and the logits of the last position only
  (``logits_to_keep=1``), as a prompt is prefilled before decoding.

One untimed warm-up forward of one batch comes first (PyTorch initialises lazily).
"""

import argparse
import json
import math
import os
import time

import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", required=True, help="docs.tokens.safetensors")
    p.add_argument("--workload", choices=["docs32", "prefill"], default="docs32")
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.eval()
    ids = torch.from_numpy(load_file(a.tokens)["valid"].astype("int64"))
    n, b = a.seq_len, a.batch
    windows = ids[: a.windows * n].view(a.windows, n)

    with torch.inference_mode():
        model(windows[:b], logits_to_keep=1)  # warm-up, untimed
        nll_windows = []
        start = time.perf_counter()
        for w0 in range(0, a.windows, b):
            x = windows[w0 : w0 + b]
            if a.workload == "docs32":
                logits = model(x).logits  # [b, n, vocab]
                lp = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
                nll = -lp.gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1)  # [b, n-1]
                nll_windows.extend(nll.double().mean(dim=1).tolist())
            else:
                model(x, logits_to_keep=1)
        secs = time.perf_counter() - start

    out = {
        "impl": "pytorch",
        "compute": "f32",
        "workload": a.workload,
        "windows": a.windows,
        "seq_len": n,
        "batch": b,
        "threads": torch.get_num_threads(),
        "seconds": secs,
        "tokens_per_s": a.windows * n / secs,
        "torch": torch.__version__,
    }
    if nll_windows:
        out["ppl"] = math.exp(sum(nll_windows) / len(nll_windows))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
