//! Safety DPO through the library: the run file examples/configs/safety-dpo.toml, edited in code
//! (fewer steps, another output directory), with a `Progress` of our own that prints every step, and
//! Ctrl-C wired to the run's stop token (it saves a checkpoint and returns).
//!
//!     scripts/fetch-smollm2.sh && cargo run --release --example dpo

use burnish::trainers::{run, Outcome, Progress, RunFile, RunOptions, RunReport, StopToken};

/// Prints each optimizer step's status on one line.
struct Steps;

impl Progress for Steps {
    fn message(&self, text: &str) {
        println!("{text}");
    }

    fn step(&self, done: usize, total: usize, status: &str) {
        if done > 0 {
            println!("step {done}/{total}: {status}");
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut config = RunFile::load("examples/configs/safety-dpo.toml".as_ref(), &[])?.config;
    config.train.max_steps = Some(6);
    config.output.as_mut().expect("[output]").dir = "runs/example-dpo".into();
    let stop = StopToken::new();
    let on_ctrl_c = stop.clone();
    ctrlc::set_handler(move || on_ctrl_c.stop())?;
    let opts = RunOptions {
        progress: &Steps,
        stop,
        ..Default::default()
    };
    let RunReport::Trained(r) = run(&config, &opts)? else {
        unreachable!("a DPO config trains")
    };
    if let Outcome::Interrupted(step) = r.summary.outcome {
        println!(
            "stopped at step {step}; a checkpoint is in {}",
            r.out_dir.display()
        );
    }
    for row in &r.summary.history {
        let acc = row
            .metrics
            .get("rewards/accuracies")
            .copied()
            .unwrap_or(0.0);
        println!(
            "step {}: loss {:.4}, reward accuracy {acc:.2}",
            row.step, row.loss
        );
    }
    Ok(())
}
