#!/usr/bin/env python3
"""The CPU backend's matrix products on a LoRA training step's shapes, `gemm` vs OpenBLAS vs PyTorch.

    python scripts/bench/compare_matmul.py [--threads 2] [--seconds 1] [--repeat 3]

Runs benches/matmul.rs with BURNISH_BLAS=off (the pure-Rust `gemm` crate) and with OpenBLAS (loaded at
run time when installed: `apt-get install libopenblas0-pthread`), and PyTorch's matmul on the same
shapes and layouts, alternating, `--repeat` times; prints GFLOP/s per shape (median of the repeats)
and one JSON line. The numbers behind burn-flex patch 5's thresholds (docs/benchmarks.md).
"""
import argparse, json, os, statistics, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench_binary  # noqa: E402

TORCH_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1])); seconds = float(sys.argv[2]); shapes = json.loads(sys.argv[3])
out = []
for s in shapes:
    m, k, n, ta, tb = s["m"], s["k"], s["n"], s["lhs_transposed"], s["rhs_transposed"]
    a = torch.randn(k, m).t() if ta else torch.randn(m, k)
    b = torch.randn(n, k).t() if tb else torch.randn(k, n)
    a @ b
    t0, count = time.perf_counter(), 0
    while count == 0 or time.perf_counter() - t0 < seconds:
        a @ b; count += 1
    out.append({"name": s["name"], "gflops": 2 * m * k * n * count / (time.perf_counter() - t0) / 1e9})
print(json.dumps({"impl": "pytorch", "products": out}))
"""

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    exe = bench_binary("matmul")
    runs = {"gemm": [], "openblas": [], "pytorch": []}
    for _ in range(a.repeat):
        for key, extra in (("gemm", {"BURNISH_BLAS": "off"}), ("openblas", {})):
            out = subprocess.run([exe, "--seconds", str(a.seconds)], env=dict(env, **extra),
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            if key == "openblas" and r["library"] == "gemm":
                sys.exit("OpenBLAS is not installed (apt-get install libopenblas0-pthread)")
            runs[key].append(r["products"])
        shapes = json.dumps(runs["gemm"][-1])
        out = subprocess.run([sys.executable, "-c", TORCH_CHILD, str(a.threads), str(a.seconds), shapes],
                             env=env, capture_output=True, text=True, check=True).stdout
        runs["pytorch"].append(json.loads(out.strip().splitlines()[-1])["products"])
    table = []
    print(f"{'product':32s} {'m x k x n':>16s} {'gemm':>6s} {'OpenBLAS':>9s} {'PyTorch':>8s}  GFLOP/s, median of {a.repeat}")
    for i, p in enumerate(runs["gemm"][0]):
        med = {key: statistics.median(r[i]["gflops"] for r in rs) for key, rs in runs.items()}
        dims = f"{p['m']}x{p['k']}x{p['n']}"
        print(f"{p['name']:32s} {dims:>16s} {med['gemm']:6.0f} {med['openblas']:9.0f} {med['pytorch']:8.0f}")
        table.append({"name": p["name"], "m": p["m"], "k": p["k"], "n": p["n"], **med})
    print(json.dumps({"threads": a.threads, "repeat": a.repeat, "products": table}))


if __name__ == "__main__":
    main()
