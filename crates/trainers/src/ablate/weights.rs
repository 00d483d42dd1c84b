//! Editing the weights that write to the residual stream: directional ablation by orthogonalisation
//! (W ← W − w·r̂r̂ᵀW in HF orientation, per layer strength w from a kernel) and its norm-preserving
//! variant, and activation addition baked in as an MLP bias.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burnish_core::burn;
use burnish_core::weights::HfNames;
use burnish_core::Llama;
use serde::{Deserialize, Serialize};

use crate::Result;

/// Per-layer ablation strength, heretic's parameterisation: `max_weight` at layer `peak`, falling
/// linearly to `min_weight` at `distance` layers away, 0 beyond.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    pub max_weight: f64,
    pub peak: f64,
    pub min_weight: f64,
    pub distance: f64,
}

impl Kernel {
    /// The same strength at every layer (Arditi et al.'s full ablation with `w = 1`).
    pub fn flat(w: f64, layers: usize) -> Self {
        Self {
            max_weight: w,
            peak: 0.0,
            min_weight: w,
            distance: layers as f64,
        }
    }

    pub fn weight(&self, layer: usize) -> f64 {
        let d = (layer as f64 - self.peak).abs();
        if d > self.distance {
            0.0
        } else {
            self.max_weight + d / self.distance.max(1e-9) * (self.min_weight - self.max_weight)
        }
    }
}

/// One kernel per component that writes to the residual stream, as heretic: attention outputs
/// (`o_proj`) and MLP outputs (`down_proj`) tolerate different strengths.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kernels {
    pub attn: Kernel,
    pub mlp: Kernel,
}

impl Kernels {
    pub fn flat(w: f64, layers: usize) -> Self {
        Self {
            attn: Kernel::flat(w, layers),
            mlp: Kernel::flat(w, layers),
        }
    }
}

/// `W − w·r̂(r̂ᵀW)` for `W` `[out, in]` and unit `r̂` `[out]`: removes the direction from everything `W`
/// writes. `norm_preserving` gives each input's write vector (a column) its original norm back.
pub fn orthogonalize_out<B: Backend>(
    w: Tensor<B, 2>,
    r: &Tensor<B, 1>,
    strength: f64,
    norm_preserving: bool,
) -> Tensor<B, 2> {
    let r2 = r.clone().unsqueeze_dim::<2>(1); // [out, 1]
    let proj = r2.clone().transpose().matmul(w.clone()); // [1, in]
    let out = w.clone() - r2.matmul(proj).mul_scalar(strength);
    if !norm_preserving {
        return out;
    }
    let before = w.powi_scalar(2).sum_dim(0).sqrt(); // [1, in]
    let after = out
        .clone()
        .powi_scalar(2)
        .sum_dim(0)
        .sqrt()
        .clamp_min(1e-12);
    out * (before / after)
}

/// The direction to remove from a matrix whose output reaches the residual stream through an RMSNorm
/// with scale `γ` (Gemma's post-attention and post-MLP norms): the residual gets `γ ⊙ o / rms(o)`, and
/// `r · (γ ⊙ o) = (γ ⊙ r) · o`, so `o ⟂ γ ⊙ r` makes the write orthogonal to `r` whatever `rms(o)` is.
/// Unit length.
pub fn through_norm<B: Backend>(r: &Tensor<B, 1>, gamma: &Tensor<B, 1>) -> Tensor<B, 1> {
    let u = r.clone() * gamma.clone();
    let n = u.clone().square().sum().sqrt().clamp_min(1e-12);
    u / n
}

/// The same for embeddings `[vocab, hidden]`, whose rows are vectors in the residual space.
pub fn orthogonalize_rows<B: Backend>(
    e: Tensor<B, 2>,
    r: &Tensor<B, 1>,
    strength: f64,
    norm_preserving: bool,
) -> Tensor<B, 2> {
    orthogonalize_out(e.transpose(), r, strength, norm_preserving).transpose()
}

/// A copy of `model` (tensors shared, edited ones replaced) with unit direction `r` ablated from
/// `o_proj` and `down_proj` of every layer at their kernels' strengths, and from `embed_tokens` at the
/// attention kernel's layer-0 strength when `embeddings` is set. Where a norm follows the matrix
/// (Gemma's sandwich), the removed direction is the one that norm maps onto `r` ([`through_norm`]).
pub fn ablate<B: Backend>(
    model: &Llama<B>,
    r: &Tensor<B, 1>,
    kernels: &Kernels,
    embeddings: bool,
    norm_preserving: bool,
) -> Result<Llama<B>> {
    let mut m = model.clone();
    for i in 0..m.num_layers() {
        let layer = &model.model.layers[i];
        for (sub, kernel, post_norm) in [
            (
                "self_attn.o_proj",
                &kernels.attn,
                layer
                    .pre_feedforward_layernorm
                    .as_ref()
                    .map(|_| &layer.post_attention_layernorm),
            ),
            (
                "mlp.down_proj",
                &kernels.mlp,
                layer.post_feedforward_layernorm.as_ref(),
            ),
        ] {
            let w = kernel.weight(i);
            if w == 0.0 {
                continue;
            }
            let name = HfNames::layer(i, &format!("{sub}.weight"));
            let cur = m
                .weight(&name)
                .expect("every layer has o_proj and down_proj");
            let dir = match post_norm {
                Some(norm) => through_norm(r, &norm.scale()),
                None => r.clone(),
            };
            m.set_weight(&name, orthogonalize_out(cur, &dir, w, norm_preserving))?;
        }
    }
    let w0 = kernels.attn.weight(0);
    if embeddings && w0 != 0.0 {
        let e = m.weight(HfNames::EMBED).expect("embeddings");
        m.set_weight(
            HfNames::EMBED,
            orthogonalize_rows(e, r, w0, norm_preserving),
        )?;
    }
    Ok(m)
}

/// A copy of `model` that adds `v` to the residual stream entering `layer` (activation addition).
pub fn steer<B: Backend>(model: &Llama<B>, layer: usize, v: Tensor<B, 1>) -> Result<Llama<B>> {
    let mut m = model.clone();
    m.add_residual_bias(layer, v)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use burnish_core::backend::Cpu;

    fn t2(v: Vec<f32>, s: [usize; 2]) -> Tensor<Cpu, 2> {
        Tensor::from_data(TensorData::new(v, s), &Default::default())
    }

    #[test]
    fn kernel_shape() {
        let k = Kernel {
            max_weight: 1.0,
            peak: 10.0,
            min_weight: 0.2,
            distance: 4.0,
        };
        assert_eq!(k.weight(10), 1.0);
        assert!((k.weight(12) - 0.6).abs() < 1e-12);
        assert!((k.weight(6) - 0.2).abs() < 1e-12);
        assert_eq!(k.weight(5), 0.0);
        assert_eq!(Kernel::flat(1.0, 30).weight(29), 1.0);
    }

    #[test]
    fn orthogonalized_weights_write_nothing_along_the_direction() {
        let w = t2(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2]); // [out 3, in 2]
        let r = Tensor::<Cpu, 1>::from_floats([0.6, 0.8, 0.0], &Default::default());
        let o = orthogonalize_out(w.clone(), &r, 1.0, false);
        let along = r
            .clone()
            .unsqueeze_dim::<2>(0)
            .matmul(o.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(along.iter().all(|x| x.abs() < 1e-5), "{along:?}");
        // The part orthogonal to r̂ (the third output row) is untouched.
        let o3 = o
            .clone()
            .slice([2..3, 0..2])
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(o3, vec![5.0, 6.0]);
        // Half strength removes half the component; norm preservation keeps column norms.
        let half = orthogonalize_out(w.clone(), &r, 0.5, false);
        let a = r
            .clone()
            .unsqueeze_dim::<2>(0)
            .matmul(half)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let full = r
            .clone()
            .unsqueeze_dim::<2>(0)
            .matmul(w.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!((a[0] - full[0] / 2.0).abs() < 1e-5);
        let np = orthogonalize_out(w.clone(), &r, 1.0, true);
        let n = |t: Tensor<Cpu, 2>| {
            t.powi_scalar(2)
                .sum_dim(0)
                .sqrt()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        for (x, y) in n(np).iter().zip(n(w)) {
            assert!((x - y).abs() < 1e-4);
        }
        // Embedding rows: E r̂ = 0 afterwards.
        let e = t2(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
        let eo = orthogonalize_rows(e, &r, 1.0, false);
        let er = eo
            .matmul(r.unsqueeze_dim::<2>(1))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(er.iter().all(|x| x.abs() < 1e-5), "{er:?}");
    }
}
