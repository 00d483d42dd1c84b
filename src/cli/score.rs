//! `burnish score --model M --reward R --prompt P --response T`: a trained reward model's score.

use std::path::PathBuf;

use anyhow::Result;
use burnish_core::adapter::load_adapter;
use burnish_core::backend::Cpu;
use burnish_core::{Message, Pretrained};
use burnish_trainers::reward::{load_head, score_sequences};
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
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let device = Default::default();
    let mut m = Pretrained::<Cpu>::load(&a.model, &device)?;
    load_adapter(&mut m.model, &a.reward, &device)?;
    let head = load_head::<Cpu>(&a.reward, &device)?;
    let seqs = a
        .response
        .iter()
        .map(|r| {
            let exchange = [
                Message::user(a.prompt.clone()),
                Message::assistant(r.clone()),
            ];
            Ok(m.tokenizer
                .encode(&m.render_chat(&exchange, false)?, false)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let scores = score_sequences(&m.model, &head, seqs, m.pad_id(), 8);
    if a.json {
        println!("{}", serde_json::json!({"scores": scores}));
    } else {
        for (resp, s) in a.response.iter().zip(&scores) {
            println!("{s:.4}\t{resp}");
        }
    }
    Ok(())
}
