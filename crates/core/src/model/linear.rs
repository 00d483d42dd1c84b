//! Linear layer with the weight in HF's `[out, in]` orientation, so checkpoints, PEFT adapters and weight
//! edits (ablation) use the same matrices transformers does, with no transposes at the boundaries.
//! An optional LoRA adapter rides along; the base weight is frozen whenever an adapter is attached.

use burn::module::{Module, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use super::lora::Lora;

#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out_features, in_features]`, as in PyTorch.
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub lora: Option<Lora<B>>,
}

/// `x · Wᵀ` for `x` `[rows, in]` and `W` `[out, in]`. For a few rows (decoding) it is computed as
/// `(W · xᵀ)ᵀ`: the CPU gemm reads W row-major, much faster than W as a column-major right-hand side,
/// and the transpose back is of a small `[out, rows]` result.
pub(crate) fn matmul_t<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    const FEW_ROWS: usize = 32;
    if x.dims()[0] <= FEW_ROWS {
        w.matmul(x.transpose()).transpose()
    } else {
        x.matmul(w.transpose())
    }
}

/// A parameter that never receives gradients (base weights under LoRA, loaded checkpoints).
pub fn frozen<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::initialized(ParamId::new(), t)
}

impl<B: Backend> Linear<B> {
    /// A frozen linear layer from checkpoint tensors.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: frozen(weight),
            bias: bias.map(frozen),
            lora: None,
        }
    }

    /// Random init (tests and fresh heads): normal(0, std), zero bias.
    pub fn init(d_in: usize, d_out: usize, bias: bool, std: f64, device: &B::Device) -> Self {
        let w = Tensor::random([d_out, d_in], Distribution::Normal(0.0, std), device);
        let b = bias.then(|| Tensor::zeros([d_out], device));
        Self::new(w, b)
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x @ W^T + b` (+ the adapter's update when `adapters` is on) over the last dimension of
    /// `[batch, seq, in]`. The weight is never copied or transposed in memory (see `matmul_t`).
    pub fn forward(&self, x: Tensor<B, 3>, adapters: bool) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let x2 = x.reshape([b * s, d]);
        let mut y = matmul_t(x2.clone(), self.weight.val());
        if let Some(bias) = &self.bias {
            y = y + bias.val().unsqueeze_dim(0);
        }
        if let Some(lora) = &self.lora {
            // A merged adapter lives inside `weight`: switching adapters off then means subtracting it.
            match (adapters, lora.merged) {
                (true, false) => y = y + lora.delta(x2),
                (false, true) => y = y - lora.delta_no_dropout(x2),
                _ => {}
            }
        }
        y.reshape([b, s, self.out_features()])
    }
}
