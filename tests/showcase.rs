//! `burnish showcase --quick` on a tiny random model: every step runs, the table is written, and a second
//! run skips every step (nothing changed).

mod common;

use std::process::Command;

use common::*;

#[test]
fn quick_showcase_runs_every_step_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_chat_model(tmp.path());
    let out = tmp.path().join("sc");
    let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs");
    let run = || {
        let o = Command::new(env!("CARGO_BIN_EXE_burnish"))
            .args(["showcase", "--quick", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .arg("--configs")
            .arg(&configs)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "showcase failed: {err}");
        (String::from_utf8_lossy(&o.stdout).to_string(), err)
    };
    let (table, log) = run();
    for v in [
        "original",
        "safety",
        "refusal-free",
        "uncensor-subtract",
        "safety-steer",
    ] {
        assert!(
            table.contains(&format!("| {v} |")),
            "no row for {v}:\n{table}"
        );
        assert!(
            out.join("eval").join(v).join("report.json").exists(),
            "{v}: no evaluation"
        );
    }
    assert!(!log.contains("skipped"), "{log}");
    assert!(out.join("results.md").exists() && out.join("results.png").exists());
    assert!(table.contains("| hazard |"), "no hazard table:\n{table}");
    let (table2, again) = run();
    assert_eq!(again.matches("unchanged, skipped").count(), 9, "{again}");
    // The refusal-free variant is measured against the safety-tuned model it was made from, too.
    let report = |v: &str| -> serde_json::Value {
        let p = out.join("eval").join(v).join("report.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    assert!(report("refusal-free")["kl_source"]["first_token"].is_number());
    assert!(report("safety")["kl_source"].is_null());
    // The resumed run reports the steps' recorded times, not its own few seconds.
    let total = |t: &str| {
        t.split("Total wall time of all steps: ")
            .nth(1)
            .and_then(|x| x.split(' ').next())
            .map(str::to_string)
    };
    assert!(total(&table).is_some(), "{table}");
    assert_eq!(total(&table), total(&table2));
}
