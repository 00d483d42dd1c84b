//! Weight files: HF safetensors directories (single or sharded) and GGUF files, both memory-mapped and
//! read tensor by tensor into the model, so at most one tensor is ever held twice.

pub mod gguf;
mod gguf_model;
mod load;
mod safetensors;

pub use gguf_model::{config_from_gguf, gguf_name, permute_rows, unpermute_rows, GgufWeights};
pub use load::{load_llama, load_llama_as, HfNames};
pub use safetensors::{write_safetensors, SafetensorsDir};

use std::path::Path;

use crate::error::Result;

/// A tensor read from disk, converted to f32, row-major in HF orientation.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Anything that can hand out tensors by their HF name.
pub trait WeightSource {
    /// The file or directory, for error messages.
    fn path(&self) -> &Path;
    /// `None` when the tensor is absent.
    fn tensor(&self, hf_name: &str) -> Result<Option<HostTensor>>;
    /// Whether a tensor exists, without reading it.
    fn contains(&self, hf_name: &str) -> bool;
}
