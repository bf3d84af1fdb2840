"""GPTQModel side of scripts/bench-vs-gptqmodel.sh (benchmark only; never a project dependency).

Quantizes the bundled Qwen3 checkpoint with GPTQModel on the CPU, with the settings of the
issue and of GPTQModel's own checkpoint in ../shared (its quantize_config.json): 4 bits, group
128, asymmetric, act-order (desc_act), true-sequential, damp 0.01, on the reference protocol's
calibration set (the first SAMPLES windows of SEQ_LEN tokens of assets/data/docs, tensor
``calib``). Writes the checkpoint to --out and prints one JSON line:

* ``seconds``: load + quantize + save, the wall time a user waits (what the Rust side reports);
* ``quantize_seconds``: the ``quantize`` call alone.
"""

import argparse
import json
import os
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", required=True, help="docs.tokens.safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()

    start = time.perf_counter()
    import torch
    from safetensors.numpy import load_file
    from gptqmodel import GPTQModel, QuantizeConfig

    torch.set_num_threads(a.threads)
    ids = load_file(a.tokens)["calib"].astype("int64")
    n = a.seq_len
    calib = [
        {"input_ids": ids[i * n : (i + 1) * n].tolist(), "attention_mask": [1] * n}
        for i in range(a.samples)
    ]
    cfg = QuantizeConfig(
        bits=a.bits,
        group_size=a.group_size,
        sym=False,
        desc_act=True,
        act_group_aware=False,
        damp_percent=a.damp,
        true_sequential=True,
    )
    model = GPTQModel.load(a.model, cfg, device="cpu")
    q0 = time.perf_counter()
    model.quantize(calib, batch_size=1)
    quantize_seconds = time.perf_counter() - q0
    model.save(a.out)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "impl": "gptqmodel",
                "version": __import__("gptqmodel").__version__,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "seconds": seconds,
                "quantize_seconds": quantize_seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
