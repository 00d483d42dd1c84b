//! Safety SFT through the library API: refusal templates for harmful prompts, the model's own answers for
//! harmless ones, LoRA on every linear layer. The same run as examples/configs/safety-sft.toml, smaller.
//!
//!     scripts/fetch-smollm2.sh && cargo run --release --example sft
//!
//! Data: ../shared/data/refusal_direction train splits (andyrdt/refusal_direction; see its README).

use burnish::core::adapter::save_adapter;
use burnish::core::backend::{Autodiff, Cpu};
use burnish::core::model::{LoraConfig, TargetModules};
use burnish::core::{Pretrained, TokenizerBundle};
use burnish::data::config::DataConfig;
use burnish::data::{build, ChatEncoder, EncodeOptions, Examples, ModelResponder, Packed};
use burnish::trainers::config::TrainConfig;
use burnish::trainers::engine::{train, EngineConfig};
use burnish::trainers::sft::Sft;

const MODEL: &str = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const DATA: &str = r#"
max_length = 256
[[sources]]
path = "../shared/data/refusal_direction/splits/harmful_train.json"
harmful = true
answer = "refusal_template"
limit = 48
[[sources]]
path = "../shared/data/refusal_direction/splits/harmless_train.json"
harmful = false
answer = "model"
limit = 48
[generate]
max_new_tokens = 64
batch_size = 16
"#;

fn main() -> anyhow::Result<()> {
    let data: DataConfig = toml::from_str(DATA)?;
    // 1. Data: answer harmless prompts with the model itself, pair harmful ones with refusals.
    let dataset = {
        let model = Pretrained::<Cpu>::load(MODEL, &Default::default())?;
        build(
            &data,
            ".".as_ref(),
            Some(&mut ModelResponder::new(&model, data.generate.clone())),
        )?
    };
    let Examples::Sft(examples) = &dataset.train else {
        anyhow::bail!("expected SFT data")
    };
    let encoder = ChatEncoder::from_bundle(
        &TokenizerBundle::load(MODEL)?,
        EncodeOptions::from_config(&data),
    )?;
    let (rows, _) = encoder.encode_all_sft(examples)?;
    // 2. Model with LoRA adapters on every linear layer, on the autodiff CPU backend.
    let device = Default::default();
    let base = Pretrained::<Autodiff<Cpu>>::load(MODEL, &device)?;
    let lora = LoraConfig {
        r: 16,
        lora_alpha: 32.0,
        target_modules: TargetModules::Preset("all-linear".into()),
        ..Default::default()
    };
    let mut model = base.model;
    model.attach_lora(&lora, &device)?;
    // 3. Train.
    let mut sft = Sft {
        train: rows.iter().map(Packed::single).collect(),
        eval: vec![],
        pad_id: base_pad(&base.tokenizer),
        eval_batch_size: 8,
    };
    let train_cfg = TrainConfig {
        learning_rate: 5e-4,
        batch_size: 8,
        ..Default::default()
    };
    let cfg = EngineConfig {
        train: train_cfg,
        lora: lora.clone(),
        out_dir: "runs/example-sft".into(),
        base_model: MODEL.into(),
        method: "sft".into(),
        eval_steps: 0,
        resume: None,
    };
    let (model, summary) = train(&mut sft, model, &cfg)?;
    println!(
        "final loss {:.3} after {} steps",
        summary.final_metrics["loss"], summary.steps
    );
    // 4. Save a PEFT adapter.
    save_adapter(&model, &lora, MODEL, "runs/example-sft/adapter".as_ref())?;
    Ok(())
}

fn base_pad(t: &burnish::core::Tokenizer) -> u32 {
    t.pad_id().or(t.eos_id()).unwrap_or(0)
}
