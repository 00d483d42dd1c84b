//! `burnish score --model M --reward R --prompt P --response T`: a trained reward model's score.

use std::path::PathBuf;

use anyhow::Result;
use burnish_core::adapter::load_adapter;
use burnish_core::backend::Cpu;
use burnish_core::{Message, Pretrained};
use burnish_data::{Batch, Packed, TokenizedExample};
use burnish_trainers::reward::{load_head, rewards};
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
    let rows = a
        .response
        .iter()
        .map(|r| {
            let text = m.render_chat(
                &[
                    Message::user(a.prompt.clone()),
                    Message::assistant(r.clone()),
                ],
                false,
            )?;
            let ids = m.tokenizer.encode(&text, false)?;
            let labels = vec![-100; ids.len()];
            Ok(Packed::single(&TokenizedExample {
                input_ids: ids,
                labels,
                truncated: false,
                category: None,
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    let r = rewards(&m.model, head, &Batch::new(&rows, m.pad_id()));
    let scores = r.into_data().to_vec::<f32>().unwrap_or_default();
    if a.json {
        println!("{}", serde_json::json!({"scores": scores}));
    } else {
        for (resp, s) in a.response.iter().zip(&scores) {
            println!("{s:.4}\t{resp}");
        }
    }
    Ok(())
}
