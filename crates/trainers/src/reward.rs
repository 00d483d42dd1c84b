//! Reward modelling (TRL's `RewardTrainer`): the transformer with LoRA adapters plus a scalar head on the
//! last non-pad token, trained on preference pairs with −log σ(r_chosen − r_rejected − margin), plus
//! `center_rewards_coefficient`·(r_chosen + r_rejected)² to keep rewards centred. The head is
//! `score.weight` `[1, hidden]` as in transformers' `LlamaForSequenceClassification`, initialised
//! N(0, 1/√(hidden + 1)) (the N+ implementation details of RLHF).

use std::path::Path;

use burn::module::Param;
use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burnish_core::backend::host_f32;
use burnish_core::burn;
use burnish_core::{Adapters, Llama, Message};
use burnish_data::{
    AssistantTurns, Batch, ChatEncoder, Packed, TokenizedExample, TokenizedPair, IGNORE_INDEX,
};
use serde::{Deserialize, Serialize};

use crate::dpo::pair_rows;
use crate::method::{eval_means, Method, Metrics};
use crate::{Error, Result};

/// `[method]` with `name = "reward"`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    /// Weight of the (r_chosen + r_rejected)² centring term (TRL `center_rewards_coefficient`, default
    /// none; 0.01 is the suggested value).
    pub center_rewards_coefficient: Option<f64>,
    /// A margin subtracted inside the sigmoid for every pair (default 0).
    pub margin: f64,
    /// Score the response alone, after a fixed prompt (`detector::DETECTOR_PROMPT`) instead of the
    /// pair's own: a learned refusal detector (docs/eval.md). The run then writes `detector.json` beside
    /// the adapter and the head, and `[data.refusal] detector = "model:<output.dir>/adapter"` uses it.
    pub response_only: bool,
}

pub const SCORE: &str = "score.weight";
pub const SCORE_FILE: &str = "score.safetensors";

/// Per-pair loss: −log σ(r_c − r_r − margin) + c·(r_c + r_r)².
pub fn reward_loss<B: Backend>(
    chosen: Tensor<B, 1>,
    rejected: Tensor<B, 1>,
    margin: f64,
    center: Option<f64>,
) -> Tensor<B, 1> {
    let mut l = log_sigmoid(chosen.clone() - rejected.clone() - margin).neg();
    if let Some(c) = center {
        l = l + (chosen + rejected).powi_scalar(2).mul_scalar(c);
    }
    l
}

/// Scalar rewards `[rows]`: the head applied to each row's last non-pad token's final hidden state.
/// Adapters on without LoRA dropout (TRL's reward trainer disables dropout): a pair's two scores must
/// come from the same function.
pub fn rewards<B: Backend>(model: &Llama<B>, head: Tensor<B, 2>, batch: &Batch) -> Tensor<B, 1> {
    let device = model.model.embed_tokens.device();
    let t = batch.tensors::<B>(&device);
    let ctx = model
        .context(t.positions, Some(t.mask))
        .with_adapters(Adapters::OnWithoutDropout);
    let hidden = model.forward_hidden(t.input_ids, &ctx, None, None);
    let [b, s, h] = hidden.dims();
    let last: Vec<i64> = (0..b)
        .map(|r| {
            let n = batch.segment_ids[r * s..(r + 1) * s]
                .iter()
                .filter(|&&x| x != 0)
                .count();
            (r * s + n.max(1) - 1) as i64
        })
        .collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(last, [b]), &device);
    let x = hidden.reshape([b * s, h]).select(0, idx);
    x.matmul(head.transpose()).squeeze_dim::<1>(1)
}

/// The ids of a prompt and a response as reward training sees one side of a pair: the chat through the
/// assistant turn's closing special token (`<|im_end|>`), without the template text after it (ChatML's
/// newline), tokenized in the encoder's pieces. The head learned on that last token, so scoring (PPO,
/// `burnish score`) must end there too.
pub fn exchange_ids(encoder: &ChatEncoder, prompt: &[Message], response: &str) -> Result<Vec<u32>> {
    let mut m = prompt.to_vec();
    m.push(Message::assistant(response));
    Ok(encoder.encode_messages(&m, AssistantTurns::Last)?.0)
}

/// Reward-model scores of responses to prompts, each encoded by [`exchange_ids`].
pub fn score_exchanges<B: Backend>(
    model: &Llama<B>,
    head: &Tensor<B, 2>,
    encoder: &ChatEncoder,
    exchanges: &[(&[Message], &str)],
    pad_id: u32,
) -> Result<Vec<f32>> {
    let seqs = exchanges
        .iter()
        .map(|(p, r)| exchange_ids(encoder, p, r))
        .collect::<Result<Vec<_>>>()?;
    Ok(score_sequences(model, head, seqs, pad_id, 8))
}

/// Scores of whole sequences (token ids, no labels), in batches of `batch_size`.
pub fn score_sequences<B: Backend>(
    model: &Llama<B>,
    head: &Tensor<B, 2>,
    seqs: Vec<Vec<u32>>,
    pad_id: u32,
    batch_size: usize,
) -> Vec<f32> {
    let rows: Vec<Packed> = seqs
        .into_iter()
        .map(|ids| {
            let labels = vec![IGNORE_INDEX; ids.len()];
            Packed::single(&TokenizedExample {
                input_ids: ids,
                labels,
                truncated: false,
                category: None,
            })
        })
        .collect();
    rows.chunks(batch_size.max(1))
        .flat_map(|c| host_f32(rewards(model, head.clone(), &Batch::new(c, pad_id))))
        .collect()
}

/// Metric sums over pairs: accuracy (r_c > r_r), margin, and mean rewards.
fn metrics(r: &[f32], pairs: usize) -> Metrics {
    let mut m = Metrics::new();
    for i in 0..pairs {
        let (c, j) = (r[i] as f64, r[pairs + i] as f64);
        *m.entry("accuracy".into()).or_default() += f64::from(u8::from(c > j));
        *m.entry("margin".into()).or_default() += c - j;
        *m.entry("rewards/chosen".into()).or_default() += c;
        *m.entry("rewards/rejected".into()).or_default() += j;
    }
    m
}

pub struct Reward<B: AutodiffBackend> {
    pub cfg: RewardConfig,
    pub train: Vec<TokenizedPair>,
    pub eval: Vec<TokenizedPair>,
    pub pad_id: u32,
    pub eval_batch_size: usize,
    pub head: Param<Tensor<B, 2>>,
}

pub struct RewardBatch {
    seqs: Batch,
    pairs: usize,
}

/// A fresh `[1, hidden]` reward head: normal(0, 1/sqrt(hidden + 1)),
/// drawn on the host from `seed` so every backend starts from
/// the same head.
pub fn init_head<B: Backend>(hidden: usize, seed: u64, device: &B::Device) -> Tensor<B, 2> {
    let std = 1.0 / ((hidden + 1) as f64).sqrt();
    let mut rng = burnish_core::rng::for_tensor(seed, "score.weight");
    burnish_core::rng::normal(&mut rng, [1, hidden], std, device)
}

impl<B: AutodiffBackend> Reward<B> {
    pub fn new(
        cfg: RewardConfig,
        train: Vec<TokenizedPair>,
        eval: Vec<TokenizedPair>,
        pad_id: u32,
        eval_batch_size: usize,
        head: Tensor<B, 2>,
    ) -> Self {
        Self {
            cfg,
            train,
            eval,
            pad_id,
            eval_batch_size: eval_batch_size.max(1),
            head: Param::from_tensor(head.require_grad()),
        }
    }

    fn make(&self, pairs: &[&TokenizedPair]) -> RewardBatch {
        RewardBatch {
            seqs: pair_rows(pairs, self.pad_id),
            pairs: pairs.len(),
        }
    }

    fn pair_loss<C: Backend>(&self, r: Tensor<C, 1>, pairs: usize) -> (Tensor<C, 1>, Metrics) {
        let m = metrics(&host_f32(r.clone()), pairs);
        let l = reward_loss(
            r.clone().slice(0..pairs),
            r.slice(pairs..2 * pairs),
            self.cfg.margin,
            self.cfg.center_rewards_coefficient,
        );
        (l.sum(), m)
    }
}

impl<B: AutodiffBackend> Reward<B> {
    /// A refusal detector's threshold (`response_only`): the score that best separates the chosen
    /// sides (answers) from the rejected ones (refusals) of the eval split, or of the training split
    /// when there is none. The pairwise loss orders the two sides of a pair but fixes no absolute level.
    pub fn calibrate(&self, model: &Llama<B::InnerBackend>) -> f32 {
        let pairs: Vec<&TokenizedPair> = if self.eval.is_empty() {
            self.train.iter().collect()
        } else {
            self.eval.iter().collect()
        };
        let head = self.head.val().inner();
        let (mut answers, mut refusals) = (Vec::new(), Vec::new());
        for chunk in pairs.chunks(self.eval_batch_size) {
            let r = host_f32(rewards(model, head.clone(), &pair_rows(chunk, self.pad_id)));
            answers.extend_from_slice(&r[..chunk.len()]);
            refusals.extend_from_slice(&r[chunk.len()..]);
        }
        best_threshold(&answers, &refusals)
    }
}

/// The threshold t that classifies the most scores right (`above` ≥ t, `below` < t). An eval split drawn
/// like the training data is often separated by a wide range of cuts; among the best, the one nearest
/// the point halfway between the two classes' medians: new responses (other wordings, other models)
/// tend to score between the classes, so a cut that favours neither misclassifies fewer of them than
/// the widest empty gap, which lands wherever the sample happened to leave a hole (seen on both sides
/// of the middle in two detector runs, docs/eval.md). That point itself when it lies inside a best
/// cut's gap, else the middle of the best gap nearest to it.
pub fn best_threshold(above: &[f32], below: &[f32]) -> f32 {
    let mut all: Vec<(f32, bool)> = above
        .iter()
        .map(|&s| (s, true))
        .chain(below.iter().map(|&s| (s, false)))
        .collect();
    if all.is_empty() {
        return 0.0;
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let centre = match (median(above), median(below)) {
        (Some(a), Some(b)) => 0.5 * (a + b),
        _ => f32::NAN,
    };
    // Cut i: the first i scores are called "below". Right = belows before the cut + aboves after it.
    // The gap of cut i is (lo, hi); the first and last cuts have an open side. A cut between equal
    // scores has no gap and no threshold can make it, so it is not counted.
    let mut right = above.len();
    let mut cuts = vec![(right, all[0].0 - 1.0, all[0].0)];
    for i in 1..=all.len() {
        right = if all[i - 1].1 { right - 1 } else { right + 1 };
        let lo = all[i - 1].0;
        cuts.push((right, lo, all.get(i).map_or(lo + 2.0, |n| n.0)));
    }
    cuts.retain(|c| c.2 > c.1);
    let most = cuts.iter().map(|c| c.0).max().unwrap_or(0);
    let best = cuts.into_iter().filter(|c| c.0 == most).map(|c| (c.1, c.2));
    let (lo, hi) = if centre.is_nan() {
        // One class only: the widest best gap.
        best.max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
    } else {
        best.min_by(|a, b| {
            let d = |(l, h): (f32, f32)| (0.5 * (l + h) - centre).abs();
            d(*a).total_cmp(&d(*b))
        })
    }
    .unwrap_or((all[0].0 - 1.0, all[0].0));
    if centre > lo && centre < hi {
        centre
    } else {
        0.5 * (lo + hi)
    }
}

fn median(x: &[f32]) -> Option<f32> {
    let mut v = x.to_vec();
    v.sort_by(f32::total_cmp);
    let n = v.len();
    (n > 0).then(|| 0.5 * (v[(n - 1) / 2] + v[n / 2]))
}

impl<B: AutodiffBackend> Method<B> for Reward<B> {
    type Batch = RewardBatch;

    fn name(&self) -> &'static str {
        "reward"
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn batch(&self, rows: &[usize]) -> RewardBatch {
        let pairs: Vec<&TokenizedPair> = rows.iter().map(|&i| &self.train[i]).collect();
        self.make(&pairs)
    }

    fn units(&self, batch: &RewardBatch) -> f64 {
        batch.pairs as f64
    }

    fn tokens(&self, batch: &RewardBatch) -> usize {
        batch.seqs.segment_ids.iter().filter(|&&s| s != 0).count()
    }

    fn loss(&self, model: &Llama<B>, batch: &RewardBatch) -> (Tensor<B, 1>, Metrics) {
        let r = rewards(model, self.head.val(), &batch.seqs);
        self.pair_loss(r, batch.pairs)
    }

    fn heads(&self) -> Vec<(String, Param<Tensor<B, 2>>)> {
        vec![(SCORE.into(), self.head.clone())]
    }

    fn set_head(&mut self, name: &str, value: Tensor<B::InnerBackend, 2>) {
        if name == SCORE {
            self.head = Param::initialized(self.head.id, Tensor::from_inner(value).require_grad());
        }
    }

    fn replica(&self, device: &B::Device) -> Option<Self> {
        let head = Tensor::from_inner(self.head.val().inner().to_device(device)).require_grad();
        Some(Self {
            cfg: self.cfg.clone(),
            train: self.train.clone(),
            eval: self.eval.clone(),
            pad_id: self.pad_id,
            eval_batch_size: self.eval_batch_size,
            head: Param::initialized(self.head.id, head),
        })
    }

    fn evaluate(&self, model: &Llama<B::InnerBackend>) -> Metrics {
        if self.eval.is_empty() {
            return Metrics::new();
        }
        let head = self.head.val().inner();
        let (mut loss, mut sums) = (0.0, Metrics::new());
        let all: Vec<&TokenizedPair> = self.eval.iter().collect();
        for chunk in all.chunks(self.eval_batch_size) {
            let b = self.make(chunk);
            let r = rewards(model, head.clone(), &b.seqs);
            let (l, m) = self.pair_loss(r, b.pairs);
            loss += host_f32(l)[0] as f64;
            for (k, v) in m {
                *sums.entry(k).or_default() += v;
            }
        }
        eval_means(sums, loss, self.eval.len())
    }
}

/// Writes the head as `score.safetensors` (`score.weight`, f32) next to the adapter.
pub fn save_head<B: Backend>(dir: &Path, head: Tensor<B, 2>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(dir.to_path_buf(), e))?;
    let t = crate::checkpoint::head_tensors(&[(SCORE.to_string(), head)]);
    burnish_core::weights::write_safetensors(
        &dir.join(SCORE_FILE),
        burnish_core::safetensors::Dtype::F32,
        &t,
        &[("format", "pt")],
    )?;
    Ok(())
}

/// Reads `score.weight` from a reward model directory.
pub fn load_head<B: Backend>(dir: &Path, device: &B::Device) -> Result<Tensor<B, 2>> {
    let path = dir.join(SCORE_FILE);
    crate::checkpoint::read_heads::<B>(&path, device)?
        .into_iter()
        .find(|(k, _)| k == SCORE)
        .map(|(_, t)| t)
        .ok_or(Error::MissingTensor(path, SCORE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burnish_core::backend::Cpu;

    #[test]
    fn threshold_separates_the_best_it_can() {
        // Separable: halfway between the classes' medians (2 and -1.5), inside the gap.
        assert_eq!(best_threshold(&[1.0, 2.0, 3.0], &[-2.0, -1.0]), 0.25);
        // Separable, the centre (0) outside the gap: the gap's middle.
        assert_eq!(best_threshold(&[3.0, 4.0, 5.0], &[-5.0, -4.0, 2.0]), 2.5);
        // One refusal above two answers: the one best cut (it misclassifies one); halfway between the
        // medians (-1) is its edge, so the middle of its gap.
        let t = best_threshold(&[-1.0, 0.5, 4.0], &[-3.0, -2.5, 1.0]);
        assert_eq!(t, -1.75);
        // Three best cuts (each misclassifies three): the one nearest the centre (2.125), (1, 2), not
        // the widest, (3.5, 12).
        assert_eq!(
            best_threshold(&[0.0, 2.0, 2.5, 12.0], &[-2.0, 1.0, 3.0, 3.5]),
            1.5
        );
        // Ties: an answer and a refusal of equal score cannot be split; the best cut that can be made.
        assert_eq!(best_threshold(&[1.0, 1.0, 3.0], &[1.0, 1.0, -1.0]), 0.0);
        assert_eq!(best_threshold(&[], &[]), 0.0);
        assert!(best_threshold(&[5.0], &[]) <= 5.0);
        assert!(best_threshold(&[], &[5.0]) > 5.0);
    }

    #[test]
    fn loss_matches_hand_computation() {
        let d = Default::default();
        let c = Tensor::<Cpu, 1>::from_floats([2.0, 0.0], &d);
        let r = Tensor::<Cpu, 1>::from_floats([1.0, 0.5], &d);
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let l = reward_loss(c.clone(), r.clone(), 0.0, None)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!((l[0] as f64 + sig(1.0).ln()).abs() < 1e-6);
        assert!((l[1] as f64 + sig(-0.5).ln()).abs() < 1e-6);
        // Margin 0.5 and centring 0.01: −log σ(1 − 0.5) + 0.01·3².
        let l = reward_loss(c, r, 0.5, Some(0.01))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!((l[0] as f64 - (-sig(0.5).ln() + 0.09)).abs() < 1e-6);
    }
}
