//! Where refusal lives: mean residual-stream activations on harmful vs harmless prompts at the
//! post-instruction positions, their difference per (layer, position) as candidate directions, and the
//! quick measurements that select among them (Arditi et al. 2024): the refusal score (log-odds of the
//! tokens refusals start with, at the last position) and first-token KL to the unedited model.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burnish_core::backend::host_f32;
use burnish_core::burn;
use burnish_core::model::causal_padding_mask;
use burnish_core::model::Context;
use burnish_core::Llama;

/// A left-padded batch: every prompt ends at the last column, so "the last k positions" are the same
/// columns for all rows.
fn left_batch<B: Backend>(
    model: &Llama<B>,
    rows: &[&Vec<u32>],
    pad: u32,
) -> (Tensor<B, 2, Int>, Context<B>) {
    let device = model.model.embed_tokens.device();
    let len = rows.iter().map(|r| r.len()).max().unwrap_or(1);
    let n = rows.len();
    let (mut ids, mut pos, mut valid) = (Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        let padn = len - r.len();
        ids.extend(std::iter::repeat_n(pad as i64, padn).chain(r.iter().map(|&t| t as i64)));
        pos.extend(std::iter::repeat_n(0i64, padn).chain(0..r.len() as i64));
        valid.push((0..len).map(|k| k >= padn).collect::<Vec<bool>>());
    }
    let ids = Tensor::from_data(TensorData::new(ids, [n, len]), &device);
    let pos = Tensor::from_data(TensorData::new(pos, [n, len]), &device);
    let mask = causal_padding_mask::<B>(&valid, len, None, &device);
    (ids, model.context(pos, Some(mask)))
}

/// Residual stream entering each layer at the last `npos` positions, per prompt: `[layers][npos][hidden]`
/// flattened.
pub fn activations<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    npos: usize,
    pad: u32,
    batch: usize,
) -> Vec<Vec<f32>> {
    let layers = model.num_layers();
    let hidden = model.model.embed_tokens.dims()[1];
    let mut out = Vec::with_capacity(prompts.len());
    let all: Vec<&Vec<u32>> = prompts.iter().collect();
    for chunk in all.chunks(batch.max(1)) {
        let (ids, ctx) = left_batch(model, chunk, pad);
        let [n, len] = ids.dims();
        let mut rows = vec![vec![0f32; layers * npos * hidden]; n];
        let mut tap = |layer: usize, x: &Tensor<B, 3>| {
            if layer >= layers {
                return;
            }
            let v = host_f32(x.clone().slice([0..n, len - npos..len, 0..hidden]));
            let per = npos * hidden;
            for (r, row) in rows.iter_mut().enumerate() {
                row[layer * per..][..per].copy_from_slice(&v[r * per..][..per]);
            }
        };
        model.forward_hidden(ids, &ctx, None, Some(&mut tap));
        out.extend(rows);
    }
    out
}

/// The mean of per-prompt activations.
pub fn mean_of(acts: &[Vec<f32>]) -> Vec<f64> {
    let mut sum = vec![0f64; acts.first().map_or(0, |a| a.len())];
    for a in acts {
        for (s, &x) in sum.iter_mut().zip(a) {
            *s += f64::from(x);
        }
    }
    let n = acts.len().max(1) as f64;
    sum.iter_mut().for_each(|x| *x /= n);
    sum
}

/// Mean residual stream entering each layer at the last `npos` positions: `[layers][npos][hidden]`,
/// flattened.
pub fn mean_activations<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    npos: usize,
    pad: u32,
    batch: usize,
) -> Vec<f64> {
    mean_of(&activations(model, prompts, npos, pad, batch))
}

/// Log-probabilities of the next token after each prompt, `[n, vocab]`.
pub fn last_logprobs<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    pad: u32,
    batch: usize,
) -> Tensor<B, 2> {
    let mut parts = Vec::new();
    let all: Vec<&Vec<u32>> = prompts.iter().collect();
    for chunk in all.chunks(batch.max(1)) {
        let (ids, ctx) = left_batch(model, chunk, pad);
        let [n, len] = ids.dims();
        let h = model.forward_hidden(ids, &ctx, None, None);
        let d = h.dims()[2];
        let last = h.slice([0..n, len - 1..len, 0..d]);
        parts.push(log_softmax(model.logits(last).squeeze_dim::<2>(1), 1));
    }
    Tensor::cat(parts, 0)
}

/// log p(R) − log(1 − p(R)) per prompt, R = the refusal tokens.
pub fn refusal_scores<B: Backend>(logprobs: Tensor<B, 2>, refusal_ids: &[u32]) -> Vec<f64> {
    let device = logprobs.device();
    let idx: Vec<i64> = refusal_ids.iter().map(|&i| i as i64).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [refusal_ids.len()]), &device);
    let p = host_f32(logprobs.select(1, idx).exp().sum_dim(1));
    p.iter()
        .map(|&p| {
            let p = (p as f64).clamp(1e-12, 1.0 - 1e-12);
            p.ln() - (1.0 - p).ln()
        })
        .collect()
}

/// Mean KL(P_base ‖ P) of next-token distributions given as log-probs.
pub fn mean_kl<B: Backend>(base: Tensor<B, 2>, other: Tensor<B, 2>) -> f64 {
    let n = base.dims()[0].max(1) as f64;
    let kl = (base.clone().exp() * (base - other)).sum();
    (kl.into_scalar().elem::<f64>() / n).max(0.0)
}

/// Candidate directions: mean(harmful) − mean(harmless) per (layer, position), optionally with the
/// component along the harmless mean removed ("projected abliteration"). Same layout as the means.
pub fn candidates(harmful: &[f64], harmless: &[f64], hidden: usize, projected: bool) -> Vec<f64> {
    let mut out: Vec<f64> = harmful.iter().zip(harmless).map(|(a, b)| a - b).collect();
    if projected {
        for (r, h) in out.chunks_mut(hidden).zip(harmless.chunks(hidden)) {
            let hn = h.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            let dot: f64 = r.iter().zip(h).map(|(a, b)| a * b / hn).sum();
            for (x, y) in r.iter_mut().zip(h) {
                *x -= dot * y / hn;
            }
        }
    }
    out
}

pub fn unit(v: &[f64]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    v.iter().map(|x| (x / n) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burnish_core::backend::Cpu;

    #[test]
    fn refusal_score_is_log_odds() {
        // p = [0.5, 0.25, 0.25]; R = {1, 2} → p(R) = 0.5 → 0; R = {1} → ln(1/3).
        let lp = Tensor::<Cpu, 2>::from_data(
            TensorData::new(vec![0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln()], [1, 3]),
            &Default::default(),
        );
        assert!(refusal_scores(lp.clone(), &[1, 2])[0].abs() < 1e-6);
        assert!((refusal_scores(lp, &[1])[0] - (1.0f64 / 3.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn projection_removes_the_harmless_component() {
        let harmful = [3.0, 1.0];
        let harmless = [1.0, 0.0];
        let r = candidates(&harmful, &harmless, 2, true);
        assert!((r[0]).abs() < 1e-12 && (r[1] - 1.0).abs() < 1e-12, "{r:?}");
        assert_eq!(candidates(&harmful, &harmless, 2, false), vec![2.0, 1.0]);
    }
}
