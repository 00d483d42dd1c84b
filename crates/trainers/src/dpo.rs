//! Direct preference optimisation (Rafailov et al. 2023), computed as TRL 1.16 does. Sequence
//! log-probabilities are summed over completion tokens only (the data crate's masks), chosen and rejected
//! in one batched forward. The reference is the same weights with the LoRA adapters off, so one model is
//! in memory; or it is computed once before training and cached on disk (`precompute_ref_log_probs`).

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::activation::{log_sigmoid, relu};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use burnish_core::backend::host_f32;
use burnish_core::burn;
use burnish_core::io::Fnv64;
use burnish_core::{Adapters, Llama};
use burnish_data::{Batch, Packed, TokenizedExample, TokenizedPair, IGNORE_INDEX};
use serde::{Deserialize, Serialize};

use crate::logps::sequence_logps;
use crate::method::{eval_means, Method, Metrics};
use crate::progress::Progress;
use crate::Result;

/// `[method]` with `name = "dpo"`. Names and defaults follow TRL's `DPOConfig`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// How far the policy may move from the reference: larger stays closer (default 0.1). For `ipo` it is
    /// the regulariser τ.
    pub beta: f64,
    /// `sigmoid` (default, the DPO paper), `hinge` (SLiC), `ipo`, `robust` (noisy labels), `sft` (NLL of
    /// the chosen response), or a list of them summed with `loss_weights` (`["sigmoid", "sft"]` is RPO).
    pub loss_type: LossTypes,
    /// Weights of the `loss_type` list (default: 1 each).
    pub loss_weights: Option<Vec<f64>>,
    /// `robust` only: the assumed share of flipped preference labels, in [0, 0.5) (default 0).
    pub label_smoothing: f64,
    /// Compute the reference log-probs once over the data set before training, cached in the output
    /// directory (`ref_logps.json`), instead of a reference forward per step (default false).
    pub precompute_ref_log_probs: bool,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: LossTypes::One(DpoLoss::Sigmoid),
            loss_weights: None,
            label_smoothing: 0.0,
            precompute_ref_log_probs: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    #[default]
    Sigmoid,
    Hinge,
    Ipo,
    Robust,
    Sft,
}

/// One loss type or a list, as TRL's `loss_type`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum LossTypes {
    One(DpoLoss),
    Many(Vec<DpoLoss>),
}

impl LossTypes {
    pub fn list(&self) -> Vec<DpoLoss> {
        match self {
            LossTypes::One(l) => vec![*l],
            LossTypes::Many(v) => v.clone(),
        }
    }
}

impl DpoConfig {
    /// Range checks serde cannot make; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(format!("[method] beta = {} must be > 0", self.beta));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(format!(
                "[method] label_smoothing = {} must be in [0, 0.5)",
                self.label_smoothing
            ));
        }
        let types = self.loss_type.list();
        if types.is_empty() {
            return Err("[method] loss_type is an empty list".into());
        }
        if let Some(w) = &self.loss_weights {
            if w.len() != types.len() {
                return Err(format!(
                    "[method] loss_weights has {} entries for {} loss types",
                    w.len(),
                    types.len()
                ));
            }
        }
        if self.label_smoothing > 0.0 && !types.contains(&DpoLoss::Robust) {
            return Err(format!(
                "[method] label_smoothing = {} is only used by loss_type = \"robust\"",
                self.label_smoothing
            ));
        }
        Ok(())
    }
}

/// −log σ(βΔ) per pair, Δ = (log π − log π_ref)(chosen) − (log π − log π_ref)(rejected).
pub fn sigmoid_loss<B: Backend>(delta: Tensor<B, 1>, beta: f64) -> Tensor<B, 1> {
    log_sigmoid(delta.mul_scalar(beta)).neg()
}

/// relu(1 − βΔ) per pair.
pub fn hinge_loss<B: Backend>(delta: Tensor<B, 1>, beta: f64) -> Tensor<B, 1> {
    relu(delta.mul_scalar(-beta).add_scalar(1.0))
}

/// (Δ̄ − 1/(2β))² per pair, with Δ̄ from per-token averaged log-ratios.
pub fn ipo_loss<B: Backend>(avg_delta: Tensor<B, 1>, beta: f64) -> Tensor<B, 1> {
    avg_delta.sub_scalar(1.0 / (2.0 * beta)).powi_scalar(2)
}

/// [−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)] / (1 − 2ε) per pair: unbiased under a label-flip rate ε.
pub fn robust_loss<B: Backend>(delta: Tensor<B, 1>, beta: f64, eps: f64) -> Tensor<B, 1> {
    let x = delta.mul_scalar(beta);
    (log_sigmoid(x.clone()).mul_scalar(-(1.0 - eps)) + log_sigmoid(x.neg()).mul_scalar(eps))
        .div_scalar(1.0 - 2.0 * eps)
}

/// Summed completion log-probs of a batch of pairs under the policy and the reference, `[pairs]` each,
/// with the completion lengths (for IPO's per-token average).
pub struct PairLogps<B: Backend> {
    pub chosen: Tensor<B, 1>,
    pub rejected: Tensor<B, 1>,
    pub ref_chosen: Tensor<B, 1>,
    pub ref_rejected: Tensor<B, 1>,
    pub chosen_len: Tensor<B, 1>,
    pub rejected_len: Tensor<B, 1>,
}

/// Mean negative log-likelihood per chosen token over the batch, repeated for each pair (TRL's `sft`
/// loss type: a batch-level token mean, so the per-pair mean equals it).
pub fn sft_loss<B: Backend>(chosen: Tensor<B, 1>, chosen_len: Tensor<B, 1>) -> Tensor<B, 1> {
    let n = chosen.dims()[0];
    let mean = chosen.sum().neg() / chosen_len.sum().clamp_min(1.0);
    mean.expand([n])
}

/// The per-pair loss of one loss type, `[pairs]`.
pub fn one_loss<B: Backend>(kind: DpoLoss, cfg: &DpoConfig, p: &PairLogps<B>) -> Tensor<B, 1> {
    let chosen = p.chosen.clone() - p.ref_chosen.clone();
    let rejected = p.rejected.clone() - p.ref_rejected.clone();
    match kind {
        DpoLoss::Sigmoid => sigmoid_loss(chosen - rejected, cfg.beta),
        DpoLoss::Hinge => hinge_loss(chosen - rejected, cfg.beta),
        DpoLoss::Robust => robust_loss(chosen - rejected, cfg.beta, cfg.label_smoothing),
        DpoLoss::Ipo => ipo_loss(
            chosen / p.chosen_len.clone().clamp_min(1.0)
                - rejected / p.rejected_len.clone().clamp_min(1.0),
            cfg.beta,
        ),
        DpoLoss::Sft => sft_loss(p.chosen.clone(), p.chosen_len.clone()),
    }
}

/// The per-pair loss of `cfg.loss_type` (a weighted sum for a list), `[pairs]`.
pub fn dpo_loss<B: Backend>(cfg: &DpoConfig, p: PairLogps<B>) -> Tensor<B, 1> {
    let types = cfg.loss_type.list();
    let mut total: Option<Tensor<B, 1>> = None;
    for (i, kind) in types.iter().enumerate() {
        let w = cfg.loss_weights.as_ref().map_or(1.0, |w| w[i]);
        let l = one_loss(*kind, cfg, &p).mul_scalar(w);
        total = Some(match total {
            Some(t) => t + l,
            None => l,
        });
    }
    total.expect("validated: at least one loss type")
}

/// Relative rounding allowance of a reward margin: f32 log-probs summed over a sequence carry errors of
/// about this share of their magnitude.
pub const TIE_TOLERANCE: f64 = 1e-5;

/// Whether chosen out-scores rejected by more than rounding. The policy and the reference take
/// different code paths (adapters on and off), so with fresh adapters (B = 0) their log-probs differ
/// in the last bits, and which bits depends on the CPU's matmul kernels: such a tie is not a win.
/// `magnitude` is the sum of the absolute log-probs behind the margin, in nats.
pub fn is_win(margin: f64, beta: f64, magnitude: f64) -> bool {
    margin > beta * TIE_TOLERANCE * magnitude.max(1.0)
}

/// TRL's logged metrics, as sums over pairs (the engine divides by the pair count): implicit rewards
/// β·(log π − log π_ref), how often chosen out-scores rejected beyond rounding ([`is_win`]), the margin,
/// and the policy log-probs.
pub fn reward_metrics(beta: f64, policy: &[f32], reference: &[f32], pairs: usize) -> Metrics {
    let mut m = Metrics::new();
    for i in 0..pairs {
        let (pc, pr) = (policy[i] as f64, policy[pairs + i] as f64);
        let (qc, qr) = (reference[i] as f64, reference[pairs + i] as f64);
        let rc = beta * (pc - qc);
        let rr = beta * (pr - qr);
        let magnitude = pc.abs() + pr.abs() + qc.abs() + qr.abs();
        *m.entry("rewards/chosen".into()).or_default() += rc;
        *m.entry("rewards/rejected".into()).or_default() += rr;
        *m.entry("rewards/accuracies".into()).or_default() +=
            f64::from(u8::from(is_win(rc - rr, beta, magnitude)));
        *m.entry("rewards/margins".into()).or_default() += rc - rr;
        *m.entry("logps/chosen".into()).or_default() += pc;
        *m.entry("logps/rejected".into()).or_default() += pr;
    }
    m
}

/// Chosen rows first, then rejected rows, of `pairs.len()` pairs.
pub struct DpoBatch {
    seqs: Batch,
    pairs: usize,
    /// Precomputed reference log-probs in row order, when `precompute_ref_log_probs` is on.
    reference: Option<Vec<f32>>,
}

#[derive(Clone)]
pub struct Dpo {
    pub cfg: DpoConfig,
    pub train: Vec<TokenizedPair>,
    pub eval: Vec<TokenizedPair>,
    pub pad_id: u32,
    pub eval_batch_size: usize,
    ref_train: Option<Vec<[f32; 2]>>,
    ref_eval: Option<Vec<[f32; 2]>>,
}

/// `prompt + completion` as one sequence whose labels are the completion's masked tokens.
fn sequence(prompt: &[u32], c: &burnish_data::Completion) -> Packed {
    let mut input_ids = prompt.to_vec();
    input_ids.extend(&c.ids);
    let mut labels = vec![IGNORE_INDEX; prompt.len()];
    labels.extend(
        c.ids
            .iter()
            .zip(&c.mask)
            .map(|(&t, &m)| if m { t as i64 } else { IGNORE_INDEX }),
    );
    Packed::single(&TokenizedExample {
        input_ids,
        labels,
        truncated: false,
        category: None,
    })
}

/// The chosen sequences of `pairs`, then the rejected ones, as one right-padded batch.
pub fn pair_rows(pairs: &[&TokenizedPair], pad_id: u32) -> Batch {
    let mut rows: Vec<Packed> = pairs
        .iter()
        .map(|p| sequence(&p.prompt_ids, &p.chosen))
        .collect();
    rows.extend(pairs.iter().map(|p| sequence(&p.prompt_ids, &p.rejected)));
    Batch::new(&rows, pad_id)
}

fn make_batch(pairs: &[&TokenizedPair], refs: Option<Vec<[f32; 2]>>, pad_id: u32) -> DpoBatch {
    DpoBatch {
        seqs: pair_rows(pairs, pad_id),
        pairs: pairs.len(),
        reference: refs.map(|r| {
            let (c, rj): (Vec<f32>, Vec<f32>) = r.iter().map(|x| (x[0], x[1])).unzip();
            c.into_iter().chain(rj).collect()
        }),
    }
}

/// The loss sum and metric sums of one batch on any backend; `reference` is `[2·pairs]` in row order.
fn pair_loss<B: Backend>(
    cfg: &DpoConfig,
    policy: Tensor<B, 1>,
    reference: Tensor<B, 1>,
    counts: &[usize],
    pairs: usize,
) -> (Tensor<B, 1>, Metrics) {
    let device = policy.device();
    let metrics = reward_metrics(
        cfg.beta,
        &host_f32(policy.clone()),
        &host_f32(reference.clone()),
        pairs,
    );
    let len = |r: std::ops::Range<usize>| {
        let v: Vec<f32> = counts[r].iter().map(|&c| c as f32).collect();
        Tensor::<B, 1>::from_data(TensorData::new(v, [pairs]), &device)
    };
    let p = PairLogps {
        chosen: policy.clone().slice(0..pairs),
        rejected: policy.slice(pairs..2 * pairs),
        ref_chosen: reference.clone().slice(0..pairs),
        ref_rejected: reference.slice(pairs..2 * pairs),
        chosen_len: len(0..pairs),
        rejected_len: len(pairs..2 * pairs),
    };
    (dpo_loss(cfg, p).sum(), metrics)
}

impl Dpo {
    pub fn new(
        cfg: DpoConfig,
        train: Vec<TokenizedPair>,
        eval: Vec<TokenizedPair>,
        pad_id: u32,
        eval_batch_size: usize,
    ) -> Self {
        Self {
            cfg,
            train,
            eval,
            pad_id,
            eval_batch_size: eval_batch_size.max(1),
            ref_train: None,
            ref_eval: None,
        }
    }

    /// Reference log-probs for every pair, from `cache` when its key matches (same data, same model),
    /// else computed with the adapters off and written there.
    pub fn precompute_reference<B: Backend>(
        &mut self,
        model: &Llama<B>,
        cache: &Path,
        model_id: &str,
        progress: &dyn Progress,
    ) -> Result<()> {
        let key = format!("{:016x}", fingerprint(model_id, &self.train, &self.eval));
        if let Ok(text) = std::fs::read_to_string(cache) {
            if let Ok(c) = serde_json::from_str::<RefCache>(&text) {
                if c.key == key
                    && c.train.len() == self.train.len()
                    && c.eval.len() == self.eval.len()
                {
                    progress.message(&format!(
                        "dpo: reference log-probs from {}",
                        cache.display()
                    ));
                    self.ref_train = Some(c.train);
                    self.ref_eval = Some(c.eval);
                    return Ok(());
                }
            }
        }
        let started = std::time::Instant::now();
        let train = self.reference_of(model, &self.train);
        let eval = self.reference_of(model, &self.eval);
        progress.message(&format!(
            "dpo: reference log-probs of {} pairs in {:.1}s → {}",
            train.len() + eval.len(),
            started.elapsed().as_secs_f64(),
            cache.display()
        ));
        let c = RefCache { key, train, eval };
        burnish_core::io::write_atomic(
            cache,
            serde_json::to_string(&c)
                .expect("numbers and strings serialise")
                .as_bytes(),
        )?;
        self.ref_train = Some(c.train);
        self.ref_eval = Some(c.eval);
        Ok(())
    }

    fn reference_of<B: Backend>(&self, model: &Llama<B>, pairs: &[TokenizedPair]) -> Vec<[f32; 2]> {
        let mut out = Vec::with_capacity(pairs.len());
        let all: Vec<&TokenizedPair> = pairs.iter().collect();
        for chunk in all.chunks(self.eval_batch_size) {
            let b = make_batch(chunk, None, self.pad_id);
            let v = host_f32(sequence_logps(model, &b.seqs, Adapters::Off).0);
            out.extend((0..b.pairs).map(|i| [v[i], v[b.pairs + i]]));
        }
        out
    }

    fn refs(cache: &Option<Vec<[f32; 2]>>, idx: &[usize]) -> Option<Vec<[f32; 2]>> {
        cache.as_ref().map(|c| idx.iter().map(|&i| c[i]).collect())
    }
}

#[derive(Serialize, Deserialize)]
struct RefCache {
    key: String,
    train: Vec<[f32; 2]>,
    eval: Vec<[f32; 2]>,
}

/// A hash of the model's identity and every token of the data: a cache hit means the same numbers.
fn fingerprint(model_id: &str, train: &[TokenizedPair], eval: &[TokenizedPair]) -> u64 {
    let mut h = Fnv64::new();
    h.write(model_id.as_bytes());
    for p in train.iter().chain(eval) {
        for part in [&p.prompt_ids, &p.chosen.ids, &p.rejected.ids] {
            h.write(&(part.len() as u32).to_le_bytes());
            for t in part.iter() {
                h.write(&t.to_le_bytes());
            }
        }
        for m in [&p.chosen.mask, &p.rejected.mask] {
            h.write(&m.iter().map(|&b| b as u8).collect::<Vec<u8>>());
        }
    }
    h.write(&(train.len() as u64).to_le_bytes());
    h.finish()
}

impl<B: AutodiffBackend> Method<B> for Dpo {
    type Batch = DpoBatch;

    fn name(&self) -> &'static str {
        "dpo"
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn batch(&self, rows: &[usize]) -> DpoBatch {
        let pairs: Vec<&TokenizedPair> = rows.iter().map(|&i| &self.train[i]).collect();
        make_batch(&pairs, Self::refs(&self.ref_train, rows), self.pad_id)
    }

    fn units(&self, batch: &DpoBatch) -> f64 {
        batch.pairs as f64
    }

    fn tokens(&self, batch: &DpoBatch) -> usize {
        batch.seqs.segment_ids.iter().filter(|&&s| s != 0).count()
    }

    fn loss(&self, model: &Llama<B>, batch: &DpoBatch) -> (Tensor<B, 1>, Metrics) {
        let device = model.model.embed_tokens.device();
        // No LoRA dropout: with it the policy would differ from the reference at B = 0, and the loss
        // would not start at log 2 (TRL disables dropout in DPO too).
        let (policy, counts) = sequence_logps(model, &batch.seqs, Adapters::OnWithoutDropout);
        let reference = match &batch.reference {
            Some(r) => Tensor::from_data(TensorData::new(r.clone(), [r.len()]), &device),
            // The base model's forward carries no graph: it runs on the inner backend.
            None => {
                Tensor::from_inner(sequence_logps(&model.valid(), &batch.seqs, Adapters::Off).0)
            }
        };
        pair_loss(&self.cfg, policy, reference, &counts, batch.pairs)
    }

    fn replica(&self, _device: &B::Device) -> Option<Self> {
        Some(self.clone())
    }

    fn evaluate(&self, model: &Llama<B::InnerBackend>) -> Metrics {
        if self.eval.is_empty() {
            return Metrics::new();
        }
        let mut sums = Metrics::new();
        let mut loss = 0.0;
        let idx: Vec<usize> = (0..self.eval.len()).collect();
        for chunk in idx.chunks(self.eval_batch_size) {
            let pairs: Vec<&TokenizedPair> = chunk.iter().map(|&i| &self.eval[i]).collect();
            let b = make_batch(&pairs, Self::refs(&self.ref_eval, chunk), self.pad_id);
            let (policy, counts) = sequence_logps(model, &b.seqs, Adapters::On);
            let reference = match &b.reference {
                Some(r) => {
                    Tensor::from_data(TensorData::new(r.clone(), [r.len()]), &policy.device())
                }
                None => sequence_logps(model, &b.seqs, Adapters::Off).0,
            };
            let (l, m) = pair_loss(&self.cfg, policy, reference, &counts, b.pairs);
            loss += host_f32(l)[0] as f64;
            for (k, v) in m {
                *sums.entry(k).or_default() += v;
            }
        }
        eval_means(sums, loss, self.eval.len())
    }
}
