//! The same computation on every backend (issue #17): LoRA gradients equal to PyTorch + PEFT's
//! (fixture by scripts/reference/make_grad_fixtures.py), and host-drawn initialisations.
//!
//! Everything here runs on the CPU backend in every build. With `--features wgpu` the same checks
//! also run on wgpu (`scripts/test.sh` and CI run that build on lavapipe, a software Vulkan device);
//! see tests/wgpu.rs for the model-level parity.

mod common;

use burnish::core::adapter::load_adapter;
use burnish::core::backend::{Autodiff, Cpu};
use burnish::core::burn::tensor::backend::{AutodiffBackend, Backend};
use burnish::core::model::lora::peft_key;
use burnish::core::model::{LoraConfig, TargetModules};
use burnish::core::weights::{load_llama, load_llama_as, SafetensorsDir};
use burnish::core::{Llama, ModelConfig, Precision};
use burnish::data::{Completion, Packed, TokenizedExample, TokenizedPair};
use burnish::trainers::{Dpo, DpoConfig, Method, Sft};
use common::*;
use safetensors::{Dtype, SafeTensors};

/// Tensors of the gradient fixture by name.
struct Fixture(Vec<u8>);

impl Fixture {
    fn open() -> Self {
        Self(std::fs::read(core_fixture("grad/expected.safetensors")).expect("grad fixture"))
    }

    fn raw(&self, name: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("fixture tensor {name}"));
        (t.shape().to_vec(), t.dtype(), t.data().to_vec())
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let (_, dtype, data) = self.raw(name);
        assert_eq!(dtype, Dtype::F32, "{name}");
        let chunks = data.chunks_exact(4);
        chunks
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// An i64 tensor as rows.
    fn rows(&self, name: &str) -> Vec<Vec<i64>> {
        let (shape, dtype, data) = self.raw(name);
        assert_eq!(dtype, Dtype::I64, "{name}");
        let v: Vec<i64> = data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let width = *shape.last().unwrap();
        v.chunks(width).map(<[i64]>::to_vec).collect()
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        self.rows(name)
            .concat()
            .into_iter()
            .map(|t| t as u32)
            .collect()
    }
}

/// tiny-llama with the PEFT adapter of lora/all-linear (B non-zero), on backend `B`, its base's weight
/// matrices in `precision`.
fn model<B: Backend>(device: &B::Device, precision: Precision) -> Llama<B> {
    let dir = core_fixture("tiny-llama");
    let cfg = ModelConfig::from_file(dir.join("config.json")).unwrap();
    let src = SafetensorsDir::open(&dir).unwrap();
    let mut m = load_llama_as(&cfg, &src, device, precision).unwrap();
    load_adapter(&mut m, &core_fixture("lora/all-linear"), device).unwrap();
    m
}

/// Largest |got - want| over the largest |want| of each adapter gradient, and the loss's relative
/// difference, for `loss` (summed over `units`) on `m`.
fn compare<B: AutodiffBackend>(
    m: &Llama<B>,
    loss: burnish::core::burn::tensor::Tensor<B, 1>,
    units: f64,
    fx: &Fixture,
    prefix: &str,
) -> (f64, f64) {
    let loss = loss.div_scalar(units);
    let got_loss = burnish::core::backend::host_f64(loss.clone())[0];
    let want_loss = f64::from(fx.f32(&format!("{prefix}.loss"))[0]);
    let grads = loss.backward();
    let mut worst = 0.0f64;
    let mut checked = 0;
    for (module, lora) in m.adapters() {
        for (which, param) in [('A', &lora.lora_A), ('B', &lora.lora_B)] {
            let want = fx.f32(&format!("{prefix}.grad.{}", peft_key(&module, which)));
            let got = param.grad(&grads).expect("adapter has a gradient");
            let got = burnish::core::backend::host_f32(got);
            assert_eq!(got.len(), want.len(), "{module} lora_{which}");
            let scale = want.iter().fold(0f32, |a, x| a.max(x.abs())).max(1e-12);
            let diff = got
                .iter()
                .zip(&want)
                .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
            worst = worst.max(f64::from(diff / scale));
            checked += 1;
        }
    }
    assert_eq!(
        checked, 28,
        "every adapter tensor of the fixture is checked"
    );
    ((got_loss - want_loss).abs() / want_loss.abs(), worst)
}

/// SFT: transformers' mean cross entropy over labelled tokens of a right-padded batch, and its
/// gradients with respect to every lora_A and lora_B.
pub fn sft_gradients<B: AutodiffBackend>(device: &B::Device) -> (f64, f64) {
    sft_gradients_in::<B>(device, Precision::F32)
}

/// [`sft_gradients`] with the base in `precision`.
pub fn sft_gradients_in<B: AutodiffBackend>(
    device: &B::Device,
    precision: Precision,
) -> (f64, f64) {
    let fx = Fixture::open();
    let m = model::<B>(device, precision);
    let mask = fx.rows("sft.attention_mask");
    let rows: Vec<Packed> = fx
        .rows("sft.input_ids")
        .iter()
        .zip(fx.rows("sft.labels"))
        .zip(&mask)
        .map(|((ids, labels), mask)| {
            let n = mask.iter().filter(|&&x| x == 1).count();
            Packed::single(&TokenizedExample {
                input_ids: ids[..n].iter().map(|&t| t as u32).collect(),
                labels: labels[..n].to_vec(),
                truncated: false,
                category: None,
            })
        })
        .collect();
    let sft = Sft {
        train: rows,
        eval: vec![],
        pad_id: 0,
        eval_batch_size: 1,
        config: Default::default(),
    };
    let batch = <Sft as Method<B>>::batch(&sft, &[0, 1, 2]);
    let units = <Sft as Method<B>>::units(&sft, &batch);
    let (loss, _) = sft.loss(&m, &batch);
    compare(&m, loss, units, &fx, "sft")
}

/// DPO (sigmoid, beta 0.1) on two pairs, the reference being the adapters-off model: loss and
/// adapter gradients.
pub fn dpo_gradients<B: AutodiffBackend>(device: &B::Device) -> (f64, f64) {
    dpo_gradients_in::<B>(device, Precision::F32)
}

/// [`dpo_gradients`] with the base in `precision`.
pub fn dpo_gradients_in<B: AutodiffBackend>(
    device: &B::Device,
    precision: Precision,
) -> (f64, f64) {
    let fx = Fixture::open();
    let m = model::<B>(device, precision);
    let completion = |name: &str| {
        let ids = fx.ids(name);
        Completion {
            mask: vec![true; ids.len()],
            ids,
        }
    };
    let pairs: Vec<TokenizedPair> = (0..2)
        .map(|i| TokenizedPair {
            prompt_ids: fx.ids(&format!("dpo.{i}.prompt")),
            chosen: completion(&format!("dpo.{i}.chosen")),
            rejected: completion(&format!("dpo.{i}.rejected")),
            truncated: false,
            category: None,
        })
        .collect();
    let dpo = Dpo::new(DpoConfig::default(), pairs, vec![], 0, 1);
    let batch = <Dpo as Method<B>>::batch(&dpo, &[0, 1]);
    let units = <Dpo as Method<B>>::units(&dpo, &batch);
    let (loss, _) = dpo.loss(&m, &batch);
    compare(&m, loss, units, &fx, "dpo")
}

/// The CPU backend matches PEFT to 1e-4 relative (loss and every gradient tensor).
#[test]
fn lora_gradients_match_peft_on_cpu() {
    let dev = Default::default();
    let (loss, grad) = sft_gradients::<Autodiff<Cpu>>(&dev);
    eprintln!("cpu sft: loss rel {loss:.2e}, grad rel {grad:.2e}");
    assert!(
        loss <= 1e-5 && grad <= 1e-4,
        "sft: loss rel {loss:.2e}, grad rel {grad:.2e}"
    );
    let (loss, grad) = dpo_gradients::<Autodiff<Cpu>>(&dev);
    eprintln!("cpu dpo: loss rel {loss:.2e}, grad rel {grad:.2e}");
    assert!(
        loss <= 1e-5 && grad <= 1e-4,
        "dpo: loss rel {loss:.2e}, grad rel {grad:.2e}"
    );
}

/// With the base in bf16 or f16 (burnish_core::precision) the same SFT and DPO steps stay close to
/// PEFT's f32 loss and gradients: stated tolerances, measured with margin (the largest |Δ| of each
/// gradient tensor over its largest |value|). f16 must be closer than bf16, as its 11 significant bits
/// against 8 make it; a missing cast would fail on this backend, which asserts dtypes.
#[test]
fn lora_gradients_with_a_bf16_or_f16_base_stay_close_to_peft() {
    let dev = Default::default();
    let mut seen = Vec::new();
    for (p, loss_tol, grad_tol) in [(Precision::Bf16, 1e-2, 1e-1), (Precision::F16, 2e-3, 2e-2)] {
        let (sl, sg) = sft_gradients_in::<Autodiff<Cpu>>(&dev, p);
        let (dl, dg) = dpo_gradients_in::<Autodiff<Cpu>>(&dev, p);
        eprintln!("cpu {p}: sft loss rel {sl:.2e}, grad rel {sg:.2e}; dpo loss rel {dl:.2e}, grad rel {dg:.2e}");
        assert!(
            sl <= loss_tol && sg <= grad_tol,
            "{p} sft: {sl:.2e} {sg:.2e}"
        );
        assert!(
            dl <= loss_tol && dg <= grad_tol,
            "{p} dpo: {dl:.2e} {dg:.2e}"
        );
        assert!(sg > 1e-6, "{p}: the gradients are not f32's");
        seen.push(sg.max(dg));
    }
    assert!(seen[1] < seen[0], "f16 {} vs bf16 {}", seen[1], seen[0]);
}

/// A seeded 3-step LoRA SFT with the base in bf16 tracks the f32 run: losses within 1%, gradient
/// norms within 5%, and not equal to them (the base really is bf16).
#[test]
fn seeded_sft_with_a_bf16_base_tracks_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let f32_run = seeded_sft(&tmp.path().join("f32"), "cpu");
    let bf16 = seeded_sft_with(
        &tmp.path().join("bf16"),
        "cpu",
        &[
            "train.max_steps=3",
            "lora.lora_dropout=0.1",
            "model.dtype=\"bf16\"",
        ],
    );
    eprintln!("f32 {f32_run:?}\nbf16 {bf16:?}");
    assert_eq!(bf16.len(), 3);
    assert_ne!(bf16, f32_run);
    assert_steps_close(&bf16, &f32_run, 1e-2, 5e-2);
}

/// LoRA's A is drawn on the host from the seed and the tensor's name: the same seed gives the same
/// adapter (whatever the backend: nothing is drawn on the device), another seed another one, and
/// each module's draw does not depend on which other modules carry adapters.
#[test]
fn lora_init_is_drawn_on_the_host_from_seed_and_name() {
    let dev = Default::default();
    let init = |seed: u64, targets: &str| {
        let dir = core_fixture("tiny-llama");
        let cfg = ModelConfig::from_file(dir.join("config.json")).unwrap();
        let mut m: Llama<Cpu> =
            load_llama(&cfg, &SafetensorsDir::open(&dir).unwrap(), &dev).unwrap();
        let lora = LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            target_modules: if targets == "all-linear" {
                TargetModules::Preset(targets.into())
            } else {
                TargetModules::Names(vec![targets.into()])
            },
            ..Default::default()
        };
        m.attach_lora(&lora, seed, &dev).unwrap();
        m.adapters()
            .into_iter()
            .map(|(n, l)| (n, burnish::core::backend::host_f32(l.lora_A.val())))
            .collect::<Vec<_>>()
    };
    let a = init(7, "all-linear");
    assert_eq!(a, init(7, "all-linear"));
    assert_ne!(a[0].1, init(8, "all-linear")[0].1);
    // PEFT's kaiming-uniform bound, 1/sqrt(in_features): q_proj's input is hidden 64.
    let bound = 1.0 / 64f32.sqrt();
    assert!(
        a[0].1.iter().all(|x| x.abs() <= bound) && a[0].1.iter().any(|x| x.abs() > bound / 2.0)
    );
    let q_only = init(7, "q_proj");
    let q_all = a.iter().find(|(n, _)| n == &q_only[0].0).unwrap();
    assert_eq!(&q_only[0].1, &q_all.1);
}

fn burnish_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_burnish"))
        .args(args)
        .output()
        .unwrap()
}

/// Every model command takes `--backend`; a backend that is not compiled in (or a bad device) is
/// a clear error naming the cargo feature, before any work.
#[test]
fn every_command_takes_a_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "");
    let (run, model) = (run.to_str().unwrap(), tmp.path().join("tiny-chat"));
    let model = model.to_str().unwrap();
    let out = tmp.path().join("x");
    let out = out.to_str().unwrap();
    let commands: [&[&str]; 7] = [
        &["generate", "--model", model, "--prompt", "hi"],
        &["eval", "--model", model, "--harmful", run, "--out", out],
        &[
            "score",
            "--model",
            model,
            "--reward",
            model,
            "--prompt",
            "p",
            "--response",
            "r",
        ],
        &["export", "--model", model, "--out", out],
        &["train", run],
        &["ablate", run],
        &["data", "build", run, "--out", out],
    ];
    let missing = if cfg!(feature = "cuda") {
        None
    } else {
        Some("cuda")
    };
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.extend(["--backend", "cpu:1"]);
        let o = burnish_cli(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("one device"),
            "{args:?}: {err}"
        );
        if let Some(feature) = missing {
            let mut args = cmd.to_vec();
            args.extend(["--backend", "cuda:1"]);
            let o = burnish_cli(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            let want = format!("--features {feature}");
            assert!(
                !o.status.success() && err.contains(&want),
                "{args:?}: {err}"
            );
        }
    }
    assert!(!std::path::Path::new(out).exists(), "nothing was written");
}

/// A 3-step seeded LoRA SFT of the tiny model with LoRA dropout on `backend`: per-step loss and
/// gradient norm (the dropout masks and the adapters' initialisation are drawn on the host).
pub fn seeded_sft(dir: &std::path::Path, backend: &str) -> Vec<(f64, f64)> {
    seeded_sft_with(
        dir,
        backend,
        &["train.max_steps=3", "lora.lora_dropout=0.1"],
    )
}

/// [`seeded_sft`] with other `--set` overrides than its steps and dropout.
pub fn seeded_sft_with(dir: &std::path::Path, backend: &str, set: &[&str]) -> Vec<(f64, f64)> {
    use burnish::trainers::{run, RunFile, RunOptions, RunReport};
    let run_file = tiny_run(dir, "");
    let mut sets = vec![
        format!("model.backend={backend:?}"),
        format!(
            "output.dir={:?}",
            dir.join(format!("out-{backend}")).display().to_string()
        ),
    ];
    sets.extend(set.iter().map(|s| s.to_string()));
    let file = RunFile::load(&run_file, &sets).unwrap();
    let RunReport::Trained(r) = run(&file.config, &RunOptions::default()).unwrap() else {
        panic!("an SFT config trains")
    };
    r.summary
        .history
        .iter()
        .map(|s| (s.loss, s.grad_norm))
        .collect()
}

/// Each step of `got` against `want` (loss, grad norm): relative differences within `loss_tol` and
/// `grad_tol`, and as many steps.
fn assert_steps_close(got: &[(f64, f64)], want: &[(f64, f64)], loss_tol: f64, grad_tol: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let step = i + 1;
        assert!(
            (g.0 - w.0).abs() <= loss_tol * w.0.abs(),
            "step {step}: loss {g:?} vs {w:?}"
        );
        assert!(
            (g.1 - w.1).abs() <= grad_tol * w.1.abs(),
            "step {step}: grad_norm {g:?} vs {w:?}"
        );
    }
}

/// Two runs with the same seed give the same steps; dropout is on (loss differs from a run
/// without it).
#[test]
fn seeded_sft_with_dropout_is_reproducible_on_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let a = seeded_sft(&tmp.path().join("a"), "cpu");
    let b = seeded_sft(&tmp.path().join("b"), "cpu");
    assert_eq!(a.len(), 3);
    assert_eq!(a, b);
}

/// The checks every GPU backend passes against the CPU and PEFT, generic over the backend; the
/// `wgpu` and `cuda` modules below run them when their device is there.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod gpu {
    use super::*;
    use burnish::core::generate::{generate, GenerationConfig};
    use burnish::core::template::Message;
    use burnish::core::Pretrained;

    /// How close a GPU backend's results must be to the CPU's / PEFT's (docs/gpu.md), relative except
    /// `weight` (absolute, on merged weights).
    pub struct Tol {
        pub loss: f64,
        pub grad: f64,
        pub kl: f64,
        pub weight: f32,
    }

    /// wgpu sums in another order than flex, in full f32 (measured on lavapipe: loss 6e-7, gradients
    /// 3e-6 relative).
    #[cfg(feature = "wgpu")]
    pub const F32: Tol = Tol {
        loss: 1e-5,
        grad: 1e-4,
        kl: 1e-4,
        weight: 1e-5,
    };

    /// CUDA's f32 matrix products run on tensor cores in TF32 (cubek-matmul stages f32 operands as
    /// tf32 wherever the device supports it), whose 10-bit mantissa rounds each operand to ~5e-4
    /// relative. Measured on an H200 (2026-12-04): loss 1.4e-5, gradients 3.4e-3, KL 4.7e-4 relative.
    #[cfg(feature = "cuda")]
    pub const TF32: Tol = Tol {
        loss: 1e-4,
        grad: 1e-2,
        kl: 2e-3,
        weight: 1e-4,
    };

    /// SFT and DPO loss and every adapter gradient on `B` against the PEFT fixture.
    pub fn lora_gradients_match_peft<B: AutodiffBackend>(label: &str, tol: &Tol) {
        let dev = Default::default();
        let (loss, grad) = sft_gradients::<B>(&dev);
        eprintln!("{label} sft: loss rel {loss:.2e}, grad rel {grad:.2e}");
        assert!(
            loss <= tol.loss && grad <= tol.grad,
            "sft: loss {loss:.2e}, grad {grad:.2e}"
        );
        let (loss, grad) = dpo_gradients::<B>(&dev);
        eprintln!("{label} dpo: loss rel {loss:.2e}, grad rel {grad:.2e}");
        assert!(
            loss <= tol.loss && grad <= tol.grad,
            "dpo: loss {loss:.2e}, grad {grad:.2e}"
        );
    }

    /// The same seeded 3-step LoRA SFT (dropout on) on `backend` and on the CPU: the same losses and
    /// gradient norms, step by step; metrics.jsonl reports the device pool's memory.
    pub fn seeded_sft_matches_cpu(backend: &str, tol: &Tol) {
        let tmp = tempfile::tempdir().unwrap();
        let cpu = seeded_sft(&tmp.path().join("cpu"), "cpu");
        let gpu = seeded_sft(&tmp.path().join(backend), backend);
        eprintln!("cpu {cpu:?}\n{backend} {gpu:?}");
        assert_steps_close(&gpu, &cpu, tol.loss, tol.grad);
        assert_eq!(gpu.len(), 3);
        // The device's memory pool is reported on a GPU, not on the CPU.
        for row in metrics(&tmp.path().join(backend).join(format!("out-{backend}"))) {
            let mb = row["device_reserved_mb"]
                .as_f64()
                .expect("device_reserved_mb on a GPU");
            assert!(mb > 0.0, "{row}");
        }
        for row in metrics(&tmp.path().join("cpu/out-cpu")) {
            assert!(row.get("device_reserved_mb").is_none(), "{row}");
        }
    }

    /// Data-parallel on a GPU backend: two workers sharing the device give the one-worker CPU run's
    /// losses and gradient norms (no dropout: each worker draws its own masks).
    pub fn two_workers_match_one_on_cpu(backend: &str, tol: &Tol) {
        let tmp = tempfile::tempdir().unwrap();
        let set = ["train.max_steps=3", "train.batch_size=3"];
        let cpu = seeded_sft_with(&tmp.path().join("cpu"), "cpu", &set);
        let devices = format!("train.devices=[{backend:?}, {backend:?}]");
        let two = [&set[..], &[devices.as_str()]].concat();
        let gpu = seeded_sft_with(&tmp.path().join(backend), backend, &two);
        eprintln!("cpu {cpu:?}\n{backend} x2 {gpu:?}");
        assert_eq!(gpu.len(), 3);
        assert_steps_close(&gpu, &cpu, tol.loss, tol.grad);
    }

    /// Eval (generation and KL to the adapters-off base) and the merge `export` writes give the same
    /// results on `B` as on the CPU: equal greedy completions, KL and merged weights within `tol`.
    /// In process, so the kernels compiled by the other tests are reused (a
    /// `burnish --backend wgpu` process compiles its own: a minute each on lavapipe).
    pub fn eval_and_merge_match_cpu<B: Backend>(label: &str, tol: &Tol) {
        let tmp = tempfile::tempdir().unwrap();
        let model = tiny_chat_model(tmp.path());
        let prompts = tmp.path().join("p.jsonl");
        let lines = "{\"prompt\": \"say the cat\"}\n{\"prompt\": \"a dog runs home\"}\n";
        std::fs::write(&prompts, lines).unwrap();
        let (cpu_text, cpu_kl, cpu_w) = eval_and_merge::<Cpu>(
            &model,
            &prompts,
            &tmp.path().join("cpu"),
            &Default::default(),
        );
        let (gpu_text, gpu_kl, gpu_w) = eval_and_merge::<B>(
            &model,
            &prompts,
            &tmp.path().join(label),
            &Default::default(),
        );
        eprintln!("eval: cpu {cpu_text:?} kl {cpu_kl:?}; {label} kl {gpu_kl:?}");
        assert_eq!(cpu_text, gpu_text);
        for (c, g) in cpu_kl.iter().zip(&gpu_kl) {
            assert!(
                (c - g).abs() <= tol.kl * c.abs().max(1e-6),
                "KL {cpu_kl:?} vs {gpu_kl:?}"
            );
        }
        let diff = cpu_w
            .iter()
            .zip(&gpu_w)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(diff <= tol.weight, "merged weights differ by {diff}");
    }

    /// Completions and KL (first token, per token) of the tiny chat model with lora/all-linear
    /// against itself without it, and one merged weight, on backend `B`.
    fn eval_and_merge<B: Backend>(
        model: &std::path::Path,
        prompts: &std::path::Path,
        out: &std::path::Path,
        dev: &B::Device,
    ) -> (Vec<String>, [f64; 2], Vec<f32>) {
        use burnish::trainers::eval::{evaluate_config, EvalConfig, SetKind, SetSpec};
        let mut p = Pretrained::<B>::load(model, dev).unwrap();
        load_adapter(&mut p.model, &core_fixture("lora/all-linear"), dev).unwrap();
        let mut base = p.model.clone();
        base.drop_adapters(false);
        let set = |kind| SetSpec {
            path: prompts.to_path_buf(),
            kind,
            name: None,
            prompt: None,
            category: None,
        };
        let cfg = EvalConfig {
            sets: vec![
                set(SetKind::Harmful),
                SetSpec {
                    name: Some("harmless".into()),
                    ..set(SetKind::Harmless)
                },
            ],
            max_new_tokens: 8,
            ..Default::default()
        };
        let report = evaluate_config(
            &p,
            Some(&base),
            &cfg,
            &Default::default(),
            out,
            Default::default(),
            dev,
            &burnish::trainers::Log,
        )
        .unwrap();
        let kl = report.kl.expect("KL measured");
        let text = std::fs::read_to_string(out.join("completions.jsonl")).unwrap();
        let responses = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["response"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let mut merged = p.model;
        merged.drop_adapters(true);
        let (_, _, w) = merged
            .named_tensors()
            .into_iter()
            .find(|(n, _, _)| n == "model.layers.1.mlp.down_proj.weight")
            .unwrap();
        (
            responses,
            [kl.first_token, kl.per_token],
            burnish::core::backend::host_f32(w),
        )
    }

    /// SmolLM2-135M-Instruct: the same greedy tokens on `B` as on the CPU for two chat prompts,
    /// and the prompt's last-position logits within 1e-3 of the largest logit.
    pub fn smollm2_generates_the_cpu_tokens<B: Backend>(label: &str) {
        let path = common::smollm2();
        let (cpu_ids, cpu_logits) = run_smollm2::<Cpu>(&path, &Default::default());
        let (gpu_ids, gpu_logits) = run_smollm2::<B>(&path, &Default::default());
        let scale = cpu_logits.iter().fold(0f32, |a, x| a.max(x.abs()));
        let diff = cpu_logits
            .iter()
            .zip(&gpu_logits)
            .fold(0f32, |a, (c, g)| a.max((c - g).abs()));
        eprintln!("smollm2 logits: max |cpu - {label}| {diff:.2e} (max |logit| {scale:.1})");
        assert!(
            diff <= 1e-3 * scale,
            "logits differ by {diff} (scale {scale})"
        );
        assert_eq!(cpu_ids, gpu_ids);
    }

    fn run_smollm2<B: Backend>(
        path: &std::path::Path,
        dev: &B::Device,
    ) -> (Vec<Vec<u32>>, Vec<f32>) {
        let p = Pretrained::<B>::load(path, dev).unwrap();
        let prompts: Vec<Vec<u32>> = [
            "What is the capital of France?",
            "Write a haiku about rust.",
        ]
        .iter()
        .map(|q| {
            let text = p
                .render_chat(&[Message::user(q.to_string())], true)
                .unwrap();
            p.tokenizer.encode(&text, false).unwrap()
        })
        .collect();
        let cfg = GenerationConfig {
            max_new_tokens: 12,
            eos_ids: p.eos_ids(),
            pad_id: p.pad_id(),
            ..Default::default()
        };
        let ids = generate(&p.model, &prompts, &cfg, None)
            .unwrap()
            .into_iter()
            .map(|g| g.new_ids)
            .collect();
        let input = burnish::core::burn::tensor::Tensor::<B, 2, burnish::core::burn::tensor::Int>::from_data(
            burnish::core::burn::tensor::TensorData::new(
                prompts[0].iter().map(|&t| t as i64).collect::<Vec<_>>(),
                [1, prompts[0].len()],
            ),
            dev,
        );
        let logits = p.model.forward(input);
        let [_, s, v] = logits.dims();
        let last = logits.slice([0..1, s - 1..s, 0..v]);
        (ids, burnish::core::backend::host_f32(last))
    }
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::gpu;
    use burnish::core::backend::{Autodiff, Wgpu};

    /// True when a Vulkan driver is installed (lavapipe: `apt-get install mesa-vulkan-drivers`).
    /// Without one the wgpu tests skip with a message, except in CI (`CI=true`), where they fail.
    fn vulkan() -> bool {
        let found = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
            .iter()
            .any(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()));
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must run the wgpu tests: no Vulkan driver (install mesa-vulkan-drivers)"
            );
            eprintln!("skipped: no Vulkan driver (install mesa-vulkan-drivers for lavapipe)");
        }
        found
    }

    #[test]
    fn lora_gradients_match_peft_on_wgpu() {
        if vulkan() {
            gpu::lora_gradients_match_peft::<Autodiff<Wgpu>>("wgpu", &gpu::F32);
        }
    }

    #[test]
    fn seeded_sft_matches_cpu() {
        if vulkan() {
            gpu::seeded_sft_matches_cpu("wgpu", &gpu::F32);
        }
    }

    #[test]
    fn two_workers_on_wgpu_match_one_on_cpu() {
        if vulkan() {
            gpu::two_workers_match_one_on_cpu("wgpu", &gpu::F32);
        }
    }

    #[test]
    fn eval_and_merge_match_cpu() {
        if vulkan() {
            gpu::eval_and_merge_match_cpu::<Wgpu>("wgpu", &gpu::F32);
        }
    }

    #[test]
    fn smollm2_generates_the_cpu_tokens() {
        if vulkan() {
            gpu::smollm2_generates_the_cpu_tokens::<Wgpu>("wgpu");
        }
    }
}

/// The same checks on an NVIDIA GPU (`cargo test --features cuda --test backends cuda::`), at TF32's
/// tolerances. CI has no GPU and does not build this feature's tests; they skip with a message where no
/// NVIDIA driver is loaded. On a fresh machine the training checks spend minutes compiling kernels
/// (docs/gpu.md, "CUDA").
#[cfg(feature = "cuda")]
mod cuda {
    use super::gpu;
    use burnish::core::backend::{Autodiff, Cuda};

    fn nvidia() -> bool {
        let found = std::path::Path::new("/dev/nvidiactl").exists();
        if !found {
            eprintln!("skipped: no NVIDIA driver (/dev/nvidiactl)");
        }
        found
    }

    #[test]
    fn lora_gradients_match_peft_on_cuda() {
        if nvidia() {
            gpu::lora_gradients_match_peft::<Autodiff<Cuda>>("cuda", &gpu::TF32);
        }
    }

    #[test]
    fn seeded_sft_matches_cpu() {
        if nvidia() {
            gpu::seeded_sft_matches_cpu("cuda", &gpu::TF32);
        }
    }

    #[test]
    fn two_workers_on_cuda_match_one_on_cpu() {
        if nvidia() {
            gpu::two_workers_match_one_on_cpu("cuda", &gpu::TF32);
        }
    }

    #[test]
    fn eval_and_merge_match_cpu() {
        if nvidia() {
            gpu::eval_and_merge_match_cpu::<Cuda>("cuda", &gpu::TF32);
        }
    }

    /// Needs the model (`scripts/fetch-smollm2.sh`, or `BURNISH_SMOLLM2=PATH`).
    #[test]
    fn smollm2_generates_the_cpu_tokens() {
        if nvidia() {
            gpu::smollm2_generates_the_cpu_tokens::<Cuda>("cuda");
        }
    }
}
