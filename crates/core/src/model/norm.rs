use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// RMSNorm as HF computes it: `w * x / sqrt(mean(x^2) + eps)`, or Gemma's `(1 + w) * …` (the weight is
/// kept as the checkpoint stores it, so export writes it back unchanged).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
    /// Scale by `1 + weight` (Gemma).
    pub unit_offset: bool,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: super::frozen(weight),
            eps,
            unit_offset: false,
        }
    }

    /// Gemma's norm when `unit_offset`.
    pub fn with_unit_offset(mut self, unit_offset: bool) -> Self {
        self.unit_offset = unit_offset;
        self
    }

    /// The factor each normalised element is multiplied by: `w` or `1 + w`.
    pub fn scale(&self) -> Tensor<B, 1> {
        let w = self.weight.val();
        if self.unit_offset {
            w + 1.0
        } else {
            w
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let var = x.clone().square().mean_dim(D - 1);
        let x = x * (var + self.eps).sqrt().recip();
        x * self.scale().unsqueeze()
    }
}
