#!/usr/bin/env python3
"""PEFT LoRA fixtures for crates/core/tests/lora.rs.

    /work/venv/bin/python scripts/reference/make_lora_fixtures.py            # write fixtures
    /work/venv/bin/python scripts/reference/make_lora_fixtures.py --check DIR  # peft loads a burnish adapter

Writes crates/core/tests/fixtures/lora/<name>/ with a PEFT adapter (adapter_config.json +
adapter_model.safetensors, B initialised non-zero so the adapter matters) on the tiny-llama fixture and
expected.safetensors: `input_ids`, `logits` (adapter on), `logits_base` (adapter off, PEFT's
disable_adapter), `logits_merged` (merge_and_unload). --check loads a burnish-written adapter directory
with peft on tiny-llama and compares its logits to DIR/expected_logits.safetensors (written by the
Rust test `burnish_adapter_for_peft`).
"""
import json, os, shutil, sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "crates/core/tests/fixtures")
BASE = os.path.join(FIX, "tiny-llama")

CASES = {
    # name: LoraConfig kwargs
    "all-linear": dict(r=4, lora_alpha=8, target_modules="all-linear"),
    "qv-rslora-layer1": dict(r=2, lora_alpha=3, target_modules=["q_proj", "v_proj"], use_rslora=True, layers_to_transform=[1]),
}


def base():
    return AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()


def make():
    torch.manual_seed(0)
    ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    for name, kw in CASES.items():
        out = os.path.join(FIX, "lora", name)
        shutil.rmtree(out, ignore_errors=True)
        torch.manual_seed(2)
        model = get_peft_model(base(), LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **kw))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.3)
        model.eval()
        model.save_pretrained(out)
        with torch.no_grad():
            logits = model(ids).logits
            with model.disable_adapter():
                logits_base = model(ids).logits
            merged = model.merge_and_unload()
            logits_merged = merged(ids).logits
        save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous(), "logits_base": logits_base.contiguous(),
                   "logits_merged": logits_merged.contiguous()}, os.path.join(out, "expected.safetensors"))
        # PEFT writes an "all-linear" selection as a set of module paths in arbitrary order; sort it so
        # the fixture is reproducible.
        cfg_path = os.path.join(out, "adapter_config.json")
        cfg = json.load(open(cfg_path))
        if isinstance(cfg.get("target_modules"), list):
            cfg["target_modules"] = sorted(cfg["target_modules"])
        cfg["base_model_name_or_path"] = "tiny-llama"
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        # README.md that peft writes is noise for a fixture.
        for extra in ("README.md",):
            p = os.path.join(out, extra)
            if os.path.exists(p):
                os.remove(p)
        keys = sorted(load_file(os.path.join(out, "adapter_model.safetensors")).keys())
        with open(os.path.join(out, "keys.json"), "w") as f:
            json.dump({"keys": keys, "adapter_config_keys": sorted(json.load(open(os.path.join(out, "adapter_config.json"))).keys())}, f, indent=1)
        print(f"{name}: {len(keys)} tensors, |Δlogits| adapter vs base = {(logits - logits_base).abs().max():.4f}")


def check(d):
    model = PeftModel.from_pretrained(base(), d).eval()
    exp = load_file(os.path.join(d, "expected_logits.safetensors"))
    with torch.no_grad():
        got = model(exp["input_ids"]).logits
    diff = (got - exp["logits"]).abs().max().item()
    print(f"peft loaded {d}: max |Δlogits| vs burnish = {diff:.2e}")
    sys.exit(0 if diff <= 1e-4 else 1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    else:
        make()
