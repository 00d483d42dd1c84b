//! Exporting a (merged) model: a HF directory transformers loads, or a GGUF file for llama.cpp-family
//! tools. Every file is written atomically.

use std::path::Path;

use burn::tensor::backend::Backend;
use serde_json::{json, Value};

use crate::config::{default_layer_types, Family, ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::io::{publish_dir, staging_dir, write_atomic, Existing};
use crate::model::Llama;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use crate::weights::gguf::{GgmlType, GgufFile, GgufWriter};
use crate::weights::{gguf_name, permute_rows, write_safetensors};

/// On-disk dtype of an exported HF checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            o => Err(format!("unknown dtype `{o}` (f32, f16, bf16)")),
        }
    }
}

/// Tensor type of an exported GGUF file (1-D tensors always stay F32, as llama.cpp does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GgufQuant {
    #[default]
    F32,
    F16,
    Q8_0,
}

impl std::str::FromStr for GgufQuant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(GgufQuant::F32),
            "f16" => Ok(GgufQuant::F16),
            "q8_0" => Ok(GgufQuant::Q8_0),
            o => Err(format!("unknown GGUF type `{o}` (f32, f16, q8_0)")),
        }
    }
}

/// What travels with the weights: tokenizer, template, and the GGUF the model came from (its
/// tokenizer metadata is copied verbatim into an exported GGUF).
pub struct ExportSource<'a> {
    pub config: &'a ModelConfig,
    pub tokenizer: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    pub source_gguf: Option<&'a GgufFile>,
}

fn host<B: Backend>(t: burn::tensor::Tensor<B, 1>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::Unsupported(format!("reading tensor data: {e:?}")))
}

/// Writes `config.json`, `model.safetensors`, tokenizer files and `generation_config.json` into `dir`.
/// Adapters must be merged or dropped first (see `Llama::drop_adapters`).
/// Writes the HF directory `dir` (model.safetensors, config.json, tokenizer files): built in a staging
/// directory beside it and renamed into place, so `dir` is never a mix of old and new files (stale
/// shards and their index included). An existing `dir` is replaced only with [`Existing::Replace`].
pub fn export_hf<B: Backend>(
    model: &Llama<B>,
    src: &ExportSource<'_>,
    dir: &Path,
    dtype: Dtype,
    existing: Existing,
) -> Result<()> {
    if model.has_adapters() {
        return Err(Error::Unsupported(
            "merge or drop the LoRA adapters before exporting".into(),
        ));
    }
    existing.check(dir)?;
    let staged = staging_dir(dir)?;
    let written = write_hf(model, src, &staged, dtype);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    written?;
    publish_dir(&staged, dir, existing)
}

fn write_hf<B: Backend>(
    model: &Llama<B>,
    src: &ExportSource<'_>,
    dir: &Path,
    dtype: Dtype,
) -> Result<()> {
    let (st_dtype, torch_dtype) = match dtype {
        Dtype::F32 => (safetensors::Dtype::F32, "float32"),
        Dtype::F16 => (safetensors::Dtype::F16, "float16"),
        Dtype::Bf16 => (safetensors::Dtype::BF16, "bfloat16"),
    };
    let mut tensors = Vec::new();
    for (name, shape, t) in model.named_tensors() {
        let data = host(t)?;
        let bytes: Vec<u8> = match dtype {
            Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => data
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            Dtype::Bf16 => data
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        };
        tensors.push((name, shape, bytes));
    }
    write_safetensors(
        &dir.join("model.safetensors"),
        st_dtype,
        &tensors,
        &[("format", "pt")],
    )?;
    drop(tensors);

    let mut cfg = src.config.clone();
    cfg.torch_dtype = Some(torch_dtype.into());
    write_json(&dir.join("config.json"), &cfg.to_hf_json())?;
    let tok = src.tokenizer;
    src.tokenizer.save(&dir.join("tokenizer.json"))?;
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
        "model_max_length": cfg.max_position_embeddings,
        "bos_token": tok.bos_token, "eos_token": tok.eos_token,
        "pad_token": tok.pad_token, "unk_token": tok.unk_token,
    });
    if let Some(t) = src.template {
        tc["chat_template"] = Value::String(t.source().to_string());
    }
    write_json(&dir.join("tokenizer_config.json"), &tc)?;
    let eos: Vec<u32> =
        cfg.eos_token_ids
            .iter()
            .copied()
            .chain(tok.eos_id())
            .fold(vec![], |mut v, e| {
                if !v.contains(&e) {
                    v.push(e);
                }
                v
            });
    let gen = json!({"bos_token_id": cfg.bos_token_id.or(tok.bos_id()), "eos_token_id": eos,
        "pad_token_id": tok.pad_id().or(cfg.pad_token_id)});
    write_json(&dir.join("generation_config.json"), &gen)
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    write_atomic(
        path,
        serde_json::to_string_pretty(v).expect("json").as_bytes(),
    )
}

/// Writes a GGUF file: architecture metadata, tokenizer, chat template and tensors (Q/K rows permuted as
/// llama.cpp's converter does for the llama architecture).
pub fn export_gguf<B: Backend>(
    model: &Llama<B>,
    src: &ExportSource<'_>,
    path: &Path,
    quant: GgufQuant,
    existing: Existing,
) -> Result<()> {
    if model.has_adapters() {
        return Err(Error::Unsupported(
            "merge or drop the LoRA adapters before exporting".into(),
        ));
    }
    existing.check(path)?;
    let cfg = src.config;
    let arch = match cfg.family {
        Family::Llama | Family::Mistral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
        Family::Gemma2 => "gemma2",
        Family::Gemma3 => "gemma3",
        Family::Phi3 => "phi3",
    };
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", arch);
    w.add_metadata(
        "general.name",
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    w.add_metadata(
        "general.file_type",
        match quant {
            GgufQuant::F32 => 0u32,
            GgufQuant::F16 => 1,
            GgufQuant::Q8_0 => 7,
        },
    );
    shape_metadata(&mut w, cfg, arch, path);
    rope_metadata(&mut w, cfg, arch)?;
    tokenizer_metadata(&mut w, src)?;
    if let Some(t) = src.template {
        w.add_metadata("tokenizer.chat_template", t.source());
    }
    for (name, shape, t) in model.named_tensors() {
        let gname = gguf_name(&name, cfg.family)
            .ok_or_else(|| Error::Unsupported(format!("no GGUF name for `{name}`")))?;
        let mut data = host(t)?;
        // llama.cpp multiplies Gemma's norms by the stored weight: it stores 1 + w.
        if cfg.family.is_gemma() && name.ends_with("norm.weight") {
            data.iter_mut().for_each(|x| *x += 1.0);
        }
        if cfg.family.gguf_permutes_qk() {
            let heads = if name.contains("self_attn.q_proj") {
                Some(cfg.num_attention_heads)
            } else if name.contains("self_attn.k_proj") {
                Some(cfg.num_key_value_heads)
            } else {
                None
            };
            if let Some(h) = heads {
                let cols = if shape.len() == 2 { shape[1] } else { 1 };
                data = permute_rows(&data, shape[0], cols, h);
            }
        }
        let target = match (shape.len(), quant) {
            (1, _) | (_, GgufQuant::F32) => GgmlType::F32,
            (_, GgufQuant::F16) => GgmlType::F16,
            // Q8_0 blocks are 32 wide; other rows fall back to F16, as llama.cpp's quantizer does.
            (_, GgufQuant::Q8_0) if shape[shape.len() - 1] % 32 == 0 => GgmlType::Q8_0,
            (_, GgufQuant::Q8_0) => GgmlType::F16,
        };
        w.add_tensor(gname, &shape, &data, target)?;
    }
    w.write(path)
}

/// The model's shape and family settings under `{arch}.*`, as llama.cpp's converter writes them.
fn shape_metadata(w: &mut GgufWriter, cfg: &ModelConfig, arch: &str, path: &Path) {
    let k = |s: &str| format!("{arch}.{s}");
    w.add_metadata(k("context_length"), cfg.max_position_embeddings as u32);
    w.add_metadata(k("embedding_length"), cfg.hidden_size as u32);
    w.add_metadata(k("block_count"), cfg.num_hidden_layers as u32);
    w.add_metadata(k("feed_forward_length"), cfg.intermediate_size as u32);
    w.add_metadata(k("attention.head_count"), cfg.num_attention_heads as u32);
    w.add_metadata(k("attention.head_count_kv"), cfg.num_key_value_heads as u32);
    w.add_metadata(k("attention.key_length"), cfg.head_dim as u32);
    w.add_metadata(k("attention.value_length"), cfg.head_dim as u32);
    w.add_metadata(k("rope.dimension_count"), cfg.head_dim as u32);
    w.add_metadata(k("rope.freq_base"), cfg.rope_theta as f32);
    w.add_metadata(
        k("attention.layer_norm_rms_epsilon"),
        cfg.rms_norm_eps as f32,
    );
    w.add_metadata(k("vocab_size"), cfg.vocab_size as u32);
    if let (Family::Phi3, Some(win)) = (cfg.family, cfg.sliding_window) {
        w.add_metadata(k("attention.sliding_window"), win as u32);
    }
    if cfg.family.is_gemma() {
        let fixed = default_layer_types(cfg.family, cfg.num_hidden_layers, None);
        let types: Vec<_> = (0..cfg.num_hidden_layers)
            .map(|i| cfg.layer_type(i))
            .collect();
        if cfg.sliding_window.is_some() && types != fixed {
            tracing::warn!(
                "{}: GGUF has no key for the layer pattern; llama.cpp (and burnish) will read this \
                 model's sliding and full layers as {}'s fixed pattern, not as this model has them",
                path.display(),
                arch
            );
        }
        if let Some(win) = cfg.sliding_window {
            w.add_metadata(k("attention.sliding_window"), win as u32);
        }
        for (key, v) in [
            ("attn_logit_softcapping", cfg.attn_logit_softcapping),
            ("final_logit_softcapping", cfg.final_logit_softcapping),
        ] {
            if let Some(v) = v {
                w.add_metadata(k(key), v as f32);
            }
        }
    }
}

/// RoPE scaling: linear as metadata, LongRoPE (Phi-3) as factor tensors plus metadata; Llama 3's scaling
/// (a `rope_freqs` tensor) is not written yet.
fn rope_metadata(w: &mut GgufWriter, cfg: &ModelConfig, arch: &str) -> Result<()> {
    let k = |s: &str| format!("{arch}.{s}");
    match &cfg.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            w.add_metadata(k("rope.scaling.type"), "linear");
            w.add_metadata(k("rope.scaling.factor"), *factor as f32);
        }
        Some(RopeScaling::Longrope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            attention_factor,
        }) => {
            // As llama.cpp's converter writes Phi-3: factors as tensors, the rest as metadata.
            w.add_metadata(
                k("rope.scaling.original_context_length"),
                *original_max_position_embeddings as u32,
            );
            w.add_metadata(k("rope.scaling.attn_factor"), *attention_factor as f32);
            for (name, f) in [
                ("rope_factors_long.weight", long_factor),
                ("rope_factors_short.weight", short_factor),
            ] {
                let data: Vec<f32> = f.iter().map(|&x| x as f32).collect();
                w.add_tensor(name.to_string(), &[data.len()], &data, GgmlType::F32)?;
            }
        }
        Some(RopeScaling::Llama3 { .. }) => {
            return Err(Error::Unsupported(
                "GGUF export of Llama 3 rope scaling (rope_freqs tensor) is not supported yet; export a HF directory".into(),
            ))
        }
    }
    Ok(())
}

/// Tokenizer metadata: copied from the source GGUF when there is one, else rebuilt from tokenizer.json
/// (byte-level BPE only).
fn tokenizer_metadata(w: &mut GgufWriter, src: &ExportSource<'_>) -> Result<()> {
    if let Some(g) = src.source_gguf {
        for (key, value) in g.metadata() {
            if key.starts_with("tokenizer.ggml.") {
                w.add_metadata(key.clone(), value.clone());
            }
        }
        return Ok(());
    }
    let tok = src.tokenizer.inner();
    let j: Value = serde_json::from_str(
        &tok.to_string(false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?,
    )
    .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let model = &j["model"];
    let byte_level = serde_json::to_string(&j["pre_tokenizer"])
        .unwrap_or_default()
        .contains("ByteLevel");
    if model["type"] != "BPE" || !byte_level {
        return Err(Error::Unsupported(
            "GGUF export needs a byte-level BPE tokenizer (GPT-2/Llama 3/Qwen style); this one is not".into(),
        ));
    }
    let n = tok.get_vocab_size(true);
    let mut tokens = vec![String::new(); n];
    for (t, id) in tok.get_vocab(true) {
        if let Some(slot) = tokens.get_mut(id as usize) {
            *slot = t;
        }
    }
    let added = tok.get_added_tokens_decoder();
    let types: Vec<i32> = (0..n as u32)
        .map(|id| match added.get(&id) {
            Some(a) if a.special => 3,
            Some(_) => 4,
            None => 1,
        })
        .collect();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    Value::Array(p) => p
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" "),
                    _ => String::new(),
                })
                .collect()
        })
        .unwrap_or_default();
    w.add_metadata("tokenizer.ggml.model", "gpt2");
    w.add_metadata("tokenizer.ggml.pre", "default");
    w.add_metadata("tokenizer.ggml.tokens", tokens);
    w.add_metadata("tokenizer.ggml.token_type", types);
    w.add_metadata("tokenizer.ggml.merges", merges);
    let t = src.tokenizer;
    for (key, id) in [
        ("bos_token_id", t.bos_id()),
        ("eos_token_id", t.eos_id()),
        ("padding_token_id", t.pad_id()),
        (
            "unknown_token_id",
            t.unk_token.as_deref().and_then(|u| t.token_to_id(u)),
        ),
    ] {
        if let Some(id) = id {
            w.add_metadata(format!("tokenizer.ggml.{key}"), id);
        }
    }
    w.add_metadata("tokenizer.ggml.add_bos_token", false);
    Ok(())
}
