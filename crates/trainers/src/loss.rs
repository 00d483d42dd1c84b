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

/// Sum of negative log-likelihoods of `targets` under `logits` `[n, vocab]`, and how many targets are
/// the argmax (token accuracy).
pub fn token_nll<B: Backend>(logits: Tensor<B, 2>, targets: &[i64]) -> (Tensor<B, 1>, usize) {
    let device = logits.device();
    let n = targets.len();
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), &device);
    let logp = log_softmax(logits, 1);
    let sum = logp.clone().gather(1, idx).sum().neg();
    let pred = logp
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap_or_default();
    let correct = pred.iter().zip(targets).filter(|(p, t)| p == t).count();
    (sum, correct)
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
        // logits [[0, ln 3]] → p = [1/4, 3/4]; target 1 → -ln(3/4); [[0, 0]] target 0 → ln 2 (a tie: argmax 0).
        let l = Tensor::<Cpu, 2>::from_data(
            TensorData::new(vec![0.0f32, 3f32.ln(), 0.0, 0.0], [2, 2]),
            &Default::default(),
        );
        let (s, correct) = token_nll(l, &[1, 0]);
        let want = -(0.75f32).ln() + 2f32.ln();
        assert!((s.into_scalar() - want).abs() < 1e-6);
        assert_eq!(correct, 2);
    }
}
