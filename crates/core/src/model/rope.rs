//! Rotary position embedding in HF's rotate_half layout (the first and second halves of each head are the
//! pair being rotated; Burn's built-in RoPE pairs adjacent elements instead, which does not match HF weights).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// cos/sin for one batch of positions, shared by every layer of a forward pass.
#[derive(Clone, Debug)]
pub struct RopeTables<B: Backend> {
    /// `[batch, 1, seq, head_dim]`
    pub cos: Tensor<B, 4>,
    pub sin: Tensor<B, 4>,
}

impl<B: Backend> RopeTables<B> {
    /// `inv_freq` has `head_dim / 2` entries; `positions` is `[batch, seq]`.
    pub fn new(inv_freq: &[f32], positions: Tensor<B, 2, Int>) -> Self {
        let device = positions.device();
        let [b, s] = positions.dims();
        let half = inv_freq.len();
        let inv = Tensor::<B, 1>::from_data(TensorData::new(inv_freq.to_vec(), [half]), &device);
        // angle[b, s, i] = pos[b, s] * inv_freq[i], in f32 like transformers.
        let angle = positions.float().reshape([b, s, 1]) * inv.reshape([1, 1, half]);
        let angle = Tensor::cat(vec![angle.clone(), angle], 2).reshape([b, 1, s, 2 * half]);
        Self {
            cos: angle.clone().cos(),
            sin: angle.sin(),
        }
    }

    /// Rotates `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, s, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
        let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}
