//! A complete model from one path: config, weights, tokenizer and chat template, from a HF directory
//! or a GGUF file.

use std::path::Path;

use burn::tensor::backend::Backend;
use serde_json::Value;

use crate::config::{ModelConfig, ModelPath};
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::precision::Precision;
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;
use crate::weights::{load_llama_as, GgufWeights, SafetensorsDir};

pub struct Pretrained<B: Backend> {
    pub path: ModelPath,
    pub config: ModelConfig,
    pub model: Llama<B>,
    pub tokenizer: Tokenizer,
    /// `None` when the model ships no template; `set_template` supplies one.
    pub template: Option<ChatTemplate>,
}

/// Tokenizer, template and config without weights (cheap; used by `tokenize` and data tooling).
#[derive(Clone, Debug)]
pub struct TokenizerBundle {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
}

impl TokenizerBundle {
    /// Token ids that end generation (as [`Pretrained::eos_ids`]).
    pub fn eos_ids(&self) -> Vec<u32> {
        eos_ids(&self.config, &self.tokenizer)
    }

    /// Padding id for batches (as [`Pretrained::pad_id`]).
    pub fn pad_id(&self) -> u32 {
        pad_id(&self.config, &self.tokenizer)
    }

    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        match ModelPath::detect(path)? {
            ModelPath::HfDir(dir) => {
                let config = ModelConfig::from_file(dir.join("config.json"))?;
                let tokenizer = Tokenizer::from_hf_dir(&dir)?;
                let template = hf_template(&dir, &tokenizer)?;
                Ok(Self {
                    config,
                    tokenizer,
                    template,
                })
            }
            ModelPath::Gguf(file) => {
                let w = GgufWeights::open(&file)?;
                Self::from_gguf(&w)
            }
        }
    }

    fn from_gguf(w: &GgufWeights) -> Result<Self> {
        let tokenizer = Tokenizer::from_gguf(&w.file)?;
        let template = match w
            .file
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
        {
            Some(src) => Some(template_for(src, &tokenizer)?),
            None => None,
        };
        Ok(Self {
            config: w.config().clone(),
            tokenizer,
            template,
        })
    }

    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        render(self.template.as_ref(), messages, add_generation_prompt)
    }

    /// A tokenizer may have fewer ids than the embedding (padded vocabularies), never more.
    pub fn check_vocab(&self) -> Result<()> {
        let tokenizer = self.tokenizer.vocab_size();
        if tokenizer > self.config.vocab_size {
            return Err(Error::VocabMismatch {
                tokenizer,
                model: self.config.vocab_size,
            });
        }
        Ok(())
    }
}

fn template_for(src: &str, tok: &Tokenizer) -> Result<ChatTemplate> {
    ChatTemplate::new(
        src,
        tok.bos_token.as_deref().unwrap_or(""),
        tok.eos_token.as_deref().unwrap_or(""),
    )
}

fn render(t: Option<&ChatTemplate>, messages: &[Message], gen: bool) -> Result<String> {
    let t = t.ok_or_else(|| {
        Error::Template(
            "this model has no chat template; pass one (e.g. --chat-template FILE) or use --raw"
                .into(),
        )
    })?;
    t.render(messages, gen)
}

/// The template from `chat_template.jinja`, or `chat_template` in tokenizer_config.json (a string, or a
/// list of named templates of which `default` is used).
fn hf_template(dir: &Path, tok: &Tokenizer) -> Result<Option<ChatTemplate>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let src = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
        return template_for(&src, tok).map(Some);
    }
    let cfg_path = dir.join("tokenizer_config.json");
    if !cfg_path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let cfg: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: cfg_path.clone(),
        source,
    })?;
    let src = match cfg.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(String::from)),
        _ => None,
    };
    src.map(|s| template_for(&s, tok)).transpose()
}

impl<B: Backend> std::fmt::Debug for Pretrained<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pretrained")
            .field("path", &self.path)
            .field("config", &self.config)
            .field("tokenizer", &self.tokenizer)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Pretrained<B> {
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        Self::load_as(path, device, Precision::F32)
    }

    /// [`Pretrained::load`] with the base's weight matrices in `precision` (crate::precision).
    pub fn load_as(
        path: impl AsRef<Path>,
        device: &B::Device,
        precision: Precision,
    ) -> Result<Self> {
        let path = ModelPath::detect(path)?;
        let (bundle, model) = match &path {
            ModelPath::HfDir(dir) => {
                let bundle = TokenizerBundle::load(dir)?;
                bundle.check_vocab()?;
                let weights = SafetensorsDir::open(dir)?;
                let model = load_llama_as(&bundle.config, &weights, device, precision)?;
                (bundle, model)
            }
            ModelPath::Gguf(file) => {
                let weights = GgufWeights::open(file)?;
                let bundle = TokenizerBundle::from_gguf(&weights)?;
                bundle.check_vocab()?;
                let model = load_llama_as(&bundle.config, &weights, device, precision)?;
                (bundle, model)
            }
        };
        Ok(Self {
            path,
            config: bundle.config,
            model,
            tokenizer: bundle.tokenizer,
            template: bundle.template,
        })
    }

    /// A model with weights from elsewhere (e.g. just trained) and the tokenizer, template and config of
    /// the checkpoint at `path`.
    pub fn from_parts(
        path: impl AsRef<Path>,
        bundle: TokenizerBundle,
        model: Llama<B>,
    ) -> Result<Self> {
        Ok(Self {
            path: ModelPath::detect(path)?,
            config: bundle.config,
            model,
            tokenizer: bundle.tokenizer,
            template: bundle.template,
        })
    }

    /// The model and its tokenizer bundle apart (the inverse of [`Pretrained::from_parts`]): training
    /// keeps the bundle for encoding and evaluation while the weights go through the loop.
    pub fn into_parts(self) -> (TokenizerBundle, Llama<B>) {
        let bundle = TokenizerBundle {
            config: self.config,
            tokenizer: self.tokenizer,
            template: self.template,
        };
        (bundle, self.model)
    }

    /// Replaces (or supplies) the chat template.
    pub fn set_template(&mut self, source: &str) -> Result<()> {
        self.template = Some(template_for(source, &self.tokenizer)?);
        Ok(())
    }

    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        render(self.template.as_ref(), messages, add_generation_prompt)
    }

    /// Token ids that end generation: the config's EOS ids plus the tokenizer's EOS token.
    pub fn eos_ids(&self) -> Vec<u32> {
        eos_ids(&self.config, &self.tokenizer)
    }

    /// Padding id for batches: pad token, else EOS, else 0.
    pub fn pad_id(&self) -> u32 {
        pad_id(&self.config, &self.tokenizer)
    }
}

/// The config's EOS ids plus the tokenizer's EOS token (one definition for models and bundles).
fn eos_ids(config: &ModelConfig, tokenizer: &Tokenizer) -> Vec<u32> {
    let mut ids = config.eos_token_ids.clone();
    if let Some(e) = tokenizer.eos_id() {
        if !ids.contains(&e) {
            ids.push(e);
        }
    }
    ids
}

/// Pad token, else the config's pad id, else the first EOS id, else 0.
fn pad_id(config: &ModelConfig, tokenizer: &Tokenizer) -> u32 {
    tokenizer
        .pad_id()
        .or(config.pad_token_id)
        .or_else(|| eos_ids(config, tokenizer).first().copied())
        .unwrap_or(0)
}
