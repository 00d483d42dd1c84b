//! What a training method supplies to the engine: micro-batches, their size in loss units, and a loss.
//! The engine owns everything else (optimizer, schedule, accumulation, clipping, checkpoints, logging).

use std::collections::BTreeMap;

use burn::module::Param;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use burnish_core::burn;
use burnish_core::Llama;

use crate::Result;

/// Named sums over a micro-batch; the engine divides each by the step's total units (so they become
/// per-token or per-pair means) before logging.
pub type Metrics = BTreeMap<String, f64>;

pub trait Method<B: AutodiffBackend> {
    type Batch;

    /// The method's `[method] name` (recorded in checkpoints, which a resume must match).
    fn name(&self) -> &'static str;

    /// Rows of training data one epoch runs over.
    fn train_len(&self) -> usize;

    /// A micro-batch of the given training rows.
    fn batch(&self, rows: &[usize]) -> Self::Batch;

    /// Units the loss is averaged over (loss tokens for SFT, pairs for DPO). The engine normalises by
    /// the total over all micro-batches of a step, so gradient accumulation does not change the result.
    fn units(&self, batch: &Self::Batch) -> f64;

    /// Input tokens processed by a micro-batch (throughput).
    fn tokens(&self, batch: &Self::Batch) -> usize;

    /// Sum of the loss over the micro-batch's units, and metric sums.
    fn loss(&self, model: &Llama<B>, batch: &Self::Batch) -> (Tensor<B, 1>, Metrics);

    /// Trainable matrices besides the LoRA adapters (a reward model's score head, PPO's value head), by
    /// a name that is also their checkpoint key. The engine optimises them with the adapters.
    fn heads(&self) -> Vec<(String, Param<Tensor<B, 2>>)> {
        Vec::new()
    }

    /// Replaces a head after an optimizer step, or when resuming from a checkpoint.
    fn set_head(&mut self, _name: &str, _value: Tensor<B::InnerBackend, 2>) {}

    /// Called before each optimizer step with the current policy (PPO collects rollouts here).
    fn prepare_step(&mut self, _model: &Llama<B::InnerBackend>, _step: usize) -> Result<()> {
        Ok(())
    }

    /// Metrics of the step that are not sums over its micro-batches (PPO's rollout statistics), logged
    /// as they are.
    fn step_metrics(&mut self) -> Metrics {
        Metrics::new()
    }

    /// Metrics on the held-out split, already averaged; empty when there is none.
    fn evaluate(&self, model: &Llama<B::InnerBackend>) -> Metrics;

    /// A copy for another worker of a data-parallel run, its heads on `device` (same parameter ids);
    /// `None` (the default) when the method trains on one device only.
    fn replica(&self, _device: &B::Device) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

/// Held-out metrics from sums over `n` units: each as `eval_<name>` mean, plus `eval_loss`.
pub fn eval_means(sums: Metrics, loss: f64, n: usize) -> Metrics {
    let n = n.max(1) as f64;
    let mut out: Metrics = sums
        .into_iter()
        .map(|(k, v)| (format!("eval_{k}"), v / n))
        .collect();
    out.insert("eval_loss".into(), loss / n);
    out
}
