//! Model configuration, read straight from a HF `config.json` (or built from GGUF metadata).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The model families burnish runs. They share one transformer; the family decides defaults (Qwen2 has
/// q/k/v biases, Gemma scales its embeddings), the config keys read and written, and how GGUF files name
/// things. What each family switches on is a field of [`ModelConfig`], not a code path of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Llama,
    Qwen2,
    Mistral,
    Qwen3,
    Gemma2,
    Gemma3,
    Phi3,
}

/// `model_type` values burnish reads, for error messages.
pub const SUPPORTED_MODEL_TYPES: &str = "llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3";

impl Family {
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Mistral => "mistral",
            Family::Qwen3 => "qwen3",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3_text",
            Family::Phi3 => "phi3",
        }
    }

    pub fn hf_architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Gemma2 => "Gemma2ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
            Family::Phi3 => "Phi3ForCausalLM",
        }
    }

    /// Gemma's layout: RMSNorm scaling by `1 + weight`, norms before and after attention and MLP,
    /// embeddings scaled by √hidden, GeGLU.
    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
    }

    /// llama.cpp permutes the Q/K rows of these architectures into its interleaved RoPE order.
    pub fn gguf_permutes_qk(self) -> bool {
        matches!(self, Family::Llama | Family::Mistral)
    }
}

/// The MLP's gate activation (HF `hidden_act` / `hidden_activation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up` (Llama, Qwen, Mistral).
    #[default]
    #[serde(rename = "silu")]
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma's `gelu_pytorch_tanh`).
    #[serde(rename = "gelu_pytorch_tanh")]
    GeluTanh,
}

/// Which attention a layer uses (HF `layer_types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerType {
    #[serde(rename = "full_attention")]
    Full,
    /// Attends to the last `sliding_window` positions only (and, in Gemma 3, uses the local RoPE base).
    #[serde(rename = "sliding_attention")]
    Sliding,
}

/// RoPE frequency scaling, as HF's `rope_scaling`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.1: frequencies below `low_freq_factor` wavelengths are divided by `factor`, smoothly.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// LongRoPE (Phi-3): frequency `i` divided by `short_factor[i]`, or by `long_factor[i]` in a forward
    /// pass whose largest position reaches `original_max_position_embeddings`; cos and sin are multiplied
    /// by `attention_factor` (from the config, or `sqrt(1 + ln(max/original) / ln(original))`).
    Longrope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
}

/// A validated model configuration. Field names are HF's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2; Llama's `attention_bias`).
    pub attention_bias: bool,
    /// Bias on o_proj (Llama's `attention_bias` covers it too; Qwen2 has none).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// dtype the checkpoint was saved in (informational).
    pub torch_dtype: Option<String>,
    #[serde(default)]
    pub hidden_act: Activation,
    /// Per-head RMSNorm of queries and keys before RoPE (`q_norm`, `k_norm`: Qwen3, Gemma 3).
    #[serde(default)]
    pub qk_norm: bool,
    /// Gemma: every RMSNorm scales by `1 + weight`, each layer has norms before and after attention and
    /// MLP, and embeddings are multiplied by √hidden.
    #[serde(default)]
    pub gemma_layout: bool,
    /// Attention scores are scaled by `query_pre_attn_scalar^-1/2` instead of `head_dim^-1/2` (Gemma).
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    /// `cap * tanh(score / cap)` on attention scores (Gemma 2).
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    /// `cap * tanh(logit / cap)` on the output logits (Gemma 2).
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    /// One entry per layer; `Sliding` layers attend within `sliding_window`. Empty means every layer is
    /// `Sliding` when a window is set and `Full` otherwise (configs saved before this field existed).
    #[serde(default)]
    pub layer_types: Vec<LayerType>,
    /// RoPE base of the sliding layers (Gemma 3: 10 000, unscaled); the full layers use `rope_theta`
    /// and `rope_scaling`.
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    /// q, k and v in one `qkv_proj`, gate and up in one `gate_up_proj` (Phi-3), as the checkpoint and
    /// PEFT adapters have them.
    #[serde(default)]
    pub fused_projections: bool,
}

/// `config.json` as written by transformers; only the fields burnish reads.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers >= 4.56 may write `rope_parameters` (theta + scaling together) instead.
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<serde_json::Value>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    pad_token_id: Option<serde_json::Value>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    /// Gemma's name for `hidden_act`.
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    layer_types: Option<Vec<String>>,
    /// Gemma 3 before transformers 5: the sliding layers' RoPE base.
    rope_local_base_freq: Option<f64>,
    /// Gemma 3 before transformers 5 wrote no `layer_types`: every `pattern`-th layer is full.
    sliding_window_pattern: Option<usize>,
    #[serde(rename = "_sliding_window_pattern")]
    sliding_window_pattern_v5: Option<usize>,
    /// Phi-3: the pretraining context LongRoPE's factors are relative to (top level before transformers 5).
    original_max_position_embeddings: Option<usize>,
    partial_rotary_factor: Option<f64>,
}

/// RoPE settings of a config: the full layers' base and scaling, and the sliding layers' base.
struct Rope {
    theta: f64,
    scaling: Option<RopeScaling>,
    local_base: Option<f64>,
}

impl RawConfig {
    fn family(&self, path: &Path) -> Result<Family> {
        let model_type = self.model_type.clone().unwrap_or_default();
        let arch = || {
            self.architectures
                .as_ref()
                .and_then(|a| a.first().cloned())
                .unwrap_or_default()
        };
        Ok(match model_type.as_str() {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "mistral" => Family::Mistral,
            "qwen3" => Family::Qwen3,
            "gemma2" => Family::Gemma2,
            "gemma3_text" => Family::Gemma3,
            "phi3" => Family::Phi3,
            "" => {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    msg: "missing `model_type`".into(),
                })
            }
            "gemma3" => {
                return Err(Error::Unsupported(format!(
                    "{}: model_type `gemma3` ({}) is Gemma 3's vision-language checkpoint; burnish \
                     loads the text model (model_type `gemma3_text`, Gemma3ForCausalLM, as the 270M \
                     and 1B checkpoints are, or a GGUF of any size)",
                    path.display(),
                    arch()
                )))
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "{}: model_type `{other}` ({}); burnish supports {SUPPORTED_MODEL_TYPES}",
                    path.display(),
                    arch()
                )))
            }
        })
    }

    fn activation(&self, family: Family, path: &Path) -> Result<Activation> {
        let key = if family.is_gemma() {
            ("hidden_activation", &self.hidden_activation)
        } else {
            ("hidden_act", &self.hidden_act)
        };
        match key.1.as_deref() {
            None if family.is_gemma() => Ok(Activation::GeluTanh),
            None | Some("silu") => Ok(Activation::Silu),
            Some("gelu_pytorch_tanh") => Ok(Activation::GeluTanh),
            Some(other) => Err(Error::Unsupported(format!(
                "{}: {} `{other}`; supported: silu (SwiGLU), gelu_pytorch_tanh (GeGLU)",
                path.display(),
                key.0
            ))),
        }
    }

    /// transformers 5 writes `rope_parameters` (theta and scaling together; Gemma 3: one entry per layer
    /// type), earlier versions `rope_theta` + `rope_scaling` (+ Gemma 3's `rope_local_base_freq`).
    fn rope(&self, family: Family) -> std::result::Result<Rope, String> {
        let params = self.rope_parameters.as_ref().filter(|p| p.is_object());
        let per_type = params.filter(|p| p.get("full_attention").is_some_and(|v| v.is_object()));
        let (full, local) = match per_type {
            Some(p) => (p.get("full_attention"), p.get("sliding_attention")),
            None => (params, None),
        };
        let theta_of =
            |p: Option<&serde_json::Value>| p.and_then(|p| p.get("rope_theta")?.as_f64());
        let scaling = match full {
            Some(p) if p.get("rope_type").and_then(|t| t.as_str()) != Some("default") => Some(p),
            Some(_) => None,
            None => self.rope_scaling.as_ref(),
        };
        if let Some(f) = full
            .and_then(|p| p.get("partial_rotary_factor")?.as_f64())
            .or(self.partial_rotary_factor)
            .filter(|&f| f != 1.0)
        {
            return Err(format!(
                "partial_rotary_factor {f}: RoPE on part of each head is not supported"
            ));
        }
        let longrope = LongropeContext {
            original_max: self.original_max_position_embeddings,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
        };
        let scaling = match scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                parse_rope_scaling(v, &longrope).map_err(|m| format!("rope_scaling: {m}"))?
            }
        };
        if let Some(l) = local {
            if l.get("rope_type")
                .and_then(|t| t.as_str())
                .unwrap_or("default")
                != "default"
            {
                return Err("scaled RoPE on sliding layers is not supported".into());
            }
        }
        let local_base = theta_of(local)
            .or(self.rope_local_base_freq)
            .or((family == Family::Gemma3).then_some(10000.0));
        Ok(Rope {
            theta: theta_of(full).or(self.rope_theta).unwrap_or(10000.0),
            scaling,
            local_base,
        })
    }

    /// Which layers slide. Without a window every layer is full.
    fn layer_types(
        &self,
        family: Family,
        n: usize,
        window: Option<usize>,
    ) -> std::result::Result<Vec<LayerType>, String> {
        if window.is_none() {
            return Ok(vec![LayerType::Full; n]);
        }
        if let Some(names) = &self.layer_types {
            if names.len() != n {
                return Err(format!(
                    "`layer_types` has {} entries for {n} layers",
                    names.len()
                ));
            }
            return names
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(LayerType::Full),
                    "sliding_attention" => Ok(LayerType::Sliding),
                    o => Err(format!(
                        "`layer_types`: `{o}` (supported: full_attention, sliding_attention)"
                    )),
                })
                .collect();
        }
        let pattern = self
            .sliding_window_pattern
            .or(self.sliding_window_pattern_v5);
        Ok(default_layer_types(family, n, pattern))
    }
}

/// A family's layer pattern when the config lists none (GGUF files, older configs): Gemma 2 alternates
/// sliding and global layers, Gemma 3 has `pattern - 1` sliding layers (default 5) before each global
/// one, and in other families every layer slides once a window is set.
pub fn default_layer_types(family: Family, n: usize, pattern: Option<usize>) -> Vec<LayerType> {
    let pattern = pattern.unwrap_or(6).max(1);
    (0..n)
        .map(|i| {
            let sliding = match family {
                Family::Gemma2 => i % 2 == 0,
                Family::Gemma3 => (i + 1) % pattern != 0,
                _ => true,
            };
            if sliding {
                LayerType::Sliding
            } else {
                LayerType::Full
            }
        })
        .collect()
}

fn ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|n| vec![n as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => vec![],
    }
}

impl ModelConfig {
    /// Reads and validates a HF `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let err = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        let family = raw.family(path)?;
        let gemma = family.is_gemma();
        let need = |v: Option<usize>, key: &str| v.ok_or_else(|| err(format!("missing `{key}`")));
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_hidden_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        let hidden_act = raw.activation(family, path)?;
        let rope = raw.rope(family).map_err(|m| err(format!("rope: {m}")))?;
        let sliding_window = match (&raw.sliding_window, raw.use_sliding_window, family) {
            // Qwen2/3 configs carry a window but only use it when `use_sliding_window` is set.
            (_, Some(false), _) | (_, None, Family::Qwen2 | Family::Qwen3) => None,
            (Some(serde_json::Value::Number(n)), _, _) => n.as_u64().map(|n| n as usize),
            _ => None,
        };
        let layer_types = raw
            .layer_types(family, num_hidden_layers, sliding_window)
            .map_err(err)?;
        let (attention_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            _ => {
                let b = raw.attention_bias.unwrap_or(false);
                (b, b)
            }
        };
        let cfg = ModelConfig {
            family,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: match raw.head_dim {
                Some(d) => d,
                None if num_attention_heads > 0
                    && !hidden_size.is_multiple_of(num_attention_heads) =>
                {
                    return Err(err(format!(
                        "`hidden_size` ({hidden_size}) is not a multiple of `num_attention_heads` \
                         ({num_attention_heads}); give `head_dim` when the heads are not \
                         hidden_size / num_attention_heads wide"
                    )))
                }
                None => hidden_size / num_attention_heads.max(1),
            },
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope.theta,
            rope_scaling: rope.scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: raw
                .tie_word_embeddings
                .unwrap_or(matches!(family, Family::Qwen2) || gemma),
            attention_bias,
            o_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            sliding_window,
            bos_token_id: ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: ids(&raw.eos_token_id),
            pad_token_id: ids(&raw.pad_token_id).first().copied(),
            torch_dtype: raw.torch_dtype.clone().or(raw.dtype.clone()),
            hidden_act,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            gemma_layout: gemma,
            query_pre_attn_scalar: gemma.then(|| raw.query_pre_attn_scalar.unwrap_or(256.0)),
            attn_logit_softcapping: raw.attn_logit_softcapping.filter(|_| gemma),
            final_logit_softcapping: raw.final_logit_softcapping.filter(|_| gemma),
            layer_types,
            rope_local_base_freq: rope.local_base,
            fused_projections: family == Family::Phi3,
        };
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Checks the shapes fit together; the message names the offending key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(format!("`{k}` must be positive"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "`head_dim` ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if self.rms_norm_eps.is_nan()
            || self.rms_norm_eps <= 0.0
            || self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
        {
            return Err("`rms_norm_eps` and `rope_theta` must be positive".into());
        }
        if let Some(RopeScaling::Longrope {
            short_factor,
            long_factor,
            ..
        }) = &self.rope_scaling
        {
            let half = self.head_dim / 2;
            if short_factor.len() != half || long_factor.len() != half {
                return Err(format!(
                    "rope_scaling: longrope needs head_dim / 2 = {half} short and long factors, \
                     got {} and {}",
                    short_factor.len(),
                    long_factor.len()
                ));
            }
            if short_factor
                .iter()
                .chain(long_factor)
                .any(|f| f.is_nan() || *f <= 0.0)
            {
                return Err("rope_scaling: longrope factors must be positive".into());
            }
        }
        if !self.layer_types.is_empty() && self.layer_types.len() != self.num_hidden_layers {
            return Err(format!(
                "`layer_types` has {} entries for {} layers",
                self.layer_types.len(),
                self.num_hidden_layers
            ));
        }
        let positive = [
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("rope_local_base_freq", self.rope_local_base_freq),
        ];
        for (k, v) in positive {
            if v.is_some_and(|v| v.is_nan() || v <= 0.0) {
                return Err(format!("`{k}` must be positive"));
            }
        }
        Ok(())
    }

    /// The attention of layer `i`.
    pub fn layer_type(&self, i: usize) -> LayerType {
        match (self.layer_types.get(i), self.sliding_window) {
            (_, None) => LayerType::Full,
            (Some(t), _) => *t,
            (None, Some(_)) => LayerType::Sliding,
        }
    }

    pub fn num_parameters(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.attention_bias {
            attn += q + 2 * kv;
        }
        if self.o_bias {
            attn += h;
        }
        let mut mlp = 3 * h * i;
        if self.mlp_bias {
            mlp += 2 * i + h;
        }
        let norms = if self.gemma_layout { 4 * h } else { 2 * h };
        let qk = if self.qk_norm { 2 * self.head_dim } else { 0 };
        let layer = attn + mlp + norms + qk;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + h + head
    }

    /// The `config.json` transformers expects for this model.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut j = serde_json::json!({
            "architectures": [self.family.hf_architecture()],
            "model_type": self.family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.torch_dtype.clone().unwrap_or_else(|| "float32".into()),
        });
        let o = j.as_object_mut().expect("object literal");
        self.family_keys(o);
        if !matches!(self.family, Family::Qwen2 | Family::Qwen3) {
            o.insert("attention_bias".into(), self.attention_bias.into());
            o.insert("mlp_bias".into(), self.mlp_bias.into());
        }
        if let Some(w) = self.sliding_window {
            o.insert("sliding_window".into(), w.into());
            if matches!(self.family, Family::Qwen2 | Family::Qwen3) {
                o.insert("use_sliding_window".into(), true.into());
            }
        }
        if let Some(rs) = &self.rope_scaling {
            o.insert(
                "rope_scaling".into(),
                serde_json::to_value(rs).expect("serializable"),
            );
        }
        if let Some(b) = self.bos_token_id {
            o.insert("bos_token_id".into(), b.into());
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [e] => {
                o.insert("eos_token_id".into(), (*e).into());
            }
            es => {
                o.insert("eos_token_id".into(), es.to_vec().into());
            }
        }
        if let Some(p) = self.pad_token_id {
            o.insert("pad_token_id".into(), p.into());
        }
        j
    }

    /// The keys only some families have: Gemma's activation name, query scalar and soft-caps, Phi-3's
    /// original context, Gemma 3's local RoPE base, and the per-layer attention types.
    fn family_keys(&self, o: &mut serde_json::Map<String, Value>) {
        let act = serde_json::to_value(self.hidden_act).expect("serializable");
        if self.family.is_gemma() {
            o.insert("hidden_activation".into(), act);
            let opt = |v: Option<f64>| v.map_or(Value::Null, Value::from);
            o.insert(
                "query_pre_attn_scalar".into(),
                opt(self.query_pre_attn_scalar),
            );
            o.insert(
                "attn_logit_softcapping".into(),
                opt(self.attn_logit_softcapping),
            );
            o.insert(
                "final_logit_softcapping".into(),
                opt(self.final_logit_softcapping),
            );
        } else {
            o.insert("hidden_act".into(), act);
        }
        if let Some(RopeScaling::Longrope {
            original_max_position_embeddings,
            ..
        }) = &self.rope_scaling
        {
            o.insert(
                "original_max_position_embeddings".into(),
                (*original_max_position_embeddings).into(),
            );
        }
        if let Some(b) = self.rope_local_base_freq {
            o.insert("rope_local_base_freq".into(), b.into());
        }
        if self.sliding_window.is_some() {
            let types: Vec<LayerType> = (0..self.num_hidden_layers)
                .map(|i| self.layer_type(i))
                .collect();
            o.insert(
                "layer_types".into(),
                serde_json::to_value(types).expect("serializable"),
            );
        }
    }

    /// Inverse frequencies of RoPE of the sliding layers when they have a base of their own (Gemma 3),
    /// unscaled.
    pub fn rope_inv_freq_local(&self) -> Option<Vec<f64>> {
        self.rope_local_base_freq
            .map(|theta| base_inv_freq(theta, self.head_dim))
    }

    /// LongRoPE's long-context frequencies, the position from which a pass uses them, and the factor
    /// cos and sin are scaled by.
    pub fn rope_long(&self) -> Option<(Vec<f64>, usize, f64)> {
        match &self.rope_scaling {
            Some(RopeScaling::Longrope {
                long_factor,
                original_max_position_embeddings,
                attention_factor,
                ..
            }) => {
                let base = base_inv_freq(self.rope_theta, self.head_dim);
                Some((
                    divide(&base, long_factor),
                    *original_max_position_embeddings,
                    *attention_factor,
                ))
            }
            _ => None,
        }
    }

    /// Inverse frequencies of RoPE for this config, scaling applied (as HF's `_compute_*_parameters`).
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let base = base_inv_freq(self.rope_theta, self.head_dim);
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Longrope { short_factor, .. }) => divide(&base, short_factor),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

fn divide(base: &[f64], factors: &[f64]) -> Vec<f64> {
    base.iter().zip(factors).map(|(f, e)| f / e).collect()
}

fn base_inv_freq(theta: f64, d: usize) -> Vec<f64> {
    (0..d / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / d as f64))
        .collect()
}

/// What LongRoPE needs from outside `rope_scaling` in older configs.
#[derive(Default)]
struct LongropeContext {
    original_max: Option<usize>,
    max_position_embeddings: usize,
}

fn parse_rope_scaling(
    v: &serde_json::Value,
    ctx: &LongropeContext,
) -> std::result::Result<Option<RopeScaling>, String> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .ok_or("missing `rope_type`")?;
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or(format!("missing number `{k}`"))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        })),
        // Phi-3's first releases called it "su".
        "longrope" | "su" => parse_longrope(v, ctx).map(Some),
        other => Err(format!(
            "rope_type `{other}` is not supported (supported: llama3, linear, longrope)"
        )),
    }
}

fn parse_longrope(
    v: &serde_json::Value,
    ctx: &LongropeContext,
) -> std::result::Result<RopeScaling, String> {
    let factors = |k: &str| -> std::result::Result<Vec<f64>, String> {
        v.get(k)
            .and_then(|a| a.as_array())
            .and_then(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>())
            .ok_or(format!("missing list of numbers `{k}`"))
    };
    let original = v
        .get("original_max_position_embeddings")
        .and_then(|x| x.as_u64())
        .map(|x| x as usize)
        .or(ctx.original_max)
        .filter(|&o| o > 1)
        .ok_or("longrope needs `original_max_position_embeddings` (> 1)")?;
    let factor = v
        .get("factor")
        .and_then(|x| x.as_f64())
        .unwrap_or(ctx.max_position_embeddings as f64 / original as f64);
    // transformers: the paper's attention factor unless the config gives one.
    let attention_factor = match v.get("attention_factor").and_then(|x| x.as_f64()) {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(RopeScaling::Longrope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position_embeddings: original,
        attention_factor,
    })
}

/// Where a model lives: a HF directory or a single GGUF file.
#[derive(Clone, Debug)]
pub enum ModelPath {
    HfDir(PathBuf),
    Gguf(PathBuf),
}

impl ModelPath {
    pub fn detect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            if !path.join("config.json").exists() {
                return Err(Error::NotFound {
                    path: path.join("config.json"),
                    hint: " (a model directory needs config.json and model.safetensors)".into(),
                });
            }
            Ok(ModelPath::HfDir(path.to_path_buf()))
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            Ok(ModelPath::Gguf(path.to_path_buf()))
        } else {
            let mut magic = [0u8; 4];
            use std::io::Read;
            let ok = std::fs::File::open(path)
                .and_then(|mut f| f.read_exact(&mut magic))
                .is_ok();
            if ok && &magic == b"GGUF" {
                Ok(ModelPath::Gguf(path.to_path_buf()))
            } else {
                Err(Error::Unsupported(format!(
                    "{}: not a model directory (with config.json) or a .gguf file",
                    path.display()
                )))
            }
        }
    }
}
