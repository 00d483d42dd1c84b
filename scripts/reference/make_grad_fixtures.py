#!/usr/bin/env python3
"""LoRA gradient fixtures (issue #17): PyTorch + PEFT loss and adapter gradients on a fixed batch.

    /work/venv/bin/python scripts/reference/make_grad_fixtures.py

The model is crates/core/tests/fixtures/tiny-llama with the PEFT adapter of lora/all-linear (r 4,
alpha 8, every linear, B drawn non-zero so both A and B get gradients). Writes
crates/core/tests/fixtures/grad/expected.safetensors:

- SFT: `sft.input_ids`, `sft.labels` ([3, 11], right-padded, -100 on prompt tokens and padding, rows of
  different lengths) and `sft.attention_mask`; `sft.loss` = transformers' causal-LM loss (mean cross
  entropy over every labelled token of the batch); `sft.grad.<peft key>` = d loss / d tensor.
- DPO (sigmoid, beta 0.1): two pairs `dpo.<i>.prompt`, `dpo.<i>.chosen`, `dpo.<i>.rejected` (token ids,
  chosen and rejected of different lengths); `dpo.loss` = mean over pairs of
  -logsigmoid(beta ((pc - rc) - (pr - rr))), sequence log-probs summed over completion tokens, the
  reference being the same model with the adapter disabled (TRL's DPOTrainer with a PEFT model and no
  ref_model; the formula is checked against TRL itself by make_dpo_fixtures.py);
  `dpo.grad.<peft key>`.

float32 on the CPU, 2 threads, deterministic (a second run writes identical bytes).
"""
import os

import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "crates/core/tests/fixtures")
PAD = 0
BETA = 0.1


def model():
    base = AutoModelForCausalLM.from_pretrained(os.path.join(FIX, "tiny-llama"), dtype=torch.float32)
    m = PeftModel.from_pretrained(base, os.path.join(FIX, "lora/all-linear"), is_trainable=True)
    m.train()  # lora_dropout is 0: train mode changes nothing but records gradients
    return m


def grads(m, prefix):
    out = {}
    for name, p in m.named_parameters():
        if p.requires_grad:
            # PEFT's parameter name carries the adapter name ("lora_A.default.weight"); its file key does not.
            key = name.replace(".default.", ".")
            out[f"{prefix}.grad.{key}"] = p.grad.detach().clone().contiguous()
    return out


def sft(m, g):
    # (prompt length, completion length) per row: labels cover the completion only.
    rows = [(4, 7), (3, 4), (5, 3)]
    width = max(p + c for p, c in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        seq = torch.randint(3, 128, (p + c,), generator=g)
        ids[i, : p + c] = seq
        labels[i, p : p + c] = seq[p:]
        mask[i, : p + c] = 1
    m.zero_grad()
    loss = m(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    out = {"sft.input_ids": ids, "sft.labels": labels, "sft.attention_mask": mask, "sft.loss": loss.detach().reshape(1)}
    out.update(grads(m, "sft"))
    return out


def seq_logp(m, prompt, completion):
    ids = torch.cat([prompt, completion]).unsqueeze(0)
    logits = m(input_ids=ids).logits[0, :-1]
    logp = F.log_softmax(logits, -1).gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1)
    return logp[len(prompt) - 1 :].sum()


def dpo(m, g):
    pairs = []
    out = {}
    for i, (p, c, r) in enumerate([(5, 4, 6), (3, 7, 2)]):
        prompt, chosen, rejected = (torch.randint(3, 128, (n,), generator=g) for n in (p, c, r))
        pairs.append((prompt, chosen, rejected))
        out.update({f"dpo.{i}.prompt": prompt, f"dpo.{i}.chosen": chosen, f"dpo.{i}.rejected": rejected})
    m.zero_grad()
    losses = []
    for prompt, chosen, rejected in pairs:
        with torch.no_grad(), m.disable_adapter():
            rc, rr = seq_logp(m, prompt, chosen), seq_logp(m, prompt, rejected)
        pc, pr = seq_logp(m, prompt, chosen), seq_logp(m, prompt, rejected)
        losses.append(-F.logsigmoid(BETA * ((pc - rc) - (pr - rr))))
    loss = torch.stack(losses).mean()
    loss.backward()
    out["dpo.loss"] = loss.detach().reshape(1)
    out.update(grads(m, "dpo"))
    return out


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    m = model()
    out = sft(m, g)
    out.update(dpo(m, g))
    dest = os.path.join(FIX, "grad")
    os.makedirs(dest, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(dest, "expected.safetensors"),
              metadata={"torch": torch.__version__, "peft": __import__("peft").__version__})
    n = sum(1 for k in out if ".grad." in k)
    print(f"sft loss {out['sft.loss'].item():.6f}, dpo loss {out['dpo.loss'].item():.6f}, {n} gradients")


if __name__ == "__main__":
    main()
