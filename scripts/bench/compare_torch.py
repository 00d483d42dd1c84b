#!/usr/bin/env python3
"""LoRA SFT step throughput and peak memory: burnish vs PyTorch + PEFT, side by side in one run.

    python scripts/bench/compare_torch.py [--model models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--threads 2] [--batch 4] [--seq 256] [--steps 3] [--rank 16]
        [--device cpu|cuda] [--dtype f32|bf16] [--shape llama-3.2-1b|smollm2-135m] [--gradient-checkpointing]
        [--repeat N]

Same model (the GGUF, dequantized by both; or with --shape random weights in Llama 3.2 1B's or
SmolLM2-135M's config),
same LoRA (all linear layers, r, alpha = 2r), same batch of deterministic token rows, loss on every
token, AdamW. --dtype bf16 loads the base in bf16 on both sides (PEFT keeps its adapters in f32, as
burnish does). Step 1 is warm-up; the mean of the remaining steps is reported. Each side runs in a
fresh process so ru_maxrss is its own peak memory; on --device cuda the peak GPU memory of each side
is nvidia-smi's largest reading while it ran (and PyTorch's own max_memory_allocated).
--gradient-checkpointing turns on activation recomputation per decoder layer on both sides
(transformers' gradient_checkpointing_enable, non-reentrant; burnish's [train] gradient_checkpointing).
The GPU comparison of issue 18: --device cuda --dtype bf16 at 16 x 512 (SmolLM2) and
--shape llama-3.2-1b at 8 x 1024; burnish needs a `--features cuda` build (BURNISH_BENCH_FEATURES=cuda).
"""
import argparse, json, os, statistics, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, bench_binary, run  # noqa: E402

TORCH_CHILD = r"""
import json, sys, time, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
path, threads, batch, seq, steps, rank = sys.argv[1], *map(int, sys.argv[2:7])
device, dtype, shape = sys.argv[7], {"f32": torch.float32, "bf16": torch.bfloat16}[sys.argv[8]], sys.argv[9]
checkpointing = sys.argv[10] == "1"
torch.set_num_threads(threads)
if shape == "llama-3.2-1b":
    from transformers import LlamaConfig
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=64, num_hidden_layers=16, vocab_size=128256, max_position_embeddings=131072,
                      rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
elif shape == "smollm2-135m":
    from transformers import LlamaConfig
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                      num_hidden_layers=30, vocab_size=49152, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
else:
    d, f = path.rsplit("/", 1)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype)
model = model.to(device)
model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"))
if checkpointing:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
model.train()
vocab = model.config.vocab_size
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
times = []
for s in range(steps + 1):
    rows = [[(r * 7919 + t * 104729) % vocab for t in range(seq)] for r in range(s * batch, (s + 1) * batch)]
    ids = torch.tensor(rows, device=device)
    if device == "cuda": torch.cuda.synchronize()
    t0 = time.time()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step(); opt.zero_grad()
    if device == "cuda": torch.cuda.synchronize()
    times.append(time.time() - t0)
mean = sum(times[1:]) / len(times[1:])
gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
print(json.dumps({"impl": "pytorch+peft", "batch": batch, "seq": seq, "rank": rank, "steps": steps,
                  "step_seconds": mean, "tokens_per_s": batch * seq / mean, "torch_max_allocated_mb": gpu}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--shape", choices=["file", "llama-3.2-1b", "smollm2-135m"], default="file")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run both sides this many times, alternating, and report every pair and the "
                         "median ratio (a shared machine's speed drifts between runs)")
    a = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    exe = bench_binary("sft_step")
    dims = [str(a.batch), str(a.seq), str(a.steps), str(a.rank)]
    gpu = a.device == "cuda"
    shape = ["--shape", a.shape] if a.shape != "file" else []
    shape += ["--gradient-checkpointing"] if a.gradient_checkpointing else []
    mem = "peak_gpu_mb" if gpu else "peak_rss_mb"
    pairs = []
    for _ in range(a.repeat):
        torch_r = run([sys.executable, "-c", TORCH_CHILD, a.model, str(a.threads)] + dims
                      + [a.device, a.dtype, a.shape, str(int(a.gradient_checkpointing))], env, gpu=gpu)
        ours = run([exe, a.model, "--batch", dims[0], "--seq", dims[1], "--steps", dims[2], "--rank", dims[3],
                    "--backend", a.device, "--dtype", a.dtype] + shape, env, gpu=gpu)
        for r in (torch_r, ours):
            print(f"{r['impl']:13s}: {r['tokens_per_s']:7.1f} tokens/s ({r['step_seconds']:.2f} s/step), "
                  f"{mem} {r[mem]:.0f} MB")
        print(f"ratio burnish/pytorch: throughput {ours['tokens_per_s'] / torch_r['tokens_per_s']:.2f}x, "
              f"memory {ours[mem] / torch_r[mem]:.2f}x", flush=True)
        pairs.append({"pytorch": torch_r, "burnish": ours})
    ratios = sorted(p["burnish"]["tokens_per_s"] / p["pytorch"]["tokens_per_s"] for p in pairs)
    if len(pairs) > 1:
        print(f"median throughput ratio of {len(pairs)} pairs: {statistics.median(ratios):.2f}x "
              f"(range {ratios[0]:.2f}-{ratios[-1]:.2f})")
    print(json.dumps({"threads": a.threads, "device": a.device, "dtype": a.dtype, "shape": a.shape,
                      "gradient_checkpointing": a.gradient_checkpointing, **pairs[-1],
                      "pairs": pairs, "median_ratio": statistics.median(ratios)}))


if __name__ == "__main__":
    main()
