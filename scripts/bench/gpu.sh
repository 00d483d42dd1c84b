#!/usr/bin/env bash
# Issue 18's GPU check, burnish vs PyTorch + PEFT on one NVIDIA card, as one prepared script (the device
# machine has PyTorch, transformers and peft but no Rust toolchain and no model files).
#
# Here (with a Rust toolchain):
#   cargo test --profile test-ci --features cuda --test backends --no-run     # note the executable
#   cargo bench --profile test-ci --features cuda --bench sft_step --no-run   # likewise
#   mkdir -p gpu-bench && cp <backends exe> gpu-bench/backends && cp <sft_step exe> gpu-bench/sft_step
# There:
#   BURNISH_BENCH_DIR=gpu-bench scripts/bench/gpu.sh OUT_DIR
# 1. The CUDA parity tests (tests/backends.rs, module `cuda`: LoRA gradients vs the PEFT fixture, seeded
#    SFT and two data-parallel workers vs the CPU, eval and merge vs the CPU) → OUT_DIR/cuda-tests.txt.
#    The test binary reads its fixtures under the path it was built in (CARGO_MANIFEST_DIR): link that
#    path to this checkout first.
# 2. LoRA SFT step throughput, bf16, random weights in SmolLM2-135M's and Llama 3.2 1B's shapes (no model
#    file needed) → one JSON line per comparison in OUT_DIR/gpu-bench.jsonl, readable lines in
#    OUT_DIR/gpu-bench.txt. Each piece has its own time limit (GPU_STEP_TIMEOUT seconds, default 150), so
#    one slow piece does not take the rest with it.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:?usage: BURNISH_BENCH_DIR=DIR scripts/bench/gpu.sh OUT_DIR}"
mkdir -p "$out"
: "${BURNISH_BENCH_DIR:?set BURNISH_BENCH_DIR to the folder holding the backends and sft_step binaries}"
limit="${GPU_STEP_TIMEOUT:-150}"
nvidia-smi > "$out/nvidia-smi.txt"
py="${PYTHON:-python3}"
if [ -x "$BURNISH_BENCH_DIR/backends" ]; then
  echo "== cuda parity tests" | tee -a "$out/gpu-bench.txt"
  start=$(date +%s)
  (cd "$root" && timeout 300 "$BURNISH_BENCH_DIR/backends" cuda:: --test-threads 1 --nocapture) \
    > "$out/cuda-tests.txt" 2>&1
  echo "exit $? in $(( $(date +%s) - start )) s" | tee -a "$out/gpu-bench.txt" "$out/cuda-tests.txt"
fi
bench() {
  echo "== $*" | tee -a "$out/gpu-bench.txt"
  timeout "$limit" "$py" "$root/scripts/bench/$1" "${@:2}" 2>&1 | tee -a "$out/gpu-bench.txt" \
    | tail -1 >> "$out/gpu-bench.jsonl"
}
# LoRA r16 all-linear, AdamW: the SmolLM2 shape at 16 x 512, the Llama 3.2 1B shape at 8 x 1024.
bench compare_torch.py --device cuda --dtype bf16 --shape smollm2-135m --batch 16 --seq 512 --steps 5
bench compare_torch.py --device cuda --dtype bf16 --shape llama-3.2-1b --batch 8 --seq 1024 --steps 5
bench compare_torch.py --device cuda --dtype bf16 --shape llama-3.2-1b --batch 8 --seq 1024 --steps 5 --gradient-checkpointing
