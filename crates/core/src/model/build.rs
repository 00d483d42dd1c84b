//! One place that turns a config into the module tree: which tensors a family has, under which HF
//! names, with which per-layer settings. Loading a checkpoint and initialising a random model differ
//! only in where the tensors come from ([`Parts`]).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{
    frozen, inv_freq, Attention, DecoderLayer, Linear, Llama, LlamaModel, LongRope, Mlp, RmsNorm,
};
use crate::config::{LayerType, ModelConfig};
use crate::error::Result;
use crate::weights::HfNames;

/// Where a model's tensors come from. Names are HF's full names (`model.layers.0.self_attn.q_proj`
/// for a linear, `model.norm.weight` for a vector); shapes are what the config implies and a source
/// must refuse any other.
pub trait Parts<B: Backend> {
    /// A linear `[d_out, d_in]` (`{prefix}.weight`, and `{prefix}.bias` when `bias`).
    fn linear(&mut self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>>;
    /// A norm weight.
    fn norm(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>>;
    /// A matrix (embeddings, an untied head).
    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>>;
}

impl<B: Backend> Llama<B> {
    /// The model `cfg` describes, every tensor taken from `parts`. Layers are built as they arrive, so a
    /// config claiming absurd sizes fails at its first missing tensor rather than at an allocation.
    pub fn build(cfg: &ModelConfig, parts: &mut impl Parts<B>) -> Result<Self> {
        let h = cfg.hidden_size;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers.min(256));
        for i in 0..cfg.num_hidden_layers {
            layers.push(decoder_layer(cfg, i, parts)?);
        }
        let embed = parts.matrix(HfNames::EMBED, [cfg.vocab_size, h])?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            let w = parts.matrix(HfNames::LM_HEAD, [cfg.vocab_size, h])?;
            Some(Linear::new(w, None))
        };
        let norm = rms_norm(cfg, parts.norm(HfNames::NORM, h)?);
        Ok(Llama {
            model: LlamaModel {
                embed_tokens: frozen(embed),
                layers,
                norm,
            },
            lm_head,
            inv_freq: inv_freq(cfg),
            long_rope: cfg.rope_long().map(|(f, from, a)| LongRope {
                inv_freq: f.into_iter().map(|x| x as f32).collect(),
                from,
                attention_factor: a as f32,
            }),
            local_inv_freq: cfg
                .rope_inv_freq_local()
                .map(|f| f.into_iter().map(|x| x as f32).collect()),
            sliding_window: cfg.sliding_window,
            // transformers multiplies by the scale cast to the weights' dtype.
            embed_scale: cfg.gemma_layout.then(|| (h as f64).sqrt() as f32),
            final_softcap: cfg.final_logit_softcapping,
            max_position_embeddings: cfg.max_position_embeddings,
            gradient_checkpointing: false,
        })
    }
}

fn rms_norm<B: Backend>(cfg: &ModelConfig, weight: Tensor<B, 1>) -> RmsNorm<B> {
    RmsNorm::new(weight, cfg.rms_norm_eps).with_unit_offset(cfg.gemma_layout)
}

fn decoder_layer<B: Backend>(
    cfg: &ModelConfig,
    i: usize,
    parts: &mut impl Parts<B>,
) -> Result<DecoderLayer<B>> {
    let h = cfg.hidden_size;
    let p = |rest: &str| HfNames::layer(i, rest);
    // Checkpoint order (attention, MLP, norms): a truncated file fails at the first tensor it lacks.
    let mut self_attn = attention(cfg, i, parts)?;
    let mlp = mlp(cfg, i, parts)?;
    let mut norm = |name: &str, len: usize| -> Result<RmsNorm<B>> {
        Ok(rms_norm(cfg, parts.norm(&p(name), len)?))
    };
    if cfg.qk_norm {
        self_attn.q_norm = Some(norm("self_attn.q_norm.weight", cfg.head_dim)?);
        self_attn.k_norm = Some(norm("self_attn.k_norm.weight", cfg.head_dim)?);
    }
    let input_layernorm = norm("input_layernorm.weight", h)?;
    let post_attention_layernorm = norm("post_attention_layernorm.weight", h)?;
    let (pre_ff, post_ff) = if cfg.gemma_layout {
        (
            Some(norm("pre_feedforward_layernorm.weight", h)?),
            Some(norm("post_feedforward_layernorm.weight", h)?),
        )
    } else {
        (None, None)
    };
    Ok(DecoderLayer {
        self_attn,
        mlp,
        input_layernorm,
        post_attention_layernorm,
        pre_feedforward_layernorm: pre_ff,
        post_feedforward_layernorm: post_ff,
    })
}

/// Layer `i`'s attention projections (separate q/k/v, or Phi-3's fused `qkv_proj`) and settings; its
/// q/k norms are added by the caller, in checkpoint order.
fn attention<B: Backend>(
    cfg: &ModelConfig,
    i: usize,
    parts: &mut impl Parts<B>,
) -> Result<Attention<B>> {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let p = |rest: &str| HfNames::layer(i, rest);
    let ab = cfg.attention_bias;
    let (q_proj, k_proj, v_proj, qkv_proj) = if cfg.fused_projections {
        let qkv = parts.linear(&p("self_attn.qkv_proj"), h, q + 2 * kv, ab)?;
        (None, None, None, Some(qkv))
    } else {
        (
            Some(parts.linear(&p("self_attn.q_proj"), h, q, ab)?),
            Some(parts.linear(&p("self_attn.k_proj"), h, kv, ab)?),
            Some(parts.linear(&p("self_attn.v_proj"), h, kv, ab)?),
            None,
        )
    };
    Ok(Attention {
        q_proj,
        k_proj,
        v_proj,
        qkv_proj,
        o_proj: parts.linear(&p("self_attn.o_proj"), q, h, cfg.o_bias)?,
        q_norm: None,
        k_norm: None,
        num_heads: cfg.num_attention_heads,
        num_kv_heads: cfg.num_key_value_heads,
        head_dim: hd,
        scale: cfg.query_pre_attn_scalar.map(|s| s.powf(-0.5)),
        softcap: cfg.attn_logit_softcapping,
        sliding: cfg.layer_type(i) == LayerType::Sliding,
    })
}

/// Layer `i`'s MLP: separate gate and up projections, or Phi-3's fused `gate_up_proj`.
fn mlp<B: Backend>(cfg: &ModelConfig, i: usize, parts: &mut impl Parts<B>) -> Result<Mlp<B>> {
    let (h, inter, mb) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
    let p = |rest: &str| HfNames::layer(i, rest);
    let (gate_proj, up_proj, gate_up_proj) = if cfg.fused_projections {
        let gu = parts.linear(&p("mlp.gate_up_proj"), h, 2 * inter, mb)?;
        (None, None, Some(gu))
    } else {
        (
            Some(parts.linear(&p("mlp.gate_proj"), h, inter, mb)?),
            Some(parts.linear(&p("mlp.up_proj"), h, inter, mb)?),
            None,
        )
    };
    Ok(Mlp {
        gate_proj,
        up_proj,
        gate_up_proj,
        down_proj: parts.linear(&p("mlp.down_proj"), inter, h, mb)?,
        act: cfg.hidden_act,
    })
}
