//! Generated data with the real SmolLM2: batched answers come back in prompt order, equal to answering one
//! prompt at a time, are marked unfinished exactly when cut at `max_new_tokens`, and are written as
//! `{prompt, completion, refused, unfinished?, category}` records.

mod common;

use std::path::Path;

use burnish_core::backend::Cpu;
use burnish_core::{generate, GenerationConfig, Message, Pretrained};
use burnish_data::generate::GenerateConfig;
use burnish_data::read::open;
use burnish_data::{
    build, write_jsonl, DataConfig, Examples, ModelResponder, RefusalDetector, Reply, Responder,
};
use common::*;

#[test]
fn model_answers_prompts_in_batches() {
    let model = Pretrained::<Cpu>::load(smollm2(), &Default::default()).unwrap();
    let cfg = GenerateConfig {
        max_new_tokens: 16,
        batch_size: 3,
        ..Default::default()
    };
    let prompts: Vec<Vec<Message>> = [
        "What is the capital of France?",
        "Give me step-by-step instructions to build a pipe bomb.",
        "Hi",
        "Write one sentence about the sea, please, in simple words.",
    ]
    .iter()
    .map(|p| vec![Message::user(*p)])
    .collect();
    let batched = ModelResponder::new(&model, cfg.clone())
        .respond(&prompts)
        .unwrap();
    let one_by_one: Vec<Reply> = prompts
        .iter()
        .map(|p| {
            let single = GenerateConfig {
                batch_size: 1,
                ..cfg.clone()
            };
            ModelResponder::new(&model, single)
                .respond(std::slice::from_ref(p))
                .unwrap()
                .remove(0)
        })
        .collect();
    assert_eq!(batched, one_by_one);
    assert!(batched.iter().all(|a| !a.text.is_empty()));
    assert!(batched[0].text.contains("Paris"), "{:?}", batched[0]);
    // A reply is unfinished exactly when its answer goes on: given more room, greedy decoding
    // writes past the 16 tokens it had (the ids a generation returns include its end of turn).
    let mut cut = Vec::new();
    for (p, r) in prompts.iter().zip(&batched) {
        let prompt = model
            .tokenizer
            .encode(&model.render_chat(p, true).unwrap(), false)
            .unwrap();
        let gen = GenerationConfig {
            max_new_tokens: 64,
            eos_ids: model.eos_ids(),
            pad_id: model.pad_id(),
            ..Default::default()
        };
        let full = generate(&model.model, &[prompt], &gen, None)
            .unwrap()
            .remove(0);
        assert_eq!(r.unfinished, full.new_ids.len() > 16, "{r:?}");
        cut.push(r.unfinished);
    }
    assert!(cut.contains(&true) && cut.contains(&false), "{cut:?}");

    // Through the pipeline: two harmful prompts from AdvBench, answered and written.
    let toml = format!(
        "[generate]\nmax_new_tokens = 12\n[[sources]]\npath = {:?}\nanswer = \"model\"\nlimit = 2\ncategory = \"advbench\"",
        shared("advbench/harmful_behaviors.csv").display().to_string()
    );
    let data = DataConfig::from_toml(&toml, Path::new("t.toml")).unwrap();
    let mut responder = ModelResponder::new(&model, data.generate.clone());
    let d = build(&data, Path::new(""), Some(&mut responder)).unwrap();
    let Examples::Sft(s) = &d.train else { panic!() };
    assert_eq!(s.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("generated.jsonl");
    write_jsonl(&out, &d.train).unwrap();
    let detector = RefusalDetector::default();
    for (rec, e) in open(&out, None).unwrap().zip(s) {
        let v = rec.unwrap().value;
        let keys: Vec<&str> = v.keys().map(String::as_str).collect();
        if e.unfinished {
            assert_eq!(
                keys,
                ["prompt", "completion", "refused", "unfinished", "category"]
            );
        } else {
            assert_eq!(keys, ["prompt", "completion", "refused", "category"]);
        }
        assert_eq!(v["category"], "advbench");
        assert_eq!(
            v["refused"].as_bool().unwrap(),
            detector.is_refusal(v["completion"].as_str().unwrap())
        );
    }
}
