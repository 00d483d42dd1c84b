#!/usr/bin/env python3
"""Evaluation throughput: `burnish eval` vs transformers batched generation, side by side in one run.

    python scripts/bench/compare_eval.py [--model models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--threads 2] [--new-tokens 64] [--batch 16] [--limit 39]

Both answer the same prompts (refusal_direction harmful_val, ../shared/data) greedily under the chat
template, up to --new-tokens each and stopping at EOS, in length-sorted batches of --batch with left
padding. Reported: prompts per minute of generation (model loading excluded) and the ratio. Needs torch +
transformers + gguf and a release build (`cargo build --release`).
"""
import argparse, json, os, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT  # noqa: E402

TORCH_CHILD = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, threads, new_tokens, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prompts = json.loads(sys.argv[5])
torch.set_num_threads(threads)
d, f = path.rsplit("/", 1)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
tok.padding_side = "left"
texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False) for p in prompts]
order = sorted(range(len(texts)), key=lambda i: len(tok(texts[i], add_special_tokens=False).input_ids))
generated = 0
t0 = time.time()
with torch.inference_mode():
    for s in range(0, len(order), batch):
        enc = tok([texts[i] for i in order[s:s + batch]], add_special_tokens=False, padding=True, return_tensors="pt")
        out = model.generate(**enc, do_sample=False, max_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)
        new = out[:, enc.input_ids.shape[1]:]
        generated += int((new != tok.pad_token_id).sum()) + int((new == tok.eos_token_id).any(1).sum())
secs = time.time() - t0
print(json.dumps({"prompts": len(prompts), "seconds": secs, "new_tokens": generated}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--limit", type=int, default=39)
    a = ap.parse_args()
    data = os.path.join(ROOT, "..", "shared", "data", "refusal_direction", "splits", "harmful_val.json")
    prompts = [r["instruction"] for r in json.load(open(data))][: a.limit]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(ROOT, "target", "release", "burnish")
        p = subprocess.run([exe, "eval", "--model", a.model, "--harmful", data, "--limit", str(a.limit),
                            "--max-new-tokens", str(a.new_tokens), "--batch-size", str(a.batch), "--no-kl",
                            "--out", tmp, "--json"], env=env, capture_output=True, text=True, check=True)
        sp = json.loads(p.stdout)["speed"]
    b = {"prompts": sp["prompts"], "seconds": sp["generation_seconds"], "new_tokens": sp["new_tokens"]}
    p = subprocess.run([sys.executable, "-c", TORCH_CHILD, a.model, str(a.threads), str(a.new_tokens), str(a.batch),
                        json.dumps(prompts)], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(p.stderr[-3000:])
    t = json.loads(p.stdout.strip().splitlines()[-1])
    rows = {"burnish": b, "transformers": t}
    for name, r in rows.items():
        print(f"{name:13s}: {r['prompts']} prompts in {r['seconds']:.1f} s = {60 * r['prompts'] / r['seconds']:.1f} "
              f"prompts/minute ({r['new_tokens']} new tokens, {r['new_tokens'] / r['seconds']:.1f} tokens/s)")
    ratio = (b["prompts"] / b["seconds"]) / (t["prompts"] / t["seconds"])
    print(f"speed ratio burnish/transformers = {ratio:.2f}x")
    print(json.dumps({"rows": rows, "ratio": ratio}))


if __name__ == "__main__":
    main()
