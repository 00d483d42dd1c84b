//! Token-level losses. Each is a small pure function over tensors with its own test.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burnish_core::burn;

/// Positions whose label is not ignored (`-100`), as row indices into the flattened `[batch * seq]`
/// predictions of *next* tokens: logits at position t predict the label at t + 1.
pub fn shifted_targets(labels: &[i64], batch: usize, seq: usize) -> (Vec<i64>, Vec<i64>) {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for b in 0..batch {
        for t in 0..seq.saturating_sub(1) {
            let y = labels[b * seq + t + 1];
            if y >= 0 {
                rows.push((b * seq + t) as i64);
                targets.push(y);
            }
        }
    }
    (rows, targets)
}

/// Sum of negative log-likelihoods of `targets` under `logits` `[n, vocab]`, and the number of
/// correct argmax predictions. Only the selected rows are ever passed through log-softmax.
pub fn nll_sum<B: Backend>(logits: Tensor<B, 2>, targets: &[i64]) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let device = logits.device();
    let n = targets.len();
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), &device);
    let logp = log_softmax(logits, 1);
    let picked = logp.clone().gather(1, idx);
    (picked.sum().neg(), logp)
}

/// Causal-LM cross entropy over labelled tokens: `(sum of NLL, token count, correct predictions)`.
/// The engine divides the sum by the loss tokens of the whole accumulated batch, so the result does not
/// depend on how the batch is split into micro-batches.
pub fn causal_lm_loss<B: Backend>(
    hidden_logits: Tensor<B, 3>,
    labels: &[i64],
) -> (Tensor<B, 1>, usize, usize) {
    let [b, s, v] = hidden_logits.dims();
    let (rows, targets) = shifted_targets(labels, b, s);
    let device = hidden_logits.device();
    if rows.is_empty() {
        return (Tensor::zeros([1], &device), 0, 0);
    }
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(rows.clone(), [rows.len()]), &device);
    let logits = hidden_logits.reshape([b * s, v]).select(0, idx);
    let (sum, logp) = nll_sum(logits, &targets);
    let pred = logp
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap_or_default();
    let correct = pred.iter().zip(&targets).filter(|(p, t)| p == t).count();
    (sum, targets.len(), correct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burnish_core::backend::Cpu;

    #[test]
    fn shift_skips_ignored() {
        let labels = [
            -100, -100, 5, 6, -100, /* row 2 */ -100, 7, -100, -100, 8,
        ];
        let (rows, t) = shifted_targets(&labels, 2, 5);
        assert_eq!(rows, vec![1, 2, 5, 8]);
        assert_eq!(t, vec![5, 6, 7, 8]);
    }

    #[test]
    fn nll_matches_hand_computation() {
        // logits [[0, ln 3]] → p = [1/4, 3/4]; target 1 → -ln(3/4); [[0,0]] target 0 → ln 2.
        let l = Tensor::<Cpu, 2>::from_data(
            TensorData::new(vec![0.0f32, 3f32.ln(), 0.0, 0.0], [2, 2]),
            &Default::default(),
        );
        let (s, _) = nll_sum(l, &[1, 0]);
        let want = -(0.75f32).ln() + 2f32.ln();
        assert!((s.into_scalar() - want).abs() < 1e-6);
    }

    #[test]
    fn loss_counts_tokens_and_accuracy() {
        let dev = Default::default();
        // vocab 3; position 0 strongly predicts 2, position 1 predicts 0.
        let logits = Tensor::<Cpu, 3>::from_data(
            TensorData::new(
                vec![0.0f32, 0.0, 9.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [1, 3, 3],
            ),
            &dev,
        );
        let (sum, n, correct) = causal_lm_loss(logits, &[-100, 2, 1]);
        assert_eq!((n, correct), (2, 1));
        assert!(sum.into_scalar() > 9.0 - 1e-3);
    }
}
