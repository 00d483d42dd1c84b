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
    /// Which examples the NLL counts: "all" (default), or "disagreeing" — only those whose target
    /// departs somewhere (before its closing token) from the reference's own greedy choice (an
    /// answer taken from another model where the source refused). An example that *is* the
    /// source's greedy answer teaches nothing but sharpening, which moves the model (docs/sft.md);
    /// with `kl_coef` it is held by the anchor alone, while a departing example is fitted whole,
    /// every token of it.
    #[serde(default)]
    pub nll_examples: NllExamples,
}

/// `[method] nll_examples`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NllExamples {
    #[default]
    All,
    Disagreeing,
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
    /// Whether the loss reads the adapters-off model (a second forward pass without gradient).
    pub fn needs_reference(&self) -> bool {
        self.kl_coef > 0.0 || self.nll_examples == NllExamples::Disagreeing
    }

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
    /// `[method] kl_coef`, `kl_positions` and `nll_examples`.
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

/// `nll_examples = "disagreeing"`: 1 for each labelled position whose example has a position, other
/// than its last, that does not agree with the reference (`agree[i]` = 0), else 0. `example[i]` names
/// the example position i belongs to (its batch row and packed segment; an example's positions are
/// consecutive). The last labelled token does not count: it closes the reply, and in data that does
/// not mark cut replies `unfinished` (files written by other tools or before the flag), a reply cut
/// at `max_new_tokens` is closed where the source would have gone on, which is not a different answer.
pub fn departing_examples(agree: &[f32], example: &[(usize, u32)]) -> Vec<f32> {
    let last = |i: usize| example.get(i + 1) != Some(&example[i]);
    let departing: std::collections::HashSet<(usize, u32)> = (0..example.len())
        .filter(|&i| agree[i] == 0.0 && !last(i))
        .map(|i| example[i])
        .collect();
    example
        .iter()
        .map(|e| if departing.contains(e) { 1.0 } else { 0.0 })
        .collect()
}

/// The example (batch row, packed segment) of each labelled position of `batch`.
fn example_of_targets(batch: &Batch) -> Vec<(usize, u32)> {
    let (flat, _) = shifted_targets(&batch.labels, batch.rows, batch.len);
    flat.iter()
        .map(|&i| (i as usize / batch.len, batch.segment_ids[i as usize]))
        .collect()
}

/// What the reference-reading loss measured in one batch (`metrics.jsonl`).
struct Anchored<B: Backend> {
    loss: Tensor<B, 1>,
    correct: usize,
    kl: f64,
    anchored: usize,
    fitted: usize,
}

/// SFT's loss against the adapters-off model: the summed NLL (of every example, or with
/// `nll_examples = "disagreeing"` of those that depart from the reference's greedy choice) plus
/// `kl_coef` × the summed KL to the reference at the anchored positions. One more forward pass,
/// without gradient, and the full vocabulary at the labelled positions.
fn anchored_nll<B: Backend>(model: &Llama<B>, batch: &Batch, cfg: &SftConfig) -> Anchored<B> {
    let Some((on, targets, owner)) = labelled_hidden(model, batch, Adapters::On) else {
        let loss = Tensor::zeros([1], &model.model.embed_tokens.device());
        let (correct, kl, anchored, fitted) = (0, 0.0, 0, 0);
        return Anchored {
            loss,
            correct,
            kl,
            anchored,
            fitted,
        };
    };
    let (off, _, _) = labelled_hidden(model, batch, Adapters::Off).expect("the same positions");
    let logits = |h: Tensor<B, 2>| model.logits(h.unsqueeze_dim::<3>(0)).squeeze_dim::<2>(0);
    let ref_logits = logits(off);
    let device = ref_logits.device();
    let weights = |w: &[f32]| Tensor::<B, 1>::from_floats(w, &device);
    // The reference's argmax (an [n, vocab] reduction read back to the host) only when a mask uses it.
    let masked =
        cfg.kl_positions == KlPositions::Agreeing || cfg.nll_examples == NllExamples::Disagreeing;
    let agree = match masked {
        true => agreeing_rows(ref_logits.clone(), &targets),
        false => Vec::new(),
    };
    let count = |w: &[f32]| w.iter().filter(|&&m| m > 0.0).count();
    let kl = (cfg.kl_coef > 0.0).then(|| {
        let rows = kl_rows_to_reference(ref_logits, logits(on.clone()));
        match cfg.kl_positions {
            KlPositions::All => (rows.sum(), targets.len()),
            KlPositions::Agreeing => ((rows * weights(&agree)).sum(), count(&agree)),
        }
    });
    let n = targets.len();
    let l = labelled_at(model, on, targets, owner);
    let (nll, fitted) = match cfg.nll_examples {
        NllExamples::All => (l.logps.sum().neg(), n),
        NllExamples::Disagreeing => {
            let fit = departing_examples(&agree, &example_of_targets(batch));
            ((l.logps * weights(&fit)).sum().neg(), count(&fit))
        }
    };
    let (loss, kl, anchored) = match kl {
        Some((kl, anchored)) => {
            let sum = kl.clone().into_scalar().elem::<f64>();
            (nll + kl * cfg.kl_coef, sum, anchored)
        }
        None => (nll, 0.0, 0),
    };
    Anchored {
        loss,
        correct: l.correct,
        kl,
        anchored,
        fitted,
    }
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
        if self.config.needs_reference() {
            let a = anchored_nll(model, batch, &self.config);
            let metrics = [
                ("token_accuracy", a.correct as f64),
                ("kl_ref", a.kl),
                ("kl_anchored", a.anchored as f64),
                ("nll_fitted", a.fitted as f64),
            ];
            return (a.loss, metrics.map(|(k, v)| (k.to_string(), v)).into());
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

    /// `nll_examples = "disagreeing"`: every position of an example with one disagreeing position
    /// before its last, none of a fully agreeing one; examples are told apart by row and segment.
    #[test]
    fn departing_examples_cover_whole_examples() {
        let agree = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0];
        let example = [
            (0, 1),
            (0, 1),
            (0, 2),
            (0, 2),
            (1, 1),
            (1, 1),
            (2, 1),
            (2, 1),
        ];
        assert_eq!(
            departing_examples(&agree, &example),
            vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
        );
        assert_eq!(departing_examples(&[1.0; 3], &example[..3]), vec![0.0; 3]);
        // A disagreeing last token (the end-of-turn of a reply cut short) does not count.
        let closed = [1.0, 1.0, 0.0, 1.0, 0.0];
        let two = [(0, 1), (0, 1), (0, 1), (1, 1), (1, 1)];
        assert_eq!(departing_examples(&closed, &two), vec![0.0; 5]);
    }

    /// `kl_positions = "agreeing"` anchors the rows whose target is the reference's argmax.
    #[test]
    fn agreeing_rows_are_those_whose_target_is_the_reference_argmax() {
        let p = [[0.5, -1.0, 2.0], [0.0, 3.0, 1.0]];
        assert_eq!(agreeing_rows(rows::<Cpu>(p), &[2, 0]), vec![1.0, 0.0]);
        assert_eq!(agreeing_rows(rows::<Cpu>(p), &[0, 1]), vec![0.0, 1.0]);
    }
}
