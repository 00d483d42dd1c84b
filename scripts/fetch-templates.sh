#!/usr/bin/env bash
# Fetches the chat templates of Qwen3, Gemma 2 and Phi-3.5 (each model's own Jinja template, as its
# tokenizer_config.json on the Hub carries it) into models/templates/. llama.cpp keeps byte copies of them
# for its template tests; they come here from the llama-cpp-python 0.3.36 source package on PyPI, which
# vendors llama.cpp (pinned by hash), and each file is checked against its SHA-256. Used by
# crates/core/tests/templates.rs; never committed (each template is under its model's license).
# Idempotent: does nothing when every file is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/models/templates"
url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz"
sdist_sha="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
files=(
  "Qwen-Qwen3-0.6B.jinja 87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5"
  "google-gemma-2-2b-it.jinja ecd6ae513fe103f0eb62e8ab5bfa8d0fe45c1074fa398b089c93a7e70c15cfd6"
  "microsoft-Phi-3.5-mini-instruct.jinja 78d976a442bcde2f0be15aafbb8e3050e1104f86732266f68403251b89982a90"
)
missing=0
for f in "${files[@]}"; do [ -f "$dest/${f%% *}" ] || missing=1; done
if [ "$missing" = 0 ]; then
  echo "$dest: templates already present"
  exit 0
fi
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
curl -fsSL --retry 3 -o "$tmp/sdist.tar.gz" "$url"
echo "$sdist_sha  $tmp/sdist.tar.gz" | sha256sum -c - >/dev/null
for f in "${files[@]}"; do
  name="${f%% *}"
  sha="${f##* }"
  tar -xzf "$tmp/sdist.tar.gz" -C "$tmp" "llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/$name"
  echo "$sha  $tmp/llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/$name" | sha256sum -c - >/dev/null
  mv "$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/$name" "$dest/$name.part"
  mv "$dest/$name.part" "$dest/$name"
done
echo "$dest: ${#files[@]} templates"
