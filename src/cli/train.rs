//! `burnish train CONFIG [--set section.key=value]... [--resume [DIR]]`

use std::path::PathBuf;

use anyhow::Result;
use burnish_core::backend::DeviceSpec;
use burnish_trainers::config::RunFile;
use burnish_trainers::engine::Outcome;
use burnish_trainers::{Resume, RunOptions, RunReport};
use clap::Args;

use super::progress::{ctrl_c_token, Terminal};

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
    /// Replace an earlier run's outputs in the output directory (otherwise such a directory is refused).
    #[arg(long)]
    overwrite: bool,
    /// Run on cpu, wgpu, wgpu:N, cuda or cuda:N instead of the run file's [model] backend.
    #[arg(long)]
    backend: Option<DeviceSpec>,
    /// Data-parallel workers, one per device, e.g. --devices cuda:0,cuda:1 (sets [train] devices and
    /// the backend; --devices cpu,cpu runs two workers on the CPU).
    #[arg(long, value_delimiter = ',', value_name = "DEVICE,...")]
    devices: Option<Vec<DeviceSpec>>,
}

pub fn train(a: TrainArgs) -> Result<()> {
    let mut file = RunFile::load(&a.config, &a.set)?;
    if let (true, Some(o)) = (a.overwrite, file.config.output.as_mut()) {
        o.overwrite = true;
    }
    if let Some(b) = a.backend {
        file.config.model.backend = b;
    }
    if let Some(d) = a.devices.filter(|d| !d.is_empty()) {
        file.config.model.backend = d[0];
        file.config.train.devices = d;
    }
    let progress = Terminal::default();
    let opts = RunOptions {
        resume: a.resume.map(|d| d.map_or(Resume::Latest, Resume::From)),
        progress: &progress,
        stop: ctrl_c_token(),
        run_file: Some(file.path.clone()),
    };
    match burnish_trainers::run(&file.config, &opts)? {
        RunReport::Ablated(r) => {
            super::ablate::print_summary(&r, &file);
            Ok(())
        }
        RunReport::Trained(r) => match r.summary.outcome {
            Outcome::Finished => {
                eprintln!(
                    "finished {} steps in {:.0} s; outputs in {}",
                    r.summary.total_steps,
                    r.summary.seconds,
                    r.out_dir.display()
                );
                Ok(())
            }
            Outcome::Interrupted(step) => {
                eprintln!(
                    "stopped at step {step}/{}; checkpoint saved, continue with: burnish train {} --resume",
                    r.summary.total_steps,
                    a.config.display()
                );
                // The shell's code for "ended by Ctrl-C", so scripts do not take this for success.
                std::process::exit(130)
            }
        },
    }
}
