//! The training loop, shared by every method. Read it top to bottom: per optimizer step it takes the next
//! rows of a seeded permutation, accumulates gradients of the loss normalised by the step's total loss
//! units, clips the global norm, applies AdamW to the adapter parameters, logs, and checkpoints.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use burnish_core::backend::{device_memory, host_f64, DeviceSpec};
use burnish_core::burn;
use burnish_core::model::lora::peft_key;
use burnish_core::model::recompute;
use burnish_core::{Llama, LoraConfig};
use burnish_data::rng::permutation;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainerState};
use crate::method::{Method, Metrics};
use crate::optim::{clip_factor, lr_at, AdamW, AdamWConfig, Schedule};
use crate::progress::{Progress, StopToken};
use crate::team::{Post, Team};
use crate::{Error, Result};

/// `[train]`: the optimisation loop's settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Peak learning rate (default 2e-4, a common LoRA rate).
    pub learning_rate: f64,
    /// `constant`, `linear` (default) or `cosine` decay after warm-up.
    pub schedule: Schedule,
    /// Linear warm-up steps (default 0); `warmup_ratio` is used when this is 0.
    pub warmup_steps: usize,
    /// Warm-up as a share of all steps (default 0.0).
    pub warmup_ratio: f64,
    /// Passes over the training data (default 1); ignored when `max_steps` is set.
    pub epochs: usize,
    /// Total optimizer steps, overriding `epochs`.
    pub max_steps: Option<usize>,
    /// Sequences per micro-batch (default 4).
    pub batch_size: usize,
    /// Micro-batches per optimizer step (default 1).
    pub gradient_accumulation_steps: usize,
    /// Clip the global gradient norm to this (default 1.0; 0 turns clipping off).
    pub max_grad_norm: f64,
    /// AdamW settings (`weight_decay` default 0.0, betas 0.9/0.999, eps 1e-8).
    pub adamw: AdamWConfig,
    /// Seed for adapter init, data order and dropout (default 42).
    pub seed: u64,
    /// Log every N optimizer steps (default 1).
    pub logging_steps: usize,
    /// Checkpoint every N optimizer steps (default 0: only at the end).
    pub save_steps: usize,
    /// Checkpoints kept (default 2; the oldest is deleted).
    pub save_total_limit: usize,
    /// Data-parallel workers, one per entry (e.g. `["cuda:0", "cuda:1"]`; an entry may repeat, and
    /// `["cpu", "cpu"]` runs two workers on the CPU). Empty (default): `[model] backend` alone. Every
    /// micro-batch is split across them; the run is the one-device run (docs/distributed.md).
    pub devices: Vec<DeviceSpec>,
    /// Keep only each decoder layer's input in the forward pass and run the layer again in the
    /// backward pass (default false): activation memory of one layer instead of all, for about a
    /// third more compute. Same gradients.
    pub gradient_checkpointing: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 2e-4,
            schedule: Schedule::Linear,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            epochs: 1,
            max_steps: None,
            batch_size: 4,
            gradient_accumulation_steps: 1,
            max_grad_norm: 1.0,
            adamw: AdamWConfig::default(),
            seed: 42,
            logging_steps: 1,
            save_steps: 0,
            save_total_limit: 2,
            devices: Vec::new(),
            gradient_checkpointing: false,
        }
    }
}

impl TrainConfig {
    /// Range checks serde cannot make; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.batch_size == 0 || self.gradient_accumulation_steps == 0 {
            return Err(
                "`train.batch_size` and `train.gradient_accumulation_steps` must be at least 1"
                    .into(),
            );
        }
        if !self.learning_rate.is_finite() || self.learning_rate <= 0.0 {
            return Err(format!(
                "`train.learning_rate` = {} must be positive",
                self.learning_rate
            ));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(format!(
                "`train.warmup_ratio` = {} must be in [0, 1)",
                self.warmup_ratio
            ));
        }
        if self.logging_steps == 0 || self.save_total_limit == 0 {
            return Err(
                "`train.logging_steps` and `train.save_total_limit` must be at least 1".into(),
            );
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return Err(format!(
                "`train.max_grad_norm` = {} must be >= 0 (0 turns clipping off)",
                self.max_grad_norm
            ));
        }
        let a = &self.adamw;
        let beta = |b: f64| (0.0..1.0).contains(&b);
        if !(beta(a.beta1) && beta(a.beta2)) {
            return Err(format!(
                "`train.adamw.beta1` = {} and `beta2` = {} must be in [0, 1)",
                a.beta1, a.beta2
            ));
        }
        if !(a.eps.is_finite()
            && a.eps > 0.0
            && a.weight_decay.is_finite()
            && a.weight_decay >= 0.0)
        {
            return Err(format!(
                "`train.adamw.eps` = {} must be > 0 and `weight_decay` = {} >= 0",
                a.eps, a.weight_decay
            ));
        }
        if self.max_steps == Some(0) {
            return Err(
                "`train.max_steps` = 0 must be at least 1 (or leave it out and set `train.epochs`)"
                    .into(),
            );
        }
        if let Some(first) = self.devices.first() {
            if let Some(other) = self.devices.iter().find(|d| d.kind != first.kind) {
                return Err(format!(
                    "`train.devices`: `{first}` and `{other}` are different backends; one run uses one backend"
                ));
            }
        }
        if self.max_steps.is_none() && self.epochs == 0 {
            return Err("`train.epochs` must be at least 1 (or set `train.max_steps`)".into());
        }
        Ok(())
    }
}

/// Everything the loop needs besides the method and the model.
pub struct EngineConfig {
    pub train: TrainConfig,
    pub lora: LoraConfig,
    pub out_dir: PathBuf,
    /// Recorded in adapter_config.json.
    pub base_model: String,
    /// Evaluate every N steps (0 = only at the end).
    pub eval_steps: usize,
    /// Resume from this checkpoint directory.
    pub resume: Option<PathBuf>,
    /// Stops the loop after the current step, with a checkpoint (the CLI's Ctrl-C).
    pub stop: StopToken,
    /// Settings a resume must not change (model, LoRA, method, data, batch shape), by section name:
    /// stored in every checkpoint and compared key by key when resuming.
    pub resume_keys: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Finished,
    /// Stopped by the [`StopToken`]: a checkpoint was written at this step.
    Interrupted(usize),
}

/// One logged optimizer step: a line of metrics.jsonl.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    /// Passes over the training rows so far.
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    /// Before clipping.
    pub grad_norm: f64,
    /// Over every device of a data-parallel run.
    pub tokens_per_s: f64,
    pub step_seconds: f64,
    /// Seconds of the step spent summing gradients across devices (data-parallel runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allreduce_seconds: Option<f64>,
    /// Peak resident memory of the process so far, MB (Linux; absent elsewhere). On the CPU backend
    /// this is the training's memory; on a GPU backend it is the host side only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    /// GPU backends: what the device's memory pool holds after the step, MB — the pool keeps the pages
    /// it grew to, so this is its high-water mark so far, an upper bound of the peak in use
    /// (burnish_core::backend::device_memory). This worker's device only; absent on the CPU backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_reserved_mb: Option<f64>,
    /// The method's metrics (means over the step's loss units, e.g. `rewards/accuracies`), its
    /// step metrics (PPO's rollout statistics) and held-out `eval_*` metrics when it evaluated.
    #[serde(flatten)]
    pub metrics: Metrics,
}

#[derive(Clone, Debug)]
pub struct Summary {
    pub outcome: Outcome,
    pub steps: usize,
    pub total_steps: usize,
    /// The last step's log (the final metrics).
    pub last: Option<StepLog>,
    /// Held-out metrics at the end (empty without an eval split).
    pub eval_metrics: Metrics,
    pub seconds: f64,
    /// Every logged step (what metrics.jsonl holds).
    pub history: Vec<StepLog>,
}

/// Row `k` of the endless data stream: epoch `k / n` of a seeded permutation.
pub fn row_at(k: usize, n: usize, seed: u64) -> usize {
    let epoch = k / n;
    permutation(n, seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))[k % n]
}

/// The shape of a run: rows, rows per step, steps, warm-up.
#[derive(Clone, Copy, Debug)]
struct Plan {
    rows: usize,
    per_step: usize,
    total_steps: usize,
    warmup: usize,
}

impl Plan {
    fn new(t: &TrainConfig, rows: usize) -> Self {
        let per_step = t.batch_size * t.gradient_accumulation_steps;
        let total_steps = t
            .max_steps
            .unwrap_or_else(|| (t.epochs * rows).div_ceil(per_step))
            .max(1);
        let warmup = if t.warmup_steps > 0 {
            t.warmup_steps
        } else {
            (t.warmup_ratio * total_steps as f64).ceil() as usize
        };
        Self {
            rows,
            per_step,
            total_steps,
            warmup,
        }
    }
}

/// Summed gradients of one step, by parameter key (PEFT's adapter keys, the methods' head names).
type Grads<B> = BTreeMap<String, Tensor<B, 2>>;

/// Runs the loop on the model's device. `model` carries freshly attached adapters (or gets them from
/// the checkpoint on resume). [`crate::parallel::train_on_devices`] runs it on several devices.
pub fn train<B: AutodiffBackend, M: Method<B>>(
    method: &mut M,
    model: Llama<B>,
    cfg: &EngineConfig,
    progress: &dyn Progress,
) -> Result<(Llama<B>, Summary)> {
    run_loop(method, model, cfg, progress, &Team::solo())
}

/// What the leading worker keeps across steps: metrics.jsonl, the logged rows, the last evaluation.
struct Books {
    log: Option<MetricsFile>,
    history: Vec<StepLog>,
    eval: Metrics,
}

/// The loop of one worker; `team` is [`Team::solo`] on one device. Every worker takes every step;
/// only the leader evaluates, logs and checkpoints, and its decision to stop is shared.
pub(crate) fn run_loop<B: AutodiffBackend, M: Method<B>>(
    method: &mut M,
    mut model: Llama<B>,
    cfg: &EngineConfig,
    progress: &dyn Progress,
    team: &Team,
) -> Result<(Llama<B>, Summary)> {
    let rows = method.train_len();
    if rows == 0 {
        return Err(Error::NoTrainingRows(method.name()));
    }
    let plan = Plan::new(&cfg.train, rows);
    model.gradient_checkpointing = cfg.train.gradient_checkpointing;
    let mut opt = AdamW::<B::InnerBackend>::new(cfg.train.adamw.clone());
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| Error::Io(cfg.out_dir.clone(), e))?;
    let (start, history) = match &cfg.resume {
        Some(dir) => resume(dir, method, &mut model, &mut opt, cfg, &plan, progress)?,
        None => (0, Vec::new()),
    };
    let log = match team.is_leader() {
        true => Some(MetricsFile::open(
            &cfg.out_dir.join("metrics.jsonl"),
            &history,
        )?),
        false => None,
    };
    let mut books = Books {
        log,
        history,
        eval: Metrics::new(),
    };
    let started = Instant::now();
    progress.step(start, plan.total_steps, "");
    let mut outcome = Outcome::Finished;
    for step in start..plan.total_steps {
        let mut row = optimizer_step(method, &mut model, &mut opt, cfg, &plan, step, team)?;
        let verdict = match team.is_leader() {
            true => after_step(
                method, &model, &opt, cfg, &plan, &mut row, &mut books, progress,
            ),
            false => Ok(false),
        };
        if team.agree(verdict)? && row.step < plan.total_steps {
            outcome = Outcome::Interrupted(row.step);
            break;
        }
    }
    progress.finish();
    let steps = match outcome {
        Outcome::Interrupted(done) => done,
        Outcome::Finished => plan.total_steps,
    };
    let summary = Summary {
        outcome,
        steps,
        total_steps: plan.total_steps,
        last: books.history.last().cloned(),
        eval_metrics: books.eval,
        seconds: started.elapsed().as_secs_f64(),
        history: books.history,
    };
    Ok((model, summary))
}

/// The leader's part of a step: held-out evaluation when due, the metrics line, progress, and a
/// checkpoint when due, at the end, or when asked to stop. Returns whether to stop.
#[allow(clippy::too_many_arguments)]
fn after_step<B: AutodiffBackend, M: Method<B>>(
    method: &M,
    model: &Llama<B>,
    opt: &AdamW<B::InnerBackend>,
    cfg: &EngineConfig,
    plan: &Plan,
    row: &mut StepLog,
    books: &mut Books,
    progress: &dyn Progress,
) -> Result<bool> {
    let done = row.step;
    let is_last = done == plan.total_steps;
    let due = cfg.eval_steps > 0 && done.is_multiple_of(cfg.eval_steps);
    if is_last || due {
        let m = method.evaluate(&model.valid());
        row.metrics.extend(m.clone());
        if is_last {
            books.eval = m;
        }
    }
    if done.is_multiple_of(cfg.train.logging_steps.max(1)) || is_last {
        if let Some(log) = &mut books.log {
            log.append(row)?;
        }
        books.history.push(row.clone());
    }
    progress.step(done, plan.total_steps, &status(row));
    let stopped = cfg.stop.is_stopped();
    let save_due = cfg.train.save_steps > 0 && done.is_multiple_of(cfg.train.save_steps);
    if save_due || is_last || stopped {
        save_checkpoint(method, model, opt, cfg, plan, done)?;
    }
    Ok(stopped)
}

/// The micro-batches' rows of optimizer step `step`.
fn step_rows(t: &TrainConfig, plan: &Plan, step: usize) -> Vec<Vec<usize>> {
    let cursor = step * plan.per_step;
    (0..t.gradient_accumulation_steps)
        .map(|a| {
            (0..t.batch_size)
                .map(|i| row_at(cursor + a * t.batch_size + i, plan.rows, t.seed))
                .collect()
        })
        .collect()
}

/// One optimizer step: the step's micro-batches (this worker's shares of them), accumulated
/// gradients of the loss normalised by the step's loss units, summed across workers, the
/// global-norm clip, and AdamW on the adapters and heads.
fn optimizer_step<B: AutodiffBackend, M: Method<B>>(
    method: &mut M,
    model: &mut Llama<B>,
    opt: &mut AdamW<B::InnerBackend>,
    cfg: &EngineConfig,
    plan: &Plan,
    step: usize,
    team: &Team,
) -> Result<StepLog> {
    let t = &cfg.train;
    let t0 = Instant::now();
    // LoRA dropout masks are drawn on the host (the same on every backend); the backend RNG is
    // seeded too, for anything a method draws on the device.
    burnish_core::rng::seed_dropout(t.seed.wrapping_add(step as u64));
    B::seed(
        &model.model.embed_tokens.device(),
        t.seed.wrapping_add(step as u64),
    );
    method.prepare_step(&model.valid(), step)?;
    let micro = step_rows(t, plan, step);
    // Units and tokens of the whole step, which every worker counts alike.
    let full: Vec<M::Batch> = micro.iter().map(|rows| method.batch(rows)).collect();
    let units: f64 = full.iter().map(|b| method.units(b)).sum();
    let tokens: usize = full.iter().map(|b| method.tokens(b)).sum();
    if units <= 0.0 {
        return Err(Error::NoLossUnits(step + 1));
    }
    let mine: Vec<M::Batch> = match team.size() {
        1 => full,
        _ => micro
            .iter()
            .map(|rows| team.share(rows))
            .filter(|rows| !rows.is_empty())
            .map(|rows| method.batch(rows))
            .collect(),
    };
    let params = trainable(method, model);
    let device = model.model.embed_tokens.val().inner().device();
    let local = team.guard(|| accumulate(method, model, &params, &mine, units));
    let keys: Vec<(String, [usize; 2])> = match team.size() {
        1 => Vec::new(),
        _ => params
            .iter()
            .map(|(k, p)| (k.clone(), p.val().dims()))
            .collect(),
    };
    let (grads, loss_sum, sums, reduce_secs) = reduce(team, &keys, local, &device)?;
    let loss = loss_sum / units;
    let grad_norm = grads
        .values()
        .map(|g| host_f64(g.clone().square().sum())[0])
        .sum::<f64>()
        .sqrt();
    if !loss.is_finite() || !grad_norm.is_finite() {
        let kept = checkpoint::list(&cfg.out_dir)?.pop();
        return Err(Error::Diverged(format!(
            "step {}: loss {loss}, gradient norm {grad_norm}; the last good checkpoint is {}",
            step + 1,
            kept.map_or("none (no checkpoint was written yet)".into(), |p| p
                .display()
                .to_string())
        )));
    }
    let lr = lr_at(
        t.schedule,
        t.learning_rate,
        step,
        plan.warmup,
        plan.total_steps,
    );
    let clip = clip_factor(grad_norm, Some(t.max_grad_norm));
    apply_update(method, model, opt, grads, clip, lr);
    let mut metrics: Metrics = sums.into_iter().map(|(k, v)| (k, v / units)).collect();
    metrics.extend(method.step_metrics());
    let secs = t0.elapsed().as_secs_f64();
    Ok(StepLog {
        step: step + 1,
        epoch: ((step + 1) * plan.per_step) as f64 / plan.rows as f64,
        loss,
        lr,
        grad_norm,
        tokens_per_s: tokens as f64 / secs,
        step_seconds: secs,
        allreduce_seconds: (team.size() > 1).then_some(reduce_secs),
        peak_rss_mb: peak_rss_mb(),
        device_reserved_mb: device_memory(&device).map(|m| m.reserved_mb),
        metrics,
    })
}

/// The process's peak resident set (`VmHWM` in /proc/self/status), MB; `None` where there is none.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kb: f64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// The trainable parameters (adapters, then the method's heads) by key: the order of the
/// all-reduced bucket.
fn trainable<B: AutodiffBackend, M: Method<B>>(
    method: &M,
    model: &Llama<B>,
) -> Vec<(String, Param<Tensor<B, 2>>)> {
    let mut params = Vec::new();
    for (path, lora) in model.adapters() {
        for (which, p) in [('A', &lora.lora_A), ('B', &lora.lora_B)] {
            params.push((peft_key(&path, which), p.clone()));
        }
    }
    params.extend(method.heads());
    params
}

/// A worker's summed gradients, loss sum and metric sums.
type Local<B> = (Grads<B>, f64, Metrics);

/// This worker's gradients, loss and metric sums, and those of every other worker, summed: the
/// host values through the team's exchange, the gradients as one flat bucket through the
/// all-reduce (timed). On one device, what `local` holds.
fn reduce<B: Backend>(
    team: &Team,
    keys: &[(String, [usize; 2])],
    local: Result<Local<B>>,
    device: &B::Device,
) -> Result<(Grads<B>, f64, Metrics, f64)> {
    if team.size() == 1 {
        let (g, l, m) = local?;
        return Ok((g, l, m, 0.0));
    }
    let post = match &local {
        Ok((g, loss_sum, sums)) => Ok(Post {
            loss_sum: *loss_sum,
            sums: sums.clone(),
            present: keys.iter().map(|(k, _)| g.contains_key(k)).collect(),
            stop: false,
        }),
        Err(e) => Err(e.to_string()),
    };
    let posts = team.gather(post);
    let (mut grads, _, _) = local?;
    let posts = posts?;
    let loss_sum = posts.iter().map(|p| p.loss_sum).sum();
    let mut sums = Metrics::new();
    for (k, v) in posts.iter().flat_map(|p| &p.sums) {
        *sums.entry(k.clone()).or_default() += v;
    }
    let present = |i: usize| posts.iter().any(|p| p.present[i]);
    let t0 = Instant::now();
    let flat: Vec<Tensor<B, 1>> = keys
        .iter()
        .map(|(k, [r, c])| match grads.remove(k) {
            Some(g) => g.reshape([r * c]),
            None => Tensor::zeros([r * c], device),
        })
        .collect();
    let total = team.all_reduce(Tensor::cat(flat, 0))?;
    let mut out = Grads::new();
    let mut at = 0;
    for (i, (k, [r, c])) in keys.iter().enumerate() {
        if present(i) {
            out.insert(
                k.clone(),
                total.clone().slice(at..at + r * c).reshape([*r, *c]),
            );
        }
        at += r * c;
    }
    Ok((out, loss_sum, sums, t0.elapsed().as_secs_f64()))
}

/// Forward and backward over the micro-batches: summed gradients of `params`, loss sum and metric
/// sums.
fn accumulate<B: AutodiffBackend, M: Method<B>>(
    method: &M,
    model: &Llama<B>,
    params: &[(String, Param<Tensor<B, 2>>)],
    batches: &[M::Batch],
    units: f64,
) -> Local<B::InnerBackend> {
    let mut grads: Grads<B::InnerBackend> = BTreeMap::new();
    let mut loss_sum = 0.0;
    let mut sums = Metrics::new();
    for batch in batches {
        recompute::clear();
        let (loss, m) = method.loss(model, batch);
        let g = loss.clone().div_scalar(units).backward();
        // The adapters of layers run again in the backward pass (gradient checkpointing).
        let mut again = recompute::backward::<B>(&g);
        loss_sum += host_f64(loss.inner())[0];
        for (k, v) in m {
            *sums.entry(k).or_default() += v;
        }
        for (key, p) in params {
            let gr = match (p.val().grad(&g), again.remove(&p.id)) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
            if let Some(gr) = gr {
                let acc = match grads.remove(key) {
                    Some(prev) => prev + gr,
                    None => gr,
                };
                grads.insert(key.clone(), acc);
            }
        }
    }
    (grads, loss_sum, sums)
}

/// AdamW on every parameter that has a gradient, with the gradients scaled by `clip`.
fn apply_update<B: AutodiffBackend, M: Method<B>>(
    method: &mut M,
    model: &mut Llama<B>,
    opt: &mut AdamW<B::InnerBackend>,
    mut grads: Grads<B::InnerBackend>,
    clip: f64,
    lr: f64,
) {
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
}

/// The progress line of a step.
fn status(row: &StepLog) -> String {
    format!(
        "loss {:.4} lr {:.2e} {:.0} tok/s",
        row.loss, row.lr, row.tokens_per_s
    )
}

/// Writes the adapters, heads, optimizer state and position after `done` steps.
fn save_checkpoint<B: AutodiffBackend, M: Method<B>>(
    method: &M,
    model: &Llama<B>,
    opt: &AdamW<B::InnerBackend>,
    cfg: &EngineConfig,
    plan: &Plan,
    done: usize,
) -> Result<PathBuf> {
    let heads: Vec<_> = method
        .heads()
        .into_iter()
        .map(|(n, p)| (n, p.val().inner()))
        .collect();
    let state = TrainerState {
        step: done,
        total_steps: plan.total_steps,
        seed: cfg.train.seed,
        data_cursor: done * plan.per_step,
        method: method.name().to_string(),
        config: cfg.resume_keys.clone(),
    };
    checkpoint::save(
        &cfg.out_dir,
        model,
        &cfg.lora,
        &cfg.base_model,
        opt,
        &heads,
        &state,
        cfg.train.save_total_limit,
    )
}

/// Restores a checkpoint onto the model, optimizer and method heads after checking that it belongs
/// to this run; returns the step to continue from and the metrics logged up to it.
fn resume<B: AutodiffBackend, M: Method<B>>(
    dir: &Path,
    method: &mut M,
    model: &mut Llama<B>,
    opt: &mut AdamW<B::InnerBackend>,
    cfg: &EngineConfig,
    plan: &Plan,
    progress: &dyn Progress,
) -> Result<(usize, Vec<StepLog>)> {
    let device = model.model.embed_tokens.device();
    let inner_device = model.model.embed_tokens.val().inner().device();
    let (st, heads) = checkpoint::load(dir, model, opt, &device, &inner_device)?;
    let mismatch = |key: &str, checkpoint: String, config: String| Error::CheckpointMismatch {
        path: dir.to_path_buf(),
        key: key.to_string(),
        checkpoint,
        config,
    };
    if st.method != method.name() {
        return Err(mismatch("method.name", st.method, method.name().into()));
    }
    if st.seed != cfg.train.seed {
        let (a, b) = (st.seed.to_string(), cfg.train.seed.to_string());
        return Err(mismatch("train.seed", a, b));
    }
    if st.total_steps != plan.total_steps {
        let (a, b) = (st.total_steps.to_string(), plan.total_steps.to_string());
        return Err(mismatch("total steps", a, b));
    }
    // Only the sections this checkpoint recorded (older ones recorded none).
    for (key, theirs) in &st.config {
        let ours = cfg.resume_keys.get(key).unwrap_or(&serde_json::Value::Null);
        if let Some((k, a, b)) = checkpoint::first_difference(key, theirs, ours) {
            return Err(mismatch(&k, a, b));
        }
    }
    for (name, t) in heads {
        method.set_head(&name, t);
    }
    progress.message(&format!(
        "resuming from {} at step {}",
        dir.display(),
        st.step
    ));
    let history = read_history(&cfg.out_dir.join("metrics.jsonl"), st.step)?;
    Ok((st.step, history))
}

/// metrics.jsonl, rewritten on open to the given rows (a resumed run drops the lines it will redo),
/// then appended to and flushed after every logged step.
struct MetricsFile {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsFile {
    fn open(path: &Path, rows: &[StepLog]) -> Result<Self> {
        let text: String = rows.iter().map(|r| format!("{}\n", line(r))).collect();
        burnish_core::io::write_atomic(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::Io(path.to_path_buf(), e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    fn append(&mut self, row: &StepLog) -> Result<()> {
        let io = |e| Error::Io(self.path.clone(), e);
        writeln!(self.file, "{}", line(row)).map_err(io)?;
        self.file
            .flush()
            .map_err(|e| Error::Io(self.path.clone(), e))
    }
}

fn line(row: &StepLog) -> String {
    serde_json::to_string(row).expect("numbers serialise")
}

/// metrics.jsonl lines up to `step`.
fn read_history(path: &Path, step: usize) -> Result<Vec<StepLog>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io(path.to_path_buf(), e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<StepLog>(l).ok())
        .filter(|r| r.step <= step)
        .collect())
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

    #[test]
    fn step_log_lines_round_trip_with_method_metrics() {
        let row = StepLog {
            step: 3,
            epoch: 0.5,
            loss: 1.25,
            lr: 1e-4,
            grad_norm: 0.5,
            tokens_per_s: 100.0,
            step_seconds: 2.0,
            allreduce_seconds: None,
            peak_rss_mb: Some(812.5),
            device_reserved_mb: None,
            metrics: Metrics::from([("rewards/accuracies".to_string(), 0.75)]),
        };
        let text = line(&row);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["rewards/accuracies"], 0.75);
        assert_eq!(v["step"], 3);
        let back: StepLog = serde_json::from_str(&text).unwrap();
        assert_eq!(back.metrics, row.metrics);
        assert_eq!(back.step, 3);
        assert_eq!(v["peak_rss_mb"], 812.5);
        assert!(v.get("allreduce_seconds").is_none());
    }
}
