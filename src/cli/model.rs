//! Model commands: generate, tokenize, inspect.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burnish_core::backend::DeviceSpec;
use burnish_core::burn::tensor::backend::Backend;
use burnish_core::weights::gguf::GgufFile;
use burnish_core::weights::SafetensorsDir;
use burnish_core::{
    generate as run_generate, GenerationConfig, Message, ModelPath, Precision, Pretrained,
    TokenizerBundle,
};
use clap::Args;

#[derive(Args)]
pub struct GenerateArgs {
    /// HF model directory or .gguf file.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    system: Option<String>,
    /// Use the prompt as-is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// A Jinja chat template file, for models without one (or to override it).
    #[arg(long)]
    chat_template: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 = greedy. (Negative values parse, so the range check can say what is wrong with them.)
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop once the reply contains this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Print {"prompt_ids", "new_ids", "text"} as JSON.
    #[arg(long)]
    json: bool,
    /// cpu, wgpu, wgpu:N, cuda or cuda:N (GPUs need the cargo feature).
    #[arg(long, default_value = "cpu")]
    backend: DeviceSpec,
    /// f32, bf16 or f16: the dtype of the base's weight matrices and their matmuls (activations,
    /// norms and softmax stay f32).
    #[arg(long, default_value = "f32")]
    dtype: Precision,
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    super::on_backend!(a.backend, generate_on(a: GenerateArgs))
}

fn generate_on<B: Backend>(a: GenerateArgs, device: &B::Device) -> Result<()> {
    let mut p = Pretrained::<B>::load_as(&a.model, device, a.dtype)?;
    if let Some(path) = &a.chat_template {
        let src =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        p.set_template(&src)?;
    }
    let prompt_ids = if a.raw {
        p.tokenizer.encode(&a.prompt, true)?
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message::system(s.clone()));
        }
        msgs.push(Message::user(a.prompt.clone()));
        let text = p.render_chat(&msgs, true)?;
        p.tokenizer.encode(&text, false)?
    };
    let cfg = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        eos_ids: p.eos_ids(),
        stop_strings: a.stop.clone(),
        pad_id: p.pad_id(),
    };
    let out = run_generate(
        &p.model,
        std::slice::from_ref(&prompt_ids),
        &cfg,
        Some(&p.tokenizer),
    )?;
    let new_ids = &out[0].new_ids;
    let text = p.tokenizer.decode(new_ids, true)?;
    if a.json {
        let j = serde_json::json!({"prompt_ids": prompt_ids, "new_ids": new_ids, "text": text});
        println!("{j}");
    } else {
        println!("{text}");
    }
    Ok(())
}

#[derive(Args)]
pub struct TokenizeArgs {
    #[arg(long)]
    model: PathBuf,
    /// Print a JSON array.
    #[arg(long)]
    json: bool,
    /// Read the text from this file (`-` for standard input) instead of the argument: for texts too
    /// long for a command line.
    #[arg(long, value_name = "FILE", conflicts_with = "text")]
    file: Option<PathBuf>,
    #[arg(required_unless_present = "file")]
    text: Option<String>,
}

/// The text to tokenize: the argument, or the whole file / standard input.
fn tokenize_input(a: &TokenizeArgs) -> Result<String> {
    use std::io::Read;
    match (&a.file, &a.text) {
        (Some(p), _) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading standard input")?;
            Ok(s)
        }
        (Some(p), _) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        }
        (None, Some(t)) => Ok(t.clone()),
        (None, None) => unreachable!("clap requires the text or --file"),
    }
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let b = TokenizerBundle::load(&a.model)?;
    let text = tokenize_input(&a)?;
    let ids = b.tokenizer.encode(&text, false)?;
    if a.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        for id in ids {
            let tok = b.tokenizer.id_to_token(id).unwrap_or_default();
            println!("{id}\t{tok:?}");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct InspectArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    json: bool,
}

/// What the family adds to the plain Llama block, as `inspect` shows it.
fn layer_summary(c: &burnish_core::ModelConfig) -> String {
    use burnish_core::config::{Activation, LayerType};
    let mut parts = vec![match c.hidden_act {
        Activation::Silu => "SwiGLU".to_string(),
        Activation::GeluTanh => "GeGLU (gelu tanh)".to_string(),
    }];
    if c.gemma_layout {
        parts.push(
            "norms before and after attention and MLP, (1 + w) RMSNorm, embeddings × √hidden"
                .into(),
        );
    }
    if c.qk_norm {
        parts.push("q/k norms".into());
    }
    if c.fused_projections {
        parts.push("fused qkv_proj and gate_up_proj".into());
    }
    if let Some((_, from, f)) = c.rope_long() {
        parts.push(format!(
            "LongRoPE (long factors from position {from}, attention factor {f:.4})"
        ));
    }
    if let Some(s) = c.query_pre_attn_scalar {
        parts.push(format!("query scale {s}^-1/2"));
    }
    if let Some(cap) = c.attn_logit_softcapping {
        parts.push(format!("attention soft-cap {cap}"));
    }
    if let Some(cap) = c.final_logit_softcapping {
        parts.push(format!("final soft-cap {cap}"));
    }
    if let Some(w) = c.sliding_window {
        let sliding = (0..c.num_hidden_layers)
            .filter(|&i| c.layer_type(i) == LayerType::Sliding)
            .count();
        let mut s = format!(
            "{sliding} of {} layers slide (window {w})",
            c.num_hidden_layers
        );
        if let Some(b) = c.rope_local_base_freq {
            s += &format!(" with RoPE base {b}");
        }
        parts.push(s);
    }
    parts.join("; ")
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let b = TokenizerBundle::load(&a.model)?;
    let c = &b.config;
    let (files, dtype) = match ModelPath::detect(&a.model)? {
        ModelPath::HfDir(dir) => {
            let w = SafetensorsDir::open(&dir)?;
            let dtype = w
                .dtype("model.embed_tokens.weight")
                .unwrap_or_else(|| "?".into());
            let files: Vec<String> = w
                .files()
                .map(|f| {
                    let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                    format!("{} ({:.1} MB)", f.display(), size as f64 / 1e6)
                })
                .collect();
            (files, dtype)
        }
        ModelPath::Gguf(path) => {
            let f = GgufFile::open(&path)?;
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for t in f.tensors() {
                *counts.entry(format!("{:?}", t.dtype)).or_default() += 1;
            }
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let files = vec![format!(
                "{} (GGUF v{}, {:.1} MB, {} tensors)",
                path.display(),
                f.version(),
                size as f64 / 1e6,
                f.tensors().len()
            )];
            let dtype = counts
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect::<Vec<_>>()
                .join(", ");
            (files, dtype)
        }
    };
    let tok = &b.tokenizer;
    let template = b.template.as_ref().map(|t| t.source().len());
    if a.json {
        let j = serde_json::json!({
            "config": c, "parameters": c.num_parameters(), "dtype": dtype, "files": files,
            "tokenizer": {"vocab_size": tok.vocab_size(), "bos": tok.bos_token, "eos": tok.eos_token, "pad": tok.pad_token},
            "chat_template_chars": template,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!(
        "architecture   {} ({:?})",
        c.family.hf_architecture(),
        c.family
    );
    println!("parameters     {:.1} M", c.num_parameters() as f64 / 1e6);
    println!(
        "shape          {} layers, hidden {}, intermediate {}, heads {}/{} (head_dim {}), vocab {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size
    );
    println!(
        "rope           theta {}, scaling {:?}; context {}",
        c.rope_theta, c.rope_scaling, c.max_position_embeddings
    );
    println!(
        "embeddings     {}",
        if c.tie_word_embeddings {
            "tied"
        } else {
            "untied"
        }
    );
    println!("layers         {}", layer_summary(c));
    println!("dtype on disk  {dtype}");
    println!(
        "tokenizer      {} tokens; bos {:?}, eos {:?}, pad {:?}",
        tok.vocab_size(),
        tok.bos_token,
        tok.eos_token,
        tok.pad_token
    );
    match template {
        Some(n) => println!("chat template  yes ({n} chars)"),
        None => println!("chat template  none"),
    }
    for f in files {
        println!("file           {f}");
    }
    Ok(())
}
