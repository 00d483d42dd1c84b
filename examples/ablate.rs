//! Abliteration through the library: examples/configs/uncensor-ablate.toml with a smaller search,
//! then the edited model's refusal rates read from the typed report.
//!
//!     cargo run --release -- train examples/configs/safety-sft.toml   # the model it edits
//!     cargo run --release --example ablate

use burnish::trainers::{run, MethodConfig, RunFile, RunOptions, RunReport};

fn main() -> anyhow::Result<()> {
    let mut config = RunFile::load("examples/configs/uncensor-ablate.toml".as_ref(), &[])?.config;
    if let MethodConfig::Ablate(a) = &mut config.method {
        a.trials = 6;
        a.startup_trials = 3;
        a.eval_before = false;
    }
    config.eval.limit = Some(32);
    config.output.as_mut().expect("[output]").dir = "runs/example-ablate".into();
    let RunReport::Ablated(r) = run(&config, &RunOptions::default())? else {
        unreachable!("an ablation config ablates")
    };
    println!(
        "chosen trial {}: {:?}",
        r.chosen.index + 1,
        r.chosen.objectives
    );
    for (name, set) in r.after.sets.iter() {
        println!(
            "{name}: refusal rate {:.1}%",
            100.0 * set.overall.refusal_rate
        );
    }
    if let Some(kl) = &r.after.kl {
        println!(
            "first-token KL to the unedited model: {:.4}",
            kl.first_token
        );
    }
    Ok(())
}
