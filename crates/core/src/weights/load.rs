use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::{HostTensor, WeightSource};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{
    frozen, inv_freq, Attention, DecoderLayer, Linear, Llama, LlamaModel, Mlp, RmsNorm,
};

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
        Ok(Tensor::from_data(
            TensorData::new(t.data, shape),
            self.device,
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

/// Builds the model straight from a weight source: each tensor goes from the mapped file to the device
/// once, and no random initialisation happens first.
pub fn load_llama<B: Backend, S: WeightSource + ?Sized>(
    cfg: &ModelConfig,
    src: &S,
    device: &B::Device,
) -> Result<Llama<B>> {
    let ld = Loader::<B, S> { src, device };
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    // A config read from a file (GGUF metadata) may claim sizes whose products overflow: no tensor can
    // have such a shape.
    let rows = |heads: usize, what: &str| {
        heads.checked_mul(hd).ok_or_else(|| Error::Config {
            path: src.path().to_path_buf(),
            msg: format!("{what} ({heads}) × head_dim ({hd}) overflows"),
        })
    };
    let (q, kv) = (
        rows(cfg.num_attention_heads, "num_attention_heads")?,
        rows(cfg.num_key_value_heads, "num_key_value_heads")?,
    );
    let norm =
        |name: &str| -> Result<RmsNorm<B>> { Ok(RmsNorm::new(ld.t1(name, h)?, cfg.rms_norm_eps)) };
    // The layer count comes from the file too: grow as layers load rather than trust it for an allocation.
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers.min(256));
    for i in 0..cfg.num_hidden_layers {
        let p = |rest: &str| HfNames::layer(i, rest);
        layers.push(DecoderLayer {
            self_attn: Attention {
                q_proj: ld.linear(&p("self_attn.q_proj"), h, q, cfg.attention_bias)?,
                k_proj: ld.linear(&p("self_attn.k_proj"), h, kv, cfg.attention_bias)?,
                v_proj: ld.linear(&p("self_attn.v_proj"), h, kv, cfg.attention_bias)?,
                o_proj: ld.linear(&p("self_attn.o_proj"), q, h, cfg.o_bias)?,
                num_heads: cfg.num_attention_heads,
                num_kv_heads: cfg.num_key_value_heads,
                head_dim: hd,
            },
            mlp: Mlp {
                gate_proj: ld.linear(
                    &p("mlp.gate_proj"),
                    h,
                    cfg.intermediate_size,
                    cfg.mlp_bias,
                )?,
                up_proj: ld.linear(&p("mlp.up_proj"), h, cfg.intermediate_size, cfg.mlp_bias)?,
                down_proj: ld.linear(
                    &p("mlp.down_proj"),
                    cfg.intermediate_size,
                    h,
                    cfg.mlp_bias,
                )?,
            },
            input_layernorm: norm(&p("input_layernorm.weight"))?,
            post_attention_layernorm: norm(&p("post_attention_layernorm.weight"))?,
        });
    }
    let embed = ld.t2(HfNames::EMBED, [cfg.vocab_size, h])?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(Linear::new(
            ld.t2(HfNames::LM_HEAD, [cfg.vocab_size, h])?,
            None,
        ))
    };
    Ok(Llama {
        model: LlamaModel {
            embed_tokens: frozen(embed),
            layers,
            norm: norm(HfNames::NORM)?,
        },
        lm_head,
        inv_freq: inv_freq(cfg),
        sliding_window: cfg.sliding_window,
        max_position_embeddings: cfg.max_position_embeddings,
    })
}
