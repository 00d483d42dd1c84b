//! Supervised fine-tuning: next-token cross entropy on assistant tokens only (the data crate's masks),
//! optionally over packed sequences.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use burnish_core::burn;
use burnish_core::{Adapters, Llama};
use burnish_data::{Batch, Packed};
use serde::{Deserialize, Serialize};

use crate::logps::labelled_logps;
use crate::loss::shifted_targets;
use crate::method::{Method, Metrics};

/// Supervised fine-tuning: cross entropy on assistant tokens (masks come from `[data]`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {}

#[derive(Clone)]
pub struct Sft {
    pub train: Vec<Packed>,
    pub eval: Vec<Packed>,
    pub pad_id: u32,
    pub eval_batch_size: usize,
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
