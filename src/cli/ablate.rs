//! `burnish ablate CONFIG [--set key=value]`: refusal-direction ablation or steering (docs/ablate.md).

use std::path::PathBuf;

use anyhow::{bail, Result};
use burnish_core::backend::DeviceSpec;
use burnish_trainers::config::{MethodConfig, RunFile};
use burnish_trainers::{AblateReport, RunOptions, RunReport};
use clap::Args;

use super::progress::Terminal;

#[derive(Args)]
pub struct AblateArgs {
    /// The run file (TOML) with `[method] name = "ablate"`.
    pub config: PathBuf,
    /// Override a config key, e.g. --set method.trials=40 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Replace an earlier run's outputs in the output directory (otherwise such a directory is refused).
    #[arg(long)]
    pub overwrite: bool,
    /// Run on cpu, wgpu, wgpu:N, cuda or cuda:N instead of the run file's [model] backend.
    #[arg(long)]
    pub backend: Option<DeviceSpec>,
}

pub fn ablate(a: AblateArgs) -> Result<()> {
    let mut file = RunFile::load(&a.config, &a.set)?;
    if let (true, Some(o)) = (a.overwrite, file.config.output.as_mut()) {
        o.overwrite = true;
    }
    if let Some(b) = a.backend {
        file.config.model.backend = b;
    }
    if !matches!(file.config.method, MethodConfig::Ablate(_)) {
        bail!(
            "{}: [method] name is `{}`; `burnish ablate` runs name = \"ablate\"",
            a.config.display(),
            file.config.method.name()
        );
    }
    let progress = Terminal::default();
    let opts = RunOptions {
        progress: &progress,
        run_file: Some(file.path.clone()),
        ..Default::default()
    };
    if let RunReport::Ablated(r) = burnish_trainers::run(&file.config, &opts)? {
        print_summary(&r, &file);
    }
    Ok(())
}

/// The evaluation of the edited model, the time, and where the outputs are.
pub fn print_summary(r: &AblateReport, file: &RunFile) {
    eprint!("{}", burnish_trainers::eval::summary(&r.after));
    let out = file
        .config
        .output
        .as_ref()
        .map(|o| o.dir.display().to_string());
    eprintln!(
        "finished in {:.0} s; outputs in {}",
        r.seconds,
        out.unwrap_or_default()
    );
}
