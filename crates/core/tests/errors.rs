//! Bad files and configs give typed errors that name the file or key, never a panic.

mod common;

use std::path::{Path, PathBuf};

use burnish_core::weights::gguf::GgufFile;
use burnish_core::{Error, ModelConfig, Pretrained, Tokenizer, TokenizerBundle};
use common::*;

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// tiny-llama plus a tokenizer.json (from the tiny GGUF's metadata), so it loads as a full model.
fn tiny_model_dir(tmp: &tempfile::TempDir) -> PathBuf {
    let dir = tmp.path().join("tiny");
    copy_dir(&fixture("tiny-llama"), &dir);
    let g = GgufFile::open(fixture("tiny-llama-gguf/model-f32.gguf")).unwrap();
    Tokenizer::from_gguf(&g)
        .unwrap()
        .save(&dir.join("tokenizer.json"))
        .unwrap();
    dir
}

fn load(dir: &Path) -> Result<Pretrained<B>, Error> {
    Pretrained::<B>::load(dir, &Default::default())
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn tiny_dir_loads_and_tiny_tokenizer_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let m = load(&tiny_model_dir(&tmp)).unwrap();
    let probes: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-llama-gguf/tokenizer-expected.json")).unwrap(),
    )
    .unwrap();
    let g = GgufFile::open(fixture("tiny-llama-gguf/model-f32.gguf")).unwrap();
    let from_gguf = Tokenizer::from_gguf(&g).unwrap();
    for p in probes["probes"].as_array().unwrap() {
        let want: Vec<u32> = serde_json::from_value(p["ids"].clone()).unwrap();
        let text = p["text"].as_str().unwrap();
        assert_eq!(from_gguf.encode(text, false).unwrap(), want, "{text:?}");
        // The saved tokenizer.json reloads to the same tokenizer.
        assert_eq!(
            m.tokenizer.encode(text, false).unwrap(),
            want,
            "{text:?} (saved)"
        );
    }
}

#[test]
fn missing_path() {
    let e = load(Path::new("/nonexistent/model")).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/model"));
}

#[test]
fn malformed_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir(&tmp);
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"llama\", ").unwrap();
    let e = load(&dir).unwrap_err();
    assert!(matches!(e, Error::Json { .. }), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn config_errors_name_the_key() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "unknown family",
            Box::new(|v| v["model_type"] = "gpt_neox".into()),
            "gpt_neox",
        ),
        (
            "missing key",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("hidden_size");
            }),
            "hidden_size",
        ),
        (
            "activation",
            Box::new(|v| v["hidden_act"] = "gelu".into()),
            "gelu",
        ),
        (
            "rope_parameters",
            Box::new(|v| {
                v["rope_parameters"] =
                    serde_json::json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
            }),
            "yarn",
        ),
        (
            "rope_scaling",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("rope_parameters");
                v["rope_scaling"] = serde_json::json!({"type": "dynamic", "factor": 4.0});
            }),
            "dynamic",
        ),
        (
            "gqa",
            Box::new(|v| v["num_key_value_heads"] = 3.into()),
            "num_key_value_heads",
        ),
        (
            // Not a q_proj shape error later: the config itself is inconsistent.
            "heads that do not divide the hidden size",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("head_dim");
                v["num_attention_heads"] = 6.into();
                v["num_key_value_heads"] = 6.into();
            }),
            "is not a multiple of `num_attention_heads` (6)",
        ),
    ];
    for (what, f, needle) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tiny_model_dir(&tmp);
        edit_config(&dir, f);
        let e = load(&dir).unwrap_err();
        assert!(e.to_string().contains(needle), "{what}: {e}");
    }
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir(&tmp);
    edit_config(&dir, |v| v["intermediate_size"] = 96.into());
    let e = load(&dir).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    assert!(e.to_string().contains("mlp.gate_proj.weight"), "{e}");
}

#[test]
fn vocab_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir(&tmp);
    edit_config(&dir, |v| v["vocab_size"] = 100.into());
    let e = load(&dir).unwrap_err();
    assert!(
        matches!(
            e,
            Error::VocabMismatch {
                tokenizer: 128,
                model: 100
            }
        ),
        "{e}"
    );
}

#[test]
fn missing_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir(&tmp);
    // Rewrite the checkpoint without one tensor.
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "model.layers.1.mlp.up_proj.weight")
        .collect();
    safetensors::serialize_to_file(kept, None, &dir.join("model.safetensors")).unwrap();
    let e = load(&dir).unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert!(
        e.to_string().contains("model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
}

#[test]
fn truncated_and_garbage_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir(&tmp);
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = load(&dir).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "cut at {cut}: {e}");
        assert!(e.to_string().contains("model.safetensors"), "{e}");
    }
    let mut garbage = bytes.clone();
    garbage[8..40].copy_from_slice(&[b'x'; 32]);
    std::fs::write(&path, &garbage).unwrap();
    assert!(matches!(load(&dir).unwrap_err(), Error::Corrupt { .. }));
}

#[test]
fn truncated_gguf_model() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tiny-llama-gguf/model-f32.gguf")).unwrap();
    let path = tmp.path().join("m.gguf");
    for cut in [3, 24, 1000, bytes.len() / 2, bytes.len() - 8] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = load(&path).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "cut at {cut}: {e}");
    }
}

#[test]
fn hf_dir_without_tokenizer_or_template() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bare");
    copy_dir(&fixture("tiny-llama"), &dir);
    let e = TokenizerBundle::load(&dir).unwrap_err();
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    // With a tokenizer but no template, chat rendering asks for one instead of guessing.
    let dir = tiny_model_dir(&tmp);
    let m = load(&dir).unwrap();
    let e = m
        .render_chat(&[burnish_core::Message::user("hi")], true)
        .unwrap_err();
    assert!(e.to_string().contains("no chat template"), "{e}");
}

#[test]
fn config_from_json_directly() {
    let e = ModelConfig::from_json("[]", Path::new("x/config.json")).unwrap_err();
    assert!(e.to_string().contains("x/config.json"), "{e}");
}

/// A GGUF whose BOS id points past the vocabulary is a broken file: an error naming the key, not a
/// tokenizer that silently has no BOS.
#[test]
fn special_token_id_past_the_vocabulary_is_an_error() {
    use burnish_core::weights::gguf::GgufWriter;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let src = GgufFile::open(fixtures.join("tiny-llama-gguf/model-f32.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        w.add_metadata(k.clone(), v.clone());
    }
    w.add_metadata("tokenizer.ggml.bos_token_id", 999_999u32);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad-bos.gguf");
    w.write(&path).unwrap();
    let e = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.ggml.bos_token_id") && e.contains("999999"),
        "{e}"
    );
}
