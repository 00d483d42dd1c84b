//! `burnish score --model M --reward R --prompt P --response T`: a trained reward model's score.

use std::path::PathBuf;

use anyhow::Result;
use burnish_core::adapter::load_adapter;
use burnish_core::backend::DeviceSpec;
use burnish_core::burn::tensor::backend::Backend;
use burnish_core::{Message, Precision, Pretrained};
use burnish_data::{ChatEncoder, EncodeOptions};
use burnish_trainers::reward::{load_head, score_exchanges};
use clap::Args;

#[derive(Args)]
pub struct ScoreArgs {
    /// The base model the reward model was trained on (HF directory or GGUF).
    #[arg(long)]
    model: PathBuf,
    /// The reward model directory: a PEFT adapter plus score.safetensors (`<output.dir>/adapter`).
    #[arg(long)]
    reward: PathBuf,
    #[arg(long)]
    prompt: String,
    /// Repeatable: each response is scored.
    #[arg(long, required = true)]
    response: Vec<String>,
    /// Print JSON: {"scores": [...]}.
    #[arg(long)]
    json: bool,
    /// cpu, wgpu, wgpu:N, cuda or cuda:N (GPUs need the cargo feature).
    #[arg(long, default_value = "cpu")]
    backend: DeviceSpec,
    /// f32, bf16 or f16: the dtype of the base's weight matrices and their matmuls (activations,
    /// norms and softmax stay f32).
    #[arg(long, default_value = "f32")]
    dtype: Precision,
}

pub fn score(a: ScoreArgs) -> Result<()> {
    super::on_backend!(a.backend, score_on(a: ScoreArgs))
}

fn score_on<B: Backend>(a: ScoreArgs, device: &B::Device) -> Result<()> {
    let (bundle, mut model) = Pretrained::<B>::load_as(&a.model, device, a.dtype)?.into_parts();
    load_adapter(&mut model, &a.reward, device)?;
    let head = load_head::<B>(&a.reward, device)?;
    // Each exchange encoded as reward training encoded a pair's side, so the head reads the token it
    // learned on (the assistant turn's end token).
    let encoder = ChatEncoder::from_bundle(&bundle, EncodeOptions::untruncated())?;
    let prompt = [Message::user(a.prompt.clone())];
    let exchanges: Vec<(&[Message], &str)> = a
        .response
        .iter()
        .map(|r| (&prompt[..], r.as_str()))
        .collect();
    let scores = score_exchanges(&model, &head, &encoder, &exchanges, bundle.pad_id())?;
    if a.json {
        println!("{}", serde_json::json!({"scores": scores}));
    } else {
        for (resp, s) in a.response.iter().zip(&scores) {
            println!("{s:.4}\t{resp}");
        }
    }
    Ok(())
}
