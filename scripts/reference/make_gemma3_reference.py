#!/usr/bin/env python3
"""Greedy tokens of the real Gemma 3 270M (Q4_K_M GGUF) from transformers, for crates/core/tests/gemma3.rs.

    scripts/fetch-gemma3.sh
    /work/venv/bin/python scripts/reference/make_gemma3_reference.py

transformers loads the GGUF (`gguf_file=`: every tensor dequantized to f32, Gemma's stored 1 + w norms
turned back into w) and, for each prompt (the project's own sentences, not from any benchmark), writes
the token ids its tokenizer gives (with BOS), the 16 greedy tokens (full forwards, eager attention,
f32), and the 10 largest logits at the prompt's last position. Output:
crates/core/tests/fixtures/gemma3/expected.json (small; the weights themselves are never committed).
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GGUF = ROOT / "models" / "gemma3" / "gemma-3-270m-q4_k_m.gguf"
OUT = ROOT / "crates" / "core" / "tests" / "fixtures" / "gemma3" / "expected.json"
NEW = 16
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village by the sea,",
    "To bake bread you need flour, water, and",
]

torch.set_num_threads(2)


@torch.no_grad()
def main():
    if not GGUF.exists():
        sys.exit(f"{GGUF} missing: run scripts/fetch-gemma3.sh")
    tok = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    cases = []
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt").input_ids
        prompt = ids[0].tolist()
        new = []
        last = None
        for _ in range(NEW):
            logits = model(input_ids=ids, use_cache=False).logits[0, -1].float()
            if last is None:
                last = logits
            nxt = int(logits.argmax())
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        top = torch.topk(last, 10)
        cases.append({
            "text": text,
            "prompt_ids": prompt,
            "greedy_ids": new,
            "greedy_text": tok.decode(new),
            "top_ids": top.indices.tolist(),
            "top_logits": [round(float(v), 5) for v in top.values],
        })
        print(repr(text), "→", repr(tok.decode(new)))
    doc = {
        "generator": "scripts/reference/make_gemma3_reference.py",
        "model": "gemma-3-270m-q4_k_m.gguf (scripts/fetch-gemma3.sh)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "config": {k: getattr(model.config, k) for k in
                   ("sliding_window", "layer_types", "query_pre_attn_scalar", "rope_parameters", "head_dim")},
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
