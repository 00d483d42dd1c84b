//! AdamW, learning-rate schedules and global-norm gradient clipping, with PyTorch's / transformers'
//! exact semantics. The optimizer state is keyed by parameter name, so a checkpoint restores it onto a
//! freshly loaded model (Burn's own optimizers key state by `ParamId`, which is new in every process).

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burnish_core::burn;
use serde::{Deserialize, Serialize};

/// `torch.optim.AdamW` hyper-parameters (transformers' `TrainingArguments` defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// First and second moments of one parameter.
#[derive(Clone, Debug)]
pub struct Moments<B: Backend> {
    pub m: Tensor<B, 2>,
    pub v: Tensor<B, 2>,
}

#[derive(Clone, Debug)]
pub struct AdamW<B: Backend> {
    pub cfg: AdamWConfig,
    /// Optimizer steps taken (bias correction uses `step` after increment).
    pub step: u64,
    pub state: BTreeMap<String, Moments<B>>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(cfg: AdamWConfig) -> Self {
        Self {
            cfg,
            step: 0,
            state: BTreeMap::new(),
        }
    }

    /// Starts a step: bumps the counter used for bias correction. Call once before `update`s.
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// The new value of parameter `name` given its gradient (PyTorch's AdamW, decoupled weight decay).
    pub fn update(
        &mut self,
        name: &str,
        param: Tensor<B, 2>,
        grad: Tensor<B, 2>,
        lr: f64,
    ) -> Tensor<B, 2> {
        let c = &self.cfg;
        let t = self.step.max(1) as i32;
        let st = self
            .state
            .entry(name.to_string())
            .or_insert_with(|| Moments {
                m: grad.zeros_like(),
                v: grad.zeros_like(),
            });
        st.m = st.m.clone().mul_scalar(c.beta1) + grad.clone().mul_scalar(1.0 - c.beta1);
        st.v = st.v.clone().mul_scalar(c.beta2) + grad.square().mul_scalar(1.0 - c.beta2);
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let denom = st.v.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(c.eps);
        let param = param.mul_scalar(1.0 - lr * c.weight_decay);
        param - st.m.clone().div(denom).mul_scalar(lr / bc1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    #[default]
    Linear,
    Cosine,
}

/// Learning rate for optimizer step `step` (0-based) of `total`, as transformers' schedulers: linear
/// warm-up from 0, then constant, linear decay to 0, or half-cosine decay to 0.
pub fn lr_at(schedule: Schedule, base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / span;
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - progress).max(0.0),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
    }
}

/// Global L2 norm of all gradients and the factor that clips it to `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`: `min(1, max_norm / (norm + 1e-6))`).
pub fn clip_factor(total_norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if max > 0.0 => (max / (total_norm + 1e-6)).min(1.0),
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burnish_core::backend::Cpu;
    use burnish_core::burn::tensor::TensorData;

    fn t(v: &[f32]) -> Tensor<Cpu, 2> {
        Tensor::from_data(
            TensorData::new(v.to_vec(), [1, v.len()]),
            &Default::default(),
        )
    }

    /// torch.optim.AdamW(lr=0.1, weight_decay=0.01) on p=[1,-2,3] with gradients g1=[0.5,-1,2] then
    /// g2=[-0.5,0.25,1] (torch 2.15) gives these parameters after each step.
    #[test]
    fn adamw_matches_torch() {
        let mut opt = AdamW::<Cpu>::new(AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        });
        let torch = [
            [0.899_000_05_f32, -1.898, 2.897],
            [0.903_364_2, -1.849_155_3, 2.800_885_2],
        ];
        let mut p = t(&[1.0, -2.0, 3.0]);
        for (g, want) in [[0.5, -1.0, 2.0], [-0.5, 0.25, 1.0]].iter().zip(torch) {
            opt.begin_step();
            p = opt.update("w", p, t(g), 0.1);
            let got = p.clone().into_data().to_vec::<f32>().unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn schedules_match_transformers() {
        // get_linear_schedule_with_warmup(warmup=2, total=10) lambdas: 0, .5, 1, 7/8, ...
        assert_eq!(lr_at(Schedule::Linear, 1.0, 0, 2, 10), 0.0);
        assert_eq!(lr_at(Schedule::Linear, 1.0, 1, 2, 10), 0.5);
        assert_eq!(lr_at(Schedule::Linear, 1.0, 2, 2, 10), 1.0);
        assert!((lr_at(Schedule::Linear, 1.0, 3, 2, 10) - 0.875).abs() < 1e-12);
        assert_eq!(lr_at(Schedule::Linear, 1.0, 10, 2, 10), 0.0);
        // cosine: halfway through the decay is half the rate.
        assert!((lr_at(Schedule::Cosine, 2.0, 6, 2, 10) - 1.0).abs() < 1e-12);
        assert_eq!(lr_at(Schedule::Constant, 3.0, 7, 2, 10), 3.0);
        assert_eq!(lr_at(Schedule::Constant, 3.0, 0, 0, 10), 3.0);
    }

    #[test]
    fn clipping_is_global() {
        assert_eq!(clip_factor(0.5, Some(1.0)), 1.0);
        assert!((clip_factor(4.0, Some(1.0)) - 0.25).abs() < 1e-6);
        assert_eq!(clip_factor(4.0, None), 1.0);
    }
}
