//! `burnish eval` on the real SmolLM2 (a few prompts), and the `[eval]` section of a training run.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn burnish(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "burnish {args:?} failed: {err}");
    (String::from_utf8_lossy(&out.stdout).to_string(), err)
}

#[test]
fn smollm2_eval_writes_every_output() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "run scripts/fetch-smollm2.sh first");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ev");
    let s = |p: &str| shared_data(p).display().to_string();
    let m = model.display().to_string();
    let (stdout, _) = burnish(&[
        "eval",
        "--model",
        &m,
        "--base",
        &m,
        "--harmful",
        &s("refusal_direction/splits/harmful_val.json"),
        "--benign",
        &s("jailbreakbench/benign-behaviors.csv"),
        "--harmless",
        &s("refusal_direction/splits/harmless_val.json"),
        "--limit",
        "3",
        "--max-new-tokens",
        "12",
        "--batch-size",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let sets = &report["sets"];
    assert_eq!(sets["harmful_val"]["n"], 3);
    assert!(sets["harmful_val"]["violation_rate"].is_number());
    assert!(sets["benign-behaviors"]["false_refusal_rate"].is_number());
    assert!(sets["harmful_val"]["by_hazard"].is_object());
    // The model against itself: no divergence.
    assert!(
        report["kl"]["first_token"].as_f64().unwrap() < 1e-5,
        "{}",
        report["kl"]
    );
    assert!(report["kl"]["per_token"].as_f64().unwrap() < 1e-5);
    for f in [
        "report.json",
        "report.md",
        "completions.jsonl",
        "refusal_rates.png",
    ] {
        assert!(out.join(f).exists(), "missing {f}");
    }
    let lines = std::fs::read_to_string(out.join("completions.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 9);
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["response"].is_string() && v["refused"].is_boolean() && v["hazard"].is_string());
    }
}

#[test]
fn training_runs_its_eval_section() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"say the cat\", \"category\": \"violence\"}\n{\"prompt\": \"say a dog\"}\n",
    )
    .unwrap();
    let run = tiny_run(
        tmp.path(),
        &format!(
            "[eval]\nmax_new_tokens = 4\n[[eval.sets]]\npath = {:?}\nkind = \"harmful\"\n[[eval.sets]]\npath = {:?}\nkind = \"harmless\"\nname = \"easy\"\n",
            prompts.display().to_string(),
            prompts.display().to_string()
        ),
    );
    let (_, err) = burnish(&["train", run.to_str().unwrap()]);
    assert!(err.contains("KL on easy"), "{err}");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("out/eval/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["sets"]["prompts"]["n"], 2);
    assert_eq!(
        report["sets"]["prompts"]["by_hazard"]["violent_crimes"]["n"],
        1
    );
    // Eight steps at lr 1e-2 moved the model away from its base.
    assert!(
        report["kl"]["first_token"].as_f64().unwrap() > 1e-4,
        "{}",
        report["kl"]
    );
}

#[test]
fn judge_model_decides_refusals() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ev");
    let m = model.display().to_string();
    let (stdout, _) = burnish(&[
        "eval",
        "--model",
        &m,
        "--judge",
        &m,
        "--no-kl",
        "--harmful",
        &shared_data("advbench/harmful_behaviors.csv")
            .display()
            .to_string(),
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["detector"], "judge");
    let lines = std::fs::read_to_string(out.join("completions.jsonl")).unwrap();
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["judge"].is_boolean(), "{v}");
        assert_eq!(v["refused"], v["judge"]);
    }
    assert!(report.get("kl").is_none());
}
