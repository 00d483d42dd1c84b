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
use burnish::core::weights::{load_llama, SafetensorsDir};
use burnish::core::{Llama, ModelConfig};
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

/// tiny-llama with the PEFT adapter of lora/all-linear (B non-zero), on backend `B`.
fn model<B: Backend>(device: &B::Device) -> Llama<B> {
    let dir = core_fixture("tiny-llama");
    let cfg = ModelConfig::from_file(dir.join("config.json")).unwrap();
    let mut m = load_llama(&cfg, &SafetensorsDir::open(&dir).unwrap(), device).unwrap();
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
    let fx = Fixture::open();
    let m = model::<B>(device);
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
    };
    let batch = <Sft as Method<B>>::batch(&sft, &[0, 1, 2]);
    let units = <Sft as Method<B>>::units(&sft, &batch);
    let (loss, _) = sft.loss(&m, &batch);
    compare(&m, loss, units, &fx, "sft")
}

/// DPO (sigmoid, beta 0.1) on two pairs, the reference being the adapters-off model: loss and
/// adapter gradients.
pub fn dpo_gradients<B: AutodiffBackend>(device: &B::Device) -> (f64, f64) {
    let fx = Fixture::open();
    let m = model::<B>(device);
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
