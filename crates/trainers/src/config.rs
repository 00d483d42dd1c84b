//! The run file: one TOML drives a whole run. Every table rejects unknown keys (naming the key and the
//! closest valid one); every field has a documented default (docs/config.md, checked by a test).
//! `--set section.key=value` overrides edit the document before it is parsed, so errors keep their lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burnish_core::backend::BackendKind;
use burnish_core::LoraConfig;
use burnish_data::DataConfig;
use serde::{Deserialize, Serialize};

use crate::ablate::AblateConfig;
use crate::dpo::DpoConfig;
use crate::eval::SetSpec;
use crate::optim::{AdamWConfig, Schedule};
use crate::ppo::PpoConfig;
use crate::reward::RewardConfig;
use crate::{Error, Result};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelSection,
    #[serde(default)]
    pub lora: LoraConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub method: MethodConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    pub output: OutputConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// HF model directory or GGUF file (relative to the run file's folder).
    pub path: PathBuf,
    /// `cpu` (default), `wgpu` or `cuda` (the latter two need the cargo feature).
    #[serde(default)]
    pub backend: BackendKind,
    /// Compute dtype; `f32` (default) is the only one the CPU backend trains in.
    #[serde(default = "f32_name")]
    pub dtype: String,
    /// An adapter merged into the base before training (e.g. train on a safety-tuned variant).
    #[serde(default)]
    pub merge_adapter: Option<PathBuf>,
}

fn f32_name() -> String {
    "f32".into()
}

/// `[method]`: `name` picks the method; the other keys are that method's options.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum MethodConfig {
    Sft(SftConfig),
    Dpo(DpoConfig),
    Reward(RewardConfig),
    Ppo(PpoConfig),
    Ablate(AblateConfig),
}

impl Default for MethodConfig {
    fn default() -> Self {
        MethodConfig::Sft(SftConfig::default())
    }
}

impl MethodConfig {
    pub fn name(&self) -> &'static str {
        match self {
            MethodConfig::Sft(_) => "sft",
            MethodConfig::Dpo(_) => "dpo",
            MethodConfig::Reward(_) => "reward",
            MethodConfig::Ppo(_) => "ppo",
            MethodConfig::Ablate(_) => "ablate",
        }
    }
}

/// Supervised fine-tuning: cross entropy on assistant tokens (masks come from `[data]`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Peak learning rate (default 2e-4, a common LoRA rate).
    pub learning_rate: f64,
    /// `constant`, `linear` (default) or `cosine` decay after warm-up.
    pub schedule: Schedule,
    /// Linear warm-up steps (default 0); `warmup_ratio` is used when this is 0.
    pub warmup_steps: usize,
    /// Warm-up as a share of all steps (default 0.0).
    pub warmup_ratio: f64,
    /// Passes over the training data (default 1); ignored when `max_steps` is set.
    pub epochs: usize,
    /// Total optimizer steps, overriding `epochs`.
    pub max_steps: Option<usize>,
    /// Sequences per micro-batch (default 4).
    pub batch_size: usize,
    /// Micro-batches per optimizer step (default 1).
    pub gradient_accumulation_steps: usize,
    /// Clip the global gradient norm to this (default 1.0; 0 turns clipping off).
    pub max_grad_norm: f64,
    /// AdamW settings (`weight_decay` default 0.0, betas 0.9/0.999, eps 1e-8).
    pub adamw: AdamWConfig,
    /// Seed for adapter init, data order and dropout (default 42).
    pub seed: u64,
    /// Log every N optimizer steps (default 1).
    pub logging_steps: usize,
    /// Checkpoint every N optimizer steps (default 0: only at the end).
    pub save_steps: usize,
    /// Checkpoints kept (default 2; the oldest is deleted).
    pub save_total_limit: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 2e-4,
            schedule: Schedule::Linear,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            epochs: 1,
            max_steps: None,
            batch_size: 4,
            gradient_accumulation_steps: 1,
            max_grad_norm: 1.0,
            adamw: AdamWConfig::default(),
            seed: 42,
            logging_steps: 1,
            save_steps: 0,
            save_total_limit: 2,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate on the eval split every N optimizer steps (default 0: only at the end, if there is one).
    pub steps: usize,
    /// Micro-batch size for evaluation (default: `train.batch_size`).
    pub batch_size: Option<usize>,
    /// `[[eval.sets]]`: prompt sets (`path`, `kind` = harmful | benign | harmless, optional `name`,
    /// `prompt`, `category` columns) for the safety evaluation that runs after training (in
    /// `<output.dir>/eval`) and in `burnish eval --config` (default: none).
    pub sets: Vec<SetSpec>,
    /// Prompts per set at most (default: all).
    pub limit: Option<usize>,
    /// New tokens per response, greedy (default 64).
    pub max_new_tokens: usize,
    /// Prompts per generation batch (default 16).
    pub generation_batch_size: usize,
    /// KL to the base model (adapters off) on the first harmless set (default true).
    pub kl: bool,
    /// A judge model (HF dir or GGUF) that decides refusals instead of phrase matching (default: none).
    pub judge: Option<PathBuf>,
    /// Dataset category → Llama 3 hazard category, overriding the built-in table (docs/eval.md).
    pub hazards: BTreeMap<String, String>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            steps: 0,
            batch_size: None,
            sets: Vec::new(),
            limit: None,
            max_new_tokens: 64,
            generation_batch_size: 16,
            kl: true,
            judge: None,
            hazards: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Run directory: checkpoints, adapter, metrics.jsonl, plots, run.json.
    pub dir: PathBuf,
    /// What to write at the end: any of `adapter` (default), `merged` (HF dir), `gguf`.
    #[serde(default = "default_save")]
    pub save: Vec<SaveKind>,
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

/// A run file with its location (relative paths resolve against its folder).
#[derive(Clone, Debug)]
pub struct Run {
    pub path: PathBuf,
    pub base_dir: PathBuf,
    pub config: RunConfig,
    /// The TOML text after overrides, as it was parsed (saved in run.json).
    pub text: String,
}

impl Run {
    /// Reads `path`, applies `--set key=value` overrides and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io(path.to_path_buf(), e))?;
        let text =
            apply_overrides(&text, overrides).map_err(|m| Error::Config(path.to_path_buf(), m))?;
        let config: RunConfig = toml::from_str(&text)
            .map_err(|e| Error::Data(burnish_data::config::config_error(path, &e)))?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let run = Self {
            path: path.to_path_buf(),
            base_dir,
            config,
            text,
        };
        run.validate()?;
        Ok(run)
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn validate(&self) -> Result<()> {
        let c = &self.config;
        let bad = |m: String| Err(Error::Config(self.path.clone(), m));
        let t = &c.train;
        if t.batch_size == 0 || t.gradient_accumulation_steps == 0 {
            return bad(
                "`train.batch_size` and `train.gradient_accumulation_steps` must be at least 1"
                    .into(),
            );
        }
        if !t.learning_rate.is_finite() || t.learning_rate <= 0.0 {
            return bad(format!(
                "`train.learning_rate` = {} must be positive",
                t.learning_rate
            ));
        }
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            return bad(format!(
                "`train.warmup_ratio` = {} must be in [0, 1)",
                t.warmup_ratio
            ));
        }
        if t.max_steps.is_none() && t.epochs == 0 {
            return bad("`train.epochs` must be at least 1 (or set `train.max_steps`)".into());
        }
        if c.model.dtype != "f32" {
            return bad(format!(
                "`model.dtype` = \"{}\": training runs in f32",
                c.model.dtype
            ));
        }
        if !c.model.backend.available() {
            return bad(format!(
                "`model.backend` = {:?} is not compiled in",
                c.model.backend
            ));
        }
        let model = self.resolve(&c.model.path);
        if !model.exists() {
            return bad(format!("`model.path`: {} does not exist", model.display()));
        }
        crate::eval::HazardMap::new(&c.eval.hazards)
            .map_err(|m| Error::Config(self.path.clone(), format!("[eval.hazards]: {m}")))?;
        match &c.method {
            MethodConfig::Dpo(d) => d.validate().or_else(bad)?,
            MethodConfig::Ablate(a) => a.validate().or_else(bad)?,
            MethodConfig::Ppo(p) => {
                p.validate().or_else(bad)?;
                if t.max_steps.is_none() {
                    return bad("method `ppo` needs `train.max_steps` (optimizer steps; each rollout gives num_ppo_epochs × num_mini_batches of them)".into());
                }
                if t.gradient_accumulation_steps != 1 {
                    return bad("method `ppo` takes its minibatches from `num_mini_batches`; leave `train.gradient_accumulation_steps` at 1".into());
                }
            }
            MethodConfig::Sft(_) | MethodConfig::Reward(_) => {}
        }
        c.data.validate(&self.path)?;
        Ok(())
    }
}

/// Applies `section.key=value` overrides to a TOML document. Values are TOML (`3`, `true`, `"x"`,
/// `[1, 2]`); anything that does not parse as TOML is taken as a string.
pub fn apply_overrides(text: &str, overrides: &[String]) -> std::result::Result<String, String> {
    if overrides.is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    for o in overrides {
        let (key, value) = o
            .split_once('=')
            .ok_or_else(|| format!("--set `{o}`: expected section.key=value"))?;
        let path: Vec<&str> = key.trim().split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(format!("--set `{o}`: empty key segment"));
        }
        let value: toml_edit::Value = value
            .trim()
            .parse()
            .unwrap_or_else(|_| toml_edit::Value::from(value.trim()));
        let parents = &path[..path.len() - 1];
        let mut table: &mut dyn toml_edit::TableLike = doc.as_table_mut();
        let mut k = 0;
        while k < parents.len() {
            let seg = parents[k];
            if table.get(seg).is_none() {
                table.insert(seg, toml_edit::Item::Table(toml_edit::Table::new()));
            }
            let item = table.get_mut(seg).expect("just inserted");
            if item.is_array_of_tables() {
                let arr = item.as_array_of_tables_mut().expect("checked");
                // `data.sources.0.path`: an index into an array of tables.
                let i: usize =
                    parents
                        .get(k + 1)
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| {
                            format!(
                            "--set `{o}`: `{seg}` is a list of tables; index it, e.g. `{seg}.0`"
                        )
                        })?;
                let n = arr.len();
                table = arr
                    .get_mut(i)
                    .ok_or_else(|| format!("--set `{o}`: `{seg}` has {n} entries, no index {i}"))?;
                k += 2;
            } else {
                table = item
                    .as_table_like_mut()
                    .ok_or_else(|| format!("--set `{o}`: `{seg}` is not a table"))?;
                k += 1;
            }
        }
        table.insert(path[path.len() - 1], toml_edit::Item::Value(value));
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_edit_nested_keys() {
        let t = "[train]\nlearning_rate = 1e-4\n\n[model]\npath = \"m\"\n";
        let out = apply_overrides(
            t,
            &[
                "train.learning_rate=3e-4".into(),
                "train.schedule=cosine".into(),
                "lora.r=16".into(),
            ],
        )
        .unwrap();
        let v: toml::Value = toml::from_str(&out).unwrap();
        assert_eq!(v["train"]["learning_rate"].as_float(), Some(3e-4));
        assert_eq!(v["train"]["schedule"].as_str(), Some("cosine"));
        assert_eq!(v["lora"]["r"].as_integer(), Some(16));
        assert!(apply_overrides(t, &["nokey".into()])
            .unwrap_err()
            .contains("section.key=value"));
        assert!(apply_overrides(t, &["model.path.x=1".into()])
            .unwrap_err()
            .contains("not a table"));
        let t = "[[data.sources]]\npath = \"a\"\n[[data.sources]]\npath = \"b\"\n";
        let out = apply_overrides(t, &["data.sources.1.path=\"c\"".into()]).unwrap();
        let v: toml::Value = toml::from_str(&out).unwrap();
        assert_eq!(v["data"]["sources"][1]["path"].as_str(), Some("c"));
        assert_eq!(v["data"]["sources"][0]["path"].as_str(), Some("a"));
        assert!(apply_overrides(t, &["data.sources.2.path=1".into()])
            .unwrap_err()
            .contains("no index 2"));
        assert!(apply_overrides(t, &["data.sources.path=1".into()])
            .unwrap_err()
            .contains("index it"));
    }
}
