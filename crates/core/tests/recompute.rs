//! Activation recomputation per decoder layer (`Llama::gradient_checkpointing`,
//! burnish_core::model::recompute): the same loss and the same adapter gradients as the recorded pass,
//! in every family, with padding and LoRA dropout on (the masks must be drawn again identically), and
//! the gradients really come from the recomputation (the loss's own backward pass gives the adapters
//! none).

mod common;

use burnish_core::adapter::load_adapter;
use burnish_core::backend::{host_f32, Cpu};
use burnish_core::burn::backend::Autodiff;
use burnish_core::burn::module::{AutodiffModule, Param, ParamId};
use burnish_core::burn::nn::DropoutConfig;
use burnish_core::burn::tensor::{Int, Tensor, TensorData};
use burnish_core::model::{
    causal_padding_mask, recompute, Adapters, Llama, LoraConfig, TargetModules,
};
use burnish_core::weights::SafetensorsDir;
use burnish_core::{rng, ModelConfig};
use common::*;
use std::collections::HashMap;

type Ad = Autodiff<Cpu>;

fn model(name: &str, dropout: f64) -> Llama<Ad> {
    let dir = fixture(name);
    let cfg = ModelConfig::from_file(dir.join("config.json")).unwrap();
    let w = SafetensorsDir::open(&dir).unwrap();
    let dev = Default::default();
    let mut m = burnish_core::weights::load_llama(&cfg, &w, &dev).unwrap();
    let peft = fixture(&format!("{name}/adapter"));
    if peft.exists() {
        load_adapter(&mut m, &peft, &dev).unwrap();
    } else {
        // Fresh adapters on every linear, B drawn non-zero so A gets gradients too.
        let cfg = LoraConfig {
            target_modules: TargetModules::Preset("all-linear".into()),
            ..Default::default()
        };
        m.attach_lora(&cfg, 3, &dev).unwrap();
        for (key, lora) in m.adapters_mut() {
            let b = lora.lora_B.val();
            let mut r = rng::for_tensor(5, &key);
            let fresh = rng::normal::<Ad>(&mut r, b.dims(), 0.05, &dev);
            lora.lora_B = Param::initialized(lora.lora_B.id, fresh.require_grad());
        }
    }
    for (_, lora) in m.adapters_mut() {
        lora.dropout = DropoutConfig::new(dropout).init();
    }
    m
}

/// Loss (weighted log-probabilities of a left-padded batch of two rows), every adapter's gradient,
/// and how many of them the loss's own backward pass gave, with or without recomputation. An
/// adapters-off pass (as DPO's reference) runs first and must disturb nothing.
fn step(m: &mut Llama<Ad>, checkpoint: bool, adapters: Adapters) -> (f32, Vec<Vec<f32>>, usize) {
    m.gradient_checkpointing = checkpoint;
    rng::seed_dropout(7);
    let dev = Default::default();
    let s = 10;
    let ids: Vec<i64> = (0..2 * s as i64).map(|i| (i * 7 + 3) % 16).collect();
    let valid: Vec<Vec<bool>> = vec![vec![true; s], (0..s).map(|i| i >= 3).collect()];
    let positions: Vec<i64> = valid
        .iter()
        .flat_map(|r| {
            let pad = r.iter().filter(|v| !**v).count() as i64;
            (0..s as i64).map(move |i| (i - pad).max(0))
        })
        .collect();
    let input = Tensor::<Ad, 2, Int>::from_data(TensorData::new(ids.clone(), [2, s]), &dev);
    let pos = Tensor::<Ad, 2, Int>::from_data(TensorData::new(positions, [2, s]), &dev);
    let mask = causal_padding_mask::<Ad>(&valid, s, None, &dev);
    let ctx = m.context(pos, Some(mask)).with_adapters(adapters);
    recompute::clear();
    // An adapters-off pass first: not recorded, and no gradient flows through it.
    let _ = m.forward_hidden(input.clone(), &ctx.clone().without_adapters(), None, None);
    let hidden = m.forward_hidden(input, &ctx, None, None);
    let h = m.hidden_size();
    let targets: Vec<i64> = ids.iter().map(|t| (t + 1) % 16).collect();
    let (lp, _) = m.target_logps(hidden.reshape([2 * s, h]), &targets);
    let w: Vec<f32> = (0..2 * s)
        .map(|i| {
            if i >= s && i < s + 3 {
                0.0
            } else {
                1.0 + 0.1 * i as f32
            }
        })
        .collect();
    let loss = (lp * Tensor::<Ad, 1>::from_floats(w.as_slice(), &dev)).sum();
    let g = loss.clone().backward();
    let mut again: HashMap<ParamId, _> = recompute::backward::<Ad>(&g);
    let mut direct = 0;
    let mut out = Vec::new();
    for (module, lora) in m.adapters() {
        for p in [&lora.lora_A, &lora.lora_B] {
            let grad = match p.grad(&g) {
                Some(grad) => {
                    direct += 1;
                    grad
                }
                None => again
                    .remove(&p.id)
                    .unwrap_or_else(|| panic!("{module}: no gradient")),
            };
            out.push(host_f32(grad));
        }
    }
    assert!(
        again.is_empty(),
        "gradients of parameters that are not adapters"
    );
    (host_f32(loss.inner())[0], out, direct)
}

#[test]
fn recomputed_layers_give_the_recorded_gradients_in_every_family() {
    for name in FAMILIES {
        let mut plain_loss = None;
        for dropout in [0.0, 0.2] {
            let adapters = Adapters::On;
            let mut m = model(name, dropout);
            let (loss, want, direct) = step(&mut m, false, adapters);
            assert!(direct > 0);
            // The masks are in use (so drawing them again is tested).
            match plain_loss {
                None => plain_loss = Some(loss),
                Some(plain) => assert_ne!(loss, plain, "{name}: dropout changes the loss"),
            }
            let (loss2, got, direct2) = step(&mut m, true, adapters);
            assert_eq!(
                direct2, 0,
                "{name}: the adapters' gradients came from the recomputation"
            );
            let rel = (loss2 - loss).abs() / loss.abs();
            assert!(
                rel <= 1e-6,
                "{name} dropout {dropout}: loss {loss2} vs {loss}"
            );
            let mut worst = 0f32;
            for (g, w) in got.iter().zip(&want) {
                let scale = w.iter().fold(0f32, |a, x| a.max(x.abs())).max(1e-12);
                worst = worst.max(max_abs_diff(g, w) / scale);
            }
            eprintln!("{name} dropout {dropout}: gradients rel {worst:.1e}");
            assert!(
                worst <= 1e-5,
                "{name} dropout {dropout}: gradients rel {worst}"
            );
        }
    }
}

/// Without dropout replay the masks of the second run would differ: the check above would fail.
/// Here: the dropout stream after a recomputed step is where the recorded step leaves it, so the
/// next step draws the same masks either way.
#[test]
fn the_dropout_stream_continues_as_without_recomputation() {
    let mut m = model("tiny-llama", 0.3);
    let _ = step(&mut m, false, Adapters::On);
    let after_recorded = rng::dropout_state();
    let _ = step(&mut m, true, Adapters::On);
    let after_recomputed = rng::dropout_state();
    use rand::Rng;
    let draw = |s: Option<rand::rngs::StdRng>| s.unwrap().random::<u64>();
    assert_eq!(draw(after_recorded), draw(after_recomputed));
}

/// A pass without adapters (DPO's reference, KL) or without gradients is not recorded, and an
/// inference model on the plain backend runs as before.
#[test]
fn passes_that_need_no_gradients_are_not_recomputed() {
    let mut m = model("tiny-qwen3", 0.0);
    m.gradient_checkpointing = true;
    let dev = Default::default();
    let input = Tensor::<Ad, 2, Int>::from_data(TensorData::new(vec![1i64, 2, 3, 4], [1, 4]), &dev);
    let pos = Tensor::<Ad, 2, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3], [1, 4]), &dev);
    let ctx = m.context(pos.clone(), None);
    recompute::clear();
    let _ = m.forward_hidden(input.clone(), &ctx.clone().without_adapters(), None, None);
    assert_eq!(recompute::recorded(), 0, "adapters off: nothing to train");
    let plain = m.valid();
    assert!(plain.gradient_checkpointing);
    let _ = plain.forward_hidden(
        input.clone().inner(),
        &plain.context(pos.inner(), None),
        None,
        None,
    );
    assert_eq!(
        recompute::recorded(),
        0,
        "no autodiff: nothing to recompute"
    );
    let on = m.forward_hidden(input, &ctx, None, None);
    assert_eq!(recompute::recorded(), 1);
    let g = on.sum().backward();
    assert_eq!(recompute::backward::<Ad>(&g).len(), 2 * m.adapters().len());
    // The tape was consumed: a second call finds nothing.
    assert!(recompute::backward::<Ad>(&g).is_empty());
}
