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
    use burnish::core::Adapters;
    use burnish::trainers::ppo::rollout_forward_for_tests as fwd;
    let (base, tuned) = tiny_base_and_tuned();
    let seqs = vec![
        (vec![1u32, 5, 9], vec![17u32, 33, 2]),
        (vec![1, 40, 41, 42, 43], vec![7, 8]),
    ];
    let want = fwd(&base, &seqs, Adapters::On, 0.7);
    assert_eq!(
        fwd(&tuned, &seqs, Adapters::Off, 0.7),
        want,
        "adapters off must be the base model bit for bit"
    );
    assert_ne!(fwd(&tuned, &seqs, Adapters::On, 0.7), want);
}

/// TRL turns LoRA dropout off in PPO: the losses (policy and value), ratio statistics and gradients of
/// both PPO epochs over the first rollout must not change with `lora_dropout` (with fresh adapters the
/// first step's loss is the same either way, B being 0, but its gradient and the second epoch's
/// probability ratios are not), and the first epoch's ratio is exactly 1 (no clipping).
#[test]
fn ppo_ignores_lora_dropout() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_chat_model(tmp.path());
    let prompts = tmp.path().join("prompts.jsonl");
    let lines: String = (0..16)
        .map(|i| format!("{{\"prompt\": \"say {i} now\"}}\n"))
        .collect();
    std::fs::write(&prompts, lines).unwrap();
    let run = |dropout: f64| {
        let dir = tmp.path().join(format!("d{dropout}"));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ppo.toml");
        std::fs::write(
            &p,
            format!(
                "[model]\npath = {model:?}\n[lora]\nr = 8\nlora_alpha = 16\nlora_dropout = {dropout}\n\
                 target_modules = \"all-linear\"\n[data]\n[[data.sources]]\npath = {prompts:?}\nharmful = true\n\
                 [method]\nname = \"ppo\"\nrule = \"safety\"\nrollout_batch_size = 8\nnum_ppo_epochs = 2\n\
                 response_length = 4\n[train]\nlearning_rate = 1e-2\nmax_steps = 2\nseed = 1\n[output]\ndir = \"out\"\n"
            ),
        )
        .unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_burnish"))
            .arg("train")
            .arg(&p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        metrics(&dir.join("out"))
    };
    let (a, b) = (run(0.0), run(0.3));
    for (ra, rb) in a.iter().zip(&b) {
        for k in [
            "loss",
            "loss/policy",
            "loss/value",
            "policy/approxkl",
            "grad_norm",
        ] {
            let (x, y) = (ra[k].as_f64().unwrap(), rb[k].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{k}: {x} vs {y}");
        }
    }
    assert_eq!(b[0]["policy/clipfrac"].as_f64(), Some(0.0), "{:?}", b[0]);
}
