//! The training loop, shared by every method. Read it top to bottom: per optimizer step it takes the next
//! rows of a seeded permutation, accumulates gradients of the loss normalised by the step's total loss
//! units, clips the global norm, applies AdamW to the adapter parameters, logs, and checkpoints.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use burnish_core::burn;
use burnish_core::model::lora::peft_key;
use burnish_core::{Llama, LoraConfig};
use serde_json::json;

use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::method::{Method, Metrics};
use crate::optim::{clip_factor, lr_at, AdamW};
use crate::{Error, Result};

/// Everything the loop needs besides the method and the model.
pub struct EngineConfig {
    pub train: TrainConfig,
    pub lora: LoraConfig,
    pub out_dir: PathBuf,
    /// Recorded in adapter_config.json.
    pub base_model: String,
    pub method: String,
    /// Evaluate every N steps (0 = only at the end).
    pub eval_steps: usize,
    /// Resume from this checkpoint directory.
    pub resume: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Finished,
    /// Ctrl-C: a checkpoint was written at this step.
    Interrupted(usize),
}

pub struct Summary {
    pub outcome: Outcome,
    pub steps: usize,
    pub total_steps: usize,
    pub final_metrics: Metrics,
    pub eval_metrics: Metrics,
    pub seconds: f64,
    /// One entry per logged step (what metrics.jsonl holds).
    pub history: Vec<serde_json::Value>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler once per process: the loop saves a checkpoint and stops cleanly.
fn install_ctrl_c() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)"
            );
        });
    });
}

/// Row `k` of the endless data stream: epoch `k / n` of a seeded permutation.
pub fn row_at(k: usize, n: usize, seed: u64) -> usize {
    let epoch = k / n;
    let perm = permutation(n, seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    perm[k % n]
}

fn permutation(n: usize, seed: u64) -> Vec<usize> {
    // Fisher-Yates with SplitMix64: stable across platforms and crate versions.
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

fn scalar<B: burn::tensor::backend::Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_scalar().elem::<f64>()
}

/// Runs the loop. `model` carries freshly attached adapters (or gets them from the checkpoint on resume).
pub fn train<B: AutodiffBackend, M: Method<B>>(
    method: &mut M,
    mut model: Llama<B>,
    cfg: &EngineConfig,
) -> Result<(Llama<B>, Summary)> {
    let t = &cfg.train;
    let device = model.model.embed_tokens.device();
    let inner_device = model.model.embed_tokens.val().inner().device();
    let n = method.train_len();
    if n == 0 {
        return Err(Error::Other("no training rows".into()));
    }
    let per_step = t.batch_size * t.gradient_accumulation_steps;
    let total_steps = t
        .max_steps
        .unwrap_or_else(|| (t.epochs * n).div_ceil(per_step))
        .max(1);
    let warmup = if t.warmup_steps > 0 {
        t.warmup_steps
    } else {
        (t.warmup_ratio * total_steps as f64).ceil() as usize
    };
    let mut opt = AdamW::<B::InnerBackend>::new(t.adamw.clone());
    let mut start = 0;
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| Error::Io(cfg.out_dir.clone(), e))?;
    let metrics_path = cfg.out_dir.join("metrics.jsonl");
    let mut history = Vec::new();
    if let Some(dir) = &cfg.resume {
        let (st, heads) = checkpoint::load(dir, &mut model, &mut opt, &device, &inner_device)?;
        for (name, t) in heads {
            method.set_head(&name, t);
        }
        if st.total_steps != total_steps || st.seed != t.seed || st.method != cfg.method {
            return Err(Error::Other(format!(
                "{}: checkpoint is from a different run (steps {}, seed {}, method {}) than this config (steps {total_steps}, seed {}, method {})",
                dir.display(), st.total_steps, st.seed, st.method, t.seed, cfg.method
            )));
        }
        start = st.step;
        history = read_history(&metrics_path, start)?;
        tracing::info!("resumed from {} at step {start}", dir.display());
    }
    rewrite_history(&metrics_path, &history)?;
    let mut metrics_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::Io(metrics_path.clone(), e))?;
    install_ctrl_c();
    INTERRUPTED.store(false, Ordering::SeqCst);

    let bar = indicatif::ProgressBar::new(total_steps as u64).with_position(start as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let mut last = Metrics::new();
    let mut eval = Metrics::new();
    let mut outcome = Outcome::Finished;
    let save_ckpt = |model: &Llama<B>,
                     opt: &AdamW<B::InnerBackend>,
                     heads: &[(String, Tensor<B::InnerBackend, 2>)],
                     step: usize|
     -> Result<PathBuf> {
        let state = TrainerState {
            step,
            total_steps,
            seed: t.seed,
            data_cursor: step * per_step,
            method: cfg.method.clone(),
        };
        checkpoint::save(
            &cfg.out_dir,
            model,
            &cfg.lora,
            &cfg.base_model,
            opt,
            heads,
            &state,
            t.save_total_limit,
        )
    };

    for step in start..total_steps {
        let t0 = Instant::now();
        B::seed(&device, t.seed.wrapping_add(step as u64));
        method.prepare_step(&model.valid(), step)?;
        let cursor = step * per_step;
        let batches: Vec<M::Batch> = (0..t.gradient_accumulation_steps)
            .map(|a| {
                let rows: Vec<usize> = (0..t.batch_size)
                    .map(|i| row_at(cursor + a * t.batch_size + i, n, t.seed))
                    .collect();
                method.batch(&rows)
            })
            .collect();
        let units: f64 = batches.iter().map(|b| method.units(b)).sum();
        let tokens: usize = batches.iter().map(|b| method.tokens(b)).sum();
        if units <= 0.0 {
            return Err(Error::Other(format!(
                "step {step}: the batch has no loss units (all labels masked?)"
            )));
        }
        let mut grads: BTreeMap<String, Tensor<B::InnerBackend, 2>> = BTreeMap::new();
        let mut loss_sum = 0.0;
        let mut sums = Metrics::new();
        for batch in &batches {
            let (loss, m) = method.loss(&model, batch);
            let g = loss.clone().div_scalar(units).backward();
            loss_sum += scalar(loss.inner());
            for (k, v) in m {
                *sums.entry(k).or_default() += v;
            }
            let mut add = |key: String, gr: Tensor<B::InnerBackend, 2>| {
                let acc = match grads.remove(&key) {
                    Some(prev) => prev + gr,
                    None => gr,
                };
                grads.insert(key, acc);
            };
            for (path, lora) in model.adapters() {
                for (which, p) in [('A', &lora.lora_A), ('B', &lora.lora_B)] {
                    if let Some(gr) = p.val().grad(&g) {
                        add(peft_key(&path, which), gr);
                    }
                }
            }
            for (name, p) in method.heads() {
                if let Some(gr) = p.val().grad(&g) {
                    add(name, gr);
                }
            }
        }
        let loss = loss_sum / units;
        let grad_norm = grads
            .values()
            .map(|g| scalar(g.clone().square().sum()))
            .sum::<f64>()
            .sqrt();
        if !loss.is_finite() || !grad_norm.is_finite() {
            bar.abandon();
            let kept = checkpoint::list(&cfg.out_dir)?.pop();
            return Err(Error::Diverged(format!(
                "step {}: loss {loss}, gradient norm {grad_norm}; the last good checkpoint is {}",
                step + 1,
                kept.map_or("none (no checkpoint was written yet)".into(), |p| p
                    .display()
                    .to_string())
            )));
        }
        let clip = clip_factor(grad_norm, Some(t.max_grad_norm));
        let lr = lr_at(t.schedule, t.learning_rate, step, warmup, total_steps);
        opt.begin_step();
        for (path, lora) in model.adapters_mut() {
            for which in ['A', 'B'] {
                let key = peft_key(&path, which);
                let param = if which == 'A' {
                    &mut lora.lora_A
                } else {
                    &mut lora.lora_B
                };
                let Some(g) = grads.remove(&key) else {
                    continue;
                };
                let new = opt.update(&key, param.val().inner(), g.mul_scalar(clip), lr);
                *param = Param::initialized(param.id, Tensor::from_inner(new).require_grad());
            }
        }
        for (name, p) in method.heads() {
            if let Some(g) = grads.remove(&name) {
                let new = opt.update(&name, p.val().inner(), g.mul_scalar(clip), lr);
                method.set_head(&name, new);
            }
        }
        let done = step + 1;
        let secs = t0.elapsed().as_secs_f64();
        let mut row = json!({
            "step": done,
            "epoch": (cursor + per_step) as f64 / n as f64,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens as f64 / secs,
            "step_seconds": secs,
        });
        for (k, v) in &sums {
            row[k] = json!(v / units);
        }
        for (k, v) in method.step_metrics() {
            row[&k] = json!(v);
        }
        if cfg.eval_steps > 0 && done % cfg.eval_steps == 0 && done != total_steps {
            for (k, v) in method.evaluate(&model.valid()) {
                row[&k] = json!(v);
            }
        }
        if done == total_steps {
            eval = method.evaluate(&model.valid());
            for (k, v) in &eval {
                row[k] = json!(v);
            }
        }
        last = row
            .as_object()
            .expect("object")
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
            .collect();
        if done % t.logging_steps.max(1) == 0 || done == total_steps {
            writeln!(metrics_file, "{row}").map_err(|e| Error::Io(metrics_path.clone(), e))?;
            metrics_file
                .flush()
                .map_err(|e| Error::Io(metrics_path.clone(), e))?;
            history.push(row);
        }
        bar.set_position(done as u64);
        bar.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {:.0} tok/s",
            tokens as f64 / secs
        ));
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if (t.save_steps > 0 && done % t.save_steps == 0) || done == total_steps || interrupted {
            let heads: Vec<_> = method
                .heads()
                .into_iter()
                .map(|(n, p)| (n, p.val().inner()))
                .collect();
            save_ckpt(&model, &opt, &heads, done)?;
        }
        if interrupted && done != total_steps {
            outcome = Outcome::Interrupted(done);
            bar.abandon_with_message(format!("interrupted at step {done}; resume with --resume"));
            return Ok((
                model,
                summary(outcome, done, total_steps, last, eval, started, history),
            ));
        }
    }
    bar.finish();
    Ok((
        model,
        summary(
            outcome,
            total_steps,
            total_steps,
            last,
            eval,
            started,
            history,
        ),
    ))
}

fn summary(
    outcome: Outcome,
    steps: usize,
    total_steps: usize,
    final_metrics: Metrics,
    eval_metrics: Metrics,
    started: Instant,
    history: Vec<serde_json::Value>,
) -> Summary {
    Summary {
        outcome,
        steps,
        total_steps,
        final_metrics,
        eval_metrics,
        seconds: started.elapsed().as_secs_f64(),
        history,
    }
}

/// metrics.jsonl lines up to `step` (a resumed run rewrites the file without the lines it will redo).
fn read_history(path: &Path, step: usize) -> Result<Vec<serde_json::Value>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io(path.to_path_buf(), e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["step"].as_u64().is_some_and(|s| s as usize <= step))
        .collect())
}

fn rewrite_history(path: &Path, rows: &[serde_json::Value]) -> Result<()> {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    burnish_core::io::write_atomic(path, text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_order_is_a_seeded_permutation_per_epoch() {
        let n = 10;
        let epoch0: Vec<usize> = (0..n).map(|k| row_at(k, n, 7)).collect();
        let epoch1: Vec<usize> = (n..2 * n).map(|k| row_at(k, n, 7)).collect();
        let mut sorted = epoch0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        assert_ne!(epoch0, epoch1);
        assert_eq!(epoch0, (0..n).map(|k| row_at(k, n, 7)).collect::<Vec<_>>());
        assert_ne!(epoch0, (0..n).map(|k| row_at(k, n, 8)).collect::<Vec<_>>());
    }
}
