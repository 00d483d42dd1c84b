//! PPO for RLHF (TRL's PPO trainer, with the N+ implementation details). Each rollout samples
//! `rollout_batch_size` prompts, generates responses with the current policy (temperature 0.7, KV cache),
//! scores them (a trained reward model, a rule-based refusal reward, or a weighted sum), and computes
//! per-token rewards (−kl_coef·KL to the adapters-off reference, plus the score on the last token),
//! values, GAE advantages (whitened) and returns. Then `num_ppo_epochs` passes over
//! `num_mini_batches` minibatches follow, one engine step each, with the clipped policy and value losses.
//! The rollout runs in the engine's `prepare_step` hook, so the training loop has no PPO special case.

pub mod math;
mod rollout;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Param;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use burnish_core::backend::host_f32;
use burnish_core::{burn, Adapters, Llama, TokenizerBundle};
use burnish_data::rng::permutation;
use burnish_data::{ChatEncoder, RefusalDetector};
use serde::{Deserialize, Serialize};

use crate::method::{Method, Metrics};
use crate::Result;
use math::{policy_loss, value_loss, KlEstimator};
pub use rollout::{Prompt, RewardModel, Rollout};

/// The rule-based reward's goal: refusing harmful prompts and answering harmless ones (safety), or
/// answering everything (uncensor). +1 when the response does what the goal wants, −1 otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleGoal {
    Safety,
    Uncensor,
}

/// `[method]` with `name = "ppo"`. Names and defaults follow TRL's `PPOConfig`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// Rule-based reward from the refusal detector and the prompts' `harmful` flags (default: none).
    pub rule: Option<RuleGoal>,
    /// A reward model directory from `method = "reward"` (adapter + score.safetensors) on the same base.
    pub reward_model: Option<PathBuf>,
    /// Weights of the two rewards when both are given (default 1 each).
    pub rule_weight: f64,
    pub reward_model_weight: f64,
    /// Subtracted from the score of a response that ends without EOS (default 1.0; TRL: none).
    pub missing_eos_penalty: f64,
    /// Per-token KL penalty coefficient (default 0.05).
    pub kl_coef: f64,
    /// `k1` (default) or `k3`.
    pub kl_estimator: KlEstimator,
    /// Adaptive KL controller (Ziegler et al.): target KL per response (default: none, fixed kl_coef).
    pub target_kl: Option<f64>,
    /// Horizon of the adaptive controller in responses (default 10000).
    pub kl_horizon: f64,
    /// Prompts per rollout (default 16).
    pub rollout_batch_size: usize,
    /// Passes over each rollout (default 4).
    pub num_ppo_epochs: usize,
    /// Minibatches per pass; each is one optimizer step (default 1).
    pub num_mini_batches: usize,
    pub cliprange: f64,
    pub cliprange_value: f64,
    pub vf_coef: f64,
    pub gamma: f64,
    pub lam: f64,
    /// Sampling temperature of rollouts; log-probs use the same temperature (default 0.7).
    pub temperature: f64,
    /// New tokens per response at most (default 64).
    pub response_length: usize,
    /// Write sample responses to samples.jsonl every N rollouts (default 5; 0 = never).
    pub sample_every: usize,
    /// Held-out prompts scored with greedy responses at each evaluation (default 32).
    pub eval_prompts: usize,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            rule: None,
            reward_model: None,
            rule_weight: 1.0,
            reward_model_weight: 1.0,
            missing_eos_penalty: 1.0,
            kl_coef: 0.05,
            kl_estimator: KlEstimator::K1,
            target_kl: None,
            kl_horizon: 10000.0,
            rollout_batch_size: 16,
            num_ppo_epochs: 4,
            num_mini_batches: 1,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            temperature: 0.7,
            response_length: 64,
            sample_every: 5,
            eval_prompts: 32,
        }
    }
}

impl PpoConfig {
    /// [`PpoConfig::validate`] plus what PPO needs of `[train]`.
    pub fn validate_with(
        &self,
        train: &crate::engine::TrainConfig,
    ) -> std::result::Result<(), String> {
        self.validate()?;
        if train.max_steps.is_none() {
            return Err("method `ppo` needs `train.max_steps` (optimizer steps; each rollout gives num_ppo_epochs × num_mini_batches of them)".into());
        }
        if train.gradient_accumulation_steps != 1 {
            return Err("method `ppo` takes its minibatches from `num_mini_batches`; leave `train.gradient_accumulation_steps` at 1".into());
        }
        Ok(())
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.rule.is_none() && self.reward_model.is_none() {
            return Err("[method] ppo needs a reward: `rule = \"safety\"|\"uncensor\"` and/or `reward_model = DIR`".into());
        }
        if self.rollout_batch_size == 0 || self.num_ppo_epochs == 0 || self.num_mini_batches == 0 {
            return Err("[method] rollout_batch_size, num_ppo_epochs and num_mini_batches must be at least 1".into());
        }
        if self.num_mini_batches > self.rollout_batch_size {
            return Err("[method] num_mini_batches must not exceed rollout_batch_size".into());
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err("[method] temperature must be > 0 (rollouts sample)".into());
        }
        Ok(())
    }
}

pub const VALUE_HEAD: &str = "v_head.weight";

/// What PPO is built from, by name (the run stage fills it from the run file).
pub struct PpoParts<B: AutodiffBackend> {
    pub cfg: PpoConfig,
    pub train: Vec<Prompt>,
    pub eval: Vec<Prompt>,
    /// Decodes responses.
    pub bundle: TokenizerBundle,
    /// Encodes (prompt, response) exchanges for the reward model as its training did.
    pub encoder: ChatEncoder,
    pub detector: RefusalDetector,
    pub reward_model: Option<RewardModel<B::InnerBackend>>,
    pub pad_id: u32,
    /// Seeds prompt order, sampling and minibatches.
    pub seed: u64,
    /// Where sample responses go (`samples.jsonl`), if anywhere.
    pub samples: Option<PathBuf>,
    /// The model's hidden size: the value head is `[1, hidden]`.
    pub hidden: usize,
}

pub struct Ppo<B: AutodiffBackend> {
    pub parts: PpoParts<B>,
    eos_ids: Vec<u32>,
    head: Param<Tensor<B, 2>>,
    kl_coef: f64,
    rollout: Option<Rollout>,
    minibatch: Vec<usize>,
    rollouts_done: usize,
    pending: Metrics,
    started: Option<Instant>,
    rollout_seconds: f64,
}

impl<B: AutodiffBackend> Ppo<B> {
    /// PPO with a zero value head (TRL's), on `device`.
    pub fn new(parts: PpoParts<B>, device: &B::Device) -> Self {
        let head = Tensor::<B, 2>::zeros([1, parts.hidden], device).require_grad();
        Self {
            eos_ids: parts.bundle.eos_ids(),
            kl_coef: parts.cfg.kl_coef,
            head: Param::from_tensor(head),
            parts,
            rollout: None,
            minibatch: Vec::new(),
            rollouts_done: 0,
            pending: Metrics::new(),
            started: None,
            rollout_seconds: 0.0,
        }
    }

    /// Steps per rollout: every minibatch of every PPO epoch.
    pub fn steps_per_rollout(&self) -> usize {
        self.parts.cfg.num_ppo_epochs * self.parts.cfg.num_mini_batches
    }

    /// Samples and prepares the rollout of `step` with the current policy; returns its metrics.
    fn new_rollout(&mut self, model: &Llama<B::InnerBackend>, step: usize) -> Result<Metrics> {
        let t = Instant::now();
        let k = step / self.steps_per_rollout();
        let (cfg, n) = (&self.parts.cfg, self.parts.train.len());
        let r = cfg.rollout_batch_size;
        let order = permutation(n, self.parts.seed);
        let prompts: Vec<&Prompt> = (0..r)
            .map(|i| &self.parts.train[order[(k * r + i) % n]])
            .collect();
        let head = self.head.val().inner();
        let seed = self.parts.seed.wrapping_add(k as u64);
        let (ro, mut metrics) = rollout::collect(
            model,
            &head,
            &prompts,
            &self.scorer(),
            &self.eos_ids,
            self.kl_coef,
            seed,
        )?;
        self.rollout_seconds += t.elapsed().as_secs_f64();
        // Adaptive KL (Ziegler et al. 2019): move kl_coef towards the target, at most ±20% of the error.
        if let Some(target) = cfg.target_kl {
            let kl = metrics.get("objective/kl").copied().unwrap_or(0.0);
            let err = (kl / target - 1.0).clamp(-0.2, 0.2);
            self.kl_coef *= 1.0 + err * r as f64 / cfg.kl_horizon;
        }
        metrics.insert("objective/kl_coef".into(), self.kl_coef);
        let elapsed = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        metrics.insert(
            "time/rollout_share".into(),
            self.rollout_seconds / elapsed.max(1e-9),
        );
        let every = cfg.sample_every;
        if every > 0 && self.rollouts_done.is_multiple_of(every) {
            if let Some(path) = &self.parts.samples {
                rollout::write_samples(path, step, &ro)?;
            }
        }
        self.rollouts_done += 1;
        self.rollout = Some(ro);
        Ok(metrics)
    }

    fn scorer(&self) -> rollout::Scorer<'_, B::InnerBackend> {
        let p = &self.parts;
        rollout::Scorer {
            cfg: &p.cfg,
            bundle: &p.bundle,
            encoder: &p.encoder,
            detector: &p.detector,
            reward_model: p.reward_model.as_ref(),
            pad_id: p.pad_id,
        }
    }
}

fn tensor1<B: Backend>(v: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

impl<B: AutodiffBackend> Method<B> for Ppo<B> {
    type Batch = Vec<usize>;

    fn name(&self) -> &'static str {
        "ppo"
    }

    fn train_len(&self) -> usize {
        self.parts.train.len()
    }

    /// The current minibatch of the rollout (the engine's row choice does not apply to PPO).
    fn batch(&self, _rows: &[usize]) -> Vec<usize> {
        self.minibatch.clone()
    }

    fn units(&self, batch: &Vec<usize>) -> f64 {
        let r = self
            .rollout
            .as_ref()
            .expect("a rollout before the first step");
        batch
            .iter()
            .map(|&i| r.seqs[i].response.len())
            .sum::<usize>() as f64
    }

    fn tokens(&self, batch: &Vec<usize>) -> usize {
        let r = self
            .rollout
            .as_ref()
            .expect("a rollout before the first step");
        batch
            .iter()
            .map(|&i| r.seqs[i].prompt.len() + r.seqs[i].response.len())
            .sum()
    }

    fn loss(&self, model: &Llama<B>, batch: &Vec<usize>) -> (Tensor<B, 1>, Metrics) {
        let r = self
            .rollout
            .as_ref()
            .expect("a rollout before the first step");
        let device = model.model.embed_tokens.device();
        let seqs: Vec<&rollout::Seq> = batch.iter().map(|&i| &r.seqs[i]).collect();
        // No LoRA dropout: the first epoch's probability ratio must be exactly 1 (TRL turns dropout off).
        let cfg = &self.parts.cfg;
        let fwd = rollout::response_forward(
            model,
            &seqs,
            Adapters::OnWithoutDropout,
            cfg.temperature,
            Some(self.head.val()),
            false,
        );
        let gather = |f: &dyn Fn(&rollout::Seq) -> &Vec<f64>| -> Vec<f32> {
            seqs.iter()
                .flat_map(|s| f(s).iter().map(|&x| x as f32))
                .collect()
        };
        let old_logp = gather(&|s| &s.logp);
        let old_v = gather(&|s| &s.values);
        let adv = gather(&|s| &s.advantages);
        let ret = gather(&|s| &s.returns);
        let values = fwd.values.expect("value head given");
        let pg = policy_loss(
            fwd.logp.clone(),
            tensor1(old_logp.clone(), &device),
            tensor1(adv, &device),
            cfg.cliprange,
        );
        let vf = value_loss(
            values.clone(),
            tensor1(old_v.clone(), &device),
            tensor1(ret, &device),
            cfg.cliprange_value,
        );
        let mut m = Metrics::new();
        let (new_logp, new_v) = (host_f32(fwd.logp.clone()), host_f32(values.clone()));
        let eps = cfg.cliprange;
        for ((n, o), (v, ov)) in new_logp.iter().zip(&old_logp).zip(new_v.iter().zip(&old_v)) {
            let ratio = ((n - o) as f64).exp();
            *m.entry("policy/clipfrac".into()).or_default() +=
                f64::from(u8::from((ratio - 1.0).abs() > eps));
            *m.entry("policy/approxkl".into()).or_default() += 0.5 * ((n - o) as f64).powi(2);
            *m.entry("val/clipfrac".into()).or_default() +=
                f64::from(u8::from(((v - ov) as f64).abs() > cfg.cliprange_value));
        }
        let pg_sum = pg.sum();
        let vf_sum = vf.sum();
        m.insert("loss/policy".into(), host_f32(pg_sum.clone())[0] as f64);
        m.insert("loss/value".into(), host_f32(vf_sum.clone())[0] as f64);
        (pg_sum + vf_sum.mul_scalar(cfg.vf_coef), m)
    }

    fn heads(&self) -> Vec<(String, Param<Tensor<B, 2>>)> {
        vec![(VALUE_HEAD.into(), self.head.clone())]
    }

    fn set_head(&mut self, name: &str, value: Tensor<B::InnerBackend, 2>) {
        if name == VALUE_HEAD {
            self.head = Param::initialized(self.head.id, Tensor::from_inner(value).require_grad());
        }
    }

    fn prepare_step(&mut self, model: &Llama<B::InnerBackend>, step: usize) -> Result<()> {
        let first = self.started.is_none();
        self.started.get_or_insert_with(Instant::now);
        // The held-out score before any update, so evaluations during training have a baseline.
        let before: Metrics = if first && step == 0 {
            Method::<B>::evaluate(self, model)
                .into_iter()
                .map(|(k, v)| (format!("{k}_before"), v))
                .collect()
        } else {
            Metrics::new()
        };
        let per = self.steps_per_rollout();
        let phase = step % per;
        if phase == 0 || self.rollout.is_none() {
            let mut metrics = self.new_rollout(model, step)?;
            metrics.extend(before);
            self.pending = metrics;
        }
        // Minibatches: a fresh seeded shuffle of the rollout per PPO epoch.
        let mbs = self.parts.cfg.num_mini_batches;
        let (epoch, mb) = (phase / mbs, phase % mbs);
        let n = self.rollout.as_ref().map_or(0, |r| r.seqs.len());
        let order = permutation(
            n,
            self.parts.seed ^ ((step / per) as u64) << 8 ^ epoch as u64,
        );
        let size = n.div_ceil(mbs);
        self.minibatch = order.into_iter().skip(mb * size).take(size).collect();
        Ok(())
    }

    fn step_metrics(&mut self) -> Metrics {
        std::mem::take(&mut self.pending)
    }

    fn evaluate(&self, model: &Llama<B::InnerBackend>) -> Metrics {
        let prompts: Vec<&Prompt> = self
            .parts
            .eval
            .iter()
            .take(self.parts.cfg.eval_prompts)
            .collect();
        if prompts.is_empty() {
            return Metrics::new();
        }
        rollout::evaluate(model, &prompts, &self.scorer(), &self.eos_ids).unwrap_or_default()
    }
}

/// Response-token log-probs of (prompt, response) pairs, for tests of the reference pass.
pub fn rollout_forward_for_tests<B: Backend>(
    model: &Llama<B>,
    pairs: &[(Vec<u32>, Vec<u32>)],
    adapters: Adapters,
    temperature: f64,
) -> Vec<f32> {
    let seqs: Vec<rollout::Seq> = pairs
        .iter()
        .map(|(p, r)| rollout::Seq {
            prompt: p.clone(),
            response: r.clone(),
            ..Default::default()
        })
        .collect();
    let refs: Vec<&rollout::Seq> = seqs.iter().collect();
    let f = rollout::response_forward(model, &refs, adapters, temperature, None, false);
    host_f32(f.logp)
}

/// Where samples go.
pub fn samples_path(out: &Path) -> PathBuf {
    out.join("samples.jsonl")
}
