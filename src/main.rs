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
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
