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

fn steer_run(dir: &Path, out: &str, extra: &str) -> PathBuf {
    let run = run_file(dir, "steer", out);
    // Directions read from another model of the same shape (here: a copy of the same one).
    let text = std::fs::read_to_string(&run).unwrap().replace(
        "mode = \"steer\"",
        &format!(
            "mode = \"steer\"\ndirections_from = {:?}\n{extra}",
            dir.join("tiny-chat")
        ),
    );
    std::fs::write(&run, text).unwrap();
    ablate(&run);
    dir.join(out)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn last_logits(m: &Pretrained<Cpu>) -> Vec<f32> {
    use burnish::core::burn::tensor::{Int, Tensor, TensorData};
    let ids = Tensor::<Cpu, 2, Int>::from_data(
        TensorData::new(vec![1i64, 17, 33, 5, 9], [1, 5]),
        &Default::default(),
    );
    m.model.forward(ids).into_data().to_vec::<f32>().unwrap()
}

#[test]
fn gated_steering_exports_a_checkpoint_with_one_more_mlp_unit() {
    let tmp = tempfile::tempdir().unwrap();
    let out = steer_run(tmp.path(), "g", "");
    let base = json(&tmp.path().join("tiny-chat/config.json"));
    let cfg = json(&out.join("merged/config.json"));
    assert_eq!(cfg["mlp_bias"], true);
    assert_eq!(
        cfg["intermediate_size"].as_u64().unwrap(),
        base["intermediate_size"].as_u64().unwrap() + 1
    );
    let trials = std::fs::read_to_string(out.join("trials.jsonl")).unwrap();
    for t in trials.lines() {
        let t: serde_json::Value = serde_json::from_str(t).unwrap();
        assert!(t["info"]["params"]["threshold"].is_number());
        assert!(t["info"]["gate_accuracy"].as_f64().unwrap() >= 0.0);
    }
    // HF and GGUF exports of the edit agree (F16 in the GGUF).
    let m = Pretrained::<Cpu>::load(out.join("merged"), &Default::default()).unwrap();
    let g = Pretrained::<Cpu>::load(out.join("model.gguf"), &Default::default()).unwrap();
    assert_eq!(m.model.intermediate_size(), g.model.intermediate_size());
    let (a, b) = (last_logits(&m), last_logits(&g));
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(d < 5e-2, "merged vs gguf logits differ by {d}");
}

#[test]
fn constant_steering_exports_an_mlp_bias_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = steer_run(tmp.path(), "s", "gate = false");
    let cfg = json(&out.join("merged/config.json"));
    assert_eq!(cfg["mlp_bias"], true);
    let m = Pretrained::<Cpu>::load(out.join("merged"), &Default::default()).unwrap();
    assert!(m.model.has_mlp_bias());
    let g = Pretrained::<Cpu>::load(out.join("model.gguf"), &Default::default()).unwrap();
    assert!(g.model.has_mlp_bias());
    let report = json(&out.join("report.json"));
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

fn f32s(st: &safetensors::SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn gated_subtraction_removes_the_candidate_where_its_gate_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_file(tmp.path(), "subtract", "u");
    // A KL target no trial can miss, so the choice is the fewest refusals (then the lowest KL).
    let text = std::fs::read_to_string(&run).unwrap().replace(
        "mode = \"subtract\"",
        "mode = \"subtract\"\nkl_target = 1e9",
    );
    std::fs::write(&run, text).unwrap();
    ablate(&run);
    let out = tmp.path().join("u");
    // The same export as gated steering: one more MLP unit, in HF and GGUF.
    let base = json(&tmp.path().join("tiny-chat/config.json"));
    let cfg = json(&out.join("merged/config.json"));
    assert_eq!(
        cfg["intermediate_size"].as_u64().unwrap(),
        base["intermediate_size"].as_u64().unwrap() + 1
    );
    Pretrained::<Cpu>::load(out.join("model.gguf"), &Default::default()).unwrap();
    // The stored vector is the chosen layer's candidate scaled by −scale.
    let report = json(&out.join("report.json"));
    assert_eq!(report["mode"], "subtract");
    let p = &report["chosen"]["info"]["params"];
    let (layer, scale) = (
        p["layer"].as_f64().unwrap().round() as usize,
        p["scale"].as_f64().unwrap(),
    );
    let bytes = std::fs::read(out.join("direction.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = f32s(&st, "direction");
    let hidden = v.len();
    let cand = &f32s(&st, "candidates")[layer * hidden..][..hidden];
    for (x, c) in v.iter().zip(cand) {
        assert!(
            (x + scale as f32 * c).abs() <= 1e-5 * (1.0 + c.abs()),
            "{x} vs −{scale}·{c}"
        );
    }
    assert!(st.tensor("gate_weight").is_ok());
    // Ablation's objectives and choice: harmful refusals, then first-token KL.
    let trials: Vec<serde_json::Value> = std::fs::read_to_string(out.join("trials.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let key = |t: &serde_json::Value| {
        let o = &t["objectives"];
        (o[0].as_f64().unwrap(), o[1].as_f64().unwrap())
    };
    for t in &trials {
        assert!(t["info"]["kl"].is_number());
    }
    let best = trials
        .iter()
        .map(key)
        .min_by(|a, b| a.partial_cmp(b).unwrap())
        .unwrap();
    assert_eq!(key(&report["chosen"]), best);
}

#[test]
fn subtraction_without_its_gate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_file(tmp.path(), "subtract", "n");
    let text = std::fs::read_to_string(&run)
        .unwrap()
        .replace("mode = \"subtract\"", "mode = \"subtract\"\ngate = false");
    std::fs::write(&run, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .arg("ablate")
        .arg(&run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("always gated"), "{err}");
}

/// A subtraction run with `split = "refusals"` and this `[data.refusal]` table body: its output.
fn split_run(dir: &Path, out: &str, refusal: &str) -> std::process::Output {
    let run = run_file(dir, "subtract", out);
    let text = std::fs::read_to_string(&run)
        .unwrap()
        .replace(
            "mode = \"subtract\"",
            "mode = \"subtract\"\nsplit = \"refusals\"",
        )
        .replace("[method]", &format!("[data.refusal]\n{refusal}\n[method]"));
    std::fs::write(&run, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_burnish"))
        .arg("ablate")
        .arg(&run)
        .output()
        .unwrap()
}

/// `split = "refusals"`: the directions' two classes are what the unedited model refuses and answers,
/// whatever the labels. Checked against the unedited model's own evaluation of the same prompts.
#[test]
fn refusal_split_divides_the_prompts_by_what_the_model_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    // The tiny model writes random text: a detector that calls any answer with an "e" a refusal
    // gives both classes, each with prompts of both labels.
    let out = split_run(
        tmp.path(),
        "r",
        "lists = []\nregexes = [\"e\"]\nempty_is_refusal = false",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("split by refusals"))
        .unwrap_or_else(|| panic!("no split line:\n{err}"));
    // "… : N refused, M answered (A labelled harmful answered, R labelled harmless refused)"
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter(|w| !w.is_empty() && !w.contains('.'))
        .map(|w| w.parse().unwrap())
        .collect();
    let [refused, answered, harmful_answered, harmless_refused] = nums[nums.len() - 4..] else {
        panic!("{line}")
    };
    let before = &json(&tmp.path().join("r/report.json"))["before"]["sets"];
    let count = |set: &str| before[set]["refused"].as_u64().unwrap() as usize;
    assert_eq!(harmful_answered, 12 - count("bad"), "{line}");
    assert_eq!(harmless_refused, count("good"), "{line}");
    assert_eq!(refused, count("bad") + count("good"), "{line}");
    assert_eq!(refused + answered, 24);
    assert!(harmful_answered > 0 && harmless_refused > 0, "{line}");
}

#[test]
fn refusal_split_with_one_class_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    // A detector that flags nothing: the model "answers" every prompt.
    let out = split_run(tmp.path(), "o", "lists = []\nempty_is_refusal = false");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("answers every [data] prompt"), "{err}");
}
