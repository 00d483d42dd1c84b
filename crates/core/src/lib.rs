//! burnish-core: the Llama-family transformer on Burn, its weights (HF safetensors directories and GGUF
//! files), tokenizer, chat template and generation.

pub mod adapter;
pub mod backend;
pub mod config;
pub mod error;
pub mod export;
pub mod generate;
pub mod io;
pub mod model;
pub mod precision;
pub mod pretrained;
pub mod rng;
pub mod template;
pub mod tokenizer;
pub mod weights;

pub use config::{Family, ModelConfig, ModelPath, RopeScaling};
pub use error::{Error, Result};
pub use generate::{generate, FinishReason, Generated, GenerationConfig};
pub use model::{Adapters, KvCache, Llama, LoraConfig};
pub use precision::Precision;
pub use pretrained::{Pretrained, TokenizerBundle};
pub use template::{ChatTemplate, Message};
pub use tokenizer::Tokenizer;

pub use burn;
pub use safetensors;
