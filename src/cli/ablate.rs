//! `burnish ablate CONFIG [--set key=value]`: refusal-direction ablation or steering (docs/ablate.md).

use std::path::PathBuf;

use anyhow::{bail, Result};
use burnish_trainers::config::{MethodConfig, Run};
use clap::Args;

#[derive(Args)]
pub struct AblateArgs {
    /// The run file (TOML) with `[method] name = "ablate"`.
    pub config: PathBuf,
    /// Override a config key, e.g. --set method.trials=40 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

pub fn ablate(a: AblateArgs) -> Result<()> {
    let run = Run::load(&a.config, &a.set)?;
    let MethodConfig::Ablate(cfg) = &run.config.method else {
        bail!(
            "{}: [method] name is `{}`; `burnish ablate` runs name = \"ablate\"",
            a.config.display(),
            run.config.method.name()
        );
    };
    let s = burnish_trainers::ablate::run(&run, cfg)?;
    let out = run.resolve(&run.config.output.dir);
    eprint!("{}", burnish_trainers::eval::summary(&s.report["after"]));
    eprintln!(
        "finished in {:.0} s; outputs in {}",
        s.seconds,
        out.display()
    );
    Ok(())
}
