//! Safety SFT from code, no run file: the run of examples/configs/safety-sft.toml built as a
//! `RunConfig` and run through the library. Harmful prompts get refusal templates, harmless ones the
//! model's own answers. Data: ../shared/data/refusal_direction (see its README).
//!
//!     scripts/fetch-smollm2.sh && cargo run --release --example sft

use burnish::core::model::{LoraConfig, TargetModules};
use burnish::data::config::Answer;
use burnish::data::{DataConfig, SourceConfig};
use burnish::trainers::optim::Schedule;
use burnish::trainers::{run, MethodConfig, ModelSection, OutputConfig, RunConfig, RunReport};
use burnish::trainers::{EvalConfig, RunOptions, TrainConfig};

fn source(file: &str, harmful: bool, answer: Answer) -> SourceConfig {
    let path = format!("../shared/data/refusal_direction/splits/{file}");
    SourceConfig {
        harmful: Some(harmful),
        answer: Some(answer),
        limit: Some(160),
        ..SourceConfig::new(path)
    }
}

fn main() -> anyhow::Result<()> {
    let config = RunConfig {
        model: ModelSection::new("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        lora: LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            target_modules: TargetModules::Preset("all-linear".into()),
            ..Default::default()
        },
        data: DataConfig {
            max_length: 256,
            ..DataConfig::new(vec![
                source("harmful_train.json", true, Answer::RefusalTemplate),
                source("harmless_train.json", false, Answer::Model),
            ])
        },
        method: MethodConfig::Sft(Default::default()),
        train: TrainConfig {
            learning_rate: 5e-4,
            schedule: Schedule::Cosine,
            warmup_steps: 4,
            batch_size: 8,
            seed: 0,
            ..Default::default()
        },
        eval: EvalConfig::default(),
        output: Some(OutputConfig::new("runs/example-sft")),
    };
    // Progress goes to `tracing` (RUST_LOG=info shows it); the adapter is a PEFT directory.
    let RunReport::Trained(r) = run(&config, &RunOptions::default())? else {
        unreachable!("an SFT config trains")
    };
    let last = r.summary.last.expect("at least one step");
    println!("loss {:.3} after {} steps", last.loss, r.summary.steps);
    println!("adapter: {}", r.out_dir.join("adapter").display());
    Ok(())
}
