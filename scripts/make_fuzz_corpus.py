#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/), replayed as ordinary
tests by crates/io/tests/fuzz_corpus.rs. Standard library only; deterministic.

    python3 scripts/make_fuzz_corpus.py
"""
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(header, payload):
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + payload


def main():
    # config_json: the bundled configs, then each way a config can be wrong.
    for m in ["qwen3-micro", "qwen3-moe-micro", "qwen3-micro-gptq-w4g128-actorder"]:
        with open(os.path.join(ROOT, "assets", "models", m, "config.json"), "rb") as f:
            write("config_json", f"{m}.json", f.read())
    with open(os.path.join(ROOT, "assets", "models", "qwen3-micro", "config.json")) as f:
        base = json.load(f)

    def variant(name, **changes):
        c = dict(base)
        for k, v in changes.items():
            if v is None:
                c.pop(k, None)
            else:
                c[k] = v
        write("config_json", name + ".json", json.dumps(c))

    variant("missing-hidden-size", hidden_size=None)
    variant("missing-head-dim", head_dim=None)
    variant("heads-not-multiple-of-kv", num_attention_heads=6, num_key_value_heads=4)
    variant("zero-kv-heads", num_key_value_heads=0)
    variant("odd-head-dim", head_dim=63)
    variant("zero-head-dim", head_dim=0)
    variant("negative-layers", num_hidden_layers=-1)
    variant("huge-vocab", vocab_size=2**62)
    variant("string-hidden", hidden_size="512")
    variant("float-layers", num_hidden_layers=8.5)
    variant("moe-no-experts", model_type="qwen3_moe", num_experts=0, num_experts_per_tok=2)
    variant("moe-topk-above-experts", model_type="qwen3_moe", num_experts=4, num_experts_per_tok=8,
            moe_intermediate_size=128, decoder_sparse_step=1, mlp_only_layers=[])
    variant("moe-step-zero", model_type="qwen3_moe", num_experts=8, num_experts_per_tok=2,
            moe_intermediate_size=128, decoder_sparse_step=0, mlp_only_layers=[])
    variant("unknown-arch", model_type="gpt2", architectures=["GPT2LMHeadModel"])
    variant("rope-scaling-garbage", rope_scaling={"rope_type": "yarn", "factor": "x"})
    write("config_json", "empty.json", "")
    write("config_json", "empty-object.json", "{}")
    write("config_json", "array.json", "[1, 2, 3]")
    write("config_json", "truncated.json", json.dumps(base)[:100])
    write("config_json", "not-utf8.json", b"{\"hidden_size\": \xff\xfe}")
    write("config_json", "nested-deep.json", "[" * 512 + "]" * 512)

    # safetensors_header: a small valid file, then lying and truncated variants.
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)
    bf16 = struct.pack("<4H", 0x3F80, 0xC000, 0x3F00, 0x4050)
    i32 = struct.pack("<2i", 7, -9)
    good_header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "BF16", "shape": [4], "data_offsets": [16, 24]},
        "c": {"dtype": "I32", "shape": [2], "data_offsets": [24, 32]},
    }
    good = safetensors(good_header, f32 + bf16 + i32)
    write("safetensors_header", "valid", good)
    write("safetensors_header", "valid-empty", safetensors({}, b""))
    write("safetensors_header", "metadata-only", safetensors({"__metadata__": {"k": "v"}}, b""))
    for cut in [0, 4, 8, 12, len(good) - 1]:
        write("safetensors_header", f"truncated-{cut}", good[:cut])

    def lying(name, header, payload=f32 + bf16 + i32):
        write("safetensors_header", name, safetensors(header, payload))

    lying("offsets-past-end", {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 64]}})
    lying("offsets-reversed", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})
    lying("shape-size-mismatch", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})
    lying("shape-overflow", {"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 16]}})
    lying("negative-dim", {"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})
    lying("unknown-dtype", {"a": {"dtype": "F13", "shape": [4], "data_offsets": [0, 16]}})
    lying("overlapping", {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    })
    lying("gap-between", {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
    })
    lying("missing-offsets", {"a": {"dtype": "F32", "shape": [4]}})
    h = b"{\"a\": {\"dtype\": \"F32\""
    write("safetensors_header", "header-not-json", struct.pack("<Q", len(h)) + h + f32)
    write("safetensors_header", "header-length-huge", struct.pack("<Q", 2**63) + b"{}")
    write("safetensors_header", "header-length-past-end", struct.pack("<Q", 1000) + b"{}")
    h = b"\xff\xfe{}"
    write("safetensors_header", "header-not-utf8", struct.pack("<Q", len(h)) + h)
    h = b"[]"
    write("safetensors_header", "header-array", struct.pack("<Q", len(h)) + h)


if __name__ == "__main__":
    main()
