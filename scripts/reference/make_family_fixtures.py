#!/usr/bin/env python3
"""Tiny random-weight models of the families beyond Llama, with transformers + PEFT references.

Writes into crates/core/tests/fixtures/ (relative to the repo root):

  tiny-qwen3/   Qwen3ForCausalLM: q_norm/k_norm, head_dim (24) independent of hidden/heads (16)
  tiny-gemma2/  Gemma2ForCausalLM: sandwich norms, (1 + w) RMSNorm, GeGLU, √hidden embedding scale,
                query_pre_attn_scalar ≠ head_dim, attention and final logit soft-capping, sliding
                window (4) on alternating layers
  tiny-gemma3/  Gemma3ForCausalLM (gemma3_text): as Gemma 2 without soft-capping, plus q/k norms and
                two RoPE bases (sliding layers 1e4 unscaled, full layers 1e6 with linear scaling),
                layers [sliding, sliding, full]; config.json in the pre-v5 layout the Hub's
                checkpoints use (rope_theta, rope_local_base_freq, rope_scaling)
  tiny-phi3/    Phi3ForCausalLM: fused qkv_proj and gate_up_proj, LongRoPE (short and long factors,
                attention factor) with original_max_position_embeddings = 8, so the 9-token batch
                and the greedy run cross into the long factors; config.json in the pre-v5 layout

Each dir: config.json, model.safetensors, expected.safetensors (logits of an unpadded and of a
left-padded batch, as make_model_fixtures.py, plus `greedy_prompt` and `greedy_tokens`: 8 greedy
tokens, computed by full forwards without a cache), adapter/ (a PEFT LoRA r4 all-linear adapter with
non-zero B) and expected-lora.safetensors (`logits` adapter on, `logits_merged` after merge_and_unload).
Every norm weight is randomised so that a wrong norm (missing 1 + w, norm in the wrong place) shows.
The sequence (9) is longer than the window (4), so the sliding layers matter; the script checks that a
twin without the window, and one without soft-capping, give different logits.

Run:  /work/venv/bin/python scripts/reference/make_family_fixtures.py
Deterministic: CPU, float32, fixed seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_model_fixtures as mm  # noqa: E402  (same inputs, writers and checks)

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import (  # noqa: E402
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

OUT = mm.DEFAULT_OUT
NEW_TOKENS = 8


def randomize_norms(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


@torch.no_grad()
def greedy(model, prompt: torch.Tensor) -> torch.Tensor:
    if model.config.model_type == "phi3":
        # LongRoPE picks its factors per forward pass from the largest position, and Phi-3's
        # prepare_inputs_for_generation drops the cache once, when the sequence first grows past
        # original_max_position_embeddings; the reference is transformers' own generate.
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
        return out[:, prompt.shape[1]:]
    ids = prompt.clone()
    for _ in range(NEW_TOKENS):
        logits = mm.forward(model, ids, torch.arange(ids.shape[1]).unsqueeze(0))
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompt.shape[1]:]


def differs(model_a, cls, cfg_b, inp, what: str):
    twin = cls(cfg_b).eval()
    twin.load_state_dict(model_a.state_dict())
    ids, pos = inp["input_ids"], inp["position_ids"]
    d = (mm.forward(twin, ids, pos) - mm.forward(model_a, ids, pos)).abs().max().item()
    print(f"    twin without {what}: max|dlogit| = {d:.4f}")
    assert d > 1e-3, (what, d)


def peft_fixture(d: Path, inp):
    base = mm.load_f32(d)
    torch.manual_seed(2)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules="all-linear"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    model.eval()
    ad = d / "adapter"
    model.save_pretrained(str(ad))
    cfg_path = ad / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg["base_model_name_or_path"] = d.name
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (ad / "README.md").unlink(missing_ok=True)
    ids = inp["input_ids"]
    with torch.no_grad():
        on = model(ids).logits.float()
        with model.disable_adapter():
            off = model(ids).logits.float()
        merged = model.merge_and_unload()(ids).logits.float()
    n = len(load_file(str(ad / "adapter_model.safetensors")))
    print(f"    adapter: {n} tensors, max|dlogit| on vs off = {(on - off).abs().max():.4f}")
    assert (on - off).abs().max() > 1e-2
    mm.save_expected(d / "expected-lora.safetensors",
                     {"input_ids": ids, "logits": on, "logits_merged": merged}, {"model": d.name + " + adapter"})


def family(name, cls, cfg, seed, inp, twins=(), legacy=None):
    model = mm.init_model(cls, cfg, seed)
    randomize_norms(model, seed + 100)
    d = OUT / name
    mm.clean_dir(d)
    mm.save_hf(model, d)
    if legacy:
        legacy(d / "config.json")
    reloaded = mm.load_f32(d)
    exp = mm.compute_expected(reloaded, inp)
    assert torch.equal(exp["logits"], mm.forward(model, inp["input_ids"], inp["position_ids"])), \
        "the saved config does not reload to the same model"
    prompt = inp["input_ids"][1:2, :5].clone()
    exp["greedy_prompt"] = prompt
    exp["greedy_tokens"] = greedy(reloaded, prompt)
    mm.save_expected(d / "expected.safetensors", exp, {"model": name})
    mm.check_model_size(d)
    mm.dir_report(name, d, exp["logits"])
    for what, cfg_b in twins:
        differs(model, cls, cfg_b, inp, what)
    peft_fixture(d, inp)
    for p in sorted(d.rglob("*")):
        if p.is_file():
            os.chmod(p, 0o644)


def gemma3_legacy_config(path: Path):
    """transformers 5 writes one rope entry per layer type; the Hub's Gemma 3 checkpoints (written by
    transformers 4.5x) carry rope_theta (full layers), rope_local_base_freq (sliding layers) and
    rope_scaling (full layers only)."""
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters")
    full, local = dict(rp["full_attention"]), dict(rp["sliding_attention"])
    cfg["rope_theta"] = full.pop("rope_theta")
    cfg["rope_local_base_freq"] = local.pop("rope_theta")
    cfg["rope_scaling"] = None if full.get("rope_type", "default") == "default" else full
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def phi3_legacy_config(path: Path):
    """Phi-3 checkpoints on the Hub: rope_theta, rope_scaling {type: longrope, short_factor, long_factor}
    and a top-level original_max_position_embeddings."""
    cfg = json.loads(path.read_text())
    rp = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["original_max_position_embeddings"] = rp.pop("original_max_position_embeddings")
    rp.pop("partial_rotary_factor", None)
    cfg["rope_scaling"] = {"type": rp.pop("rope_type"), **rp}
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def main():
    print("versions:", mm.versions())
    common = dict(mm.COMMON)
    inp = mm.make_inputs(common["vocab_size"])

    # ---- Qwen3 ------------------------------------------------------------------------
    qwen3 = dict(common, head_dim=24, tie_word_embeddings=True, rope_parameters=mm.rope(1000000.0))
    family("tiny-qwen3", Qwen3ForCausalLM, Qwen3Config(**qwen3), 10, inp)

    # ---- Gemma 2 ----------------------------------------------------------------------
    g2 = dict(common, head_dim=16, query_pre_attn_scalar=24, sliding_window=4, pad_token_id=0,
              attn_logit_softcapping=1.5, final_logit_softcapping=3.0, rope_parameters=mm.rope(10000.0))
    cfg = Gemma2Config(**g2)
    assert cfg.layer_types == ["sliding_attention", "full_attention"], cfg.layer_types
    family("tiny-gemma2", Gemma2ForCausalLM, cfg, 11, inp, twins=[
        ("the sliding window", Gemma2Config(**dict(g2, sliding_window=64))),
        ("attention soft-capping", Gemma2Config(**dict(g2, attn_logit_softcapping=None))),
        ("final soft-capping", Gemma2Config(**dict(g2, final_logit_softcapping=None))),
    ])

    # ---- Gemma 3 ----------------------------------------------------------------------
    rp = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
    }
    g3 = dict(common, num_hidden_layers=3, intermediate_size=64, head_dim=20, query_pre_attn_scalar=18, sliding_window=4,
              pad_token_id=0, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
              rope_parameters=rp)
    same_bases = {"sliding_attention": rp["full_attention"], "full_attention": rp["full_attention"]}
    family("tiny-gemma3", Gemma3ForCausalLM, Gemma3TextConfig(**g3), 12, inp, twins=[
        ("the sliding window", Gemma3TextConfig(**dict(g3, sliding_window=64))),
        ("the local RoPE base", Gemma3TextConfig(**dict(g3, rope_parameters=same_bases))),
    ], legacy=gemma3_legacy_config)

    # ---- Phi-3 ------------------------------------------------------------------------
    half = 16 // 2  # head_dim 16
    longrope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 8,
                "short_factor": [1.0 + 0.05 * i for i in range(half)],
                "long_factor": [1.5 + 0.5 * i for i in range(half)]}
    p3 = dict(common, tie_word_embeddings=False, original_max_position_embeddings=8, rope_parameters=longrope,
              pad_token_id=0, eos_token_id=2, sliding_window=None)
    short_only = dict(longrope, long_factor=longrope["short_factor"])
    family("tiny-phi3", Phi3ForCausalLM, Phi3Config(**p3), 13, inp, twins=[
        ("the long factors", Phi3Config(**dict(p3, rope_parameters=short_only))),
    ], legacy=phi3_legacy_config)


if __name__ == "__main__":
    main()
