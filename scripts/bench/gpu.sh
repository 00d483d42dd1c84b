#!/usr/bin/env bash
# Issue 18's GPU comparison, burnish vs PyTorch + PEFT / transformers on one NVIDIA card, bf16, as one
# prepared script (the device machine has PyTorch, transformers and peft but no Rust toolchain).
#
# Here (with a Rust toolchain):
#   cargo bench --features cuda --bench sft_step --bench generate --no-run   # note the two executables
#   mkdir -p gpu-bench && cp <sft_step exe> gpu-bench/sft_step && cp <generate exe> gpu-bench/generate
# There:
#   BURNISH_BENCH_DIR=gpu-bench scripts/bench/gpu.sh OUT_DIR
# Writes one JSON line per comparison to OUT_DIR/gpu-bench.jsonl and the human-readable lines to
# OUT_DIR/gpu-bench.txt, plus nvidia-smi's description of the card.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:?usage: BURNISH_BENCH_DIR=DIR scripts/bench/gpu.sh OUT_DIR}"
mkdir -p "$out"
: "${BURNISH_BENCH_DIR:?set BURNISH_BENCH_DIR to the folder holding the sft_step and generate binaries}"
nvidia-smi > "$out/nvidia-smi.txt"
py="${PYTHON:-python3}"
bench() {
  echo "== $*" | tee -a "$out/gpu-bench.txt"
  "$py" "$root/scripts/bench/$1" "${@:2}" | tee -a "$out/gpu-bench.txt" | tail -1 >> "$out/gpu-bench.jsonl"
}
# LoRA r16 all-linear, AdamW: SmolLM2 at 16 x 512, the Llama 3.2 1B shape (random weights) at 8 x 1024.
bench compare_torch.py --device cuda --dtype bf16 --batch 16 --seq 512 --steps 5
bench compare_torch.py --device cuda --dtype bf16 --shape llama-3.2-1b --batch 8 --seq 1024 --steps 5
bench compare_torch.py --device cuda --dtype bf16 --shape llama-3.2-1b --batch 8 --seq 1024 --steps 5 --gradient-checkpointing
# Generation, batch 64 (and single stream), 64 new tokens.
bench compare_generate.py --device cuda --dtype bf16 --batch 64 --repeats 2
