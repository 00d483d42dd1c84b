//! The `burnish` command line.

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "burnish",
    version,
    about = "Fine-tune language models on Burn: SFT, DPO, RLHF, abliteration"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a reply (chat template applied unless --raw).
    Generate(cli::model::GenerateArgs),
    /// Token ids of a text (no special tokens added).
    Tokenize(cli::model::TokenizeArgs),
    /// Architecture, parameter count, dtype, tokenizer, template and files of a model.
    Inspect(cli::model::InspectArgs),
    /// Merge an adapter and write a HF directory (--out) and/or a GGUF file (--gguf).
    Export(cli::export::ExportArgs),
    /// Train from a run file (SFT, ...): burnish train CONFIG [--set key=value] [--resume [DIR]].
    Train(cli::train::TrainArgs),
    /// Refusal-direction ablation (uncensor) or steering (safety) from a run file: burnish ablate CONFIG.
    Ablate(cli::ablate::AblateArgs),
    /// The main job: safety-tune SmolLM2, make refusal-free variants, evaluate all (burnish showcase [--quick]).
    Showcase(cli::showcase::ShowcaseArgs),
    /// Train a run file over a grid of overrides, evaluate each trial, write the Pareto front of violation
    /// rate vs false refusal rate: burnish sweep SWEEP.toml.
    Sweep(cli::sweep::SweepArgs),
    /// Score responses with a trained reward model (method = "reward").
    Score(cli::score::ScoreArgs),
    /// Safety evaluation: violation and false refusal rates by hazard category, KL to a base model.
    Eval(cli::eval::EvalArgs),
    /// Data sets: preview rendered examples and loss masks, build JSON Lines, evaluate refusal detection.
    Data(cli::data::DataArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Generate(a) => cli::model::generate(a),
        Cmd::Tokenize(a) => cli::model::tokenize(a),
        Cmd::Inspect(a) => cli::model::inspect(a),
        Cmd::Export(a) => cli::export::export(a),
        Cmd::Train(a) => cli::train::train(a),
        Cmd::Data(a) => cli::data::run(a),
        Cmd::Eval(a) => cli::eval::eval(a),
        Cmd::Ablate(a) => cli::ablate::ablate(a),
        Cmd::Score(a) => cli::score::score(a),
        Cmd::Showcase(a) => cli::showcase::showcase(a),
        Cmd::Sweep(a) => cli::sweep::sweep(a),
    };
    if let Err(e) = result {
        eprintln!("error: {}", message(&e));
        std::process::exit(1);
    }
}

/// The error and its causes, each cause added only when the text so far does not already say it (our
/// errors print their source inside their own message; anyhow's `{:#}` would repeat it: "X: X").
fn message(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let e = burnish_core::Error::Io {
            path: "/x/model.safetensors".into(),
            source: io,
        };
        let msg = super::message(&anyhow::Error::new(e));
        assert_eq!(msg, "/x/model.safetensors: permission denied");
        let wrapped = anyhow::anyhow!("inner cause").context("reading run.toml");
        assert_eq!(super::message(&wrapped), "reading run.toml: inner cause");
    }
}
