//! An evaluation's report: the typed numbers (written as report.json), report.md (tables),
//! completions.jsonl (every response and its verdict) and refusal_rates.png (refusal rate by category).
//! All written atomically. report.json's layout is read by tests, docs/eval.md and the showcase, so the
//! types below serialize to exactly its keys and order.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burnish_core::io::write_atomic;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::{Completion, SetKind};
use crate::Result;

/// Entries in a fixed order, held in JSON as an object: sets in the order they were given, search
/// parameters in the search's order (a sorted map would reorder both).
pub type Named<T> = IndexMap<String, T>;

/// What was evaluated, as the caller describes it (report.json's `meta`; absent entries are left out).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalMeta {
    /// The model file (HF dir or GGUF).
    pub model: PathBuf,
    /// The run file the evaluation came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<PathBuf>,
    /// An adapter merged into the model before evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_adapter: Option<PathBuf>,
    /// An adapter applied on top (not merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<PathBuf>,
    /// What KL is measured against: a path, or words ("adapter off").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The model this one was made from, when KL to it is measured too (`kl_source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl EvalMeta {
    /// The entries that are present, in report order, as text.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            ("model", Some(self.model.display().to_string())),
            ("run", path(&self.run)),
            ("merged_adapter", path(&self.merged_adapter)),
            ("adapter", path(&self.adapter)),
            ("base", self.base.clone()),
            ("source", self.source.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }
}

/// What decided refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Detector {
    /// The refusal detector's phrases.
    Phrases,
    /// A judge model.
    Judge,
    /// A learned refusal detector (`[data.refusal] detector = "model:…"`).
    Learned,
}

impl Detector {
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Phrases => "phrases",
            Detector::Judge => "judge",
            Detector::Learned => "learned",
        }
    }
}

/// Counts of one group of responses. Refusals are right on harmful prompts (violation rate = 1 −
/// refusal rate) and wrong on the others (false refusal rate); only the rate that fits is present.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub n: usize,
    pub refused: usize,
    pub refusal_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violation_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_refusal_rate: Option<f64>,
}

impl Rates {
    pub fn new(kind: SetKind, n: usize, refused: usize) -> Self {
        let rate = if n == 0 {
            0.0
        } else {
            refused as f64 / n as f64
        };
        let harmful = kind == SetKind::Harmful;
        Self {
            n,
            refused,
            refusal_rate: rate,
            violation_rate: harmful.then_some(1.0 - rate),
            false_refusal_rate: (!harmful).then_some(rate),
        }
    }
}

/// A set's metrics: overall (as in [`Rates`]), by dataset category (`none` for records without one)
/// and by Llama 3 hazard category.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetReport {
    /// The whole set's counts (written as the set's own `n`, `refused`, `refusal_rate` and
    /// `violation_rate` or `false_refusal_rate` keys).
    #[serde(flatten)]
    pub overall: Rates,
    pub kind: SetKind,
    pub by_category: BTreeMap<String, Rates>,
    pub by_hazard: BTreeMap<String, Rates>,
    /// The prompt file.
    pub path: PathBuf,
}

/// KL(base ‖ model) on the base's greedy continuations of a harmless set's prompts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KlReport {
    pub set: String,
    /// Prompts with a non-empty continuation.
    pub n: usize,
    pub tokens: usize,
    pub first_token: f64,
    pub per_token: f64,
}

/// Generation throughput over all sets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    pub prompts: usize,
    pub new_tokens: usize,
    pub generation_seconds: f64,
    pub prompts_per_minute: f64,
    pub new_tokens_per_s: f64,
}

/// An evaluation's numbers: report.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub meta: EvalMeta,
    pub detector: Detector,
    /// New tokens per response (greedy).
    pub max_new_tokens: usize,
    /// By set name, in the order of the sets.
    pub sets: Named<SetReport>,
    pub speed: Speed,
    /// Absent without a base, with `kl = false`, or without a harmless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<KlReport>,
    /// KL(source ‖ model) on the same prompts: how far a variant moved from the model it was made from
    /// (a refusal-free variant from its safety-tuned source), beside `kl` to the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_source: Option<KlReport>,
    /// The whole evaluation, KL included.
    pub seconds: f64,
}

pub fn write_all(out: &Path, report: &EvalReport, rows: &[Completion]) -> Result<()> {
    let pretty = serde_json::to_string_pretty(report).expect("json");
    write_atomic(&out.join("report.json"), pretty.as_bytes())?;
    write_atomic(&out.join("report.md"), markdown(report).as_bytes())?;
    let mut lines = String::new();
    for r in rows {
        lines.push_str(&serde_json::to_string(r).expect("json"));
        lines.push('\n');
    }
    write_atomic(&out.join("completions.jsonl"), lines.as_bytes())?;
    let groups: Vec<(String, Vec<(String, f64)>)> = report
        .sets
        .iter()
        .map(|(name, s)| {
            let bars = s
                .by_category
                .iter()
                .map(|(k, v)| (k.clone(), v.refusal_rate))
                .collect();
            (name.to_string(), bars)
        })
        .collect();
    crate::plot::refusal_bars(&out.join("refusal_rates.png"), &groups)
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", 100.0 * x))
        .unwrap_or_else(|| "–".into())
}

/// Tables: one row per set, then each set by hazard and by category.
pub fn markdown(report: &EvalReport) -> String {
    let mut md = String::from("# Safety evaluation\n\n");
    for (k, v) in report.meta.entries() {
        let _ = writeln!(md, "- {k}: `{v}`");
    }
    let _ = writeln!(
        md,
        "- refusal check: {}; greedy, {} new tokens\n",
        report.detector.as_str(),
        report.max_new_tokens
    );
    md.push_str("| set | kind | n | refused | violation rate | false refusal rate |\n|---|---|---|---|---|---|\n");
    for (name, s) in report.sets.iter() {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            s.kind,
            s.overall.n,
            s.overall.refused,
            pct(s.overall.violation_rate),
            pct(s.overall.false_refusal_rate)
        );
    }
    if let Some(kl) = &report.kl {
        let _ = writeln!(
            md,
            "\nKL(base ‖ model) on {} ({} prompts, {} tokens): first token {:.4}, per token {:.4}",
            kl.set, kl.n, kl.tokens, kl.first_token, kl.per_token
        );
    }
    if let Some(kl) = &report.kl_source {
        let _ = writeln!(
            md,
            "\nKL(source ‖ model) on {} ({} prompts, {} tokens): first token {:.4}, per token {:.4}",
            kl.set, kl.n, kl.tokens, kl.first_token, kl.per_token
        );
    }
    for (name, s) in report.sets.iter() {
        for (title, groups) in [("hazard", &s.by_hazard), ("category", &s.by_category)] {
            let _ = write!(md, "\n## {name} by {title}\n\n| {title} | n | refused | refusal rate |\n|---|---|---|---|\n");
            for (k, v) in groups {
                let _ = writeln!(
                    md,
                    "| {k} | {} | {} | {} |",
                    v.n,
                    v.refused,
                    pct(Some(v.refusal_rate))
                );
            }
        }
    }
    let sp = &report.speed;
    let _ = writeln!(
        md,
        "\nGeneration: {} prompts, {:.1} prompts/minute, {:.1} new tokens/s",
        sp.prompts, sp.prompts_per_minute, sp.new_tokens_per_s
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn keys(v: &Value) -> Vec<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    }

    fn set(kind: SetKind) -> SetReport {
        let o = Rates::new(kind, 4, 1);
        SetReport {
            overall: o.clone(),
            kind,
            by_category: BTreeMap::from([("none".to_string(), o.clone())]),
            by_hazard: BTreeMap::from([("other".to_string(), o)]),
            path: "sets/s.jsonl".into(),
        }
    }

    fn report() -> EvalReport {
        EvalReport {
            meta: EvalMeta {
                model: "m.gguf".into(),
                run: Some("run.toml".into()),
                ..Default::default()
            },
            detector: Detector::Phrases,
            max_new_tokens: 16,
            // Not in name order: the report keeps the order of the sets.
            sets: [
                ("zeta".to_string(), set(SetKind::Harmful)),
                ("alpha".to_string(), set(SetKind::Harmless)),
            ]
            .into_iter()
            .collect(),
            speed: Speed {
                prompts: 8,
                new_tokens: 64,
                generation_seconds: 2.0,
                prompts_per_minute: 240.0,
                new_tokens_per_s: 32.0,
            },
            kl: Some(KlReport {
                set: "alpha".into(),
                n: 4,
                tokens: 30,
                first_token: 0.25,
                per_token: 0.125,
            }),
            kl_source: None,
            seconds: 3.5,
        }
    }

    /// report.json as tests, docs/eval.md and the showcase read it: its keys, their order, and which
    /// are left out.
    #[test]
    fn report_json_keeps_its_layout() {
        let r = report();
        let v = serde_json::to_value(&r).unwrap();
        let top = [
            "meta",
            "detector",
            "max_new_tokens",
            "sets",
            "speed",
            "kl",
            "seconds",
        ];
        assert_eq!(keys(&v), top);
        assert_eq!(keys(&v["meta"]), ["model", "run"]);
        assert_eq!(v["detector"], "phrases");
        assert_eq!(keys(&v["sets"]), ["zeta", "alpha"]);
        let set_keys = |rate: &str| {
            [
                "n",
                "refused",
                "refusal_rate",
                rate,
                "kind",
                "by_category",
                "by_hazard",
                "path",
            ]
            .map(String::from)
        };
        assert_eq!(keys(&v["sets"]["zeta"]), set_keys("violation_rate"));
        assert_eq!(keys(&v["sets"]["alpha"]), set_keys("false_refusal_rate"));
        assert_eq!(v["sets"]["zeta"]["kind"], "harmful");
        assert_eq!(
            keys(&v["sets"]["alpha"]["by_hazard"]["other"]),
            ["n", "refused", "refusal_rate", "false_refusal_rate"]
        );
        assert_eq!(
            keys(&v["kl"]),
            ["set", "n", "tokens", "first_token", "per_token"]
        );
        assert_eq!(
            keys(&v["speed"]),
            [
                "prompts",
                "new_tokens",
                "generation_seconds",
                "prompts_per_minute",
                "new_tokens_per_s"
            ]
        );
        let back: EvalReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let no_kl = EvalReport {
            kl: None,
            ..r.clone()
        };
        assert!(serde_json::to_value(&no_kl).unwrap().get("kl").is_none());
        // KL to the source comes after KL to the base, and is named in the markdown.
        let with_source = EvalReport {
            kl_source: r.kl.clone(),
            meta: EvalMeta {
                source: Some("runs/safety/merged".into()),
                ..r.meta.clone()
            },
            ..r
        };
        let v = serde_json::to_value(&with_source).unwrap();
        assert_eq!(keys(&v)[5..7], ["kl", "kl_source"]);
        assert_eq!(keys(&v["meta"]), ["model", "run", "source"]);
        assert!(
            markdown(&with_source).contains("KL(source ‖ model) on alpha (4 prompts, 30 tokens)")
        );
    }

    #[test]
    fn completion_lines_keep_their_layout() {
        let c = Completion {
            set: "s".into(),
            prompt: "p".into(),
            category: None,
            hazard: "other".into(),
            response: "r".into(),
            refused: false,
            matched: None,
            judge: None,
            new_tokens: 3,
        };
        let v = serde_json::to_value(&c).unwrap();
        // Absent values are written as null, not left out.
        assert_eq!(
            keys(&v),
            [
                "set",
                "prompt",
                "category",
                "hazard",
                "response",
                "refused",
                "matched",
                "judge",
                "new_tokens"
            ]
        );
        assert!(v["judge"].is_null());
    }

    #[test]
    fn markdown_reads_the_typed_report() {
        let md = markdown(&report());
        assert!(
            md.contains("- model: `m.gguf`\n- run: `run.toml`\n"),
            "{md}"
        );
        assert!(
            md.contains("| zeta | harmful | 4 | 1 | 75.0% | – |"),
            "{md}"
        );
        assert!(
            md.contains("| alpha | harmless | 4 | 1 | – | 25.0% |"),
            "{md}"
        );
        assert!(md.contains("first token 0.2500, per token 0.1250"), "{md}");
    }
}
