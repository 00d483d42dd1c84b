//! Model configuration, read straight from a HF `config.json` (or built from GGUF metadata).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The model families burnish runs. They share one transformer; the family only decides defaults
/// (Qwen2 has q/k/v biases) and how GGUF files name things.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Llama,
    Qwen2,
    Mistral,
}

impl Family {
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Mistral => "mistral",
        }
    }

    pub fn hf_architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Mistral => "MistralForCausalLM",
        }
    }
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
        let model_type = raw.model_type.clone().unwrap_or_default();
        let family = match model_type.as_str() {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "mistral" => Family::Mistral,
            "" => return Err(err("missing `model_type`".into())),
            other => {
                let arch = raw
                    .architectures
                    .as_ref()
                    .and_then(|a| a.first().cloned())
                    .unwrap_or_default();
                return Err(Error::Unsupported(format!(
                    "{}: model_type `{other}` ({arch}); burnish supports llama, qwen2 and mistral",
                    path.display()
                )));
            }
        };
        let need = |v: Option<usize>, key: &str| v.ok_or_else(|| err(format!("missing `{key}`")));
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(Error::Unsupported(format!(
                    "{}: hidden_act `{act}`; only `silu` (SwiGLU) is supported",
                    path.display()
                )));
            }
        }
        let params = raw.rope_parameters.as_ref().filter(|p| p.is_object());
        let rope_theta = params
            .and_then(|p| p.get("rope_theta")?.as_f64())
            .or(raw.rope_theta)
            .unwrap_or(10000.0);
        let scaling = match params {
            Some(p) if p.get("rope_type").and_then(|t| t.as_str()) != Some("default") => Some(p),
            Some(_) => None,
            None => raw.rope_scaling.as_ref(),
        };
        let rope_scaling = match scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => parse_rope_scaling(v).map_err(|m| err(format!("rope_scaling: {m}")))?,
        };
        let sliding_window = match (&raw.sliding_window, raw.use_sliding_window, family) {
            // Qwen2 configs carry a window but only use it when `use_sliding_window` is set.
            (_, Some(false), _) | (_, None, Family::Qwen2) => None,
            (Some(serde_json::Value::Number(n)), _, _) => n.as_u64().map(|n| n as usize),
            _ => None,
        };
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
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
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
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(family == Family::Qwen2),
            attention_bias,
            o_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            sliding_window,
            bos_token_id: ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: ids(&raw.eos_token_id),
            pad_token_id: ids(&raw.pad_token_id).first().copied(),
            torch_dtype: raw.torch_dtype.or(raw.dtype),
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
        Ok(())
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
        let layer = attn + mlp + 2 * h;
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
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.torch_dtype.clone().unwrap_or_else(|| "float32".into()),
        });
        let o = j.as_object_mut().expect("object literal");
        if self.family != Family::Qwen2 {
            o.insert("attention_bias".into(), self.attention_bias.into());
            o.insert("mlp_bias".into(), self.mlp_bias.into());
        }
        if let Some(w) = self.sliding_window {
            o.insert("sliding_window".into(), w.into());
            if self.family == Family::Qwen2 {
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

    /// Inverse frequencies of RoPE for this config, scaling applied (as HF's `_compute_*_parameters`).
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d as f64))
            .collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
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

fn parse_rope_scaling(v: &serde_json::Value) -> std::result::Result<Option<RopeScaling>, String> {
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
        other => Err(format!(
            "rope_type `{other}` is not supported (supported: llama3, linear)"
        )),
    }
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
