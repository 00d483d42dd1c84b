#!/usr/bin/env python3
"""Generation speed and peak memory: burnish vs transformers, side by side in one run.

    python scripts/bench/compare_generate.py [--model models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--threads 2] [--new-tokens 64] [--batch 12] [--repeats 3] [--device cpu|cuda] [--dtype f32|bf16]

Both load the same GGUF (transformers dequantizes it to float32, as burnish does), generate greedily
with EOS ignored (so both make exactly the same number of tokens) from the same chat prompts, once
single-stream and once as a left-padded batch. Each measurement runs in a fresh subprocess so the
peak resident memory (ru_maxrss) covers load + generate of that process alone. Needs torch and
transformers (pip install torch transformers gguf) and a release build of the bench binary, which the
script makes with `cargo bench --no-run` (BURNISH_BENCH_FEATURES=cuda for --device cuda). A batch
larger than the 13 prompts of prompts.json repeats them in order on both sides (issue 18's GPU
comparison: --device cuda --dtype bf16 --batch 64); on cuda the peak GPU memory is nvidia-smi's.
"""
import argparse, json, os, statistics, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, bench_binary, run  # noqa: E402

TORCH_CHILD = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, threads, new_tokens, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
all_prompts = json.loads(sys.argv[5])
prompts = [all_prompts[i % len(all_prompts)] for i in range(batch)]
device, dtype = sys.argv[6], {"f32": torch.float32, "bf16": torch.bfloat16}[sys.argv[7]]
torch.set_num_threads(threads)
t0 = time.time()
d, f = path.rsplit("/", 1)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype).to(device).eval()
load_s = time.time() - t0
tok.padding_side = "left"
texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False) for p in prompts]
enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(device)
kw = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)
with torch.inference_mode():
    model.generate(input_ids=enc.input_ids[:1], attention_mask=enc.attention_mask[:1], max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    t1 = time.time()
    out = model.generate(**enc, **kw)
    if device == "cuda": torch.cuda.synchronize()
    gen_s = time.time() - t1
n = (out.shape[1] - enc.input_ids.shape[1]) * out.shape[0]
print(json.dumps({"impl": "transformers", "batch": batch, "new_tokens": new_tokens, "generated": n,
                  "load_s": load_s, "generate_s": gen_s, "tokens_per_s": n / gen_s}))
"""

PROMPTS = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts.json")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()
    gpu = a.device == "cuda"
    mem = "peak_gpu_mb" if gpu else "peak_rss_mb"
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    exe = bench_binary("generate")
    rows = []
    for batch in (1, a.batch):
        for impl in ("transformers", "burnish"):
            results = []
            for _ in range(a.repeats):
                if impl == "burnish":
                    cmd = [exe, a.model, "--new-tokens", str(a.new_tokens), "--batch", str(batch),
                           "--backend", a.device, "--dtype", a.dtype]
                else:
                    cmd = [sys.executable, "-c", TORCH_CHILD, a.model, str(a.threads), str(a.new_tokens), str(batch),
                           json.dumps(PROMPTS), a.device, a.dtype]
                results.append(run(cmd, env, gpu=gpu))
            tps = statistics.median(r["tokens_per_s"] for r in results)
            peak = max(r[mem] for r in results)
            rows.append({"impl": impl, "batch": batch, "tokens_per_s": tps, mem: peak, "runs": results})
            print(f"{impl:13s} batch {batch:2d}: {tps:7.2f} new tokens/s, {mem} {peak:7.0f} MB", flush=True)
    print()
    for batch in (1, a.batch):
        t = next(r for r in rows if r["impl"] == "transformers" and r["batch"] == batch)
        b = next(r for r in rows if r["impl"] == "burnish" and r["batch"] == batch)
        print(f"batch {batch:2d}: speed ratio burnish/transformers = {b['tokens_per_s'] / t['tokens_per_s']:.2f}x, "
              f"memory ratio = {b[mem] / t[mem]:.2f}x")
    print(json.dumps({"threads": a.threads, "device": a.device, "dtype": a.dtype, "new_tokens": a.new_tokens, "rows": [{k: v for k, v in r.items() if k != "runs"} for r in rows]}))


if __name__ == "__main__":
    main()
