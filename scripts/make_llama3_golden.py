#!/usr/bin/env python3
"""Builds the bundled LLaMA-3-shaped test checkpoints and their goldens.

Test-data generation only (never a dependency of the project). Needs torch and transformers
(written with torch 2.15, transformers 5.24):

    python scripts/make_llama3_golden.py            # from the repository root

Writes
  assets/models/llama3-micro/          4 layers, hidden 256, 8 heads / 4 KV heads (GQA), head_dim
                                       derived (32), intermediate 768, vocab 8192, untied lm_head,
                                       rope_theta 500000 with "llama3" rope scaling (factor 8, low 1,
                                       high 4, original_max_position_embeddings 64), no biases;
                                       config.json in the spelling of Meta's Llama-3.1 checkpoints
                                       (`rope_scaling`, `rope_theta`, `torch_dtype`, no `head_dim`).
  assets/models/llama3-bias-micro/     2 layers, hidden 128, 4 heads / 2 KV heads, attention_bias
                                       true (q/k/v/o biases, as derived models carry), tied
                                       embeddings; config.json as transformers 5 writes it
                                       (`rope_parameters` with rope_type llama3, `dtype`).
  assets/golden/llama3-micro.logits.safetensors
  assets/golden/llama3-bias-micro.logits.safetensors
                                       `input_ids` [B, T] int64, `logits` [B, T, vocab] and
                                       `hidden_states.{0..L}` [B, T, hidden] (f32), as the Qwen3
                                       goldens: weights read back as bf16, computed in f32.

Both models are random initialisations (seeded), so they predict nothing; the tokenizer files
next to them are qwen3-micro's (a byte-level BPE of 8192 ids, the vocabulary both models use),
so that `eval` and the docs data work on them unchanged.
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "assets")
TOKENIZER_FROM = os.path.join(ASSETS, "models", "qwen3-micro")
EOS = 8189  # `<|endoftext|>` of the micro tokenizer


def random_model(cfg: LlamaConfig, seed: int, bias_std: float) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                # Norm weights near one, not exactly one, so a wrong norm placement shows.
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(bias_std * torch.randn_like(p))
    return model.to(torch.bfloat16)


def write_model(model: LlamaForCausalLM, out: str, config_json: dict) -> None:
    os.makedirs(out, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config_json, f, indent=2, sort_keys=True)
        f.write("\n")
    gen = {"bos_token_id": EOS, "eos_token_id": EOS, "pad_token_id": EOS}
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
        f.write("\n")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER_FROM, name), os.path.join(out, name))


def write_golden(model_dir: str, golden: str, ids: torch.Tensor) -> None:
    # Read back what was written (config.json included), as bf16 weights, then compute in f32.
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    model = model.to(torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    tensors = {"input_ids": ids.to(torch.int64).contiguous(), "logits": out.logits.float().contiguous()}
    for i, h in enumerate(out.hidden_states):
        tensors[f"hidden_states.{i}"] = h.float().contiguous()
    save_file(tensors, golden)
    print(golden, {k: tuple(v.shape) for k, v in tensors.items() if not k.startswith("hidden")},
          len(out.hidden_states), "hidden states")


def token_ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 8189, (batch, seq), generator=g)


def main() -> None:
    # --- llama3-micro: the shape of Llama-3 (GQA, llama3 rope scaling), no biases, untied.
    rope_scaling = {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 64,
        "rope_type": "llama3",
    }
    hf = LlamaConfig(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 500000.0, **rope_scaling},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=EOS,
        eos_token_id=EOS,
    )
    model = random_model(hf, seed=18, bias_std=0.0)
    # Meta's Llama-3.1 config.json fields (transformers 4.x spelling), head_dim left out.
    config_json = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": EOS,
        "eos_token_id": EOS,
        "hidden_act": "silu",
        "hidden_size": 256,
        "initializer_range": 0.02,
        "intermediate_size": 768,
        "max_position_embeddings": 2048,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 8,
        "num_hidden_layers": 4,
        "num_key_value_heads": 4,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": rope_scaling,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.0",
        "use_cache": True,
        "vocab_size": 8192,
    }
    d = os.path.join(ASSETS, "models", "llama3-micro")
    write_model(model, d, config_json)
    write_golden(d, os.path.join(ASSETS, "golden", "llama3-micro.logits.safetensors"),
                 token_ids(2, 64, seed=1))

    # --- llama3-bias-micro: attention biases (derived models), tied embeddings, 5.x spelling.
    hf = LlamaConfig(
        vocab_size=8192,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 500000.0, **rope_scaling},
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=False,
        bos_token_id=EOS,
        eos_token_id=EOS,
        dtype="bfloat16",
    )
    hf.architectures = ["LlamaForCausalLM"]
    model = random_model(hf, seed=19, bias_std=0.5)
    config_json = json.loads(hf.to_json_string())
    d = os.path.join(ASSETS, "models", "llama3-bias-micro")
    write_model(model, d, config_json)
    write_golden(d, os.path.join(ASSETS, "golden", "llama3-bias-micro.logits.safetensors"),
                 token_ids(1, 48, seed=2))


if __name__ == "__main__":
    main()
