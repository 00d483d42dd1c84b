//! The real Gemma 3 270M (base, Q4_K_M GGUF) against transformers loading the same file (reference:
//! scripts/reference/make_gemma3_reference.py): tokenizer ids, the largest logits after each prompt and
//! 16 greedy tokens. The weights come from scripts/fetch-gemma3.sh (the test command runs it; Gemma
//! Terms of Use, never committed); set BURNISH_GEMMA3 to use another copy. Without the file the test
//! skips with a message, except in CI (CI=true), where it fails.

mod common;

use std::path::PathBuf;

use burnish_core::burn::tensor::{Int, Tensor, TensorData};
use burnish_core::config::{Family, LayerType};
use burnish_core::{generate, GenerationConfig, Pretrained};
use common::*;
use serde_json::Value;

fn model_path() -> Option<PathBuf> {
    let p = match std::env::var("BURNISH_GEMMA3") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/gemma3/gemma-3-270m-q4_k_m.gguf"),
    };
    if p.exists() {
        return Some(p);
    }
    let msg = format!("{} is missing: run scripts/fetch-gemma3.sh", p.display());
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("skipping the Gemma 3 270M test: {msg}");
    None
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gemma3_270m_matches_transformers() {
    let Some(path) = model_path() else { return };
    let m = Pretrained::<B>::load(&path, &Default::default()).unwrap();
    let cfg = &m.config;
    assert_eq!(cfg.family, Family::Gemma3);
    assert_eq!((cfg.num_hidden_layers, cfg.head_dim), (18, 256));
    assert_eq!(cfg.sliding_window, Some(512));
    let full: Vec<usize> = (0..18)
        .filter(|&i| cfg.layer_type(i) == LayerType::Full)
        .collect();
    assert_eq!(full, [5, 11, 17]);
    let text = std::fs::read_to_string(fixture("gemma3/expected.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let prompt = m
            .tokenizer
            .encode(case["text"].as_str().unwrap(), true)
            .unwrap();
        assert_eq!(prompt, ids(&case["prompt_ids"]), "{}: tokens", case["text"]);
        // The largest logits after the prompt: same ids, same values (both sides dequantize the same
        // blocks to f32; the sums run in a different order).
        let n = prompt.len();
        let data = TensorData::new(prompt.iter().map(|&t| t as i64).collect(), [1, n]);
        let input = Tensor::<B, 2, Int>::from_data(data, &Default::default());
        let logits = m.model.forward(input).slice([0..1, n - 1..n]).into_data();
        let logits = logits.to_vec::<f32>().unwrap();
        let top = ids(&case["top_ids"]);
        for (k, (&id, want)) in top
            .iter()
            .zip(case["top_logits"].as_array().unwrap())
            .enumerate()
        {
            let (got, want) = (logits[id as usize], want.as_f64().unwrap() as f32);
            assert!(
                (got - want).abs() <= 2e-3 * want.abs().max(1.0),
                "{}: top {k} logit {got} vs {want}",
                case["text"]
            );
        }
        let cfg = GenerationConfig {
            max_new_tokens: 16,
            ..Default::default()
        };
        let out = generate(&m.model, &[prompt], &cfg, None).unwrap();
        assert_eq!(
            out[0].new_ids,
            ids(&case["greedy_ids"]),
            "{}: greedy tokens (transformers: {:?})",
            case["text"],
            case["greedy_text"]
        );
    }
}
