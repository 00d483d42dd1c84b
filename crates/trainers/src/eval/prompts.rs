//! Prompt sets for evaluation, read with the data crate's readers (jsonl, json, csv, tsv, parquet). The
//! prompt and category columns are detected (AdvBench `goal`, JailbreakBench `goal`/`category`,
//! refusal_direction `instruction`/`category`, HarmBench `Behavior`/`SemanticCategory`, plain `prompt`)
//! or named by the user.

use std::fmt;
use std::path::PathBuf;

use burnish_data::read::open;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// What a set measures: refusals are right on `harmful` prompts (violation rate = 1 − refusal rate) and
/// wrong on `benign` (borderline) and `harmless` ones (false refusal rate); `harmless` is also where KL to
/// the base model is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SetKind {
    Harmful,
    Benign,
    Harmless,
}

impl fmt::Display for SetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetKind::Harmful => "harmful",
            SetKind::Benign => "benign",
            SetKind::Harmless => "harmless",
        })
    }
}

/// Candidate prompt columns, most specific first. `behavior` (lower case) is not one: in JailbreakBench
/// it is a short label next to the real prompt in `goal`.
const PROMPT_COLUMNS: &[&str] = &[
    "prompt",
    "instruction",
    "goal",
    "Goal",
    "Behavior",
    "question",
    "query",
    "text",
];
const CATEGORY_COLUMNS: &[&str] = &[
    "category",
    "Category",
    "SemanticCategory",
    "semantic_category",
];

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    pub path: PathBuf,
    pub kind: SetKind,
    /// Report name (default: the file name without extensions, made unique).
    #[serde(default)]
    pub name: Option<String>,
    /// Prompt column (default: detected).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Category column (default: detected; none is fine).
    #[serde(default)]
    pub category: Option<String>,
}

#[derive(Clone, Debug)]
pub struct EvalPrompt {
    pub prompt: String,
    pub category: Option<String>,
}

#[derive(Clone, Debug)]
pub struct PromptSet {
    pub name: String,
    pub kind: SetKind,
    pub path: PathBuf,
    pub prompts: Vec<EvalPrompt>,
}

fn pick<'a>(
    keys: &[&'a str],
    given: Option<&'a str>,
    rec: &serde_json::Map<String, Value>,
) -> Option<&'a str> {
    given.or_else(|| {
        keys.iter()
            .copied()
            .find(|k| rec.get(*k).is_some_and(Value::is_string))
    })
}

/// Reads up to `limit` prompts of a set (its path as given: a run file's loader has already resolved
/// it against the file's folder).
pub fn load_set(spec: &SetSpec, limit: Option<usize>) -> Result<PromptSet> {
    let path = spec.path.clone();
    let mut prompts = Vec::new();
    let (mut prompt_col, mut cat_col): (Option<String>, Option<String>) = (None, None);
    for rec in open(&path, None)? {
        if limit.is_some_and(|l| prompts.len() >= l) {
            break;
        }
        let rec = rec?;
        if prompt_col.is_none() {
            prompt_col = pick(PROMPT_COLUMNS, spec.prompt.as_deref(), &rec.value).map(String::from);
            cat_col =
                pick(CATEGORY_COLUMNS, spec.category.as_deref(), &rec.value).map(String::from);
        }
        let Some(pc) = &prompt_col else {
            let keys = rec.value.keys().cloned().collect();
            return Err(Error::NoPromptColumn(rec.loc, keys));
        };
        let prompt = match rec.value.get(pc) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => return Err(Error::BadPrompt(rec.loc, pc.clone())),
        };
        let category = cat_col
            .as_ref()
            .and_then(|c| rec.value.get(c))
            .and_then(Value::as_str)
            .map(String::from);
        prompts.push(EvalPrompt { prompt, category });
    }
    if prompts.is_empty() {
        return Err(Error::NoPrompts(path));
    }
    let stem = path
        .file_name()
        .and_then(|f| f.to_str())
        .map(|f| f.split('.').next().unwrap_or(f).to_string())
        .unwrap_or_else(|| "set".into());
    Ok(PromptSet {
        name: spec.name.clone().unwrap_or(stem),
        kind: spec.kind,
        path,
        prompts,
    })
}

/// Loads every set, renaming duplicates `name-2`, `name-3`, ….
pub fn load_sets(specs: &[SetSpec], limit: Option<usize>) -> Result<Vec<PromptSet>> {
    let mut sets: Vec<PromptSet> = Vec::new();
    for s in specs {
        let mut set = load_set(s, limit)?;
        let base = set.name.clone();
        let mut k = 2;
        while sets.iter().any(|o| o.name == set.name) {
            set.name = format!("{base}-{k}");
            k += 1;
        }
        sets.push(set);
    }
    Ok(sets)
}
