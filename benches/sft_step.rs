//! LoRA SFT step throughput on a real model, printed as JSON for scripts/bench/compare_torch.py.
//!
//! cargo bench --bench sft_step -- MODEL [--batch 4] [--seq 256] [--steps 3] [--rank 16]
//! One step = forward + backward + AdamW on LoRA (all linear layers), loss on every token, fp32.

mod common;

use std::time::Instant;

use burnish::core::backend::{Autodiff, Cpu};
use burnish::core::model::{LoraConfig, TargetModules};
use burnish::core::Pretrained;
use burnish::data::Packed;
use burnish::trainers::engine::{train, EngineConfig};
use burnish::trainers::{Log, Sft, StopToken, TrainConfig};

fn main() -> anyhow::Result<()> {
    let args = common::Args::parse();
    let model = args.model();
    let flag = |name: &str, default: usize| args.flag(name, default);
    let (batch, seq, steps, rank) = (
        flag("--batch", 4),
        flag("--seq", 256),
        flag("--steps", 3),
        flag("--rank", 16),
    );
    type B = Autodiff<Cpu>;
    let device = Default::default();
    let p = Pretrained::<B>::load(&model, &device)?;
    let mut m = p.model;
    let lora = LoraConfig {
        r: rank,
        lora_alpha: 2.0 * rank as f64,
        target_modules: TargetModules::Preset("all-linear".into()),
        ..Default::default()
    };
    m.attach_lora(&lora, 0, &device)?;
    // Deterministic pseudo-random token rows (same generator as the PyTorch side).
    let vocab = m.vocab_size() as u64;
    let rows: Vec<Packed> = (0..batch * (steps + 1))
        .map(|r| {
            let ids: Vec<u32> = (0..seq as u64)
                .map(|t| ((r as u64 * 7919 + t * 104_729) % vocab) as u32)
                .collect();
            Packed {
                labels: ids.iter().map(|&i| i as i64).collect(),
                position_ids: (0..seq as i64).collect(),
                segment_ids: vec![1; seq],
                input_ids: ids,
            }
        })
        .collect();
    let mut sft = Sft {
        train: rows,
        eval: vec![],
        pad_id: 0,
        eval_batch_size: batch,
    };
    let out = std::env::temp_dir().join(format!("burnish-bench-{}", std::process::id()));
    let cfg = EngineConfig {
        train: TrainConfig {
            learning_rate: 1e-4,
            batch_size: batch,
            max_steps: Some(steps + 1),
            logging_steps: 1,
            save_steps: usize::MAX,
            ..Default::default()
        },
        lora: lora.clone(),
        out_dir: out.clone(),
        base_model: model.clone(),
        eval_steps: 0,
        resume: None,
        stop: StopToken::new(),
        resume_keys: Default::default(),
    };
    let t0 = Instant::now();
    let (_, summary) = train(&mut sft, m, &cfg, &Log)?;
    let total = t0.elapsed().as_secs_f64();
    // Step 1 is warm-up; the rest are timed.
    let secs: Vec<f64> = summary
        .history
        .iter()
        .skip(1)
        .map(|r| r.step_seconds)
        .collect();
    let mean = secs.iter().sum::<f64>() / secs.len().max(1) as f64;
    let _ = std::fs::remove_dir_all(&out);
    println!(
        "{}",
        serde_json::json!({
            "impl": "burnish", "batch": batch, "seq": seq, "rank": rank, "steps": secs.len(),
            "step_seconds": mean, "tokens_per_s": (batch * seq) as f64 / mean, "total_seconds": total,
        })
    );
    Ok(())
}
