//! The pieces of PPO for RLHF as pure functions (TRL's PPO trainer; Huang et al. 2024, "The N+
//! implementation details of RLHF with PPO"). Host-side ones work on one response's per-token values;
//! the losses are tensor functions the trainer differentiates.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burnish_core::burn;
use serde::{Deserialize, Serialize};

/// How the per-token KL to the reference is estimated from l = log π(token) − log π_ref(token).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// l itself: unbiased, can be negative per token.
    #[default]
    K1,
    /// (e^−l − 1) + l: unbiased and never negative (Schulman's k3).
    K3,
}

pub fn kl_estimate(logp: f64, ref_logp: f64, est: KlEstimator) -> f64 {
    let l = logp - ref_logp;
    match est {
        KlEstimator::K1 => l,
        KlEstimator::K3 => (-l).exp() - 1.0 + l,
    }
}

/// Per-token rewards of one response: −kl_coef·KL_t at every token, plus `score` on the last one.
pub fn token_rewards(kl: &[f64], kl_coef: f64, score: f64) -> Vec<f64> {
    let mut r: Vec<f64> = kl.iter().map(|k| -kl_coef * k).collect();
    if let Some(last) = r.last_mut() {
        *last += score;
    }
    r
}

/// Generalised advantage estimation over one response: δ_t = r_t + γV_{t+1} − V_t (V after the last
/// token is 0), A_t = δ_t + γλA_{t+1}. Returns (advantages, returns = A + V).
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut next_adv = 0.0;
    for t in (0..n).rev() {
        let next_v = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_v - values[t];
        next_adv = delta + gamma * lam * next_adv;
        adv[t] = next_adv;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// Whitens all advantages of a rollout batch together: (x − mean) / (std + 1e-8), std unbiased as torch.
pub fn whiten(xs: &mut [Vec<f64>]) {
    let all: Vec<f64> = xs.iter().flatten().copied().collect();
    let n = all.len() as f64;
    if n < 2.0 {
        return;
    }
    let mean = all.iter().sum::<f64>() / n;
    let var = all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let std = var.sqrt();
    for x in xs.iter_mut().flatten() {
        *x = (*x - mean) / (std + 1e-8);
    }
}

/// Clipped policy loss per token: max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), ρ = exp(logp − old_logp).
pub fn policy_loss<B: Backend>(
    logp: Tensor<B, 1>,
    old_logp: Tensor<B, 1>,
    adv: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 1> {
    let ratio = (logp - old_logp).exp();
    let a = -adv.clone() * ratio.clone();
    let b = -adv * ratio.clamp(1.0 - eps, 1.0 + eps);
    a.max_pair(b)
}

/// Clipped value loss per token: ½·max((V − R)², (clip(V, V_old ± ε_v) − R)²).
pub fn value_loss<B: Backend>(
    v: Tensor<B, 1>,
    old_v: Tensor<B, 1>,
    returns: Tensor<B, 1>,
    eps_v: f64,
) -> Tensor<B, 1> {
    let clipped = old_v.clone() + (v.clone() - old_v).clamp(-eps_v, eps_v);
    let a = (v - returns.clone()).powi_scalar(2);
    let b = (clipped - returns).powi_scalar(2);
    a.max_pair(b).mul_scalar(0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burnish_core::backend::Cpu;

    fn t(v: &[f32]) -> Tensor<Cpu, 1> {
        Tensor::from_floats(v, &Default::default())
    }

    fn host(x: Tensor<Cpu, 1>) -> Vec<f32> {
        x.into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn gae_by_hand() {
        // γ = 1, λ = 0.5; r = [0, 0, 1], V = [0.5, 0.25, 0.75].
        // δ = [0 + 0.25 − 0.5, 0 + 0.75 − 0.25, 1 + 0 − 0.75] = [−0.25, 0.5, 0.25]
        // A2 = 0.25; A1 = 0.5 + 0.5·0.25 = 0.625; A0 = −0.25 + 0.5·0.625 = 0.0625.
        let (a, r) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.25, 0.75], 1.0, 0.5);
        let want = [0.0625, 0.625, 0.25];
        for (x, y) in a.iter().zip(want) {
            assert!((x - y).abs() < 1e-12);
        }
        assert!((r[0] - 0.5625).abs() < 1e-12 && (r[2] - 1.0).abs() < 1e-12);
        // λ = 1, γ = 1: the advantage is the return-to-go minus the value.
        let (a, _) = gae(&[1.0, 2.0], &[0.0, 0.0], 1.0, 1.0);
        assert_eq!(a, vec![3.0, 2.0]);
    }

    #[test]
    fn kl_estimators_and_rewards() {
        assert!((kl_estimate(-1.0, -1.5, KlEstimator::K1) - 0.5).abs() < 1e-12);
        let k3 = kl_estimate(-1.0, -1.5, KlEstimator::K3);
        assert!((k3 - ((-0.5f64).exp() - 1.0 + 0.5)).abs() < 1e-12);
        assert!(kl_estimate(-2.0, -1.0, KlEstimator::K3) >= 0.0);
        assert_eq!(kl_estimate(-1.0, -1.0, KlEstimator::K3), 0.0);
        assert_eq!(token_rewards(&[0.5, -0.5], 0.1, 2.0), vec![-0.05, 2.05]);
    }

    #[test]
    fn whitening() {
        let mut x = vec![vec![1.0, 2.0], vec![3.0]];
        whiten(&mut x);
        let all: Vec<f64> = x.iter().flatten().copied().collect();
        assert!(all.iter().sum::<f64>().abs() < 1e-9);
        // torch.std([1, 2, 3]) = 1 → [-1, 0, 1].
        assert!((all[0] + 1.0).abs() < 1e-6 && (all[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn clipped_losses() {
        // ρ = e^{ln 1.5} = 1.5, A = 1, ε = 0.2: max(−1.5, −1.2) = −1.2; A = −1: max(1.5, 1.2) = 1.5.
        let l = host(policy_loss(
            t(&[1.5f32.ln(), 1.5f32.ln()]),
            t(&[0.0, 0.0]),
            t(&[1.0, -1.0]),
            0.2,
        ));
        assert!((l[0] + 1.2).abs() < 1e-6 && (l[1] - 1.5).abs() < 1e-6);
        // V = 1, V_old = 0, R = 0, ε_v = 0.2: ½·max(1, 0.04) = 0.5; V = 0.1: ½·max(0.01, 0.01) = 0.005.
        let v = host(value_loss(
            t(&[1.0, 0.1]),
            t(&[0.0, 0.0]),
            t(&[0.0, 0.0]),
            0.2,
        ));
        assert!((v[0] - 0.5).abs() < 1e-6 && (v[1] - 0.005).abs() < 1e-6);
        // Clipping can raise the loss: V = 0.5 moved from V_old = 0 towards R = 1 → clipped 0.2: ½·0.64.
        let v = host(value_loss(t(&[0.5]), t(&[0.0]), t(&[1.0]), 0.2));
        assert!((v[0] - 0.32).abs() < 1e-6);
    }
}
