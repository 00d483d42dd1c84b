//! Conditional steering (CAST, Lee et al. 2024): add the refusal vector only where the model's own
//! harmful-vs-harmless direction says the input is harmful. A constant added vector raises refusals on
//! harmless prompts as much as on harmful ones (docs/ablate.md); the gate makes it selective.
//!
//! The gate is one extra MLP unit in the layer before the steered one: with x̂ the MLP's RMS-normed
//! input (h/rms(h) ⊙ γ), `z = g·x̂ + b` is `s·(cos(h, ĉ) − θ)/Δ`, so `silu(z)·d` adds about the full
//! vector where the cosine sits at the harmful prompts' mean and nearly nothing at the harmless mean.
//! It is an ordinary Llama MLP neuron, so it generates, measures KL and exports like any weight.

use burnish_core::backend::host_f32;
use burnish_core::burn::tensor::backend::Backend;
use burnish_core::Llama;
use burnish_core::Result;

use super::tensor;

/// Slope of the gate: z moves by `SHARPNESS` between the threshold and the harmful mean when θ sits
/// halfway (silu(4) ≈ 3.9, silu(−4) ≈ −0.07).
pub const SHARPNESS: f64 = 8.0;

/// Where harmful and harmless prompts fall along the condition direction at one layer.
pub struct Condition {
    /// Unit difference of the class means.
    pub dir: Vec<f64>,
    /// cos(activation, dir) of every harmful / harmless prompt.
    pub harmful: Vec<f64>,
    pub harmless: Vec<f64>,
}

fn slice(a: &[f32], layer: usize, npos: usize, hidden: usize) -> &[f32] {
    &a[(layer * npos + npos - 1) * hidden..][..hidden]
}

fn cos(a: &[f32], dir: &[f64]) -> f64 {
    let norm = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    a.iter()
        .zip(dir)
        .map(|(&x, d)| f64::from(x) * d)
        .sum::<f64>()
        / norm.max(1e-12)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The condition at the residual entering `layer` (last prompt position), from per-prompt activations.
pub fn condition(
    harmful: &[Vec<f32>],
    harmless: &[Vec<f32>],
    layer: usize,
    npos: usize,
    hidden: usize,
) -> Condition {
    let class_mean = |acts: &[Vec<f32>]| -> Vec<f64> {
        let mut m = vec![0f64; hidden];
        for a in acts {
            for (s, &x) in m.iter_mut().zip(slice(a, layer, npos, hidden)) {
                *s += f64::from(x);
            }
        }
        m.iter().map(|x| x / acts.len().max(1) as f64).collect()
    };
    let (mh, ml) = (class_mean(harmful), class_mean(harmless));
    let diff: Vec<f64> = mh.iter().zip(&ml).map(|(a, b)| a - b).collect();
    let norm = diff.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    let dir: Vec<f64> = diff.iter().map(|x| x / norm).collect();
    let cosines = |acts: &[Vec<f32>]| -> Vec<f64> {
        acts.iter()
            .map(|a| cos(slice(a, layer, npos, hidden), &dir))
            .collect()
    };
    Condition {
        harmful: cosines(harmful),
        harmless: cosines(harmless),
        dir,
    }
}

impl Condition {
    /// The distance between the class means along the direction (> 0 by construction unless the
    /// classes coincide).
    pub fn spread(&self) -> f64 {
        (mean(&self.harmful) - mean(&self.harmless)).max(1e-9)
    }

    /// The threshold `t` of the way from the harmless mean to the harmful mean.
    pub fn threshold(&self, t: f64) -> f64 {
        mean(&self.harmless) + t * self.spread()
    }

    /// Share of the prompts the gate classifies right at threshold `theta`.
    pub fn accuracy(&self, theta: f64) -> f64 {
        let right = self.harmful.iter().filter(|&&c| c > theta).count()
            + self.harmless.iter().filter(|&&c| c <= theta).count();
        right as f64 / (self.harmful.len() + self.harmless.len()).max(1) as f64
    }
}

/// The gated unit for steering vector `v` into `layer` at threshold fraction `t`: (gate weights over the
/// MLP's normed input, gate bias, down vector).
pub fn unit_weights<B: Backend>(
    model: &Llama<B>,
    layer: usize,
    v: &[f64],
    cond: &Condition,
    t: f64,
) -> (Vec<f32>, f32, Vec<f32>) {
    let hidden = v.len();
    let gamma: Vec<f32> = model
        .model
        .layers
        .get(layer.saturating_sub(1))
        .map(|l| host_f32(l.post_attention_layernorm.weight.val()))
        .unwrap_or_else(|| vec![1.0; hidden]);
    let delta = cond.spread();
    let k = SHARPNESS / (delta * (hidden as f64).sqrt());
    // x̂ = γ ⊙ h/rms(h) and h·ĉ/rms(h) = √H·cos(h, ĉ), so g = k·ĉ/γ turns g·x̂ into s·cos/Δ.
    let gate: Vec<f32> = cond
        .dir
        .iter()
        .zip(&gamma)
        .map(|(&c, &g)| {
            if g.abs() < 1e-6 {
                0.0
            } else {
                (k * c / f64::from(g)) as f32
            }
        })
        .collect();
    let bias = (-SHARPNESS * cond.threshold(t) / delta) as f32;
    // At the harmful mean z = s·(1 − t): scale d so that the unit adds `v` there.
    let z = SHARPNESS * (1.0 - t);
    let silu = z / (1.0 + (-z).exp());
    let down: Vec<f32> = v.iter().map(|&x| (x / silu.max(1e-3)) as f32).collect();
    (gate, bias, down)
}

/// A copy of `model` with `v` added to the residual stream entering `layer` where the gate is open.
pub fn steer_gated<B: Backend>(
    model: &Llama<B>,
    layer: usize,
    v: &[f64],
    cond: &Condition,
    t: f64,
) -> Result<Llama<B>> {
    let (gate, bias, down) = unit_weights(model, layer, v, cond, t);
    let mut m = model.clone();
    let device = model.device();
    m.add_gated_unit(layer, tensor(&gate, &device), bias, tensor(&down, &device))?;
    Ok(m)
}
