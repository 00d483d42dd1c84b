//! Generation throughput on a real model, printed as JSON for scripts/bench/compare_generate.py.
//!
//! cargo bench --bench generate -- MODEL [--new-tokens N] [--batch B]
//! Single stream: one chat prompt, greedy, EOS ignored so every run makes exactly N tokens.
//! Batched: B different chat prompts, left-padded, N tokens each.

mod common;

use std::time::Instant;

use burnish::core::backend::Cpu;
use burnish::core::{generate, GenerationConfig, Message, Pretrained};

fn main() -> anyhow::Result<()> {
    let args = common::Args::parse();
    let model = args.model();
    let flag = |name: &str, default: usize| args.flag(name, default);
    let new_tokens = flag("--new-tokens", 64);
    // The same prompts as the PyTorch side (scripts/bench/prompts.json).
    let prompts_file = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench/prompts.json");
    let all: Vec<String> = serde_json::from_str(&std::fs::read_to_string(prompts_file)?)?;
    let batch = flag("--batch", 1).clamp(1, all.len());

    let t0 = Instant::now();
    let p = Pretrained::<Cpu>::load(&model, &Default::default())?;
    let load_s = t0.elapsed().as_secs_f64();
    let prompts: Vec<Vec<u32>> = all[..batch]
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
    // Warm-up (allocator, thread pool), then the timed run.
    generate(
        &p.model,
        &prompts[..1],
        &GenerationConfig {
            max_new_tokens: 4,
            ..cfg.clone()
        },
        None,
    )?;
    let t1 = Instant::now();
    let out = generate(&p.model, &prompts, &cfg, None)?;
    let gen_s = t1.elapsed().as_secs_f64();
    let tokens: usize = out.iter().map(|g| g.new_ids.len()).sum();
    println!(
        "{}",
        serde_json::json!({
            "impl": "burnish", "batch": batch, "new_tokens": new_tokens, "generated": tokens,
            "load_s": load_s, "generate_s": gen_s, "tokens_per_s": tokens as f64 / gen_s,
        })
    );
    Ok(())
}
