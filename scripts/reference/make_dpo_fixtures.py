"""DPO loss fixtures: TRL's per-pair losses and logged rewards on given log-probs.

Reads nothing; writes crates/trainers/tests/fixtures/dpo_losses.json. The per-token log-probs are random,
the losses are TRL 1.16's `DPOTrainer._compute_loss` formulas (sigmoid, hinge, ipo with per-token averaged
log-ratios, robust, sft, and a weighted list as with `loss_weights`) applied to them with torch, so the Rust losses are checked against an independent
implementation. Run with the reference venv: python scripts/reference/make_dpo_fixtures.py
"""
import json
import pathlib

import torch
import torch.nn.functional as F
import trl

torch.manual_seed(0)
pairs, seq = 6, 9
# Completion masks with different lengths per row (chosen rows first, then rejected, as TRL batches them).
mask = torch.zeros(2 * pairs, seq)
for i in range(2 * pairs):
    mask[i, : 2 + (i * 5) % (seq - 1)] = 1
policy_tok = -torch.rand(2 * pairs, seq) * 3 * mask
ref_tok = -torch.rand(2 * pairs, seq) * 3 * mask
logps, ref_logps = policy_tok.sum(1), ref_tok.sum(1)
chosen_logps, rejected_logps = logps.chunk(2)
ref_chosen, ref_rejected = ref_logps.chunk(2)
chosen_lr, rejected_lr = chosen_logps - ref_chosen, rejected_logps - ref_rejected
delta = chosen_lr - rejected_lr
chosen_mask, rejected_mask = mask.chunk(2)

cases = []
for loss_type, beta, eps in [
    ("sigmoid", 0.1, 0.0),
    ("sigmoid", 0.5, 0.0),
    ("hinge", 0.1, 0.0),
    ("hinge", 1.0, 0.0),
    ("ipo", 0.1, 0.0),
    ("ipo", 0.5, 0.0),
    ("robust", 0.1, 0.2),
    ("robust", 0.3, 0.0),
    ("sft", 0.1, 0.0),
    (["sigmoid", "sft"], 0.1, 0.0),
]:
    weights = None
    if isinstance(loss_type, list):
        weights = [1.0, 0.5]
        loss = -F.logsigmoid(beta * delta) * weights[0] + (-logps.chunk(2)[0].sum() / chosen_mask.sum()).expand(pairs) * weights[1]
    elif loss_type == "sft":
        # TRL: the mean NLL over every chosen token of the batch, the same for each pair.
        loss = (-chosen_logps.sum() / chosen_mask.sum()).expand(pairs)
    elif loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        loss = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        avg = chosen_lr / chosen_mask.sum(1).clamp(min=1.0) - rejected_lr / rejected_mask.sum(1).clamp(min=1.0)
        loss = (avg - 1 / (2 * beta)) ** 2
    else:
        clean = -(1 - eps) * F.logsigmoid(beta * delta)
        flipped = -eps * F.logsigmoid(-beta * delta)
        loss = (clean - flipped) / (1 - 2 * eps)
    cr, rr = beta * chosen_lr, beta * rejected_lr
    cases.append(
        {
            "loss_type": loss_type,
            "loss_weights": weights,
            "beta": beta,
            "label_smoothing": eps,
            "losses": loss.tolist(),
            "rewards/chosen": cr.mean().item(),
            "rewards/rejected": rr.mean().item(),
            "rewards/accuracies": (cr > rr).float().mean().item(),
            "rewards/margins": (cr - rr).mean().item(),
            "logps/chosen": chosen_logps.mean().item(),
            "logps/rejected": rejected_logps.mean().item(),
        }
    )

out = {
    "trl_version": trl.__version__,
    "torch_version": torch.__version__,
    "pairs": pairs,
    "logps": logps.tolist(),
    "ref_logps": ref_logps.tolist(),
    "lengths": mask.sum(1).tolist(),
    "cases": cases,
}
path = pathlib.Path(__file__).resolve().parents[2] / "crates/trainers/tests/fixtures/dpo_losses.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path}")
