//! The CPU backend's matrix products on a LoRA training step's shapes (SmolLM2, 1,024 tokens), in
//! GFLOP/s, printed as JSON for scripts/bench/compare_matmul.py. Each product goes through Burn's
//! `matmul` with the operand layouts training gives it (a weight used transposed, a block's
//! probabilities transposed), so it takes the same path as in a step: OpenBLAS when the backend
//! loaded it (vendor/burn-flex patch 5), `gemm` otherwise or with `BURNISH_BLAS=off`.
//!
//! cargo bench --bench matmul [-- --seconds S]

use std::time::Instant;

use burnish::core::backend::{cpu_matmul_library, Cpu, CpuDevice};
use burnish::core::burn::tensor::{Distribution, Tensor};

/// (name, m, k, n, left operand transposed, right operand transposed).
const SHAPES: [(&str, usize, usize, usize, bool, bool); 9] = [
    ("q/o projection x·Wᵀ", 1024, 576, 576, false, true),
    ("gate/up projection x·Wᵀ", 1024, 576, 1536, false, true),
    ("down projection x·Wᵀ", 1024, 1536, 576, false, true),
    ("projection input grad dY·W", 1024, 1536, 576, false, false),
    ("LM head block h·Eᵀ", 1024, 576, 8192, false, true),
    ("LoRA A x·Aᵀ", 1024, 576, 16, false, true),
    ("attention scores Q·Kᵀ", 384, 64, 1024, false, true),
    ("attention P·V", 384, 1024, 64, false, false),
    ("attention Pᵀ·dO", 1024, 384, 64, true, false),
];

fn operand(rows: usize, cols: usize, transposed: bool, d: &CpuDevice) -> Tensor<Cpu, 2> {
    let shape = if transposed {
        [cols, rows]
    } else {
        [rows, cols]
    };
    let t = Tensor::<Cpu, 2>::random(shape, Distribution::Normal(0.0, 1.0), d);
    if transposed {
        t.transpose()
    } else {
        t
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(1.0);
    let d = CpuDevice::default();
    let mut rows = Vec::new();
    for (name, m, k, n, ta, tb) in SHAPES {
        let (a, b) = (operand(m, k, ta, &d), operand(k, n, tb, &d));
        let run = || a.clone().matmul(b.clone()).into_data();
        run();
        let (start, mut count) = (Instant::now(), 0u32);
        while count == 0 || start.elapsed().as_secs_f64() < seconds {
            run();
            count += 1;
        }
        let per = start.elapsed().as_secs_f64() / count as f64;
        let gflops = 2.0 * (m * k * n) as f64 / per / 1e9;
        rows.push(serde_json::json!({
            "name": name, "m": m, "k": k, "n": n, "lhs_transposed": ta, "rhs_transposed": tb,
            "gflops": gflops,
        }));
    }
    let out =
        serde_json::json!({"impl": "burnish", "library": cpu_matmul_library(), "products": rows});
    println!("{out}");
}
