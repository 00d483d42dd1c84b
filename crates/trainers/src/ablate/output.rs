//! What an ablation run writes: JSON Lines, the edited model (HF and GGUF), and report.md.

use std::path::Path;

use burnish_core::backend::Cpu;
use burnish_core::export::{export_gguf, export_hf, Dtype, ExportSource, GgufQuant};
use burnish_core::weights::gguf::GgufFile;
use burnish_core::{ModelPath, Pretrained};
use serde_json::Value;

use crate::config::{Run, SaveKind};
use crate::Result;

pub(super) fn write_lines(path: &Path, rows: &[Value]) -> Result<()> {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    Ok(burnish_core::io::write_atomic(path, text.as_bytes())?)
}

/// merged/ (HF, f32) always; model.gguf (F16) when `output.save` asks for it.
pub(super) fn export(
    run: &Run,
    out: &Path,
    model: &Pretrained<Cpu>,
    model_path: &Path,
) -> Result<()> {
    let mut config = model.config.clone();
    config.mlp_bias = model.model.has_mlp_bias();
    config.intermediate_size = model.model.intermediate_size();
    let gguf = match ModelPath::detect(model_path)? {
        ModelPath::Gguf(f) => Some(GgufFile::open(f)?),
        ModelPath::HfDir(_) => None,
    };
    let src = ExportSource {
        config: &config,
        tokenizer: &model.tokenizer,
        template: model.template.as_ref(),
        source_gguf: gguf.as_ref(),
    };
    export_hf(&model.model, &src, &out.join("merged"), Dtype::F32)?;
    if run.config.output.save.contains(&SaveKind::Gguf) {
        export_gguf(&model.model, &src, &out.join("model.gguf"), GgufQuant::F16)?;
    }
    Ok(())
}

pub(super) fn markdown(r: &Value, names: &[&str]) -> String {
    let pct = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{:.1}%", 100.0 * x))
            .unwrap_or_else(|| "–".into())
    };
    let mut md = format!(
        "# Refusal direction: {}\n\n",
        r["mode"].as_str().unwrap_or("")
    );
    md.push_str(&format!(
        "Selected candidate: layer {}, position {} ({}).\n\n",
        r["selected"]["layer"],
        r["selected"]["position"],
        r["selection_filter"].as_str().unwrap_or("")
    ));
    md.push_str("Chosen trial:\n\n| parameter | value |\n|---|---|\n");
    for n in names {
        md.push_str(&format!(
            "| {n} | {:.3} |\n",
            r["chosen"]["info"]["params"][n]
                .as_f64()
                .unwrap_or(f64::NAN)
        ));
    }
    md.push_str(&format!(
        "\nOn the validation prompts: unedited {}, chosen {}.\n\n",
        r["baseline_val"]["info"], r["chosen"]["info"]
    ));
    md.push_str("| set | before: refusal rate | after: refusal rate |\n|---|---|---|\n");
    if let Some(sets) = r["after"]["sets"].as_object() {
        for (name, s) in sets {
            md.push_str(&format!(
                "| {name} | {} | {} |\n",
                pct(&r["before"]["sets"][name]["refusal_rate"]),
                pct(&s["refusal_rate"])
            ));
        }
    }
    if let Some(kl) = r["after"].get("kl") {
        md.push_str(&format!(
            "\nKL(unedited ‖ edited) on {}: first token {:.4}, per token {:.4}.\n",
            kl["set"].as_str().unwrap_or(""),
            kl["first_token"].as_f64().unwrap_or(f64::NAN),
            kl["per_token"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    md.push_str(&format!(
        "\nSearch: {:.0} s; whole run: {:.0} s. Trials: trials.jsonl (Pareto front: pareto.png); candidates: selection.jsonl.\n",
        r["search_seconds"].as_f64().unwrap_or(0.0),
        r["seconds"].as_f64().unwrap_or(0.0)
    ));
    md
}
