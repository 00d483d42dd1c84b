//! Ablation against a transformers fixture (scripts/reference/make_ablation_fixtures.py): difference of
//! means, orthogonalised weights, and a residual stream without the direction; steering as an exact shift.

use std::path::Path;

use burnish_core::backend::Cpu;
use burnish_core::burn::tensor::{Int, Tensor, TensorData};
use burnish_core::safetensors::SafeTensors;
use burnish_core::weights::{load_llama, HfNames, SafetensorsDir};
use burnish_core::{Llama, ModelConfig};
use burnish_trainers::ablate::directions::{activations, candidates, mean_activations, unit};
use burnish_trainers::ablate::gate::{condition, steer_gated};
use burnish_trainers::ablate::weights::{
    ablate, orthogonalize_out, orthogonalize_rows, steer, Kernels,
};

fn tiny() -> Llama<Cpu> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/tiny-llama");
    let cfg = ModelConfig::from_file(dir.join("config.json")).unwrap();
    load_llama(
        &cfg,
        &SafetensorsDir::open(&dir).unwrap(),
        &Default::default(),
    )
    .unwrap()
}

fn fixture() -> (serde_json::Value, Vec<u8>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ablation");
    let prompts =
        serde_json::from_str(&std::fs::read_to_string(dir.join("prompts.json")).unwrap()).unwrap();
    (
        prompts,
        std::fs::read(dir.join("expected.safetensors")).unwrap(),
    )
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest |x · r̂| of the residual stream entering every layer, over all positions of `prompts`.
fn residual_along(m: &Llama<Cpu>, prompts: &[Vec<u32>], r: &Tensor<Cpu, 1>) -> f32 {
    let mut worst = 0f32;
    for p in prompts {
        let x = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(
                p.iter().map(|&t| t as i64).collect::<Vec<_>>(),
                [1, p.len()],
            ),
            &Default::default(),
        );
        let mut tap = |layer: usize, h: &Tensor<Cpu, 3>| {
            if layer < m.num_layers() {
                let d = h.dims()[2];
                let along = h
                    .clone()
                    .reshape([p.len(), d])
                    .matmul(r.clone().unsqueeze_dim::<2>(1));
                worst = worst.max(along.abs().max().into_scalar());
            }
        };
        let ctx = m.context(
            Tensor::<Cpu, 1, Int>::arange(0..p.len() as i64, &Default::default())
                .unsqueeze_dim::<2>(0),
            None,
        );
        m.forward_hidden(x, &ctx, None, Some(&mut tap));
    }
    worst
}

#[test]
fn directions_and_orthogonalization_match_transformers() {
    let (prompts, bytes) = fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let m = tiny();
    let (harmful, harmless) = (ids(&prompts["harmful"]), ids(&prompts["harmless"]));
    // Batches of 3 mix prompt lengths: left padding must not change the means.
    let mh = mean_activations(&m, &harmful, 1, 0, 3);
    let ml = mean_activations(&m, &harmless, 1, 0, 3);
    let hidden = m.model.embed_tokens.dims()[1];
    let diff: Vec<f32> = candidates(&mh, &ml, hidden, false)
        .iter()
        .map(|&x| x as f32)
        .collect();
    let d = max_diff(&diff, &f32s(&st, "diff"));
    assert!(
        d < 1e-4,
        "difference of means differs from transformers by {d}"
    );

    let layer = prompts["layer"].as_u64().unwrap() as usize;
    let r = unit(&candidates(&mh, &ml, hidden, false)[layer * hidden..(layer + 1) * hidden]);
    assert!(max_diff(&r, &f32s(&st, "direction")) < 1e-4);
    let rt = Tensor::<Cpu, 1>::from_data(TensorData::new(r.clone(), [hidden]), &Default::default());
    let a = ablate(&m, &rt, &Kernels::flat(1.0, m.num_layers()), true, false).unwrap();
    let w = |name: &str| a.weight(name).unwrap().into_data().to_vec::<f32>().unwrap();
    assert!(max_diff(&w(HfNames::EMBED), &f32s(&st, "embed_tokens")) < 1e-5);
    for i in 0..m.num_layers() {
        for (sub, short) in [
            ("self_attn.o_proj", "o_proj"),
            ("mlp.down_proj", "down_proj"),
        ] {
            let got = w(&HfNames::layer(i, &format!("{sub}.weight")));
            let d = max_diff(&got, &f32s(&st, &format!("layers.{i}.{short}")));
            assert!(d < 1e-5, "layer {i} {short}: {d}");
        }
    }
    // The edited model never writes along r̂: every layer's input has no component along it.
    let all: Vec<Vec<u32>> = harmful.iter().chain(&harmless).cloned().collect();
    assert!(residual_along(&m, &all, &rt) > 1e-2);
    let along = residual_along(&a, &all, &rt);
    assert!(along < 1e-4, "residual along r̂ after ablation: {along}");
    // Half strength leaves part of it; the unedited model is untouched (weights are shared, not edited).
    let half = ablate(&m, &rt, &Kernels::flat(0.5, m.num_layers()), true, false).unwrap();
    assert!(residual_along(&half, &all, &rt) > 1e-3);
    assert_eq!(
        m.weight(HfNames::EMBED).unwrap().into_data(),
        tiny().weight(HfNames::EMBED).unwrap().into_data()
    );
}

#[test]
fn steering_shifts_the_residual_stream_exactly() {
    let m = tiny();
    let hidden = m.model.embed_tokens.dims()[1];
    let v: Vec<f32> = (0..hidden).map(|i| (i as f32 * 0.37).sin()).collect();
    let s = steer(
        &m,
        1,
        Tensor::from_data(TensorData::new(v.clone(), [hidden]), &Default::default()),
    )
    .unwrap();
    assert!(s.has_mlp_bias());
    let grab = |model: &Llama<Cpu>| {
        let mut out = Vec::new();
        let x = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(vec![1i64, 17, 33, 5], [1, 4]),
            &Default::default(),
        );
        let ctx = model.context(
            Tensor::<Cpu, 1, Int>::arange(0..4, &Default::default()).unsqueeze_dim::<2>(0),
            None,
        );
        let mut tap = |l: usize, h: &Tensor<Cpu, 3>| {
            out.push((l, h.clone().into_data().to_vec::<f32>().unwrap()))
        };
        model.forward_hidden(x, &ctx, None, Some(&mut tap));
        out
    };
    let (a, b) = (grab(&m), grab(&s));
    // Layers before the steered one see the same stream; the steered layer's input is shifted by v.
    assert_eq!(a[0], b[0]);
    for (k, (x, y)) in a[1].1.iter().zip(&b[1].1).enumerate() {
        assert!((y - x - v[k % hidden]).abs() < 1e-5);
    }
    assert!(steer(&m, 0, Tensor::zeros([hidden], &Default::default())).is_err());
}

fn stream(model: &Llama<Cpu>, tokens: &[i64]) -> Vec<(usize, Vec<f32>)> {
    let mut out = Vec::new();
    let n = tokens.len();
    let x = Tensor::<Cpu, 2, Int>::from_data(
        TensorData::new(tokens.to_vec(), [1, n]),
        &Default::default(),
    );
    let ctx = model.context(
        Tensor::<Cpu, 1, Int>::arange(0..n as i64, &Default::default()).unsqueeze_dim::<2>(0),
        None,
    );
    let mut tap = |l: usize, h: &Tensor<Cpu, 3>| {
        out.push((l, h.clone().into_data().to_vec::<f32>().unwrap()))
    };
    model.forward_hidden(x, &ctx, None, Some(&mut tap));
    out
}

#[test]
fn a_gated_unit_adds_its_vector_only_where_the_gate_opens() {
    let m = tiny();
    let hidden = m.hidden_size();
    let t = |v: Vec<f32>| {
        Tensor::<Cpu, 1>::from_data(TensorData::new(v, [hidden]), &Default::default())
    };
    let d: Vec<f32> = (0..hidden).map(|i| (i as f32 * 0.37).sin()).collect();
    let tokens = [1i64, 17, 33, 5];
    let base = stream(&m, &tokens);
    let shift = |bias: f32| {
        let mut g = m.clone();
        g.add_gated_unit(1, t(vec![0.0; hidden]), bias, t(d.clone()))
            .unwrap();
        assert_eq!(g.intermediate_size(), m.intermediate_size() + 1);
        let s = stream(&g, &tokens);
        // Layers before the steered one are untouched.
        assert_eq!(s[0], base[0]);
        s[1].1
            .iter()
            .zip(&base[1].1)
            .map(|(a, b)| a - b)
            .collect::<Vec<f32>>()
    };
    // Open (constant pre-activation 3): exactly silu(3)·d at every position.
    let silu3 = 3.0 / (1.0 + (-3.0f32).exp());
    for (k, x) in shift(3.0).iter().enumerate() {
        assert!((x - silu3 * d[k % hidden]).abs() < 1e-5);
    }
    // Closed: nothing.
    assert!(shift(-40.0).iter().all(|x| x.abs() < 1e-5));
    assert!(m
        .clone()
        .add_gated_unit(0, t(d.clone()), 0.0, t(d.clone()))
        .is_err());

    // Conditioned on two groups of prompts: the last position of the "harmful" group gets about the
    // vector, the other group about nothing.
    let group = |base: u32| -> Vec<Vec<u32>> {
        (0..8)
            .map(|i| vec![base + i, base + 2 * i + 1, base + 3])
            .collect()
    };
    let (h, l) = (group(10), group(60));
    let (ah, al) = (activations(&m, &h, 1, 0, 4), activations(&m, &l, 1, 0, 4));
    let c = condition(&ah, &al, 1, 1, hidden);
    assert!(c.accuracy(c.threshold(0.5)) > 0.9);
    let v: Vec<f64> = d.iter().map(|&x| f64::from(x)).collect();
    let g = steer_gated(&m, 1, &v, &c, 0.5).unwrap();
    let norm = |p: &Vec<u32>, model: &Llama<Cpu>| -> f32 {
        let ids: Vec<i64> = p.iter().map(|&x| i64::from(x)).collect();
        let a = &stream(model, &ids)[1].1;
        let b = &stream(&m, &ids)[1].1;
        let last = (ids.len() - 1) * hidden;
        a[last..]
            .iter()
            .zip(&b[last..])
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f32>()
            .sqrt()
    };
    let dn = d.iter().map(|x| x * x).sum::<f32>().sqrt();
    let mean = |ps: &[Vec<u32>]| ps.iter().map(|p| norm(p, &g)).sum::<f32>() / ps.len() as f32;
    let (on, off) = (mean(&h), mean(&l));
    assert!(on > 0.3 * dn, "harmful group shift {on} vs |v| {dn}");
    assert!(off < 0.5 * on, "harmless group shift {off} vs harmful {on}");
}

/// Full-strength ablation (embeddings included) leaves the residual stream of every family with no
/// component along the direction, at every layer and position: in Gemma, where o_proj and down_proj
/// write through a norm, the edit removes the direction the norm maps onto it; the plain edit does not.
#[test]
fn ablation_empties_the_direction_in_every_family() {
    let prompts: Vec<Vec<u32>> = vec![(3..12).collect(), vec![5, 9, 17, 33, 65, 127]];
    for name in [
        "tiny-llama",
        "tiny-qwen3",
        "tiny-gemma2",
        "tiny-gemma3",
        "tiny-phi3",
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../core/tests/fixtures")
            .join(name);
        let cfg = ModelConfig::from_file(dir.join("config.json")).unwrap();
        let m: Llama<Cpu> = load_llama(
            &cfg,
            &SafetensorsDir::open(&dir).unwrap(),
            &Default::default(),
        )
        .unwrap();
        let hidden = cfg.hidden_size;
        let r = unit(
            &(0..hidden)
                .map(|i| ((i * 7 % 11) as f64) - 5.0)
                .collect::<Vec<_>>(),
        );
        let rt = Tensor::<Cpu, 1>::from_data(TensorData::new(r, [hidden]), &Default::default());
        let before = residual_along(&m, &prompts, &rt);
        let a = ablate(&m, &rt, &Kernels::flat(1.0, m.num_layers()), true, false).unwrap();
        let after = residual_along(&a, &prompts, &rt);
        assert!(
            before > 0.1,
            "{name}: the direction must be present before ({before})"
        );
        assert!(
            after < 1e-4 * before.max(1.0),
            "{name}: |x·r| {before} → {after}"
        );
        if cfg.gemma_layout {
            // Editing as for Llama (ignoring the post-norms) would leave the direction in.
            let mut plain = m.clone();
            for i in 0..plain.num_layers() {
                for sub in ["self_attn.o_proj", "mlp.down_proj"] {
                    let n = HfNames::layer(i, &format!("{sub}.weight"));
                    let w = plain.weight(&n).unwrap();
                    plain
                        .set_weight(&n, orthogonalize_out(w, &rt, 1.0, false))
                        .unwrap();
                }
            }
            let e = plain.weight(HfNames::EMBED).unwrap();
            plain
                .set_weight(HfNames::EMBED, orthogonalize_rows(e, &rt, 1.0, false))
                .unwrap();
            let left = residual_along(&plain, &prompts, &rt);
            assert!(
                left > 100.0 * after.max(1e-6),
                "{name}: plain edit leaves {left}"
            );
            let e = steer(&m, 1, rt.clone()).expect_err("steering through a post-norm");
            assert!(e.to_string().contains("post-feedforward norm"), "{e}");
        }
    }
}
