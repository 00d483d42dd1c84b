//! PPO on a tiny model with a rule-based reward: the mean score of rollouts rises, and every PPO metric
//! is logged. The rule is made learnable for a random model by counting any response containing "e" as a
//! refusal (the detector's phrase list is configurable), with every prompt harmful and the goal "safety".

mod common;

use std::process::Command;

use common::*;

#[test]
fn ppo_raises_the_rule_reward() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_chat_model(tmp.path());
    let prompts = tmp.path().join("prompts.jsonl");
    let lines: String = (0..40)
        .map(|i| format!("{{\"prompt\": \"say {i} now\"}}\n"))
        .collect();
    std::fs::write(&prompts, lines).unwrap();
    let run = tmp.path().join("ppo.toml");
    std::fs::write(
        &run,
        format!(
            r#"[model]
path = {model:?}
[lora]
r = 8
lora_alpha = 16
target_modules = "all-linear"
[data]
eval_fraction = 0.2
[[data.sources]]
path = {prompts:?}
harmful = true
[data.refusal]
phrases = ["e"]
ignore = []
[method]
name = "ppo"
rule = "safety"
missing_eos_penalty = 0.0
rollout_batch_size = 16
num_ppo_epochs = 2
response_length = 6
temperature = 1.0
eval_prompts = 8
[train]
learning_rate = 2e-2
max_steps = 40
seed = 1
[output]
dir = "out"
"#
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .arg("train")
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = metrics(&tmp.path().join("out"));
    assert_eq!(rows.len(), 40);
    let scores: Vec<f64> = rows
        .iter()
        .filter_map(|r| r["objective/scores"].as_f64())
        .collect();
    assert_eq!(scores.len(), 20, "one rollout every num_ppo_epochs steps");
    eprintln!("rollout scores: {scores:?}");
    let first = scores[..5].iter().sum::<f64>() / 5.0;
    let last = scores[15..].iter().sum::<f64>() / 5.0;
    assert!(last > first + 0.3, "mean score should rise: {scores:?}");
    for k in [
        "loss/policy",
        "loss/value",
        "policy/clipfrac",
        "policy/approxkl",
        "val/clipfrac",
        "objective/kl",
        "policy/entropy",
        "response_length",
        "rollout/tokens_per_s",
        "time/rollout_share",
    ] {
        assert!(
            rows.iter().any(|r| r[k].is_number()),
            "no {k} in metrics.jsonl"
        );
    }
    assert!(rows.last().unwrap()["eval_score"].is_number());
    assert!(rows[0]["eval_score_before"].is_number());
    assert!(tmp.path().join("out/samples.jsonl").exists());
}

#[test]
fn ppo_reference_is_the_base_model() {
    use burnish::trainers::ppo::rollout_forward_for_tests as fwd;
    let (base, tuned) = tiny_base_and_tuned();
    let seqs = vec![
        (vec![1u32, 5, 9], vec![17u32, 33, 2]),
        (vec![1, 40, 41, 42, 43], vec![7, 8]),
    ];
    let want = fwd(&base, &seqs, true, 0.7);
    assert_eq!(
        fwd(&tuned, &seqs, false, 0.7),
        want,
        "adapters off must be the base model bit for bit"
    );
    assert_ne!(fwd(&tuned, &seqs, true, 0.7), want);
}
