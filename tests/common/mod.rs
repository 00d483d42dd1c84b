//! Shared helpers for the root package's end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burnish::core::weights::gguf::GgufFile;
use burnish::core::Tokenizer;

pub fn core_fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/core/tests/fixtures")
        .join(rel)
}

pub fn shared_data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel)
}

pub const TINY_TEMPLATE: &str = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";

/// A complete tiny chat model: tiny-llama's random weights, the tiny GGUF's byte-level tokenizer and a
/// simple chat template.
pub fn tiny_chat_model(dir: &Path) -> PathBuf {
    let m = dir.join("tiny-chat");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(core_fixture("tiny-llama").join(f), m.join(f)).unwrap();
    }
    let g = GgufFile::open(core_fixture("tiny-llama-gguf/model-f32.gguf")).unwrap();
    Tokenizer::from_gguf(&g)
        .unwrap()
        .save(&m.join("tokenizer.json"))
        .unwrap();
    let tc = serde_json::json!({"chat_template": TINY_TEMPLATE, "eos_token": "<|eos|>", "pad_token": "<|pad|>", "bos_token": "<|bos|>"});
    std::fs::write(m.join("tokenizer_config.json"), tc.to_string()).unwrap();
    m
}

/// A small SFT JSONL: short prompt/completion pairs over the tiny tokenizer's alphabet.
pub fn tiny_sft_data(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("sft.jsonl");
    let words = [
        "the", "cat", "is", "on", "a", "mat", "and", "dog", "runs", "home",
    ];
    let mut lines = String::new();
    for i in 0..n {
        let prompt = format!("say {} {}", words[i % 10], words[(i * 3 + 1) % 10]);
        let completion = format!(
            "{} {} {}",
            words[(i * 7) % 10],
            words[(i + 2) % 10],
            words[(i * 5 + 3) % 10]
        );
        lines
            .push_str(&serde_json::json!({"prompt": prompt, "completion": completion}).to_string());
        lines.push('\n');
    }
    std::fs::write(&p, lines).unwrap();
    p
}

/// A run file for the tiny model; `extra` is appended (TOML).
pub fn tiny_run(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let data = tiny_sft_data(dir, 24);
    let text = tiny_run_text(dir, &data, "shuffle = false", "", extra);
    write_run(dir, &text)
}

/// The tiny model's run file: LoRA r4 all-linear, one data source, 8 steps of 4 rows at lr 1e-2.
fn tiny_run_text(dir: &Path, data: &Path, data_extra: &str, method: &str, extra: &str) -> String {
    let model = tiny_chat_model(dir);
    format!(
        r#"[model]
path = "{}"

[lora]
r = 4
lora_alpha = 8
target_modules = "all-linear"

[data]
max_length = 64
{data_extra}

[[data.sources]]
path = "{}"

{method}
[train]
learning_rate = 1e-2
batch_size = 4
max_steps = 8
seed = 3

[output]
dir = "out"
{extra}
"#,
        model.display(),
        data.display()
    )
}

fn write_run(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("run.toml");
    std::fs::write(&p, text).unwrap();
    p
}

pub fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One metric of every logged step of the run in `out`.
pub fn column(out: &Path, key: &str) -> Vec<f64> {
    metrics(out)
        .iter()
        .map(|r| r[key].as_f64().unwrap())
        .collect()
}

/// Every adapter tensor of a run's final adapter, by name.
pub fn adapter(out: &Path) -> Vec<(String, Vec<f32>)> {
    tensors(&out.join("adapter/adapter_model.safetensors"))
}

/// The f32 tensors of a safetensors file, by name.
pub fn tensors(file: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let t = st.tensor(&n).unwrap();
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (n, v)
        })
        .collect()
}

pub fn losses(out: &Path) -> Vec<(u64, f64)> {
    metrics(out)
        .iter()
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

/// A run file for the tiny model on `pairs` preference pairs (20% held out), 8 steps of 4 pairs;
/// `method` is the `[method]` body, e.g. `name = "dpo"`.
pub fn pair_run(dir: &Path, method: &str, pairs: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let data = pair_data(dir, pairs);
    let method = format!("[method]\n{method}\n");
    let text = tiny_run_text(dir, &data, "eval_fraction = 0.2", &method, "");
    write_run(dir, &text)
}

/// Preference pairs with one consistent preference: answers starting "the" over answers starting "a".
pub fn pair_data(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("pairs.jsonl");
    let words = ["cat", "mat", "dog", "home", "on", "runs"];
    let mut lines = String::new();
    for i in 0..n {
        let (a, b) = (words[i % 6], words[(i * 5 + 1) % 6]);
        let row = serde_json::json!({
            "prompt": format!("say {a} {b}"),
            "chosen": format!("the {a} is {b}"),
            "rejected": format!("a {b} and {a}"),
        });
        lines.push_str(&format!("{row}\n"));
    }
    std::fs::write(&p, lines).unwrap();
    p
}

/// tiny-llama's weights, and the same with the PEFT all-linear fixture adapter attached.
pub fn tiny_base_and_tuned() -> (
    burnish::core::Llama<burnish::core::backend::Cpu>,
    burnish::core::Llama<burnish::core::backend::Cpu>,
) {
    let dir = core_fixture("tiny-llama");
    let cfg = burnish::core::ModelConfig::from_file(dir.join("config.json")).unwrap();
    let base = burnish::core::weights::load_llama(
        &cfg,
        &burnish::core::weights::SafetensorsDir::open(&dir).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let mut tuned = base.clone();
    burnish::core::adapter::load_adapter(
        &mut tuned,
        &core_fixture("lora/all-linear"),
        &Default::default(),
    )
    .unwrap();
    (base, tuned)
}

/// SmolLM2-135M-Instruct (scripts/fetch-smollm2.sh; BURNISH_SMOLLM2 overrides).
pub fn smollm2() -> PathBuf {
    if let Ok(p) = std::env::var("BURNISH_SMOLLM2") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-smollm2.sh first",
        p.display()
    );
    p
}
