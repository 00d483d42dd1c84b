//! Linear layer with the weight in HF's `[out, in]` orientation, so checkpoints, PEFT adapters and weight
//! edits (ablation) use the same matrices transformers does, with no transposes at the boundaries.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out_features, in_features]`, as in PyTorch.
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
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

    /// `x @ W^T + b` over the last dimension of a `[batch, seq, in]` input. The transposed weight is a
    /// strided view; the CPU backend's gemm reads it in place.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let y = x.reshape([b * s, d]).matmul(self.weight.val().transpose());
        let y = match &self.bias {
            Some(bias) => y + bias.val().unsqueeze_dim(0),
            None => y,
        };
        y.reshape([b, s, self.out_features()])
    }
}
