//! `[output]`: where a run writes and what it keeps — the adapter, the merged model as a HF directory,
//! a GGUF file. One writer for training and ablation.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burnish_core::burn;
use burnish_core::export::{export_gguf, export_hf, Dtype, ExportSource, GgufQuant};
use burnish_core::io::Existing;
use burnish_core::weights::gguf::GgufFile;
use burnish_core::{ModelPath, Pretrained};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Run directory: checkpoints, adapter, metrics.jsonl, plots, run.json.
    pub dir: PathBuf,
    /// What to write at the end: any of `adapter` (default), `merged` (HF dir), `gguf`.
    #[serde(default = "default_save")]
    pub save: Vec<SaveKind>,
    /// Replace an earlier run's outputs in `dir` (default false: a directory holding another run is
    /// refused, so no run's files are overwritten or mixed with another's). `--overwrite` sets it.
    #[serde(default)]
    pub overwrite: bool,
}

impl OutputConfig {
    /// Outputs in `dir`, keeping the adapter (the default of `save`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            save: default_save(),
            overwrite: false,
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

/// What a run (training or ablation) writes into its directory. `ref_logps.json` is not here: it is a
/// cache keyed by the data and model it was computed from, valid for any run.
const RUN_OUTPUTS: &[&str] = &[
    "run.json",
    "metrics.jsonl",
    "checkpoints",
    "adapter",
    "merged",
    "model.gguf",
    "loss.png",
    "samples.jsonl",
    "eval",
    "eval-before",
    "report.json",
    "report.md",
    "trials.jsonl",
    "selection.jsonl",
    "pareto.png",
    "direction.safetensors",
];

/// Makes `dir` ready for a new run: created if missing; if it holds an earlier run's outputs, they
/// are removed when `overwrite` is set and refused otherwise (naming what was found), so two runs'
/// files never mix (a new run's checkpoints pruned in favour of an old run's, an old adapter beside
/// new metrics).
pub fn prepare_dir(dir: &Path, overwrite: bool) -> Result<()> {
    let found: Vec<&str> = RUN_OUTPUTS
        .iter()
        .copied()
        .filter(|name| dir.join(name).exists())
        .collect();
    if !found.is_empty() && !overwrite {
        return Err(Error::OutputInUse {
            dir: dir.to_path_buf(),
            found: found.join(", "),
        });
    }
    for name in found {
        let p = dir.join(name);
        let removed = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        removed.map_err(|e| Error::Io(p.clone(), e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(dir.to_path_buf(), e))
}

/// Whether `kinds` asks for the merged model (a HF directory or a GGUF file), which costs a merged copy
/// of the weights to make.
pub fn writes_model(kinds: &[SaveKind]) -> bool {
    kinds
        .iter()
        .any(|k| matches!(k, SaveKind::Merged | SaveKind::Gguf))
}

/// Writes `model` (adapters already merged into its weights) as `merged/` (HF, f32) and/or
/// `model.gguf` (F16) in `out`, as `kinds` asks, replacing what is there ([`prepare_dir`] has
/// already refused or cleared another run's outputs). A GGUF source (`model.path`) lends its metadata to the
/// new file.
pub fn write_model<B: Backend>(
    model: &Pretrained<B>,
    out: &Path,
    kinds: &[SaveKind],
) -> Result<()> {
    let wants = |k: SaveKind| kinds.contains(&k);
    if !writes_model(kinds) {
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
        export_hf(
            &model.model,
            &src,
            &out.join("merged"),
            Dtype::F32,
            Existing::Replace,
        )?;
    }
    if wants(SaveKind::Gguf) {
        let gguf = out.join("model.gguf");
        export_gguf(&model.model, &src, &gguf, GgufQuant::F16, Existing::Replace)?;
    }
    Ok(())
}
