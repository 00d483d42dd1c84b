//! What an ablation run writes besides the model: JSON Lines and report.md.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::report::AblateReport;
use crate::Result;

/// One compact JSON object per line.
pub(super) fn write_lines<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&compact(r));
        text.push('\n');
    }
    Ok(burnish_core::io::write_atomic(path, text.as_bytes())?)
}

fn compact<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("json")
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", 100.0 * x))
        .unwrap_or_else(|| "–".into())
}

/// report.md: the selected candidate, the chosen trial, before/after refusal rates and KL.
pub(super) fn markdown(r: &AblateReport) -> String {
    let mut md = format!("# Refusal direction: {}\n\n", r.mode);
    let _ = match &r.selected {
        Some(c) => writeln!(
            md,
            "Selected candidate: layer {}, position {} ({}).\n",
            c.layer, c.position, r.selection_filter
        ),
        None => writeln!(md, "Selected candidate: none ({}).\n", r.selection_filter),
    };
    md.push_str("Chosen trial:\n\n| parameter | value |\n|---|---|\n");
    for (n, v) in r.chosen.info.params.iter() {
        let _ = writeln!(md, "| {n} | {v:.3} |");
    }
    // The measurements as compact JSON, as trials.jsonl holds them.
    let _ = writeln!(
        md,
        "\nOn the validation prompts: unedited {}, chosen {}.\n",
        compact(&r.baseline_val.info),
        compact(&r.chosen.info)
    );
    md.push_str("| set | before: refusal rate | after: refusal rate |\n|---|---|---|\n");
    for (name, s) in r.after.sets.iter() {
        let before = r.before.as_ref().and_then(|b| b.sets.get(name));
        let _ = writeln!(
            md,
            "| {name} | {} | {} |",
            pct(before.map(|b| b.overall.refusal_rate)),
            pct(Some(s.overall.refusal_rate))
        );
    }
    if let Some(kl) = &r.after.kl {
        let _ = writeln!(
            md,
            "\nKL(unedited ‖ edited) on {}: first token {:.4}, per token {:.4}.",
            kl.set, kl.first_token, kl.per_token
        );
    }
    let _ = writeln!(
        md,
        "\nSearch: {:.0} s; whole run: {:.0} s. Trials: trials.jsonl (Pareto front: pareto.png); candidates: selection.jsonl.",
        r.search_seconds, r.seconds
    );
    md
}
