//! Logits of tiny random models against transformers (fixtures from scripts/reference/make_model_fixtures.py).

mod common;

use burnish_core::burn::tensor::Tensor;
use burnish_core::model::{causal_padding_mask, Llama};
use burnish_core::weights::{load_llama, GgufWeights, SafetensorsDir};
use burnish_core::ModelConfig;
use common::*;

const TOL: f32 = 1e-4;

fn load_dir(name: &str) -> Llama<B> {
    let dir = fixture(name);
    let cfg = ModelConfig::from_file(dir.join("config.json")).unwrap();
    let w = SafetensorsDir::open(&dir).unwrap();
    load_llama(&cfg, &w, &Default::default()).unwrap()
}

fn load_gguf(file: &str) -> Llama<B> {
    let w = GgufWeights::open(fixture(file)).unwrap();
    load_llama(w.config(), &w, &Default::default()).unwrap()
}

/// Unpadded batch: every logit within TOL.
fn check_plain(model: &Llama<B>, expected: &str) {
    let exp = Expected::open(&fixture(expected));
    let (_, want) = exp.f32("logits");
    let got = to_vec3(model.forward(exp.ids2("input_ids")));
    let d = max_abs_diff(&got, &want);
    assert!(d <= TOL, "{expected}: max |Δlogit| = {d}");
}

/// Left-padded batch with transformers' position ids: logits at real positions within TOL.
fn check_padded(model: &Llama<B>, expected: &str) {
    let exp = Expected::open(&fixture(expected));
    let (shape, mask) = exp.i64("attention_mask_padded");
    let (b, s) = (shape[0], shape[1]);
    let valid: Vec<Vec<bool>> = mask
        .chunks(s)
        .map(|r| r.iter().map(|&m| m != 0).collect())
        .collect();
    let m = causal_padding_mask::<B>(&valid, s, None, &Default::default());
    let ctx = model.context(exp.ids2("position_ids_padded"), Some(m));
    let hidden = model.forward_hidden(exp.ids2("input_ids_padded"), &ctx, None, None);
    let got = to_vec3(model.logits(hidden));
    let (_, want) = exp.f32("logits_padded");
    let v = got.len() / (b * s);
    let mut worst = 0f32;
    for (i, &ok) in valid.iter().flatten().enumerate() {
        if ok {
            let r = i * v..(i + 1) * v;
            worst = worst.max(max_abs_diff(&got[r.clone()], &want[r]));
        }
    }
    assert!(worst <= TOL, "{expected}: padded max |Δlogit| = {worst}");
    assert!(
        got.iter().all(|x| x.is_finite()),
        "padding produced non-finite logits"
    );
}

#[test]
fn llama_untied() {
    let m = load_dir("tiny-llama");
    check_plain(&m, "tiny-llama/expected.safetensors");
    check_padded(&m, "tiny-llama/expected.safetensors");
}

#[test]
fn llama_tied_bf16_on_disk() {
    let m = load_dir("tiny-llama-tied");
    assert!(m.lm_head.is_none());
    check_plain(&m, "tiny-llama-tied/expected.safetensors");
    check_padded(&m, "tiny-llama-tied/expected.safetensors");
}

#[test]
fn llama3_rope_scaling() {
    let m = load_dir("tiny-llama3-rope");
    check_plain(&m, "tiny-llama3-rope/expected.safetensors");
    check_padded(&m, "tiny-llama3-rope/expected.safetensors");
}

#[test]
fn qwen2_with_bias() {
    let m = load_dir("tiny-qwen2");
    assert!(m.model.layers[0]
        .self_attn
        .q_proj
        .as_ref()
        .unwrap()
        .bias
        .is_some());
    check_plain(&m, "tiny-qwen2/expected.safetensors");
    check_padded(&m, "tiny-qwen2/expected.safetensors");
}

#[test]
fn mistral() {
    let m = load_dir("tiny-mistral");
    check_plain(&m, "tiny-mistral/expected.safetensors");
    check_padded(&m, "tiny-mistral/expected.safetensors");
}

#[test]
fn sharded_checkpoint() {
    let m = load_dir("tiny-llama-sharded");
    check_plain(&m, "tiny-llama-sharded/expected.safetensors");
}

#[test]
fn gguf_f32_twin_matches_safetensors() {
    let m = load_gguf("tiny-llama-gguf/model-f32.gguf");
    check_plain(&m, "tiny-llama/expected.safetensors");
    check_padded(&m, "tiny-llama/expected.safetensors");
}

#[test]
fn gguf_f16_matches_transformers() {
    let m = load_gguf("tiny-llama-gguf/model-f16.gguf");
    check_plain(&m, "tiny-llama-gguf/expected-f16.safetensors");
}

#[test]
fn gguf_config_matches_hf_config() {
    let w = GgufWeights::open(fixture("tiny-llama-gguf/model-f32.gguf")).unwrap();
    let hf = ModelConfig::from_file(fixture("tiny-llama/config.json")).unwrap();
    let g = w.config();
    assert_eq!(
        (
            g.hidden_size,
            g.num_hidden_layers,
            g.num_attention_heads,
            g.num_key_value_heads,
            g.head_dim
        ),
        (
            hf.hidden_size,
            hf.num_hidden_layers,
            hf.num_attention_heads,
            hf.num_key_value_heads,
            hf.head_dim
        )
    );
    assert_eq!(g.tie_word_embeddings, hf.tie_word_embeddings);
    assert_eq!(g.vocab_size, hf.vocab_size);
}

/// Decoding with the KV cache gives the same logits as recomputing the whole sequence.
#[test]
fn kv_cache_matches_full_forward() {
    use burnish_core::burn::tensor::{Int, TensorData};
    use burnish_core::KvCache;
    let m = load_dir("tiny-qwen2");
    let dev = Default::default();
    let ids: Vec<i64> = vec![5, 17, 99, 3, 42, 64, 7, 120, 11, 2];
    let full = to_vec3(m.forward(Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.clone(), [1, ids.len()]),
        &dev,
    )));
    let mut cache = KvCache::new(m.num_layers());
    let split = 6;
    let mut got = Vec::new();
    for (start, end) in [
        (0, split),
        (split, split + 1),
        (split + 1, split + 2),
        (split + 2, ids.len()),
    ] {
        let chunk = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids[start..end].to_vec(), [1, end - start]),
            &dev,
        );
        let pos = Tensor::<B, 1, Int>::arange(start as i64..end as i64, &dev).unsqueeze_dim::<2>(0);
        let ctx = m.context(pos, None);
        got.extend(to_vec3(m.logits(m.forward_hidden(
            chunk,
            &ctx,
            Some(&mut cache),
            None,
        ))));
    }
    assert_eq!(cache.len(), ids.len());
    let d = max_abs_diff(&got, &full);
    assert!(d <= TOL, "cache vs full: {d}");
}

/// SentencePiece-style GGUF tokenizer (no merges in the file: recovered from scores, as transformers
/// does), BOS added with special tokens (fixture: scripts/reference/make_spm_tokenizer_fixture.py).
#[test]
fn gguf_sentencepiece_tokenizer_matches_transformers() {
    let g = burnish_core::weights::gguf::GgufFile::open(fixture("spm/spm.gguf")).unwrap();
    let tok = burnish_core::Tokenizer::from_gguf(&g).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("spm/expected.json")).unwrap())
            .unwrap();
    for c in cases.as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        let with_bos: Vec<u32> = serde_json::from_value(c["ids_special"].clone()).unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids, "{text:?}");
        assert_eq!(
            tok.encode(text, true).unwrap(),
            with_bos,
            "{text:?} with BOS"
        );
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            c["decoded"].as_str().unwrap(),
            "decode {text:?}"
        );
    }
}
