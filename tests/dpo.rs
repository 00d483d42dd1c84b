//! DPO end to end on a tiny model: the first step is log 2 (policy = reference), rewards/accuracies rise,
//! precomputed reference log-probs give the same run, and the reference is exactly the base model.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burnish::core::backend::Cpu;
use burnish::core::Adapters;
use burnish::data::{Batch, Packed, TokenizedExample};
use burnish::trainers::logps::sequence_logps;
use common::*;

fn dpo_run(dir: &Path, method: &str) -> PathBuf {
    pair_run(dir, &format!("name = \"dpo\"\n{method}"), 40)
}

fn train(run: &Path) -> String {
    train_with(run, &[])
}

fn train_with(run: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .arg("train")
        .arg(run)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "train failed: {err}");
    err
}

fn column(rows: &[serde_json::Value], k: &str) -> Vec<f64> {
    rows.iter()
        .map(|r| r[k].as_f64().unwrap_or_else(|| panic!("no {k} in {r}")))
        .collect()
}

#[test]
fn dpo_learns_the_preference() {
    let tmp = tempfile::tempdir().unwrap();
    let run = dpo_run(tmp.path(), "beta = 0.1");
    train(&run);
    let out = tmp.path().join("out");
    let rows = metrics(&out);
    assert_eq!(rows.len(), 8);
    let loss = column(&rows, "loss");
    // Fresh adapters (B = 0): the policy is the reference, so every pair scores log 2 and no reward wins
    // (their log-probs differ only in rounding, which `rewards/accuracies` does not count as a win).
    assert!((loss[0] - 2f64.ln()).abs() < 1e-4, "{loss:?}");
    let acc = column(&rows, "rewards/accuracies");
    assert_eq!(acc[0], 0.0, "{acc:?}");
    assert!(acc[6..].iter().sum::<f64>() / 2.0 > 0.7, "{acc:?}");
    assert!(
        loss[6..].iter().sum::<f64>() / 2.0 < loss[0] * 0.8,
        "{loss:?}"
    );
    let margins = column(&rows, "rewards/margins");
    assert!(margins[7] > 0.0, "{margins:?}");
    for k in [
        "rewards/chosen",
        "rewards/rejected",
        "logps/chosen",
        "logps/rejected",
    ] {
        column(&rows, k);
    }
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let eval = &run_json["eval_metrics"];
    assert!(
        eval["eval_rewards/accuracies"].as_f64().unwrap() > 0.5,
        "{eval}"
    );
    assert!(eval["eval_loss"].as_f64().unwrap() < 2f64.ln(), "{eval}");
    assert!(out.join("adapter/adapter_model.safetensors").exists());
}

/// TRL turns LoRA dropout off in DPO: the first two steps (losses, gradients, rewards) are the same
/// with `lora_dropout` 0 and 0.3. (With fresh adapters, B = 0, dropout cannot change the first loss,
/// but it changes its gradient and so every later step.)
#[test]
fn dpo_ignores_lora_dropout() {
    let tmp = tempfile::tempdir().unwrap();
    let two_steps = |dropout: &str| {
        let dir = tmp.path().join(dropout);
        std::fs::create_dir_all(&dir).unwrap();
        let run = dpo_run(&dir, "beta = 0.1");
        let out = Command::new(env!("CARGO_BIN_EXE_burnish"))
            .args(["train", run.to_str().unwrap(), "--set"])
            .arg(format!("lora.lora_dropout={dropout}"))
            .args(["--set", "train.max_steps=2"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        metrics(&dir.join("out"))
    };
    let (a, b) = (two_steps("0.0"), two_steps("0.3"));
    assert!(
        (b[0]["loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-4,
        "{:?}",
        b[0]
    );
    for (ra, rb) in a.iter().zip(&b) {
        for k in ["loss", "grad_norm", "rewards/margins", "logps/chosen"] {
            let (x, y) = (ra[k].as_f64().unwrap(), rb[k].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{k}: {x} vs {y}");
        }
    }
}

#[test]
fn precomputed_reference_gives_the_same_run_and_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    train(&dpo_run(&a, "loss_type = \"ipo\""));
    let run_b = dpo_run(&b, "loss_type = \"ipo\"\nprecompute_ref_log_probs = true");
    let log = train(&run_b);
    assert!(log.contains("reference log-probs of 40 pairs"), "{log}");
    let (la, lb) = (
        column(&metrics(&a.join("out")), "loss"),
        column(&metrics(&b.join("out")), "loss"),
    );
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 1e-3 * x.abs().max(1.0), "{la:?} vs {lb:?}");
    }
    assert!(b.join("out/ref_logps.json").exists());
    // A second run over the same data and model (replacing the first's outputs) reads the cache
    // instead of recomputing.
    let log = train_with(&run_b, &["--overwrite"]);
    assert!(log.contains("reference log-probs from"), "{log}");
}

#[test]
fn reference_is_the_base_model() {
    let (base, tuned) = tiny_base_and_tuned();
    let rows: Vec<Packed> = [
        vec![1u32, 5, 9, 17, 33, 2],
        vec![1, 40, 41, 42, 2, 7, 8, 99, 100],
    ]
    .into_iter()
    .map(|ids| {
        let labels = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| if i >= 3 { t as i64 } else { -100 })
            .collect();
        Packed::single(&TokenizedExample {
            input_ids: ids,
            labels,
            truncated: false,
            category: None,
        })
    })
    .collect();
    let batch = Batch::new(&rows, 0);
    let v = |t: burnish::core::burn::tensor::Tensor<Cpu, 1>| t.into_data().to_vec::<f32>().unwrap();
    let (want, counts) = sequence_logps(&base, &batch, Adapters::On);
    let (reference, _) = sequence_logps(&tuned, &batch, Adapters::Off);
    let (policy, _) = sequence_logps(&tuned, &batch, Adapters::On);
    assert_eq!(counts, vec![3, 6]);
    let (want, reference, policy) = (v(want), v(reference), v(policy));
    assert_eq!(
        want, reference,
        "adapters off must be the base model bit for bit"
    );
    assert!(
        want.iter().zip(&policy).all(|(a, b)| (a - b).abs() > 1e-4),
        "{want:?} {policy:?}"
    );
}
