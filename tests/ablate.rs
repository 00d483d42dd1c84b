//! `burnish ablate` end to end on a tiny model: every output, seeded reproducibility, and a steered model
//! that exports and reloads as an `mlp_bias` checkpoint.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burnish::core::backend::Cpu;
use burnish::core::Pretrained;
use common::*;

fn prompts(dir: &Path, name: &str, words: &[&str]) -> PathBuf {
    let p = dir.join(name);
    let lines: String = (0..12)
        .map(|i| {
            format!(
                "{{\"prompt\": \"{} {} {}\"}}\n",
                words[i % words.len()],
                words[(i * 7 + 1) % words.len()],
                i
            )
        })
        .collect();
    std::fs::write(&p, lines).unwrap();
    p
}

fn run_file(dir: &Path, mode: &str, out: &str) -> PathBuf {
    let model = tiny_chat_model(dir);
    let bad = prompts(dir, "bad.jsonl", &["hurt", "steal", "break", "attack"]);
    let good = prompts(dir, "good.jsonl", &["bake", "paint", "sing", "plant"]);
    let text = format!(
        r#"[model]
path = {model:?}
[data]
shuffle = false
[[data.sources]]
path = {bad:?}
harmful = true
[[data.sources]]
path = {good:?}
harmful = false
[method]
name = "ablate"
mode = "{mode}"
trials = 4
startup_trials = 2
val_prompts = 4
max_new_tokens = 4
seed = 5
[eval]
max_new_tokens = 4
[[eval.sets]]
path = {bad:?}
kind = "harmful"
[[eval.sets]]
path = {good:?}
kind = "harmless"
[output]
dir = "{out}"
save = ["merged", "gguf"]
"#
    );
    let p = dir.join(format!("{out}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn ablate(run: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .arg("ablate")
        .arg(run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn params(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["params"].clone())
        .collect()
}

#[test]
fn ablation_writes_every_output_and_is_seeded() {
    let tmp = tempfile::tempdir().unwrap();
    ablate(&run_file(tmp.path(), "ablate", "a"));
    ablate(&run_file(tmp.path(), "ablate", "b"));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for f in [
        "merged/config.json",
        "merged/model.safetensors",
        "model.gguf",
        "direction.safetensors",
        "trials.jsonl",
        "selection.jsonl",
        "report.md",
        "report.json",
        "pareto.png",
        "eval/report.json",
        "eval-before/report.json",
    ] {
        assert!(a.join(f).exists(), "missing {f}");
    }
    let pa = params(&a.join("trials.jsonl"));
    assert_eq!(pa.len(), 4);
    assert_eq!(
        pa,
        params(&b.join("trials.jsonl")),
        "same seed, same trials"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("report.json")).unwrap()).unwrap();
    assert!(report["after"]["kl"]["first_token"].is_number());
    assert!(report["chosen"]["objectives"].is_array());
    // The merged model loads and generates.
    Pretrained::<Cpu>::load(a.join("merged"), &Default::default()).unwrap();
}

#[test]
fn steering_exports_an_mlp_bias_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_file(tmp.path(), "steer", "s");
    // Directions read from another model of the same shape (here: a copy of the same one).
    let text = std::fs::read_to_string(&run).unwrap().replace(
        "mode = \"steer\"",
        &format!(
            "mode = \"steer\"\ndirections_from = {:?}",
            tmp.path().join("tiny-chat")
        ),
    );
    std::fs::write(&run, text).unwrap();
    ablate(&run);
    let out = tmp.path().join("s");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("merged/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["mlp_bias"], true);
    let m = Pretrained::<Cpu>::load(out.join("merged"), &Default::default()).unwrap();
    assert!(m.model.has_mlp_bias());
    let g = Pretrained::<Cpu>::load(out.join("model.gguf"), &Default::default()).unwrap();
    assert!(g.model.has_mlp_bias());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let layer = report["chosen"]["info"]["params"]["layer"]
        .as_f64()
        .unwrap()
        .round() as usize;
    let bias = m
        .model
        .linear(layer - 1, "down_proj")
        .unwrap()
        .bias
        .as_ref()
        .unwrap()
        .val();
    assert!(bias.abs().sum().into_scalar() > 0.0);
}
