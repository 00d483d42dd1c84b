"""Refusal-direction fixture for the ablation tests, computed with transformers on the tiny random Llama.

Difference of means of the residual stream entering each layer (transformers' `hidden_states[l]`,
l < num_layers) at the last prompt position, over two sets of token-id prompts of different lengths,
each run unpadded; the unit direction of layer 1; and weights orthogonalised against it
(W <- W - r r^T W for o_proj / down_proj in HF [out, in] orientation, E <- E - (E r) r^T for the
embeddings). Checks that the edited model's residual stream has no component along r at any layer.
Writes crates/trainers/tests/fixtures/ablation/{prompts.json, expected.safetensors}.
Run: python scripts/reference/make_ablation_fixtures.py
"""
import json
import pathlib

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

torch.set_num_threads(2)
root = pathlib.Path(__file__).resolve().parents[2]
model = AutoModelForCausalLM.from_pretrained(
    root / "crates/core/tests/fixtures/tiny-llama", torch_dtype=torch.float32, attn_implementation="eager"
).eval()
L = model.config.num_hidden_layers
harmful = [[1, 17, 33, 5, 90, 7], [1, 64, 3, 7], [1, 100, 101, 102, 7, 8, 9, 7], [1, 40, 7]]
harmless = [[1, 20, 21, 7], [1, 90, 91, 92, 93, 7], [1, 5, 7], [1, 60, 61, 62, 63, 64, 65, 7]]


def means(prompts, m):
    acc = None
    with torch.no_grad():
        for p in prompts:
            hs = m(torch.tensor([p]), output_hidden_states=True).hidden_states
            v = torch.stack([hs[l][0, -1] for l in range(L)])
            acc = v if acc is None else acc + v
    return acc / len(prompts)


diff = means(harmful, model) - means(harmless, model)  # [L, H]
r = diff[1] / diff[1].norm()
out = {"diff": diff.contiguous(), "direction": r.contiguous()}
with torch.no_grad():
    E = model.model.embed_tokens.weight
    E -= torch.outer(E @ r, r)
    out["embed_tokens"] = E.clone()
    for i, layer in enumerate(model.model.layers):
        for name, lin in [("o_proj", layer.self_attn.o_proj), ("down_proj", layer.mlp.down_proj)]:
            W = lin.weight  # [out, in]
            W -= torch.outer(r, r @ W)
            out[f"layers.{i}.{name}"] = W.clone()
    worst = 0.0
    for p in harmful + harmless:
        hs = model(torch.tensor([p]), output_hidden_states=True).hidden_states
        for l in range(L):
            worst = max(worst, float((hs[l][0] @ r).abs().max()))
    assert worst < 1e-5, worst
dst = root / "crates/trainers/tests/fixtures/ablation"
dst.mkdir(parents=True, exist_ok=True)
save_file({k: v.contiguous() for k, v in out.items()}, dst / "expected.safetensors")
(dst / "prompts.json").write_text(json.dumps({"harmful": harmful, "harmless": harmless, "layer": 1}) + "\n")
print(f"wrote {dst}; max |h . r| after ablation = {worst:.2e}")
