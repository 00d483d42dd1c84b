//! Mixed precision (burnish_core::precision): the base's weight matrices in bf16 or f16, everything
//! else in f32. The CPU backend asserts the dtypes of every binary op (GPU backends check none), so
//! running every family's forward pass, generation, LoRA backward, merge, weight edits and export here
//! is the test that no bf16/f16 tensor meets an f32 one without a cast. Results are compared with
//! transformers' f32 reference within the stated tolerances, and must differ from burnish's own f32
//! results (the low precision really is in use).

mod common;

use burnish_core::adapter::load_adapter;
use burnish_core::backend::{host_f32, Cpu};
use burnish_core::burn::backend::Autodiff;
use burnish_core::burn::tensor::backend::Backend;
use burnish_core::burn::tensor::{DType, Int, Tensor, TensorData};
use burnish_core::export::{export_hf, Dtype, ExportSource};
use burnish_core::generate::{generate, GenerationConfig};
use burnish_core::io::Existing;
use burnish_core::model::Llama;
use burnish_core::weights::gguf::GgufFile;
use burnish_core::weights::{load_llama_as, SafetensorsDir};
use burnish_core::{ModelConfig, Precision, Pretrained, Tokenizer};
use common::*;

/// Logits within this fraction of the largest |logit| of transformers' f32 reference. bf16 keeps 8
/// significant bits (relative rounding 2^-9 ≈ 0.2% per weight), f16 11. Measured on these models:
/// at most 3.2e-2 (bf16, Phi-3) and 4.2e-3 (f16, Phi-3).
fn logit_tol(p: Precision) -> f32 {
    match p {
        Precision::F32 => 1e-5,
        Precision::Bf16 => 5e-2,
        Precision::F16 => 8e-3,
    }
}

const LOW: [Precision; 2] = [Precision::Bf16, Precision::F16];

fn load<B: Backend>(name: &str, p: Precision) -> Llama<B> {
    let dir = fixture(name);
    let cfg = ModelConfig::from_file(dir.join("config.json")).unwrap();
    let w = SafetensorsDir::open(&dir).unwrap();
    load_llama_as(&cfg, &w, &Default::default(), p).unwrap()
}

fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |a, x| a.max(x.abs())).max(1e-12);
    max_abs_diff(got, want) / scale
}

#[test]
fn every_family_runs_in_bf16_and_f16_within_tolerance_of_f32() {
    for name in FAMILIES {
        let exp = Expected::open(&fixture(&format!("{name}/expected.safetensors")));
        let want = exp.f32("logits").1;
        let f32_logits = to_vec3(load::<Cpu>(name, Precision::F32).forward(exp.ids2("input_ids")));
        for p in LOW {
            let m = load::<Cpu>(name, p);
            assert_eq!(m.precision(), p, "{name}");
            assert_eq!(m.model.embed_tokens.val().dtype(), p.dtype());
            assert_eq!(
                m.model.norm.weight.val().dtype(),
                DType::F32,
                "norms stay f32"
            );
            let logits = m.forward(exp.ids2("input_ids"));
            assert_eq!(logits.dtype(), DType::F32, "{name} {p}: logits in f32");
            let got = to_vec3(logits);
            let d = rel_diff(&got, &want);
            eprintln!("{name} {p}: logits rel {d:.2e}");
            assert!(d <= logit_tol(p), "{name} {p}: logits rel {d:.2e}");
            assert!(got != f32_logits, "{name} {p}: the same as f32");
            // Decoding through the KV cache (the few-rows matmul path, cached f32 keys).
            let cfg = GenerationConfig {
                max_new_tokens: 4,
                ..Default::default()
            };
            let out = generate(&m, &[vec![1, 5, 9], vec![7, 3, 2, 8, 4]], &cfg, None).unwrap();
            assert!(out.iter().all(|o| o.new_ids.len() == 4), "{name} {p}");
        }
    }
}

/// Casting a loaded f32 model on the device gives the weights loading in that precision gives, up to
/// rounding of exact ties (Burn's device cast and its host conversion break them differently: one unit
/// in the last place, on a few elements).
#[test]
fn with_precision_equals_loading_in_it() {
    for p in LOW {
        let cast = load::<Cpu>("tiny-gemma2", Precision::F32).with_precision(p);
        let loaded = load::<Cpu>("tiny-gemma2", p);
        assert_eq!(cast.precision(), p);
        let pairs = cast.named_tensors().into_iter().zip(loaded.named_tensors());
        for ((name, _, a), (_, _, b)) in pairs {
            assert_eq!(a.dtype(), b.dtype(), "{name}");
            let (a, b) = (host_f32(a), host_f32(b));
            let ulp = if p == Precision::Bf16 {
                2f32.powi(-7)
            } else {
                2f32.powi(-10)
            };
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= ulp * x.abs().max(y.abs()),
                    "{name}: {x} vs {y}"
                );
            }
        }
        let back = cast.with_precision(Precision::F32);
        assert_eq!(back.precision(), Precision::F32);
    }
}

/// LoRA gradients through a bf16/f16 base (the head's log-probs of the next tokens, summed with
/// uneven weights) point where the f32 ones do: cosine similarity of all adapter gradients ≥ 0.99
/// (bf16; measured 0.99986–0.99991, and 0.9957 on the tiny random Phi-3, whose logits also move most)
/// and ≥ 0.9999 (f16; measured ≥ 0.999998, Phi-3 0.99997). Per tensor, the largest |Δ| over the largest |g| reaches 0.24 in bf16
/// on the tiny random Phi-3 (1.5e-2 in f16): the error shrinks with the format's precision, which a
/// missing cast or a wrong operand would not do, so f16's must be at most a third of bf16's. The
/// adapters stay f32 and get f32 gradients.
#[test]
fn lora_gradients_through_a_low_precision_base_track_f32() {
    for name in ["tiny-qwen3", "tiny-gemma2", "tiny-gemma3", "tiny-phi3"] {
        let reference = adapter_grads(name, Precision::F32);
        let mut worst = Vec::new();
        for (p, min_cos) in [(Precision::Bf16, 0.99), (Precision::F16, 0.9999)] {
            let got = adapter_grads(name, p);
            let rel = got
                .iter()
                .zip(&reference)
                .map(|(g, r)| rel_diff(g, r))
                .fold(0f32, f32::max);
            let cos = cosine(&got.concat(), &reference.concat());
            eprintln!("{name} {p}: LoRA gradients rel {rel:.2e}, cosine {cos:.7}");
            assert!(cos >= min_cos && rel > 0.0, "{name} {p}: cosine {cos}");
            worst.push(rel);
        }
        assert!(
            worst[1] * 3.0 <= worst[0],
            "{name}: f16 {} vs bf16 {}",
            worst[1],
            worst[0]
        );
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Every lora_A and lora_B gradient of fixture `name`'s PEFT adapter on a base in `p`.
fn adapter_grads(name: &str, p: Precision) -> Vec<Vec<f32>> {
    type Ad = Autodiff<Cpu>;
    let exp = Expected::open(&fixture(&format!("{name}/expected.safetensors")));
    let ids = exp.i64("input_ids").1;
    let dev = Default::default();
    let mut m = load::<Ad>(name, p);
    load_adapter(&mut m, &fixture(&format!("{name}/adapter")), &dev).unwrap();
    let s = ids.len().min(12) - 1;
    let input = Tensor::<Ad, 2, Int>::from_data(TensorData::new(ids[..s].to_vec(), [1, s]), &dev);
    let positions = Tensor::<Ad, 1, Int>::arange(0..s as i64, &dev).unsqueeze_dim(0);
    let hidden = m.forward_hidden(input, &m.context(positions, None), None, None);
    let (lp, _) = m.target_logps(hidden.reshape([s, m.hidden_size()]), &ids[1..=s]);
    let w: Vec<f32> = (0..s).map(|i| 1.0 + 0.25 * i as f32).collect();
    let g = (lp * Tensor::<Ad, 1>::from_floats(w.as_slice(), &dev))
        .sum()
        .backward();
    let mut out = Vec::new();
    for (module, lora) in m.adapters() {
        for param in [&lora.lora_A, &lora.lora_B] {
            let grad = param
                .grad(&g)
                .unwrap_or_else(|| panic!("{module}: no gradient"));
            assert_eq!(grad.dtype(), DType::F32, "{module}");
            out.push(host_f32(grad));
        }
    }
    out
}

/// A merged adapter and an edited weight are stored in the base's precision; `weight` reads f32;
/// an HF export of a bf16 model written in f32 and loaded back in bf16 gives the same logits.
#[test]
fn merge_edit_and_export_keep_the_precision() {
    let exp = Expected::open(&fixture("tiny-qwen3/expected-lora.safetensors"));
    let mut m = load::<Cpu>("tiny-qwen3", Precision::Bf16);
    load_adapter(&mut m, &fixture("tiny-qwen3/adapter"), &Default::default()).unwrap();
    let on = to_vec3(m.forward(exp.ids2("input_ids")));
    m.merge_adapters();
    assert_eq!(m.precision(), Precision::Bf16);
    let merged = to_vec3(m.forward(exp.ids2("input_ids")));
    let want = exp.f32("logits_merged").1;
    assert!(rel_diff(&merged, &want) <= logit_tol(Precision::Bf16));
    assert!(rel_diff(&on, &merged) <= logit_tol(Precision::Bf16));

    let name = "model.layers.0.self_attn.o_proj.weight";
    let w = m.weight(name).unwrap();
    assert_eq!(w.dtype(), DType::F32);
    m.set_weight(name, w.mul_scalar(0.5)).unwrap();
    assert_eq!(
        m.linear(0, "o_proj").unwrap().weight.val().dtype(),
        DType::BF16
    );
    m.drop_adapters(true);
    let edited = to_vec3(m.forward(exp.ids2("input_ids")));

    let tmp = tempfile::tempdir().unwrap();
    let gguf = GgufFile::open(fixture("tiny-llama-gguf/model-f32.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let cfg = ModelConfig::from_file(fixture("tiny-qwen3/config.json")).unwrap();
    let src = ExportSource {
        config: &cfg,
        tokenizer: &tok,
        template: None,
        source_gguf: Some(&gguf),
    };
    let dir = tmp.path().join("out");
    export_hf(&m, &src, &dir, Dtype::F32, Existing::Replace).unwrap();
    let back = Pretrained::<Cpu>::load_as(&dir, &Default::default(), Precision::Bf16).unwrap();
    assert_eq!(to_vec3(back.model.forward(exp.ids2("input_ids"))), edited);
}
