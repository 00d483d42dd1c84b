//! The positions a token-level loss is computed at. The loss itself, the targets' log-probabilities
//! through the LM head, is `Llama::target_logps` (crates/core/src/model/head.rs), tested against the
//! full log-softmax there.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_skips_ignored() {
        let labels = [
            -100, -100, 5, 6, -100, /* row 2 */ -100, 7, -100, -100, 8,
        ];
        let (rows, t) = shifted_targets(&labels, 2, 5);
        assert_eq!(rows, vec![1, 2, 5, 8]);
        assert_eq!(t, vec![5, 6, 7, 8]);
    }
}
