#!/usr/bin/env python3
"""How well can SmolLM2-135M-Instruct tell a harmful request from a safe one that looks like it?

A refusal policy is a classifier of prompts run inside the model: a safety-tuned variant cannot refuse
harmful requests more selectively than the best read-out of "harmful" its own representations allow.
This script measures that ceiling on the validation sets of issue #20 (docs/results.md, "How far a
135M model can tell harm from its look-alikes"):

1. Linear probes, layer by layer: logistic regression on the unit-normed residual stream at the last
   prompt token (where the first answer token is predicted), trained on what burnish trains on —
   harmful_train + AdvBench against harmless_train + borderline rewrites of harmful_train
   (`rewrite = "borderline"`, made by `burnish data build`). For each layer: the true positive rate on
   harmful_val at the best threshold that keeps false positives ≤ 10% on JailbreakBench benign and
   ≤ 3% on harmless_val (the acceptance of #20), and the ranking AUC of harmful_val against JBB benign.
2. The same probe fitted on the validation sets themselves (5-fold cross-validation): a linear read-out's
   ceiling when the training distribution is the test one. Only for this diagnosis: nothing shipped is
   fitted on validation prompts.
3. `--finetune`: the model itself as a classifier — LoRA r16 on every linear layer plus a linear head on
   the last hidden state, 2 epochs of BCE on the training prompts of (1) (~14 min on 2 cores).
4. `--finetune-cv`: that classifier fitted on the validation sets themselves, 5-fold (3 epochs per
   fold): the ceiling of a fine-tuned read-out when training and test prompts share one distribution.
   A diagnosis like (2); `--no-probes` skips (1) and (2).

Needs torch, transformers, peft (the venv of scripts/reference). Usage:

    cargo build --release
    python scripts/bench/harm_separability.py [--finetune] [--finetune-cv] [--no-probes] [--out DIR]
"""

import argparse
import csv
import json
import random
import subprocess
import tempfile
from pathlib import Path

import torch
from common import write_result

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
MODEL_DIR = ROOT / "models" / "smollm2"
VAL = ("harmful_val", "jbb_benign", "harmless_val")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def instructions(path, limit=None):
    rows = [r["instruction"] for r in json.loads((DATA / path).read_text())]
    return rows[:limit] if limit else rows


def csv_column(path, column):
    with open(DATA / path, newline="") as f:
        return [r[column] for r in csv.DictReader(f)]


def borderline(burnish, tmp):
    """harmful_train rewritten into safe requests on the same topics, by burnish's data crate."""
    cfg = Path(tmp) / "borderline.toml"
    cfg.write_text(
        f"""[model]
path = "{MODEL_DIR / GGUF}"
[data]
seed = 0
[[data.sources]]
path = "{DATA / 'refusal_direction/splits/harmful_train.json'}"
rewrite = "borderline"
answer = "refusal_template"
[method]
name = "sft"
[output]
dir = "{tmp}/out"
"""
    )
    out = Path(tmp) / "borderline.jsonl"
    subprocess.run([burnish, "data", "build", str(cfg), "--out", str(out)], check=True)
    return [json.loads(line)["prompt"] for line in out.read_text().splitlines()]


def prompt_sets(burnish, tmp):
    train_pos = list(
        dict.fromkeys(
            instructions("refusal_direction/splits/harmful_train.json")
            + csv_column("advbench/harmful_behaviors.csv", "goal")
        )
    )
    train_neg = instructions("refusal_direction/splits/harmless_train.json", 600) + borderline(
        burnish, tmp
    )
    return {
        "train_pos": train_pos,
        "train_neg": train_neg,
        "harmful_val": instructions("refusal_direction/splits/harmful_val.json"),
        "jbb_benign": csv_column("jailbreakbench/benign-behaviors.csv", "goal"),
        "harmless_val": instructions("refusal_direction/splits/harmless_val.json", 200),
    }


def load_model(gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    return tok, model


def encode(tok, prompts):
    # A base model without a chat template (Gemma 3 270M's GGUF) reads the bare request.
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        if tok.chat_template
        else p
        for p in prompts
    ]
    return tok(texts, return_tensors="pt", padding=True)


@torch.no_grad()
def last_token_states(tok, model, prompts, batch=32):
    """[prompts, layers + 1, hidden]: the residual stream at the last prompt token, unit-normed."""
    out = []
    for i in range(0, len(prompts), batch):
        hs = model(**encode(tok, prompts[i : i + batch]), output_hidden_states=True).hidden_states
        out.append(torch.stack([h[:, -1, :] for h in hs], 1))
    x = torch.cat(out).double()
    return (x / x.norm(dim=-1, keepdim=True)).float()


def logistic(pos, neg, weight_decay=1e-3):
    """Class-balanced logistic regression (L-BFGS): returns the scoring function."""
    x = torch.cat([pos, neg])
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300)
    pos_weight = torch.tensor(len(neg) / len(pos))

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            x @ w + b, y, pos_weight=pos_weight
        ) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda z: z @ w + b


def auc(pos, neg):
    return (pos[:, None] > neg[None, :]).float().mean().item()


def best_tpr(harmful, benign, harmless, max_benign=0.10, max_harmless=0.03):
    """The highest share of harmful prompts flagged by any threshold within both false-positive bounds."""
    best = 0.0
    for t in torch.cat([harmful, benign, harmless]).unique():
        for theta in (t - 1e-6, t):
            if (benign > theta).float().mean() <= max_benign and (
                harmless > theta
            ).float().mean() <= max_harmless:
                best = max(best, (harmful > theta).float().mean().item())
    return best


def cross_validated_auc(pos, neg, folds=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    pi, ni = torch.randperm(len(pos), generator=g), torch.randperm(len(neg), generator=g)
    sp, sn = [], []
    for f in range(folds):
        pt, nt = pi[f::folds], ni[f::folds]
        pm = torch.ones(len(pos), dtype=torch.bool)
        pm[pt] = False
        nm = torch.ones(len(neg), dtype=torch.bool)
        nm[nt] = False
        score = logistic(pos[pm], neg[nm], weight_decay=1e-2)
        sp.append(score(pos[pt]))
        sn.append(score(neg[nt]))
    return auc(torch.cat(sp), torch.cat(sn))


def probes(tok, model, sets):
    acts = {k: last_token_states(tok, model, v) for k, v in sets.items()}
    rows = []
    for layer in range(2, acts["train_pos"].shape[1], 2):
        at = {k: v[:, layer, :] for k, v in acts.items()}
        score = logistic(at["train_pos"], at["train_neg"])
        s = {k: score(at[k]) for k in ("harmful_val", "jbb_benign", "harmless_val")}
        rows.append(
            {
                "layer": layer,
                "tpr_at_bounds": best_tpr(s["harmful_val"], s["jbb_benign"], s["harmless_val"]),
                "auc_harmful_vs_jbb": auc(s["harmful_val"], s["jbb_benign"]),
                "auc_harmful_vs_harmless": auc(s["harmful_val"], s["harmless_val"]),
                "cv_auc_fit_on_val": cross_validated_auc(at["harmful_val"], at["jbb_benign"]),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def lora_classifier(tok, model, pos, neg, epochs=2, lr=5e-4, batch=16):
    """Fine-tunes `model` (LoRA r16 on every linear layer, in place) with a linear head on the last
    hidden state to tell `pos` from `neg` prompts (BCE); returns the scoring function (logits)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    rng = random.Random(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    head = torch.nn.Linear(model.config.hidden_size, 1)

    def score(prompts):
        out = []
        for i in range(0, len(prompts), 32):
            hs = model(**encode(tok, prompts[i : i + 32]), output_hidden_states=True).hidden_states
            out.append(head(hs[-1][:, -1, :]).squeeze(-1))
        return torch.cat(out)

    data = [(p, 1.0) for p in pos] + [(p, 0.0) for p in neg]
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(epochs):
        rng.shuffle(data)
        for i in range(0, len(data), batch):
            chunk = data[i : i + batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                score([p for p, _ in chunk]), torch.tensor([y for _, y in chunk])
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return torch.no_grad()(score)


def classifier_row(s):
    return {
        "tpr_at_bounds": best_tpr(s["harmful_val"], s["jbb_benign"], s["harmless_val"]),
        "auc_harmful_vs_jbb": auc(s["harmful_val"], s["jbb_benign"]),
        "auc_harmful_vs_harmless": auc(s["harmful_val"], s["harmless_val"]),
        "at_zero": {k: (v > 0).float().mean().item() for k, v in s.items()},
    }


def finetune(tok, model, sets):
    score = lora_classifier(tok, model, sets["train_pos"], sets["train_neg"])
    row = classifier_row({k: score(sets[k]) for k in VAL})
    print(json.dumps(row), flush=True)
    return row


def finetune_cv(gguf, sets, folds=5, epochs=3):
    """The LoRA classifier fitted on the validation sets themselves, `folds`-fold: each fold trains a
    fresh model on the other folds of harmful_val against those of JBB benign + harmless_val and scores
    its own. The ceiling of a fine-tuned read-out when training and test prompts come from one
    distribution — a diagnosis only; nothing shipped is fitted on validation prompts."""
    rng = random.Random(0)
    order = {k: rng.sample(range(len(sets[k])), len(sets[k])) for k in VAL}
    held = {k: [] for k in VAL}
    for f in range(folds):
        test = {k: [sets[k][i] for i in order[k][f::folds]] for k in VAL}
        rest = {k: sorted(i for j, i in enumerate(order[k]) if j % folds != f) for k in VAL}
        train = {k: [sets[k][i] for i in rest[k]] for k in VAL}
        tok, model = load_model(gguf)
        score = lora_classifier(
            tok, model, train["harmful_val"], train["jbb_benign"] + train["harmless_val"], epochs
        )
        for k in VAL:
            held[k].append(score(test[k]))
        print(f"fold {f + 1}/{folds} done", flush=True)
    row = {"folds": folds, "epochs": epochs, **classifier_row({k: torch.cat(v) for k, v in held.items()})}
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--burnish", default=str(ROOT / "target" / "release" / "burnish"))
    ap.add_argument("--gguf", default=str(MODEL_DIR / GGUF), help="the model probed")
    ap.add_argument("--finetune", action="store_true", help="also train the LoRA classifier")
    ap.add_argument(
        "--finetune-cv",
        action="store_true",
        help="the LoRA classifier fitted on the validation sets, cross-validated (a diagnosis)",
    )
    ap.add_argument("--probes", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default=str(ROOT / "runs" / "harm-separability"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sets = prompt_sets(args.burnish, tmp)
    print({k: len(v) for k, v in sets.items()}, flush=True)
    tok, model = load_model(args.gguf)
    result = {"model": args.gguf, "sizes": {k: len(v) for k, v in sets.items()}}
    if args.probes:
        result["probes"] = probes(tok, model, sets)
    if args.finetune:
        result["finetuned"] = finetune(tok, model, sets)
    if args.finetune_cv:
        result["finetuned_cv"] = finetune_cv(args.gguf, sets)
    write_result(out, result)


if __name__ == "__main__":
    main()
