#!/usr/bin/env bash
# bf16 vs f32 on the CPU (issue "GPUs for real, part 2": a bf16 SFT of SmolLM2 for 20 steps tracks the
# f32 losses). The same seeded LoRA SFT (r16 all-linear, AdamW, 20 steps of 4 refusal examples of
# 256 tokens at most) runs with `[model] dtype = "f32"` and `"bf16"`; prints each step's loss and
# grad norm for both, their relative differences, and each run's time and peak memory.
#   scripts/bench/bf16_tracking.sh [BURNISH_BINARY]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$root/target/release/burnish}"
model="$root/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
data="$(cd "$root/.." && pwd)/shared/data/refusal_direction/splits/harmful_train.json"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/run.toml" <<TOML
[model]
path = "$model"

[lora]
r = 16
lora_alpha = 32
target_modules = "all-linear"

[data]
max_length = 256
seed = 0

[[data.sources]]
path = "$data"
harmful = true
answer = "refusal_template"
limit = 80

[train]
learning_rate = 5e-4
batch_size = 4
max_steps = 20
seed = 0

[output]
dir = "$tmp/out"
save = ["adapter"]
TOML
for dtype in f32 bf16; do
  /usr/bin/time -f "$dtype: %e s wall, peak RSS %M KB" \
    "$bin" train "$tmp/run.toml" --set "model.dtype=\"$dtype\"" --set "output.dir=\"$tmp/$dtype\"" \
    >"$tmp/$dtype.log" 2>"$tmp/$dtype.err" || { cat "$tmp/$dtype.err"; exit 1; }
  tail -1 "$tmp/$dtype.err"
done
python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
def rows(d):
    return [json.loads(l) for l in open(f"{tmp}/{d}/metrics.jsonl") if '"loss"' in l]
a, b = rows("f32"), rows("bf16")
print("step  loss f32   loss bf16  rel      grad f32  grad bf16  rel")
worst = [0.0, 0.0]
for x, y in zip(a, b):
    rl = abs(y["loss"] - x["loss"]) / abs(x["loss"])
    rg = abs(y["grad_norm"] - x["grad_norm"]) / abs(x["grad_norm"])
    worst = [max(worst[0], rl), max(worst[1], rg)]
    print(f"{x['step']:>4}  {x['loss']:.5f}  {y['loss']:.5f}  {rl:.1e}  {x['grad_norm']:.4f}  {y['grad_norm']:.4f}  {rg:.1e}")
print(f"largest relative difference: loss {worst[0]:.2e}, grad norm {worst[1]:.2e}")
PY
