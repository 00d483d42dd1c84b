//! The run file: one TOML drives a whole run. Every table rejects unknown keys (naming the key and the
//! closest valid one); every field has a documented default (docs/config.md, checked by a test).
//! `--set section.key=value` overrides edit the document before it is parsed, so errors keep their lines.

use std::path::{Path, PathBuf};

use burnish_core::backend::DeviceSpec;
use burnish_core::{LoraConfig, Precision};
use burnish_data::DataConfig;
use serde::{Deserialize, Serialize};

use crate::ablate::AblateConfig;
use crate::dpo::DpoConfig;
use crate::engine::TrainConfig;
use crate::eval::EvalConfig;
use crate::output::OutputConfig;
use crate::ppo::PpoConfig;
use crate::reward::RewardConfig;
use crate::sft::SftConfig;
use crate::{Error, Result};

/// A whole run: what `burnish train` and `burnish ablate` read from a run file, and what
/// [`crate::run()`] takes from code. Paths are used as given (a [`RunFile`] resolves them against its
/// folder when it loads).
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    /// Required by `train` and `ablate`; a file only for `burnish data` may leave it out.
    #[serde(default)]
    pub output: Option<OutputConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// HF model directory or GGUF file (relative to the run file's folder).
    pub path: PathBuf,
    /// `cpu` (default), `wgpu`, `wgpu:N`, `cuda` or `cuda:N` (GPUs need the cargo feature; the
    /// index picks the device). Every stage of the run (data answers, training, eval) runs there.
    #[serde(default)]
    pub backend: DeviceSpec,
    /// `f32` (default), `bf16` or `f16`: the dtype of the frozen base's weight matrices and of the
    /// matmuls with them; activations, norms, softmax, losses, LoRA and the optimizer stay f32
    /// (burnish_core::precision). Data answers, training and eval all use it.
    #[serde(default)]
    pub dtype: Precision,
    /// An adapter merged into the base before training (e.g. train on a safety-tuned variant).
    #[serde(default)]
    pub merge_adapter: Option<PathBuf>,
}

impl ModelSection {
    /// The model at `path` on the CPU backend in f32, nothing merged.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            backend: DeviceSpec::CPU,
            dtype: Precision::F32,
            merge_adapter: None,
        }
    }
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

/// A run file: its path and its config, with `--set` overrides applied, relative paths resolved
/// against the file's folder, and every value checked. The one run-file type of every command.
#[derive(Clone, Debug)]
pub struct RunFile {
    pub path: PathBuf,
    pub config: RunConfig,
}

impl RunFile {
    /// Reads `path`, applies `--set key=value` overrides and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io(path.to_path_buf(), e))?;
        let text =
            apply_overrides(&text, overrides).map_err(|m| Error::Config(path.to_path_buf(), m))?;
        let mut config: RunConfig = toml::from_str(&text)
            .map_err(|e| Error::Data(burnish_data::config::config_error(path, &e)))?;
        config.resolve_paths(path.parent().unwrap_or(Path::new("")));
        config
            .validate()
            .map_err(|m| Error::Config(path.to_path_buf(), m))?;
        config.data.validate(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            config,
        })
    }
}

impl RunConfig {
    /// Makes every relative path absolute against `base` (a run file's folder): the model, merged
    /// adapter, data sources, the answering model, the learned refusal detector, evaluation sets and
    /// judge, reward model, `directions_from`, output dir.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let method_path = match &mut self.method {
            MethodConfig::Ppo(p) => p.reward_model.as_mut(),
            MethodConfig::Ablate(a) => a.directions_from.as_mut(),
            _ => None,
        };
        let optional = [
            self.model.merge_adapter.as_mut(),
            self.data.generate.model.as_mut(),
            self.eval.judge.as_mut(),
            self.data.refusal.detector.path_mut(),
            self.output.as_mut().map(|o| &mut o.dir),
            method_path,
        ];
        let sources = self.data.sources.iter_mut().map(|s| &mut s.path);
        let sets = self.eval.sets.iter_mut().map(|s| &mut s.path);
        std::iter::once(&mut self.model.path)
            .chain(optional.into_iter().flatten())
            .chain(sources)
            .chain(sets)
            .for_each(fix);
    }

    /// Range and consistency checks serde cannot make; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.train.validate()?;
        self.eval.validate()?;
        let c = &self.model;
        self.validate_devices()?;
        if !c.backend.kind.available() {
            return Err(format!(
                "`model.backend` = \"{}\" is not compiled in (build with `--features {}`)",
                c.backend,
                c.backend.kind.feature()
            ));
        }
        if !c.path.exists() {
            return Err(format!("`model.path`: {} does not exist", c.path.display()));
        }
        if let Some(m) = &self.data.generate.model {
            if !m.exists() {
                return Err(format!(
                    "`data.generate.model`: {} does not exist",
                    m.display()
                ));
            }
        }
        if self.data.generate.self_first && self.data.generate.model.is_none() {
            return Err(
                "`data.generate.self_first` needs `data.generate.model`: the model that \
                        answers the prompts [model] refuses"
                    .into(),
            );
        }
        crate::eval::HazardMap::new(&self.eval.hazards)
            .map_err(|m| format!("[eval.hazards]: {m}"))?;
        match &self.method {
            MethodConfig::Dpo(d) => d.validate(),
            MethodConfig::Ablate(a) => a.validate(),
            MethodConfig::Ppo(p) => p.validate_with(&self.train),
            MethodConfig::Sft(s) => s.validate(),
            MethodConfig::Reward(_) => Ok(()),
        }
    }

    /// The devices a run trains on: `[train] devices`, else `[model] backend`.
    pub fn devices(&self) -> Vec<DeviceSpec> {
        match self.train.devices.is_empty() {
            true => vec![self.model.backend],
            false => self.train.devices.clone(),
        }
    }

    fn validate_devices(&self) -> std::result::Result<(), String> {
        let devices = &self.train.devices;
        let Some(first) = devices.first() else {
            return Ok(());
        };
        if first.kind != self.model.backend.kind {
            return Err(format!(
                "`train.devices` = [\"{first}\", ...] and `model.backend` = \"{}\" name different backends; \
                 set `model.backend` to the devices' backend (or leave `train.devices` out)",
                self.model.backend
            ));
        }
        if devices.len() > 1 {
            if let MethodConfig::Ppo(_) | MethodConfig::Ablate(_) = self.method {
                return Err(format!(
                    "`train.devices` lists {} devices, but method `{}` runs on one device",
                    devices.len(),
                    self.method.name()
                ));
            }
        }
        Ok(())
    }

    /// `[output]`, which training and ablation need.
    pub fn output(&self) -> std::result::Result<&OutputConfig, String> {
        self.output.as_ref().ok_or_else(|| {
            format!(
                "no [output] section: method `{}` needs `[output] dir = \"...\"`",
                self.method.name()
            )
        })
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
