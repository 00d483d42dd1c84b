"""KL fixture for `burnish eval`: KL(P_base || P_model) over the base's greedy continuation.

Base = crates/core/tests/fixtures/tiny-llama, model = tiny-llama-tied (same vocabulary, different weights),
both loaded with transformers (float32, eager attention, CPU). For fixed prompts the base's greedy
continuation (no EOS stop) is computed, then per position of that continuation (the first is the first
generated token) the KL of the two next-token distributions. Writes
crates/trainers/tests/fixtures/kl_tiny.json. Run: python scripts/reference/make_kl_fixtures.py
"""
import json
import pathlib

import torch
import transformers
from transformers import AutoModelForCausalLM

torch.set_num_threads(2)
root = pathlib.Path(__file__).resolve().parents[2]
fx = root / "crates/core/tests/fixtures"
load = lambda d: AutoModelForCausalLM.from_pretrained(fx / d, torch_dtype=torch.float32, attn_implementation="eager").eval()
base, model = load("tiny-llama"), load("tiny-llama-tied")
prompts = [[1, 17, 33, 5, 90], [1, 64, 3], [1, 100, 101, 102, 7, 8, 9, 12]]
steps = 6
rows = []
with torch.no_grad():
    for p in prompts:
        ids = list(p)
        for _ in range(steps):
            ids.append(int(base(torch.tensor([ids])).logits[0, -1].argmax()))
        x = torch.tensor([ids])
        lp = torch.log_softmax(base(x).logits[0], -1)
        lq = torch.log_softmax(model(x).logits[0], -1)
        at = range(len(p) - 1, len(ids) - 1)
        kl = [float((lp[t].exp() * (lp[t] - lq[t])).sum()) for t in at]
        rows.append({"prompt": p, "continuation": ids[len(p):], "kl": kl})
out = {"transformers_version": transformers.__version__, "base": "tiny-llama", "model": "tiny-llama-tied", "rows": rows}
path = root / "crates/trainers/tests/fixtures/kl_tiny.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path}")
