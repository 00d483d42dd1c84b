//! LoRA: PEFT interop (fixtures from scripts/reference/make_lora_fixtures.py), adapter switches, merge,
//! frozen base weights under training, and merged export round trips.

mod common;

use std::path::Path;

use burnish_core::adapter::{load_adapter, save_adapter};
use burnish_core::backend::Autodiff;
use burnish_core::burn::module::{AutodiffModule, Module};
use burnish_core::burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burnish_core::burn::tensor::backend::Backend;
use burnish_core::burn::tensor::{Int, Tensor};
use burnish_core::export::{export_gguf, export_hf, Dtype, ExportSource, GgufQuant};
use burnish_core::io::Existing;
use burnish_core::model::{Llama, LoraConfig, TargetModules};
use burnish_core::weights::gguf::{dequantize, quantize_q8_0, GgmlType, GgufFile};
use burnish_core::weights::{load_llama, SafetensorsDir};
use burnish_core::{Error, ModelConfig, Pretrained, Tokenizer};
use common::*;

const TOL: f32 = 1e-4;

fn tiny<Bk: Backend>() -> Llama<Bk> {
    let dir = fixture("tiny-llama");
    let cfg = ModelConfig::from_file(dir.join("config.json")).unwrap();
    load_llama(
        &cfg,
        &SafetensorsDir::open(&dir).unwrap(),
        &Default::default(),
    )
    .unwrap()
}

fn logits_of<Bk: Backend>(m: &Llama<Bk>, ids: Tensor<Bk, 2, Int>, adapters: bool) -> Vec<f32> {
    let [b, s] = ids.dims();
    let pos = Tensor::<Bk, 1, Int>::arange(0..s as i64, &ids.device())
        .unsqueeze_dim::<2>(0)
        .expand([b, s]);
    let mut ctx = m.context(pos, None);
    ctx.adapters = if adapters {
        burnish_core::Adapters::On
    } else {
        burnish_core::Adapters::Off
    };
    m.logits(m.forward_hidden(ids, &ctx, None, None))
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
}

fn weights_host(m: &Llama<B>) -> Vec<(String, Vec<f32>)> {
    m.named_tensors()
        .into_iter()
        .map(|(n, _, t)| (n, t.into_data().to_vec::<f32>().unwrap()))
        .collect()
}

/// `input_ids` + burnish's `logits` for the Python cross-checks.
fn write_logits(path: &Path, exp: &Expected, logits: &[f32]) {
    let (shape, ids) = exp.i64("input_ids");
    let lbytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let ibytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
    let vocab = logits.len() / (shape[0] * shape[1]);
    let view = |dtype, shape: Vec<usize>, bytes| {
        safetensors::tensor::TensorView::new(dtype, shape, bytes).unwrap()
    };
    let views = vec![
        (
            "input_ids",
            view(safetensors::Dtype::I64, shape.clone(), &ibytes[..]),
        ),
        (
            "logits",
            view(
                safetensors::Dtype::F32,
                vec![shape[0], shape[1], vocab],
                &lbytes[..],
            ),
        ),
    ];
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn peft_adapters_load_with_peft_logits() {
    for case in ["all-linear", "qv-rslora-layer1"] {
        let dir = fixture(&format!("lora/{case}"));
        let exp = Expected::open(&dir.join("expected.safetensors"));
        let mut m = tiny::<B>();
        let base = logits_of(&m, exp.ids2("input_ids"), true);
        let cfg = load_adapter(&mut m, &dir, &Default::default()).unwrap();
        let on = logits_of(&m, exp.ids2("input_ids"), true);
        let d = max_abs_diff(&on, &exp.f32("logits").1);
        assert!(d <= TOL, "{case}: adapter logits differ from PEFT by {d}");
        // Adapters off: exactly the base model (bit for bit), and PEFT's disable_adapter within TOL.
        let off = logits_of(&m, exp.ids2("input_ids"), false);
        assert_eq!(
            off, base,
            "{case}: disabled adapters must give the base logits exactly"
        );
        assert!(max_abs_diff(&off, &exp.f32("logits_base").1) <= TOL);
        // Merged: same as adapter on, and as PEFT's merge_and_unload.
        let before = weights_host(&m);
        m.merge_adapters();
        let merged = logits_of(&m, exp.ids2("input_ids"), true);
        assert!(
            max_abs_diff(&merged, &exp.f32("logits_merged").1) <= TOL,
            "{case}: merged logits"
        );
        assert!(max_abs_diff(&merged, &on) <= TOL);
        // A merged model with adapters switched off is still the base model.
        assert!(max_abs_diff(&logits_of(&m, exp.ids2("input_ids"), false), &base) <= TOL);
        m.unmerge_adapters();
        for ((n, a), (_, b)) in before.iter().zip(weights_host(&m)) {
            let d = max_abs_diff(a, &b);
            assert!(d <= 1e-6, "{case}: {n} after merge+unmerge differs by {d}");
        }
        if case == "qv-rslora-layer1" {
            assert!(cfg.use_rslora && cfg.layers_to_transform == Some(vec![1]));
            assert_eq!(m.adapters().len(), 2);
        }
    }
}

#[test]
fn saved_adapter_has_peft_layout_and_round_trips() {
    let src = fixture("lora/all-linear");
    let mut m = tiny::<B>();
    let cfg = load_adapter(&mut m, &src, &Default::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adapter");
    save_adapter(&m, &cfg, "tiny-llama", &out).unwrap();
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("keys.json")).unwrap()).unwrap();
    let want: Vec<String> = serde_json::from_value(keys["keys"].clone()).unwrap();
    let saved = SafetensorsDir::open_file(&out.join("adapter_model.safetensors")).unwrap();
    let mut got: Vec<String> = saved.names().map(String::from).collect();
    got.sort();
    assert_eq!(got, want, "tensor keys must be PEFT's");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    for k in [
        "peft_type",
        "task_type",
        "r",
        "lora_alpha",
        "target_modules",
        "use_rslora",
        "bias",
    ] {
        assert!(config.get(k).is_some(), "adapter_config.json lacks {k}");
    }
    let exp = Expected::open(&src.join("expected.safetensors"));
    let mut again = tiny::<B>();
    load_adapter(&mut again, &out, &Default::default()).unwrap();
    assert_eq!(
        logits_of(&again, exp.ids2("input_ids"), true),
        logits_of(&m, exp.ids2("input_ids"), true)
    );
    // Leave a copy for `make_lora_fixtures.py --check` (peft loads what burnish wrote).
    let check = Path::new(env!("CARGO_TARGET_TMPDIR")).join("burnish-adapter");
    save_adapter(&m, &cfg, "tiny-llama", &check).unwrap();
    let logits = logits_of(&m, exp.ids2("input_ids"), true);
    write_logits(&check.join("expected_logits.safetensors"), &exp, &logits);
}

#[test]
fn mismatched_adapters_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(fixture("lora/all-linear").join(f), d.join(f)).unwrap();
        }
        d
    };
    let edit = |d: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let p = d.join("adapter_config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, v.to_string()).unwrap();
    };
    // Rank in the config disagrees with the tensors.
    let d = copy("rank");
    edit(&d, &|v| v["r"] = 8.into());
    let e = load_adapter(&mut tiny::<B>(), &d, &Default::default()).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. }) && e.to_string().contains("lora_A"),
        "{e}"
    );
    // Targets narrower than the tensors in the file.
    let d = copy("targets");
    edit(&d, &|v| v["target_modules"] = serde_json::json!(["q_proj"]));
    let e = load_adapter(&mut tiny::<B>(), &d, &Default::default()).unwrap_err();
    assert!(e.to_string().contains("not covered"), "{e}");
    // Unsupported options are refused, not ignored.
    let d = copy("dora");
    edit(&d, &|v| v["use_dora"] = true.into());
    assert!(load_adapter(&mut tiny::<B>(), &d, &Default::default())
        .unwrap_err()
        .to_string()
        .contains("DoRA"));
    // A different base model (wider hidden size).
    let mut cfg = ModelConfig::from_file(fixture("tiny-llama/config.json")).unwrap();
    cfg.hidden_size = 96;
    cfg.head_dim = 24;
    let mut other = Llama::<B>::init(&cfg, 0.02, &Default::default());
    let e = load_adapter(&mut other, &copy("base"), &Default::default()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

#[test]
fn config_validation_and_targets() {
    let all = TargetModules::Preset("all-linear".into())
        .resolve()
        .unwrap();
    // Every module a family may have (Phi-3's fused qkv_proj, gate_up_proj included); a model attaches
    // adapters to those it has.
    assert_eq!(all.len(), 9);
    assert!(TargetModules::Names(vec!["qkv".into()])
        .resolve()
        .unwrap_err()
        .contains("qkv"));
    let cfg = LoraConfig {
        target_modules: TargetModules::Names(vec![
            "model.layers.1.mlp.down_proj".into(),
            "q_proj".into(),
        ]),
        ..Default::default()
    };
    assert!(
        cfg.applies(1, "down_proj") && !cfg.applies(0, "down_proj") && cfg.applies(0, "q_proj")
    );
    let bad = LoraConfig {
        r: 0,
        ..Default::default()
    };
    assert!(bad.validate(2).unwrap_err().to_string().contains("`r`"));
    let rs = LoraConfig {
        r: 16,
        lora_alpha: 8.0,
        use_rslora: true,
        ..Default::default()
    };
    assert!((rs.scale() - 2.0).abs() < 1e-12);
}

/// Only A and B get gradients; after AdamW steps the base weights are bit-identical and the adapter moved.
#[test]
fn training_updates_only_adapters() {
    type AD = Autodiff<B>;
    let dev = Default::default();
    let mut m = tiny::<AD>();
    let cfg = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        target_modules: TargetModules::Preset("all-linear".into()),
        ..Default::default()
    };
    m.attach_lora(&cfg, 0, &dev).unwrap();
    let base_before = weights_host(&m.valid());
    let a_before = m.adapters()[0]
        .1
        .lora_A
        .val()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let ids = Tensor::<AD, 2, Int>::from_data([[5, 9, 3, 44, 7, 21]], &dev);
    let mut opt = AdamWConfig::new().init();
    let mut losses = vec![];
    for _ in 0..3 {
        let logits = m.forward(ids.clone());
        // Push the logit of token 7 up everywhere: a loss the adapter can reduce.
        let loss = logits.clone().slice([0..1, 0..6, 7..8]).mean().neg()
            + logits.powi_scalar(2).mean() * 1e-3;
        losses.push(loss.clone().into_scalar());
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        let n_grads = grads.len();
        assert_eq!(
            n_grads,
            2 * 14,
            "gradients exist for exactly the 14 adapters' A and B"
        );
        m = opt.step(1e-2, m, grads);
    }
    assert!(losses[2] < losses[0], "loss should fall: {losses:?}");
    let after = m.valid();
    for ((n, a), (_, b)) in base_before.iter().zip(weights_host(&after)) {
        assert!(a == &b, "{n} changed during adapter training");
    }
    let a_after = after.adapters()[0]
        .1
        .lora_A
        .val()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert_ne!(a_before, a_after);
    assert!(after
        .adapters()
        .iter()
        .all(|(_, l)| l.lora_B.val().abs().max().into_scalar() > 0.0));
    // Burn's module tree sees the frozen base: only adapter params are trainable.
    assert_eq!(m.num_params(), after.num_params());
}

#[test]
fn merged_export_round_trips_hf_and_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    // A complete tiny model (tiny-llama weights + the tiny GGUF's tokenizer) with a PEFT adapter.
    let gguf = GgufFile::open(fixture("tiny-llama-gguf/model-f32.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let mut m = tiny::<B>();
    load_adapter(&mut m, &fixture("lora/all-linear"), &Default::default()).unwrap();
    let exp = Expected::open(&fixture("lora/all-linear/expected.safetensors"));
    let want = logits_of(&m, exp.ids2("input_ids"), true);
    m.drop_adapters(true);
    let cfg = ModelConfig::from_file(fixture("tiny-llama/config.json")).unwrap();
    let src = ExportSource {
        config: &cfg,
        tokenizer: &tok,
        template: None,
        source_gguf: Some(&gguf),
    };
    let hf = tmp.path().join("merged");
    export_hf(&m, &src, &hf, Dtype::F32, Existing::Replace).unwrap();
    let reloaded = Pretrained::<B>::load(&hf, &Default::default()).unwrap();
    let d = max_abs_diff(
        &logits_of(&reloaded.model, exp.ids2("input_ids"), true),
        &want,
    );
    assert!(d <= TOL, "HF export: {d}");
    let file = tmp.path().join("merged.gguf");
    export_gguf(&m, &src, &file, GgufQuant::F32, Existing::Replace).unwrap();
    let g = Pretrained::<B>::load(&file, &Default::default()).unwrap();
    let d = max_abs_diff(&logits_of(&g.model, exp.ids2("input_ids"), true), &want);
    assert!(d <= TOL, "GGUF export: {d}");
    assert_eq!(
        g.tokenizer.encode("hello world", false).unwrap(),
        tok.encode("hello world", false).unwrap()
    );
    let meta = GgufFile::open(&file).unwrap();
    for k in [
        "general.architecture",
        "llama.block_count",
        "llama.embedding_length",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
    ] {
        assert!(meta.get(k).is_some(), "GGUF lacks {k}");
    }
    // Leave copies for scripts/reference/check_export.py (transformers and gguf-py read them).
    let check = Path::new(env!("CARGO_TARGET_TMPDIR")).join("burnish-export");
    export_hf(
        &m,
        &src,
        &check.join("merged"),
        Dtype::F32,
        Existing::Replace,
    )
    .unwrap();
    export_gguf(
        &m,
        &src,
        &check.join("merged.gguf"),
        GgufQuant::F32,
        Existing::Replace,
    )
    .unwrap();
    write_logits(&check.join("expected_logits.safetensors"), &exp, &want);
    // bf16 and q8_0 exports load and stay close.
    export_hf(
        &m,
        &src,
        &tmp.path().join("bf16"),
        Dtype::Bf16,
        Existing::Replace,
    )
    .unwrap();
    let b16 = Pretrained::<B>::load(tmp.path().join("bf16"), &Default::default()).unwrap();
    assert!(max_abs_diff(&logits_of(&b16.model, exp.ids2("input_ids"), true), &want) < 0.2);
    export_gguf(
        &m,
        &src,
        &tmp.path().join("q8.gguf"),
        GgufQuant::Q8_0,
        Existing::Replace,
    )
    .unwrap();
    let q8 = Pretrained::<B>::load(tmp.path().join("q8.gguf"), &Default::default()).unwrap();
    // Q8_0 must equal the merged model with every matrix rounded through Q8_0 in memory.
    let mut rounded = m.clone();
    for (name, shape, t) in m.named_tensors() {
        if shape.len() == 2 {
            let w = t.into_data().to_vec::<f32>().unwrap();
            let q = dequantize(GgmlType::Q8_0, &quantize_q8_0(&w), w.len()).unwrap();
            let q = Tensor::<B, 1>::from_floats(q.as_slice(), &Default::default())
                .reshape([shape[0], shape[1]]);
            rounded.set_weight(&name, q).unwrap();
        }
    }
    let d8 = max_abs_diff(
        &logits_of(&q8.model, exp.ids2("input_ids"), true),
        &logits_of(&rounded, exp.ids2("input_ids"), true),
    );
    assert!(d8 <= TOL, "q8_0 export: {d8}");
}
