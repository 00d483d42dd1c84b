#!/usr/bin/env bash
# The test command (README.md): fetch SmolLM2 for the end-to-end tests, then run every test in the test-ci
# profile (Cargo.toml: dependencies fully optimised, the workspace at opt-level 1 so the ~35 test binaries
# share its generic code; a release build of them took 35 min on 2 cores, this one 14 min from scratch).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-smollm2.sh
# Gemma 3 270M (Gemma Terms of Use: fetched here, never committed) for crates/core/tests/gemma3.rs.
scripts/fetch-gemma3.sh
# The families' own chat templates (Qwen3, Gemma 2, Gemma 3, Phi-3.5) for crates/core/tests/templates.rs.
scripts/fetch-templates.sh
# With the wgpu backend compiled in (one build for everything), so tests/backends.rs also runs
# the GPU code path against the CPU backend and PEFT: gradient parity, a seeded SFT run, eval and
# merge, SmolLM2's greedy tokens. Without a Vulkan driver those skip with a message, except in CI
# (CI=true), where they fail; lavapipe (apt-get install mesa-vulkan-drivers) runs them on a CPU.
cargo test --profile test-ci --workspace --features wgpu
