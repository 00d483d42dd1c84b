//! Rotary position embedding in HF's rotate_half layout (the first and second halves of each head are the
//! pair being rotated; Burn's built-in RoPE pairs adjacent elements instead, which does not match HF weights).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// cos/sin for one batch of positions, shared by every layer of a forward pass.
#[derive(Clone, Debug)]
pub struct RopeTables<B: Backend> {
    /// `[batch, seq, 1, head_dim]`
    pub cos: Tensor<B, 4>,
    pub sin: Tensor<B, 4>,
    /// rotate_half as a matrix: `x · rot = cat(−x₂, x₁)`, one small gemm instead of two strided slices,
    /// a negation and a concatenation.
    rot: Tensor<B, 2>,
    /// cos/sin repeated over each head count of the model, contiguous: products with same-shape
    /// operands take the backend's SIMD path, broadcasting ones a scalar strided walk.
    full: Vec<(usize, Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> RopeTables<B> {
    /// `inv_freq` has `head_dim / 2` entries; `positions` is `[batch, seq]`; `heads` are the head counts
    /// `apply` will see (query and key heads).
    pub fn new(inv_freq: &[f32], positions: Tensor<B, 2, Int>, heads: &[usize]) -> Self {
        let device = positions.device();
        let [b, s] = positions.dims();
        let half = inv_freq.len();
        let d = 2 * half;
        let inv = Tensor::<B, 1>::from_data(TensorData::new(inv_freq.to_vec(), [half]), &device);
        // angle[b, s, i] = pos[b, s] * inv_freq[i], in f32 like transformers.
        let angle = positions.float().reshape([b, s, 1]) * inv.reshape([1, 1, half]);
        let angle = Tensor::cat(vec![angle.clone(), angle], 2).reshape([b, s, 1, d]);
        let (cos, sin) = (angle.clone().cos(), angle.sin());
        let mut rot = vec![0f32; d * d];
        for j in 0..half {
            rot[(j + half) * d + j] = -1.0; // out[j] = −x[j + half]
            rot[j * d + j + half] = 1.0; // out[j + half] = x[j]
        }
        let mut heads = heads.to_vec();
        heads.dedup();
        let full = heads
            .into_iter()
            .map(|h| {
                (
                    h,
                    cos.clone().repeat_dim(2, h),
                    sin.clone().repeat_dim(2, h),
                )
            })
            .collect();
        Self {
            cos,
            sin,
            rot: Tensor::from_data(TensorData::new(rot, [d, d]), &device),
            full,
        }
    }

    /// cos and sin multiplied by `f` (LongRoPE's attention factor: q and k both scaled by it).
    pub fn scaled(mut self, f: f32) -> Self {
        self.cos = self.cos * f;
        self.sin = self.sin * f;
        for (_, c, s) in self.full.iter_mut() {
            *c = c.clone() * f;
            *s = s.clone() * f;
        }
        self
    }

    /// Rotates `[batch, seq, heads, head_dim]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, s, h, d] = x.dims();
        let (cos, sin) = match self.full.iter().find(|f| f.0 == h) {
            Some((_, c, s)) => (c.clone(), s.clone()),
            None => (self.cos.clone(), self.sin.clone()),
        };
        let rotated = x
            .clone()
            .reshape([b * s * h, d])
            .matmul(self.rot.clone())
            .reshape([b, s, h, d]);
        x * cos + rotated * sin
    }
}
