//! `[output]`: where a run writes and what it keeps — the adapter, the merged model as a HF directory,
//! a GGUF file. One writer for training and ablation.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burnish_core::burn;
use burnish_core::export::{export_gguf, export_hf, Dtype, ExportSource, GgufQuant};
use burnish_core::weights::gguf::GgufFile;
use burnish_core::{ModelPath, Pretrained};
use serde::{Deserialize, Serialize};

use crate::Result;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Run directory: checkpoints, adapter, metrics.jsonl, plots, run.json.
    pub dir: PathBuf,
    /// What to write at the end: any of `adapter` (default), `merged` (HF dir), `gguf`.
    #[serde(default = "default_save")]
    pub save: Vec<SaveKind>,
}

impl OutputConfig {
    /// Outputs in `dir`, keeping the adapter (the default of `save`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            save: default_save(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveKind {
    Adapter,
    Merged,
    Gguf,
}

fn default_save() -> Vec<SaveKind> {
    vec![SaveKind::Adapter]
}

/// Writes `model` (adapters already merged into its weights) as `merged/` (HF, f32) and/or
/// `model.gguf` (F16) in `out`, as `kinds` asks. A GGUF source (`model.path`) lends its metadata to the
/// new file.
pub fn write_model<B: Backend>(
    model: &Pretrained<B>,
    out: &Path,
    kinds: &[SaveKind],
) -> Result<()> {
    let wants = |k: SaveKind| kinds.contains(&k);
    if !wants(SaveKind::Merged) && !wants(SaveKind::Gguf) {
        return Ok(());
    }
    // The config follows the weights: an edit may add MLP biases or units (gated steering).
    let mut config = model.config.clone();
    config.mlp_bias = model.model.has_mlp_bias();
    config.intermediate_size = model.model.intermediate_size();
    let gguf = match &model.path {
        ModelPath::Gguf(f) => Some(GgufFile::open(f)?),
        ModelPath::HfDir(_) => None,
    };
    let src = ExportSource {
        config: &config,
        tokenizer: &model.tokenizer,
        template: model.template.as_ref(),
        source_gguf: gguf.as_ref(),
    };
    if wants(SaveKind::Merged) {
        export_hf(&model.model, &src, &out.join("merged"), Dtype::F32)?;
    }
    if wants(SaveKind::Gguf) {
        export_gguf(&model.model, &src, &out.join("model.gguf"), GgufQuant::F16)?;
    }
    Ok(())
}
