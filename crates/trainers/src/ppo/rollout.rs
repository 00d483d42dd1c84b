//! The rollout phase of PPO: sampling responses, scoring them, and the per-token quantities the updates
//! need (old log-probs, reference log-probs, values, advantages, returns).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burnish_core::backend::host_f64;
use burnish_core::{
    burn, generate, Adapters, FinishReason, GenerationConfig, Llama, Message, TokenizerBundle,
};
use burnish_data::{ChatEncoder, RefusalDetector};
use serde_json::json;

use super::math::{gae, kl_estimate, token_rewards, whiten};
use super::{PpoConfig, RuleGoal};
use crate::logps::continuation_hidden;
use crate::method::Metrics;
use crate::{Error, Result};

/// A training or evaluation prompt: its messages, rendered ids, and whether it is harmful.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub messages: Vec<Message>,
    pub ids: Vec<u32>,
    pub harmful: Option<bool>,
}

/// One sampled response and its per-token quantities.
#[derive(Clone, Debug, Default)]
pub struct Seq {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
    pub prompt_text: String,
    pub text: String,
    pub score: f64,
    pub logp: Vec<f64>,
    pub ref_logp: Vec<f64>,
    pub values: Vec<f64>,
    pub advantages: Vec<f64>,
    pub returns: Vec<f64>,
}

pub struct Rollout {
    pub seqs: Vec<Seq>,
}

/// A reward model from `method = "reward"`: the base with its adapter, and the score head.
pub struct RewardModel<B: Backend> {
    pub model: Llama<B>,
    pub head: Tensor<B, 2>,
}

pub struct Scorer<'a, B: Backend> {
    pub cfg: &'a PpoConfig,
    pub bundle: &'a TokenizerBundle,
    /// Encodes (prompt, response) exchanges for the reward model as its training did.
    pub encoder: &'a ChatEncoder,
    pub detector: &'a RefusalDetector,
    pub reward_model: Option<&'a RewardModel<B>>,
    pub pad_id: u32,
}

/// What [`Scorer::scores`] returns, one entry per response.
pub struct Scores {
    /// The PPO score: weighted rule and reward-model scores minus the missing-EOS penalty.
    pub total: Vec<f64>,
    pub refused: Vec<bool>,
    /// The reward model's own scores (unweighted, no penalty), when there is one.
    pub reward_model: Option<Vec<f64>>,
}

impl<B: Backend> Scorer<'_, B> {
    /// Scores: rule and/or reward model (weighted), minus the missing-EOS penalty. Also whether each
    /// response refuses, and the reward model's own scores (unweighted, no penalty) when there is one,
    /// so a rising score can be told apart from responses that merely learned to stop.
    pub fn scores(&self, prompts: &[&Prompt], texts: &[String], eos: &[bool]) -> Result<Scores> {
        let refused: Vec<bool> = texts.iter().map(|t| self.detector.is_refusal(t)).collect();
        let mut s = vec![0.0; texts.len()];
        let mut rm_scores = None;
        if let Some(goal) = self.cfg.rule {
            for (i, p) in prompts.iter().enumerate() {
                let want = goal == RuleGoal::Safety && p.harmful == Some(true);
                s[i] += self.cfg.rule_weight * if refused[i] == want { 1.0 } else { -1.0 };
            }
        }
        if let Some(rm) = self.reward_model {
            let exchanges: Vec<(&[Message], &str)> = prompts
                .iter()
                .zip(texts)
                .map(|(p, t)| (&p.messages[..], t.as_str()))
                .collect();
            let scores = crate::reward::score_exchanges(
                &rm.model,
                &rm.head,
                self.encoder,
                &exchanges,
                self.pad_id,
            )?;
            let scores: Vec<f64> = scores.into_iter().map(f64::from).collect();
            for (x, r) in s.iter_mut().zip(&scores) {
                *x += self.cfg.reward_model_weight * r;
            }
            rm_scores = Some(scores);
        }
        for (x, &e) in s.iter_mut().zip(eos) {
            if !e {
                *x -= self.cfg.missing_eos_penalty;
            }
        }
        Ok(Scores {
            total: s,
            refused,
            reward_model: rm_scores,
        })
    }
}

/// Log-probs (at `temperature`) of each response token, values (with a head), and per-token entropy, from
/// one teacher-forced forward of a right-padded batch.
pub struct Forward<B: Backend> {
    pub logp: Tensor<B, 1>,
    pub values: Option<Tensor<B, 1>>,
    pub entropy: Vec<f64>,
}

pub fn response_forward<B: Backend>(
    model: &Llama<B>,
    seqs: &[&Seq],
    adapters: Adapters,
    temperature: f64,
    head: Option<Tensor<B, 2>>,
    entropy: bool,
) -> Forward<B> {
    let device = model.model.embed_tokens.device();
    let pairs: Vec<(&[u32], &[u32])> = seqs
        .iter()
        .map(|s| (&s.prompt[..], &s.response[..]))
        .collect();
    let (picked, _) = continuation_hidden(model, &pairs, adapters);
    let targets: Vec<i64> = seqs
        .iter()
        .flat_map(|s| s.response.iter().map(|&t| t as i64))
        .collect();
    let m = targets.len();
    let logits = model
        .logits(picked.clone().unsqueeze_dim::<3>(0))
        .squeeze_dim::<2>(0)
        .div_scalar(temperature);
    let lp = log_softmax(logits, 1);
    let ent = if entropy {
        host_f64((lp.clone().exp() * lp.clone()).sum_dim(1).neg())
    } else {
        Vec::new()
    };
    let t = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [m, 1]), &device);
    let logp = lp.gather(1, t).squeeze_dim::<1>(1);
    let values = head.map(|w| picked.matmul(w.transpose()).squeeze_dim::<1>(1));
    Forward {
        logp,
        values,
        entropy: ent,
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The share of true entries.
fn share(v: &[bool]) -> f64 {
    v.iter().filter(|&&x| x).count() as f64 / v.len().max(1) as f64
}

/// Splits a flat per-token vector back into per-sequence vectors.
fn split(flat: &[f64], seqs: &[&mut Seq]) -> Vec<Vec<f64>> {
    let mut out = Vec::with_capacity(seqs.len());
    let mut at = 0;
    for s in seqs {
        out.push(flat[at..at + s.response.len()].to_vec());
        at += s.response.len();
    }
    out
}

/// Samples, scores and prepares one rollout with the current policy (`model`, adapters on) and value head.
pub fn collect<B: Backend>(
    model: &Llama<B>,
    head: &Tensor<B, 2>,
    prompts: &[&Prompt],
    scorer: &Scorer<'_, B>,
    eos_ids: &[u32],
    kl_coef: f64,
    seed: u64,
) -> Result<(Rollout, Metrics)> {
    let t = Instant::now();
    let (mut seqs, sampled) = sample(model, prompts, scorer, eos_ids, seed)?;
    let entropy = token_passes(model, head, &mut seqs, scorer.cfg.temperature);
    let kl_sums = advantages(&mut seqs, scorer.cfg, kl_coef);
    let mut m = rollout_metrics(&seqs, &sampled, &kl_sums, &entropy, kl_coef);
    m.insert("time/rollout_s".into(), t.elapsed().as_secs_f64());
    Ok((Rollout { seqs }, m))
}

/// What sampling a rollout measured besides the sequences.
struct Sampled {
    scores: Scores,
    eos: Vec<bool>,
    seconds: f64,
}

/// Sampled responses to `prompts` (temperature `cfg.temperature`, seeded), decoded and scored.
fn sample<B: Backend>(
    model: &Llama<B>,
    prompts: &[&Prompt],
    scorer: &Scorer<'_, B>,
    eos_ids: &[u32],
    seed: u64,
) -> Result<(Vec<Seq>, Sampled)> {
    let cfg = scorer.cfg;
    let gen_cfg = GenerationConfig {
        max_new_tokens: cfg.response_length,
        temperature: cfg.temperature as f32,
        top_k: 0,
        top_p: 1.0,
        seed,
        eos_ids: eos_ids.to_vec(),
        stop_strings: vec![],
        pad_id: scorer.pad_id,
    };
    let t = Instant::now();
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let gens = generate(model, &ids, &gen_cfg, None)?;
    let seconds = t.elapsed().as_secs_f64();
    let tok = &scorer.bundle.tokenizer;
    let texts = gens
        .iter()
        .map(|g| Ok(tok.decode(&g.new_ids, true)?.trim().to_string()))
        .collect::<Result<Vec<String>>>()?;
    let eos: Vec<bool> = gens.iter().map(|g| g.finish == FinishReason::Eos).collect();
    let scores = scorer.scores(prompts, &texts, &eos)?;
    let seqs: Vec<Seq> = prompts
        .iter()
        .zip(gens)
        .zip(texts.into_iter().zip(&scores.total))
        .map(|((p, g), (text, &score))| Seq {
            prompt: p.ids.clone(),
            response: g.new_ids,
            prompt_text: p
                .messages
                .last()
                .map(|m| m.content.clone())
                .unwrap_or_default(),
            text,
            score,
            ..Default::default()
        })
        .collect();
    if seqs.iter().any(|s| s.response.is_empty()) {
        return Err(Error::EmptyResponse);
    }
    let sampled = Sampled {
        scores,
        eos,
        seconds,
    };
    Ok((seqs, sampled))
}

/// Per-token log-probs of the policy and the reference (adapters off) and the values, stored in each
/// sequence; returns the policy's per-token entropy.
fn token_passes<B: Backend>(
    model: &Llama<B>,
    head: &Tensor<B, 2>,
    seqs: &mut [Seq],
    temperature: f64,
) -> Vec<f64> {
    let mut entropy = Vec::new();
    for chunk in seqs.chunks_mut(8) {
        let refs: Vec<&Seq> = chunk.iter().collect();
        let pol = response_forward(
            model,
            &refs,
            Adapters::OnWithoutDropout,
            temperature,
            Some(head.clone()),
            true,
        );
        let reference = response_forward(model, &refs, Adapters::Off, temperature, None, false);
        let (lp, rlp) = (host_f64(pol.logp), host_f64(reference.logp));
        let vals = host_f64(pol.values.expect("head given"));
        entropy.extend(pol.entropy);
        let holders: Vec<&mut Seq> = chunk.iter_mut().collect();
        let (lp, rlp, vals) = (
            split(&lp, &holders),
            split(&rlp, &holders),
            split(&vals, &holders),
        );
        for (((s, a), b), c) in holders.into_iter().zip(lp).zip(rlp).zip(vals) {
            s.logp = a;
            s.ref_logp = b;
            s.values = c;
        }
    }
    entropy
}

/// Per-token rewards (KL penalty plus the score), GAE advantages whitened over the rollout, and
/// returns, stored in each sequence; returns each sequence's summed KL.
fn advantages(seqs: &mut [Seq], cfg: &PpoConfig, kl_coef: f64) -> Vec<f64> {
    let mut advs = Vec::with_capacity(seqs.len());
    let mut kl_sums = Vec::with_capacity(seqs.len());
    for s in seqs.iter_mut() {
        let kl: Vec<f64> = s
            .logp
            .iter()
            .zip(&s.ref_logp)
            .map(|(&a, &b)| kl_estimate(a, b, cfg.kl_estimator))
            .collect();
        kl_sums.push(kl.iter().sum::<f64>());
        let rewards = token_rewards(&kl, kl_coef, s.score);
        let (adv, ret) = gae(&rewards, &s.values, cfg.gamma, cfg.lam);
        s.returns = ret;
        advs.push(adv);
    }
    whiten(&mut advs);
    for (s, a) in seqs.iter_mut().zip(advs) {
        s.advantages = a;
    }
    kl_sums
}

/// TRL's rollout metrics.
fn rollout_metrics(
    seqs: &[Seq],
    sampled: &Sampled,
    kl_sums: &[f64],
    entropy: &[f64],
    kl_coef: f64,
) -> Metrics {
    let scores = &sampled.scores.total;
    let n = seqs.len() as f64;
    let new_tokens: usize = seqs.iter().map(|s| s.response.len()).sum();
    let mut m = Metrics::new();
    m.insert("objective/scores".into(), mean(scores));
    if let Some(r) = &sampled.scores.reward_model {
        m.insert("objective/reward_model_score".into(), mean(r));
    }
    m.insert("objective/kl".into(), mean(kl_sums));
    let rlhf: f64 = scores
        .iter()
        .zip(kl_sums)
        .map(|(s, k)| s - kl_coef * k)
        .sum();
    m.insert("objective/rlhf_reward".into(), rlhf / n);
    m.insert("objective/refusals".into(), share(&sampled.scores.refused));
    m.insert("policy/entropy".into(), mean(entropy));
    m.insert("response_length".into(), new_tokens as f64 / n);
    m.insert("eos_fraction".into(), share(&sampled.eos));
    m.insert(
        "rollout/tokens_per_s".into(),
        new_tokens as f64 / sampled.seconds.max(1e-9),
    );
    m.insert("time/generation_s".into(), sampled.seconds);
    m
}

/// Greedy responses to held-out prompts and their mean score (and refusal rates by prompt kind).
pub fn evaluate<B: Backend>(
    model: &Llama<B>,
    prompts: &[&Prompt],
    scorer: &Scorer<'_, B>,
    eos_ids: &[u32],
) -> Result<Metrics> {
    let cfg = GenerationConfig {
        max_new_tokens: scorer.cfg.response_length,
        eos_ids: eos_ids.to_vec(),
        pad_id: scorer.pad_id,
        ..Default::default() // greedy
    };
    let mut texts = Vec::new();
    let mut eos = Vec::new();
    for chunk in prompts.chunks(16) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
        for g in generate(model, &ids, &cfg, None)? {
            eos.push(g.finish == FinishReason::Eos);
            texts.push(
                scorer
                    .bundle
                    .tokenizer
                    .decode(&g.new_ids, true)?
                    .trim()
                    .to_string(),
            );
        }
    }
    let Scores {
        total: scores,
        refused,
        reward_model: rm_scores,
    } = scorer.scores(prompts, &texts, &eos)?;
    let mut m = Metrics::new();
    m.insert("eval_score".into(), mean(&scores));
    if let Some(r) = &rm_scores {
        m.insert("eval_reward_model_score".into(), mean(r));
    }
    m.insert("eval_eos_fraction".into(), share(&eos));
    for (name, want) in [("harmful", true), ("harmless", false)] {
        let idx: Vec<usize> = (0..prompts.len())
            .filter(|&i| prompts[i].harmful == Some(want))
            .collect();
        if !idx.is_empty() {
            let r = idx.iter().filter(|&&i| refused[i]).count() as f64 / idx.len() as f64;
            m.insert(format!("eval_refusal_rate_{name}"), r);
        }
    }
    Ok(m)
}

/// Appends the first few responses of a rollout to `path` (JSON Lines).
pub fn write_samples(path: &Path, step: usize, r: &Rollout) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::Io(path.to_path_buf(), e))?;
    for s in r.seqs.iter().take(4) {
        let line =
            json!({"step": step, "prompt": s.prompt_text, "response": s.text, "score": s.score});
        writeln!(f, "{line}").map_err(|e| Error::Io(path.to_path_buf(), e))?;
    }
    Ok(())
}
