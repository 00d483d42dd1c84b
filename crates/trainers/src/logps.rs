//! Log-probabilities of labelled tokens, shared by SFT (token NLL), DPO (sequence log-probs) and RLHF.
//! The LM head is applied only at labelled positions: it is the largest matmul of a small model.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burnish_core::burn;
use burnish_core::{Adapters, Llama};
use burnish_data::Batch;

use crate::loss::shifted_targets;

/// The labelled tokens of a batch under a model: their log-probabilities `[n]`, the targets, the batch
/// row each comes from, and how many targets are the model's argmax (token accuracy).
pub struct Labelled<B: Backend> {
    pub logps: Tensor<B, 1>,
    pub targets: Vec<i64>,
    pub owner: Vec<usize>,
    pub correct: usize,
}

/// Final hidden states `[n, hidden]` at the positions whose next token is labelled, those targets, and
/// the batch row each comes from; `None` when there is none.
pub fn labelled_hidden<B: Backend>(
    model: &Llama<B>,
    batch: &Batch,
    adapters: Adapters,
) -> Option<(Tensor<B, 2>, Vec<i64>, Vec<usize>)> {
    let device = model.model.embed_tokens.device();
    let (rows, targets) = shifted_targets(&batch.labels, batch.rows, batch.len);
    if rows.is_empty() {
        return None;
    }
    let t = batch.tensors::<B>(&device);
    let ctx = model
        .context(t.positions, Some(t.mask))
        .with_adapters(adapters);
    let hidden = model.forward_hidden(t.input_ids, &ctx, None, None);
    let [b, s, h] = hidden.dims();
    let owner = rows.iter().map(|&r| r as usize / batch.len).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(rows.clone(), [rows.len()]), &device);
    Some((hidden.reshape([b * s, h]).select(0, idx), targets, owner))
}

/// [`Labelled`] for the positions whose next token is labelled; `None` when there is none.
/// `Adapters::Off` runs the base model (the reference of DPO and PPO). The LM head is applied at
/// those positions only, block by block, without holding `[n, vocab]` logits (`Llama::target_logps`).
pub fn labelled_logps<B: Backend>(
    model: &Llama<B>,
    batch: &Batch,
    adapters: Adapters,
) -> Option<Labelled<B>> {
    let (picked, targets, owner) = labelled_hidden(model, batch, adapters)?;
    Some(labelled_at(model, picked, targets, owner))
}

/// [`Labelled`] from the final hidden states at labelled positions.
pub fn labelled_at<B: Backend>(
    model: &Llama<B>,
    picked: Tensor<B, 2>,
    targets: Vec<i64>,
    owner: Vec<usize>,
) -> Labelled<B> {
    let (logps, argmax) = model.target_logps(picked, &targets);
    let correct = argmax.iter().zip(&targets).filter(|(p, t)| p == t).count();
    Labelled {
        logps,
        targets,
        owner,
        correct,
    }
}

/// Sums `values` `[n]` into `rows` buckets by `owner` (a one-hot matmul: differentiable, and tiny next to
/// the LM head).
pub fn sum_by_row<B: Backend>(values: Tensor<B, 1>, owner: &[usize], rows: usize) -> Tensor<B, 1> {
    let n = owner.len();
    let mut onehot = vec![0f32; rows * n];
    for (j, &r) in owner.iter().enumerate() {
        onehot[r * n + j] = 1.0;
    }
    let m = Tensor::<B, 2>::from_data(TensorData::new(onehot, [rows, n]), &values.device());
    m.matmul(values.unsqueeze_dim::<2>(1)).squeeze_dim::<1>(1)
}

/// Summed log-probability of each row's labelled tokens, `[rows]`, and how many tokens each row has.
pub fn sequence_logps<B: Backend>(
    model: &Llama<B>,
    batch: &Batch,
    adapters: Adapters,
) -> (Tensor<B, 1>, Vec<usize>) {
    let mut counts = vec![0usize; batch.rows];
    let Some(l) = labelled_logps(model, batch, adapters) else {
        let device = model.model.embed_tokens.device();
        return (Tensor::zeros([batch.rows], &device), counts);
    };
    for &r in &l.owner {
        counts[r] += 1;
    }
    (sum_by_row(l.logps, &l.owner, batch.rows), counts)
}

/// Final hidden states `[n, hidden]` at the positions that predict each continuation token (from the
/// last prompt token on), for (prompt, continuation) pairs, from one teacher-forced forward of a
/// right-padded batch (causal attention never sees the padding behind a row), and each row's pair.
pub fn continuation_hidden<B: Backend>(
    model: &Llama<B>,
    pairs: &[(&[u32], &[u32])],
    adapters: Adapters,
) -> (Tensor<B, 2>, Vec<usize>) {
    let device = model.model.embed_tokens.device();
    let len = pairs
        .iter()
        .map(|(p, c)| p.len() + c.len())
        .max()
        .unwrap_or(1);
    let n = pairs.len();
    let (mut ids, mut rows, mut owner) = (Vec::with_capacity(n * len), Vec::new(), Vec::new());
    for (b, (p, c)) in pairs.iter().enumerate() {
        let start = ids.len();
        ids.extend(p.iter().chain(c.iter()).map(|&t| t as i64));
        ids.resize(start + len, 0);
        for k in 0..c.len() {
            rows.push((b * len + p.len() - 1 + k) as i64);
            owner.push(b);
        }
    }
    let x = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, len]), &device);
    let pos: Vec<i64> = (0..n).flat_map(|_| 0..len as i64).collect();
    let pos = Tensor::<B, 2, Int>::from_data(TensorData::new(pos, [n, len]), &device);
    let ctx = model.context(pos, None).with_adapters(adapters);
    let hidden = model.forward_hidden(x, &ctx, None, None);
    let h = hidden.dims()[2];
    let m = rows.len();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [m]), &device);
    (hidden.reshape([n * len, h]).select(0, idx), owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burnish_core::backend::Cpu;

    #[test]
    fn sums_by_owner() {
        let v = Tensor::<Cpu, 1>::from_floats([1.0, 2.0, 3.0, 4.0], &Default::default());
        let s = sum_by_row(v, &[0, 2, 2, 0], 3);
        assert_eq!(s.into_data().to_vec::<f32>().unwrap(), vec![5.0, 0.0, 5.0]);
    }
}
