//! Data-parallel training on the CPU backend: 2 and 3 workers give the losses and the final adapter of
//! one worker with the same global batch (SFT and DPO, an uneven split of every micro-batch, gradient
//! accumulation), a resume may change the number of workers, and a failing worker stops the run with
//! its error instead of hanging.

mod common;

use std::path::{Path, PathBuf};

use burnish::trainers::{RunFile, RunOptions};
use common::*;

/// Runs `run` with `--set` overrides into `out` and returns that directory.
fn train(run: &Path, out: &str, devices: usize, extra: &[&str]) -> PathBuf {
    let list = vec!["\"cpu\""; devices].join(", ");
    let mut sets = vec![
        format!("output.dir=\"{out}\""),
        format!("train.devices=[{list}]"),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let file = RunFile::load(run, &sets).unwrap();
    burnish::trainers::run(&file.config, &RunOptions::default()).unwrap();
    run.parent().unwrap().join(out)
}

fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: {a:?} vs {b:?}"
        );
    }
}

fn assert_same_run(one: &Path, other: &Path) {
    for key in ["loss", "grad_norm"] {
        assert_close(key, &column(other, key), &column(one, key), 1e-5);
    }
    let (a, b) = (adapter(one), adapter(other));
    assert_eq!(a.len(), b.len());
    let mut moved = 0.0f32;
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            assert!((x - y).abs() <= 1e-5, "{na}: {x} vs {y}");
            moved = moved.max(x.abs());
        }
    }
    assert!(moved > 0.0, "the adapters were trained");
}

/// 5 rows per micro-batch (2 workers: 2 + 3; 3 workers: 1 + 2 + 2), 2 micro-batches per step.
const SHAPE: [&str; 3] = [
    "train.batch_size=5",
    "train.gradient_accumulation_steps=2",
    "train.max_steps=3",
];

#[test]
fn sft_on_two_and_three_workers_is_the_one_worker_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "");
    let one = train(&run, "one", 1, &SHAPE);
    let two = train(&run, "two", 2, &SHAPE);
    let three = train(&run, "three", 3, &SHAPE);
    assert_same_run(&one, &two);
    assert_same_run(&one, &three);
    assert!(metrics(&one)[0].get("allreduce_seconds").is_none());
    assert!(column(&three, "allreduce_seconds")
        .iter()
        .all(|&s| s >= 0.0));
}

/// With a bf16 base, two workers track the one-worker bf16 run. Not to 1e-5 as in f32: a difference in
/// the last f32 bit of an activation (the shares' different summation order) can flip its bf16
/// rounding by a whole bf16 step, which the next steps carry (measured: 5.6e-5 at step 3). That the
/// copies stay bf16 is tested exactly in parallel.rs.
#[test]
fn a_bf16_base_on_two_workers_tracks_the_one_worker_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "");
    let bf16 = [&SHAPE[..], &["model.dtype=\"bf16\""]].concat();
    let one = train(&run, "one", 1, &bf16);
    let two = train(&run, "two", 2, &bf16);
    for key in ["loss", "grad_norm"] {
        assert_close(key, &column(&two, key), &column(&one, key), 1e-3);
    }
}

/// A pair-trained method (`dpo` or `reward`) on 1, 2 and 3 workers; returns the three output dirs.
fn pairs_on_workers(method: &str) -> (tempfile::TempDir, [PathBuf; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let run = pair_run(dir.path(), &format!("name = \"{method}\""), 25);
    let one = train(&run, "one", 1, &SHAPE);
    let two = train(&run, "two", 2, &SHAPE);
    let three = train(&run, "three", 3, &SHAPE);
    (dir, [one, two, three])
}

#[test]
fn dpo_on_two_and_three_workers_is_the_one_worker_run() {
    let (_dir, [one, two, three]) = pairs_on_workers("dpo");
    assert_same_run(&one, &two);
    assert_same_run(&one, &three);
    let acc = column(&three, "rewards/accuracies");
    assert_close(
        "rewards/accuracies",
        &acc,
        &column(&one, "rewards/accuracies"),
        1e-6,
    );
}

#[test]
fn reward_model_on_two_and_three_workers_is_the_one_worker_run() {
    let (_dir, [one, two, three]) = pairs_on_workers("reward");
    assert_same_run(&one, &two);
    assert_same_run(&one, &three);
    // The score head is trained with the adapters and ends the same on every worker count.
    let head = |d: &Path| tensors(&d.join("adapter/score.safetensors"));
    let (a, c) = (head(&one), head(&three));
    assert!(!a.is_empty() && a.len() == c.len());
    for ((na, va), (nc, vc)) in a.iter().zip(&c) {
        assert_eq!(na, nc);
        let diff = va
            .iter()
            .zip(vc)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff <= 1e-5, "{na}: differs by {diff}");
    }
}

#[test]
fn a_resume_may_change_the_number_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "");
    let shape = [
        "train.batch_size=3",
        "train.max_steps=4",
        "train.save_steps=2",
    ];
    let one = train(&run, "one", 1, &shape);
    // Two workers to step 2, then three from its checkpoint.
    let two = train(&run, "split", 2, &shape);
    let file = RunFile::load(
        &run,
        &[
            "output.dir=\"split\"".into(),
            "train.devices=[\"cpu\", \"cpu\", \"cpu\"]".into(),
            "train.batch_size=3".into(),
            "train.max_steps=4".into(),
            "train.save_steps=2".into(),
        ],
    )
    .unwrap();
    let step2 = burnish::trainers::checkpoint::list(&two).unwrap()[0].clone();
    assert!(
        step2.display().to_string().ends_with('2'),
        "{}",
        step2.display()
    );
    let opts = RunOptions {
        resume: Some(burnish::trainers::Resume::From(step2)),
        ..RunOptions::default()
    };
    burnish::trainers::run(&file.config, &opts).unwrap();
    assert_same_run(&one, &two);
}

#[test]
fn methods_that_train_on_one_device_and_mixed_backends_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "");
    let refused = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        match RunFile::load(&run, &sets) {
            Ok(_) => panic!("accepted {sets:?}"),
            Err(e) => e.to_string(),
        }
    };
    let e = refused(&["train.devices=[\"cpu\", \"wgpu\"]"]);
    assert!(
        e.contains("train.devices") && e.contains("different backends"),
        "{e}"
    );
    let e = refused(&["model.backend=\"wgpu\"", "train.devices=[\"cpu\"]"]);
    assert!(
        e.contains("train.devices") && e.contains("model.backend"),
        "{e}"
    );
    std::fs::write(
        dir.path().join("ppo.toml"),
        std::fs::read_to_string(&run).unwrap().replace(
            "[train]",
            "[method]\nname = \"ppo\"\nrule = \"safety\"\n\n[train]",
        ),
    )
    .unwrap();
    let sets = vec!["train.devices=[\"cpu\", \"cpu\"]".to_string()];
    let e = RunFile::load(&dir.path().join("ppo.toml"), &sets)
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("runs on one device")),
        "{e:?}"
    );
}

mod failing_worker {
    use std::sync::mpsc;
    use std::time::Duration;

    use burnish::core::backend::Cpu;
    use burnish::core::burn::backend::Autodiff;
    use burnish::core::burn::tensor::backend::AutodiffBackend;
    use burnish::core::burn::tensor::Tensor;
    use burnish::core::{Llama, LoraConfig, Pretrained};
    use burnish::data::{Batch, Packed, TokenizedExample};
    use burnish::trainers::engine::{EngineConfig, TrainConfig};
    use burnish::trainers::parallel::train_on_devices;
    use burnish::trainers::{Log, Method, Metrics, Sft, StopToken};

    use super::common::tiny_chat_model;

    /// SFT whose replicas (workers 1, 2, ...) fail in their second step's loss.
    struct Flaky {
        sft: Sft,
        replica: bool,
        calls: std::cell::Cell<usize>,
    }

    // Each worker owns its copy; the Cell is never shared between threads.
    unsafe impl Send for Flaky {}

    impl<B: AutodiffBackend> Method<B> for Flaky {
        type Batch = Batch;
        fn name(&self) -> &'static str {
            "sft"
        }
        fn train_len(&self) -> usize {
            <Sft as Method<B>>::train_len(&self.sft)
        }
        fn batch(&self, rows: &[usize]) -> Batch {
            <Sft as Method<B>>::batch(&self.sft, rows)
        }
        fn units(&self, b: &Batch) -> f64 {
            <Sft as Method<B>>::units(&self.sft, b)
        }
        fn tokens(&self, b: &Batch) -> usize {
            <Sft as Method<B>>::tokens(&self.sft, b)
        }
        fn loss(&self, model: &Llama<B>, b: &Batch) -> (Tensor<B, 1>, Metrics) {
            self.calls.set(self.calls.get() + 1);
            if self.replica && self.calls.get() > 1 {
                panic!("injected failure");
            }
            <Sft as Method<B>>::loss(&self.sft, model, b)
        }
        fn evaluate(&self, _: &Llama<B::InnerBackend>) -> Metrics {
            Metrics::new()
        }
        fn replica(&self, _: &B::Device) -> Option<Self> {
            Some(Flaky {
                sft: self.sft.clone(),
                replica: true,
                calls: Default::default(),
            })
        }
    }

    #[test]
    fn a_failing_worker_stops_the_run_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_chat_model(dir.path());
        let out = dir.path().join("out");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            type B = Autodiff<Cpu>;
            let device = Default::default();
            let mut model = Pretrained::<B>::load(&path, &device).unwrap().model;
            let lora = LoraConfig::default();
            model.attach_lora(&lora, 1, &device).unwrap();
            let rows: Vec<Packed> = (0..8u32)
                .map(|i| {
                    Packed::single(&TokenizedExample {
                        input_ids: vec![1, 5 + i, 9, 12, 7],
                        labels: vec![-100, -100, 9, 12, 7],
                        truncated: false,
                        category: None,
                    })
                })
                .collect();
            let sft = Sft {
                train: rows,
                eval: vec![],
                pad_id: 0,
                eval_batch_size: 2,
                config: Default::default(),
            };
            let mut method = Flaky {
                sft,
                replica: false,
                calls: Default::default(),
            };
            let cfg = EngineConfig {
                train: TrainConfig {
                    max_steps: Some(4),
                    ..TrainConfig::default()
                },
                lora,
                out_dir: out,
                base_model: "tiny".into(),
                eval_steps: 0,
                resume: None,
                stop: StopToken::new(),
                resume_keys: Default::default(),
            };
            let labels = vec!["cpu".to_string(); 3];
            let r = train_on_devices(&mut method, model, &cfg, &[device; 3], &labels, &Log);
            tx.send(r.map(drop).map_err(|e| e.to_string())).unwrap();
        });
        let got = rx
            .recv_timeout(Duration::from_secs(300))
            .expect("the run ended instead of hanging");
        let e = got.unwrap_err();
        assert!(e.contains("injected failure"), "{e}");
        assert!(e.contains("worker 1") || e.contains("worker 2"), "{e}");
    }
}
