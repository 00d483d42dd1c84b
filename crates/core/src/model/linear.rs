//! Linear layer with the weight in HF's `[out, in]` orientation, so checkpoints, PEFT adapters and weight
//! edits (ablation) use the same matrices transformers does, with no transposes at the boundaries.
//! An optional LoRA adapter rides along; the base weight is frozen whenever an adapter is attached.

use burn::module::{Module, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use super::lora::Lora;
use super::Adapters;

#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out_features, in_features]`, as in PyTorch.
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub lora: Option<Lora<B>>,
}

/// `x · Wᵀ` for `x` `[rows, in]` and `W` `[out, in]`, in W's dtype, the result in x's: a bf16/f16 base
/// (crate::precision) meets f32 activations here, through explicit casts (GPU backends would not
/// notice a mismatch).
pub(crate) fn matmul_t<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    let (xd, wd) = (x.dtype(), w.dtype());
    if xd == wd {
        return matmul_t_same(x, w);
    }
    matmul_t_same(x.cast(float(wd)), w).cast(float(xd))
}

/// A float tensor's dtype as the type `cast` takes.
pub(crate) fn float(d: burn::tensor::DType) -> burn::tensor::FloatDType {
    d.into()
}

/// `t` in `dtype` (a no-op when it already is).
pub(crate) fn to_dtype<B: Backend, const D: usize>(
    t: Tensor<B, D>,
    dtype: burn::tensor::DType,
) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(float(dtype))
    }
}

/// [`matmul_t`] for operands of one dtype. For a few rows (decoding) it is computed as `(W · xᵀ)ᵀ`:
/// the CPU gemm reads W row-major, much faster than W as a column-major right-hand side, and the
/// transpose back is of a small `[out, rows]` result.
fn matmul_t_same<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    const FEW_ROWS: usize = 32;
    // Burn's CPU backend runs a single matmul below ~7M multiply-adds on one thread, but a batch of
    // matmuls above ~2M in parallel: a mid-sized decode matmul (q/o projections) split into two
    // batches of output rows uses both cores. A pure reshape, no copy.
    const SERIAL_BELOW: usize = 192 * 192 * 192;
    const BATCH_PARALLEL_FROM: usize = 128 * 128 * 128;
    let [rows, k] = x.dims();
    let out = w.dims()[0];
    let ops = rows * k * out;
    if rows <= FEW_ROWS
        && out.is_multiple_of(2)
        && (BATCH_PARALLEL_FROM..SERIAL_BELOW).contains(&ops)
    {
        let halves = w.reshape([2, out / 2, k]);
        let xt = x.transpose().unsqueeze_dim::<3>(0);
        halves.matmul(xt).reshape([out, rows]).transpose()
    } else if rows <= FEW_ROWS {
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
    pub fn forward(&self, x: Tensor<B, 3>, adapters: Adapters) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let x2 = x.reshape([b * s, d]);
        let mut y = matmul_t(x2.clone(), self.weight.val());
        if let Some(bias) = &self.bias {
            y = y + bias.val().unsqueeze_dim(0);
        }
        if let Some(lora) = &self.lora {
            // A merged adapter lives inside `weight`: switching adapters off then means subtracting it.
            match (adapters, lora.merged) {
                (Adapters::On, false) => y = y + lora.delta(x2),
                (Adapters::OnWithoutDropout, false) => y = y + lora.delta_no_dropout(x2),
                (Adapters::Off, true) => y = y - lora.delta_no_dropout(x2),
                _ => {}
            }
        }
        y.reshape([b, s, self.out_features()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn every_matmul_path_gives_x_times_w_transposed() {
        let d = Default::default();
        // Few rows in the split range, few rows above it, and many rows.
        for (rows, k, out) in [(16, 576, 576), (4, 64, 64), (16, 576, 1536), (40, 96, 80)] {
            let x = Tensor::<Cpu, 2>::random([rows, k], Distribution::Normal(0.0, 1.0), &d);
            let w = Tensor::<Cpu, 2>::random([out, k], Distribution::Normal(0.0, 1.0), &d);
            let want = x.clone().matmul(w.clone().transpose());
            let got = matmul_t(x, w);
            assert_eq!(got.dims(), [rows, out]);
            let diff = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-3, "{rows}×{k}·{out}: {diff}");
        }
    }
}
