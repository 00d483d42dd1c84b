//! Generation throughput on a real model, printed as JSON for scripts/bench/compare_generate.py.
//!
//! cargo bench --bench generate -- MODEL [--new-tokens N] [--batch B] [--backend cpu|wgpu|cuda[:N]]
//!     [--dtype f32|bf16|f16]
//! Single stream: one chat prompt, greedy, EOS ignored so every run makes exactly N tokens.
//! Batched: B chat prompts (scripts/bench/prompts.json, repeated in order past its end), left-padded,
//! N tokens each. GPU backends need the cargo feature.

mod common;

use std::time::Instant;

use burnish::core::backend::{on_device, OnDevice};
use burnish::core::burn::tensor::backend::AutodiffBackend;
use burnish::core::{generate, GenerationConfig, Message, Precision, Pretrained};

struct Generate {
    model: String,
    dtype: Precision,
    new_tokens: usize,
    prompts: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = common::Args::parse();
    let (spec, dtype) = args.device_and_dtype()?;
    // The same prompts as the PyTorch side (scripts/bench/prompts.json).
    let prompts_file = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench/prompts.json");
    let all: Vec<String> = serde_json::from_str(&std::fs::read_to_string(prompts_file)?)?;
    let batch = args.flag("--batch", 1).max(1);
    let job = Generate {
        model: args.model(),
        dtype,
        new_tokens: args.flag("--new-tokens", 64),
        prompts: all.iter().cycle().take(batch).cloned().collect(),
    };
    let report = on_device(spec, job).map_err(anyhow::Error::msg)??;
    println!("{report}");
    Ok(())
}

impl OnDevice for Generate {
    type Output = anyhow::Result<serde_json::Value>;

    fn run<A: AutodiffBackend>(self, device: A::Device) -> Self::Output {
        type B<A> = <A as AutodiffBackend>::InnerBackend;
        let (batch, new_tokens) = (self.prompts.len(), self.new_tokens);
        let t0 = Instant::now();
        let p = Pretrained::<B<A>>::load_as(&self.model, &device, self.dtype)?;
        let load_s = t0.elapsed().as_secs_f64();
        let prompts: Vec<Vec<u32>> = self
            .prompts
            .iter()
            .map(|q| {
                let text = p.render_chat(&[Message::user(q.clone())], true)?;
                Ok(p.tokenizer.encode(&text, false)?)
            })
            .collect::<anyhow::Result<_>>()?;
        let cfg = GenerationConfig {
            max_new_tokens: new_tokens,
            eos_ids: vec![], // fixed length, like min_new_tokens = max_new_tokens in transformers
            pad_id: p.pad_id(),
            ..Default::default()
        };
        // Warm-up (allocator, thread pool, GPU kernels), then the timed run.
        let warm = GenerationConfig {
            max_new_tokens: 4,
            ..cfg.clone()
        };
        generate(&p.model, &prompts, &warm, None)?;
        let t1 = Instant::now();
        let out = generate(&p.model, &prompts, &cfg, None)?;
        let gen_s = t1.elapsed().as_secs_f64();
        let tokens: usize = out.iter().map(|g| g.new_ids.len()).sum();
        Ok(serde_json::json!({
            "impl": "burnish", "batch": batch, "new_tokens": new_tokens, "generated": tokens,
            "dtype": self.dtype.name(), "load_s": load_s, "generate_s": gen_s,
            "tokens_per_s": tokens as f64 / gen_s,
        }))
    }
}
