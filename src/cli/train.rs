//! `burnish train CONFIG [--set section.key=value]... [--resume [DIR]]`

use std::path::PathBuf;

use anyhow::Result;
use burnish_trainers::config::Run;
use burnish_trainers::engine::Outcome;
use clap::Args;

#[derive(Args)]
pub struct TrainArgs {
    /// The run file (TOML).
    config: PathBuf,
    /// Override a config key, e.g. --set train.learning_rate=1e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Continue from a checkpoint: the given directory, or the latest one in the output directory.
    #[arg(long, num_args = 0..=1, value_name = "DIR")]
    resume: Option<Option<PathBuf>>,
}

pub fn train(a: TrainArgs) -> Result<()> {
    let run = Run::load(&a.config, &a.set)?;
    if let burnish_trainers::config::MethodConfig::Ablate(cfg) = &run.config.method {
        let s = burnish_trainers::ablate::run(&run, cfg)?;
        eprint!("{}", burnish_trainers::eval::summary(&s.report["after"]));
        eprintln!("finished in {:.0} s", s.seconds);
        return Ok(());
    }
    let summary = burnish_trainers::train::train(&run, a.resume)?;
    let out = run.resolve(&run.config.output.dir);
    match summary.outcome {
        Outcome::Finished => eprintln!(
            "finished {} steps in {:.0} s; outputs in {}",
            summary.total_steps,
            summary.seconds,
            out.display()
        ),
        Outcome::Interrupted(step) => eprintln!(
            "stopped at step {step}/{}; checkpoint saved, continue with: burnish train {} --resume",
            summary.total_steps,
            a.config.display()
        ),
    }
    Ok(())
}
