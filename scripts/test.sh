#!/usr/bin/env bash
# The test command (README.md): fetch SmolLM2 for the end-to-end tests, then run every test in release
# mode (model tests are too slow unoptimised).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-smollm2.sh
cargo test --release --workspace
