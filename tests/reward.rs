//! Reward modelling on a tiny model: accuracy rises, the head is saved next to the adapter and survives a
//! resume, and `burnish score` ranks a preferred response above a rejected one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn run_file(dir: &Path, extra: &str) -> PathBuf {
    let model = tiny_chat_model(dir);
    let data = pair_data(dir, 48);
    let text = format!(
        "[model]\npath = {model:?}\n[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = \"all-linear\"\n[data]\nmax_length = 64\neval_fraction = 0.25\n\
         [[data.sources]]\npath = {data:?}\n[method]\nname = \"reward\"\ncenter_rewards_coefficient = 0.01\n\
         [train]\nlearning_rate = 1e-2\nbatch_size = 4\nmax_steps = 12\nseed = 3\n{extra}[output]\ndir = \"out\"\n"
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn burnish(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn reward_model_learns_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_file(tmp.path(), "");
    burnish(&["train", run.to_str().unwrap()]);
    let out = tmp.path().join("out");
    let rows = metrics(&out);
    let acc: Vec<f64> = rows
        .iter()
        .map(|r| r["accuracy"].as_f64().unwrap())
        .collect();
    assert!(acc[10..].iter().sum::<f64>() / 2.0 > 0.8, "{acc:?}");
    let last = rows.last().unwrap();
    assert!(last["eval_accuracy"].as_f64().unwrap() > 0.8, "{last}");
    assert!(out.join("adapter/score.safetensors").exists());
    let model = tmp.path().join("tiny-chat");
    let s = burnish(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--reward",
        out.join("adapter").to_str().unwrap(),
        "--prompt",
        "say dog on",
        "--response",
        "the dog is on",
        "--response",
        "a on and dog",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    let sc = v["scores"].as_array().unwrap();
    assert!(sc[0].as_f64().unwrap() > sc[1].as_f64().unwrap(), "{s}");
}

#[test]
fn reward_head_survives_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_file(tmp.path(), "save_steps = 6\n");
    burnish(&["train", run.to_str().unwrap()]);
    let out = tmp.path().join("out");
    let full: Vec<f64> = metrics(&out)
        .iter()
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    assert!(out
        .join("checkpoints/step-000006/heads.safetensors")
        .exists());
    burnish(&[
        "train",
        run.to_str().unwrap(),
        "--resume",
        out.join("checkpoints/step-000006").to_str().unwrap(),
    ]);
    let resumed: Vec<f64> = metrics(&out)
        .iter()
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    for (a, b) in full.iter().zip(&resumed).skip(6) {
        assert!((a - b).abs() < 1e-4, "{full:?} vs {resumed:?}");
    }
}

#[test]
fn ppo_scores_with_the_reward_model() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_file(tmp.path(), "");
    burnish(&["train", run.to_str().unwrap()]);
    let model = tmp.path().join("tiny-chat");
    let prompts = tmp.path().join("prompts.jsonl");
    let lines: String = (0..12)
        .map(|i| format!("{{\"prompt\": \"say {i} on\"}}\n"))
        .collect();
    std::fs::write(&prompts, lines).unwrap();
    let rm = tmp.path().join("out/adapter");
    let ppo = tmp.path().join("ppo.toml");
    std::fs::write(
        &ppo,
        format!(
            "[model]\npath = {model:?}\n[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = \"all-linear\"\n\
             [data]\neval_fraction = 0.25\n[[data.sources]]\npath = {prompts:?}\n\
             [method]\nname = \"ppo\"\nreward_model = {rm:?}\nmissing_eos_penalty = 0.0\n\
             rollout_batch_size = 8\nnum_ppo_epochs = 1\nresponse_length = 4\neval_prompts = 3\n\
             [train]\nlearning_rate = 1e-3\nmax_steps = 2\nseed = 1\n[output]\ndir = \"ppo-out\"\n"
        ),
    )
    .unwrap();
    burnish(&["train", ppo.to_str().unwrap()]);
    let rows = metrics(&tmp.path().join("ppo-out"));
    // With only the reward model, weight 1 and no EOS penalty, the score is the reward model's own.
    let rollouts: Vec<_> = rows
        .iter()
        .filter(|r| r["objective/scores"].is_number())
        .collect();
    assert_eq!(rollouts.len(), 2, "one rollout per step");
    for r in rollouts {
        let (s, rm) = (
            r["objective/scores"].as_f64().unwrap(),
            r["objective/reward_model_score"].as_f64().unwrap(),
        );
        assert!((s - rm).abs() < 1e-9, "{r}");
    }
    let last = rows.last().unwrap();
    assert!(last["eval_reward_model_score"].is_number(), "{last}");
    assert!(rows[0]["eval_reward_model_score_before"].is_number());
    let eos = last["eval_eos_fraction"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&eos), "{last}");
}

/// A ChatML-like template: each turn ends in the special `<|eos|>` and then a newline, as SmolLM2's
/// `<|im_end|>\n`. Reward training cuts each answer after that special token.
const TURN_TEMPLATE: &str = "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}";

/// `burnish score` reads the head at the token training put it on: a response's score equals the
/// reward of the same exchange computed as training computes a pair's side (not at the newline the
/// template adds after the end-of-turn token).
#[test]
fn score_reads_the_head_where_training_did() {
    use burnish::core::backend::Cpu;
    use burnish::core::{Message, Pretrained};
    use burnish::data::{ChatEncoder, EncodeOptions, PairExample};
    use burnish::trainers::dpo::pair_rows;
    use burnish::trainers::reward::{load_head, rewards};

    let tmp = tempfile::tempdir().unwrap();
    let run = run_file(tmp.path(), "");
    let model = tmp.path().join("tiny-chat");
    let tc = serde_json::json!({"chat_template": TURN_TEMPLATE, "eos_token": "<|eos|>", "pad_token": "<|pad|>", "bos_token": "<|bos|>"});
    std::fs::write(model.join("tokenizer_config.json"), tc.to_string()).unwrap();
    burnish(&["train", run.to_str().unwrap()]);
    let adapter = tmp.path().join("out/adapter");
    let (prompt, responses) = ("say dog on", ["the dog is on", "a on and dog"]);

    let d = Default::default();
    let (bundle, mut m) = Pretrained::<Cpu>::load(&model, &d).unwrap().into_parts();
    burnish::core::adapter::load_adapter(&mut m, &adapter, &d).unwrap();
    let head = load_head::<Cpu>(&adapter, &d).unwrap();
    let encoder = ChatEncoder::from_bundle(&bundle, EncodeOptions::untruncated()).unwrap();
    let pair = encoder
        .encode_pair(&PairExample {
            prompt: vec![Message::user(prompt)],
            chosen: responses[0].into(),
            rejected: responses[1].into(),
            chosen_unfinished: false,
            rejected_unfinished: false,
            category: None,
            harmful: None,
            origin: None,
        })
        .unwrap()
        .unwrap();
    let eos = bundle.eos_ids()[0];
    assert_eq!(
        pair.chosen.ids.last(),
        Some(&eos),
        "training ends at <|eos|>"
    );
    let trained = rewards(&m, head, &pair_rows(&[&pair], bundle.pad_id()))
        .into_data()
        .to_vec::<f32>()
        .unwrap();

    let s = burnish(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--reward",
        adapter.to_str().unwrap(),
        "--prompt",
        prompt,
        "--response",
        responses[0],
        "--response",
        responses[1],
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    let scored: Vec<f64> = v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    for (a, b) in scored.iter().zip(&trained) {
        assert!(
            (a - *b as f64).abs() < 1e-4,
            "score {scored:?} vs training {trained:?}"
        );
    }
}

/// SFT records whose answers are plain statements, for a detector's pairs (no model answers needed).
fn statements(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("answers.jsonl");
    let words = ["cat", "mat", "dog", "home", "sun", "tree"];
    let mut lines = String::new();
    for i in 0..n {
        let (a, b) = (words[i % 6], words[(i * 5 + 1) % 6]);
        let row = serde_json::json!({
            "prompt": format!("How to find the {a} near the {b}?"),
            "completion": format!("The {a} is by the {b}. Walk to the {b} and look left."),
        });
        lines.push_str(&format!("{row}\n"));
    }
    std::fs::write(&p, lines).unwrap();
    p
}

#[test]
fn a_response_only_reward_model_is_a_refusal_detector() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = tiny_chat_model(dir);
    let data = statements(dir, 64);
    let run = dir.join("detector.toml");
    std::fs::write(
        &run,
        format!(
            "[model]\npath = {model:?}\n[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = \"all-linear\"\n\
             [data]\nrefusal_style = \"detector\"\nmax_length = 128\ntruncation = \"left\"\neval_fraction = 0.25\n\
             [[data.sources]]\npath = {data:?}\nanswer = \"refusal_pair\"\n\
             [method]\nname = \"reward\"\nresponse_only = true\ncenter_rewards_coefficient = 0.01\n\
             [train]\nlearning_rate = 1e-2\nbatch_size = 4\nmax_steps = 24\nseed = 3\n[output]\ndir = \"out\"\n"
        ),
    )
    .unwrap();
    burnish(&["train", run.to_str().unwrap()]);
    let adapter = dir.join("out/adapter");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("detector.json")).unwrap())
            .unwrap();
    assert!(
        Path::new(meta["base_model"].as_str().unwrap()).is_absolute(),
        "{meta}"
    );
    let last = metrics(&dir.join("out")).pop().unwrap();
    assert!(last["eval_accuracy"].as_f64().unwrap() >= 0.75, "{last}");
    // Scored as a classifier on responses it did not train on: new refusals and new answers.
    let set = dir.join("labelled.jsonl");
    let rows = [
        ("I'm sorry, but I can't help you find the dog.", true),
        ("Unfortunately, I won't assist with this request.", true),
        ("I cannot help with that. Is there anything else?", true),
        (
            "The sun is by the tree. Walk to the tree and look left.",
            false,
        ),
        (
            "The mat is by the home. Walk to the home and look left.",
            false,
        ),
        (
            "The dog is by the cat. Walk to the cat and look left.",
            false,
        ),
    ];
    let text: String = rows
        .iter()
        .map(|(r, l)| format!("{}\n", serde_json::json!({"response": r, "refusal": l})))
        .collect();
    std::fs::write(&set, text).unwrap();
    let out = burnish(&[
        "data",
        "eval-refusals",
        "--set",
        set.to_str().unwrap(),
        "--detector",
        adapter.to_str().unwrap(),
    ]);
    let learned = out
        .lines()
        .find(|l| l.starts_with("learned "))
        .unwrap_or_else(|| panic!("{out}"));
    let accuracy: f64 = learned.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(accuracy >= 5.0 / 6.0, "{out}");
    // The same detector decides a data policy: refusals filtered from SFT records by the model.
    let sft = dir.join("mixed.jsonl");
    let mixed: String = rows
        .iter()
        .map(|(r, _)| {
            format!(
                "{}\n",
                serde_json::json!({"prompt": "find it", "completion": r})
            )
        })
        .collect();
    std::fs::write(&sft, mixed).unwrap();
    let filter = dir.join("filter.toml");
    std::fs::write(
        &filter,
        format!(
            "[model]\npath = {model:?}\n[data]\n[data.refusal]\ndetector = \"model:out/adapter\"\n\
             [[data.sources]]\npath = {sft:?}\nrefusal_policy = \"filter\"\n"
        ),
    )
    .unwrap();
    let built = dir.join("built.jsonl");
    let report = burnish(&[
        "data",
        "build",
        filter.to_str().unwrap(),
        "--out",
        built.to_str().unwrap(),
    ]);
    let kept = std::fs::read_to_string(&built).unwrap();
    let kept_answers = rows.iter().filter(|(r, l)| !*l && kept.contains(r)).count();
    let kept_refusals = rows.iter().filter(|(r, l)| *l && kept.contains(r)).count();
    assert!(kept_answers >= 3 && kept_refusals <= 1, "{report}\n{kept}");
}
