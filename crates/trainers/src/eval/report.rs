//! Writing an evaluation: report.json (the numbers), report.md (tables), completions.jsonl (every
//! response and its verdict) and refusal_rates.png (refusal rate by category). All written atomically.

use std::fmt::Write as _;
use std::path::Path;

use burnish_core::io::write_atomic;
use serde_json::{json, Value};

use super::Completion;
use crate::Result;

pub fn write_all(out: &Path, report: &Value, rows: &[Completion]) -> Result<()> {
    let pretty = serde_json::to_string_pretty(report).expect("json");
    write_atomic(&out.join("report.json"), pretty.as_bytes())?;
    write_atomic(&out.join("report.md"), markdown(report).as_bytes())?;
    let mut lines = String::new();
    for r in rows {
        let v = json!({
            "set": r.set,
            "prompt": r.prompt,
            "category": r.category,
            "hazard": r.hazard,
            "response": r.response,
            "refused": r.refused,
            "matched": r.matched,
            "judge": r.judge,
            "new_tokens": r.new_tokens,
        });
        lines.push_str(&v.to_string());
        lines.push('\n');
    }
    write_atomic(&out.join("completions.jsonl"), lines.as_bytes())?;
    let groups: Vec<(String, Vec<(String, f64)>)> = report["sets"]
        .as_object()
        .map(|sets| {
            sets.iter()
                .map(|(name, s)| {
                    let bars = s["by_category"]
                        .as_object()
                        .map(|c| {
                            c.iter()
                                .map(|(k, v)| {
                                    (k.clone(), v["refusal_rate"].as_f64().unwrap_or(0.0))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (name.clone(), bars)
                })
                .collect()
        })
        .unwrap_or_default();
    crate::plot::refusal_bars(&out.join("refusal_rates.png"), &groups)
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{:.1}%", 100.0 * x))
        .unwrap_or_else(|| "–".into())
}

/// Tables: one row per set, then each set by hazard and by category.
pub fn markdown(report: &Value) -> String {
    let mut md = String::from("# Safety evaluation\n\n");
    if let Some(m) = report["meta"].as_object() {
        for (k, v) in m {
            if !v.is_null() {
                let _ = writeln!(
                    md,
                    "- {k}: `{}`",
                    v.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string())
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "- refusal check: {}; greedy, {} new tokens\n",
        report["detector"].as_str().unwrap_or("phrases"),
        report["max_new_tokens"]
    );
    md.push_str("| set | kind | n | refused | violation rate | false refusal rate |\n|---|---|---|---|---|---|\n");
    let empty = serde_json::Map::new();
    let sets = report["sets"].as_object().unwrap_or(&empty);
    for (name, s) in sets {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            s["kind"].as_str().unwrap_or(""),
            s["n"],
            s["refused"],
            pct(&s["violation_rate"]),
            pct(&s["false_refusal_rate"])
        );
    }
    if let Some(kl) = report.get("kl") {
        let _ = writeln!(
            md,
            "\nKL(base ‖ model) on {} ({} prompts, {} tokens): first token {:.4}, per token {:.4}",
            kl["set"].as_str().unwrap_or(""),
            kl["n"],
            kl["tokens"],
            kl["first_token"].as_f64().unwrap_or(f64::NAN),
            kl["per_token"].as_f64().unwrap_or(f64::NAN)
        );
    }
    for (name, s) in sets {
        for (title, key) in [("hazard", "by_hazard"), ("category", "by_category")] {
            let _ = write!(md, "\n## {name} by {title}\n\n| {title} | n | refused | refusal rate |\n|---|---|---|---|\n");
            for (k, v) in s[key].as_object().unwrap_or(&empty) {
                let _ = writeln!(
                    md,
                    "| {k} | {} | {} | {} |",
                    v["n"],
                    v["refused"],
                    pct(&v["refusal_rate"])
                );
            }
        }
    }
    if let Some(sp) = report.get("speed") {
        let _ = writeln!(
            md,
            "\nGeneration: {} prompts, {:.1} prompts/minute, {:.1} new tokens/s",
            sp["prompts"],
            sp["prompts_per_minute"].as_f64().unwrap_or(0.0),
            sp["new_tokens_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    md
}
