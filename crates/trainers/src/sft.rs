//! Supervised fine-tuning: next-token cross entropy on assistant tokens only (the data crate's masks),
//! optionally over packed sequences, optionally anchored to the model as loaded by a KL term.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use burnish_core::burn;
use burnish_core::{Adapters, Llama};
use burnish_data::{Batch, Packed};
use serde::{Deserialize, Serialize};

use crate::logps::{labelled_at, labelled_hidden, labelled_logps};
use crate::loss::shifted_targets;
use crate::method::{Method, Metrics};

/// Supervised fine-tuning: cross entropy on assistant tokens (masks come from `[data]`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// Adds `kl_coef` × KL(reference ‖ model) of the next-token distributions at every labelled
    /// position, the reference being the model as loaded (its adapters off). Fitting greedy answers
    /// sharpens every distribution they touch, the model's own answers included; the KL term keeps
    /// the whole distribution where the data does not ask it to move — a refusal-free variant that
    /// stays close to its source (docs/sft.md). Default 0: plain SFT, one forward pass.
    #[serde(default)]
    pub kl_coef: f64,
    /// Where the KL term counts: "all" labelled positions (default), or "agreeing" — only those whose
    /// target is the reference's own most likely token. There the data agrees with the source and
    /// the anchor holds its distribution (fitting the target would only sharpen it); where the target
    /// differs (a refused prompt's answer) the NLL moves the model unopposed.
    #[serde(default)]
    pub kl_positions: KlPositions,
}

/// `[method] kl_positions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KlPositions {
    #[default]
    All,
    Agreeing,
}

impl SftConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self.kl_coef.is_finite() && self.kl_coef >= 0.0 {
            true => Ok(()),
            false => Err(format!(
                "`method.kl_coef` = {} must be a number ≥ 0",
                self.kl_coef
            )),
        }
    }
}

#[derive(Clone)]
pub struct Sft {
    pub train: Vec<Packed>,
    pub eval: Vec<Packed>,
    pub pad_id: u32,
    pub eval_batch_size: usize,
    /// `[method] kl_coef` and `kl_positions`.
    pub config: SftConfig,
}

/// KL(p_ref ‖ p) of each row of next-token logits `[n, vocab]` → `[n]`: the reference's distribution
/// (`ref_logits`, held fixed) against the model's (`logits`). Its gradient in `logits` is
/// softmax(logits) − softmax(ref_logits), row by row.
pub fn kl_rows_to_reference<B: Backend>(
    ref_logits: Tensor<B, 2>,
    logits: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let lp = log_softmax(ref_logits.detach(), 1);
    let lq = log_softmax(logits, 1);
    (lp.clone().exp() * (lp - lq))
        .sum_dim(1)
        .squeeze_dim::<1>(1)
}

/// 1 for each row whose target is the reference's most likely token, else 0 (`kl_positions =
/// "agreeing"`).
pub fn agreeing_rows<B: Backend>(ref_logits: Tensor<B, 2>, targets: &[i64]) -> Vec<f32> {
    let top = ref_logits.argmax(1).into_data().convert::<i64>();
    let top = top.to_vec::<i64>().expect("argmax as i64");
    top.iter()
        .zip(targets)
        .map(|(a, t)| if a == t { 1.0 } else { 0.0 })
        .collect()
}

/// SFT's loss with the KL anchor: summed NLL plus `kl_coef` × summed KL to the adapters-off model at
/// the anchored positions (one more forward pass, without gradient, and the full vocabulary there);
/// the correct argmax predictions, the summed KL and how many positions were anchored.
fn anchored_nll<B: Backend>(
    model: &Llama<B>,
    batch: &Batch,
    cfg: &SftConfig,
) -> (Tensor<B, 1>, usize, f64, usize) {
    let Some((on, targets, owner)) = labelled_hidden(model, batch, Adapters::On) else {
        let device = model.model.embed_tokens.device();
        return (Tensor::zeros([1], &device), 0, 0.0, 0);
    };
    let (off, _, _) = labelled_hidden(model, batch, Adapters::Off).expect("the same positions");
    let logits = |h: Tensor<B, 2>| model.logits(h.unsqueeze_dim::<3>(0)).squeeze_dim::<2>(0);
    let ref_logits = logits(off);
    let rows = kl_rows_to_reference(ref_logits.clone(), logits(on.clone()));
    let (kl, anchored) = match cfg.kl_positions {
        KlPositions::All => (rows.sum(), targets.len()),
        KlPositions::Agreeing => {
            let mask = agreeing_rows(ref_logits, &targets);
            let n = mask.iter().filter(|&&m| m > 0.0).count();
            let mask = Tensor::<B, 1>::from_floats(mask.as_slice(), &rows.device());
            ((rows * mask).sum(), n)
        }
    };
    let kl_sum = kl.clone().into_scalar().elem::<f64>();
    let l = labelled_at(model, on, targets, owner);
    let loss = l.logps.sum().neg() + kl * cfg.kl_coef;
    (loss, l.correct, kl_sum, anchored)
}

/// Summed NLL, target count and correct argmax predictions of a batch (adapters on, with LoRA
/// dropout while training: SFT is the one method that keeps it, as TRL's SFTTrainer).
pub fn batch_nll<B: Backend>(model: &Llama<B>, batch: &Batch) -> (Tensor<B, 1>, usize, usize) {
    match labelled_logps(model, batch, Adapters::On) {
        Some(l) => (l.logps.sum().neg(), l.targets.len(), l.correct),
        None => (Tensor::zeros([1], &model.model.embed_tokens.device()), 0, 0),
    }
}

impl Sft {
    fn make(&self, rows: &[Packed], idx: &[usize]) -> Batch {
        let picked: Vec<Packed> = idx.iter().map(|&i| rows[i].clone()).collect();
        Batch::new(&picked, self.pad_id)
    }
}

impl<B: AutodiffBackend> Method<B> for Sft {
    type Batch = Batch;

    fn name(&self) -> &'static str {
        "sft"
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn batch(&self, rows: &[usize]) -> Batch {
        self.make(&self.train, rows)
    }

    fn units(&self, batch: &Batch) -> f64 {
        shifted_targets(&batch.labels, batch.rows, batch.len)
            .0
            .len() as f64
    }

    fn tokens(&self, batch: &Batch) -> usize {
        batch.segment_ids.iter().filter(|&&s| s != 0).count()
    }

    fn loss(&self, model: &Llama<B>, batch: &Batch) -> (Tensor<B, 1>, Metrics) {
        if self.config.kl_coef > 0.0 {
            let (sum, correct, kl, anchored) = anchored_nll(model, batch, &self.config);
            let metrics = [
                ("token_accuracy", correct as f64),
                ("kl_ref", kl),
                ("kl_anchored", anchored as f64),
            ];
            return (sum, metrics.map(|(k, v)| (k.to_string(), v)).into());
        }
        let (sum, _, correct) = batch_nll(model, batch);
        (
            sum,
            Metrics::from([("token_accuracy".into(), correct as f64)]),
        )
    }

    fn replica(&self, _device: &B::Device) -> Option<Self> {
        Some(self.clone())
    }

    fn evaluate(&self, model: &Llama<B::InnerBackend>) -> Metrics {
        if self.eval.is_empty() {
            return Metrics::new();
        }
        let (mut nll, mut n, mut correct) = (0.0, 0usize, 0usize);
        let all: Vec<usize> = (0..self.eval.len()).collect();
        for chunk in all.chunks(self.eval_batch_size.max(1)) {
            let (s, k, c) = batch_nll(model, &self.make(&self.eval, chunk));
            nll += s.into_scalar().elem::<f64>();
            n += k;
            correct += c;
        }
        let loss = nll / n.max(1) as f64;
        Metrics::from([
            ("eval_loss".into(), loss),
            ("eval_perplexity".into(), loss.exp()),
            (
                "eval_token_accuracy".into(),
                correct as f64 / n.max(1) as f64,
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::softmax;
    use burnish_core::backend::{Autodiff, Cpu};

    type A = Autodiff<Cpu>;

    fn rows<B: Backend>(v: [[f32; 3]; 2]) -> Tensor<B, 2> {
        Tensor::from_floats(v, &Default::default())
    }

    /// KL(p ‖ q) = Σ p (log p − log q) of two hand-computed rows, summed; 0 for equal logits.
    #[test]
    fn kl_rows_to_reference_of_hand_computed_distributions() {
        let p = [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]];
        let q = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]];
        let kl = kl_rows_to_reference(rows::<Cpu>(p), rows::<Cpu>(q))
            .sum()
            .into_scalar();
        let z: f64 = [0.0f64, 1.0, 2.0].iter().map(|x| x.exp()).sum();
        let pr: Vec<f64> = [0.0f64, 1.0, 2.0].iter().map(|x| x.exp() / z).collect();
        let want: f64 = (0..3).map(|i| pr[i] * (pr[i] / pr[2 - i]).ln()).sum();
        assert!((kl as f64 - want).abs() < 1e-6, "{kl} vs {want}");
        let same = kl_rows_to_reference(rows::<Cpu>(q), rows::<Cpu>(q))
            .sum()
            .into_scalar();
        assert!(same.abs() < 1e-7);
    }

    /// The gradient in the model's logits is softmax(logits) − softmax(reference), row by row, and
    /// none flows into the reference.
    #[test]
    fn kl_rows_to_reference_gradient_is_the_difference_of_softmaxes() {
        let p = [[0.5, -1.0, 2.0], [0.0, 3.0, 1.0]];
        let q = [[1.0, 0.0, -2.0], [0.2, 0.1, 0.3]];
        let reference = rows::<A>(p).require_grad();
        let logits = rows::<A>(q).require_grad();
        let grads = kl_rows_to_reference(reference.clone(), logits.clone())
            .sum()
            .backward();
        let got = logits
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let want = (softmax(rows::<Cpu>(q), 1) - softmax(rows::<Cpu>(p), 1))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert!(reference.grad(&grads).is_none());
    }

    /// `kl_positions = "agreeing"` anchors the rows whose target is the reference's argmax.
    #[test]
    fn agreeing_rows_are_those_whose_target_is_the_reference_argmax() {
        let p = [[0.5, -1.0, 2.0], [0.0, 3.0, 1.0]];
        assert_eq!(agreeing_rows(rows::<Cpu>(p), &[2, 0]), vec![1.0, 0.0]);
        assert_eq!(agreeing_rows(rows::<Cpu>(p), &[0, 1]), vec![0.0, 1.0]);
    }
}
