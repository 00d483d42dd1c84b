//! The `[data]` section of a run file (TOML). Every table rejects unknown keys, naming the key and the
//! closest valid one, because a misspelt option silently falling back to its default wastes a training run.
//! The whole run file (`[model]`, `[method]`, ...) is read by burnish-trainers' `config::RunFile`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::example::Kind;
use crate::generate::GenerateConfig;
use crate::read::Format;
use crate::refusal::RefusalConfig;
use crate::schema::{Columns, Schema};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Longest tokenized example; longer ones are cut per `truncation` (default 2048).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Which end of an over-long example is cut: "right" (default) keeps the start, "left" keeps the end.
    #[serde(default)]
    pub truncation: Truncation,
    /// Loss on every assistant turn ("all", default) or only the last one ("last").
    #[serde(default)]
    pub assistant_turns: AssistantTurns,
    /// Pack several examples into each `max_length` sequence (default false).
    #[serde(default)]
    pub packing: bool,
    /// Seed for shuffling, splitting, weighting and refusal-template choice (default 0).
    #[serde(default)]
    pub seed: u64,
    /// Shuffle the mixed data set (default true).
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Share of each source held out for evaluation, in [0, 1) (default 0).
    #[serde(default)]
    pub eval_fraction: f64,
    pub sources: Vec<SourceConfig>,
    /// `[data.refusal]`: the refusal detector used by policies and generated data.
    #[serde(default)]
    pub refusal: RefusalConfig,
    /// Responses paired with harmful prompts by `answer = "refusal_template"` (default: a built-in list).
    #[serde(default)]
    pub refusal_templates: Option<Vec<String>>,
    /// How `answer = "refusal_template"` and `"refusal_pair"` write refusals: "templates" (default: one
    /// of `refusal_templates`), "composed" (an opening, a decline naming the request's activity, a
    /// reason and an offer, each seeded: hundreds of distinct refusals), or "detector" — the training
    /// data of a learned refusal detector (docs/eval.md): composed refusals and partial refusals
    /// against the model's answers, a share of them opening with words refusal phrases contain; each
    /// pair is ordered by construction (the answer chosen), and answers the phrases find refusing are
    /// dropped.
    #[serde(default)]
    pub refusal_style: RefusalStyle,
    /// `[data.generate]`: sampling settings for `answer = "model"`.
    #[serde(default)]
    pub generate: GenerateConfig,
    /// "safety" or "refusal-free": which way the data teaches, for every source that does not say
    /// otherwise. It is the default `label_goal`, and the default `refusal_policy`: "label" for preference
    /// pairs; for SFT examples "keep" (safety) or "filter" (refusal-free). One key turns a run file into
    /// either variant of the same model with the same data (examples/configs/refusals.toml).
    #[serde(default)]
    pub goal: Option<LabelGoal>,
}

impl DataConfig {
    /// `[data]` with these sources and every other key at its default (as a run file that gives only
    /// `[[data.sources]]`).
    pub fn new(sources: Vec<SourceConfig>) -> Self {
        Self {
            max_length: default_max_length(),
            truncation: Truncation::default(),
            assistant_turns: AssistantTurns::default(),
            packing: false,
            seed: 0,
            shuffle: true,
            eval_fraction: 0.0,
            sources,
            refusal: RefusalConfig::default(),
            refusal_templates: None,
            refusal_style: RefusalStyle::default(),
            generate: GenerateConfig::default(),
            goal: None,
        }
    }
}

/// One `[[data.sources]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Relative paths are relative to the run file's folder.
    pub path: PathBuf,
    /// jsonl, json, csv, tsv or parquet; default: from the extension (a `.gz` suffix is looked through).
    #[serde(default)]
    pub format: Option<Format>,
    /// Default "auto": decided per record from its fields.
    #[serde(default)]
    pub schema: Schema,
    /// Canonical field → column name (or dotted path such as `instances.0.output`).
    #[serde(default)]
    pub columns: Columns,
    /// Default: from `[data] goal` (see `DataConfig::policy`), else "keep".
    #[serde(default)]
    pub refusal_policy: Option<RefusalPolicy>,
    /// For `refusal_policy = "label"`: "safety" or "refusal-free" (also spelt "uncensor"); default
    /// `[data] goal`, else "safety".
    #[serde(default)]
    pub label_goal: Option<LabelGoal>,
    /// Whether this source's prompts are harmful; `label` with goal "safety" needs it.
    #[serde(default)]
    pub harmful: Option<bool>,
    /// Answer records: "refusal_template" or "model" (prompt-only records → SFT examples; "model" uses
    /// `[model].path`), or "refusal_pair" (→ preference pairs of an answer and a refusal template, ordered
    /// by `refusal_policy = "label"`; the answer is the record's own last assistant turn, or the model's).
    #[serde(default)]
    pub answer: Option<Answer>,
    /// Mixing weight: 2 repeats every example twice, 0.5 keeps a seeded half (default 1).
    #[serde(default = "one")]
    pub weight: f64,
    /// Read at most this many valid records (the rest of the file is never read).
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub on_error: OnError,
    /// System message for records that have none.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Category for records that have none.
    #[serde(default)]
    pub category: Option<String>,
    /// "borderline": each prompt-only record, a harmful request, is replaced by a safe request on the same
    /// topic (burnish_data::borderline); records whose request form is not recognised are dropped and
    /// counted. The prompts are then harmless (`harmful` defaults to false and may not be true).
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
}

impl SourceConfig {
    /// A source read from `path` with every other key at its default (as `path = "..."` alone).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: None,
            schema: Schema::default(),
            columns: Columns::default(),
            refusal_policy: None,
            label_goal: None,
            harmful: None,
            answer: None,
            weight: one(),
            limit: None,
            on_error: OnError::default(),
            system_prompt: None,
            category: None,
            rewrite: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    #[default]
    Right,
    Left,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssistantTurns {
    #[default]
    All,
    Last,
}

/// What to do with refusals. SFT data: keep, filter or only; preference data: keep or label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalPolicy {
    #[default]
    Keep,
    /// Drop SFT examples whose assistant response refuses (uncensoring by SFT).
    Filter,
    /// Keep only SFT examples whose assistant response refuses (safety SFT).
    Only,
    /// Preference pairs: order chosen/rejected by refusal, per `label_goal` and `harmful`.
    Label,
}

/// Which way refusal data teaches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelGoal {
    /// Refuse harmful requests, answer the rest: chosen = the refusal for harmful prompts, the compliant
    /// answer otherwise.
    #[default]
    Safety,
    /// Answer everything: chosen = the compliant answer, whatever the prompt; SFT refusals filtered.
    #[serde(rename = "refusal-free", alias = "uncensor", alias = "refusal_free")]
    RefusalFree,
}

/// `[data] refusal_style`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalStyle {
    #[default]
    Templates,
    Composed,
    Detector,
}

/// `rewrite`: how a source's prompts are changed before they are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rewrite {
    /// A safe request on the harmful request's topic (burnish_data::borderline).
    Borderline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// A refusal from `refusal_templates`, chosen by seed.
    RefusalTemplate,
    /// The `[model]`'s own reply (greedy unless `[data.generate]` says otherwise).
    Model,
    /// A preference pair: an answer (the record's last assistant turn, or the model's reply to a
    /// prompt-only record) against a refusal template; `label` decides which is chosen.
    RefusalPair,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Fail,
    Skip,
}

fn default_max_length() -> usize {
    2048
}
fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}

impl DataConfig {
    /// The goal `label` orders `src`'s pairs for: its own `label_goal`, else `[data] goal`, else safety.
    pub fn label_goal(&self, src: &SourceConfig) -> LabelGoal {
        src.label_goal.or(self.goal).unwrap_or_default()
    }

    /// The refusal policy of `src` for examples of `kind`: its own `refusal_policy`; else "label" for the
    /// pairs of `answer = "refusal_pair"` or of a run file with a `goal`; else "filter" for SFT examples
    /// when the goal is refusal-free; else "keep".
    pub fn policy(&self, src: &SourceConfig, kind: Kind) -> RefusalPolicy {
        if let Some(p) = src.refusal_policy {
            return p;
        }
        // A detector's pairs are ordered when they are made; phrases must not reorder or drop them.
        if self.refusal_style == RefusalStyle::Detector && src.answer == Some(Answer::RefusalPair) {
            return RefusalPolicy::Keep;
        }
        match (kind, self.goal) {
            (Kind::Pair, Some(_)) => RefusalPolicy::Label,
            (Kind::Pair, None) if src.answer == Some(Answer::RefusalPair) => RefusalPolicy::Label,
            (Kind::Sft, Some(LabelGoal::RefusalFree)) => RefusalPolicy::Filter,
            _ => RefusalPolicy::Keep,
        }
    }

    /// Whether some source may need the model to answer its prompts.
    pub fn needs_model(&self) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s.answer, Some(Answer::Model | Answer::RefusalPair)))
    }

    /// Parses a TOML document that holds only the `[data]` table's contents.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| config_error(path, &e))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks what serde cannot: ranges, and options that only make sense together.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::Config {
                path: path.to_path_buf(),
                msg,
            })
        };
        if self.max_length < 2 {
            return bad(format!(
                "[data] max_length = {} is too small",
                self.max_length
            ));
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return bad(format!(
                "[data] eval_fraction = {} must be in [0, 1)",
                self.eval_fraction
            ));
        }
        if self.sources.is_empty() {
            return bad("[data] has no [[data.sources]]".into());
        }
        if matches!(&self.refusal_templates, Some(t) if t.is_empty()) {
            return bad("[data] refusal_templates is empty".into());
        }
        let detector = self.refusal_style == RefusalStyle::Detector;
        if detector && self.goal.is_some() {
            return bad("[data] refusal_style = \"detector\" orders each pair itself (the answer chosen, the refusal rejected); remove `goal`".into());
        }
        for (i, s) in self.sources.iter().enumerate() {
            let name = format!("[[data.sources]] #{} ({})", i + 1, s.path.display());
            if detector && s.answer.is_some() && s.answer != Some(Answer::RefusalPair) {
                return bad(format!("{name}: refusal_style = \"detector\" makes answer-vs-refusal pairs; use answer = \"refusal_pair\""));
            }
            if detector && (s.refusal_policy.is_some() || s.label_goal.is_some()) {
                return bad(format!("{name}: refusal_style = \"detector\" orders each pair itself (the answer chosen); remove refusal_policy and label_goal"));
            }
            if !(s.weight.is_finite() && s.weight >= 0.0) {
                return bad(format!(
                    "{name}: weight = {} must be a finite number >= 0",
                    s.weight
                ));
            }
            let pairs = s.answer == Some(Answer::RefusalPair);
            // Known here to be labelled pairs; other sources labelled by `goal` are checked per record.
            let labels = s.refusal_policy == Some(RefusalPolicy::Label)
                || (s.refusal_policy.is_none() && pairs && !detector);
            let harmful = s.harmful.or(s.rewrite.map(|_| false));
            if labels && self.label_goal(s) == LabelGoal::Safety && harmful.is_none() {
                return bad(format!(
                    "{name}: refusal_policy = \"label\" with goal \"safety\" needs `harmful = true|false` \
                     (is a refusal the right answer to these prompts?)"
                ));
            }
            if s.answer.is_some() && !pairs && s.refusal_policy == Some(RefusalPolicy::Label) {
                return bad(format!("{name}: `answer` makes SFT examples; refusal_policy = \"label\" is for preference pairs"));
            }
            if pairs && s.refusal_policy.is_some_and(|p| p != RefusalPolicy::Label) {
                return bad(format!("{name}: answer = \"refusal_pair\" needs refusal_policy = \"label\" (which side of each pair is chosen depends on `label_goal` and `harmful`)"));
            }
            if s.answer == Some(Answer::RefusalTemplate)
                && self.label_goal(s) == LabelGoal::RefusalFree
            {
                return bad(format!("{name}: answer = \"refusal_template\" teaches refusing, but the goal is \"refusal-free\" (use answer = \"refusal_pair\", which `goal` orders either way, or answer = \"model\")"));
            }
            if s.rewrite.is_some() && s.harmful == Some(true) {
                return bad(format!("{name}: rewrite = \"borderline\" makes safe requests of harmful ones, so `harmful = true` contradicts it"));
            }
        }
        // The detector's own checks (empty phrases, bad regexes) name their table; add the file.
        match crate::refusal::RefusalDetector::new(&self.refusal) {
            Ok(_) => Ok(()),
            Err(Error::Invalid(msg)) => bad(msg),
            Err(e) => Err(e),
        }
    }
}

/// toml's message (with line, column and the offending text) plus a "did you mean" for unknown keys.
pub fn config_error(path: &Path, e: &toml::de::Error) -> Error {
    let mut msg = e.to_string();
    if let Some(hint) = suggest_key(&msg) {
        msg = format!("{}\n(did you mean `{hint}`?)", msg.trim_end());
    }
    Error::Config {
        path: path.to_path_buf(),
        msg,
    }
}

/// From serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a` or `b`"), the valid key
/// closest to `x` by edit distance, if it is close enough to be a typo.
fn suggest_key(msg: &str) -> Option<String> {
    let rest = &msg[msg.find("unknown field `")? + "unknown field `".len()..];
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected")?.1.lines().next()?;
    let (dist, best) = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (strsim::levenshtein(unknown, k), k))
        .min()?;
    (dist <= 2.max(unknown.len() / 3)).then(|| best.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn constructors_match_the_run_file_defaults() {
        let parsed: super::DataConfig =
            toml::from_str("[[sources]]\npath = \"a.jsonl\"\n").unwrap();
        let built = super::DataConfig::new(vec![super::SourceConfig::new("a.jsonl")]);
        let json = |c: &super::DataConfig| serde_json::to_value(c).unwrap();
        assert_eq!(json(&parsed), json(&built));
    }

    use super::*;

    #[test]
    fn suggests_the_nearest_key() {
        let msg =
            "unknown field `max_lenght`, expected one of `max_length`, `truncation`, `packing`";
        assert_eq!(suggest_key(msg).as_deref(), Some("max_length"));
        let msg = "unknown field `zzzzzz`, expected one of `max_length`, `seed`";
        assert_eq!(suggest_key(msg), None);
        assert_eq!(
            suggest_key("unknown field `pth`, expected `path` or `format`").as_deref(),
            Some("path")
        );
    }
}
