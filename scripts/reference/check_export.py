#!/usr/bin/env python3
"""Cross-checks burnish's merged exports with transformers and gguf-py (not part of CI; run after
`cargo test --release -p burnish-core --test lora`, which leaves the files in target/tmp/burnish-export).

    /work/venv/bin/python scripts/reference/check_export.py [target/tmp/burnish-export]

Loads merged/ (HF directory) and merged.gguf with transformers, compares their logits to burnish's
(expected_logits.safetensors) and lists the GGUF's metadata keys with gguf-py's reader.
"""
import os, sys

import torch
from gguf import GGUFReader
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

d = sys.argv[1] if len(sys.argv) > 1 else "target/tmp/burnish-export"
exp = load_file(os.path.join(d, "expected_logits.safetensors"))
ok = True
for name, kw in [("merged/", dict(pretrained_model_name_or_path=os.path.join(d, "merged"))),
                 ("merged.gguf", dict(pretrained_model_name_or_path=d, gguf_file="merged.gguf"))]:
    m = AutoModelForCausalLM.from_pretrained(dtype=torch.float32, **kw).eval()
    with torch.no_grad():
        diff = (m(exp["input_ids"]).logits - exp["logits"]).abs().max().item()
    print(f"transformers loads {name}: max |Δlogits| vs burnish = {diff:.2e}")
    ok &= diff <= 1e-4
r = GGUFReader(os.path.join(d, "merged.gguf"))
print("gguf-py reads merged.gguf:", len(r.tensors), "tensors;", ", ".join(k for k in r.fields if not k.startswith("GGUF.")))
sys.exit(0 if ok else 1)
