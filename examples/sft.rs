//! Safety SFT through the library API: the run of examples/configs/safety-sft.toml (its `[data]` and
//! `[model]`), written out step by step. Data: ../shared/data/refusal_direction (see its README).
//!
//!     scripts/fetch-smollm2.sh && cargo run --release --example sft

use burnish::core::adapter::save_adapter;
use burnish::core::backend::{Autodiff, Cpu};
use burnish::core::model::{LoraConfig, TargetModules};
use burnish::core::{Pretrained, TokenizerBundle};
use burnish::data::{
    build, load_run_file, ChatEncoder, EncodeOptions, Examples, ModelResponder, Packed,
};
use burnish::trainers::config::TrainConfig;
use burnish::trainers::engine::{train, EngineConfig};
use burnish::trainers::sft::Sft;

fn main() -> anyhow::Result<()> {
    let run = load_run_file("examples/configs/safety-sft.toml".as_ref())?;
    let model_path = run.model_path.clone().expect("[model].path");
    // 1. Data: harmful prompts get refusal templates, harmless ones the model's own answers.
    let dataset = {
        let model = Pretrained::<Cpu>::load(&model_path, &Default::default())?;
        let mut responder = ModelResponder::new(&model, run.data.generate.clone());
        build(&run.data, &run.base_dir, Some(&mut responder))?
    };
    let Examples::Sft(examples) = &dataset.train else {
        anyhow::bail!("expected SFT data")
    };
    let bundle = TokenizerBundle::load(&model_path)?;
    let encoder = ChatEncoder::from_bundle(&bundle, EncodeOptions::from_config(&run.data))?;
    let (rows, stats) = encoder.encode_all_sft(examples)?;
    println!("{} examples, {} tokens", stats.examples, stats.tokens);
    // 2. The model on the autodiff CPU backend, with LoRA on every linear layer.
    let device = Default::default();
    let base = Pretrained::<Autodiff<Cpu>>::load(&model_path, &device)?;
    let lora = LoraConfig {
        r: 16,
        lora_alpha: 32.0,
        target_modules: TargetModules::Preset("all-linear".into()),
        ..Default::default()
    };
    let mut model = base.model.clone();
    model.attach_lora(&lora, &device)?;
    // 3. Train: one epoch, batch 8, cosine schedule.
    let train_rows = rows.iter().map(Packed::single).collect();
    let mut sft = Sft {
        train: train_rows,
        eval: vec![],
        pad_id: base.pad_id(),
        eval_batch_size: 8,
    };
    let train_cfg = TrainConfig {
        learning_rate: 5e-4,
        batch_size: 8,
        warmup_steps: 4,
        schedule: burnish::trainers::optim::Schedule::Cosine,
        ..Default::default()
    };
    let out_dir = "runs/example-sft".into();
    let cfg = EngineConfig {
        train: train_cfg,
        lora: lora.clone(),
        out_dir,
        base_model: model_path.display().to_string(),
        method: "sft".into(),
        eval_steps: 0,
        resume: None,
    };
    let (model, summary) = train(&mut sft, model, &cfg)?;
    println!(
        "final loss {:.3} after {} steps",
        summary.final_metrics["loss"], summary.steps
    );
    // 4. A PEFT adapter: loads in burnish (`burnish export --adapter`) and in Python's peft.
    save_adapter(
        &model,
        &lora,
        &model_path.display().to_string(),
        "runs/example-sft/adapter".as_ref(),
    )?;
    Ok(())
}
