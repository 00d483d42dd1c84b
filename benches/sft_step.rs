//! LoRA SFT step throughput, printed as JSON for scripts/bench/compare_torch.py.
//!
//! cargo bench --bench sft_step -- MODEL [--batch 4] [--seq 256] [--steps 3] [--rank 16]
//!     [--backend cpu|wgpu|cuda[:N]] [--dtype f32|bf16|f16] [--shape llama-3.2-1b|smollm2-135m]
//!     [--gradient-checkpointing]
//! One step = forward + backward + AdamW on LoRA (all linear layers), loss on every token. The base
//! is MODEL's weights, or with `--shape llama-3.2-1b` / `smollm2-135m` random weights in that model's
//! configuration (what the GPU comparison uses, on a machine without the model files; PyTorch builds the
//! same config). GPU backends need the cargo feature.

mod common;

use std::time::Instant;

use burnish::core::backend::{on_device, OnDevice};
use burnish::core::burn::tensor::backend::AutodiffBackend;
use burnish::core::model::{LoraConfig, TargetModules};
use burnish::core::{Llama, ModelConfig, Precision, Pretrained};
use burnish::data::Packed;
use burnish::trainers::engine::{train, EngineConfig};
use burnish::trainers::{Log, Sft, StopToken, TrainConfig};

/// Llama 3.2 1B's configuration (config.json of meta-llama/Llama-3.2-1B, without its RoPE scaling,
/// which changes no cost).
pub const LLAMA_3_2_1B: &str = r#"{"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "num_hidden_layers": 16,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "tie_word_embeddings": true}"#;

/// SmolLM2-135M's configuration (config.json of HuggingFaceTB/SmolLM2-135M-Instruct).
pub const SMOLLM2_135M: &str = r#"{"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_attention_heads": 9, "num_key_value_heads": 3, "num_hidden_layers": 30, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
    "tie_word_embeddings": true}"#;

struct Step {
    model: String,
    shape: Option<String>,
    dtype: Precision,
    batch: usize,
    seq: usize,
    steps: usize,
    rank: usize,
    /// `[train] gradient_checkpointing`: each decoder layer run again in the backward pass.
    checkpointing: bool,
}

fn main() -> anyhow::Result<()> {
    let args = common::Args::parse();
    let flag = |name: &str, default: usize| args.flag(name, default);
    let (spec, dtype) = args.device_and_dtype()?;
    let job = Step {
        model: args.model(),
        shape: args.text("--shape"),
        dtype,
        batch: flag("--batch", 4),
        seq: flag("--seq", 256),
        steps: flag("--steps", 3),
        rank: flag("--rank", 16),
        checkpointing: std::env::args().any(|a| a == "--gradient-checkpointing"),
    };
    let report = on_device(spec, job).map_err(anyhow::Error::msg)??;
    println!("{report}");
    Ok(())
}

impl Step {
    fn base<B: AutodiffBackend>(&self, device: &B::Device) -> anyhow::Result<Llama<B>> {
        match self.shape.as_deref() {
            None => Ok(Pretrained::<B>::load_as(&self.model, device, self.dtype)?.model),
            Some(shape) => {
                let json = match shape {
                    "llama-3.2-1b" => LLAMA_3_2_1B,
                    "smollm2-135m" => SMOLLM2_135M,
                    other => anyhow::bail!("--shape {other}: llama-3.2-1b or smollm2-135m"),
                };
                let cfg = ModelConfig::from_json(json, shape.as_ref())?;
                Ok(Llama::init(&cfg, 0.02, device).with_precision(self.dtype))
            }
        }
    }
}

impl OnDevice for Step {
    type Output = anyhow::Result<serde_json::Value>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let (batch, seq, steps, rank) = (self.batch, self.seq, self.steps, self.rank);
        let mut m = self.base::<B>(&device)?;
        let model = self.model.clone();
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
            config: Default::default(),
        };
        let out = std::env::temp_dir().join(format!("burnish-bench-{}", std::process::id()));
        let cfg = EngineConfig {
            train: TrainConfig {
                learning_rate: 1e-4,
                batch_size: batch,
                max_steps: Some(steps + 1),
                logging_steps: 1,
                save_steps: usize::MAX,
                gradient_checkpointing: self.checkpointing,
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
        Ok(serde_json::json!({
            "impl": "burnish", "batch": batch, "seq": seq, "rank": rank, "steps": secs.len(),
            "dtype": self.dtype.name(), "shape": self.shape.as_deref().unwrap_or("file"),
            "gradient_checkpointing": self.checkpointing,
            "cpu_matmul": burnish::core::backend::cpu_matmul_library(),
            "step_seconds": mean, "tokens_per_s": (batch * seq) as f64 / mean, "total_seconds": total,
        }))
    }
}
