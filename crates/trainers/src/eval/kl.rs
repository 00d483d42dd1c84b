//! KL divergence of a model from its base on the same prompts, as heretic and the abliteration papers
//! report it: KL(P_base ‖ P_model) of the next-token distributions, at the first generated position
//! ("first-token KL") and averaged over every position of the base's greedy continuation.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burnish_core::backend::host_f64;
use burnish_core::burn;
use burnish_core::{Adapters, Llama};

use crate::logps::continuation_hidden;

/// KL(P ‖ Q) per row from logits `[n, vocab]` of P (base) and Q (model), in nats.
pub fn kl_rows<B: Backend>(p_logits: Tensor<B, 2>, q_logits: Tensor<B, 2>) -> Vec<f64> {
    let lp = log_softmax(p_logits, 1);
    let lq = log_softmax(q_logits, 1);
    let kl = (lp.clone().exp() * (lp - lq)).sum_dim(1);
    host_f64(kl.squeeze_dim::<1>(1))
        .into_iter()
        // Rounding can leave a tiny negative for identical rows.
        .map(|x| x.max(0.0))
        .collect()
}

/// A prompt and the base's greedy continuation of it.
pub struct Continuation {
    pub prompt: Vec<u32>,
    pub tokens: Vec<u32>,
}

/// Per-sequence KLs: the first position's, and the sum and count over all continuation positions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeqKl {
    pub first: f64,
    pub sum: f64,
    pub count: usize,
}

/// Logits at the positions that predict each continuation token, and each row's sequence.
fn continuation_logits<B: Backend>(
    model: &Llama<B>,
    batch: &[&Continuation],
    adapters: Adapters,
) -> (Tensor<B, 2>, Vec<usize>) {
    let pairs: Vec<(&[u32], &[u32])> = batch
        .iter()
        .map(|c| (&c.prompt[..], &c.tokens[..]))
        .collect();
    let (h, owner) = continuation_hidden(model, &pairs, adapters);
    (
        model.logits(h.unsqueeze_dim::<3>(0)).squeeze_dim::<2>(0),
        owner,
    )
}

/// Which weights a side of the comparison runs: a model, with its adapters on or off.
#[derive(Clone, Copy)]
pub struct Side<'a, B: Backend> {
    pub model: &'a Llama<B>,
    pub adapters: Adapters,
}

/// KL(base ‖ model) over each continuation, in batches of `batch_size`.
pub fn continuation_kl<B: Backend>(
    base: Side<'_, B>,
    model: Side<'_, B>,
    conts: &[Continuation],
    batch_size: usize,
) -> Vec<SeqKl> {
    let mut out = Vec::with_capacity(conts.len());
    let all: Vec<&Continuation> = conts.iter().filter(|c| !c.tokens.is_empty()).collect();
    let mut results = std::collections::VecDeque::new();
    for chunk in all.chunks(batch_size.max(1)) {
        let (p, owner) = continuation_logits(base.model, chunk, base.adapters);
        let (q, _) = continuation_logits(model.model, chunk, model.adapters);
        let kl = kl_rows(p, q);
        let mut per = vec![SeqKl::default(); chunk.len()];
        for (&b, v) in owner.iter().zip(kl) {
            if per[b].count == 0 {
                per[b].first = v;
            }
            per[b].sum += v;
            per[b].count += 1;
        }
        results.extend(per);
    }
    for c in conts {
        out.push(if c.tokens.is_empty() {
            SeqKl::default()
        } else {
            results.pop_front().unwrap_or_default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use burnish_core::backend::Cpu;

    #[test]
    fn kl_of_hand_computed_distributions() {
        // P = [1/2, 1/2], Q = [1/4, 3/4]: KL = ½ln2 + ½ln(2/3).
        let d = Default::default();
        let p =
            Tensor::<Cpu, 2>::from_data(TensorData::new(vec![0.0f32, 0.0, 0.0, 0.0], [2, 2]), &d);
        let q = Tensor::<Cpu, 2>::from_data(
            TensorData::new(vec![0.0f32, 3f32.ln(), 0.0, 0.0], [2, 2]),
            &d,
        );
        let kl = kl_rows(p, q);
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl[0] - want).abs() < 1e-6, "{kl:?}");
        assert!(kl[1].abs() < 1e-7);
    }
}
