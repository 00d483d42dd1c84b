//! End to end on the real SmolLM2-135M-Instruct GGUF against transformers loading the same file
//! (fixture: scripts/reference/make_smollm2_fixtures.py). The model comes from scripts/fetch-smollm2.sh
//! (CI runs it); set BURNISH_SMOLLM2 to use another copy.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use burnish_core::burn::tensor::{Int, Tensor, TensorData};
use burnish_core::{generate, GenerationConfig, Message, Pretrained};
use common::*;
use serde_json::Value;

fn model_path() -> PathBuf {
    if let Ok(p) = std::env::var("BURNISH_SMOLLM2") {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-smollm2.sh first",
        p.display()
    );
    p
}

fn model() -> &'static Pretrained<B> {
    static M: OnceLock<Pretrained<B>> = OnceLock::new();
    M.get_or_init(|| Pretrained::load(model_path(), &Default::default()).expect("load SmolLM2"))
}

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| {
        let text = std::fs::read_to_string(fixture("smollm2/reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn messages(v: &Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    let m = model();
    GenerationConfig {
        max_new_tokens,
        eos_ids: m.eos_ids(),
        pad_id: m.pad_id(),
        ..Default::default()
    }
}

#[test]
fn special_tokens() {
    let m = model();
    let s = &reference()["special"];
    assert_eq!(
        m.tokenizer.bos_id(),
        Some(s["bos_token_id"].as_u64().unwrap() as u32)
    );
    assert_eq!(
        m.tokenizer.eos_id(),
        Some(s["eos_token_id"].as_u64().unwrap() as u32)
    );
    assert_eq!(m.pad_id(), s["pad_token_id"].as_u64().unwrap() as u32);
    assert_eq!(
        m.tokenizer.vocab_size(),
        s["len_tokenizer"].as_u64().unwrap() as usize
    );
}

#[test]
fn tokenization_is_identical() {
    let tok = &model().tokenizer;
    let cases = reference()["tokenize"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap();
        assert_eq!(got, ids(&c["ids"]), "tokenize {text:?}");
        let decoded = tok.decode(&got, false).unwrap();
        assert_eq!(decoded, c["decoded"].as_str().unwrap(), "decode {text:?}");
    }
}

#[test]
fn chat_template_is_identical() {
    let m = model();
    for c in reference()["templates"]["cases"].as_array().unwrap() {
        let gen = c["add_generation_prompt"].as_bool().unwrap();
        let text = m.render_chat(&messages(&c["messages"]), gen).unwrap();
        assert_eq!(
            text,
            c["text"].as_str().unwrap(),
            "template case {}",
            c["name"]
        );
        assert_eq!(
            m.tokenizer.encode(&text, false).unwrap(),
            ids(&c["ids"]),
            "ids of {}",
            c["name"]
        );
    }
}

#[test]
fn first_step_logits_match() {
    let m = model();
    let r = reference();
    let case = r["chat"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == r["first_logits"]["chat"])
        .unwrap();
    let prompt = ids(&case["prompt_ids"]);
    let n = prompt.len();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(prompt.iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, n]),
        &Default::default(),
    );
    let logits = to_vec3(m.model.forward(input));
    let v = m.config.vocab_size;
    let last = &logits[(n - 1) * v..n * v];
    let fl = &r["first_logits"];
    assert_eq!(
        burnish_core::generate::argmax(last),
        fl["argmax"].as_u64().unwrap() as u32
    );
    let mut worst = 0f32;
    for pair in fl["top20"].as_array().unwrap() {
        let id = pair[0].as_u64().unwrap() as usize;
        let want = pair[1].as_f64().unwrap() as f32;
        worst = worst.max((last[id] - want).abs());
    }
    let mean = last.iter().sum::<f32>() / v as f32;
    assert!(worst < 2e-3, "top-20 logits differ by {worst}");
    assert!(
        (mean - fl["mean"].as_f64().unwrap() as f32).abs() < 2e-3,
        "mean logit {mean}"
    );
}

#[test]
fn greedy_generation_is_token_identical() {
    let m = model();
    for c in reference()["chat"]["cases"].as_array().unwrap() {
        let text = m.render_chat(&messages(&c["messages"]), true).unwrap();
        let prompt = m.tokenizer.encode(&text, false).unwrap();
        assert_eq!(prompt, ids(&c["prompt_ids"]), "prompt ids of {}", c["name"]);
        let max = c["max_new_tokens"].as_u64().unwrap() as usize;
        let out = generate(&m.model, &[prompt], &greedy(max), Some(&m.tokenizer)).unwrap();
        assert_eq!(
            out[0].new_ids,
            ids(&c["new_ids"]),
            "generation for {}",
            c["name"]
        );
        let decoded = m.tokenizer.decode(&out[0].new_ids, true).unwrap();
        assert_eq!(decoded, c["text_out"].as_str().unwrap());
    }
}

#[test]
fn batched_left_padded_generation_is_token_identical() {
    let m = model();
    let b = &reference()["batched"];
    let rows = b["rows"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = rows.iter().map(|r| ids(&r["prompt_ids"])).collect();
    let max = b["max_new_tokens"].as_u64().unwrap() as usize;
    let out = generate(&m.model, &prompts, &greedy(max), Some(&m.tokenizer)).unwrap();
    for (r, g) in rows.iter().zip(&out) {
        assert_eq!(g.new_ids, ids(&r["new_ids"]), "batched row {}", r["name"]);
    }
}
