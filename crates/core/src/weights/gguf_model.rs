//! A GGUF file as a model: llama.cpp tensor names mapped to HF names, the Q/K row permutation that
//! llama.cpp's converter applies undone, and the config rebuilt from metadata.

use std::path::Path;

use super::gguf::{GgufFile, GgufValue};
use super::{HfNames, HostTensor, WeightSource};
use crate::config::{default_layer_types, Activation, Family, ModelConfig, RopeScaling};

/// `general.architecture` values burnish reads, for error messages.
pub const SUPPORTED_GGUF_ARCHS: &str =
    "llama (incl. Mistral, SmolLM), qwen2, qwen3, gemma2, gemma3 and phi3";
use crate::error::{Error, Result};

/// llama.cpp's name for a HF tensor name (`model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`).
/// Gemma's `post_attention_layernorm` follows attention (llama.cpp: `post_attention_norm`) and its MLP
/// norm is `pre_feedforward_layernorm`; in Llama the MLP norm is `post_attention_layernorm`. Both are
/// `ffn_norm` in GGUF.
pub fn gguf_name(hf: &str, family: Family) -> Option<String> {
    match hf {
        HfNames::EMBED => return Some("token_embd.weight".into()),
        HfNames::NORM => return Some("output_norm.weight".into()),
        HfNames::LM_HEAD => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let short = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if family.is_gemma() => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" if family.is_gemma() => "ffn_norm",
        "post_feedforward_layernorm" if family.is_gemma() => "post_ffw_norm",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        // Phi-3's fused projections; llama.cpp keeps gate and up fused as `ffn_up` (rows gate, up).
        "self_attn.qkv_proj" => "attn_qkv",
        "mlp.gate_up_proj" if family == Family::Phi3 => "ffn_up",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{suffix}"))
}

/// Rows of a Q or K projection as llama.cpp stores them (pairs interleaved per head) → HF's
/// rotate_half order. The inverse of convert_hf_to_gguf's `permute`.
pub fn unpermute_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    permute_impl(data, rows, cols, n_head, false)
}

/// HF order → llama.cpp order (for writing GGUF files).
pub fn permute_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    permute_impl(data, rows, cols, n_head, true)
}

fn permute_impl(data: &[f32], rows: usize, cols: usize, n_head: usize, to_gguf: bool) -> Vec<f32> {
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..n_head {
        for j in 0..half {
            for p in 0..2 {
                let hf = h * hd + p * half + j;
                let gg = h * hd + 2 * j + p;
                let (dst, src) = if to_gguf { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

pub struct GgufWeights {
    pub file: GgufFile,
    cfg: ModelConfig,
}

impl GgufWeights {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let cfg = config_from_gguf(&file)?;
        Ok(Self { file, cfg })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
}

impl WeightSource for GgufWeights {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn contains(&self, hf_name: &str) -> bool {
        gguf_name(hf_name, self.cfg.family).is_some_and(|n| self.file.tensor_info(&n).is_some())
    }

    fn tensor(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        let Some(name) = gguf_name(hf_name, self.cfg.family) else {
            return Ok(None);
        };
        let Some(info) = self.file.tensor_info(&name) else {
            return Ok(None);
        };
        let shape = info.shape();
        let mut data = self.file.tensor_f32(&name)?;
        // llama.cpp's converter stores Gemma's norm weights as 1 + w (its RMSNorm multiplies by the weight);
        // the model here keeps HF's w, as transformers' GGUF loader does.
        if self.cfg.family.is_gemma() && hf_name.ends_with("norm.weight") {
            data.iter_mut().for_each(|x| *x -= 1.0);
        }
        // transformers reverse-permutes Q/K for llama-architecture files (Mistral GGUFs say "llama" too).
        if self.cfg.family.gguf_permutes_qk() {
            let n_head = if hf_name.contains("q_proj") {
                Some(self.cfg.num_attention_heads)
            } else if hf_name.contains("k_proj") {
                Some(self.cfg.num_key_value_heads)
            } else {
                None
            };
            if let Some(n_head) = n_head {
                // The permutation works on whole heads of `head_dim` rows: a weight `[rows, hidden]` or a
                // bias `[rows]` with `rows = n_head * head_dim`, which is what the model expects anyway.
                let rows = n_head.checked_mul(self.cfg.head_dim);
                let cols = match shape[..] {
                    [r] if Some(r) == rows => Some(1),
                    [r, c] if Some(r) == rows => Some(c),
                    _ => None,
                };
                let (Some(rows), Some(cols)) = (rows, cols) else {
                    let rows = rows.unwrap_or(usize::MAX);
                    return Err(Error::Shape {
                        path: self.file.path().to_path_buf(),
                        name,
                        expected: if shape.len() == 1 {
                            vec![rows]
                        } else {
                            vec![rows, self.cfg.hidden_size]
                        },
                        actual: shape,
                    });
                };
                data = unpermute_rows(&data, rows, cols, n_head);
            }
        }
        Ok(Some(HostTensor { shape, data }))
    }
}

/// Rebuilds the HF config from GGUF metadata (`{arch}.*` keys) and tensor shapes.
pub fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig> {
    let path = f.path().to_path_buf();
    let err = |msg: String| Error::Config {
        path: path.clone(),
        msg,
    };
    let (arch, family) = gguf_family(f)?;
    let key = |k: &str| format!("{arch}.{k}");
    let uint = |k: &str| f.get(&key(k)).and_then(GgufValue::as_usize);
    let need = |k: &str| uint(k).ok_or_else(|| err(format!("missing metadata `{}`", key(k))));
    let float = |k: &str| f.get(&key(k)).and_then(GgufValue::as_f64);
    let hidden_size = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let vocab_size = gguf_vocab_size(f, hidden_size)?;
    let rope_scaling = gguf_rope_scaling(f, &arch)?;
    // An id that does not fit u32 is no token id (rather than truncated into one).
    let tok_id = |k: &str| {
        f.get(&format!("tokenizer.ggml.{k}"))
            .and_then(GgufValue::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    let attention_bias = f.tensor_info("blk.0.attn_q.bias").is_some();
    let num_hidden_layers = need("block_count")?;
    let head_dim = uint("attention.key_length")
        .or_else(|| uint("rope.dimension_count"))
        .unwrap_or(hidden_size / heads.max(1));
    let gemma = family.is_gemma();
    // llama.cpp reads a window for Gemma only; its layer pattern and Gemma 3's local RoPE base are fixed
    // in llama.cpp rather than stored, and are taken the same way here (as transformers does).
    let sliding_window =
        uint("attention.sliding_window").filter(|_| gemma || family == Family::Phi3);
    let cfg = ModelConfig {
        family,
        vocab_size,
        hidden_size,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: uint("attention.head_count_kv").unwrap_or(heads),
        head_dim,
        rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: float("rope.freq_base").unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: uint("context_length").unwrap_or(2048),
        tie_word_embeddings: f.tensor_info("output.weight").is_none(),
        attention_bias,
        o_bias: f.tensor_info("blk.0.attn_output.bias").is_some(),
        mlp_bias: f.tensor_info("blk.0.ffn_up.bias").is_some(),
        sliding_window,
        bos_token_id: tok_id("bos_token_id"),
        eos_token_ids: tok_id("eos_token_id").into_iter().collect(),
        pad_token_id: tok_id("padding_token_id"),
        torch_dtype: None,
        hidden_act: if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
        qk_norm: f.tensor_info("blk.0.attn_q_norm.weight").is_some(),
        gemma_layout: gemma,
        query_pre_attn_scalar: gemma
            .then(|| gemma_query_scalar(family, num_hidden_layers, hidden_size, heads, head_dim)),
        attn_logit_softcapping: float("attn_logit_softcapping").filter(|_| gemma),
        final_logit_softcapping: float("final_logit_softcapping").filter(|_| gemma),
        layer_types: match sliding_window {
            Some(_) => default_layer_types(family, num_hidden_layers, None),
            None => vec![],
        },
        rope_local_base_freq: (family == Family::Gemma3).then_some(10000.0),
        fused_projections: family == Family::Phi3,
    };
    cfg.validate().map_err(err)?;
    Ok(cfg)
}

/// `general.architecture` and the family it is; an architecture burnish does not run is an error
/// naming it and the supported ones.
fn gguf_family(f: &GgufFile) -> Result<(String, Family)> {
    let arch = f
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| Error::Config {
            path: f.path().to_path_buf(),
            msg: "missing metadata `general.architecture`".into(),
        })?
        .to_string();
    let family = match arch.as_str() {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        "qwen3" => Family::Qwen3,
        "gemma2" => Family::Gemma2,
        "gemma3" => Family::Gemma3,
        "phi3" => Family::Phi3,
        other => {
            return Err(Error::Unsupported(format!(
                "{}: GGUF architecture `{other}`; burnish supports {SUPPORTED_GGUF_ARCHS}",
                f.path().display()
            )))
        }
    };
    Ok((arch, family))
}

/// The vocabulary size, from the embedding's `[vocab, hidden]` shape.
fn gguf_vocab_size(f: &GgufFile, hidden_size: usize) -> Result<usize> {
    let embd = f
        .tensor_info("token_embd.weight")
        .ok_or_else(|| Error::MissingTensor {
            path: f.path().to_path_buf(),
            name: "token_embd.weight".into(),
        })?;
    // Anything but two dims (a file may claim 0 to 4) cannot be an embedding.
    match embd.shape()[..] {
        [vocab, _] => Ok(vocab),
        ref other => Err(Error::Config {
            path: f.path().to_path_buf(),
            msg: format!(
                "tensor `token_embd.weight` has shape {other:?}, expected [vocab_size, {hidden_size}]"
            ),
        }),
    }
}

/// RoPE scaling: Phi-3's LongRoPE, linear, or none. Llama 3.1's per-frequency factors and other
/// schemes are refused by name.
fn gguf_rope_scaling(f: &GgufFile, arch: &str) -> Result<Option<RopeScaling>> {
    let key = |k: &str| format!("{arch}.{k}");
    if f.tensor_info("rope_freqs.weight").is_some() {
        return Err(Error::Unsupported(format!(
            "{}: per-frequency RoPE factors (`rope_freqs.weight`, Llama 3.1 GGUF) are not supported yet; \
             load the HF directory instead",
            f.path().display()
        )));
    }
    if let Some(long) = phi3_longrope(f, &key)? {
        return Ok(Some(long));
    }
    match f.get(&key("rope.scaling.type")).and_then(GgufValue::as_str) {
        None | Some("none") => Ok(None),
        Some("linear") => {
            let factor = f
                .get(&key("rope.scaling.factor"))
                .and_then(GgufValue::as_f64);
            let factor = factor.ok_or_else(|| Error::Config {
                path: f.path().to_path_buf(),
                msg: "missing rope.scaling.factor".into(),
            })?;
            Ok(Some(RopeScaling::Linear { factor }))
        }
        Some(other) => Err(Error::Unsupported(format!(
            "{}: rope scaling `{other}`",
            f.path().display()
        ))),
    }
}

/// What Gemma scales queries by, which its GGUF files do not store: `head_dim`, except in the 27B models
/// (46 layers in Gemma 2, 62 in Gemma 3), whose checkpoints use `hidden / heads`. llama.cpp decides it
/// the same way, from the layer count.
fn gemma_query_scalar(
    family: Family,
    layers: usize,
    hidden: usize,
    heads: usize,
    hd: usize,
) -> f64 {
    let is_27b = matches!(
        (family, layers),
        (Family::Gemma2, 46) | (Family::Gemma3, 62)
    );
    if is_27b {
        hidden as f64 / heads.max(1) as f64
    } else {
        hd as f64
    }
}

/// LongRoPE as llama.cpp's converter stores it for Phi-3: the factors as tensors `rope_factors_long` and
/// `rope_factors_short`, the original context and the attention factor as metadata.
fn phi3_longrope(f: &GgufFile, key: &dyn Fn(&str) -> String) -> Result<Option<RopeScaling>> {
    let (Some(_), Some(_)) = (
        f.tensor_info("rope_factors_long.weight"),
        f.tensor_info("rope_factors_short.weight"),
    ) else {
        return Ok(None);
    };
    let path = f.path().to_path_buf();
    let err = |msg: String| Error::Config {
        path: path.clone(),
        msg,
    };
    let read = |name: &str| -> Result<Vec<f64>> {
        Ok(f.tensor_f32(name)?.into_iter().map(f64::from).collect())
    };
    let original = f
        .get(&key("rope.scaling.original_context_length"))
        .and_then(GgufValue::as_usize)
        .filter(|&o| o > 1)
        .ok_or_else(|| {
            err(format!(
                "LongRoPE factors without `{}`",
                key("rope.scaling.original_context_length")
            ))
        })?;
    let context = f
        .get(&key("context_length"))
        .and_then(GgufValue::as_usize)
        .unwrap_or(original);
    let factor = context as f64 / original as f64;
    let attention_factor = match f
        .get(&key("rope.scaling.attn_factor"))
        .and_then(GgufValue::as_f64)
    {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(Some(RopeScaling::Longrope {
        short_factor: read("rope_factors_short.weight")?,
        long_factor: read("rope_factors_long.weight")?,
        original_max_position_embeddings: original,
        attention_factor,
    }))
}
