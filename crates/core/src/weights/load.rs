use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use super::{HostTensor, WeightSource};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{Linear, Llama, Parts};
use crate::precision::Precision;

/// HF checkpoint names, built the same way the module tree is laid out.
pub struct HfNames;

impl HfNames {
    pub const EMBED: &'static str = "model.embed_tokens.weight";
    pub const NORM: &'static str = "model.norm.weight";
    pub const LM_HEAD: &'static str = "lm_head.weight";

    pub fn layer(i: usize, rest: &str) -> String {
        format!("model.layers.{i}.{rest}")
    }

    /// Every linear of a layer, with its HF sub-path (`self_attn.q_proj`, ...).
    pub const LINEARS: [&'static str; 7] = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
}

struct Loader<'a, B: Backend, S: WeightSource + ?Sized> {
    src: &'a S,
    device: &'a B::Device,
    /// Of the weight matrices (crate::precision); vectors (norms, biases) stay f32.
    matrices: DType,
}

impl<B: Backend, S: WeightSource + ?Sized> Loader<'_, B, S> {
    fn host(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.src.tensor(name)?.ok_or_else(|| Error::MissingTensor {
            path: self.src.path().to_path_buf(),
            name: name.to_string(),
        })?;
        if t.shape != shape {
            return Err(Error::Shape {
                path: self.src.path().to_path_buf(),
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: t.shape,
            });
        }
        Ok(t)
    }

    fn t2(&self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>> {
        let t = self.host(name, &shape)?;
        // Converted on the host: the device never holds an f32 copy of a bf16/f16 base.
        Ok(Tensor::from_data(
            TensorData::new(t.data, shape),
            (self.device, self.matrices),
        ))
    }

    fn t1(&self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        let t = self.host(name, &[len])?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, [len]),
            self.device,
        ))
    }

    fn linear(&self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        let w = self.t2(&format!("{prefix}.weight"), [d_out, d_in])?;
        let b = if bias {
            Some(self.t1(&format!("{prefix}.bias"), d_out)?)
        } else {
            None
        };
        Ok(Linear::new(w, b))
    }
}

impl<B: Backend, S: WeightSource + ?Sized> Parts<B> for Loader<'_, B, S> {
    fn linear(&mut self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        Loader::linear(self, prefix, d_in, d_out, bias)
    }

    fn norm(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        self.t1(name, len)
    }

    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>> {
        self.t2(name, shape)
    }
}

/// Builds the model straight from a weight source: each tensor goes from the mapped file to the device
/// once, and no random initialisation happens first.
pub fn load_llama<B: Backend, S: WeightSource + ?Sized>(
    cfg: &ModelConfig,
    src: &S,
    device: &B::Device,
) -> Result<Llama<B>> {
    load_llama_as(cfg, src, device, Precision::F32)
}

/// [`load_llama`] with the weight matrices in `precision` (crate::precision).
pub fn load_llama_as<B: Backend, S: WeightSource + ?Sized>(
    cfg: &ModelConfig,
    src: &S,
    device: &B::Device,
    precision: Precision,
) -> Result<Llama<B>> {
    // A config read from a file (GGUF metadata) may claim sizes whose products overflow: no tensor can
    // have such a shape.
    let hd = cfg.head_dim;
    for (heads, what) in [
        (cfg.num_attention_heads, "num_attention_heads"),
        (cfg.num_key_value_heads, "num_key_value_heads"),
    ] {
        if heads.checked_mul(hd).is_none() {
            return Err(Error::Config {
                path: src.path().to_path_buf(),
                msg: format!("{what} ({heads}) × head_dim ({hd}) overflows"),
            });
        }
    }
    let matrices = precision.dtype();
    Llama::build(
        cfg,
        &mut Loader::<B, S> {
            src,
            device,
            matrices,
        },
    )
}
