#!/usr/bin/env bash
# The test command (README.md): fetch SmolLM2 for the end-to-end tests, then run every test in release
# mode (model tests are too slow unoptimised).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-smollm2.sh
cargo test --release --workspace
# The GPU code path on wgpu (tests/backends.rs: PEFT gradient parity, a seeded SFT run, eval/export
# and SmolLM2 against the CPU backend). Without a Vulkan driver these skip with a message, except
# in CI (CI=true), where they fail; lavapipe (apt-get install mesa-vulkan-drivers) runs them on a CPU.
cargo test --release --features wgpu --test backends
