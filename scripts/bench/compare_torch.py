#!/usr/bin/env python3
"""LoRA SFT step throughput and peak memory: burnish vs PyTorch + PEFT, side by side in one run.

    python scripts/bench/compare_torch.py [--model models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--threads 2] [--batch 4] [--seq 256] [--steps 3] [--rank 16]

Same model (the GGUF, dequantized to float32 by both), same LoRA (all linear layers, r, alpha = 2r),
same batch of deterministic token rows, loss on every token, AdamW. Step 1 is warm-up; the mean of the
remaining steps is reported. Each side runs in a fresh process so ru_maxrss is its own peak memory.
"""
import argparse, json, os, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, bench_binary, run  # noqa: E402

TORCH_CHILD = r"""
import json, sys, time, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
path, threads, batch, seq, steps, rank = sys.argv[1], *map(int, sys.argv[2:7])
torch.set_num_threads(threads)
d, f = path.rsplit("/", 1)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"))
model.train()
vocab = model.config.vocab_size
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
times = []
for s in range(steps + 1):
    rows = [[(r * 7919 + t * 104729) % vocab for t in range(seq)] for r in range(s * batch, (s + 1) * batch)]
    ids = torch.tensor(rows)
    t0 = time.time()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step(); opt.zero_grad()
    times.append(time.time() - t0)
mean = sum(times[1:]) / len(times[1:])
print(json.dumps({"impl": "pytorch+peft", "batch": batch, "seq": seq, "rank": rank, "steps": steps,
                  "step_seconds": mean, "tokens_per_s": batch * seq / mean}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    a = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    exe = bench_binary("sft_step")
    dims = [str(a.batch), str(a.seq), str(a.steps), str(a.rank)]
    torch_r = run([sys.executable, "-c", TORCH_CHILD, a.model, str(a.threads)] + dims, env)
    ours = run([exe, a.model, "--batch", dims[0], "--seq", dims[1], "--steps", dims[2], "--rank", dims[3]], env)
    for r in (torch_r, ours):
        print(f"{r['impl']:13s}: {r['tokens_per_s']:7.1f} tokens/s ({r['step_seconds']:.2f} s/step), peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"ratio burnish/pytorch: throughput {ours['tokens_per_s'] / torch_r['tokens_per_s']:.2f}x, "
          f"memory {ours['peak_rss_mb'] / torch_r['peak_rss_mb']:.2f}x")
    print(json.dumps({"threads": a.threads, "pytorch": torch_r, "burnish": ours}))


if __name__ == "__main__":
    main()
