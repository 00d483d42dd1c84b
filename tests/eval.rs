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

/// `--source`: KL to the model a variant was made from, beside KL to the base. With the source the
/// same weights as the base, both numbers are the same measurement; a model of another vocabulary is
/// refused by name.
#[test]
fn eval_measures_kl_to_the_source_beside_the_base() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"say the cat\"}\n{\"prompt\": \"say a dog\"}\n",
    )
    .unwrap();
    let run = tiny_run(tmp.path(), "save = [\"adapter\", \"merged\"]");
    burnish(&["train", run.to_str().unwrap()]);
    let (tiny, merged) = (tmp.path().join("tiny-chat"), tmp.path().join("out/merged"));
    let eval = |source: &Path| {
        let out = tmp.path().join("ev");
        let p = prompts.to_str().unwrap();
        Command::new(env!("CARGO_BIN_EXE_burnish"))
            .args(["eval", "--model", merged.to_str().unwrap(), "--base"])
            .arg(&tiny)
            .arg("--source")
            .arg(source)
            .args(["--harmful", p, "--harmless", p, "--max-new-tokens", "4"])
            .args(["--json", "--out", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let ok = eval(&tiny);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    let (kl, src) = (&report["kl"], &report["kl_source"]);
    assert!(kl["first_token"].as_f64().unwrap() > 1e-4, "{kl}");
    assert_eq!(kl, src, "the same reference gives the same KL");
    assert_eq!(report["meta"]["source"], tiny.display().to_string());
    assert!(String::from_utf8_lossy(&ok.stderr).contains("KL to the source on prompts"));
    // The merged model against itself: no divergence.
    let own = eval(&merged);
    let report: serde_json::Value = serde_json::from_slice(&own.stdout).unwrap();
    assert!(report["kl_source"]["first_token"].as_f64().unwrap() < 1e-6);
    // Another vocabulary cannot be compared token by token.
    let smollm2 = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        smollm2.exists() || !in_ci,
        "run scripts/fetch-smollm2.sh first"
    );
    if smollm2.exists() {
        let bad = eval(&smollm2);
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(
            !bad.status.success() && err.contains("--source") && err.contains("vocabulary"),
            "{err}"
        );
    }
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

/// `[data.generate] model`: prompts are answered by that model, not by `[model]` (a refusal-free run
/// from a safety-tuned model answers with the original's replies); a missing file is named by its key.
/// With `self_first`, `[model]` answers and `model` only the prompts `[model]` refuses.
#[test]
fn data_is_answered_by_the_generate_model() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "save = [\"adapter\", \"merged\"]");
    burnish(&["train", run.to_str().unwrap()]);
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"say the cat\"}\n{\"prompt\": \"say a dog\"}\n{\"prompt\": \"hello\"}\n",
    )
    .unwrap();
    let build = |name: &str, model: &str, generate: &str| {
        let file = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "[model]\npath = {model:?}\n[data]\n[[data.sources]]\npath = {:?}\nanswer = \"model\"\n\
                 [data.generate]\nmax_new_tokens = 6\n{generate}\n",
                prompts.display().to_string()
            ),
        )
        .unwrap();
        let out = tmp.path().join(format!("{name}.jsonl"));
        let o = Command::new(env!("CARGO_BIN_EXE_burnish"))
            .args(["data", "build", file.to_str().unwrap(), "--out"])
            .arg(&out)
            .output()
            .unwrap();
        (o, out)
    };
    let answers = |(o, out): (std::process::Output, std::path::PathBuf)| -> Vec<String> {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(out)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["completion"].to_string()
            })
            .collect()
    };
    // Relative to the run file, as every path of a run file.
    let by_generate_model = answers(build("a", "tiny-chat", "model = \"out/merged\""));
    let by_tuned = answers(build("b", "out/merged", ""));
    let by_tiny = answers(build("c", "tiny-chat", ""));
    assert_eq!(by_generate_model, by_tuned);
    assert_ne!(by_generate_model, by_tiny);
    let (o, _) = build("d", "tiny-chat", "model = \"nowhere\"");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("`data.generate.model`") && err.contains("nowhere"),
        "{err}"
    );
    // self_first: [model] answers first. The tiny model never refuses by the phrases, so its answers
    // stay; a rule that flags every reply sends every prompt to `model` (kept: the policy is keep).
    let own_first = "model = \"out/merged\"\nself_first = true";
    assert_eq!(answers(build("e", "tiny-chat", own_first)), by_tiny);
    let everything_refuses = format!("{own_first}\n[data.refusal]\nregexes = [\".\"]");
    let (o, out) = build("f", "tiny-chat", &everything_refuses);
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        stdout.contains("self_first: 0 of 3 prompts answered by [model], the 3 it refused"),
        "{stdout}"
    );
    assert_eq!(answers((o, out)), by_generate_model);
    let (o, _) = build("g", "tiny-chat", "self_first = true");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("`data.generate.self_first` needs `data.generate.model`"),
        "{err}"
    );
}
