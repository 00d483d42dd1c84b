#!/usr/bin/env python3
"""What first-token KL does undoing a safety model's refusal openers cost, at the least?

Issue #20 asks a refusal-free variant for first-token KL ≤ 0.1 to the safety-tuned model it is made from
(measured on harmless prompts, as heretic measures it) *and* harmless false refusals back to the
original's. On harmless prompts a safety-tuned model puts probability on the first tokens of its
refusals ("I", "Sorry": the first tokens of burnish's default refusal templates) that the original did
not. Any model q whose mass on those openers is m_q, against the safety model's m_p, has

    KL(p ‖ q) ≥ m_p log(m_p / m_q) + (1 − m_p) log((1 − m_p) / (1 − m_q))

at that position (the KL of the two-way split {opener, anything else}; merging outcomes never raises a
KL). This script measures, on the first `--limit` harmless_val prompts: each model's mean opener mass,
its first-token KL to the source, the share of that KL the split alone explains, and the floor for a
model whose opener mass is the original's on every prompt — the least first-token KL at which the
safety model's refusal openers are undone as far as the original has them.

Needs torch and transformers (the venv of scripts/reference). Usage:

    python scripts/bench/refusal_kl_floor.py --source showcase/safety/merged \
        --original models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --variant showcase/refusal-free/merged --variant runs/other/merged [--out runs/kl-floor]
"""

import argparse
import json
from pathlib import Path

import torch
from common import write_result
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
OPENERS = ["I", "Sorry"]


def load(path):
    path = Path(path)
    if path.suffix == ".gguf":
        kw = {"gguf_file": path.name}
        path = path.parent
    else:
        kw = {}
    tok = AutoTokenizer.from_pretrained(path, **kw)
    return tok, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)


@torch.no_grad()
def first_token_logps(tok, model, prompts):
    """[prompts, vocab]: log-probabilities of the first answer token, in float64."""
    rows = []
    for p in prompts:
        t = tok.apply_chat_template(
            [{"role": "user", "content": p}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        rows.append(torch.log_softmax(model(**t).logits[0, -1].double(), -1))
    return torch.stack(rows)


def split_kl(p, q):
    """KL of the two-way split: p, q are each prompt's opener mass."""
    return p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True, help="the safety-tuned model (HF directory or GGUF)")
    ap.add_argument("--original", required=True, help="the model before safety tuning")
    ap.add_argument("--variant", action="append", default=[], help="refusal-free variants to place")
    ap.add_argument("--limit", type=int, default=50, help="first N harmless_val prompts (eval's 50)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "kl-floor"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = json.loads((DATA / "refusal_direction/splits/harmless_val.json").read_text())
    prompts = [r["instruction"] for r in rows[: args.limit]]
    tok, src = load(args.source)
    ids = sorted({tok.encode(w, add_special_tokens=False)[0] for w in OPENERS})
    mass = lambda lp: lp[:, ids].exp().sum(-1)  # noqa: E731
    p = first_token_logps(tok, src, prompts)
    result = {"prompts": len(prompts), "openers": [tok.decode([i]) for i in ids], "models": {}}
    result["models"]["source"] = {"opener_mass": mass(p).mean().item()}
    for name, path in [("original", args.original)] + [(v, v) for v in args.variant]:
        vtok, model = load(path)
        assert vtok.get_vocab() == tok.get_vocab(), f"{path}: another tokenizer than the source's"
        q = first_token_logps(tok, model, prompts)
        kl = (p.exp() * (p - q)).sum(-1)
        split = split_kl(mass(p), mass(q))
        result["models"][name] = {
            "opener_mass": mass(q).mean().item(),
            "first_token_kl_to_source": kl.mean().item(),
            "split_share_of_kl": (split.mean() / kl.mean()).item(),
        }
        if name == "original":
            result["floor_at_original_openers"] = split.mean().item()
        print(name, json.dumps(result["models"][name]), flush=True)
    print("floor (opener mass back to the original's):", result["floor_at_original_openers"])
    write_result(args.out, result)


if __name__ == "__main__":
    main()
