//! The training engine and `burnish train` end to end on a tiny model (and a few real SmolLM2 steps).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burnish::trainers::{RunFile, RunOptions};
use common::*;

fn burnish() -> Command {
    Command::new(env!("CARGO_BIN_EXE_burnish"))
}

fn train_cli(run: &Path, args: &[&str]) -> std::process::Output {
    let out = burnish().arg("train").arg(run).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn loss_falls_and_outputs_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "");
    train_cli(&run, &[]);
    let out = tmp.path().join("out");
    let l = losses(&out);
    assert_eq!(l.len(), 8);
    let first: f64 = l[..2].iter().map(|x| x.1).sum::<f64>() / 2.0;
    let last: f64 = l[6..].iter().map(|x| x.1).sum::<f64>() / 2.0;
    assert!(last < first * 0.8, "loss should fall: {l:?}");
    for row in metrics(&out) {
        for k in [
            "step",
            "epoch",
            "loss",
            "lr",
            "grad_norm",
            "tokens_per_s",
            "token_accuracy",
        ] {
            assert!(
                row.get(k).is_some_and(|v| v.is_number()),
                "metrics.jsonl lacks {k}: {row}"
            );
        }
    }
    for f in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "loss.png",
        "run.json",
    ] {
        assert!(out.join(f).exists(), "missing {f}");
    }
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run_json["outcome"], "finished");
    assert_eq!(run_json["config"]["train"]["max_steps"], 8);
}

/// SFT on preference pairs learns their chosen responses: the same run as SFT on prompt/completion
/// records holding the chosen side (so a run file whose pairs a `goal` labels can train SFT too).
#[test]
fn sft_on_pairs_learns_the_chosen_responses() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("pairs"), tmp.path().join("sft"));
    let run = pair_run(&a, "name = \"sft\"", 40);
    train_cli(&run, &[]);
    // The same records with only the chosen side, in the same order (so the same split and shuffle).
    std::fs::create_dir_all(&b).unwrap();
    let pairs = std::fs::read_to_string(a.join("pairs.jsonl")).unwrap();
    let sft: String = pairs
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{}\n",
                serde_json::json!({"prompt": v["prompt"], "completion": v["chosen"]})
            )
        })
        .collect();
    std::fs::write(b.join("chosen.jsonl"), sft).unwrap();
    let text = std::fs::read_to_string(&run).unwrap().replace(
        &a.join("pairs.jsonl").display().to_string(),
        &b.join("chosen.jsonl").display().to_string(),
    );
    std::fs::write(b.join("run.toml"), text).unwrap();
    train_cli(&b.join("run.toml"), &[]);
    let (la, lb) = (losses(&a.join("out")), losses(&b.join("out")));
    assert_eq!(la.len(), 8);
    assert_eq!(la, lb);
    assert_eq!(adapter(&a.join("out")), adapter(&b.join("out")));
}

/// The same data per optimizer step split 1×4, 2×2 or 4×1 gives the same losses and the same adapter.
#[test]
fn gradient_accumulation_is_invariant() {
    let mut results = Vec::new();
    for (bs, acc) in [(4, 1), (2, 2), (1, 4)] {
        let tmp = tempfile::tempdir().unwrap();
        let run = tiny_run(tmp.path(), "");
        let sets = [
            format!("train.batch_size={bs}"),
            format!("train.gradient_accumulation_steps={acc}"),
            "train.max_steps=4".into(),
        ];
        let r = RunFile::load(&run, &sets).unwrap();
        burnish::trainers::run(&r.config, &RunOptions::default()).unwrap();
        let out = tmp.path().join("out");
        let w: Vec<f32> = adapter(&out).into_iter().flat_map(|(_, v)| v).collect();
        results.push((losses(&out), w));
    }
    let (l0, w0) = &results[0];
    for (l, w) in &results[1..] {
        for (a, b) in l0.iter().zip(l) {
            assert!(
                (a.1 - b.1).abs() < 1e-4 * a.1.abs().max(1.0),
                "losses differ: {l0:?} vs {l:?}"
            );
        }
        let d = w0
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "adapter weights differ by {d}");
    }
}

/// `train.gradient_checkpointing` (each layer run again in the backward pass) changes memory, not the
/// run: SFT with LoRA dropout (the masks are drawn again) and DPO (policy and adapters-off reference
/// passes) give the same losses, gradient norms and adapter as without it.
#[test]
fn gradient_checkpointing_gives_the_same_run() {
    type MakeRun = fn(&Path) -> PathBuf;
    let runs: [(&str, MakeRun); 2] = [
        ("sft", |d| tiny_run(d, "")),
        ("dpo", |d| pair_run(d, "name = \"dpo\"", 20)),
    ];
    for (name, make) in runs {
        let mut results = Vec::new();
        for on in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let sets = [
                format!("train.gradient_checkpointing={on}"),
                "lora.lora_dropout=0.1".into(),
                "train.max_steps=4".into(),
            ];
            let r = RunFile::load(&make(tmp.path()), &sets).unwrap();
            burnish::trainers::run(&r.config, &RunOptions::default()).unwrap();
            let out = tmp.path().join("out");
            let w: Vec<f32> = adapter(&out).into_iter().flat_map(|(_, v)| v).collect();
            results.push((column(&out, "loss"), column(&out, "grad_norm"), w));
        }
        let ((l0, g0, w0), (l1, g1, w1)) = (&results[0], &results[1]);
        assert_eq!(l0.len(), 4, "{name}");
        for (a, b) in l0.iter().zip(l1).chain(g0.iter().zip(g1)) {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "{name}: {l0:?} {g0:?} vs {l1:?} {g1:?}"
            );
        }
        let d = w0
            .iter()
            .zip(w1)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-5, "{name}: adapter weights differ by {d}");
    }
}

/// Kill -9 mid-run, resume from the last checkpoint: the per-step losses equal an uninterrupted run's.
#[test]
fn resume_after_sigkill_reproduces_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "");
    let sets = [
        "--set",
        "train.max_steps=24",
        "--set",
        "train.save_steps=3",
        "--set",
        "train.save_total_limit=10",
    ];
    let full_dir = tmp.path().join("full");
    train_cli(
        &run,
        &[
            &sets[..],
            &["--set", &format!("output.dir=\"{}\"", full_dir.display())],
        ]
        .concat(),
    );
    let reference = losses(&full_dir);
    assert_eq!(reference.len(), 24);

    let cut_dir = tmp.path().join("cut");
    let mut child = burnish()
        .arg("train")
        .arg(&run)
        .args(sets)
        .args(["--set", &format!("output.dir=\"{}\"", cut_dir.display())])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as a checkpoint past the first exists (or the run ends first on a fast machine).
    let ckpts = cut_dir.join("checkpoints");
    loop {
        let n = std::fs::read_dir(&ckpts)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0);
        if n >= 2 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    // Resume from an early checkpoint so the resumed part is long whatever the kill timing was.
    let first = ckpts.join("step-000003");
    train_cli(
        &run,
        &[
            &sets[..],
            &[
                "--set",
                &format!("output.dir=\"{}\"", cut_dir.display()),
                "--resume",
                first.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let resumed = losses(&cut_dir);
    assert_eq!(resumed.len(), 24, "metrics.jsonl holds each step once");
    for (a, b) in reference.iter().zip(&resumed) {
        assert_eq!(a, b, "step {} differs after resume", a.0);
    }
    // `--resume` without a directory picks the latest checkpoint: the finished run has nothing left to do.
    train_cli(
        &run,
        &[
            &sets[..],
            &[
                "--set",
                &format!("output.dir=\"{}\"", cut_dir.display()),
                "--resume",
            ],
        ]
        .concat(),
    );
    assert_eq!(losses(&cut_dir), reference);
}

#[test]
fn nan_guard_stops_and_keeps_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "");
    let out = burnish()
        .args([
            "train",
            run.to_str().unwrap(),
            "--set",
            "train.learning_rate=1e30",
            "--set",
            "train.max_grad_norm=0",
            "--set",
            "train.save_steps=1",
            "--set",
            "train.schedule=\"constant\"",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("training stopped") && err.contains("last good checkpoint"),
        "{err}"
    );
    let ckpts: Vec<_> = std::fs::read_dir(tmp.path().join("out/checkpoints"))
        .unwrap()
        .collect();
    assert!(!ckpts.is_empty());
}

#[test]
fn config_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "");
    let text = std::fs::read_to_string(&run).unwrap();
    let check = |body: String, needles: &[&str]| {
        let p = tmp.path().join("bad.toml");
        std::fs::write(&p, body).unwrap();
        let e = RunFile::load(&p, &[]).unwrap_err().to_string();
        for n in needles {
            assert!(e.contains(n), "error {e:?} should mention {n:?}");
        }
    };
    check(
        text.replace("learning_rate = 1e-2", "lerning_rate = 1e-2"),
        &["lerning_rate", "learning_rate"],
    );
    check(
        text.replace("batch_size = 4", "batch_size = \"four\""),
        &["batch_size"],
    );
    check(text.replace("[output]", "[outptu]"), &["outptu"]);
    // The refusal detector's own checks name the file too.
    check(
        format!("{text}\n[data.refusal]\nphrases = [\"  \"]\n"),
        &["bad.toml", "[data.refusal]", "empty"],
    );
    check(
        format!("{text}\n[data.refusal]\nregexes = [\"(unclosed\"]\n"),
        &["bad.toml", "[data.refusal] regexes"],
    );
    check(
        text.replace("tiny-chat", "no-such-model"),
        &["model.path", "no-such-model"],
    );
    let e = RunFile::load(&run, &["train.learning_rate=-1".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("learning_rate"), "{e}");
    let r = RunFile::load(
        &run,
        &["train.learning_rate=5e-4".into(), "lora.r=2".into()],
    )
    .unwrap();
    assert_eq!((r.config.train.learning_rate, r.config.lora.r), (5e-4, 2));
    let missing = burnish()
        .args(["train", "/nonexistent/run.toml"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/run.toml"));
}

/// A few real steps on SmolLM2 (assistant-only loss on AdvBench prompts with refusal-style answers).
#[test]
fn smollm2_sft_smoke() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "run scripts/fetch-smollm2.sh first");
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("smol.toml");
    std::fs::write(
        &p,
        format!(
            r#"[model]
path = "{}"
[lora]
r = 4
target_modules = ["q_proj", "v_proj"]
[data]
max_length = 96
[[data.sources]]
path = "{}"
columns = {{ prompt = "goal", completion = "target" }}
limit = 8
[train]
batch_size = 2
max_steps = 2
[output]
dir = "out"
"#,
            model.display(),
            shared_data("advbench/harmful_behaviors.csv").display()
        ),
    )
    .unwrap();
    train_cli(&p, &[]);
    let out = tmp.path().join("out");
    assert_eq!(losses(&out).len(), 2);
    for f in [
        "adapter/adapter_model.safetensors",
        "metrics.jsonl",
        "loss.png",
        "run.json",
    ] {
        assert!(out.join(f).exists(), "missing {f}");
    }
}

/// Ctrl-C (SIGINT) or SIGTERM (a scheduler preempting the job) mid-run: a checkpoint is written, the
/// process exits with 130 (the shell's code for an interrupted command, so scripts do not take it for
/// success), and --resume finishes.
#[test]
fn ctrl_c_or_sigterm_checkpoints_and_exits_cleanly() {
    for signal in ["-INT", "-TERM"] {
        let tmp = tempfile::tempdir().unwrap();
        let run = tiny_run(tmp.path(), "");
        let child = burnish()
            .args([
                "train",
                run.to_str().unwrap(),
                "--set",
                "train.max_steps=400",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let metrics_path = tmp.path().join("out/metrics.jsonl");
        while std::fs::read_to_string(&metrics_path).map_or(true, |t| t.lines().count() < 2) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let killed = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{signal}: {err}");
        assert!(err.contains("--resume"), "{signal}: {err}");
        let run_json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join("out/run.json")).unwrap(),
        )
        .unwrap();
        let outcome = run_json["outcome"].as_str().unwrap().to_string();
        assert!(outcome.starts_with("interrupted at step"), "{outcome}");
        let step: usize = outcome.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(tmp
            .path()
            .join(format!("out/checkpoints/step-{step:06}"))
            .exists());
        assert!(step < 400);
        train_cli(&run, &["--set", "train.max_steps=400", "--resume"]);
        assert_eq!(losses(&tmp.path().join("out")).len(), 400);
    }
}

/// The library entry point without a run file, terminal or signal handler: a `RunConfig` built in code
/// trains like its run file, reports through the caller's `Progress`, and a `StopToken` set by the
/// caller stops it after the current step with a checkpoint.
#[test]
fn run_from_code_reports_progress_and_stops_on_the_token() {
    use std::sync::Mutex;

    use burnish::core::model::{LoraConfig, TargetModules};
    use burnish::data::{DataConfig, SourceConfig};
    use burnish::trainers::{
        run, MethodConfig, ModelSection, Outcome, OutputConfig, Progress, RunConfig, RunReport,
        StopToken, TrainConfig,
    };

    #[derive(Default)]
    struct Collect {
        messages: Mutex<Vec<String>>,
        steps: Mutex<Vec<usize>>,
        stop_at: Option<(usize, StopToken)>,
    }
    impl Progress for Collect {
        fn message(&self, text: &str) {
            self.messages.lock().unwrap().push(text.to_string());
        }
        fn step(&self, done: usize, _total: usize, _status: &str) {
            self.steps.lock().unwrap().push(done);
            if let Some((at, token)) = &self.stop_at {
                if done == *at {
                    token.stop();
                }
            }
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    let config = |out: &str| RunConfig {
        model: ModelSection::new(tiny_chat_model(tmp.path())),
        lora: LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            target_modules: TargetModules::Preset("all-linear".into()),
            ..Default::default()
        },
        data: DataConfig {
            max_length: 64,
            shuffle: false,
            ..DataConfig::new(vec![SourceConfig::new(tiny_sft_data(tmp.path(), 24))])
        },
        method: MethodConfig::Sft(Default::default()),
        train: TrainConfig {
            learning_rate: 1e-2,
            batch_size: 4,
            max_steps: Some(8),
            seed: 3,
            ..Default::default()
        },
        eval: Default::default(),
        output: Some(OutputConfig::new(tmp.path().join(out))),
    };
    // The same run from code and from the run file gives the same losses.
    let progress = Collect::default();
    let opts = RunOptions {
        progress: &progress,
        ..Default::default()
    };
    let RunReport::Trained(r) = run(&config("code"), &opts).unwrap() else {
        panic!("an SFT config trains")
    };
    assert_eq!(r.summary.outcome, Outcome::Finished);
    assert_eq!(*progress.steps.lock().unwrap(), (0..=8).collect::<Vec<_>>());
    let messages = progress.messages.lock().unwrap().join("\n");
    assert!(messages.contains("tokens: 24 examples"), "{messages}");
    let file = RunFile::load(&tiny_run(tmp.path(), ""), &[]).unwrap();
    let RunReport::Trained(f) = run(&file.config, &RunOptions::default()).unwrap() else {
        panic!("an SFT config trains")
    };
    let loss =
        |s: &burnish::trainers::Summary| s.history.iter().map(|r| r.loss).collect::<Vec<_>>();
    assert_eq!(loss(&r.summary), loss(&f.summary));
    // A token set during step 3 stops the run there, with a checkpoint to resume from.
    let token = StopToken::new();
    let progress = Collect {
        stop_at: Some((3, token.clone())),
        ..Default::default()
    };
    let opts = RunOptions {
        progress: &progress,
        stop: token,
        ..Default::default()
    };
    let RunReport::Trained(s) = run(&config("stopped"), &opts).unwrap() else {
        panic!("an SFT config trains")
    };
    assert_eq!(s.summary.outcome, Outcome::Interrupted(3));
    assert!(tmp.path().join("stopped/checkpoints/step-000003").exists());
    assert!(
        !tmp.path().join("stopped/adapter").exists(),
        "no final outputs"
    );
}

fn fails(args: &[&str]) -> String {
    let out = burnish().args(args).output().unwrap();
    assert!(!out.status.success(), "burnish {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Training into a directory that holds another run is refused (nothing of it is touched); with
/// --overwrite the old run's files are replaced, so no checkpoint of the old run survives beside the
/// new run's.
#[test]
fn an_earlier_run_in_the_output_dir_is_refused_unless_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "");
    let out = tmp.path().join("out");
    train_cli(&run, &["--set", "train.save_steps=3"]);
    let adapter = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    let err = fails(&["train", run.to_str().unwrap(), "--set", "train.max_steps=4"]);
    assert!(
        err.contains("holds another run") && err.contains("--overwrite"),
        "{err}"
    );
    let after = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(adapter, after, "the refused run must not touch the old one");
    assert_eq!(losses(&out).len(), 8);
    let r = run.to_str().unwrap();
    train_cli(&run, &["--set", "train.max_steps=4", "--overwrite"]);
    assert_eq!(losses(&out).len(), 4);
    let ckpts: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ckpts, vec!["step-000004".to_string()], "{r}");
}

/// Resuming with a setting that changes shapes or what the steps compute is refused, naming the key,
/// before anything is written; the finished adapter stays as it was.
#[test]
fn resume_refuses_a_changed_run_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "");
    let out = tmp.path().join("out");
    train_cli(&run, &["--set", "train.save_steps=4"]);
    let adapter = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    let r = run.to_str().unwrap();
    let step4 = out.join("checkpoints/step-000004");
    let resume = step4.to_str().unwrap();
    for (set, key) in [
        ("lora.r=8", "lora.r"),
        ("data.max_length=48", "data.max_length"),
        ("train.batch_size=2", "train.batch_size"),
    ] {
        let err = fails(&["train", r, "--set", set, "--resume", resume]);
        assert!(err.contains(&format!("`{key}`")), "{set}: {err}");
    }
    let after = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(adapter, after);
    // A learning-rate change is allowed, and the resume says where it starts.
    let ok = burnish()
        .args([
            "train",
            r,
            "--set",
            "train.learning_rate=5e-3",
            "--resume",
            resume,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{err}");
    assert!(
        err.contains("resuming from") && err.contains("step-000004"),
        "{err}"
    );
}

/// `burnish tokenize` reads long texts from a file or standard input, with the same ids as the argument.
#[test]
fn tokenize_reads_a_file_or_stdin() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_chat_model(tmp.path());
    let m = model.to_str().unwrap();
    let text = "the cat is on the mat";
    let ids = |extra: &[&str], stdin: Option<&str>| {
        let mut child = burnish()
            .args(["tokenize", "--model", m, "--json"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let file = tmp.path().join("text.txt");
    std::fs::write(&file, text).unwrap();
    let want = ids(&[text], None);
    assert!(want.starts_with('['), "{want}");
    assert_eq!(ids(&["--file", file.to_str().unwrap()], None), want);
    assert_eq!(ids(&["--file", "-"], Some(text)), want);
}

/// Out-of-range numbers are refused with the key and its range: generation settings that used to act
/// as greedy or uniform sampling, a zero step budget, an evaluation without new tokens.
#[test]
fn numeric_arguments_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "");
    let model = tmp.path().join("tiny-chat");
    let m = model.to_str().unwrap();
    for (flag, value, key) in [
        ("--temperature", "-1", "temperature"),
        ("--temperature", "nan", "temperature"),
        ("--temperature", "inf", "temperature"),
        ("--top-p", "2", "top_p"),
        ("--top-p", "0", "top_p"),
        ("--top-p", "-0.5", "top_p"),
    ] {
        let err = fails(&["generate", "--model", m, "--prompt", "hi", flag, value]);
        assert!(err.contains(key), "{flag} {value}: {err}");
    }
    for (set, key) in [
        ("train.max_steps=0", "max_steps"),
        ("train.logging_steps=0", "logging_steps"),
        ("train.max_grad_norm=-1", "max_grad_norm"),
        ("train.adamw.beta2=1.0", "beta2"),
        ("train.adamw.eps=0", "eps"),
        ("eval.generation_batch_size=0", "generation_batch_size"),
    ] {
        let e = RunFile::load(&run, &[set.into()]).unwrap_err().to_string();
        assert!(e.contains(key), "{set}: {e}");
    }
    let err = fails(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "hi",
        "--max-new-tokens",
        "0",
    ]);
    assert!(err.contains("max_new_tokens"), "{err}");
    let sets = tmp.path().join("h.jsonl");
    std::fs::write(&sets, "{\"prompt\": \"say cat\"}\n").unwrap();
    let h = sets.to_str().unwrap();
    let ev = tmp.path().join("ev");
    let err = fails(&[
        "eval",
        "--model",
        m,
        "--harmful",
        h,
        "--max-new-tokens",
        "0",
        "--out",
        ev.to_str().unwrap(),
    ]);
    assert!(err.contains("max_new_tokens"), "{err}");
}

/// `[method] kl_coef`: at the first step the adapters are zero, so the model is its own reference — KL
/// 0 and plain SFT's loss; a negligible coefficient trains like plain SFT step by step (the anchored
/// path computes the same NLL), and a large one ends far closer to the reference.
#[test]
fn sft_kl_anchor_keeps_the_model_near_its_reference() {
    use burnish::trainers::{run, RunReport};
    let tmp = tempfile::tempdir().unwrap();
    let train = |name: &str, kl: Option<f64>| -> Vec<serde_json::Value> {
        let dir = tmp.path().join(name);
        let file = tiny_run(&dir, "");
        let mut sets = vec!["method.name=\"sft\"".to_string()];
        sets.extend(kl.map(|k| format!("method.kl_coef={k}")));
        let rf = RunFile::load(&file, &sets).unwrap();
        let RunReport::Trained(_) = run(&rf.config, &RunOptions::default()).unwrap() else {
            panic!("an SFT config trains")
        };
        metrics(&dir.join("out"))
    };
    let plain = train("plain", None);
    let faint = train("faint", Some(1e-6));
    let strong = train("strong", Some(5.0));
    let f = |rows: &[serde_json::Value], i: usize, k: &str| rows[i][k].as_f64().unwrap();
    assert!(plain[0].get("kl_ref").is_none(), "{}", plain[0]);
    assert!(f(&strong, 0, "kl_ref").abs() < 1e-9, "{}", strong[0]);
    assert!((f(&strong, 0, "loss") - f(&plain, 0, "loss")).abs() < 1e-5 * f(&plain, 0, "loss"));
    for i in 0..plain.len() {
        let (a, b) = (f(&faint, i, "loss"), f(&plain, i, "loss"));
        assert!((a - b).abs() < 1e-3 * b, "step {}: {a} vs {b}", i + 1);
    }
    let last = plain.len() - 1;
    let (faint_kl, strong_kl) = (f(&faint, last, "kl_ref"), f(&strong, last, "kl_ref"));
    eprintln!(
        "last step's KL to the reference: kl_coef 1e-6 {faint_kl:.4}, kl_coef 5 {strong_kl:.4}"
    );
    assert!(
        faint_kl > 0.0 && strong_kl < 0.5 * faint_kl,
        "{faint_kl} vs {strong_kl}"
    );
    // "agreeing": only the positions whose target is the reference's argmax are anchored — at the
    // first step (the model is its reference) exactly the ones it predicts right. The reference is
    // the tiny model after a plain run, so that it predicts some targets.
    let dir = tmp.path().join("agreeing");
    let file = tiny_run(&dir, "save = [\"adapter\", \"merged\"]");
    run(
        &RunFile::load(&file, &[]).unwrap().config,
        &RunOptions::default(),
    )
    .unwrap();
    let mut sets: Vec<String> = vec![
        "method.name=\"sft\"".into(),
        "method.kl_coef=5".into(),
        "method.kl_positions=\"agreeing\"".into(),
        format!(
            "model.path={:?}",
            dir.join("out/merged").display().to_string()
        ),
        format!(
            "output.dir={:?}",
            dir.join("anchored").display().to_string()
        ),
    ];
    let rf = RunFile::load(&file, &sets).unwrap();
    run(&rf.config, &RunOptions::default()).unwrap();
    let agreeing = metrics(&dir.join("anchored"));
    let share = f(&agreeing, 0, "kl_anchored");
    assert!(
        (share - f(&agreeing, 0, "token_accuracy")).abs() < 1e-9,
        "{}",
        agreeing[0]
    );
    assert!(share > 0.0 && share < 1.0, "{}", agreeing[0]);
    assert_eq!(f(&strong, 0, "kl_anchored"), 1.0);
    // nll_examples = "disagreeing": whole examples are fitted where any of their targets is not the
    // reference's argmax — so at least every disagreeing position (1 − accuracy at the first step),
    // and the loss (KL 0 there) is at most the NLL of every example.
    sets.push("method.nll_examples=\"disagreeing\"".into());
    sets[4] = format!(
        "output.dir={:?}",
        dir.join("departing").display().to_string()
    );
    let rf = RunFile::load(&file, &sets).unwrap();
    run(&rf.config, &RunOptions::default()).unwrap();
    let fitted = metrics(&dir.join("departing"));
    let (acc, share) = (f(&fitted, 0, "token_accuracy"), f(&fitted, 0, "nll_fitted"));
    assert!(share >= 1.0 - acc - 1e-9 && share <= 1.0, "{}", fitted[0]);
    assert!(f(&fitted, 0, "loss") <= f(&agreeing, 0, "loss") + 1e-6);
    assert!(agreeing[0].get("nll_fitted").unwrap().as_f64() == Some(1.0));
    sets.pop();
    sets[2] = "method.kl_positions=\"some\"".into();
    let e = RunFile::load(&file, &sets).unwrap_err().to_string();
    assert!(e.contains("kl_positions") || e.contains("some"), "{e}");
}
