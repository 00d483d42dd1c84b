#!/usr/bin/env python3
"""Refusal rates of a model on held-out harmful and harmless prompts, with burnish's own generation and
refusal detector (`burnish data build` with answer = "model"). Until `burnish eval` lands this is how the
example configs' before/after numbers are measured.

    python3 scripts/refusal_rates.py MODEL [--harmless N] [--max-new-tokens 64] [--out DIR]

MODEL is a HF directory or GGUF file. Prompts: ../shared/data/refusal_direction/splits/harmful_val.json
(39) and the first N of harmless_val.json (see ../shared/data/README.md). Prints one JSON line with
refusal rates and writes the generated answers to DIR/{harmful,harmless}.jsonl.
"""
import argparse, json, os, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = os.path.join(ROOT, "..", "shared", "data", "refusal_direction", "splits")


def rate(model, name, limit, max_new, out_dir, exe):
    path = os.path.abspath(os.path.join(SPLITS, f"{name}_val.json"))
    cfg = f"""[model]
path = "{os.path.abspath(model)}"
[data]
shuffle = false
[[data.sources]]
path = "{path}"
harmful = {"true" if name == "harmful" else "false"}
answer = "model"
{f"limit = {limit}" if limit else ""}
[data.generate]
max_new_tokens = {max_new}
batch_size = 16
"""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(cfg)
    out = os.path.join(out_dir, f"{name}.jsonl")
    subprocess.run([exe, "data", "build", f.name, "--out", out], check=True, stdout=subprocess.DEVNULL)
    os.unlink(f.name)
    rows = [json.loads(l) for l in open(out)]
    refused = sum(1 for r in rows if r.get("refused"))
    return {"n": len(rows), "refused": refused, "refusal_rate": refused / max(len(rows), 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--harmless", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    exe = os.path.join(ROOT, "target", "release", "burnish")
    if not os.path.exists(exe):
        sys.exit("build first: cargo build --release")
    out_dir = a.out or tempfile.mkdtemp(prefix="refusal-rates-")
    os.makedirs(out_dir, exist_ok=True)
    res = {"model": a.model,
           "harmful_val": rate(a.model, "harmful", None, a.max_new_tokens, out_dir, exe),
           "harmless_val": rate(a.model, "harmless", a.harmless, a.max_new_tokens, out_dir, exe),
           "answers": out_dir}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
